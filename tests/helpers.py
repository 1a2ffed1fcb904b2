"""Scaffolding shared by the tests, written once: deadlines, processes and descriptors left
behind, the ledger adding up, the loop patterns a learner writes, the saved runs in
``tests/fixtures/``, the SIGINT disposition the interrupt tests rely on, and the
``python -m dlviz`` command line.

Waits here end on an observed condition (the process is gone, the queue's feeder
thread has ended); their deadlines are hang guards only, generous so that a loaded
machine never fails a test that would pass on an idle one. A test that passes never
waits for one.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = HERE / "fixtures"
HANG_GUARD_S = 120.0  # every deadline in the tests: only a failing test waits this long
FATE_NAMES = ("delivered", "failed", "filtered", "in_flight", "dropped", "never_sampled")


# ---------------------------------------------------------------- deadlines
class Hung(BaseException):
    """Raised in the main thread when a call overruns its deadline (not an Exception,
    so nothing on the way up can swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float = HANG_GUARD_S) -> Iterator[None]:
    """Fail (raise :class:`Hung`) if the block runs longer than ``seconds``: by default
    the hang guard, for a test that must prove a call returns."""
    def alarm(signum: int, frame: Any) -> None:
        raise Hung(f"did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- processes
def worker_children(recursive: bool = False) -> list[psutil.Process]:
    """Child processes that could be DataLoader workers (not multiprocessing's helpers);
    ``recursive``: grandchildren too, such as the forkserver's workers."""
    out = []
    for child in psutil.Process().children(recursive=recursive):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(child.cmdline())
            parent = child.parent()
            parent_cmdline = " ".join(parent.cmdline()) if parent else ""
        except psutil.Error:
            continue
        if "resource_tracker" in cmdline:
            continue
        # the forkserver itself; its workers are forked from it and share its cmdline
        if "forkserver" in cmdline and "forkserver" not in parent_cmdline:
            continue
        if "jupyter" in cmdline or "chromium" in cmdline or "ipykernel" in cmdline:
            continue
        out.append(child)
    return out


def live_processes() -> set[int]:
    """Every live descendant that could be a worker, forkserver workers included."""
    return {p.pid for p in worker_children(recursive=True)}


def processes_left(before: set[int], recursive: bool = True,
                   guard_s: float = HANG_GUARD_S) -> set[int]:
    """Worker-like processes alive now that were not in ``before``, once those that are
    exiting have exited (waited for until none is left; ``guard_s`` is a hang guard)."""
    end = time.monotonic() + guard_s
    while True:
        left = {p.pid for p in worker_children(recursive)} - before
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.02)


def assert_no_new_processes(before: set[int]) -> None:
    left = processes_left(before)
    assert not left, f"processes left alive: {sorted(left)}"


# ---------------------------------------------------------------- file descriptors
def open_descriptors() -> dict[int, str]:
    """This process's open file descriptors and what each is (a pipe, a socket, a file)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def queue_feeders() -> list[threading.Thread]:
    """multiprocessing queues' feeder threads still running. A closed queue's pipe (its
    two descriptors) is closed by its feeder thread as that thread ends, a moment after
    ``close()`` returns: torch cancels the join, so nobody waits for it."""
    return [t for t in threading.enumerate() if t.name == "QueueFeederThread" and t.is_alive()]


def descriptors_gained(before: dict[int, str], guard_s: float = HANG_GUARD_S) -> list[str]:
    """Descriptors open now beyond ``before``'s count, as ``"fd -> what"`` (empty: none).

    Counted once the closing is over: garbage collected (a dropped queue's finalizer
    tells its feeder thread to close the pipe) and every queue feeder thread ended
    (observed, not waited for by the clock; ``guard_s`` is a hang guard, and a feeder
    thread still alive then is reported as what keeps the descriptors open).
    """
    end = time.monotonic() + guard_s
    while True:
        gc.collect()
        feeders = queue_feeders()
        if not feeders or time.monotonic() > end:
            break
        for thread in feeders:
            thread.join(timeout=0.1)
    now = open_descriptors()
    if len(now) <= len(before):
        return []
    gained = [f"{fd} -> {what}" for fd, what in sorted(now.items()) if before.get(fd) != what]
    if feeders:
        gained.append(f"({len(feeders)} queue feeder threads still running)")
    return gained


# ---------------------------------------------------------------- objects
def live_objects(*extra: type) -> collections.Counter[str]:
    """Live objects of the kinds a pass makes and must let go of (Runs, DataLoaders,
    their iterators, multiprocessing queues, and the ``extra`` kinds), by class name,
    counted after a collection: exact, where RSS drifts with the allocator's arenas."""
    from multiprocessing.queues import Queue

    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    from dlviz.run import Run

    kinds = (Run, DataLoader, _BaseDataLoaderIter, Queue, *extra)
    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects()
                               if issubclass(type(o), kinds))


# ---------------------------------------------------------------- signals
@contextlib.contextmanager
def python_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread for the block (Python's own
    handler), whatever this process inherited: a test command started in the
    background (``./dev test &``, nohup, a CI wrapper) has SIGINT ignored, and a
    Ctrl-C sent then would do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------- the ledger
def check_ledger_adds_up(run: Any, n: int | None = None) -> None:
    """Every index has exactly one fate; the summary's counts are the fates' counts
    and add up to the dataset (of ``n`` samples, when given)."""
    s = run.summary()
    fates = run.fates()
    assert set(fates.values()) <= set(FATE_NAMES), set(fates.values())
    counted = collections.Counter(fates.values())
    assert {f: s[f] for f in FATE_NAMES} == {f: counted.get(f, 0) for f in FATE_NAMES}, s
    assert sum(s[f] for f in FATE_NAMES) == s["dataset_size"] == len(fates), s
    if n is not None:
        assert s["dataset_size"] == n, s


# ---------------------------------------------------------------- loop patterns
def detached(exc: BaseException) -> BaseException:
    """The exception without tracebacks: they hold torch's iterator (and its workers)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def loop_all(loader: Iterable[Any]) -> list[int]:
    """A plain ``for`` loop: every sample seen, in order."""
    return [i for batch in loader for i in batch.tolist()]


def loop_try_around_for(loader: Iterable[Any]) -> tuple[list[int], list[BaseException]]:
    """``try:`` around the whole ``for`` loop: the pass ends at the first error."""
    seen: list[int] = []
    errors: list[BaseException] = []
    try:
        for batch in loader:
            seen += batch.tolist()
    except Exception as exc:
        errors.append(detached(exc))
    return seen, errors


def loop_try_around_next(loader: Iterable[Any]) -> tuple[list[int], list[BaseException]]:
    """``try:`` around each ``next()``: skip the failed batch and go on."""
    seen: list[int] = []
    errors: list[BaseException] = []
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except Exception as exc:
            errors.append(detached(exc))
            continue
        seen += batch.tolist()
    del it
    return seen, errors


# ---------------------------------------------------------------- saved runs
def fixture_paths() -> list[Path]:
    """The saved runs in ``tests/fixtures/``, sorted by name."""
    return sorted(FIXTURES.glob("*.json"))


def fixture_text(name: str) -> str:
    """The JSON text of ``tests/fixtures/<name>.json``."""
    return (FIXTURES / f"{name}.json").read_text()


# ---------------------------------------------------------------- the command line
def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m dlviz ARGS`` in a fresh interpreter (this checkout's dlviz, Agg)."""
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "dlviz", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
