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

from dlviz import ledger
from dlviz.ledger import Occurrence

FORMAT = "dlviz.run"
VERSION = 1
MAIN = -1
"""The worker number of the main process (it fetches itself when ``num_workers=0``)."""

EVENT_KINDS = (
    "worker_start",  # a worker process began (index = its pid)
    "dispatch",  # main sent a batch's indices to ``worker`` (instant)
    "fetch",  # a worker ran ``dataset[index]``
    "collate",  # a worker ran ``collate_fn`` on a batch (batch assembly)
    "arrive",  # a batch reached the main process's queue (instant)
    "deliver",  # ``__next__`` handed the batch to your loop (instant)
    "lost",  # the batch raised or its worker died: it never reaches the loop
    "empty",  # a worker's stream had no more data for this request (IterableDataset)
    "wait",  # main waited inside ``__next__``
    "step",  # your loop's body ran (between two ``__next__`` calls)
)
STATUSES = ("ok", "raised", "none", "unfinished", "")
ERROR_KINDS = ("exception", "worker_died", "timeout")
STOPS = ("exhausted", "max_batches", "error", "interrupt", "break")


class Event(NamedTuple):
    """One thing that happened. Instants have ``start == end``.

    ``worker`` is the lane: a worker number, or :data:`MAIN` (-1). For
    ``dispatch``, ``arrive``, ``deliver`` and ``lost`` (main-process instants) it is
    the worker that the batch went to. ``index`` is the dataset index (or stream
    key) for fetches, the pid for ``worker_start``, else -1.
    """

    kind: str
    worker: int
    batch: int
    index: int  # type: ignore[assignment]  # a field named like tuple.index, on purpose
    start: int
    end: int
    status: str = ""
    rank: int = 0


@dataclass(frozen=True)
class ErrorRecord:
    """An error your loop saw: ``kind`` is exception, worker_died or timeout."""

    kind: str
    worker: int | None
    index: int | None
    batch: int | None
    time: int
    message: str
    rank: int = 0


class BatchInfo(NamedTuple):
    """One batch, assembled from the events (see :meth:`Run.batches`)."""

    batch: int
    worker: int
    indices: tuple[int, ...]
    dispatched: int | None
    done: int | None  # delivered or lost at; None while in flight
    fate: str  # delivered, failed, in_flight, dropped, or empty (a stream had no more data)
    rank: int = 0


