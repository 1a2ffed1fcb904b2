"""Record a real DataLoader run: :func:`trace` and :func:`record`.

``trace(loader)`` rebuilds your DataLoader from instrumented parts and gives you
something to iterate exactly like the loader. The batches are the same objects
your loop would get untraced (same values, order and count); on the side, dlviz
notes what every process did and when:

- in the main process: when each batch's indices were drawn from the sampler and
  sent to a worker (``dispatch``), when it came back (``arrive``) and was handed to
  you (``deliver``), how long ``__next__`` waited, how long your loop's step took;
- in each worker (or in the main process when ``num_workers=0``): every
  ``dataset[index]`` fetch, every ``collate_fn`` call (batch assembly), the
  worker's start, and whether a fetch raised or returned ``None``. These go to a
  shared-memory log (:mod:`dlviz.eventlog`) the moment they happen, so they
  survive a worker that raises, crashes or hangs.

When the pass ends (for any reason) the events become a :class:`dlviz.Run` with
a ledger of every sample's fate. ``record(loader)`` runs the loop for you with a
chosen error pattern. Lesson 0 introduces both; lesson 7 uses ``trace`` on a
loader you build yourself.

What the instrumented parts are (all importable, so spawn/forkserver can pickle
them whenever your own dataset and functions pickle):

- the sampler side: dlviz draws the batches itself from your sampler exactly as
  ``BatchSampler`` would, so it also sees the tail that ``drop_last`` throws away;
  a custom ``batch_sampler`` is used as is. Each batch travels as a :class:`_Batch`
  that carries its number to the worker;
- the dataset: a wrapper whose ``__getitems__`` (or ``__iter__`` for an
  IterableDataset) logs each fetch and calls your dataset;
- ``collate_fn`` and ``worker_init_fn``: wrappers that log and call yours.
  Inside a worker, ``get_worker_info().dataset`` is your dataset, not the wrapper.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data import _utils as torch_data_utils
from torch.utils.data._utils import signal_handling
from torch.utils.data._utils.worker import _IterableDatasetStopIteration
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from dlviz import _check, eventlog
from dlviz.assemble import build_run
from dlviz.eventlog import EventLog, clock
from dlviz.run import MAIN, ErrorRecord, Run

__all__ = ["trace", "record", "play", "Traced"]

MAX_STEP_MS = 60_000.0
"""The longest simulated training step :func:`record` takes (a minute)."""
MAX_KEYS = 10_000_000
"""The most keys ``expected`` may list (the ledger holds one fate per key)."""
LOG_RECORDS = 2**22
"""Records in the shared event log, all regions together (4 int64 each: 128 MiB)."""

_FATE_MARKS = {"delivered": "deliver", "failed": "lost"}  # a batch's fate -> its mark
_DIED = re.compile(r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) (?:exited unexpectedly|is killed)")
_TIMED_OUT = "DataLoader timed out after"


# ---------------------------------------------------------------- sampler side
class _Batch:
    """A batch of indices on its way to a worker, tagged with its number.

    When a worker (or the main process) starts on it, it announces its number in
    :data:`dlviz.eventlog.current_batch`, so every fetch is logged with its batch.
    """

    __slots__ = ("seq", "indices")

    def __init__(self, seq: int, indices: list[Any]) -> None:
        self.seq = seq
        self.indices = indices

    def __iter__(self) -> Iterator[Any]:
        eventlog.current_batch = self.seq
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> tuple[int, list[Any]]:
        return self.seq, self.indices

    def __setstate__(self, state: tuple[int, list[Any]]) -> None:
        self.seq, self.indices = state


class _BatchDrawer:
    """Draws batches from the user's sampler (main process only) and logs each draw."""

    def __init__(self, loader: DataLoader[Any], box: _EpochBox) -> None:
        self.box = box
        self.seq = itertools.count()
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.source: Any
        if type(loader.batch_sampler) is BatchSampler:  # draw ourselves: see the dropped tail
            self.mode, self.source = "batch", loader.batch_sampler.sampler
            self.batch_size = loader.batch_sampler.batch_size
            self.drop_last = loader.batch_sampler.drop_last
        elif loader.batch_sampler is not None:  # a custom batch_sampler, used as is
            self.mode, self.source = "custom", loader.batch_sampler
        else:  # batch_size=None: one sample at a time
            self.mode, self.source = "single", loader.sampler

    def __len__(self) -> int:
        if self.mode == "batch":
            return len(BatchSampler(self.source, self.batch_size or 1, self.drop_last))
        return len(self.source)

    def __iter__(self) -> Iterator[_Batch]:
        source = iter(self.source)
        epoch = self.box.epoch
        while True:
            if self.mode == "batch":
                indices = list(itertools.islice(source, self.batch_size))
                if not indices:
                    return
                if self.drop_last and len(indices) < (self.batch_size or 1):
                    epoch.dropped_tail(next(self.seq), indices)
                    return
            else:
                try:
                    item = next(source)
                except StopIteration:
                    return
                indices = list(item) if self.mode == "custom" else [item]
            batch = _Batch(next(self.seq), indices)
            epoch.drawn(batch)
            yield batch


