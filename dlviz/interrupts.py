"""Ctrl-C during a pass, never lost.

Python turns Ctrl-C (and Jupyter's stop button, a SIGINT) into a KeyboardInterrupt
raised in the main thread wherever it happens to be. When that is inside a finalizer
(a garbage-collected object's clean-up, such as a finished Run's temporary folder
being removed), Python prints "Exception ignored in ..." and drops it. A loop waiting
for a worker that hangs with no timeout would then wait forever, and the learner's
interrupt would look ignored.

While :func:`record` runs a pass in the main thread under Python's own SIGINT
handler, :func:`kept` notes each interrupt; the loop's waits (every 50 ms) and each
batch call :func:`raise_if_lost`, which raises an interrupt that was noted but never
came through. It matters most for lesson 3's hangs (a worker that never answers) when
the learner stops the cell; a reliability test drops an interrupt in a finalizer on
purpose (``test_an_interrupt_a_finalizer_swallowed_still_stops_record``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_pending = False  # an interrupt noted by kept()'s handler and not seen raised yet


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Note every SIGINT while the block runs (main thread, default handler only: a
    handler of the user's, or an ignored SIGINT, is left alone)."""
    global _pending
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def note(signum: int, frame: FrameType | None) -> None:
        global _pending
        _pending = True
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:  # the pass is over, or the interrupt came through
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending = False


def raise_if_lost() -> None:
    """Raise KeyboardInterrupt if an interrupt was noted but swallowed on its way
    (in the main thread only: the one :func:`kept` notes for)."""
    global _pending
    if _pending and threading.current_thread() is threading.main_thread():
        _pending = False
        raise KeyboardInterrupt
