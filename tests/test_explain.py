"""Tests for dlviz.explain and dlviz.plot_waterfall (issue 17).

Every cause is shown by a real recording (a real DataLoader, real worker processes
where the cause needs them), small enough to run in a moment. The expected counts
come from the loader's construction (``n % batch_size``, the batches a dead worker
held, the permutations a resume drew), never from dlviz's own output; and in every
recording the findings' missing counts add up to ``dataset_size - delivered``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from no_torch import run_without_torch  # noqa: E402
from torch.utils.data import (  # noqa: E402
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

import dlviz  # noqa: E402
from dlviz import Finding, Run  # noqa: E402
from dlviz.datasets import SyntheticDataset, SyntheticStream, collate_skip_none  # noqa: E402
from dlviz.ledger import FATE_COLORS  # noqa: E402

N, BS = 100, 8


def findings_of(run: Run) -> dict[tuple[str, str], Finding]:
    """explain(run), checked: one finding per (cause, kind), the missing counts add up,
    every example is an index with that problem, every count is in the message."""
    found = dlviz.explain(run)
    s = run.summary()
    assert sum(f.count for f in found if f.kind == "missing") == s["dataset_size"] - s["delivered"]
    assert (sum(f.count for f in found if f.kind == "extra")
            == s["deliveries"] - s["delivered"])
    for f in found:
        assert isinstance(f, Finding) and f.count > 0 and str(f.count) in f.message, f
        assert f.fix and f.lesson.startswith("lesson")
        for i in f.examples:
            assert run.fate(i) != "delivered" if f.kind == "missing" else run.fate(i) == "delivered"
    table = {(f.cause, f.kind): f for f in found}
    assert len(table) == len(found)
    return table


def counts(run: Run) -> dict[str, int]:
    """The missing counts by cause."""
    return {cause: f.count for (cause, kind), f in findings_of(run).items() if kind == "missing"}


def loader(dataset: Any, **kw: Any) -> DataLoader[Any]:
    kw.setdefault("batch_size", BS)
    return DataLoader(dataset, **kw)


# ----------------------------------------------------------------- map-style causes
def test_a_clean_run_has_no_findings() -> None:
    assert dlviz.explain(dlviz.record(loader(SyntheticDataset(N), num_workers=2))) == []
    stream = dlviz.record(loader(SyntheticStream(N, sharding="stride"), num_workers=2))
    assert dlviz.explain(stream) == []


def test_drop_last() -> None:
    run = dlviz.record(loader(SyntheticDataset(N), num_workers=2, drop_last=True))
    found = findings_of(run)
    assert counts(run) == {"drop_last": N % BS}
    f = found[("drop_last", "missing")]
    assert f.examples == tuple(range(N - N % BS, N))
    assert f.message == (f"{N % BS} of {N} samples were dropped: drop_last=True threw away "
                         f"the final batch, smaller than batch_size={BS}.")


def test_worker_error_loses_one_batch() -> None:
    run = dlviz.record(loader(SyntheticDataset(N, fail_at=[20]), num_workers=2),
                       on_error="continue")
    assert counts(run) == {"worker_error": BS}
    assert 20 in findings_of(run)[("worker_error", "missing")].examples
    assert "ValueError" in findings_of(run)[("worker_error", "missing")].message


def test_worker_died_takes_the_batches_it_held() -> None:
    run = dlviz.record(loader(SyntheticDataset(N, crash_at=[20]), num_workers=2,
                              prefetch_factor=2), on_error="continue")
    assert [e.kind for e in run.errors] == ["worker_died"]
    held = {b.batch for b in run.batches() if b.fate == "failed"}
    assert counts(run) == {"worker_died": BS * len(held)}
    assert len(held) > 1  # not only the batch with the crash: what the worker held too


def test_timeout_then_the_loop_ends() -> None:
    run = dlviz.record(loader(SyntheticDataset(N, hang_at=[20]), num_workers=2, timeout=1),
                       on_error="continue")
    s = run.summary()
    assert counts(run) == {"timeout": BS, "loop_stopped_early": s["in_flight"] + s["never_sampled"]}


def test_filtered_none() -> None:
    run = dlviz.record(loader(SyntheticDataset(N, none_at=[3, 50]), num_workers=2,
                              collate_fn=collate_skip_none))
    assert counts(run) == {"filtered_none": 2}
    assert findings_of(run)[("filtered_none", "missing")].examples == (3, 50)


@pytest.mark.parametrize("stop", ["max_batches", "break"])
def test_loop_stopped_early(stop: str) -> None:
    made = loader(SyntheticDataset(N), num_workers=2, prefetch_factor=2)
    if stop == "max_batches":
        run = dlviz.record(made, max_batches=3)
    else:
        traced = dlviz.trace(made)
        for _batch, _ in zip(traced, range(3)):  # zip stops the loop after 3 batches
            pass
        traced.close()
        run = traced.run
    got = run.summary()["delivered"]
    assert got == (4 if stop == "break" else 3) * BS  # zip takes one more from its first
    assert counts(run) == {"loop_stopped_early": N - got}
    window = 2 * 2 * BS  # prefetch_factor x num_workers batches
    f = findings_of(run)[("loop_stopped_early", "missing")]
    assert f.message.endswith(f": {window} were prefetched (in flight) and "
                              f"{N - got - window} never sampled.")


def test_three_faults_at_once_add_up() -> None:
    """drop_last + an exception in a worker + a break: three findings, one each."""
    run = dlviz.record(loader(SyntheticDataset(N, fail_at=[20]), num_workers=2,
                              prefetch_factor=2, drop_last=True),
                       on_error="continue", max_batches=10)
    full = N // BS  # batches the sampler makes (drop_last: the tail is not one)
    processed = 10 + 1  # delivered + the failed one
    assert counts(run) == {"drop_last": N % BS, "worker_error": BS,
                           "loop_stopped_early": (full - processed) * BS}
    assert sum(counts(run).values()) == N - 10 * BS


def test_sampling_with_replacement() -> None:
    gen = torch.Generator().manual_seed(0)
    run = dlviz.record(loader(SyntheticDataset(N), num_workers=2,
                              sampler=RandomSampler(range(N), replacement=True, generator=gen)))
    drawn = torch.randint(N, (N,), generator=torch.Generator().manual_seed(0)).tolist()
    assert sorted(run.delivered()) == sorted(drawn)  # RandomSampler's own draws
    assert counts(run) == {"sampling_with_replacement": N - len(set(drawn))}  # missing
    extra = findings_of(run)[("sampling_with_replacement", "extra")]
    assert extra.count == N - len(set(drawn))
    weighted = dlviz.record(loader(SyntheticDataset(N), sampler=WeightedRandomSampler(
        [1.0] * N, N, generator=torch.Generator().manual_seed(1))))
    assert set(counts(weighted)) == {"sampling_with_replacement"}


def test_num_samples() -> None:
    run = dlviz.record(loader(SyntheticDataset(N), num_workers=2,
                              sampler=RandomSampler(range(N), num_samples=60)))
    assert counts(run) == {"num_samples": N - 60}


def test_sampler_subset() -> None:
    train = list(range(0, N, 4))
    run = dlviz.record(loader(SyntheticDataset(N), sampler=SubsetRandomSampler(train)))
    assert counts(run) == {"sampler_subset": N - len(train)}


# ----------------------------------------------------------------- IterableDataset causes
def test_iterable_not_sharded() -> None:
    run = dlviz.record(loader(SyntheticStream(50), num_workers=2))
    found = findings_of(run)
    assert set(found) == {("iterable_not_sharded", "extra")}
    assert found[("iterable_not_sharded", "extra")].count == 50  # the second worker's copy


def test_iterable_floor_sharding() -> None:
    run = dlviz.record(loader(SyntheticStream(51, sharding="floor"), num_workers=2))
    assert counts(run) == {"iterable_floor_sharding": 51 % 2}
    assert findings_of(run)[("iterable_floor_sharding", "missing")].examples == (50,)


def test_iterable_drop_last_per_worker() -> None:
    run = dlviz.record(loader(SyntheticStream(44, sharding="stride"), num_workers=2,
                              drop_last=True))
    per_worker = 44 // 2
    assert counts(run) == {"iterable_drop_last_per_worker": 2 * (per_worker % BS)}
    assert 2 * (per_worker % BS) != 44 % BS  # not the one tail a map-style loader drops


def test_stream_exception_ends_that_workers_generator() -> None:
    run = dlviz.record(loader(SyntheticStream(50, sharding="stride", fail_at=[10]),
                              num_workers=2), on_error="continue")
    assert counts(run) == {"worker_error": 50 - run.summary()["delivered"]}


# ----------------------------------------------------------------- ranks and passes
def test_merged_ranks_padding_and_trim() -> None:
    runs = dlviz.record_ranks(3, N, BS)
    padded = dlviz.merge_runs(runs)
    total = -(-N // 3) * 3
    assert findings_of(padded)[("distributed_padding", "extra")].count == total - N
    assert counts(padded) == {}
    one = runs[1]
    assert counts(one) == {"other_ranks_share": N - total // 3}
    trimmed = dlviz.merge_runs(dlviz.record_ranks(3, N, BS, sampler_drop_last=True,
                                                  drop_last=True))
    per_rank = N // 3
    assert counts(trimmed) == {"distributed_trim": N - 3 * per_rank,
                               "drop_last": 3 * (per_rank % BS)}


def test_set_epoch_missing_across_passes() -> None:
    def passes(set_epoch: bool) -> list[Run]:
        sampler: DistributedSampler[Any] = DistributedSampler(
            SyntheticDataset(N), num_replicas=2, rank=0, shuffle=True, seed=3)
        traced = dlviz.trace(loader(SyntheticDataset(N), sampler=sampler))
        for epoch in range(3):
            if set_epoch:
                sampler.set_epoch(epoch)
            for _ in traced:
                pass
        return traced.runs

    found = dlviz.explain(passes(False))
    same = [f for f in found if f.cause == "set_epoch_missing"]
    assert len(same) == 1 and same[0].count == 2 and same[0].passes == (1, 2)
    assert same[0].kind == "order"
    assert same[0].message.startswith("2 passes (1, 2) drew exactly the same order")
    assert [f.passes for f in found if f.cause == "other_ranks_share"] == [(0,), (1,), (2,)]
    assert not [f for f in dlviz.explain(passes(True)) if f.cause == "set_epoch_missing"]


def test_naive_resume_repeats_and_skips() -> None:
    """A pass stopped at a checkpoint, then resumed naively: a new permutation with
    the first ``k`` batches skipped."""
    k = 3
    first = dlviz.record(loader(SyntheticDataset(N), sampler=RandomSampler(
        range(N), generator=torch.Generator().manual_seed(1))), max_batches=k)
    seen = set(first.delivered())
    rest = torch.randperm(N, generator=torch.Generator().manual_seed(2)).tolist()[k * BS:]
    second = dlviz.record(loader(SyntheticDataset(N), num_workers=2, sampler=SubsetRandomSampler(
        rest, generator=torch.Generator().manual_seed(3))))
    found = {(f.cause, f.kind): f for f in dlviz.explain([first, second])}
    repeat, skip = seen & set(rest), set(range(N)) - seen - set(rest)
    assert set(found) == {("resume_repeat", "extra"), ("resume_skip", "missing")}
    assert found[("resume_repeat", "extra")].count == len(repeat) > 0
    assert found[("resume_skip", "missing")].count == len(skip) > 0
    assert set(found[("resume_skip", "missing")].examples) <= skip
    assert found[("resume_skip", "missing")].passes == (0, 1)
    missed = N - len(seen | set(second.delivered()))  # in the epoch the two passes make
    assert sum(f.count for f in found.values() if f.kind == "missing") == missed
    # an exact resume (the rest of the same permutation) repeats and skips nothing
    same = torch.randperm(N, generator=torch.Generator().manual_seed(1)).tolist()
    assert sorted(first.delivered()) == sorted(same[: k * BS])
    exact = dlviz.record(loader(SyntheticDataset(N), sampler=same[k * BS:]))
    assert dlviz.explain([first, exact]) == []


def test_epochs_each_get_their_own_findings() -> None:
    traced = dlviz.trace(loader(SyntheticDataset(N), drop_last=True))
    for _ in range(2):
        for _ in traced:
            pass
    found = dlviz.explain(traced.runs)
    assert [(f.cause, f.count, f.passes) for f in found] == [
        ("drop_last", N % BS, (0,)), ("drop_last", N % BS, (1,))]


# ----------------------------------------------------------------- files, input, plot
def test_a_run_from_json_gives_the_same_findings_without_torch(tmp_path: Path) -> None:
    runs = {
        "three": dlviz.record(loader(SyntheticDataset(N, fail_at=[20]), num_workers=2,
                                     drop_last=True), on_error="continue", max_batches=10),
        "stream": dlviz.record(loader(SyntheticStream(50), num_workers=2)),
        "died": dlviz.record(loader(SyntheticDataset(N, crash_at=[20]), num_workers=2),
                             on_error="continue"),
    }
    expected = {}
    for name, run in runs.items():
        run.to_json(tmp_path / f"{name}.json")
        assert dlviz.explain(Run.from_json(tmp_path / f"{name}.json")) == dlviz.explain(run)
        expected[name] = [list(map(str, [f.cause, f.count, f.examples, f.message, f.kind]))
                          for f in dlviz.explain(run)]
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    run_without_torch(f"""
import json, pathlib
import dlviz
folder = pathlib.Path({str(tmp_path)!r})
expected = json.loads((folder / "expected.json").read_text())
for name, want in expected.items():
    run = dlviz.Run.from_json(folder / f"{{name}}.json")
    got = [list(map(str, [f.cause, f.count, f.examples, f.message, f.kind]))
           for f in dlviz.explain(run)]
    assert got == want, (name, got, want)
    dlviz.plot_waterfall(run)
