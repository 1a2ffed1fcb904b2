"""Every private torch name dlviz relies on, in one place, checked at import.

dlviz records *torch's own* multi-worker iterator: it subclasses
``_MultiProcessingDataLoaderIter`` and hooks the moments the public API does not
expose (a batch's indices sent to a worker, a batch arriving, a batch handed
out), and reads a few of its fields (``_task_info``, ``_rcvd_idx``...). These
names are private and may change in any torch release, so :func:`probe` checks
each one when dlviz is imported and refuses an untested torch with one clear
error naming the supported range, instead of recording a pass wrongly.
Also here: the text of the torch messages dlviz reads (a dead worker, a timeout).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import multiprocessing
import multiprocessing.connection
import re
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from dlviz import interrupts
from dlviz.eventlog import clock

if TYPE_CHECKING:
    from dlviz.recorder import _BatchDrawer, _Epoch

OLDEST = (2, 7)
"""The oldest torch whose private names match dlviz's hooks (2.6's ``_process_data``
takes one argument fewer). CI tests 2.13 (every test) and 2.14 (recorder, facts,
reliability); for any other torch, :func:`probe` checks each name at import."""
SUPPORTED_TEXT = "torch 2.7 or newer (tested with 2.13 and 2.14)"

_ITER_NAMES = ("_try_put_index", "_try_get_data", "_get_data", "_process_data",
               "_shutdown_workers", "_mark_worker_as_unavailable", "_reset")


class UnsupportedTorch(ImportError):
    """This torch is older than :data:`OLDEST`, or lacks a private name dlviz needs."""


def probe(version: str | None = None) -> None:
    """Check that torch has every private name dlviz uses; raise :class:`UnsupportedTorch`.

    ``version`` (default: the installed one) must be :data:`OLDEST` or newer; a
    newer torch is allowed only when every name is still there.
    """
    version = torch.__version__ if version is None else version
    found = re.match(r"(\d+)\.(\d+)", version)
    release = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    missing = []
    try:
        from torch._utils import ExceptionWrapper  # noqa: F401
        from torch.utils.data import _utils as data_utils
        from torch.utils.data._utils import signal_handling
        from torch.utils.data._utils.worker import _IterableDatasetStopIteration  # noqa: F401
        from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as It
    except ImportError as exc:
        missing.append(str(exc))
    else:
        missing += [f"_MultiProcessingDataLoaderIter.{n}" for n in _ITER_NAMES
                    if not hasattr(It, n)]
        if not hasattr(signal_handling, "_remove_worker_pids"):
            missing.append("signal_handling._remove_worker_pids")
        if not hasattr(data_utils, "MP_STATUS_CHECK_INTERVAL"):
            missing.append("_utils.MP_STATUS_CHECK_INTERVAL")
        if hasattr(It, "_process_data"):
            params = list(inspect.signature(It._process_data).parameters)
            if params[1:3] != ["data", "worker_idx"]:  # torch 2.6: (self, data)
                missing.append(f"_process_data(data, worker_idx) (this torch has {params[1:]})")
    if missing or release < OLDEST:
        raise UnsupportedTorch(
            f"dlviz needs {SUPPORTED_TEXT}; this is torch {version}"
            + (f", which lacks {', '.join(missing)}" if missing else "")
            + ". Install a supported torch (pip install 'torch>=2.7').")


probe()

from torch._utils import ExceptionWrapper  # noqa: E402
from torch.utils.data import _utils as torch_data_utils  # noqa: E402
from torch.utils.data._utils import signal_handling  # noqa: E402
from torch.utils.data._utils.worker import _IterableDatasetStopIteration  # noqa: E402
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter  # noqa: E402

DIED = re.compile(r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) (?:exited unexpectedly|is killed)")
"""torch's message for a dead worker (``_utils/signal_handling.py``, ``dataloader.py``)."""
TIMED_OUT = "DataLoader timed out after"
"""How torch's ``timeout`` error begins (``dataloader.py``)."""


def dead_pids(message: str) -> list[int] | None:
    """The pids in torch's "worker (pid(s) N, M) exited" message, or None if it is not one."""
    found = DIED.search(message)
    if found is None:
        return None
    return [int(p) for p in re.findall(r"\d+", found.group(1))]


class EpochBox:
    """Where the iterator hooks find the epoch being recorded (one per traced loader)."""

    epoch: _Epoch


class _DrawnBatches:
    """A loader whose batches come from dlviz's drawer (``recorder._BatchDrawer``)."""

    dlviz_box: EpochBox
    dlviz_drawer: _BatchDrawer

    @property
    def _index_sampler(self) -> Any:
        return self.dlviz_drawer


class TracedLoader(_DrawnBatches, DataLoader[Any]):
    """A DataLoader whose batches come from dlviz's drawer and whose iterator reports
    dispatches, arrivals and deliveries."""

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        return _TracedWorkersIter(self)


if TYPE_CHECKING:
    _Iter = _MultiProcessingDataLoaderIter
else:  # a mixin: the iterator class comes second in the subclasses below
    _Iter = object


