"""Checkpoint and resume: a job that stops mid-epoch and a new loader that goes on.

A training job saves a checkpoint after ``k`` batches, stops (pre-empted, crashed,
out of time) and a new process resumes the epoch. What the resumed loader delivers
depends on how it resumes (lesson 9):

- ``"naive skip"``: a fresh DataLoader skips its first ``k`` batches, as
  :func:`skip_first_batches` does (Hugging Face Accelerate's helper of that name
  works the same way). Without shuffling that is exact. With ``shuffle=True`` the
  new process draws a *new* permutation: the batches it skips are not the ones the
  first process delivered, so some indices come twice and others never.
- ``"state_dict"``: torchdata's ``StatefulDataLoader``: ``state_dict()`` at the
  checkpoint, ``load_state_dict(state)`` in the new loader, which restores the
  sampler's position and random state: the rest of the epoch, each index once.
  :func:`dlviz.trace` records a ``StatefulDataLoader`` as itself (``traced.state_dict()``).
- ``"restart from zero"``: the new process starts the epoch again: the first ``k``
  batches' indices are delivered twice.

:func:`record_resume` records such a job for real (real loaders, real workers) and
returns its two passes, for :func:`dlviz.merge_runs` (``by="pass"``),
:func:`dlviz.plot_passes` and :func:`dlviz.explain`. The explorer's ``resume`` and
``checkpoint_at`` controls use it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sized
from importlib import import_module
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Sampler

from dlviz import _check
from dlviz.datasets import make_loader
from dlviz.recorder import record, trace
from dlviz.run import Run, merge_runs

__all__ = ["RESUMES", "SkipBatches", "skip_first_batches", "record_resume", "plot_resume",
           "make_stateful_loader"]

RESUMES = ("naive skip", "state_dict", "restart from zero")
"""The ways :func:`record_resume` resumes an epoch after a checkpoint."""


class SkipBatches(Sampler[list[int]]):
    """A batch sampler that leaves out the first ``skip`` batches of another.

    The indices of the skipped batches are drawn (the sampler's random state moves
    on as it would) but never fetched: no worker loads them, the loop never sees them.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = _check.count("skip", skip)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        if not isinstance(self.batch_sampler, Sized):
            raise TypeError("the wrapped batch sampler has no len()")
        return max(len(self.batch_sampler) - self.skip, 0)


