"""dlviz.checkpoint: a checkpointed pass and its resume, recorded with real loaders and
compared with what plain torch loaders deliver (lesson 9)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

import dlviz
from dlviz.checkpoint import (
    SkipBatches,
    make_stateful_loader,
    plot_resume,
    record_resume,
    skip_first_batches,
)
from dlviz.datasets import SyntheticDataset

N, BATCH, K = 50, 5, 3


def order(seed: int, shuffle: bool = True, **kwargs: Any) -> list[int]:
    """One whole epoch of a plain torch DataLoader, as it delivers it."""
    loader = DataLoader(SyntheticDataset(N), batch_size=BATCH, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(seed), **kwargs)
    return [i for batch in loader for i in batch.tolist()]


@pytest.mark.parametrize("workers", [0, 2])
def test_naive_skip_with_shuffle_repeats_and_misses_what_plain_torch_does(workers: int) -> None:
    runs = record_resume(SyntheticDataset(N), checkpoint_at=K, resume="naive skip",
                         batch_size=BATCH, seed=7, num_workers=workers)
    before, after = runs
    first, second = order(7), order(8)
    assert before.delivered() == first[:K * BATCH]
    assert after.delivered() == second[K * BATCH:]
    assert before.stop == "max_batches" and after.stop == "exhausted"
    counts = Counter(first[:K * BATCH] + second[K * BATCH:])
    deliveries = dlviz.merge_runs(runs, by="pass").ledger.deliveries[:N]
    assert [i for i in range(N) if deliveries[i] == 2] == sorted(i for i, c in counts.items()
                                                                 if c == 2)
    assert [i for i in range(N) if deliveries[i] == 0] == sorted(set(range(N)) - set(counts))
    assert (deliveries == 0).sum() == (deliveries == 2).sum() > 0
    # the skipped batches are never fetched in the resumed pass
    assert len(after.of_kind("fetch")) == N - K * BATCH
    causes = {f.cause: f.count for f in dlviz.explain(runs)}
    assert causes == {"resume_repeat": int((deliveries == 2).sum()),
                      "resume_skip": int((deliveries == 0).sum())}


def test_naive_skip_without_shuffle_is_exact() -> None:
    runs = record_resume(SyntheticDataset(N), checkpoint_at=K, resume="naive skip",
                         batch_size=BATCH, shuffle=False)
    assert runs[0].delivered() + runs[1].delivered() == list(range(N))
    assert dlviz.explain(runs) == []


def test_restart_from_zero_repeats_the_batches_before_the_checkpoint() -> None:
    runs = record_resume(SyntheticDataset(N), checkpoint_at=K, resume="restart from zero",
                         batch_size=BATCH, seed=3)
    assert runs[1].delivered() == order(4)
    merged = dlviz.merge_runs(runs, by="pass").summary()
    assert (merged["delivered"], merged["deliveries"], merged["duplicated"]) == (
        N, N + K * BATCH, K * BATCH)


def test_skip_first_batches_matches_a_loop_that_skips_with_continue() -> None:
    loader = DataLoader(SyntheticDataset(N), batch_size=BATCH, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(1), persistent_workers=True)
    skipping = skip_first_batches(loader, K)
    assert isinstance(skipping.batch_sampler, SkipBatches)
    assert len(skipping) == len(loader) - K
    assert skipping.persistent_workers and skipping.num_workers == 2
    got = [i for batch in skipping for i in batch.tolist()]
    plain = DataLoader(SyntheticDataset(N), batch_size=BATCH, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    assert got == [i for step, batch in enumerate(plain) if step >= K for i in batch.tolist()]


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="resume"):
        record_resume(SyntheticDataset(N), checkpoint_at=K, resume="rewind")
    with pytest.raises(ValueError, match="checkpoint_at"):
        record_resume(SyntheticDataset(N), checkpoint_at=N // BATCH, resume="naive skip",
                      batch_size=BATCH)
    with pytest.raises(ValueError, match="checkpoint_at"):
        record_resume(SyntheticDataset(N), checkpoint_at=0, resume="naive skip")
    with pytest.raises(TypeError, match="loader"):
        skip_first_batches([1, 2, 3], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batches"):
        skip_first_batches(DataLoader(SyntheticDataset(N)), -1)


def test_plot_resume_draws_the_passes_and_the_merged_ledger() -> None:
    runs = record_resume(SyntheticDataset(N), checkpoint_at=K, resume="naive skip",
                         batch_size=BATCH)
    fig = plot_resume(runs)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    deliveries = dlviz.merge_runs(runs, by="pass").ledger.deliveries[:N]
    assert f"{int((deliveries == 2).sum())} twice" in fig.axes[1].get_title(loc="left")


def test_explorer_records_a_job_when_resume_is_chosen() -> None:
    explorer = dlviz.explore(controls=["checkpoint_at", "resume", "shuffle"], n=N,
                             batch_size=BATCH, num_workers=0, cost_ms=0.0,
                             resume="restart from zero", checkpoint_at=K)
    try:
        assert len(explorer.runs) == 2 and explorer.png.startswith(b"\x89PNG")
        assert explorer.run is not None
        assert explorer.run.summary()["duplicated"] == K * BATCH
        run = explorer.rerun(checkpoint_at=60)  # past the epoch: the last step, with a note
        assert run.summary()["duplicated"] == (N // BATCH - 1) * BATCH
        assert "checkpointed after batch" in explorer.message.value
        run = explorer.rerun(resume="none")
        assert explorer.runs == [] and run.summary()["deliveries"] == N
    finally:
        explorer.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resume_delivers_each_index_once(workers: int) -> None:
    runs = record_resume(SyntheticDataset(N), checkpoint_at=K, resume="state_dict",
                         batch_size=BATCH, seed=2, num_workers=workers)
    before, after = runs
    # the uninterrupted epoch the first process began (torchdata's sampler draws its own
    # way, and its order depends on num_workers)
    uninterrupted = make_stateful_loader(SyntheticDataset(N), batch_size=BATCH, shuffle=True,
                                         num_workers=workers,
                                         generator=torch.Generator().manual_seed(2))
    first = [i for batch in uninterrupted for i in batch.tolist()]
    assert before.delivered() + after.delivered() == first
    assert (dlviz.merge_runs(runs, by="pass").ledger.deliveries[:N] == 1).all()
    assert dlviz.explain(runs) == []
