"""Assemble a :class:`dlviz.Run` from what one pass left behind.

Two sources, on one clock: the main process's notes (``trace._Epoch``: batches
drawn, dispatched, delivered or lost, waits, steps, errors) and the workers'
shared-memory log (:mod:`dlviz.eventlog`). This module turns the log's records
into fetch and collate spans and decides every sample's fate (the ledger).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from dlviz import eventlog as log
from dlviz.ledger import Occurrence
from dlviz.run import Event, Run

if TYPE_CHECKING:
    from dlviz.trace import _Epoch

_CLOSES = {log.RAISED: "raised", log.NONE: "none"}


def build_run(epoch: _Epoch) -> Run:
    traced = epoch.traced
    duration = epoch.now()
    seqs = set(epoch.batches)
    events = list(epoch.events)
    workers: dict[int, int] = {}
    none_fetches: set[tuple[int, int]] = set()  # (batch, index) that returned None
    stream_items: list[tuple[int, int]] = []  # (key, batch) a stream yielded
    ended_batches: set[int] = set()  # a stream ran out of data inside these batches
    notes = []

    for worker, pid, overflowed, records in traced.log.regions():
        if overflowed:
            notes.append(f"worker {worker}'s event log filled up: later events are missing")
        rows = records.tolist()
        rows.append([0, -1, -1, duration + epoch.origin])  # sentinel: ends an open span
        for i in range(len(rows) - 1):
            code, seq, value, t = rows[i]
            start = t - epoch.origin
            if code == log.WORKER_START:
                if start >= 0:
                    workers[worker] = value
                    events.append(Event("worker_start", worker, -1, value, start, start))
                continue
            if seq not in seqs:
                continue  # another pass of persistent workers
            nxt_code, _, _, nxt_t = rows[i + 1]
            end = min(nxt_t - epoch.origin, duration)
            if code == log.FETCH:
                if nxt_code == log.END:
                    ended_batches.add(seq)
                    continue  # the call that found the stream empty: no sample
                status = _CLOSES.get(nxt_code, "unfinished" if nxt_code == 0 else "ok")
                events.append(Event("fetch", worker, seq, value, start, max(start, end), status))
                if status == "none":
                    none_fetches.add((seq, value))
                elif traced.iterable and value >= 0:
                    stream_items.append((value, seq))
            elif code == log.COLLATE:
                status = {log.COLLATED: "ok", log.COLLATE_RAISED: "raised"}.get(
                    nxt_code, "unfinished")
                events.append(Event("collate", worker, seq, -1, start, max(start, end), status))
    if not workers and traced.num_workers == 0:
        workers[-1] = _own_pid()

    occurrences: list[Occurrence] = []
    if traced.iterable:
        drop_last = bool(traced.config["drop_last"])
        for key, seq in stream_items:
            fate = epoch.resolved.get(seq)
            if fate is None:
                fate = "dropped" if drop_last and seq in ended_batches else "in_flight"
            occurrences.append(Occurrence(key, seq, fate))
        seen = {key for key, _ in stream_items}
        keys = traced.expected if traced.expected is not None else sorted(seen)
        dataset_size = len(keys)
    else:
        for seq, indices in epoch.batches.items():
            fate = epoch.resolved.get(seq, "in_flight")
            for index in _ints(indices, notes):
                if fate == "delivered" and (seq, index) in none_fetches:
                    occurrences.append(Occurrence(index, seq, "filtered"))
                else:
                    occurrences.append(Occurrence(index, seq, fate))
        if epoch.tail is not None:
            seq, indices = epoch.tail
            occurrences += [Occurrence(i, seq, "dropped") for i in _ints(indices, notes)]
        keys = None
        dataset_size = _dataset_size(traced.original.dataset, occurrences)

    events.sort(key=operator.itemgetter(4))
    return Run(
        config={**traced.config, **epoch.loop},
        dataset_size=dataset_size,
        keys=keys,
        events=events,
        errors=list(epoch.errors),
        occurrences=occurrences,
        workers=workers,
        duration=duration,
        stop=epoch.stop or "break",
        origin=epoch.origin,
        notes=notes,
    )


def _ints(indices: list[Any], notes: list[str]) -> list[int]:
    """Indices as ints; a sampler yielding something else cannot be ledgered by index."""
    try:
        return [operator.index(i) for i in indices]
    except TypeError:
        note = "the sampler yields indices that are not ints: they are left out of the ledger"
        if note not in notes:
            notes.append(note)
        return []


def _dataset_size(dataset: Any, occurrences: list[Occurrence]) -> int:
    try:
        return len(dataset)
    except TypeError:
        return 1 + max((o.index for o in occurrences), default=-1)


def _own_pid() -> int:
    import os

    return os.getpid()
