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


def count(name: str, value: object, *, minimum: int = 0) -> int:
    """An int >= ``minimum``."""
    number = integer(name, value)
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def optional_count(name: str, value: object, *, minimum: int = 0) -> int | None:
    return None if value is None else count(name, value, minimum=minimum)


def non_negative(name: str, value: object) -> float:
    """A finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
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
    indices = frozenset(integer(f"{name} item", item) for item in items)
    outside = sorted(i for i in indices if not 0 <= i < size)
    if outside:
        raise ValueError(f"{name} has indices outside the dataset (0..{size - 1}): {outside[:5]}")
    return indices
