"""Many passes over one traced loader: each pass's Run holds that pass and nothing else.

Real workers throughout. Persistent workers log every pass into the same shared-memory
region; at the start of each pass they empty it, so a loader can be iterated for as
many epochs as a training run has, and a pass cut short leaves nothing behind in the
next one (torch discards the workers' leftover batches while the next pass starts).
Also: a sampler that yields keys rather than int indices is traced all the same, and
the last wait of a pass ends where torch begins to stop the workers.
"""

from __future__ import annotations

import multiprocessing.util
import time
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dlviz
from dlviz.datasets import SyntheticDataset

N, BATCH = 48, 8
PASSES = 20  # a region holds one pass of the whole dataset plus some room: this many
# passes of a worker's share would not fit in it at once


def _loader(**kwargs: Any) -> DataLoader[Any]:
    options: dict[str, Any] = {"batch_size": BATCH, "num_workers": 2}
    options.update(kwargs)
    return DataLoader(SyntheticDataset(N), **options)


def _check_complete_pass(run: dlviz.Run) -> None:
    summary = run.summary()
    assert summary["delivered"] == N and summary["in_flight"] == 0, summary
    fetched = sorted(e.index for e in run.events if e.kind == "fetch")
    assert fetched == list(range(N))  # every index fetched once, in this pass
    batches = {e.batch for e in run.events if e.kind in ("fetch", "collate", "dispatch")}
    assert len(batches) == N // BATCH
    assert all(e.batch >= 0 for e in run.events if e.kind in ("arrive", "deliver", "dispatch"))
    assert not run.notes, run.notes


@pytest.mark.parametrize("persistent", [True, False])
def test_every_pass_of_many_is_recorded_whole(persistent: bool) -> None:
    with dlviz.trace(_loader(persistent_workers=persistent), keep=None) as traced:
        for _ in range(PASSES):
            assert sum(1 for _ in traced) == N // BATCH
        runs = traced.runs
    assert len(runs) == PASSES and traced.passes_let_go == 0
    for run in runs:
        _check_complete_pass(run)
    first_batches = [min(e.batch for e in run.events if e.kind == "fetch") for run in runs]
    assert first_batches == sorted(first_batches)  # batch numbers keep counting up


def test_a_pass_cut_short_leaves_nothing_in_the_next() -> None:
    with dlviz.trace(_loader(persistent_workers=True, prefetch_factor=2)) as traced:
        for i, _ in enumerate(traced):
            if i == 1:
                break  # the workers still hold prefetched batches of this pass
        short = traced.run
        assert sum(1 for _ in traced) == N // BATCH
        full = traced.run
    assert short.stop == "break" and short.summary()["delivered"] == 2 * BATCH
    _check_complete_pass(full)
    short_batches = {e.batch for e in short.events if e.kind == "dispatch"}
    assert short_batches.isdisjoint(e.batch for e in full.events)


class _Words(Dataset[Any]):
    """A dataset keyed by strings, read with a sampler that yields those keys."""

    def __init__(self) -> None:
        self.words = {w: torch.tensor(len(w)) for w in ("ab", "cde", "f", "ghij", "kl")}

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.words[key]


@pytest.mark.parametrize("workers", [0, 2])
def test_keys_that_are_not_ints_are_ledgered_by_key(workers: int) -> None:
    dataset = _Words()
    loader = DataLoader(dataset, batch_size=2, sampler=list(dataset.words), num_workers=workers)
    traced = dlviz.trace(loader)
    seen = [batch.tolist() for batch in traced]
    assert seen == [batch.tolist() for batch in loader] == [[2, 3], [1, 4], [2]]
    run = traced.run
    assert run.labels == list(dataset.words)
    assert run.summary()["delivered"] == run.summary()["dataset_size"] == 5
    assert run.fate("ghij") == "delivered" and run.fates()["kl"] == "delivered"
    assert len(run.of_kind("fetch")) == 5
    assert any("keys, not int indices" in note for note in run.notes)


class _KeyedWords(_Words):
    def keys(self) -> list[str]:
        return list(self.words)


def test_a_dataset_with_keys_gives_the_ledger_its_universe() -> None:
    dataset = _KeyedWords()
    dataset.words.update({0: torch.tensor(0), 1: torch.tensor(1)})
    loader = DataLoader(dataset, batch_size=2, sampler=[0, 1, "ab", "cde"], drop_last=False)
    traced = dlviz.trace(loader)
    assert [batch.tolist() for batch in traced] == [[0, 1], [2, 3]]
    run = traced.run
    s = run.summary()
    assert (s["dataset_size"], s["delivered"], s["never_sampled"]) == (7, 4, 3)
    assert run.fate("f") == "never_sampled" and run.fate(0) == run.fate("ab") == "delivered"
    with pytest.raises(ValueError, match="not in this run"):
        run.fate("zz")


def test_negative_indices_are_the_indices_they_stand_for() -> None:
    loader = DataLoader(TensorDataset(torch.arange(50)), batch_size=4, sampler=[-1, 0, 1, -50])
    traced = dlviz.trace(loader)
    got = [batch[0].tolist() for batch in traced]
    assert got == [batch[0].tolist() for batch in loader] == [[49, 0, 1, 0]]
    s = traced.run.summary()
    assert (s["delivered"], s["never_sampled"], s["dataset_size"]) == (3, 47, 50)
    assert s["duplicated"] == 1  # -50 is 0
    assert traced.run.fate(49) == traced.run.fate(0) == "delivered"
    assert s["delivered"] + s["never_sampled"] == s["dataset_size"]  # fates partition it


SLOW_EXIT_S = 0.6


def _exit_slowly(worker_id: int) -> None:
    """worker_init_fn: the worker takes SLOW_EXIT_S to exit once torch stops it."""
    multiprocessing.util.Finalize(None, time.sleep, args=(SLOW_EXIT_S,), exitpriority=0)


def test_the_last_wait_ends_where_torch_begins_to_stop_the_workers() -> None:
    loader = DataLoader(SyntheticDataset(16), batch_size=4, num_workers=2,
                        worker_init_fn=_exit_slowly)
    traced = dlviz.trace(loader)
    assert sum(1 for _ in traced) == 4
    run = traced.run
    last = max((e for e in run.events if e.kind == "wait"), key=lambda e: e.start)
    # the pass ended after torch had waited for the workers to exit (a sleep: never
    # shorter under load); the loop's last wait ended before that
    assert run.duration - last.end >= SLOW_EXIT_S * 1e9