def skip_first_batches(loader: DataLoader[Any], batches: int) -> DataLoader[Any]:
    """A copy of ``loader`` that leaves out its first ``batches`` batches: the naive resume.

    It draws a fresh epoch from ``loader``'s sampler (a new permutation, if it shuffles)
    and skips the first ``batches`` batches *of that epoch*, which are the first
    process's batches only if the sampler draws the same order again.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a torch DataLoader, not {type(loader).__name__}")
    if loader.batch_sampler is None:
        raise ValueError("loader has no batch sampler (batch_size=None): nothing to skip")
    skip = _check.count("batches", batches)
    return DataLoader(
        loader.dataset,
        batch_sampler=SkipBatches(loader.batch_sampler, skip),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        persistent_workers=loader.persistent_workers,
        in_order=getattr(loader, "in_order", True),
    )


def record_resume(dataset: Any, *, checkpoint_at: int, resume: str, batch_size: int = 32,
                  shuffle: bool = True, seed: int = 0, start_method: str | None = None,
                  **loader_kwargs: Any) -> list[Run]:
    """Record a job checkpointed after ``checkpoint_at`` batches and resumed by ``resume``.

    Two real passes over ``dataset``: the first process's loader (a ``torch.Generator``
    seeded ``seed``) delivers ``checkpoint_at`` batches and stops; a new process's loader
    (seeded ``seed + 1``: a restarted job draws another permutation unless it restores
    one) resumes the epoch as ``resume`` says (one of :data:`RESUMES`, see the module's
    docstring). ``loader_kwargs`` go to both DataLoaders (``num_workers``,
    ``persistent_workers``, ``drop_last``, ...); every worker is stopped on return.

    Returns ``[before, resumed]``, the two passes' Runs: merge them with
    ``dlviz.merge_runs(runs, by="pass")``, draw them with ``dlviz.plot_passes(runs)``,
    and ``dlviz.explain(runs)`` reads them as a checkpoint and its resume. Lesson 9.
    """
    resume = _check.choice("resume", resume, RESUMES)
    batch_size = _check.count("batch_size", batch_size, minimum=1)
    k = _check.count("checkpoint_at", checkpoint_at, minimum=1)
    seed = _check.count("seed", seed)
    shuffle = _check.flag("shuffle", shuffle)

    def loader(seed: int) -> DataLoader[Any]:
        return make_loader(dataset, start_method=start_method, batch_size=batch_size,  # type: ignore[no-any-return]
                           shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                           **loader_kwargs)

    first = loader(seed)
    batches = len(first)
    if k >= batches:
        raise ValueError(f"checkpoint_at must be less than the epoch's {batches} batches, "
                         f"got {checkpoint_at}")
    if resume == "state_dict":
        return _record_stateful(dataset, k, batch_size, shuffle, seed, start_method,
                                loader_kwargs)
    before = record(first, max_batches=k)
    second = loader(seed + 1)
    if resume == "naive skip":
        second = skip_first_batches(second, k)
    return [before, record(second)]


def _record_stateful(dataset: Any, k: int, batch_size: int, shuffle: bool, seed: int,
                     start_method: str | None, loader_kwargs: dict[str, Any]) -> list[Run]:
    """The ``"state_dict"`` resume: torchdata's ``StatefulDataLoader``, traced as itself."""

    def loader(seed: int) -> Any:
        return make_stateful_loader(dataset, start_method=start_method, batch_size=batch_size,
                                    shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                                    **loader_kwargs)

    state: dict[str, Any] = {}
    with trace(loader(seed)) as traced:
        for step, _ in enumerate(traced):
            if step + 1 == k:
                state = traced.state_dict()  # what the checkpoint saves
                break
    before = traced.run
    resumed = loader(seed + 1)
    resumed.load_state_dict(state)
    return [before, record(resumed)]


def plot_resume(runs: list[Run], fig: Figure | None = None) -> Figure:
    """A checkpointed job's passes: every index in every pass (:func:`dlviz.plot_passes`),
    over the ledger of the two passes merged (:func:`dlviz.plot_ledger`). Draws on ``fig``
    (a new matplotlib Figure, not pyplot's, if None) and returns it. Lesson 9's explorer."""
    from dlviz.plot import plot_ledger, plot_passes

    merged = merge_runs(runs, by="pass")
    fig = fig if fig is not None else Figure(figsize=(12, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(1, 2))
    plot_passes(runs, ax=top)
    plot_ledger(merged, ax=bottom)
    deliveries = merged.ledger.deliveries[:merged.ledger.size]
    bottom.set_title(f"both passes on one ledger: {int((deliveries == 1).sum())} indices "
                     f"once, {int((deliveries > 1).sum())} twice, "
                     f"{int((deliveries == 0).sum())} never", loc="left", fontsize=11)
    return fig


def make_stateful_loader(dataset: Any, *, start_method: str | None = None,
                         **kwargs: Any) -> Any:
    """torchdata's ``StatefulDataLoader(dataset, **kwargs)``, started with ``start_method``
    (None: the default), as :func:`dlviz.datasets.make_loader` builds a DataLoader.
    Lesson 9. Needs ``torchdata`` (``pip install torchdata``)."""
    stateful = import_module("torchdata.stateful_dataloader")  # optional: untyped

    workers = _check.count("num_workers", kwargs.get("num_workers", 0))
    if start_method is not None:
        _check.choice("start_method", start_method, ("fork", "spawn", "forkserver"))
        if workers > 0:
            kwargs["multiprocessing_context"] = start_method
    return stateful.StatefulDataLoader(dataset, **kwargs)