# ---------------------------------------------------------------- worker side
class _TracedMapDataset(Dataset[Any]):
    """Your map-style dataset, with every fetch logged to the shared event log."""

    def __init__(self, inner: Any, log: EventLog) -> None:
        self.inner = inner
        self.log = log

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: Any) -> Any:  # torch always calls __getitems__; kept for safety
        return self.__getitems__(index)[0] if isinstance(index, _Batch) else self.inner[index]

    def __getitems__(self, batch: _Batch) -> list[Any]:
        log, inner, indices, seq = self.log, self.inner, batch.indices, batch.seq
        eventlog.current_batch = seq
        if not log.attached:
            log.attach(_worker_id())
        if not log.room(len(indices) + 1):
            return [inner[i] for i in indices]
        out: list[Any] = []
        if log.local:
            # the main process (num_workers=0): nothing there outlives it, so the
            # start times go to a list, and into the log when the batch ends
            times: list[int] = []
            nones: list[int] = []
            note = times.append
            try:
                for index in indices:
                    note(clock())
                    sample = inner[index]
                    if sample is None:
                        nones.append(len(out))
                    out.append(sample)
            finally:
                log.note_fetches(seq, indices, times, nones,
                                 raised_at=clock() if len(out) < len(times) else 0)
            return out
        # a worker: the batch's records are laid out first; each fetch then stores its
        # start time in shared memory as it begins, so a fetch that never ends (the
        # worker crashed or hangs) is still there for the main process to see
        view, at = log.view, log.lay_out_fetches(seq, indices)
        assert view is not None
        for index in indices:
            view[at] = clock()
            at += eventlog.FIELDS
            try:
                sample = inner[index]
            except BaseException:
                log.pos = at - eventlog.TIME
                log.write(eventlog.RAISED, seq, view[log.pos - eventlog.FIELDS + 2], clock())
                raise
            if sample is None:
                view[at - eventlog.FIELDS - eventlog.TIME] = eventlog.NONE
            out.append(sample)
        log.pos = at - eventlog.TIME
        return out


class _TracedStream(IterableDataset[Any]):
    """Your IterableDataset, with every item it yields logged under its key."""

    def __init__(self, inner: Any, log: EventLog, key: Callable[[Any], int]) -> None:
        self.inner = inner
        self.log = log
        self.key = key

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        if not self.log.attached:
            self.log.attach(_worker_id())
        return _KeyedIterator(iter(self.inner), self.log, self.key)


class _KeyedIterator:
    """Logs each ``next()`` of a stream: start, then the key once the item is there.

    An iterator object, not a generator: if your iterator can go on after raising,
    so can this one.
    """

    def __init__(self, inner: Iterator[Any], log: EventLog, key: Callable[[Any], int]) -> None:
        self.inner, self.log, self.key = inner, log, key

    def __iter__(self) -> _KeyedIterator:
        return self

    def __next__(self) -> Any:
        log, seq = self.log, eventlog.current_batch
        if not log.room(2):
            return next(self.inner)
        log.write(eventlog.FETCH, seq, -1, clock())
        try:
            item = next(self.inner)
        except StopIteration:
            log.write(eventlog.END, seq, -1, clock())
            raise
        except BaseException:
            log.write(eventlog.RAISED, seq, -1, clock())
            raise
        if item is None:
            log.set_code_of_last(eventlog.NONE)
        else:
            log.set_value_of_last(self.key(item))
        return item


class _TracedCollate:
    """Your ``collate_fn``, with batch assembly logged."""

    def __init__(self, inner: Callable[[Any], Any], log: EventLog, unbatched: bool) -> None:
        self.inner, self.log, self.unbatched = inner, log, unbatched

    def __call__(self, samples: list[Any]) -> Any:
        log, seq = self.log, eventlog.current_batch
        if not log.attached:
            log.attach(_worker_id())
        data = samples[0] if self.unbatched else samples  # batch_size=None: one sample
        if not log.room(2):
            return self.inner(data)
        log.write(eventlog.COLLATE, seq, -1, clock())
        try:
            out = self.inner(data)
        except BaseException:
            log.write(eventlog.COLLATE_RAISED, seq, -1, clock())
            raise
        log.write(eventlog.COLLATED, seq, -1, clock())
        return out