""")


@pytest.mark.parametrize("value", [None, 5, "run.json", b"x", [None], [1, 2]])
def test_bad_input_names_the_argument(value: Any) -> None:
    with pytest.raises(TypeError, match="run_or_runs"):
        dlviz.explain(value)
    with pytest.raises(TypeError, match="run"):
        dlviz.plot_waterfall(value)


def test_no_runs_and_passes_of_different_datasets() -> None:
    with pytest.raises(ValueError, match="run_or_runs"):
        dlviz.explain([])
    small = dlviz.record(loader(SyntheticDataset(10)), max_batches=1)
    big = dlviz.record(loader(SyntheticDataset(20)))
    with pytest.raises(ValueError, match="run_or_runs"):
        dlviz.explain([small, big])


def test_waterfall_bars_are_the_findings() -> None:
    run = dlviz.record(loader(SyntheticDataset(N, fail_at=[20]), num_workers=2,
                              drop_last=True), on_error="continue", max_batches=10)
    ax = dlviz.plot_waterfall(run, Figure().add_subplot())
    bars = {p.get_gid(): p for p in ax.patches}
    found = dlviz.explain(run)
    assert list(bars) == ["waterfall:dataset", *(f"waterfall:{f.cause}" for f in found),
                          "waterfall:delivered"]
    assert bars["waterfall:dataset"].get_height() == N
    assert bars["waterfall:delivered"].get_height() == run.summary()["delivered"]
    level = N
    for f in found:  # each cause steps down by its count, from where the last one ended
        bar = bars[f"waterfall:{f.cause}"]
        assert (bar.get_y(), bar.get_height()) == (level - f.count, f.count)
        level -= f.count
    assert level == run.summary()["delivered"]
    assert to_hex(bars["waterfall:drop_last"].get_facecolor()) == FATE_COLORS["dropped"].lower()
    assert to_hex(bars["waterfall:worker_error"].get_facecolor()) == FATE_COLORS["failed"].lower()
    labels = [t.get_text() for t in ax.texts]
    assert [f"-{f.count}" for f in found] == labels[1:-1]
    ticks = [t.get_text().replace("\n", "") for t in ax.get_xticklabels()]
    assert [f.cause for f in found] == ticks[1:-1]


def test_waterfall_climbs_by_the_repeats() -> None:
    run = dlviz.record(loader(SyntheticStream(50), num_workers=2))
    ax = dlviz.plot_waterfall(run, Figure().add_subplot())
    bars = {p.get_gid(): p for p in ax.patches}
    assert bars["waterfall:got"].get_height() == run.summary()["deliveries"] == 100
    assert bars["waterfall:iterable_not_sharded"].get_y() == 50
