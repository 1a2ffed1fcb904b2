"""A real training job under torchrun (dlviz.job): 2 CPU ranks (gloo), their files
merged by ``python -m dlviz merge`` in a subprocess, and the clock alignment that lets
ranks of other machines merge too (lesson 9).

What each rank should get is computed here from DistributedSampler's documented rule,
not from dlviz: the order (0..n-1, or ``torch.randperm(n)`` seeded with ``seed +
epoch``) padded with its own leading indices up to a multiple of the world size, rank
r taking every world-size-th index from r; the DataLoader's drop_last then drops each
rank's final partial batch.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import psutil
import pytest
import torch
from helpers import FIXTURES, cli, deadline
from matplotlib.colors import to_rgba

import dlviz
from dlviz.job import launch
from dlviz.ledger import FATE_COLORS
from dlviz.run import Run

WORLD, EPOCHS, N, BS, SEED = 2, 2, 21, 4, 3
JOBS = {"plain": {"num_workers": 0, "shuffle": False, "drop_last": False},
        "worker": {"num_workers": 1, "shuffle": True, "drop_last": True, "launcher": "fork"}}
"""The torchrun command line, and torchrun's engine forking the ranks (lesson 9's way)."""


def shares(n: int, world: int, epoch: int, *, shuffle: bool, seed: int) -> list[list[int]]:
    """DistributedSampler's share of every rank (its documented rule, padding included)."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world) * world
    order += order[: total - n]
    return [order[r:total:world] for r in range(world)]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two real torchrun jobs of 2 ranks x 2 epochs: no workers (the torchrun command),
    and 1 worker per rank with shuffle (set_epoch) and the DataLoader's drop_last
    (ranks forked by torchrun's engine)."""
    return {name: launch(WORLD, tmp_path_factory.mktemp(name), epochs=EPOCHS, n=N,
                         batch_size=BS, seed=SEED, **settings)
            for name, settings in JOBS.items()}


@pytest.mark.parametrize("name", list(JOBS))
def test_torchrun_job_merged_by_the_cli(name: str, jobs: dict[str, list[Path]],
                                        tmp_path: Path) -> None:
    files, s = jobs[name], JOBS[name]
    assert [f.name for f in files] == ["rank0-pass0.json", "rank1-pass0.json",
                                       "rank0-pass1.json", "rank1-pass1.json"]
    runs = {(r.config["rank"], r.config["pass"]): r for r in map(Run.from_json, files)}
    assert len({r.config["rank_pid"] for r in runs.values()}) == WORLD  # real processes
    assert len({r.config["clock_sync"]["job"] for r in runs.values()}) == 1
    assert all(r.config["num_workers"] == s["num_workers"] for r in runs.values())
    assert all(r.config["world_size"] == WORLD for r in runs.values())
    expected: dict[tuple[int, int], list[int]] = {}
    for epoch in range(EPOCHS):
        for rank, share in enumerate(shares(N, WORLD, epoch, shuffle=s["shuffle"], seed=SEED)):
            kept = share[: len(share) - len(share) % BS] if s["drop_last"] else share
            expected[(rank, epoch)] = kept
            run = runs[(rank, epoch)]
            assert run.delivered() == kept, (rank, epoch)
            assert run.summary()["dropped"] == len(set(share) - set(kept))
    if s["shuffle"]:  # set_epoch: a new order every epoch
        assert expected[(0, 0)] != expected[(0, 1)]

    # the shell gives files in its own order: the CLI puts them in rank, pass order
    done = cli("merge", *sorted(files, reverse=True), "-o", tmp_path / "job.json")
    assert done.returncode == 0, done.stderr
    assert "2 ranks x 2 passes" in done.stdout
    merged = Run.from_json(tmp_path / "job.json")
    assert merged.config["merged_by"] == "rank" and merged.config["world_size"] == WORLD
    # one part per rank, its epochs in order: the loop's deliveries, rank by rank
    assert merged.delivered() == [i for rank in range(WORLD) for epoch in range(EPOCHS)
                                  for i in expected[(rank, epoch)]]
    counts = Counter(i for kept in expected.values() for i in kept)
    assert merged.ledger.deliveries[:N].tolist() == [counts[i] for i in range(N)]
    summary = merged.summary()
    assert summary["deliveries"] == sum(counts.values())
    assert summary["never_sampled"] == 0 and summary["failed"] == 0
    if not s["drop_last"]:  # padding: 21 -> 22, one index twice in every epoch
        assert summary["deliveries"] == EPOCHS * 22
    # the passes grid: a row per rank and epoch, each delivering that rank's share
    ax = dlviz.plot_passes(merged)
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"rank {r} · pass {p}" for r in range(WORLD) for p in range(EPOCHS)]
    image = ax.images[0].get_array()
    green = np.array(to_rgba(FATE_COLORS["delivered"]))
    for row, (rank, epoch) in enumerate((r, p) for r in range(WORLD) for p in range(EPOCHS)):
        shown = np.flatnonzero(np.all(np.isclose(image[row], green), axis=1)).tolist()
        assert shown == sorted(set(expected[(rank, epoch)])), (rank, epoch)
    plt.close(ax.figure)
    # each rank's epochs are chained: batch numbers never repeat within a rank
    batches = [(b.rank, b.batch) for b in merged.batches()]
    assert len(batches) == len(set(batches))
    # the ranks ran side by side (DDP keeps them in step): their passes overlap in time
    for epoch in range(EPOCHS):
        spans = []
        for rank in range(WORLD):
            first = merged.config["chained"][rank][epoch]
            last = (merged.config["chained"][rank][epoch + 1] if epoch + 1 < EPOCHS
                    else 10**9)
            mine = merged.of_kind("deliver")
            keep = ((mine.column("rank") == rank) & (mine.column("batch") >= first)
                    & (mine.column("batch") < last))
            spans.append((int(mine.column("start")[keep].min()),
                          int(mine.column("start")[keep].max())))
        assert spans[0][0] <= spans[1][1] and spans[1][0] <= spans[0][1], spans

    done = cli("summary", tmp_path / "job.json")
    assert done.returncode == 0, done.stderr
    assert "merged: 2 ranks x 2 passes on one ledger" in done.stdout
    # dlviz.explain reads the job epoch by epoch: padding (or drop_last) in each
    cause = "[drop_last]" if s["drop_last"] else "[distributed_padding]"
    assert all(f"pass {epoch}: {cause}" in done.stdout for epoch in range(EPOCHS)), done.stdout
    done = cli("report", tmp_path / "job.json", "-o", tmp_path / "job.html")
    assert done.returncode == 0, done.stderr
    assert "Every index in every rank" in (tmp_path / "job.html").read_text()