class _TracedWorkerInit:
    """Runs first in every worker: logs its start, then calls your ``worker_init_fn``."""

    def __init__(self, inner: Callable[[int], None] | None, log: EventLog, dataset: Any) -> None:
        self.inner, self.log, self.dataset = inner, log, dataset

    def __call__(self, worker_id: int) -> None:
        self.log.attach(worker_id)
        self.log.write(eventlog.WORKER_START, -1, _pid(), clock())
        info = get_worker_info()
        if info is not None:  # your code sees your dataset, not dlviz's wrapper
            object.__setattr__(info, "dataset", self.dataset)
        if self.inner is not None:
            self.inner(worker_id)


def _worker_id() -> int:
    info = get_worker_info()
    return MAIN if info is None else info.id


def _pid() -> int:
    return os.getpid()


# ---------------------------------------------------------------- main side
class _EpochBox:
    """Where the iterator hooks find the epoch being recorded (one per traced loader)."""

    epoch: _Epoch


class _TracedLoader(DataLoader[Any]):
    """A DataLoader whose batches come from :class:`_BatchDrawer` and whose iterator
    reports dispatches, arrivals and deliveries."""

    dlviz_box: _EpochBox
    dlviz_drawer: _BatchDrawer

    @property
    def _index_sampler(self) -> Any:
        return self.dlviz_drawer

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        return _TracedWorkersIter(self)


class _TracedWorkersIter(_MultiProcessingDataLoaderIter):
    """torch's multi-worker iterator, reporting what it does to the current epoch.

    Worker deaths are noticed here, inside ``next()``, and nowhere else. torch also
    registers its workers with a SIGCHLD handler that raises a dead worker's error
    wherever the main thread happens to be: in the middle of unpickling another
    worker's batch (that batch is then lost while torch goes on waiting for it:
    the loop hangs), inside dlviz's bookkeeping, or, when the explorer records in
    a background thread, in whatever your kernel is running. dlviz takes its
    workers off that handler and checks their health every 50 ms while it waits;
    after a death, it also frees the result queue if the dead worker held it.
    """

    def __init__(self, loader: _TracedLoader) -> None:
        self._dlviz_box = loader.dlviz_box
        self._dlviz_last_idx: Any = None
        self._dlviz_deaths = 0  # worker deaths noticed so far
        self._dlviz_shutdown_at: int | None = None  # when torch began to stop the workers
        try:
            super().__init__(loader)
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
            try:
                ok, data = super()._try_get_data(min(0.05, max(0.0, end - time.monotonic())))
            except RuntimeError as exc:  # torch's own report (a dead worker, too many files)
                self._dlviz_deaths += bool(_DIED.search(str(exc)))
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
            self._dlviz_box.epoch.arrived(idx, data, self)
        return idx, data

    def _process_data(self, data: Any, worker_idx: int) -> Any:
        # the task being handed out: in order, the one just past _rcvd_idx; out of
        # order, always the one _get_data just returned (torch stores nothing then)
        task = self._rcvd_idx - 1 if self._in_order else self._dlviz_last_idx
        self._dlviz_box.epoch.processing(task, worker_idx, isinstance(data, ExceptionWrapper))
        return super()._process_data(data, worker_idx)


