"""The ledger: what happened to every sample of a run.

Every sample the sampler produced is one *occurrence* (an index can occur more
than once: replacement sampling, DistributedSampler padding, an IterableDataset
read by several workers). Each occurrence has exactly one fate:

- ``delivered``: reached your loop inside a batch that ``__next__`` returned;
- ``filtered``: the dataset returned ``None`` and the collate skipped it;
- ``failed``: its batch raised (exception, worker death, timeout);
- ``in_flight``: prefetched, but the loop stopped before it was delivered;
- ``dropped``: produced, then discarded by ``drop_last``;

and an index with no occurrence at all is ``never_sampled``. An index's fate is
the best fate among its occurrences, in the order of :data:`FATES`.
Lessons 1-7 read these fates. :func:`compute` makes a :class:`Ledger` once per
Run (numpy, no Python object per index); ``Run.summary()`` and ``Run.fate(i)``
read it, so a loop over a million indices stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from dlviz.table import Table

FATES = ("delivered", "failed", "filtered", "in_flight", "dropped", "never_sampled")
"""Fates from best to worst: an index takes the first fate any occurrence reached."""

RANK = {fate: rank for rank, fate in enumerate(FATES)}
NEVER = RANK["never_sampled"]

SUMMARY_KEYS = (
    "dataset_size", "sampled", "delivered", "deliveries", "duplicated",
    "dropped", "failed", "filtered", "in_flight", "never_sampled",
)


class Occurrence(NamedTuple):
    """One sample produced by the sampler (or yielded by a stream), and its fate."""

    index: int  # type: ignore[assignment]  # dataset index, or a stream sample's key
    batch: int  # the batch it was produced for (-1 for a stream's dropped tail)
    fate: str
    rank: int = 0  # distributed rank (see merge_runs)


class Occurrences(Table):
    """Every occurrence of a run, in columns (see :class:`Occurrence`)."""

    Row = Occurrence
    fields = Occurrence._fields
    dtypes = {"index": np.int64, "batch": np.int32, "fate": np.int8, "rank": np.int16}
    names = {"fate": FATES}
    __slots__ = ()


@dataclass(frozen=True)
class Ledger:
    """Each index's best fate and delivery count, computed once per Run (vectorised).

    Positions ``0..n-1`` are the universe: indices ``0..dataset_size-1``, or a
    stream's keys in sorted order (``keys``). Indices outside it (a sampler that
    yields an index the dataset does not have; a stream key nobody expected)
    follow, in ``outside``: ``fate()`` answers for them, but the summary's fate
    counts are over the universe only, so they always add up to ``dataset_size``
    (``deliveries`` and ``duplicated`` count every delivery, outside ones too).
    """

    keys: np.ndarray | None  # sorted universe keys; None: 0..size-1
    size: int
    outside: np.ndarray  # sorted indices outside the universe
    best: np.ndarray  # int8 rank in FATES, per position
    deliveries: np.ndarray  # int32 delivered occurrences, per position
    summary: dict[str, int] = field(compare=False)

    def position(self, index: int) -> int:
        """Where ``index`` sits (-1: nowhere)."""
        if self.keys is None:
            if 0 <= index < self.size:
                return index
        else:
            k = int(np.searchsorted(self.keys, index))
            if k < self.size and self.keys[k] == index:
                return k
        k = int(np.searchsorted(self.outside, index))
        if k < len(self.outside) and self.outside[k] == index:
            return self.size + k
        return -1

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """:meth:`position` of many indices at once (-1: not in the dataset)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.keys is None:
            return np.where((indices >= 0) & (indices < self.size), indices, -1)
        if not self.size:
            return np.full(len(indices), -1)
        k = np.minimum(np.searchsorted(self.keys, indices), self.size - 1)
        return np.where(self.keys[k] == indices, k, -1)

    def index_at(self) -> np.ndarray:
        """The index (or key) of every position."""
        inside = np.arange(self.size, dtype=np.int64) if self.keys is None else self.keys
        return np.concatenate([inside, self.outside])


def compute(size: int, keys: Any, occurrences: Occurrences) -> Ledger:
    """The ledger of ``size`` indices (or ``keys``) from a run's occurrences."""
    index, fate = occurrences.column("index"), occurrences.column("fate")
    sorted_keys = None if keys is None else np.unique(np.asarray(keys, dtype=np.int64))
    if sorted_keys is not None:
        size = len(sorted_keys)
        pos = np.searchsorted(sorted_keys, index)
        inside = pos < size
        inside[inside] = sorted_keys[pos[inside]] == index[inside]
    else:
        pos = index.copy()
        inside = (index >= 0) & (index < size)
    outside = np.unique(index[~inside])
    pos[~inside] = size + np.searchsorted(outside, index[~inside])
    total = size + len(outside)
    best = np.full(total, NEVER, dtype=np.int8)
    for code in range(NEVER - 1, -1, -1):  # worst first: the best fate is written last
        best[pos[fate == code]] = code
    delivered = fate == RANK["delivered"]
    deliveries = np.zeros(total, dtype=np.int32)  # (bincount without minlength: no int64
    counted = np.bincount(pos[delivered])             # array as long as a huge dataset)
    deliveries[:len(counted)] = counted
    counts = np.bincount(best[:size], minlength=len(FATES))  # the fates partition the dataset
    summary = {
        "dataset_size": size,
        "sampled": int((best[:size] < NEVER).sum()),
        "delivered": int(counts[RANK["delivered"]]),
        "deliveries": int(delivered.sum()),
        "duplicated": int((deliveries > 1).sum()),
        "dropped": int(counts[RANK["dropped"]]),
        "failed": int(counts[RANK["failed"]]),
        "filtered": int(counts[RANK["filtered"]]),
        "in_flight": int(counts[RANK["in_flight"]]),
        "never_sampled": int(counts[NEVER]),
    }
    return Ledger(sorted_keys, size, outside, best, deliveries, summary)


FATE_COLORS = {
    "delivered": "#009E73",  # bluish green
    "duplicated": "#0072B2",  # blue: delivered more than once
    "failed": "#D55E00",  # vermillion
    "filtered": "#CC79A7",  # reddish purple
    "in_flight": "#56B4E9",  # sky blue
    "dropped": "#E69F00",  # orange
    "never_sampled": "#BBBBBB",  # grey
}
"""One colour per fate, everywhere: plots, explorer, notebooks (Okabe-Ito, colour-blind safe)."""
