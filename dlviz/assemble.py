"""Assemble a :class:`dlviz.Run` from what one pass left behind.

When a pass ends the recorder freezes its notes into a :class:`PassNotes`: the
main process's marks (batches drawn, dispatched, delivered or lost, waits,
errors), the indices each batch held, and a copy of the workers' shared-memory
log (:mod:`dlviz.eventlog`). Nothing here touches torch or a recorder object:
:func:`build_run` turns those notes into the Run's columns.

A log record holds the *start* of what it describes; it ends where the next
record of the same worker starts. So each region is read with its records and
the records shifted by one ("next") side by side, with numpy, and every event
and occurrence column is made whole, never one Python object per sample
(``benchmarks/scale.py`` times it: about 0.1 us per sample).
"""

from __future__ import annotations

import array
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlviz import eventlog as log
from dlviz.ledger import RANK, Occurrences
from dlviz.run import MAIN, ErrorRecord, Events, Run
from dlviz.table import EVENT_KINDS, STATUSES

_KIND = {kind: code for code, kind in enumerate(EVENT_KINDS)}
_STATUS = {status: code for code, status in enumerate(STATUSES)}
_Mark = tuple[str, int, int, int, int, int, str]


@dataclass(frozen=True)
class PassNotes:
    """Everything one pass left, copied when it ended (plain data, no recorder object)."""

    config: dict[str, Any]
    origin: int  # the clock at the pass's start
    duration: int
    stop: str
    iterable: bool
    num_workers: int
    expected: list[int] | None  # a stream's expected keys
    dataset_size: int  # len(dataset), or 1 + the largest index when it has no len()
    marks: tuple[_Mark, ...]  # main-process marks, absolute clock
    errors: tuple[ErrorRecord, ...]
    seqs: np.ndarray  # the batches the sampler produced, in draw order (the tail last)
    sizes: np.ndarray  # how many indices each held
    indices: np.ndarray  # all their indices, int64 (positions into labels, if any)
    labels: list[str] | None  # the sampler's keys as text, when they are not ints
    tail: int  # seq of the batch drop_last threw away, or -1
    resolved: dict[int, str]  # seq -> delivered | failed | empty
    regions: tuple[tuple[int, int, bool, np.ndarray], ...]  # the log, copied
    notes: tuple[str, ...]

    @classmethod
    def make(cls, *, config: dict[str, Any], origin: int, duration: int, stop: str,
             iterable: bool, num_workers: int, expected: list[int] | None, dataset: Any,
             marks: list[_Mark], errors: list[ErrorRecord], batches: dict[int, list[Any]],
             tail: tuple[int, list[Any]] | None, resolved: dict[int, str],
             regions: list[tuple[int, int, bool, np.ndarray]]) -> PassNotes:
        drawn = list(batches.items()) + ([tail] if tail is not None else [])
        size = _len(dataset)
        if iterable:  # a stream's requests carry no indices: its samples are in the log
            indices, labels, notes = np.empty(0, np.int64), None, list[str]()
            drawn = [(seq, []) for seq, _ in drawn]
        else:
            indices, labels, notes = _index_column(drawn, dataset, size)
        if size is None:
            size = 1 + int(indices.max(initial=-1)) if labels is None else len(labels)
        return cls(
            config=config, origin=origin, duration=duration, stop=stop, iterable=iterable,
            num_workers=num_workers, expected=expected, dataset_size=size,
            marks=tuple(marks), errors=tuple(errors),
            seqs=np.array([seq for seq, _ in drawn], dtype=np.int64),
            sizes=np.array([len(ix) for _, ix in drawn], dtype=np.int64),
            indices=indices, labels=labels, tail=tail[0] if tail is not None else -1,
            resolved=dict(resolved), regions=tuple(regions), notes=tuple(notes))


