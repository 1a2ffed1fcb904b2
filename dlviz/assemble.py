"""Assemble a :class:`dlviz.Run` from what one pass left behind.

Two sources, on one clock: the main process's notes (``recorder._Epoch``: batches
drawn, dispatched, delivered or lost, waits, steps, errors) and the workers'
shared-memory log (:mod:`dlviz.eventlog`). This module turns the log's records
into fetch and collate spans and decides every sample's fate (the ledger).

A log record holds the *start* of what it describes; it ends where the next
record of the same worker starts. So each region is read with its records and
the records shifted by one ("next") side by side, with numpy; the Python objects
(events, occurrences) are then made column by column, a few milliseconds for a
4000-event run (``benchmarks/overhead.py``).
"""

from __future__ import annotations

import gc
import operator
import os
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from dlviz import eventlog as log
from dlviz.ledger import Occurrence
from dlviz.run import MAIN, Event, Run

if TYPE_CHECKING:
    from dlviz.recorder import _Epoch

_new_tuple = tuple.__new__  # Event(*row), Occurrence(*row) without argument parsing


def _events(kind: str, worker: int, seq: Any, value: Any, start: Any, end: Any,
            status: list[str]) -> list[Event]:
    n = len(status)
    rows = zip(repeat(kind, n), repeat(worker, n), seq.tolist(), value.tolist(),
               start.tolist(), end.tolist(), status, repeat(0, n))
    return list(map(_new_tuple, repeat(Event), rows))


def _status(outcome: Any, table: dict[int, str], default: str) -> list[str]:
    """A status per record, looked up from a code that tells how it ended (mostly
    the code of the record after it). Almost every record has the default: only
    the others are looked for."""
    status = [default] * len(outcome)
    for code, name in table.items():
        for k in np.flatnonzero(outcome == code).tolist():
            status[k] = name
    return status