class _Epoch:
    """Everything the main process notes during one pass; :meth:`result` makes the Run.

    Notes are raw tuples on the absolute clock (cheap on the hot path); they become
    :class:`dlviz.Event` objects only when the Run is built, on first request.
    """

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.origin = clock()
        # (kind, worker, batch, index, start, end, status), absolute clock
        self.marks: list[tuple[str, int, int, int, int, int, str]] = []
        self.errors: list[ErrorRecord] = []
        self.batches: dict[int, list[Any]] = {}  # seq -> indices, in draw order
        self.tail: tuple[int, list[Any]] | None = None  # dropped by drop_last
        self.task_seq: dict[int, int] = {}  # torch's task number -> our batch number
        self.batch_worker: dict[int, int] = {}
        self.resolved: dict[int, str] = {}  # seq -> "delivered" | "failed" | "empty"
        self.last_drawn = -1
        self.current: tuple[int, int, bool] | None = None  # (seq, worker, failed)
        self.iterator: Any = None
        self.pids: dict[int, int] = {}
        self.stop: str | None = None  # set when the pass is over
        self._run: Run | None = None
        self.loop: dict[str, Any] = {}  # record()'s loop settings, for the Run's config

    def now(self) -> int:
        return clock() - self.origin

    def mark(self, kind: str, worker: int, seq: int, at: int | None = None) -> None:
        """An instant on the timeline, at ``at`` (absolute clock) or now."""
        t = clock() if at is None else at
        self.marks.append((kind, worker, seq, -1, t, t, ""))

    # --- hooks (called from the sampler side and torch's iterator) ---
    def drawn(self, batch: _Batch) -> None:
        self.batches[batch.seq] = batch.indices
        self.last_drawn = batch.seq
        if self.traced.num_workers == 0:
            self.batch_worker[batch.seq] = MAIN
            self.mark("dispatch", MAIN, batch.seq)

    def dropped_tail(self, seq: int, indices: list[Any]) -> None:
        self.tail = (seq, indices)

    def dispatched(self, task: int, worker: int) -> None:
        self.task_seq[task] = self.last_drawn
        self.batch_worker[self.last_drawn] = worker
        self.mark("dispatch", worker, self.last_drawn)

    def arrived(self, task: int, data: Any, it: _TracedWorkersIter) -> None:
        if task not in self.task_seq:
            # a persistent worker's batch from a pass cut short: torch discards it
            # while it starts this pass, before anything of this pass is sent
            return
        seq = self.task_seq[task]
        worker = self.batch_worker.get(seq, MAIN)
        self.mark("arrive", worker, seq)
        if isinstance(data, _IterableDatasetStopIteration):
            # the worker's stream is exhausted: this request and every other one
            # still queued for that worker will never bring a batch
            for other, info in list(it._task_info.items()):
                if info[0] == data.worker_id and len(info) == 1:
                    self.resolve(self.task_seq.get(other, -1), "empty", data.worker_id)
            self.resolve(seq, "empty", worker)

    def processing(self, task: int, worker: int, failed: bool) -> None:
        """torch is handing out a task (before it sends the next one to a worker)."""
        seq = self.task_seq.get(task, -1)
        self.current = (seq, worker, failed)
        self.resolve(seq, "failed" if failed else "delivered", worker)

    # --- the pass ---
    def resolve(self, seq: int, fate: str, worker: int, at: int | None = None) -> None:
        """Give batch ``seq`` its fate (once) and mark it on the timeline, at ``at`` or now."""
        if seq < 0 or seq in self.resolved:
            return
        self.resolved[seq] = fate
        self.mark(_FATE_MARKS.get(fate, fate), worker, seq, at)

    def error(self, exc: BaseException) -> str:
        """Note an error the loop saw; returns its kind."""
        t = self.now()
        message = str(exc)
        it = self.iterator
        self.lose_current()
        died = _DIED.search(message)
        if died:
            pids = [int(p) for p in died.group(1).replace(" ", "").split(",") if p]
            workers = [w for w, pid in self.pids.items() if pid in pids]
            for w in workers:  # everything it still held is lost with it
                for task, info in list(getattr(it, "_task_info", {}).items()):
                    if info[0] == w and len(info) == 1:
                        self.resolve(self.task_seq.get(task, -1), "failed", w)
            worker = workers[0] if workers else None
            batch, index = self._unfinished_fetch(worker)  # what it was doing when it died
            self.errors.append(ErrorRecord("worker_died", worker, index, batch, t, message))
            return "worker_died"
        if isinstance(exc, RuntimeError) and message.startswith(_TIMED_OUT):
            seq, worker = self._waited_for()
            self.resolve(seq, "failed", MAIN if worker is None else worker)
            batch, index = self._unfinished_fetch(worker)  # the fetch that hangs, if any
            self.errors.append(ErrorRecord("timeout", worker, index if batch == seq else None,
                                           seq if seq >= 0 else None, t, message))
            return "timeout"
        if self.current is not None:  # torch was handing out this batch: it is lost
            seq, worker, _ = self.current
        elif self.traced.num_workers == 0 and self.last_drawn not in self.resolved:
            seq, worker = self.last_drawn, MAIN  # the fetch ran in this process
        else:  # raised by torch's main-process code (a sampler, say): no batch is lost
            seq, worker = -1, MAIN
        self.resolve(seq, "failed", worker)
        index = self._raised_index(seq) if seq >= 0 else None
        self.errors.append(ErrorRecord("exception", worker, index, seq if seq >= 0 else None,
                                       t, message))
        return "exception"

    def lose_current(self) -> None:
        """The batch torch was handing out never reached the loop (an error or a Ctrl-C
        landed before ``next()`` returned it): delivered -> lost."""
        if self.current is None or self.resolved.get(self.current[0]) != "delivered":
            return
        seq = self.current[0]
        self.resolved[seq] = "failed"
        for i in range(len(self.marks) - 1, -1, -1):
            kind, worker, batch, index, start, end, status = self.marks[i]
            if kind == "deliver" and batch == seq:
                self.marks[i] = ("lost", worker, batch, index, start, end, status)
                break

    def _waited_for(self) -> tuple[int, int | None]:
        """The batch ``__next__`` was waiting for when it timed out, and its worker."""
        it = self.iterator
        task_info = getattr(it, "_task_info", {})
        task = it._rcvd_idx if it is not None and it._in_order else min(task_info, default=-1)
        info = task_info.get(task)
        return self.task_seq.get(task, -1), (info[0] if info else None)

    def _unfinished_fetch(self, worker: int | None) -> tuple[int | None, int | None]:
        """``(batch, index)`` of the fetch ``worker`` started last and never finished."""
        for region, _pid, _over, records in self.traced.log.regions():
            if region == worker and records[-1, 0] == eventlog.FETCH:
                index = int(records[-1, 2])
                return int(records[-1, 1]), (index if index >= 0 else None)
        return None, None

    def _raised_index(self, seq: int) -> int | None:
        for _worker, _pid, _over, records in self.traced.log.regions():
            hit = records[(records[:, 0] == eventlog.RAISED) & (records[:, 1] == seq)]
            if len(hit):
                return int(hit[-1, 2]) if hit[-1, 2] >= 0 else None  # -1: a stream's key
        return None

    def finish(self, stop: str, shutdown: bool) -> None:
        """End the pass: note why, stop the workers (unless persistent and kept)."""
        if self.stop is None:
            self.stop = stop
            self.duration = self.now()
        if shutdown:
            hung = [e.worker for e in self.errors if e.kind == "timeout" and e.worker is not None]
            if self.stop == "interrupt":  # stop now, without waiting for any worker: one
                hung = list(range(self.traced.num_workers))  # may hang with no timeout
            _shutdown(self.iterator, hung=hung)

    def result(self) -> Run:
        """The Run of this pass, built once, on first request (a snapshot if still open)."""
        if self._run is not None:
            return self._run
        if self.stop is None:
            return build_run(self, "break", self.now())
        self._run = build_run(self, self.stop, self.duration)
        return self._run