def test_clock_sync_merges_ranks_whose_clocks_start_elsewhere(
        jobs: dict[str, list[Path]]) -> None:
    """Each rank measured its clock's offset from rank 0's through the process group:
    runs whose clocks started 11 days apart (other machines) merge to the same timeline."""
    runs = [Run.from_json(f) for f in jobs["plain"]]
    parts = [r.config["rank"] for r in runs]
    same_machine = dlviz.merge_runs(runs, parts=parts)
    # one machine: perf_counter_ns is shared, so origin alone aligns them exactly; the
    # offset measured at the barrier is the alignment's error (measured: tens of us)
    offset = runs[1].config["clock_sync"]["offset_ns"]
    assert abs(offset) < 50_000_000, offset
    by_origin = dlviz.merge_runs([_without_sync(r) for r in runs], parts=parts)
    for rank, off in ((0, 0), (1, offset)):  # rank 0's clock vs the shared clock
        a, b = (m.events.where(m.events.column("rank") == rank).column("start") + m.origin
                for m in (same_machine, by_origin))
        assert len(a) and bool((b - a == off).all())

    elsewhere = [_moved(r, 10**15) if r.config["rank"] == 1 else r for r in runs]
    moved = dlviz.merge_runs(elsewhere, parts=parts)
    assert moved.events == same_machine.events and moved.duration == same_machine.duration
    assert moved.summary() == same_machine.summary() and not moved.notes
    # without clock_sync only origin is left, and it is 11 days off
    broken = dlviz.merge_runs([_without_sync(r) for r in elsewhere], parts=parts)
    assert broken.duration > 10**15
    # runs of different jobs are not aligned by their offsets (and say so)
    other_job = [_moved(r, 0, job="another") if r.config["rank"] == 1 else r for r in runs]
    mixed = dlviz.merge_runs(other_job, parts=parts)
    assert any("clock_sync" in note for note in mixed.notes)
    assert "clock_sync" not in mixed.config
    # a file keeps clock_sync, and a merged file can be merged again on the same clock
    again = dlviz.merge_runs([Run.from_dict(moved.to_dict())])
    assert again.config["clock_sync"]["offset_ns"] == 0


def _without_sync(run: Run) -> Run:
    data = copy.deepcopy(run.to_dict())  # to_dict shares the run's config
    del data["config"]["clock_sync"]
    return Run.from_dict(data)


