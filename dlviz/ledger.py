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
Lessons 1-7 read these fates; :func:`summarize` gives the counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

FATES = ("delivered", "failed", "filtered", "in_flight", "dropped", "never_sampled")
"""Fates from best to worst: an index takes the first fate any occurrence reached."""

RANK = {fate: rank for rank, fate in enumerate(FATES)}

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


def fates_by_index(universe: Iterable[int], occurrences: Iterable[Occurrence]) -> dict[int, str]:
    """Each index's best fate; indices of ``universe`` never produced are ``never_sampled``."""
    best: dict[int, int] = dict.fromkeys(universe, RANK["never_sampled"])
    for occ in occurrences:
        rank = RANK[occ.fate]
        if rank < best.get(occ.index, len(FATES)):
            best[occ.index] = rank
    return {index: FATES[rank] for index, rank in best.items()}


def summarize(universe: Sequence[int], occurrences: Sequence[Occurrence]) -> dict[str, int]:
    """The counts of a run: unique indices per fate, plus occurrence totals.

    ``delivered``, ``failed``, ... count *unique indices* by their best fate, so
    they add up to ``dataset_size`` (plus any index outside the universe).
    ``deliveries`` counts delivered occurrences and ``duplicated`` counts indices
    delivered more than once.
    """
    fates = fates_by_index(universe, occurrences)
    counts = dict.fromkeys(FATES, 0)
    for fate in fates.values():
        counts[fate] += 1
    delivered_times: dict[int, int] = {}
    for occ in occurrences:
        if occ.fate == "delivered":
            delivered_times[occ.index] = delivered_times.get(occ.index, 0) + 1
    return {
        "dataset_size": len(universe),
        "sampled": len({occ.index for occ in occurrences}),
        "delivered": counts["delivered"],
        "deliveries": sum(delivered_times.values()),
        "duplicated": sum(1 for times in delivered_times.values() if times > 1),
        "dropped": counts["dropped"],
        "failed": counts["failed"],
        "filtered": counts["filtered"],
        "in_flight": counts["in_flight"],
        "never_sampled": counts["never_sampled"],
    }

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