def _shutdown(it: Any, hung: Sequence[int] = ()) -> None:
    """Stop an iterator's workers now; hung ones are terminated rather than awaited."""
    if not isinstance(it, _MultiProcessingDataLoaderIter) or it._shutdown:
        return
    if hung:
        if it._worker_pids_set:  # so torch's SIGCHLD handler does not report them
            signal_handling._remove_worker_pids(id(it))  # type: ignore[attr-defined]
            it._worker_pids_set = False
        for w in hung:
            if 0 <= w < len(it._workers):
                it._workers[w].terminate()
    it._shutdown_workers()


class TracedIterator:
    """One pass over a traced loader. Iterate it like the DataLoader's own iterator.

    ``next()`` may raise what the DataLoader raises; the pass goes on if you call
    ``next()`` again (the try-around-``next()`` pattern), as with torch.
    """

    def __init__(self, traced: Traced, epoch: _Epoch) -> None:
        self.traced = traced
        self.epoch = epoch
        epoch.iterator = iter(traced.loader)
        self.torch_iter = epoch.iterator
        epoch.pids = {i: w.pid for i, w in enumerate(getattr(self.torch_iter, "_workers", []))}

    def __iter__(self) -> TracedIterator:
        return self

    def __len__(self) -> int:
        return len(self.traced.loader)

    def __next__(self) -> Any:
        epoch = self.epoch
        if epoch.stop is not None:
            raise StopIteration
        start = clock()  # your step ran from the last wait's end to here (see build_run)
        epoch.current = None
        waited = None
        try:  # everything up to ``return``, so a Ctrl-C anywhere before it is seen here
            batch = next(self.torch_iter)
            end = clock()
            if epoch.current is None:  # num_workers=0: the batch just fetched is handed out
                epoch.current = (epoch.last_drawn, MAIN, False)
                epoch.resolve(epoch.last_drawn, "delivered", MAIN, at=end)
            waited = ("wait", MAIN, epoch.current[0], -1, start, end, "ok")
            epoch.marks.append(waited)
        except StopIteration:  # the wait ends where torch began to stop its workers
            end = getattr(self.torch_iter, "_dlviz_shutdown_at", None) or clock()
            epoch.marks.append(("wait", MAIN, -1, -1, start, max(start, end), "ok"))
            self._end("exhausted")
            raise
        except KeyboardInterrupt:  # a Ctrl-C before the batch was returned: it is lost
            if waited is not None and epoch.marks[-1] is waited:
                epoch.marks.pop()  # the wait had ended, but the loop never got the batch
            epoch.marks.append(("wait", MAIN, -1, -1, start, clock(), "raised"))
            epoch.lose_current()
            self._end("interrupt")
            raise
        except Exception as exc:
            epoch.marks.append(("wait", MAIN, -1, -1, start, clock(), "raised"))
            epoch.error(exc)
            raise
        return batch

    def finish(self, stop: str = "break") -> Run:
        """End this pass now (workers stopped unless persistent) and return its Run."""
        self._end(stop)
        return self.epoch.result()

    def _end(self, stop: str) -> None:
        """End the pass without building its Run (that waits until someone asks)."""
        keep = self.traced.persistent and stop in ("exhausted", "break", "max_batches")
        self.epoch.finish(stop, shutdown=not keep)

    def __del__(self) -> None:
        try:
            if self.epoch.stop is None:
                self.epoch.finish("break", shutdown=not self.traced.persistent)
        except Exception:  # never raise from a finalizer
            pass


