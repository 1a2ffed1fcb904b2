"""A recorded DataLoader run: events on one clock, errors, and the ledger.

A :class:`Run` is plain data. Nothing in it (or downstream of it: plots, the
explorer, notebook checks) touches torch, so a run saved with :meth:`Run.to_json`
can be loaded, drawn and checked anywhere. :meth:`Run.to_chrome_trace` writes a
file that Perfetto (ui.perfetto.dev) and chrome://tracing open (lesson 7).

Times are integer nanoseconds since the run started, from one monotonic clock
shared by every process (``time.perf_counter_ns``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dlviz import ledger
from dlviz.ledger import Occurrence, Occurrences
from dlviz.table import EVENT_KINDS, STATUSES, Event, Events, Table

__all__ = ["Run", "Event", "Events", "Occurrence", "Occurrences", "ErrorRecord", "BatchInfo",
           "merge_runs", "MAIN", "EVENT_KINDS", "STATUSES"]

FORMAT = "dlviz.run"
VERSION = 2
"""Version 2 stores events and occurrences by column; version 1 files (one list per
record, dlviz 0.1) are still read."""
MAIN = -1
"""The worker number of the main process (it fetches itself when ``num_workers=0``)."""

ERROR_KINDS = ("exception", "worker_died", "timeout")
STOPS = ("exhausted", "max_batches", "error", "interrupt", "break")


@dataclass(frozen=True)
class ErrorRecord:
    """An error your loop saw: ``kind`` is exception, worker_died or timeout.

    ``type`` is the name of the exception's class as your loop received it
    (``"ValueError"``: torch re-raises a worker's exception with its own type),
    or ``""`` when unknown (files of dlviz 0.1).
    """

    kind: str
    worker: int | None
    index: int | None
    batch: int | None
    time: int
    message: str
    rank: int = 0
    type: str = ""


class BatchInfo(NamedTuple):
    """One batch, assembled from the events (see :meth:`Run.batches`)."""

    batch: int
    worker: int
    indices: tuple[int, ...]
    dispatched: int | None
    done: int | None  # delivered or lost at; None while in flight
    fate: str  # delivered, failed, in_flight, dropped, or empty (a stream had no more data)
    rank: int = 0


@dataclass(eq=False)
class Run:
    """Everything recorded about one pass over a DataLoader.

    Read it with :meth:`summary`, :meth:`fate`, :attr:`errors`, :meth:`batches`;
    draw it with ``dlviz.plot_run``; save it with :meth:`to_json`. Events and
    occurrences are tables of numpy columns (:class:`dlviz.table.Table`): iterate
    them as records (``for e in run.events``), or read whole columns
    (``run.events.start``). The ledger (every index's fate) is computed once, on
    first use, and cached: ``summary()`` and ``fate(i)`` cost next to nothing after.
    """

    config: dict[str, Any]
    dataset_size: int
    keys: Any  # a stream's expected keys (a list or int64 array); None: indices 0..size-1
    events: Events
    errors: list[ErrorRecord]
    occurrences: Occurrences
    workers: dict[int, int]  # worker -> pid
    duration: int
    stop: str
    origin: int = 0  # the clock's value at time 0 (to align runs of several ranks)
    notes: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    """When the sampler yields keys that are not ints (a dict-backed dataset): the keys
    as text; occurrence ``index`` k stands for ``labels[k]``, and ``fate()`` takes either."""
    _ledger: ledger.Ledger | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.events, Events):
            self.events = Events.from_rows(self.events)
        if not isinstance(self.occurrences, Occurrences):
            self.occurrences = Occurrences.from_rows(self.occurrences)
        if self.keys is not None:
            self.keys = np.asarray(self.keys, dtype=np.int64).reshape(-1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Run):
            return NotImplemented
        same_keys = (self.keys is None and other.keys is None) or (
            self.keys is not None and other.keys is not None
            and np.array_equal(self.keys, other.keys))
        return (same_keys and self.events == other.events
                and self.occurrences == other.occurrences
                and (self.config, self.dataset_size, self.errors, self.workers, self.duration,
                     self.stop, self.origin, self.notes, self.labels)
                == (other.config, other.dataset_size, other.errors, other.workers,
                    other.duration, other.stop, other.origin, other.notes, other.labels))

    __hash__ = None  # type: ignore[assignment]

    # ----- the ledger -----
    @property
    def ledger(self) -> ledger.Ledger:
        """Every index's best fate and delivery count (computed once, then cached)."""
        if self._ledger is None:
            self._ledger = ledger.compute(self.dataset_size, self.keys, self.occurrences)
        return self._ledger

    @property
    def universe(self) -> Sequence[int]:
        """Every index (or stream key) one full pass should deliver."""
        return range(self.dataset_size) if self.keys is None else self.keys.tolist()

    def summary(self) -> dict[str, int]:
        """Counts: dataset_size, sampled, delivered, deliveries, duplicated, dropped,
        failed, filtered, in_flight, never_sampled (see :mod:`dlviz.ledger`)."""
        return dict(self.ledger.summary)

    def fates(self) -> dict[Any, str]:
        """The fate of every index (or key, or label) of the dataset; :meth:`fate` also
        answers for an index a sampler yielded outside it."""
        led = self.ledger
        names = np.array(ledger.FATES, dtype=object)[led.best[:led.size]].tolist()
        indices = led.index_at()[:led.size].tolist()
        if self.labels is not None:
            indices = [self.labels[i] if 0 <= i < len(self.labels) else i for i in indices]
        return dict(zip(indices, names))

    def fate(self, index: Any) -> str:
        """The fate of one dataset index (or stream key; or sampler key, see :attr:`labels`)."""
        if self.labels is not None and not isinstance(index, (int, np.integer)):
            if str(index) not in self.labels:
                raise ValueError(f"index {index!r} is not in this run's dataset")
            index = self.labels.index(str(index))
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        position = self.ledger.position(int(index))
        if position < 0:
            raise ValueError(f"index {index} is not in this run's dataset")
        return ledger.FATES[self.ledger.best[position]]

    def delivered(self) -> list[int]:
        """Delivered indices in the order your loop saw them (repeats included)."""
        occ = self.occurrences
        mine = occ.is_("fate", "delivered")
        delivers = self.events.of_kind("deliver")
        when = dict(zip(zip(delivers.column("rank").tolist(), delivers.column("batch").tolist()),
                        delivers.column("start").tolist()))
        ranks, batches = occ.column("rank")[mine], occ.column("batch")[mine]
        times = np.fromiter((when.get(k, 0) for k in zip(ranks.tolist(), batches.tolist())),
                            dtype=np.int64, count=int(mine.sum()))
        order = np.lexsort((times, ranks))  # stable: a batch keeps its own order
        return occ.column("index")[mine][order].tolist()  # type: ignore[no-any-return]

    # ----- views of the events -----
    def of_kind(self, *kinds: str) -> Events:
        """The events of these kinds, a table (``run.of_kind("fetch")[0].start``)."""
        return self.events.of_kind(*kinds)

    def batches(self) -> list[BatchInfo]:
        """Every batch the sampler produced: worker, indices, when sent and resolved.

        A batch's fate: dropped if ``drop_last`` threw it away, delivered if it
        reached your loop (some of its samples may be filtered), else what became
        of its samples (failed, in_flight), or ``empty`` (a stream had no more data).
        """
        occ = self.occurrences
        rank, batch = occ.column("rank"), occ.column("batch")
        order = np.lexsort((batch, rank))  # stable: a batch keeps its samples' order
        r, b, f = rank[order], batch[order], occ.column("fate")[order]
        groups: dict[tuple[int, int], tuple[list[int], str]] = {}
        if len(order):
            starts = np.flatnonzero(np.r_[True, (r[1:] != r[:-1]) | (b[1:] != b[:-1])])
            last = np.r_[starts[1:], len(order)] - 1
            code = {name: k for k, name in enumerate(ledger.FATES)}
            as_batch = np.where(f == code["filtered"], code["delivered"], f)
            fate = np.where(np.logical_or.reduceat(f == code["dropped"], starts), code["dropped"],
                            np.where(np.logical_or.reduceat(as_batch == code["delivered"], starts),
                                     code["delivered"], as_batch[last]))
            parts = np.split(occ.column("index")[order], starts[1:])
            for key, part, k in zip(zip(r[starts].tolist(), b[starts].tolist()), parts,
                                    fate.tolist()):
                groups[key] = (part.tolist(), ledger.FATES[k])
        ends = self.events.of_kind("dispatch", "deliver", "lost", "empty")
        sent: dict[tuple[int, int], tuple[int, int]] = {}  # (rank, batch) -> (worker, time)
        done: dict[tuple[int, int], tuple[int, int, str]] = {}  # ... -> (worker, time, kind)
        for kind, worker, rank, batch, start in zip(
                ends.kind.tolist(), ends.column("worker").tolist(), ends.column("rank").tolist(),
                ends.column("batch").tolist(), ends.column("start").tolist()):
            if kind == "dispatch":
                sent[(rank, batch)] = (worker, start)
            else:
                done[(rank, batch)] = (worker, start, kind)
        out = []
        after = {"deliver": "delivered", "lost": "failed", "empty": "empty"}
        for key in sorted(set(groups) | set(sent) | set(done)):
            if key[1] < 0:
                continue
            dispatch, end = sent.get(key), done.get(key)
            worker = dispatch[0] if dispatch else end[0] if end else MAIN
            indices, fate_name = groups.get(key, ((), ""))
            if not fate_name:
                fate_name = after[end[2]] if end else "in_flight"
            out.append(BatchInfo(
                batch=key[1], worker=worker, indices=tuple(indices),
                dispatched=dispatch[1] if dispatch else None,
                done=end[1] if end else None, fate=fate_name, rank=key[0]))
        return out

    def outstanding(self) -> list[tuple[int, int]]:
        """``(time, batches sent but not yet delivered or lost)`` at every change."""
        times, levels = self.outstanding_steps()
        return [(0, 0), *zip(times.tolist(), levels.tolist())]

    def outstanding_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`outstanding` as two arrays (times, levels), without the leading (0, 0)."""
        ev = self.events.of_kind("dispatch", "deliver", "lost", "empty")
        change = np.where(ev.is_("kind", "dispatch"), 1, -1)
        start = ev.column("start")
        order = np.lexsort((change, start))  # at one time: -1 before +1, as sorted tuples
        return start[order], np.cumsum(change[order])

    @property
    def prefetch_limit(self) -> int:
        """``prefetch_factor * num_workers``: the most batches ever outstanding."""
        workers = int(self.config.get("num_workers", 0))
        factor = self.config.get("prefetch_factor") or 0
        return int(factor) * workers * max(1, int(self.config.get("world_size", 1)))

    @property
    def nbytes(self) -> int:
        """Bytes held by the Run's columns and its cached ledger (not config or text)."""
        total = self.events.nbytes + self.occurrences.nbytes
        if self._ledger is not None:
            total += self._ledger.best.nbytes + self._ledger.deliveries.nbytes
        return total

    # ----- files -----
    def to_json(self, path: str | Path) -> None:
        """Save the run as JSON (a versioned schema, by column; never pickle)."""
        Path(_path(path)).write_text(json.dumps(self.to_dict(), separators=(",", ":")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config,
            "dataset_size": self.dataset_size,
            "keys": None if self.keys is None else self.keys.tolist(),
            "labels": self.labels,
            "events": _columns_to_dict(self.events),
            "errors": [[r.kind, r.worker, r.index, r.batch, r.time, r.message, r.rank, r.type]
                       for r in self.errors],
            "occurrences": _columns_to_dict(self.occurrences),
            "workers": {str(w): pid for w, pid in self.workers.items()},
            "duration": self.duration,
            "stop": self.stop,
            "origin": self.origin,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, path: str | Path) -> Run:
        """Load a run saved by :meth:`to_json`. Anything else raises ``ValueError``."""
        try:
            text = Path(_path(path)).read_text(encoding="utf-8")
            data = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{path} is not a dlviz run file: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Run:
        return _parse(data)

    def to_chrome_trace(self, path: str | Path) -> None:
        """Write a Chrome trace (``{"traceEvents": [...]}``) that Perfetto opens.

        One process per rank; in it one track for the main process and one per
        worker. Spans (``ph: "X"``) for fetch, collate, wait and step; instants
        (``ph: "i"``) for dispatch, delivery, loss and errors; a counter
        (``ph: "C"``) of outstanding batches.
        """
        from dlviz.export import chrome_trace

        Path(path).write_text(json.dumps(chrome_trace(self)))

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<dlviz.Run {self.config.get('num_workers', '?')} workers, "
                f"{len(self.events)} events, {s['delivered']}/{s['dataset_size']} delivered, "
                f"{len(self.errors)} errors, stop={self.stop}>")


def merge_runs(runs: Iterable[Run], *, by: str = "rank",
               parts: Sequence[int] | None = None) -> Run:
    """One Run, one ledger, from several: the ranks of one distributed job (lesson 6),
    or the passes of one job (``by="pass"``: epochs; a checkpointed pass and the pass
    that resumed it).

    Part ``r`` (the ``rank`` column: a rank, or a pass) is the ``r``-th run, unless
    ``parts`` says which part each run is: runs of one part are chained in the order
    given, their batches numbered on after the last one's where they would overlap
    (a rank's epochs of a training job, numbered like the job's steps;
    ``config["chained"]`` keeps, per part, the first batch of each of its runs).
    Times are put on one clock: runs that carry ``config["clock_sync"]`` of one job
    (:func:`dlviz.job.sync_clocks`: each rank's clock offset from rank 0's, measured
    through the process group) by it, so ranks of many machines line up; others by
    ``origin``, the clock's value at their start, which one machine's processes
    share. Every event, error and occurrence keeps its part, and the ledger spans
    them all: ``run.ledger.deliveries[i]`` counts how often index ``i`` reached a
    loop, and an index delivered in two parts is ``duplicated`` (padding across
    ranks; across passes, every epoch delivers each index once more: ``deliveries``
    then tells a repeat from a skip).
    :func:`dlviz.plot_passes` draws index x part. Lessons 6 and 9.
    """
    if by not in ("rank", "pass"):
        raise ValueError(f"by must be 'rank' or 'pass', not {by!r}")
    try:
        if isinstance(runs, (str, bytes, Run)):
            raise TypeError
        iterator = iter(runs)
    except TypeError:  # not iterable, or a 0-d tensor
        raise TypeError(f"runs must be a non-empty sequence of dlviz.Run, "
                        f"not {type(runs).__name__}") from None
    items = []
    for r in iterator:  # one by one: range(10**12) is refused at its first item
        if not isinstance(r, Run):
            raise TypeError(f"runs must be a non-empty sequence of dlviz.Run, "
                            f"not of {type(r).__name__}")
        items.append(r)
    if not items:
        raise TypeError("runs must be a non-empty sequence of dlviz.Run")
    runs = items
    part_of = _parts(parts, len(runs))
    starts, clock, notes = _aligned_starts(runs)
    origin = min(starts)
    events, occurrences = [], []
    errors: list[ErrorRecord] = []
    chained: list[list[int]] = [[] for _ in range(max(part_of) + 1)]
    next_batch = [0] * len(chained)  # per part: the first batch number of its next run
    for r, start, part in zip(runs, starts, part_of):
        shift = start - origin
        low, high = _batch_range(r)
        first = max(0, next_batch[part] - low)  # added to its batch numbers
        chained[part].append(low + first)
        next_batch[part] = max(next_batch[part], high + first + 1)
        columns = {name: r.events.column(name) for name in Events.fields}
        columns.update(start=columns["start"] + shift, end=columns["end"] + shift,
                       rank=np.full(len(r.events), part),
                       batch=np.where(columns["batch"] >= 0, columns["batch"] + first,
                                      columns["batch"]))
        events.append(Events(**columns))
        errors += [ErrorRecord(x.kind, x.worker, x.index,
                               x.batch + first if x.batch is not None and x.batch >= 0
                               else x.batch, x.time + shift, x.message, part, x.type)
                   for x in r.errors]
        columns = {name: r.occurrences.column(name) for name in Occurrences.fields}
        columns.update(rank=np.full(len(r.occurrences), part),
                       batch=np.where(columns["batch"] >= 0, columns["batch"] + first,
                                      columns["batch"]))
        occurrences.append(Occurrences(**columns))
    keys = None
    if any(r.keys is not None for r in runs):
        keys = np.unique(np.concatenate([np.asarray(r.universe, dtype=np.int64)
                                         for r in runs]))
    merged = Events.concat(events)
    config = {key: value for key, value in runs[0].config.items() if key != "clock_sync"}
    config["world_size" if by == "rank" else "passes"] = len(chained)
    if clock is not None:
        config["clock_sync"] = clock
    if len(part_of) > len(chained):
        config["chained"] = chained
    return Run(
        config={**config, "merged_by": by},
        dataset_size=len(keys) if keys is not None else max(r.dataset_size for r in runs),
        keys=keys,
        events=merged[np.argsort(merged.column("start"), kind="stable")],
        errors=errors,
        occurrences=Occurrences.concat(occurrences),
        workers={w + 1000 * part: pid for part, r in zip(part_of, runs)
                 for w, pid in r.workers.items()},
        duration=max(start - origin + r.duration for r, start in zip(runs, starts)),
        stop=runs[0].stop if len({r.stop for r in runs}) == 1 else "error",
        origin=origin,
        notes=[n for r in runs for n in r.notes] + notes,
        labels=runs[0].labels if all(r.labels == runs[0].labels for r in runs) else None,
    )


def _parts(parts: Sequence[int] | None, count: int) -> list[int]:
    """``merge_runs``'s parts: one per run, numbering the parts 0, 1, ... without gaps."""
    if parts is None:
        return list(range(count))
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence):
        raise TypeError(f"parts must be a sequence of ints, not {type(parts).__name__}")
    out = list(parts)
    if len(out) != count or not all(_is_int(p) for p in out):
        raise ValueError(f"parts must give one int per run ({count}), got {out!r}")
    if sorted(set(out)) != list(range(len(set(out)))):
        raise ValueError(f"parts must number the parts 0, 1, ... without gaps, got {out!r}")
    return out


def _batch_range(run: Run) -> tuple[int, int]:
    """The lowest and highest batch number in ``run`` ((0, -1) if it has none). A traced
    loader numbers its passes' batches on, so a later pass may not start at 0."""
    numbers = [t.column("batch") for t in (run.events, run.occurrences)]
    numbers = [b[b >= 0] for b in numbers]
    numbers = [b for b in numbers if len(b)]
    if not numbers:
        return 0, -1
    return min(int(b.min()) for b in numbers), max(int(b.max()) for b in numbers)


def _aligned_starts(runs: list[Run]) -> tuple[list[int], dict[str, Any] | None, list[str]]:
    """Each run's start on one clock; the merged run's clock_sync; a note if any.

    Runs of one job that measured their clocks' offsets (``config["clock_sync"]``)
    start at ``origin - offset_ns`` on rank 0's clock, wherever they ran. Otherwise
    ``origin`` is taken as it is: right only for processes of one machine.
    """
    found = [r.config.get("clock_sync") for r in runs]
    syncs = [s for s in found if isinstance(s, dict)]
    if len(syncs) == len(runs) and len({s["job"] for s in syncs}) == 1:
        clock = {"job": syncs[0]["job"], "offset_ns": 0,
                 "spread_ns": max(int(s.get("spread_ns", 0)) for s in syncs)}
        return [r.origin - int(s["offset_ns"]) for r, s in zip(runs, syncs)], clock, []
    notes = []
    if syncs:
        notes.append("merged runs that are not all of one job's clock_sync: aligned by the "
                     "clock's value at each run's start, right only for one machine's processes")
    return [r.origin for r in runs], None, notes


def _columns_to_dict(table: Table) -> dict[str, Any]:
    """A table as JSON: the names of coded fields once, then one list per column."""
    return {"names": {name: list(values) for name, values in table.names.items()},
            "columns": {name: table.column(name).tolist() for name in table.fields}}


# ----- strict parsing of files -----
def _path(path: object) -> str | os.PathLike[str]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, not {type(path).__name__}")
    return path


def _reject_constant(name: str) -> None:
    raise ValueError(f"not a dlviz run file: {name} is not allowed")


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"not a valid dlviz run file: {what}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_opt_int(x: Any) -> bool:
    return x is None or _is_int(x)


def _parse(data: Any) -> Run:
    _need(isinstance(data, dict), "the top level must be an object")
    _need(data.get("format") == FORMAT, f"'format' must be {FORMAT!r}")
    version = data.get("version")
    _need(_is_int(version), "'version' must be an integer")
    if version > VERSION:
        raise ValueError(f"this run file has version {version}; this dlviz reads up to "
                         f"version {VERSION}: upgrade dlviz")
    _need(version in (1, 2), f"unsupported version {version}")
    expected = {"format", "version", "config", "dataset_size", "keys", "events", "errors",
                "occurrences", "workers", "duration", "stop", "origin", "notes"}
    if version >= 2:
        expected.add("labels")
    _need(set(data) == expected, f"the fields of a version {version} file must be "
          f"{sorted(expected)}")
    _need(isinstance(data["config"], dict), "'config' must be an object")
    _need(_is_int(data["dataset_size"]) and data["dataset_size"] >= 0, "bad 'dataset_size'")
    keys = data["keys"]
    _need(keys is None or (isinstance(keys, list) and all(_is_int(k) and -2**63 <= k < 2**63
                                                          for k in keys)),
          "'keys' must be null or a list of 64-bit integers")
    labels = data.get("labels")
    _need(labels is None or (isinstance(labels, list) and all(isinstance(x, str)
                                                              for x in labels)),
          "'labels' must be null or a list of strings")
    if version == 1:
        events, occurrences, errors = _v1_records(data)
    else:
        events = _table(Events, data["events"], "events")
        occurrences = _table(Occurrences, data["occurrences"], "occurrences")
        _need(not occurrences.is_("fate", "never_sampled").any(),
              "an occurrence cannot be never_sampled")
        errors = [_error(item, 8) for item in _list(data["errors"], "errors")]
    _need(bool((events.column("end") >= events.column("start")).all()),
          "an event ends before it starts")
    workers = data["workers"]
    _need(isinstance(workers, dict), "'workers' must be an object")
    parsed_workers = {}
    for w, pid in workers.items():
        _need(w.lstrip("-").isdigit() and _is_int(pid), "bad worker entry")
        parsed_workers[int(w)] = pid
    _need(_is_int(data["duration"]) and data["duration"] >= 0, "bad 'duration'")
    _need(data["stop"] in STOPS, "bad 'stop'")
    _need(_is_int(data["origin"]), "bad 'origin'")
    notes = _list(data["notes"], "notes")
    _need(all(isinstance(n, str) for n in notes), "notes must be strings")
    _need(all(math.isfinite(v) for v in _numbers(data["config"])), "bad number in config")
    for name, ok in _CONFIG_CHECKS.items():
        _need(name not in data["config"] or ok(data["config"][name]), f"bad config {name!r}")
    return Run(config=data["config"], dataset_size=data["dataset_size"], keys=keys,
               events=events, errors=errors, occurrences=occurrences,
               workers=parsed_workers, duration=data["duration"], stop=data["stop"],
               origin=data["origin"], notes=notes, labels=labels)


def _table(kind: type[Table], value: Any, name: str) -> Any:
    """A version-2 table: ``{"names": {field: [...]}, "columns": {field: [...]}}``."""
    _need(isinstance(value, dict) and set(value) == {"names", "columns"},
          f"'{name}' must be an object with 'names' and 'columns'")
    names, columns = value["names"], value["columns"]
    _need(isinstance(names, dict) and set(names) == set(kind.names),
          f"'{name}.names' must name {sorted(kind.names)}")
    _need(isinstance(columns, dict) and set(columns) == set(kind.fields),
          f"'{name}.columns' must be {list(kind.fields)}")
    made: dict[str, Any] = {}
    for field_name in kind.fields:
        values = _list(columns[field_name], f"{name}.columns.{field_name}")
        try:
            array = np.array(values, dtype=object if not values else None)
        except (ValueError, OverflowError):
            array = np.array([None])
        _need(array.ndim == 1 and (not values or array.dtype == np.int64)
              and not any(v is True or v is False for v in values),
              f"'{name}.columns.{field_name}' must be a list of integers")
        if field_name in kind.names:  # codes into the file's own names, re-coded to ours
            their = _list(names[field_name], f"{name}.names.{field_name}")
            _need(all(v in kind.names[field_name] for v in their),
                  f"unknown {field_name} in {name}: {their}")
            _need(not values or (0 <= array.min() and array.max() < len(their)),
                  f"a {field_name} code out of range in {name}")
            ours = kind.encode(field_name, their) if their else np.empty(0, np.int64)
            array = ours[array.astype(np.int64)] if values else array
        made[field_name] = array if values else np.empty(0, kind.dtypes[field_name])
    _need(len({len(c) for c in made.values()}) == 1, f"the columns of '{name}' differ in length")
    return kind(**made)


def _error(item: Any, size: int) -> ErrorRecord:
    _need(isinstance(item, list) and len(item) == size, f"an error must be a list of {size}")
    kind, worker, index, batch, time, message, rank = item[:7]
    type_name = item[7] if size > 7 else ""
    _need(kind in ERROR_KINDS, f"unknown error kind {kind!r}")
    _need(all(_is_opt_int(v) for v in (worker, index, batch)) and _is_int(time)
          and _is_int(rank) and isinstance(message, str) and isinstance(type_name, str),
          "bad error record")
    return ErrorRecord(kind, worker, index, batch, time, message, rank, type_name)


def _v1_records(data: dict[str, Any]) -> tuple[Events, Occurrences, list[ErrorRecord]]:
    """Version 1 (dlviz 0.1): one list per event, occurrence and error."""
    events = []
    for item in _list(data["events"], "events"):
        _need(isinstance(item, list) and len(item) == 8, "an event must be a list of 8")
        kind, worker, batch, index, start, end, status, rank = item
        _need(kind in EVENT_KINDS, f"unknown event kind {kind!r}")
        _need(all(_is_int(v) for v in (worker, batch, index, start, end, rank)),
              "event numbers must be integers")
        _need(status in STATUSES, f"unknown event status {status!r}")
        events.append(Event(kind, worker, batch, index, start, end, status, rank))
    occurrences = []
    for item in _list(data["occurrences"], "occurrences"):
        _need(isinstance(item, list) and len(item) == 4, "an occurrence must be a list of 4")
        index, batch, fate, rank = item
        _need(_is_int(index) and _is_int(batch) and _is_int(rank), "bad occurrence")
        _need(fate in ledger.FATES and fate != "never_sampled", f"bad fate {fate!r}")
        occurrences.append(Occurrence(index, batch, fate, rank))
    errors = [_error(item, 7) for item in _list(data["errors"], "errors")]
    return Events.from_rows(events), Occurrences.from_rows(occurrences), errors


def _list(value: Any, name: str) -> list[Any]:
    _need(isinstance(value, list), f"'{name}' must be a list")
    return value  # type: ignore[no-any-return]


def _numbers(config: dict[str, Any]) -> Iterable[float]:
    for v in config.values():
        if isinstance(v, (int, float)):
            yield float(v) if -1e300 < v < 1e300 else math.inf  # a huge int: no float


def _count_up_to(most: int) -> Any:
    return lambda v: _is_int(v) and 0 <= v <= most


def _opt_count(v: Any) -> bool:
    return v is None or (_is_int(v) and v >= 0)


# config entries that dlviz reads back (prefetch_limit, the plots): their types
_CONFIG_CHECKS = {
    "num_workers": _count_up_to(4096), "world_size": _count_up_to(4096),
    "rank": _count_up_to(4096), "batch_size": _opt_count, "prefetch_factor": _opt_count,
    "max_batches": _opt_count,
    "timeout": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "step_ms": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "drop_last": lambda v: isinstance(v, bool), "in_order": lambda v: isinstance(v, bool),
    "persistent_workers": lambda v: isinstance(v, bool),
    "pin_memory": lambda v: isinstance(v, bool),
    "dataset_kind": lambda v: v in ("map", "iterable"),
    "merged_by": lambda v: v in ("rank", "pass"), "passes": _count_up_to(10**6),
    "clock_sync": lambda v: isinstance(v, dict) and isinstance(v.get("job"), str)
    and _is_int(v.get("offset_ns")) and _is_int(v.get("spread_ns", 0)),
    "chained": lambda v: isinstance(v, list) and all(
        isinstance(p, list) and all(_is_int(b) and b >= 0 for b in p) for p in v),
}
