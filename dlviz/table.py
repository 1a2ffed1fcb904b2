"""Columns of a Run: events and occurrences held as numpy arrays, read as records.

A Run of an ImageNet-size epoch holds millions of events; one Python object per
event would cost ~300 bytes each and seconds to make. A :class:`Table` keeps one
numpy array per field instead (about 35 bytes per event, 15 per occurrence) and
still reads like a list of records where a learner wants one::

    fetches = run.of_kind("fetch")      # a Table of the fetch events
    fetches[0].start                    # one row, an Event (a NamedTuple)
    [e.index for e in fetches]          # iterate rows
    fetches.start                       # a whole column, a numpy array
    run.events.to_frame()               # a pandas DataFrame (when pandas is installed)

Fields whose values are names (an event's ``kind`` and ``status``, an
occurrence's ``fate``) are stored as small integer codes; the attribute gives
the names back, :meth:`Table.column` the codes. Lesson 0 introduces the events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np

T = TypeVar("T", bound="Table")


class Table:
    """Columns of equal length (a subclass names them); rows read as ``Row`` tuples."""

    Row: ClassVar[type[Any]]
    fields: ClassVar[tuple[str, ...]]
    dtypes: ClassVar[dict[str, Any]]
    names: ClassVar[dict[str, tuple[str, ...]]]  # coded fields: code -> name
    __slots__ = ("_columns",)

    def __init__(self, **columns: Any) -> None:
        if set(columns) != set(self.fields):
            raise TypeError(f"{type(self).__name__} needs the columns {self.fields}")
        made = {name: np.asarray(columns[name], dtype=self.dtypes[name]).reshape(-1)
                for name in self.fields}
        if len({len(c) for c in made.values()}) > 1:
            raise ValueError(f"{type(self).__name__}: columns of different lengths")
        self._columns = made

    # --- making tables ---
    @classmethod
    def empty(cls: type[T]) -> T:
        return cls(**{name: np.empty(0, cls.dtypes[name]) for name in cls.fields})

    @classmethod
    def from_rows(cls: type[T], rows: Sequence[Any]) -> T:
        """A table of records (tuples in field order; names for coded fields)."""
        if isinstance(rows, cls):
            return rows
        rows = list(rows)
        if not rows:
            return cls.empty()
        full = [tuple(r) + tuple(cls.Row._field_defaults[f] for f in cls.fields[len(r):])
                for r in rows]
        columns: dict[str, Any] = {}
        for k, name in enumerate(cls.fields):
            values = [r[k] for r in full]
            columns[name] = cls.encode(name, values) if name in cls.names else values
        return cls(**columns)

    @classmethod
    def encode(cls, name: str, values: Any) -> np.ndarray:
        """Names of a coded field -> codes (``ValueError`` for an unknown name)."""
        lookup = {v: k for k, v in enumerate(cls.names[name])}
        try:
            return np.fromiter((lookup[v] for v in values), dtype=cls.dtypes[name])
        except KeyError as exc:
            raise ValueError(f"unknown {name} {exc.args[0]!r}") from None

    @classmethod
    def concat(cls: type[T], tables: Sequence[T]) -> T:
        if not tables:
            return cls.empty()
        return cls(**{name: np.concatenate([t._columns[name] for t in tables])
                      for name in cls.fields})

    # --- reading ---
    def __len__(self) -> int:
        return len(self._columns[self.fields[0]])

    def column(self, name: str) -> np.ndarray:
        """The raw column (codes for coded fields); do not modify it."""
        return self._columns[name]

    def code_of(self, name: str, value: str) -> int:
        return self.names[name].index(value)

    def __getattr__(self, name: str) -> Any:
        columns = object.__getattribute__(self, "_columns")
        if name not in columns:
            raise AttributeError(f"{type(self).__name__} has no column {name!r}")
        if name in self.names:
            return np.array(self.names[name], dtype=object)[columns[name]]
        return columns[name]

    def __iter__(self) -> Iterator[Any]:
        lists = []
        for name in self.fields:
            values = self._columns[name]
            if name in self.names:
                lists.append([self.names[name][c] for c in values.tolist()])
            else:
                lists.append(values.tolist())
        new, row = tuple.__new__, self.Row
        return (new(row, r) for r in zip(*lists))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"{type(self).__name__} index {key} out of range ({n} rows)")
            values = []
            for name in self.fields:
                v = self._columns[name][key].item()
                values.append(self.names[name][v] if name in self.names else v)
            return self.Row(*values)
        return type(self)(**{name: c[key] for name, c in self._columns.items()})

    def where(self: T, mask: Any) -> T:
        """The rows where ``mask`` (a boolean array) is true."""
        return self[np.asarray(mask, dtype=bool)]  # type: ignore[no-any-return]

    def is_(self, name: str, *values: str) -> np.ndarray:
        """A boolean array: rows whose coded field ``name`` is one of ``values``."""
        wanted = [self.names[name].index(v) for v in values]
        return np.isin(self._columns[name], wanted)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple)):  # run.of_kind("fetch") == [] reads as it says
            return len(self) == len(other) and list(self) == list(other)
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Table)
        return all(np.array_equal(self._columns[n], other._columns[n]) for n in self.fields)

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return len(self) > 0

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._columns.values())

    def to_frame(self) -> Any:
        """A pandas DataFrame of the table (pandas is optional: install it to use this)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_frame() needs pandas: pip install pandas") from None
        data = {}
        for name in self.fields:
            col = self._columns[name]
            data[name] = (pd.Categorical.from_codes(col, self.names[name])
                          if name in self.names else col)
        return pd.DataFrame(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} rows of {', '.join(self.fields)}>"


class Event(NamedTuple):
    """One thing that happened. Instants have ``start == end``.

    ``worker`` is the lane: a worker number, or ``MAIN`` (-1, the main process).
    For ``dispatch``, ``arrive``, ``deliver`` and ``lost`` (main-process instants)
    it is the worker that the batch went to. ``index`` is the dataset index (or
    stream key) for fetches, the pid for ``worker_start``, else -1.
    """

    kind: str
    worker: int
    batch: int
    index: int  # type: ignore[assignment]  # a field named like tuple.index, on purpose
    start: int
    end: int
    status: str = ""
    rank: int = 0


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
STATUSES = ("", "ok", "raised", "none", "unfinished")


class Events(Table):
    """Every event of a run, in columns (see :class:`Event` for the fields)."""

    Row = Event
    fields = Event._fields
    dtypes = {"kind": np.int8, "worker": np.int16, "batch": np.int32, "index": np.int64,
              "start": np.int64, "end": np.int64, "status": np.int8, "rank": np.int16}
    names = {"kind": EVENT_KINDS, "status": STATUSES}
    __slots__ = ()

    def of_kind(self, *kinds: str) -> Events:
        """The events of these kinds (``run.of_kind("fetch")``)."""
        for kind in kinds:
            if kind not in EVENT_KINDS:
                raise ValueError(f"kind must be one of {EVENT_KINDS}, not {kind!r}")
        return self.where(self.is_("kind", *kinds))