class Traced:
    """A DataLoader with a recorder attached; see :func:`trace`."""

    def __init__(self, loader: DataLoader[Any], *, key: Callable[[Any], int] | None = None,
                 expected: Sequence[int] | None = None) -> None:
        if not isinstance(loader, DataLoader):
            raise TypeError(f"loader must be a torch DataLoader, not {type(loader).__name__}")
        if isinstance(loader, _TracedLoader):
            raise ValueError("loader is already traced; pass the original DataLoader")
        dataset = loader.dataset
        self.iterable = isinstance(dataset, IterableDataset)
        self.key, self.expected = _stream_keys(dataset, key, expected, self.iterable)
        self.original = loader
        self.num_workers = loader.num_workers
        self.persistent = bool(loader.persistent_workers)
        self.epochs: list[_Epoch] = []
        self._iterator: TracedIterator | None = None
        self.log = EventLog(loader.num_workers, _capacity(loader))
        self.box = _EpochBox()
        self.drawer = _BatchDrawer(loader, self.box)
        method = _start_method(loader)
        if method in ("spawn", "forkserver"):
            _check_picklable(loader, key, method)
        self.config = _describe(loader, method, self.iterable)
        self.loader = self._rebuild(loader)

    def _rebuild(self, loader: DataLoader[Any]) -> _TracedLoader:
        if self.iterable:
            dataset: Any = _TracedStream(loader.dataset, self.log, self.key)
        else:
            dataset = _TracedMapDataset(loader.dataset, self.log)
        rebuilt = _TracedLoader(
            dataset,
            batch_size=(loader.batch_size or 1) if self.iterable else 1,
            drop_last=loader.drop_last,
            num_workers=loader.num_workers,
            collate_fn=_TracedCollate(loader.collate_fn, self.log,
                                      unbatched=loader.batch_sampler is None),
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=_TracedWorkerInit(loader.worker_init_fn, self.log, loader.dataset),
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
            persistent_workers=loader.persistent_workers,
            pin_memory_device=loader.pin_memory_device,
            in_order=getattr(loader, "in_order", True),
        )
        rebuilt.dlviz_box = self.box
        rebuilt.dlviz_drawer = self.drawer
        return rebuilt

    def __iter__(self) -> TracedIterator:
        return self.iterate()

    def iterate(self) -> TracedIterator:
        """Start a pass (an epoch). A pass still open is ended first."""
        if self._iterator is not None and self._iterator.epoch.stop is None:
            self._iterator.finish("break")
        if self.epochs:
            # build the last pass's Run from the log, then empty the log for this one:
            # new workers find it empty; persistent ones empty their own regions
            # before they log anything of this pass
            self.epochs[-1].result()
            if self.persistent:
                self.log.new_pass()
            else:
                self.log.reset()
        epoch = _Epoch(self)
        self.box.epoch = epoch
        self.epochs.append(epoch)
        try:
            self._iterator = TracedIterator(self, epoch)
        except BaseException as exc:  # the loader failed to start, or was interrupted starting
            interrupted = isinstance(exc, KeyboardInterrupt)
            if isinstance(exc, Exception):
                epoch.error(exc)
            epoch.finish("interrupt" if interrupted else "error", shutdown=False)
            exc.dlviz_run = epoch.result()  # type: ignore[attr-defined]
            raise
        return self._iterator

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def run(self) -> Run:
        """The Run of the latest pass (a snapshot if that pass is still going)."""
        if not self.epochs:
            raise RuntimeError("nothing recorded yet: iterate over the traced loader first")
        return self.epochs[-1].result()

    @property
    def runs(self) -> list[Run]:
        """One Run per pass so far, oldest first."""
        return [epoch.result() for epoch in self.epochs]

    def close(self) -> None:
        """Stop any workers still alive (persistent workers live until this)."""
        self._close("break")

    def _close(self, stop: str) -> None:
        if self._iterator is not None:
            self._iterator._end(stop)  # the Run is built only when someone asks for it
            _shutdown(self._iterator.torch_iter)

    def __enter__(self) -> Traced:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        # a Ctrl-C in your loop's body never reaches dlviz; it ends the pass here
        self._close("interrupt" if kind is not None and issubclass(kind, KeyboardInterrupt)
                    else "break")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def trace(loader: DataLoader[Any], *, key: Callable[[Any], int] | None = None,
          expected: Sequence[int] | None = None) -> Traced:
    """Wrap ``loader`` so that iterating it records a :class:`dlviz.Run`.

    ``for batch in trace(loader)`` gives the same batches as ``for batch in loader``;
    afterwards ``traced.run`` holds the recording (``traced.runs``: one per pass).
    For an IterableDataset, samples are ledgered by key: dlviz's streams supply
    keys; for yours pass ``key`` (sample -> int; importable under spawn) and
    ``expected`` (every key one pass should deliver). With persistent workers,
    call ``traced.close()`` (or use ``with``) to stop them. Lessons 0 and 7.
    """
    return Traced(loader, key=key, expected=expected)


