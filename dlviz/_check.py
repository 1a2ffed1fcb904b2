"""Argument checks shared by the public functions.

Every check names the argument, so a learner who passes ``batch_size="32"`` reads
``TypeError: batch_size must be an int, not str`` instead of a traceback from deep
inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def _type_name(value: object) -> str:
    return type(value).__name__


def integer(name: str, value: object) -> int:
    """An int (bool is refused: ``True`` is rarely meant as 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {_type_name(value)}")
    return value


def count(name: str, value: object, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An int >= ``minimum`` (and <= ``maximum``, if given)."""
    number = integer(name, value)
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum:_}, got {number}")
    return number


def optional_count(name: str, value: object, *, minimum: int = 0) -> int | None:
    return None if value is None else count(name, value, minimum=minimum)


def non_negative(name: str, value: object, *, maximum: float = math.inf) -> float:
    """A finite real number >= 0 (and <= ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if number > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value!r}")
    return number


def choice(name: str, value: object, options: Iterable[str]) -> str:
    allowed = tuple(options)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, not {_type_name(value)}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {_type_name(value)}")
    return value


def index_set(name: str, value: object, size: int) -> frozenset[int]:
    """One index or an iterable of indices, each in ``range(size)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: Iterable[object] = (value,)
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an index or a collection of indices, "
                        f"not {_type_name(value)}")
    else:
        items = value
    try:
        iterator = iter(items)
    except TypeError:  # a 0-d tensor, say
        raise TypeError(f"{name} must be an index or a collection of indices, "
                        f"not {_type_name(value)}") from None
    indices = set()
    for item in iterator:  # checked one by one: range(10**12) fails at once, not after a while
        index = integer(f"{name} item", item)
        if not 0 <= index < size:
            raise ValueError(f"{name} has indices outside the dataset (0..{size - 1}): {[index]}")
        indices.add(index)
    return frozenset(indices)
