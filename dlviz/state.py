"""Checkpoints through dlviz: a traced torchdata ``StatefulDataLoader`` keeps its state.

A ``StatefulDataLoader`` (torchdata) can say where a pass is (``state_dict()``) and
resume there in a new loader (``load_state_dict()``): the sampler's position and
random state, each worker's dataset state, how many batches were handed out.
torchdata finds that state by asking each part whether it is *stateful* (has
``state_dict`` and ``load_state_dict``). dlviz records a pass by putting its own
parts around yours (the batch drawer in the main process, the dataset wrappers in
the workers), so each wrapper here answers that question as the part it wraps
would, and hands the state through unchanged. A checkpoint taken through dlviz
therefore resumes an untraced loader, and the other way round (lesson 09).

The wrappers in the main process live here; the dataset wrappers, which run in
the workers, are in :mod:`dlviz.worker`.

When the sampler has no state of its own (a custom ``batch_sampler`` without
``state_dict``), torchdata resumes by drawing the batches already given again and
throwing them away; dlviz draws those without recording them (:func:`batches_to_skip`),
so the resumed pass shows only what it gave. Not recorded faithfully: with
``snapshot_every_n_steps`` > 1, torchdata reaches a checkpoint by *replaying* the
batches since its last snapshot inside the new iterator (fetched again, handed to
no loop); dlviz records them as the pass's first deliveries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def batches_to_skip(state_dict: dict[str, Any]) -> int:
    """How many batches a resume from ``state_dict`` skips when the sampler has no state
    (torchdata 0.11's layout: the main process's snapshot with workers, flat without)."""
    main = state_dict.get("_snapshot", {}).get("_main_snapshot", state_dict)
    skip = main.get("_sampler_iter_yielded", 0)
    return skip if isinstance(skip, int) and skip > 0 else 0


def is_stateful(part: Any) -> bool:
    """Whether torchdata treats ``part`` as stateful (its ``Stateful`` protocol)."""
    return callable(getattr(part, "state_dict", None)) and callable(
        getattr(part, "load_state_dict", None))


class PassesState:
    """Answers ``state_dict()`` and ``load_state_dict()`` with those of the part it wraps,
    the attribute named by ``state_of``: torchdata saves and restores that part's state
    through the wrapper, unchanged."""

    state_of = "inner"

    def state_dict(self) -> Any:
        return getattr(self, self.state_of).state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        getattr(self, self.state_of).load_state_dict(state_dict)


class Watched:
    """Your sampler, noting every index it yields in ``drawn``.

    A batch sampler throws away the short last batch when ``drop_last=True``; it
    drew those indices from this sampler first, so dlviz still sees them (the
    dropped tail). Stateful when your sampler is (:class:`StatefulWatched`).
    """

    def __init__(self, sampler: Any, drawn: list[Any]) -> None:
        self.sampler, self.drawn = sampler, drawn

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        inner = iter(self.sampler)
        kind = StatefulWatching if is_stateful(inner) else Watching
        return kind(inner, self.drawn)


class StatefulWatched(PassesState, Watched):
    state_of = "sampler"


def watched(sampler: Any, drawn: list[Any]) -> Watched:
    return (StatefulWatched if is_stateful(sampler) else Watched)(sampler, drawn)


class Watching:
    """An iterator over your sampler that notes each index it yields."""

    def __init__(self, inner: Iterator[Any], drawn: list[Any]) -> None:
        self.inner, self.drawn = inner, drawn

    def __iter__(self) -> Watching:
        return self

    def __next__(self) -> Any:
        index = next(self.inner)
        self.drawn.append(index)
        return index


class StatefulWatching(PassesState, Watching):
    pass


class StatefulDraws(PassesState):
    """The drawer's batches for one pass, with the state of the iterator they come from.

    ``inner`` is the iterator of your batch sampler (or sampler): its state is the
    pass's sampler state. Loading a state may make it skip what it already gave
    (torchdata fast-forwards an unstateful sampler): those indices were not drawn
    in this pass, so ``drawn`` forgets them.
    """

    def __init__(self, draws: Iterator[Any], inner: Any, drawn: list[Any]) -> None:
        self.draws, self.inner, self.drawn = draws, inner, drawn

    def __iter__(self) -> StatefulDraws:
        return self

    def __next__(self) -> Any:
        return next(self.draws)

    def load_state_dict(self, state_dict: Any) -> None:
        super().load_state_dict(state_dict)
        self.drawn.clear()


class StateOfTraced:
    """Stands in for a traced StatefulDataLoader's own iterator, so that *your* loader
    object answers ``state_dict()`` with the traced pass's state.

    torchdata's ``StatefulDataLoader.state_dict()`` asks the loader's current
    iterator; dlviz iterates a rebuilt loader, so your loader's iterator is this
    object, which asks the traced one. Iterating your loader itself again gets it
    a fresh iterator of its own, as it would untraced.
    """

    _finished = True  # torchdata: a finished iterator is replaced on the next iter()

    def __init__(self, traced: Any) -> None:
        self.traced = traced

    def state_dict(self) -> Any:
        return self.traced.state_dict()

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        loader._iterator = loader._get_iterator()  # persistent workers: start its own