def record(loader: DataLoader[Any], *, on_error: str = "raise", max_batches: int | None = None,
           step_ms: float = 0.0, key: Callable[[Any], int] | None = None,
           expected: Sequence[int] | None = None) -> Run:
    """Run one pass over ``loader`` with a loop of your choice and return its Run.

    Args:
        on_error: what the loop does when ``next()`` raises:
            ``"raise"``: let it propagate (the Run is on the exception as
            ``exc.dlviz_run``); ``"stop"``: end the pass, as a ``try`` around the
            whole ``for`` loop does; ``"continue"``: skip the failed batch and go on,
            as a ``try`` around each ``next()`` does. A timeout always ends the
            pass: the hung batch would time out again on every ``next()``.
        max_batches: stop after this many delivered batches (a ``break``).
        step_ms: simulated training step per batch (time.sleep), to see the
            workers prefetch while your loop is busy; at most :data:`MAX_STEP_MS`.
        key, expected: see :func:`trace`.

    All worker processes of the pass are stopped before this returns, whatever
    happened; a KeyboardInterrupt stops them at once (a worker may hang) and
    carries the Run as ``exc.dlviz_run`` too. Lessons 1-8.
    """
    on_error = _check.choice("on_error", on_error, ("raise", "stop", "continue"))
    max_batches = _check.optional_count("max_batches", max_batches)
    step_s = _check.non_negative("step_ms", step_ms, maximum=MAX_STEP_MS) / 1000
    return play(Traced(loader, key=key, expected=expected), on_error, max_batches, step_s)


def play(traced: Traced, on_error: str, max_batches: int | None, step_s: float,
         cancel: Callable[[], bool] | None = None, keep_workers: bool = False) -> Run:
    """The loop that :func:`record` runs (arguments already checked).

    ``cancel`` is asked before each batch; when it says True the pass ends as if
    the loop broke out (the explorer uses it when a newer slider value arrives).
    ``keep_workers`` leaves persistent workers up for the next pass (the explorer
    re-runs them while only loop settings change).
    """
    it = traced.iterate()
    it.epoch.loop = {"on_error": on_error, "max_batches": max_batches, "step_ms": step_s * 1000}
    stop = "exhausted"
    delivered = 0
    try:
        while max_batches is None or delivered < max_batches:
            if cancel is not None and cancel():
                stop = "break"
                break
            try:
                next(it)
            except StopIteration:
                break
            except Exception as exc:
                last = it.epoch.errors[-1] if it.epoch.errors else None
                if on_error == "raise":
                    exc.dlviz_run = it.finish("error")  # type: ignore[attr-defined]
                    raise
                if on_error == "stop" or (last is not None and last.kind == "timeout"):
                    stop = "error"
                    break
                continue
            delivered += 1
            if step_s:
                time.sleep(step_s)
        else:
            stop = "max_batches"
    except KeyboardInterrupt as exc:
        exc.dlviz_run = it.finish("interrupt")  # type: ignore[attr-defined]
        raise
    finally:
        run = it.finish(stop)
        if not keep_workers:
            _shutdown(it.torch_iter)
    return run


# ---------------------------------------------------------------- helpers
def _stream_keys(dataset: Any, key: Callable[[Any], int] | None,
                 expected: Sequence[int] | None, iterable: bool
                 ) -> tuple[Callable[[Any], int], list[int] | None]:
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function sample -> int, not {type(key).__name__}")
    if expected is not None:
        if isinstance(expected, (str, bytes)) or not hasattr(expected, "__iter__"):
            raise TypeError(f"expected must be a collection of int keys, "
                            f"not {type(expected).__name__}")
    if not iterable:
        if key is not None or expected is not None:
            raise ValueError("key and expected are for IterableDatasets; a map-style "
                             "dataset is ledgered by index")
        return _no_key, None
    if expected is not None:
        expected = _expected_keys(expected)
    if key is None:
        key = getattr(dataset, "sample_key", None)
        if key is None:
            raise ValueError("an IterableDataset needs key= (sample -> int) so dlviz can "
                             "tell its samples apart; dlviz's own streams provide it")
    if expected is None and hasattr(dataset, "expected_keys"):
        expected = list(dataset.expected_keys())
    return _IntKey(key), expected


