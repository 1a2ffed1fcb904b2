"""dlviz.record_ranks on real ranks: a gloo process group on 127.0.0.1, one process
per rank, DistributedSampler reading its rank from the group (lesson 6).

Expected shares are computed from DistributedSampler's documented rule, not from
dlviz: rank r gets ``padded[r::world_size]`` where ``padded`` is the index order
(0..n-1, or a seeded permutation) padded with its own leading indices up to a
multiple of world_size (or trimmed down to one with the sampler's drop_last).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from typing import Any

import psutil
import pytest
import torch
from helpers import assert_no_new_processes, live_processes

import dlviz
from dlviz.distributed import record_ranks

N, BS, WORLD = 1000, 32, 3


def expected_shares(n: int, world: int, *, trim: bool = False,
                    order: list[int] | None = None) -> list[list[int]]:
    indices = list(range(n)) if order is None else order
    if trim:
        indices = indices[: n - n % world]
    else:
        total = math.ceil(n / world) * world
        indices = indices + indices[: total - n]
    return [indices[r::world] for r in range(world)]


def assert_ranks_gone(runs: list[dlviz.Run]) -> None:
    for run in runs:
        pid = run.config["rank_pid"]
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        assert not alive, f"rank {run.config['rank']} (pid {pid}) is still running"


@pytest.mark.parametrize("method", ["default", "spawn"])
def test_three_ranks_pad_with_leading_indices(method: str) -> None:
    """3 ranks, 1000 samples: 334 each = 1002 deliveries, indices 0 and 1 twice."""
    runs = record_ranks(WORLD, N, BS, rank_start_method=None if method == "default" else method)
    assert [r.config["rank"] for r in runs] == [0, 1, 2]
    assert all(r.config["world_size"] == WORLD for r in runs)
    assert len({r.config["rank_pid"] for r in runs}) == WORLD  # three real processes
    shares = expected_shares(N, WORLD)
    for run, share in zip(runs, shares, strict=True):
        assert run.config["sampler"] == "DistributedSampler"
        assert run.delivered() == share
        s = run.summary()
        assert (s["delivered"], s["deliveries"], s["never_sampled"]) == (334, 334, N - 334), s
    merged = dlviz.merge_runs(runs)
    m = merged.summary()
    assert (m["delivered"], m["deliveries"], m["duplicated"]) == (N, 1002, 2), m
    assert m["never_sampled"] == m["dropped"] == 0, m
    counts = Counter(merged.delivered())
    assert sorted(i for i, c in counts.items() if c == 2) == [0, 1]
    assert {e.rank for e in merged.events} == {0, 1, 2}
    assert_ranks_gone(runs)


def test_sampler_drop_last_trims() -> None:
    """DistributedSampler(drop_last=True): 333 each = 999; index 999 never sampled."""
    runs = record_ranks(WORLD, N, BS, sampler_drop_last=True)
    for run, share in zip(runs, expected_shares(N, WORLD, trim=True), strict=True):
        assert run.delivered() == share
        assert run.summary()["delivered"] == 333
    merged = dlviz.merge_runs(runs)
    m = merged.summary()
    assert (m["delivered"], m["deliveries"], m["duplicated"]) == (999, 999, 0), m
    assert m["never_sampled"] == 1 and merged.fate(999) == "never_sampled"


def test_loader_drop_last_applies_per_rank() -> None:
    """DataLoader(drop_last=True) on each rank, with real workers: 320 each, 14 dropped."""
    runs = record_ranks(WORLD, N, BS, drop_last=True, num_workers=2)
    kept_all: list[int] = []
    dropped_all: list[int] = []
    for run, share in zip(runs, expected_shares(N, WORLD), strict=True):
        kept = len(share) - len(share) % BS
        kept_all += share[:kept]
        dropped_all += share[kept:]
        assert run.delivered() == share[:kept]
        s = run.summary()
        assert (s["delivered"], s["dropped"]) == (320, 14), s
        assert {run.fate(i) for i in share[kept:]} == {"dropped"}
        assert len(run.workers) == 2  # the rank's own DataLoader workers
    m = dlviz.merge_runs(runs).summary()
    # the padding (0 and 1) sits in the tails of ranks 1 and 2, where drop_last drops
    # it again; ranks 0 and 1 deliver 0 and 1 in their first batches
    assert m["deliveries"] == len(kept_all) == 3 * 320, m
    assert m["delivered"] == len(set(kept_all)) and m["duplicated"] == 0, m
    assert m["dropped"] == len(set(dropped_all) - set(kept_all)), m
    assert_ranks_gone(runs)


def test_shuffle_follows_seed_and_epoch() -> None:
    """shuffle=True: a permutation of seed + epoch, padded with its own first indices."""
    seed, epoch = 7, 3
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(N, generator=g).tolist()
    runs = record_ranks(WORLD, N, BS, shuffle=True, seed=seed, epoch=epoch)
    for run, share in zip(runs, expected_shares(N, WORLD, order=order), strict=True):
        assert run.delivered() == share
    counts = Counter(dlviz.merge_runs(runs).delivered())
    assert sorted(i for i, c in counts.items() if c == 2) == sorted(order[:2])
    assert len(counts) == N


def test_a_failing_rank_raises_with_its_traceback() -> None:
    """An exception on one rank: RuntimeError naming the rank and the cause; all stopped."""
    before = live_processes()
    with pytest.raises(RuntimeError, match=r"rank 2 failed(?s:.*)injected failure at index 500"):
        record_ranks(WORLD, N, BS, fail_at=[500])  # 500 % 3 == 2: rank 2's share
    assert_no_new_processes(before)


def test_timeout_stops_every_rank() -> None:
    before = live_processes()
    with pytest.raises(TimeoutError, match="timeout_s"):
        record_ranks(WORLD, N, BS, cost_ms=50.0, timeout_s=0.5)
    assert_no_new_processes(before)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"world_size": 0}, ValueError, "world_size"),
    ({"world_size": 99}, ValueError, "world_size"),
    ({"world_size": "3"}, TypeError, "world_size"),
    ({"n": 0}, ValueError, "n"),
    ({"n": 10.0}, TypeError, "n"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"drop_last": "yes"}, TypeError, "drop_last"),
    ({"sampler_drop_last": 1}, TypeError, "sampler_drop_last"),
    ({"shuffle": None}, TypeError, "shuffle"),
    ({"seed": -1}, ValueError, "seed"),
    ({"num_workers": -1}, ValueError, "num_workers"),
    ({"start_method": "thread"}, ValueError, "start_method"),
    ({"rank_start_method": "fork"}, ValueError, "rank_start_method"),
    ({"cost_ms": float("nan")}, ValueError, "cost_ms"),
    ({"fail_at": [N]}, ValueError, "fail_at"),
    ({"timeout_s": 0}, ValueError, "timeout_s"),
    ({"timeout_s": "1"}, TypeError, "timeout_s"),
])
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception],
                                 name: str) -> None:
    args: dict[str, Any] = {"world_size": WORLD, "n": N, "batch_size": BS, **kwargs}
    world_size, n, batch_size = args.pop("world_size"), args.pop("n"), args.pop("batch_size")
    with pytest.raises(error, match=name):
        record_ranks(world_size, n, batch_size, **args)


def test_exported_lazily_from_dlviz() -> None:
    """``import dlviz`` leaves the distributed module (and torch.distributed's process
    group machinery) unloaded; the first ``dlviz.record_ranks`` loads it. Checked in a
    fresh interpreter: this one imported it at the top of the file."""
    script = ("import sys, dlviz\n"
              "assert 'dlviz.distributed' not in sys.modules, 'loaded by import dlviz'\n"
              "from dlviz.distributed import record_ranks\n"
              "assert dlviz.record_ranks is record_ranks\n"
              "assert 'record_ranks' in dlviz.__all__\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert dlviz.record_ranks is record_ranks