class _WorkerHooks(_Iter):
    """The hooks of a traced multi-worker iterator, reporting what it does to the epoch.

    Worker deaths are noticed here, inside ``next()``, and nowhere else. torch also
    registers its workers with a SIGCHLD handler that raises a dead worker's error
    wherever the main thread happens to be: in the middle of unpickling another
    worker's batch (that batch is then lost while torch goes on waiting for it:
    the loop hangs), inside dlviz's bookkeeping, or, when the explorer records in
    a background thread, in whatever your kernel is running. dlviz takes its
    workers off that handler and checks their health every 50 ms while it waits;
    after a death, it also frees the result queue if the dead worker held it.
    """

    _dlviz_with_state: bool  # torchdata's iterator passes (data, worker, state) around

    def __init__(self, loader: Any, *more: Any) -> None:
        self._dlviz_box = loader.dlviz_box
        self._dlviz_last_idx: Any = None
        self._dlviz_deaths = 0  # worker deaths noticed so far
        self._dlviz_shutdown_at: int | None = None  # when torch began to stop the workers
        try:
            super().__init__(loader, *more)
        except BaseException:  # interrupted (or failed) while starting the workers
            with contextlib.suppress(Exception):  # torch's finally terminates them
                self._shutdown_workers()
            raise
        if self._worker_pids_set:
            signal_handling._remove_worker_pids(id(self))  # type: ignore[attr-defined]
            self._worker_pids_set = False

    def _shutdown_workers(self) -> None:
        # torch stops the workers inside the next() that finds the pass over; the loop
        # was waiting for data only until then
        if self._dlviz_shutdown_at is None:
            self._dlviz_shutdown_at = clock()
        super()._shutdown_workers()

    def _try_put_index(self) -> None:
        before = self._send_idx
        super()._try_put_index()
        if self._send_idx != before:
            self._dlviz_box.epoch.dispatched(before, self._task_info[before][0])

    def _try_get_data(self, timeout: float = torch_data_utils.MP_STATUS_CHECK_INTERVAL) -> Any:
        # torch checks its workers' health only when a wait runs out (5 s, or the
        # user's timeout); waiting in slices of 50 ms notices a dead worker at once,
        # from any thread. The total wait (a user's timeout) is unchanged.
        end = time.monotonic() + timeout
        while True:
            interrupts.raise_if_lost()  # a Ctrl-C a finalizer swallowed: see interrupts
            try:
                ok, data = super()._try_get_data(min(0.05, max(0.0, end - time.monotonic())))
            except RuntimeError as exc:  # torch's own report (a dead worker, too many files)
                self._dlviz_deaths += bool(DIED.search(str(exc)))
                raise
            except Exception as exc:
                # a worker that dies just after sending a batch takes with it what
                # the batch's tensors need to be received (EOFError, connection
                # reset or refused): the worker is dying, report it as torch does
                dead = self._dlviz_dying_workers(within_s=1.0)
                if not dead:
                    raise
                self._dlviz_deaths += 1
                pids = ", ".join(str(self._workers[w].pid) for w in dead)
                raise RuntimeError(f"DataLoader worker (pid(s) {pids}) exited unexpectedly"
                                   ) from exc
            if ok or time.monotonic() >= end:
                return ok, data
            if self._dlviz_deaths:
                self._dlviz_free_result_queue()

    def _dlviz_free_result_queue(self) -> None:
        """Release the result queue's write lock if a dead worker holds it.

        Every worker sends its batches through one pipe, taking turns with a lock.
        A worker killed while sending (a crash right after finishing a batch) never
        lets go of it: the others can never send again, and the loop waits forever
        (plain torch too). A live worker holds the lock for microseconds, or for as
        long as the pipe is full; so a lock that stays taken for 0.5 s while the pipe
        is empty belongs to the dead. Its message went in whole or not at all (pipe
        writes of up to 4 KiB are atomic; dlviz's batches travel in shared memory).
        """
        queue = self._worker_result_queue
        lock, reader = getattr(queue, "_wlock", None), getattr(queue, "_reader", None)
        if lock is None or reader is None:  # Windows: no lock
            return
        if lock.acquire(timeout=0.5):  # free, or a live worker let go of it
            lock.release()
        elif not reader.poll():
            lock.release()

    def _dlviz_dying_workers(self, within_s: float) -> list[int]:
        """Active workers that are dead, or die within ``within_s``; marked unavailable
        (as torch marks a dead worker it finds), so that a loop that goes on skips them."""
        active = [self._workers[w] for w, up in enumerate(self._workers_status) if up]
        ready = multiprocessing.connection.wait([p.sentinel for p in active], timeout=within_s)
        for process in active:
            if process.sentinel in ready:  # its files are closed: it is exiting
                process.join(timeout=within_s)
        dead = [w for w, up in enumerate(self._workers_status)
                if up and not self._workers[w].is_alive()]
        for w in dead:
            self._mark_worker_as_unavailable(w)
        return dead

    def _get_data(self) -> Any:
        idx, data = super()._get_data()
        self._dlviz_last_idx = idx
        if isinstance(idx, int):
            batch = data[0] if self._dlviz_with_state else data  # torchdata: (data, worker, state)
            ended = batch.worker_id if isinstance(batch, _IterableDatasetStopIteration) else None
            # a stream that ran out: this request and every other one still queued for
            # that worker will never bring a batch
            others = [] if ended is None else pending_tasks(self, ended)
            self._dlviz_box.epoch.arrived(idx, ended, others)
        return idx, data

    def _process_data(self, data: Any, worker_idx: int, *state: Any) -> Any:
        # the task being handed out: in order, the one just past _rcvd_idx; out of
        # order, always the one _get_data just returned (torch stores nothing then)
        task = self._rcvd_idx - 1 if self._in_order else self._dlviz_last_idx
        self._dlviz_box.epoch.processing(task, worker_idx, isinstance(data, ExceptionWrapper))
        return super()._process_data(data, worker_idx, *state)