def _expected_keys(expected: Any) -> list[int]:
    """``expected`` as a list of ints, checked one by one (``range(10**12)`` fails fast)."""
    try:
        items = iter(expected)
    except TypeError:  # a 0-d tensor, say
        raise TypeError(f"expected must be a collection of int keys, "
                        f"not {type(expected).__name__}") from None
    try:
        size = len(expected)
    except TypeError:  # no len(): counted below
        size = 0
    except OverflowError:
        size = MAX_KEYS + 1
    keys: list[int] = []
    for k in items:
        if size > MAX_KEYS or len(keys) == MAX_KEYS:
            raise ValueError(f"expected has more than {MAX_KEYS:_} keys")
        keys.append(_check.integer("expected item", k))
    return keys


def _no_key(sample: Any) -> int:
    return -1


class _IntKey:
    """Calls the key function and insists on an int (the log stores int64)."""

    def __init__(self, key: Callable[[Any], int]) -> None:
        self.key = key

    def __call__(self, sample: Any) -> int:
        value = self.key(sample)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = int(value.item())
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        raise TypeError(f"key must return an int, got {type(value).__name__}")


def _capacity(loader: DataLoader[Any]) -> int:
    """Records per region: one pass over all the samples (persistent workers empty their
    region at the start of each pass), but no more than a share of :data:`LOG_RECORDS`
    (a dataset of a billion samples must not allocate tens of GB of shared memory
    before its first batch).

    A region that fills up stops recording and the Run says so in its notes.
    """
    try:
        sized: Any = (loader.sampler if loader.batch_sampler is None
                      or type(loader.batch_sampler) is BatchSampler else loader.dataset)
        samples = len(sized)
    except (TypeError, OverflowError):  # no len(), or one too large for len()
        samples = 65536
    batches = samples // max(1, loader.batch_size or 1) + 1
    per_pass = samples + 3 * batches + 64  # a fetch per sample; collate, end per batch
    most = max(4096, LOG_RECORDS // (loader.num_workers + 1))
    return min(most, per_pass)


def _start_method(loader: DataLoader[Any]) -> str:
    if loader.num_workers == 0:
        return "none"
    ctx = loader.multiprocessing_context
    if ctx is None:
        return str(multiprocessing.get_start_method())
    return str(ctx.get_start_method())


class _WorkerPickler(pickle.Pickler):
    """Pickles as a spawned worker will unpickle: refuses what lives only in ``__main__``.

    In a notebook, ``__main__`` is the kernel: a class defined in a cell pickles fine
    here, by name, but a fresh worker process cannot import that name back.
    """

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, (type, types.FunctionType))
                and getattr(obj, "__module__", None) == "__main__"
                and not hasattr(sys.modules["__main__"], "__file__")):
            raise pickle.PicklingError(
                f"{obj.__qualname__} is defined in the notebook, not in a module")
        return NotImplemented


def _check_picklable(loader: DataLoader[Any], key: Any, method: str) -> None:
    """Under spawn/forkserver, say early (and clearly) what cannot reach a worker."""
    parts = {"dataset": loader.dataset, "collate_fn": loader.collate_fn,
             "worker_init_fn": loader.worker_init_fn, "key": key}
    for name, part in parts.items():
        if part is None:
            continue
        try:
            _WorkerPickler(io.BytesIO()).dump(part)
        except Exception as exc:
            raise ValueError(
                f"{name} cannot be sent to {method} workers: {exc}. Under spawn and "
                "forkserver it must be importable (defined in a module, not a notebook "
                "cell or a lambda); see lesson 4") from None


def _describe(loader: DataLoader[Any], method: str, iterable: bool) -> dict[str, Any]:
    dataset = loader.dataset
    return {
        "dataset": type(dataset).__name__,
        "dataset_kind": "iterable" if iterable else "map",
        "num_workers": loader.num_workers,
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "prefetch_factor": loader.prefetch_factor if loader.num_workers > 0 else None,
        "persistent_workers": bool(loader.persistent_workers),
        "in_order": bool(getattr(loader, "in_order", True)),
        "pin_memory": bool(loader.pin_memory),
        "timeout": float(loader.timeout),
        "start_method": method,
        "sampler": type(loader.sampler).__name__,
        "batch_sampler": (None if loader.batch_sampler is None
                          else type(loader.batch_sampler).__name__),
        "torch": torch.__version__.split("+")[0],
    }