@dataclass
class Run:
    """Everything recorded about one pass over a DataLoader.

    Read it with :meth:`summary`, :meth:`fate`, :attr:`errors`, :meth:`batches`;
    draw it with ``dlviz.plot_run``; save it with :meth:`to_json`.
    """

    config: dict[str, Any]
    dataset_size: int
    keys: list[int] | None  # a stream's expected keys; None: indices 0..dataset_size-1
    events: list[Event]
    errors: list[ErrorRecord]
    occurrences: list[Occurrence]
    workers: dict[int, int]  # worker -> pid
    duration: int
    stop: str
    origin: int = 0  # the clock's value at time 0 (to align runs of several ranks)
    notes: list[str] = field(default_factory=list)

    # ----- the ledger -----
    @property
    def universe(self) -> Sequence[int]:
        """Every index (or stream key) one full pass should deliver."""
        return self.keys if self.keys is not None else range(self.dataset_size)

    def summary(self) -> dict[str, int]:
        """Counts: dataset_size, sampled, delivered, deliveries, duplicated, dropped,
        failed, filtered, in_flight, never_sampled (see :mod:`dlviz.ledger`)."""
        return ledger.summarize(self.universe, self.occurrences)

    def fates(self) -> dict[int, str]:
        """The fate of every index (or key)."""
        return ledger.fates_by_index(self.universe, self.occurrences)

    def fate(self, index: int) -> str:
        """The fate of one dataset index (or stream key)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        fates = self.fates()
        if index not in fates:
            raise ValueError(f"index {index} is not in this run's dataset")
        return fates[index]

    def delivered(self) -> list[int]:
        """Delivered indices in the order your loop saw them (repeats included)."""
        order = {b.batch: b.done for b in self.batches() if b.fate == "delivered"}
        delivered = [o for o in self.occurrences if o.fate == "delivered"]
        delivered.sort(key=lambda o: (o.rank, order.get(o.batch) or 0))
        return [o.index for o in delivered]

    # ----- views of the events -----
    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def batches(self) -> list[BatchInfo]:
        """Every batch the sampler produced: worker, indices, when sent and resolved."""
        indices: dict[tuple[int, int], list[int]] = {}
        fates: dict[tuple[int, int], str] = {}
        for occ in self.occurrences:
            key = (occ.rank, occ.batch)
            indices.setdefault(key, []).append(occ.index)
            if occ.fate == "dropped" or key not in fates or fates[key] != "delivered":
                fates[key] = {"filtered": "delivered"}.get(occ.fate, occ.fate)
        sent: dict[tuple[int, int], Event] = {}
        done: dict[tuple[int, int], Event] = {}
        for e in self.events:
            if e.kind == "dispatch":
                sent[(e.rank, e.batch)] = e
            elif e.kind in ("deliver", "lost", "empty"):
                done[(e.rank, e.batch)] = e
                fates.setdefault((e.rank, e.batch), {"deliver": "delivered", "lost": "failed"
                                                     }.get(e.kind, "empty"))
        out = []
        for key in sorted(set(indices) | set(sent) | set(done)):
            if key[1] < 0:
                continue
            dispatch, end = sent.get(key), done.get(key)
            worker = dispatch.worker if dispatch else end.worker if end else MAIN
            out.append(BatchInfo(
                batch=key[1], worker=worker, indices=tuple(indices.get(key, ())),
                dispatched=dispatch.start if dispatch else None,
                done=end.start if end else None, fate=fates.get(key, "in_flight"),
                rank=key[0]))
        return out

    def outstanding(self) -> list[tuple[int, int]]:
        """``(time, batches sent but not yet delivered or lost)`` at every change."""
        steps = sorted(
            (e.start, 1 if e.kind == "dispatch" else -1)
            for e in self.events if e.kind in ("dispatch", "deliver", "lost", "empty")
        )
        level, out = 0, [(0, 0)]
        for time, change in steps:
            level += change
            out.append((time, level))
        return out

    @property
    def prefetch_limit(self) -> int:
        """``prefetch_factor * num_workers``: the most batches ever outstanding."""
        workers = int(self.config.get("num_workers", 0))
        factor = self.config.get("prefetch_factor") or 0
        return int(factor) * workers * max(1, int(self.config.get("world_size", 1)))

    # ----- files -----
    def to_json(self, path: str | Path) -> None:
        """Save the run as JSON (a versioned schema; never pickle)."""
        Path(_path(path)).write_text(json.dumps(self.to_dict(), separators=(",", ":")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config,
            "dataset_size": self.dataset_size,
            "keys": self.keys,
            "events": [list(e) for e in self.events],
            "errors": [[r.kind, r.worker, r.index, r.batch, r.time, r.message, r.rank]
                       for r in self.errors],
            "occurrences": [list(o) for o in self.occurrences],
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


def merge_runs(runs: Iterable[Run]) -> Run:
    """One Run from the per-rank runs of one distributed job (lesson 6).

    Rank ``r`` is the ``r``-th run. Times are aligned on the shared clock, every
    event, error and occurrence keeps its rank, and the ledger spans all ranks:
    an index delivered by two ranks counts as ``duplicated``.
    """
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
    origin = min(r.origin for r in runs)
    events: list[Event] = []
    errors: list[ErrorRecord] = []
    occurrences: list[Occurrence] = []
    for rank, r in enumerate(runs):
        shift = r.origin - origin
        events += [e._replace(start=e.start + shift, end=e.end + shift, rank=rank)
                   for e in r.events]
        errors += [ErrorRecord(x.kind, x.worker, x.index, x.batch, x.time + shift,
                               x.message, rank) for x in r.errors]
        occurrences += [o._replace(rank=rank) for o in r.occurrences]
    keys = None
    if any(r.keys is not None for r in runs):
        keys = sorted({k for r in runs for k in r.universe})
    return Run(
        config={**runs[0].config, "world_size": len(runs)},
        dataset_size=len(keys) if keys is not None else max(r.dataset_size for r in runs),
        keys=keys,
        events=sorted(events, key=lambda e: e.start),
        errors=errors,
        occurrences=occurrences,
        workers={w + 1000 * rank: pid for rank, r in enumerate(runs)
                 for w, pid in r.workers.items()},
        duration=max(r.origin - origin + r.duration for r in runs),
        stop=runs[0].stop if len({r.stop for r in runs}) == 1 else "error",
        origin=origin,
        notes=[n for r in runs for n in r.notes],
    )


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
    _need(version == VERSION, f"unsupported version {version}")
    expected = {"format", "version", "config", "dataset_size", "keys", "events", "errors",
                "occurrences", "workers", "duration", "stop", "origin", "notes"}
    _need(set(data) == expected, f"the fields must be {sorted(expected)}")
    _need(isinstance(data["config"], dict), "'config' must be an object")
    _need(_is_int(data["dataset_size"]) and data["dataset_size"] >= 0, "bad 'dataset_size'")
    keys = data["keys"]
    _need(keys is None or (isinstance(keys, list) and all(_is_int(k) for k in keys)),
          "'keys' must be null or a list of integers")
    events = []
    for item in _list(data["events"], "events"):
        _need(isinstance(item, list) and len(item) == 8, "an event must be a list of 8")
        kind, worker, batch, index, start, end, status, rank = item
        _need(kind in EVENT_KINDS, f"unknown event kind {kind!r}")
        _need(all(_is_int(v) for v in (worker, batch, index, start, end, rank)),
              "event numbers must be integers")
        _need(status in STATUSES, f"unknown event status {status!r}")
        _need(end >= start, "an event ends before it starts")
        events.append(Event(kind, worker, batch, index, start, end, status, rank))
    errors = []
    for item in _list(data["errors"], "errors"):
        _need(isinstance(item, list) and len(item) == 7, "an error must be a list of 7")
        kind, worker, index, batch, time, message, rank = item
        _need(kind in ERROR_KINDS, f"unknown error kind {kind!r}")
        _need(all(_is_opt_int(v) for v in (worker, index, batch)) and _is_int(time)
              and _is_int(rank) and isinstance(message, str), "bad error record")
        errors.append(ErrorRecord(kind, worker, index, batch, time, message, rank))
    occurrences = []
    for item in _list(data["occurrences"], "occurrences"):
        _need(isinstance(item, list) and len(item) == 4, "an occurrence must be a list of 4")
        index, batch, fate, rank = item
        _need(_is_int(index) and _is_int(batch) and _is_int(rank), "bad occurrence")
        _need(fate in ledger.FATES and fate != "never_sampled", f"bad fate {fate!r}")
        occurrences.append(Occurrence(index, batch, fate, rank))
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
               origin=data["origin"], notes=notes)


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
}