def _len(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except (TypeError, OverflowError):
        return None


def _index_column(drawn: list[tuple[int, list[Any]]], dataset: Any, size: int | None
                  ) -> tuple[np.ndarray, list[str] | None, list[str]]:
    """Every index the sampler produced, as int64. Negative indices (valid in Python:
    ``dataset[-1]``) become the index they stand for. Keys that are not ints (a
    dict-backed dataset) are ledgered by key: each becomes its position in ``labels``
    (the dataset's own ``keys()`` first, when it has them)."""
    try:  # ints (and anything with __index__: numpy ints, int tensors); a float refused
        joined = array.array("q")
        for _, indices in drawn:  # mostly arrays already (recorder._compact)
            joined += indices if isinstance(indices, array.array) else array.array("q", indices)
        column = np.frombuffer(joined, dtype=np.int64).copy()
    except (TypeError, OverflowError):
        pass
    else:
        if size is not None:
            negative = (column < 0) & (column >= -size)
            column[negative] += size
        return column, None, []
    keys = getattr(dataset, "keys", None)
    known: list[Any] = list(keys()) if callable(keys) else []
    position: dict[str, int] = {}
    for key in known:
        position.setdefault(str(key), len(position))
    column = np.fromiter((position.setdefault(str(k), len(position))
                          for _, indices in drawn for k in indices), dtype=np.int64)
    notes = ["the sampler yields keys, not int indices: the ledger counts each key "
             "(run.labels names them)"]
    if size is not None and size != len(position):
        notes.append(f"the dataset has {size} samples and the keys number {len(position)}: "
                     "the ledger is over the keys")
    return column, list(position), notes


def build_run(notes: PassNotes) -> Run:
    """The Run of one pass, made column by column."""
    origin, duration = notes.origin, notes.duration
    first, last = ((int(notes.seqs.min()), int(notes.seqs.max())) if len(notes.seqs)
                   else (0, -1))
    # the pass's batch numbers run first..last (the drawer counts on from pass to pass);
    # a stream's requests are drawn too, so the range covers them
    first = min([first, *(seq for seq in notes.resolved if seq >= 0)])
    last = max([last, *notes.resolved])
    tables = [_marks(notes.marks, origin)]
    workers: dict[int, int] = {}
    run_notes = list(notes.notes)
    deaths = {e.worker: e.time for e in notes.errors if e.kind == "worker_died"}
    none_pairs, stream_keys, stream_seqs, ended = [], [], [], []

    for worker, pid, overflowed, records in notes.regions:
        if overflowed:
            run_notes.append(f"worker {worker}'s event log filled up: later events are missing")
        code, seq, value = records[:, 0], records[:, 1], records[:, 2]
        start = records[:, 3] - origin
        next_code = np.append(code[1:], 0)  # 0: nothing came after (still running, or died)
        end = np.minimum(np.append(start[1:], deaths.get(worker, duration)), duration)
        end = np.maximum(end, start)

        began = (code == log.WORKER_START) & (start >= 0)
        if began.any():
            workers[worker] = int(value[began][-1])
            tables.append(_events("worker_start", worker, np.full(began.sum(), -1), value[began],
                                  start[began], start[began], _STATUS[""]))
        in_pass = (seq >= first) & (seq <= last)  # a persistent worker's region can still
        # hold a batch of the pass before (one cut short) when this pass begins
        if worker >= 0 and in_pass.any():  # a persistent worker started in an earlier pass
            workers.setdefault(worker, pid)
        fetch = ((code == log.FETCH) | (code == log.NONE)) & in_pass
        empty = fetch & (next_code == log.END)  # the next() that found the stream empty
        ended.append(seq[empty])
        fetch &= ~empty
        returned_none = fetch & (code == log.NONE)
        outcome = np.where(returned_none, log.NONE, next_code)[fetch]  # how each fetch ended
        status = np.full(len(outcome), _STATUS["ok"], dtype=np.int8)
        status[outcome == log.RAISED] = _STATUS["raised"]
        status[outcome == log.NONE] = _STATUS["none"]
        status[outcome == 0] = _STATUS["unfinished"]
        tables.append(_events("fetch", worker, seq[fetch], value[fetch], start[fetch],
                              end[fetch], status))
        none_pairs.append(np.stack([seq[returned_none], value[returned_none]], axis=1))
        if notes.iterable:
            item = fetch & ~returned_none & (next_code != log.RAISED) & (value >= 0)
            stream_keys.append(value[item])
            stream_seqs.append(seq[item])

        collate = (code == log.COLLATE) & in_pass
        after = next_code[collate]
        status = np.full(len(after), _STATUS["unfinished"], dtype=np.int8)
        status[after == log.COLLATED] = _STATUS["ok"]
        status[after == log.COLLATE_RAISED] = _STATUS["raised"]
        tables.append(_events("collate", worker, seq[collate], np.full(len(after), -1),
                              start[collate], end[collate], status))
    if not workers and notes.num_workers == 0:
        workers[MAIN] = os.getpid()

    events = Events.concat(tables)
    events = events[np.argsort(events.column("start"), kind="stable")]
    fate_of = _fate_lookup(notes.resolved, first, last)
    if notes.iterable:
        keys_column = np.concatenate(stream_keys) if stream_keys else np.empty(0, np.int64)
        seq_column = np.concatenate(stream_seqs) if stream_seqs else np.empty(0, np.int64)
        fates = fate_of(seq_column)
        unresolved = fates == RANK["in_flight"]  # no batch came back: drop_last threw it away?
        if notes.config.get("drop_last"):
            ran_out = np.isin(seq_column, np.concatenate(ended) if ended else [])
            fates[unresolved & ran_out] = RANK["dropped"]
        occurrences = Occurrences(index=keys_column, batch=seq_column, fate=fates,
                                  rank=np.zeros(len(fates)))
        keys = (np.asarray(notes.expected, dtype=np.int64) if notes.expected is not None
                else np.unique(keys_column))
        dataset_size = len(keys)
    else:
        occurrences = _map_occurrences(notes, fate_of, none_pairs)
        keys, dataset_size = None, notes.dataset_size
        if notes.labels is not None:
            dataset_size = len(notes.labels)
    run = Run(config=notes.config, dataset_size=dataset_size, keys=keys, events=events,
               errors=list(notes.errors), occurrences=occurrences, workers=workers,
               duration=duration, stop=notes.stop, origin=origin, notes=run_notes,
               labels=notes.labels)
    outside = _outside(run)
    if len(outside):
        run.notes.append(f"{len(outside)} sampled indices are not in the dataset (such as "
                         f"{', '.join(map(str, outside[:3].tolist()))}): the counts leave "
                         "them out")
    return run


def _outside(run: Run) -> np.ndarray:
    """Sampled indices the dataset does not have (without making the ledger: a dataset
    of a billion samples must not cost a billion of anything before it is asked)."""
    index = run.occurrences.column("index")
    if run.keys is None:
        return np.unique(index[(index < 0) | (index >= run.dataset_size)])
    return np.unique(index[~np.isin(index, run.keys)])


def _events(kind: str, worker: int, seq: Any, value: Any, start: Any, end: Any,
            status: Any) -> Events:
    n = len(start)
    return Events(kind=np.full(n, _KIND[kind]), worker=np.full(n, worker), batch=seq,
                  index=value, start=start, end=end, status=np.broadcast_to(status, (n,)),
                  rank=np.zeros(n))


def _marks(marks: tuple[_Mark, ...], origin: int) -> Events:
    """The main process's marks, and your loop's steps: from the end of one wait in
    next() to the start of the next."""
    if not marks:
        return Events.empty()
    kind, worker, batch, index, start, end, status = zip(*marks)
    table = Events(kind=np.fromiter(map(_KIND.__getitem__, kind), np.int8, len(kind)),
                   worker=worker, batch=batch, index=index,
                   start=np.array(start, dtype=np.int64) - origin,
                   end=np.array(end, dtype=np.int64) - origin,
                   status=np.fromiter(map(_STATUS.__getitem__, status), np.int8, len(status)),
                   rank=np.zeros(len(kind)))
    waits = table.where(table.is_("kind", "wait"))
    n = max(len(waits) - 1, 0)
    steps = Events(kind=np.full(n, _KIND["step"]), worker=np.full(n, MAIN),
                   batch=np.full(n, -1), index=np.full(n, -1),
                   start=waits.column("end")[:-1], end=waits.column("start")[1:],
                   status=np.full(n, _STATUS[""]), rank=np.zeros(n))
    return Events.concat([table, steps])


def _fate_lookup(resolved: dict[int, str], first: int, last: int) -> Any:
    """A function: batch numbers -> fate codes (in_flight where nothing was resolved)."""
    table = np.full(max(last - first + 1, 0), RANK["in_flight"], dtype=np.int8)
    for seq, fate in resolved.items():
        if first <= seq <= last and fate in RANK:
            table[seq - first] = RANK[fate]

    def lookup(seqs: np.ndarray) -> np.ndarray:
        inside = (seqs >= first) & (seqs <= last)
        out = np.full(len(seqs), RANK["in_flight"], dtype=np.int8)
        out[inside] = table[seqs[inside] - first]
        return out
    return lookup


def _map_occurrences(notes: PassNotes, fate_of: Any, none_pairs: list[np.ndarray]
                     ) -> Occurrences:
    """What the sampler produced, one occurrence per index, with its batch's fate."""
    batch = np.repeat(notes.seqs, notes.sizes)
    fates = fate_of(batch)
    if notes.tail >= 0:
        fates[batch == notes.tail] = RANK["dropped"]
    pairs = np.concatenate(none_pairs) if none_pairs else np.empty((0, 2), np.int64)
    if len(pairs):  # a delivered batch went on without the samples that were None
        nones = set(map(tuple, pairs.tolist()))
        candidates = np.flatnonzero(np.isin(batch, pairs[:, 0])
                                    & (fates == RANK["delivered"]))
        for k in candidates.tolist():
            if (int(batch[k]), int(notes.indices[k])) in nones:
                fates[k] = RANK["filtered"]
    return Occurrences(index=notes.indices, batch=batch, fate=fates, rank=np.zeros(len(batch)))
