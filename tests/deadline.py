"""A deadline for tests that must prove a call returns (shared by the reliability and
bad-input tests)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class Hung(BaseException):
    """Raised in the main thread when a call overruns its deadline (not an Exception,
    so nothing on the way up can swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (raise :class:`Hung`) if the block runs longer than ``seconds``."""
    def alarm(signum: int, frame: Any) -> None:
        raise Hung(f"did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
