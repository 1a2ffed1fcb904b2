"""What runs inside a DataLoader worker: dlviz's wrappers around your dataset,
``collate_fn`` and ``worker_init_fn`` (public torch API only).

Each wrapper logs to the shared event log (:mod:`dlviz.eventlog`) the moment
something happens, so the records survive a worker that raises, crashes or
hangs. When ``num_workers=0`` the same wrappers run in the main process. They are
importable classes, so spawn and forkserver can pickle them whenever your own
dataset and functions pickle (lesson 4). :mod:`dlviz.recorder` builds them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dlviz import eventlog, state
from dlviz.eventlog import EventLog, clock
from dlviz.run import MAIN

current_batch = -1
"""The batch this process is working on, set by :class:`Batch` when torch starts on it.

This is process state on purpose: for an IterableDataset torch's fetcher only
iterates the request (``for _ in request: next(dataset_iter)``) and never hands
it to the dataset, so the batch number cannot travel with the call. One process
works on one batch at a time, so one slot per process is exact."""


class Batch:
    """A batch of indices on its way to a worker, tagged with its number.

    When a worker (or the main process) starts on it, it announces its number in
    :data:`current_batch`, so every fetch is logged with its batch.
    """

    __slots__ = ("seq", "indices")

    def __init__(self, seq: int, indices: list[Any]) -> None:
        self.seq = seq
        self.indices = indices

    def __iter__(self) -> Iterator[Any]:
        global current_batch
        current_batch = self.seq
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> tuple[int, list[Any]]:
        return self.seq, self.indices

    def __setstate__(self, state: tuple[int, list[Any]]) -> None:
        self.seq, self.indices = state



class TracedMapDataset(Dataset[Any]):
    """Your map-style dataset, with every fetch logged to the shared event log."""

    def __init__(self, inner: Any, log: EventLog) -> None:
        self.inner = inner
        self.log = log

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: Any) -> Any:  # torch always calls __getitems__; kept for safety
        return self.__getitems__(index)[0] if isinstance(index, Batch) else self.inner[index]

    def __getitems__(self, batch: Batch) -> list[Any]:
        global current_batch
        log, inner, indices, seq = self.log, self.inner, batch.indices, batch.seq
        current_batch = seq
        if not log.attached:
            log.attach(worker_id())
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


class StatefulTracedMapDataset(state.PassesState, TracedMapDataset):
    """A stateful dataset's wrapper: torchdata saves and restores your dataset's state
    through it, unchanged (:mod:`dlviz.state`, lesson 09)."""


class TracedStream(IterableDataset[Any]):
    """Your IterableDataset, with every item it yields logged under its key."""

    def __init__(self, inner: Any, log: EventLog, key: Callable[[Any], int]) -> None:
        self.inner = inner
        self.log = log
        self.key = key

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        if not self.log.attached:
            self.log.attach(worker_id())
        inner = iter(self.inner)  # a stateful iterator stays one (torchdata saves its state)
        kind = StatefulKeyedIterator if state.is_stateful(inner) else KeyedIterator
        return kind(inner, self.log, self.key)


class KeyedIterator:
    """Logs each ``next()`` of a stream: start, then the key once the item is there.

    An iterator object, not a generator: if your iterator can go on after raising,
    so can this one.
    """

    def __init__(self, inner: Iterator[Any], log: EventLog, key: Callable[[Any], int]) -> None:
        self.inner, self.log, self.key = inner, log, key

    def __iter__(self) -> KeyedIterator:
        return self

    def __next__(self) -> Any:
        log, seq = self.log, current_batch
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


class StatefulTracedStream(state.PassesState, TracedStream):
    """A stateful stream's wrapper: its state passes through unchanged (lesson 09)."""


class StatefulKeyedIterator(state.PassesState, KeyedIterator):
    """A stateful iterator's wrapper: its state passes through unchanged."""


class TracedCollate:
    """Your ``collate_fn``, with batch assembly logged."""

    def __init__(self, inner: Callable[[Any], Any], log: EventLog, unbatched: bool) -> None:
        self.inner, self.log, self.unbatched = inner, log, unbatched

    def __call__(self, samples: list[Any]) -> Any:
        log, seq = self.log, current_batch
        if not log.attached:
            log.attach(worker_id())
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


class TracedWorkerInit:
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


def worker_id() -> int:
    info = get_worker_info()
    return MAIN if info is None else info.id


def _pid() -> int:
    return os.getpid()


