"""Datasets for tests/test_reliability.py: a fetch journal, a worker waiting to be
killed, and datasets that cannot travel to (or be rebuilt in) a worker.

They live in an importable module, not in a test, so that spawn and forkserver
workers can import them: the failure a test sees must be the one it injected, not
a missing class.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import get_worker_info

from dlviz.datasets import SyntheticDataset


class JournaledDataset(SyntheticDataset):
    """A :class:`SyntheticDataset` that notes every fetch in a journal file.

    Each ``__getitem__`` first appends ``"<pid> <index>"`` to ``journal`` (one
    ``write`` with ``O_APPEND``: atomic, and on disk before any fault strikes), so
    the test knows every fetch that started, independently of dlviz.

    ``kill_at``: in a worker, the fetch of these indices writes the worker's pid to
    ``journal + ".kill"`` and then sleeps until the test SIGKILLs it (20 s at most).
    In the main process (``num_workers=0``) they are ordinary samples.
    """

    def __init__(self, n: int, journal: str, kill_at: Iterable[int] = (),
                 **faults: Any) -> None:
        super().__init__(n, **faults)
        self.journal = journal
        self.kill_at = frozenset(kill_at)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{os.getpid()} {index}\n".encode())
        finally:
            os.close(fd)
        if index in self.kill_at and get_worker_info() is not None:
            marker = self.journal + ".kill"
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)
            time.sleep(20)  # the test kills this process now
        return super().__getitem__(index)


def read_journal(journal: str) -> list[tuple[int, int]]:
    """``(pid, index)`` of every fetch that started, in the order they started."""
    if not os.path.exists(journal):
        return []
    with open(journal) as f:
        return [(int(pid), int(index)) for pid, index in (line.split() for line in f)]


class UnpicklableDataset(SyntheticDataset):
    """Refuses to be pickled, so it can never reach a spawn/forkserver worker."""

    def __reduce__(self) -> Any:
        raise TypeError("UnpicklableDataset holds an open file and cannot be pickled")


def _rebuild_fails(*args: Any) -> Any:
    raise RuntimeError("BrokenOnUnpickle: the file it reopens is missing in the worker")


class BrokenOnUnpickle(JournaledDataset):
    """Pickles fine, but raises while being unpickled in a spawn/forkserver worker.

    Like a dataset that reopens a file or a database connection when it is rebuilt
    and finds it missing: the worker dies before it fetches anything. Under fork
    nothing is unpickled, and it is an ordinary dataset.
    """

    def __reduce__(self) -> Any:
        return (_rebuild_fails, (self.n,))


class CrashWhileSending(SyntheticDataset):
    """A worker that dies while it holds the result queue's write lock, as one does
    when it is killed in the middle of sending a batch (the lock is shared by all
    workers, and nobody releases a dead process's lock).

    At index ``at`` (in a worker) it waits ``delay_s`` (so that the batches before
    it have arrived), takes the lock from its queue feeder thread, then exits
    abruptly. Deterministic, where a real crash hits that window now and then
    (about once in a hundred runs with ``crash_at`` and cost 0).
    """

    def __init__(self, n: int, at: int, delay_s: float = 0.3) -> None:
        super().__init__(n)
        self.at, self.delay_s = at, delay_s

    def __getitem__(self, index: int) -> torch.Tensor | None:
        if index == self.at and get_worker_info() is not None:
            time.sleep(self.delay_s)
            feeders = [t for t in threading.enumerate() if t.name == "QueueFeederThread"]
            write_lock = feeders[0]._args[3]  # type: ignore[attr-defined]  # Queue._feed's wacquire
            write_lock.acquire()
            os._exit(70)
        return super().__getitem__(index)