def _moved(run: Run, by: int, job: str | None = None) -> Run:
    """``run`` as if its clock had started ``by`` ns earlier (another machine)."""
    data = copy.deepcopy(run.to_dict())
    sync = data["config"]["clock_sync"]
    data["config"]["clock_sync"] = {**sync, "offset_ns": sync["offset_ns"] + by,
                                    "job": job or sync["job"]}
    data["origin"] += by
    return Run.from_dict(data)


def test_bad_rank_files_get_one_line_and_exit_2(jobs: dict[str, list[Path]],
                                                tmp_path: Path) -> None:
    files = jobs["plain"]
    copy = tmp_path / "copy.json"
    shutil.copyfile(files[0], copy)
    cases = {"two files": [*files, copy],  # rank 0 pass 0 twice
             "a file is missing": files[:3],
             "--by pass merges the passes of one rank": [*files, "--by", "pass"],
             "ranks are numbered 0, 1": [files[1], files[3]]}
    for message, args in cases.items():
        done = cli("merge", *args, "-o", tmp_path / "out.json")
        assert done.returncode == 2, (message, done.stdout)
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "out.json").exists()
    done = cli("merge", files[0], files[2], "--by", "pass", "-o", tmp_path / "rank0.json")
    assert done.returncode == 0, done.stderr  # one rank's passes
    assert Run.from_json(tmp_path / "rank0.json").config["passes"] == EPOCHS


def test_merge_runs_chains_the_runs_of_one_part() -> None:
    """``parts``: two passes in part 0, one in part 1; batch numbers stay apart."""
    run = Run.from_json(FIXTURES / "clean.json")
    merged = dlviz.merge_runs([run, run, run], parts=[0, 1, 0])
    batches = len(run.batches())
    assert merged.config["chained"] == [[0, batches], [0]]
    assert merged.config["world_size"] == 2
    assert merged.ledger.deliveries[:run.dataset_size].tolist() == [3] * run.dataset_size
    keys = [(b.rank, b.batch) for b in merged.batches()]
    assert len(keys) == len(set(keys)) == 3 * batches
    assert dlviz.merge_runs([run, run]) == dlviz.merge_runs([run, run], parts=[0, 1])
    for bad, error in (("01", TypeError), ([0], ValueError), ([0, 2], ValueError),
                       ([True, 0], ValueError), (5, TypeError)):
        with pytest.raises(error, match="parts"):
            dlviz.merge_runs([run, run], parts=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "error", "match"), [
    ((0, "x"), ValueError, "nproc"), (("2", "x"), TypeError, "nproc"),
    ((17, "x"), ValueError, "nproc"), ((2, 5), TypeError, "out_dir"),
    ((2, "x", {"epochs": 0}), ValueError, "epochs"),
    ((2, "x", {"shuffle": 1}), TypeError, "shuffle"),
    ((2, "x", {"batchsize": 4}), TypeError, "batchsize"),
    ((2, "x", {"timeout_s": 0}), ValueError, "timeout_s"),
    ((2, "x", {"launcher": "mpirun"}), ValueError, "launcher"),
])
def test_launch_bad_arguments(args: tuple[Any, ...], error: type[Exception], match: str,
                              tmp_path: Path) -> None:
    nproc, out, *extra = args
    with pytest.raises(error, match=match):
        launch(nproc, tmp_path / out if isinstance(out, str) else out,
               **(extra[0] if extra else {}))
    assert not (tmp_path / "x").exists()  # refused before anything started


def job_processes(out: Path) -> list[psutil.Process]:
    """Live processes of the job writing to ``out`` (torchrun, ranks, their workers)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if str(out) in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_ctrl_c_and_timeout_stop_torchrun_and_every_rank(tmp_path: Path,
                                                        sigint_raises: None) -> None:
    """A job that would take minutes: Ctrl-C once its ranks run, and a short timeout_s;
    each time launch stops torchrun, the ranks and their workers before it raises."""
    out = tmp_path / "slow"
    seen: list[int] = []

    def interrupt_when_ranks_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ranks = [p for p in job_processes(out) if "dlviz.job" in " ".join(p.cmdline())
                     and "torch.distributed.run" not in " ".join(p.cmdline())]
            if len(ranks) >= WORLD:
                seen.extend(p.pid for p in ranks)
                time.sleep(1.0)  # let them reach their loaders
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=interrupt_when_ranks_run, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        launch(WORLD, out, n=400, cost_ms=100.0, num_workers=1, timeout_s=150)
    watcher.join()
    assert len(seen) >= WORLD
    assert not job_processes(out)
    with deadline(), pytest.raises(TimeoutError, match="timeout_s"):
        launch(WORLD, out, n=400, cost_ms=100.0, timeout_s=3, launcher="fork")
    assert not job_processes(out)