class _TracedWorkersIter(_WorkerHooks, _MultiProcessingDataLoaderIter):
    """torch's multi-worker iterator with dlviz's hooks."""

    _dlviz_with_state = False


# ---------------------------------------------------------------- torchdata
_STATEFUL_NAMES = ("_get_iterator", "state_dict", "load_state_dict")
_stateful_classes: dict[str, Any] = {}


def is_stateful_loader(loader: Any) -> bool:
    """Whether ``loader`` is a torchdata ``StatefulDataLoader`` (torchdata already imported:
    a loader of that type exists only if it is)."""
    module = sys.modules.get("torchdata.stateful_dataloader")
    return module is not None and isinstance(loader, module.StatefulDataLoader)


def traced_stateful_loader() -> Any:
    """The class of a traced ``StatefulDataLoader``: torchdata's own loader and iterator
    (so ``state_dict()`` is torchdata's), with dlviz's batches and hooks (lesson 09).

    Checked like torch's names: the torchdata private names it relies on must be there.
    """
    if "loader" in _stateful_classes:
        return _stateful_classes["loader"]
    sdl = importlib.import_module("torchdata.stateful_dataloader.stateful_dataloader")
    StatefulDataLoader: Any = sdl.StatefulDataLoader
    workers_iter: Any = getattr(sdl, "_StatefulMultiProcessingDataLoaderIter", None)
    params = list(inspect.signature(workers_iter._process_data).parameters) if workers_iter else []
    if params[1:4] != ["data", "worker_id", "state_dict"] or not all(
            hasattr(StatefulDataLoader, n) for n in _STATEFUL_NAMES):
        raise UnsupportedTorch("dlviz traces torchdata's StatefulDataLoader as torchdata 0.11 "
                               "has it; this torchdata's private names differ")

    class _TracedStatefulWorkersIter(_WorkerHooks, workers_iter):  # type: ignore[misc]
        _dlviz_with_state = True

    class TracedStatefulLoader(_DrawnBatches, StatefulDataLoader):  # type: ignore[misc]
        """A StatefulDataLoader whose batches come from dlviz's drawer."""

        next_iter_state: Any  # a state_dict() to resume from, set by load_state_dict()

        def _get_iterator(self) -> Any:
            if self.num_workers == 0:
                return super()._get_iterator()
            it = _TracedStatefulWorkersIter(self, self.next_iter_state)
            self.next_iter_state = None
            return it

    _stateful_classes["loader"] = TracedStatefulLoader
    return TracedStatefulLoader


def pending_tasks(it: Any, worker: int) -> list[int]:
    """torch's task numbers sent to ``worker`` whose batch has not come back."""
    return [task for task, info in list(getattr(it, "_task_info", {}).items())
            if info[0] == worker and len(info) == 1]


def waited_task(it: Any) -> tuple[int, int | None]:
    """The task ``__next__`` was waiting for (after a timeout), and its worker."""
    task_info = getattr(it, "_task_info", {})
    task = it._rcvd_idx if it is not None and it._in_order else min(task_info, default=-1)
    info = task_info.get(task)
    return task, (info[0] if info else None)


def worker_pids(it: Any) -> dict[int, int]:
    """worker number -> pid of an iterator's workers (none for num_workers=0)."""
    return {i: w.pid for i, w in enumerate(getattr(it, "_workers", []))}


def shutdown(it: Any, hung: Sequence[int] = ()) -> None:
    """Stop an iterator's workers now; hung ones are terminated rather than awaited."""
    if not isinstance(it, _WorkerHooks) or it._shutdown:
        return
    if hung:
        if it._worker_pids_set:  # so torch's SIGCHLD handler does not report them
            signal_handling._remove_worker_pids(id(it))  # type: ignore[attr-defined]
            it._worker_pids_set = False
        for w in hung:
            if 0 <= w < len(it._workers):
                it._workers[w].terminate()
    it._shutdown_workers()


def is_alive(it: Any) -> bool:
    """Whether an iterator still has workers up (a persistent pass can go on)."""
    return isinstance(it, _WorkerHooks) and not it._shutdown