def build_run(epoch: _Epoch, stop: str, duration: int) -> Run:
    """The Run of one pass. Thousands of small tuples are made here and none of them
    can form a reference cycle, so Python's cycle collector is paused meanwhile (it
    would otherwise run a dozen times for nothing: a fifth of the time)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _build_run(epoch, stop, duration)
    finally:
        if paused:
            gc.enable()


def _build_run(epoch: _Epoch, stop: str, duration: int) -> Run:
    traced = epoch.traced
    origin = epoch.origin
    # this pass's batches are numbered first..last (the drawer counts on from pass to pass)
    first, last = (min(epoch.batches), max(epoch.batches)) if epoch.batches else (0, -1)
    events = [_new_tuple(Event, (kind, worker, seq, index, start - origin, end - origin,
                                  status, 0))
              for kind, worker, seq, index, start, end, status in epoch.marks]
    # your loop's steps: from the end of one wait in next() to the start of the next
    waits = [(start - origin, end - origin) for kind, _w, _s, _i, start, end, _st
             in epoch.marks if kind == "wait"]
    events += [Event("step", MAIN, -1, -1, before[1], after[0])
               for before, after in zip(waits, waits[1:])]
    workers: dict[int, int] = {}
    none_fetches: set[tuple[int, int]] = set()  # (batch, index) that returned None
    stream_items: list[tuple[int, int]] = []  # (key, batch) a stream yielded
    ended_batches: set[int] = set()  # a stream ran out of data inside these batches
    notes = []
    deaths = {e.worker: e.time for e in epoch.errors if e.kind == "worker_died"}

    for worker, pid, overflowed, records in traced.log.regions():
        if overflowed:
            notes.append(f"worker {worker}'s event log filled up: later events are missing")
        code, seq, value = records[:, 0], records[:, 1], records[:, 2]
        start = records[:, 3] - origin
        next_code = np.append(code[1:], 0)  # 0: nothing came after (still running, or died)
        end = np.minimum(np.append(start[1:], deaths.get(worker, duration)), duration)
        end = np.maximum(end, start)

        began = (code == log.WORKER_START) & (start >= 0)
        for pid, at in zip(value[began].tolist(), start[began].tolist()):
            workers[worker] = pid
            events.append(Event("worker_start", worker, -1, pid, at, at))

        in_pass = (seq >= first) & (seq <= last)  # a persistent worker's region can still
        # hold a batch of the pass before (one cut short) when this pass begins
        if worker >= 0 and in_pass.any():  # a persistent worker started in an earlier pass
            workers.setdefault(worker, pid)
        fetch = ((code == log.FETCH) | (code == log.NONE)) & in_pass
        empty = fetch & (next_code == log.END)  # the next() that found the stream empty
        ended_batches.update(seq[empty].tolist())
        fetch &= ~empty
        returned_none = fetch & (code == log.NONE)
        outcome = np.where(returned_none, log.NONE, next_code)  # what came of each fetch
        status = _status(outcome[fetch], {log.RAISED: "raised", log.NONE: "none",
                                          0: "unfinished"}, "ok")
        events += _events("fetch", worker, seq[fetch], value[fetch], start[fetch], end[fetch],
                          status)
        none_fetches.update(zip(seq[returned_none].tolist(), value[returned_none].tolist()))
        if traced.iterable:
            item = fetch & ~returned_none & (next_code != log.RAISED) & (value >= 0)
            stream_items += zip(value[item].tolist(), seq[item].tolist())

        collate = (code == log.COLLATE) & in_pass
        status = _status(next_code[collate], {log.COLLATED: "ok",
                                              log.COLLATE_RAISED: "raised"}, "unfinished")
        events += _events("collate", worker, seq[collate], np.full(len(status), -1),
                          start[collate], end[collate], status)
    if not workers and traced.num_workers == 0:
        workers[-1] = os.getpid()

    occurrences = _ledger(epoch, none_fetches, stream_items, ended_batches, notes)
    if traced.iterable:
        keys = traced.expected if traced.expected is not None else sorted(
            {key for key, _ in stream_items})
        dataset_size = len(keys)
    else:
        keys = None
        dataset_size = _dataset_size(traced.original.dataset, occurrences)
    events.sort(key=operator.itemgetter(4))
    return Run(config={**traced.config, **epoch.loop}, dataset_size=dataset_size, keys=keys,
               events=events, errors=list(epoch.errors), occurrences=occurrences,
               workers=workers, duration=duration, stop=stop, origin=origin, notes=notes)


def _ledger(epoch: _Epoch, none_fetches: set[tuple[int, int]],
            stream_items: list[tuple[int, int]], ended_batches: set[int],
            notes: list[str]) -> list[Occurrence]:
    """Every occurrence and its fate (see :mod:`dlviz.ledger` for the vocabulary)."""
    resolved = epoch.resolved
    occurrences: list[Occurrence] = []
    if epoch.traced.iterable:  # a stream: the samples are what the workers yielded
        drop_last = bool(epoch.traced.config["drop_last"])
        for key, seq in stream_items:
            fate = resolved.get(seq)
            if fate in (None, "empty"):  # no batch came back: drop_last threw it away?
                fate = "dropped" if drop_last and seq in ended_batches else "in_flight"
            occurrences.append(Occurrence(key, seq, fate))
        return occurrences
    # map-style: what the sampler produced, gathered column by column, made at once
    batches = list(epoch.batches.items())
    fates = [resolved.get(seq, "in_flight") for seq, _ in batches]
    if epoch.tail is not None:
        batches.append(epoch.tail)
        fates.append("dropped")
    try:
        index_column = _index_column(batches)
    except TypeError:  # a batch whose indices are not ints cannot be ledgered by index
        notes.append("the sampler yields indices that are not ints: they are left out "
                     "of the ledger")
        kept = [k for k, (_, indices) in enumerate(batches) if all(map(_is_index, indices))]
        batches, fates = [batches[k] for k in kept], [fates[k] for k in kept]
        index_column = _index_column(batches)
    sizes = [len(indices) for _, indices in batches]
    batch_column = list(chain.from_iterable(map(repeat, [seq for seq, _ in batches], sizes)))
    fate_column = list(chain.from_iterable(map(repeat, fates, sizes)))
    if none_fetches:  # a delivered batch went on without the samples that were None
        for k, occurrence in enumerate(zip(batch_column, index_column)):
            if occurrence in none_fetches and fate_column[k] == "delivered":
                fate_column[k] = "filtered"
    rows = zip(index_column, batch_column, fate_column, repeat(0))
    return list(map(_new_tuple, repeat(Occurrence), rows))


def _index_column(batches: list[tuple[int, list[Any]]]) -> list[int]:
    return list(map(operator.index, chain.from_iterable(indices for _, indices in batches)))


def _is_index(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _dataset_size(dataset: Any, occurrences: list[Occurrence]) -> int:
    try:
        return len(dataset)
    except TypeError:
        return 1 + max((o.index for o in occurrences), default=-1)
