"""Tests for dlviz.plot_pipeline (lesson 0's map): the numbers it writes on each stage.

The runs are real DataLoader passes stored as JSON in tests/fixtures (recorded by
tests/fixtures/make_fixtures.py), so these tests need neither torch nor workers.
Every expected number is worked out from the fixture's configuration (64 samples,
batch 8, 2 workers, round-robin dispatch, ...), never read back from the drawing.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from no_torch import run_without_torch  # noqa: E402

import dlviz  # noqa: E402
from dlviz.run import Event, Run  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"


def load(name: str) -> Run:
    return Run.from_json(FIXTURES / f"{name}.json")


def draw(run: Run) -> Axes:
    fig = Figure(figsize=(12, 5), dpi=80)
    return dlviz.plot_pipeline(run, fig.add_subplot())


def texts(ax: Axes) -> dict[str, str]:
    """Every text the map drew, by its gid (``pipeline:worker:0`` -> its body)."""
    out: dict[str, str] = {}
    for t in ax.findobj(Text):
        gid = t.get_gid()
        if gid and gid.startswith("pipeline:"):
            assert gid not in out or gid == "pipeline:process", f"duplicate gid {gid}"
            out[gid] = t.get_text()
    return out


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_clean_run_numbers_on_every_stage() -> None:
    """64 samples, batch 8, 2 workers: 8 batches, 4 per worker, all 64 reach the loop."""
    run = load("clean")
    n, bs, workers = 64, 8, 2
    assert (run.dataset_size, run.config["batch_size"], run.config["num_workers"]) == (
        n, bs, workers)
    t = texts(draw(run))
    batches = math.ceil(n / bs)
    assert lines(t["pipeline:sampler"]) == [f"{n} indices", f"of {n}"]
    assert t["pipeline:arrow:indices:label"] == str(n)
    assert lines(t["pipeline:batch_sampler"]) == [f"{batches} batches", f"of up to {bs}"]
    for w in range(workers):
        per_worker = batches // workers  # round robin over 2 workers, 8 batches
        assert t[f"pipeline:queue:{w}:title"] == f"index queue {w}"
        assert lines(t[f"pipeline:queue:{w}"]) == [f"{per_worker} batches", "sent"]
        assert t[f"pipeline:worker:{w}:title"] == f"worker {w}"
        assert lines(t[f"pipeline:worker:{w}"]) == [
            f"{per_worker * bs} samples fetched", f"{per_worker} batches collated"]
        assert t[f"pipeline:arrow:back:{w}:label"] == str(per_worker)
    assert t["pipeline:reorder:title"] == "reorder"
    assert lines(t["pipeline:reorder"])[0] == f"{batches} came back;"
    assert "in sampler order" in t["pipeline:reorder"]
    assert t["pipeline:arrow:deliver:label"] == str(batches)
    assert lines(t["pipeline:loop"]) == [f"{batches} batches", f"{n} samples"]
    assert lines(t["pipeline:dropped"]) == ["0 batches", "0 samples"]
    assert lines(t["pipeline:lost"]) == ["0 batches", "0 samples"]
    assert "pipeline:in_flight" not in t and "pipeline:filtered" not in t
    assert "worker processes" in [x.get_text() for x in draw(run).findobj(Text)
                                  if x.get_gid() == "pipeline:process"]


def test_drop_last_tail_goes_to_the_dropped_box() -> None:
    """45 samples, batch 8, drop_last: 5 batches sent, the tail of 45 % 8 = 5 dropped."""
    run = load("drop_last")
    n, bs = 45, 8
    t = texts(draw(run))
    full = n // bs
    assert lines(t["pipeline:sampler"]) == [f"{n} indices", f"of {n}"]
    assert lines(t["pipeline:batch_sampler"]) == [f"{full} batches", f"of up to {bs}",
                                                  "drop_last=True"]
    # batches 0, 2, 4 go to worker 0 and 1, 3 to worker 1
    assert lines(t["pipeline:queue:0"])[0] == f"{(full + 1) // 2} batches"
    assert lines(t["pipeline:queue:1"])[0] == f"{full // 2} batches"
    assert lines(t["pipeline:dropped"]) == ["1 batch", f"{n % bs} samples"]
    assert lines(t["pipeline:loop"]) == [f"{full} batches", f"{n - n % bs} samples"]


def test_lost_batch_with_an_exception() -> None:
    """Index 20 raises, loop continues: batch 16-23 (8 samples) lost, 56 reach the loop."""
    t = texts(draw(load("exception_continue")))
    assert lines(t["pipeline:lost"]) == ["1 batch", "8 samples"]
    assert lines(t["pipeline:loop"]) == ["7 batches", f"{64 - 8} samples"]


def test_worker_death_loses_its_batches() -> None:
    """Worker 0 dies at index 20 (batch 2) holding batches 2 and 4: 16 samples lost."""
    t = texts(draw(load("worker_died")))
    assert lines(t["pipeline:lost"]) == ["2 batches", "16 samples"]
    assert lines(t["pipeline:loop"]) == ["6 batches", "48 samples"]
    # only batch 0 came back from worker 0; once it died, worker 1 got every batch
    # still to send, and returned all the rest: 8 - 2 lost - 1
    assert t["pipeline:arrow:back:0:label"] == "1"
    assert t["pipeline:arrow:back:1:label"] == str(8 - 2 - 1)
    assert lines(t["pipeline:queue:1"])[0] == f"{8 - 3} batches"


def test_without_workers_the_main_process_fetches() -> None:
    """num_workers=0: no queues, no reorder; None at 3 and 11 filtered by the collate."""
    t = texts(draw(load("filtered")))
    n, bs, bad = 24, 8, 2
    assert t["pipeline:queue:-1:title"] == "no index queue"
    assert "num_workers=0" in t["pipeline:queue:-1"]
    assert t["pipeline:worker:-1:title"] == "main process"
    assert lines(t["pipeline:worker:-1"]) == [f"{n} samples fetched",
                                              f"{n // bs} batches collated"]
    assert t["pipeline:reorder:title"] == "no reorder"
    assert lines(t["pipeline:filtered"]) == [f"{bad} samples", "skipped in collate"]
    assert lines(t["pipeline:loop"]) == [f"{n // bs} batches", f"{n - bad} samples"]
    assert "worker processes" not in [x.get_text() for x in draw(load("filtered")).findobj(Text)]


def test_break_leaves_the_prefetched_batches_in_flight() -> None:
    """3 workers, prefetch 2, stop after 4 batches: the 6 prefetched batches are in flight."""
    run = load("max_batches")
    bs, delivered = 8, 4
    ceiling = run.config["prefetch_factor"] * run.config["num_workers"]
    assert ceiling == 6
    t = texts(draw(run))
    assert lines(t["pipeline:loop"]) == [f"{delivered} batches", f"{delivered * bs} samples"]
    assert lines(t["pipeline:in_flight"]) == [f"{ceiling} batches", f"{ceiling * bs} samples"]
    assert lines(t["pipeline:sampler"]) == [f"{(delivered + ceiling) * bs} indices", "of 96"]
    assert [t[f"pipeline:worker:{w}:title"] for w in range(3)] == [
        "worker 0", "worker 1", "worker 2"]


def test_stream_has_no_sampler_and_counts_repeats() -> None:
    """An unsharded stream read by 2 workers: 64 samples reach the loop, 32 unique."""
    t = texts(draw(load("stream_duplicated")))
    assert "none" in t["pipeline:sampler"]
    assert "pipeline:arrow:indices:label" not in t
    assert "requests" in t["pipeline:batch_sampler"]
    assert lines(t["pipeline:worker:0"])[0] == "32 samples yielded"
    assert lines(t["pipeline:worker:1"])[0] == "32 samples yielded"
    assert lines(t["pipeline:loop"]) == ["8 batches", "64 samples", "(32 unique)"]


def test_sampled_counts_add_up() -> None:
    """Whatever the run: fetches over all workers = samples the sampler sent on."""
    for name in ("clean", "drop_last", "exception_stop", "max_batches", "timeout"):
        run = load(name)
        t = texts(draw(run))
        fetched = sum(int(lines(t[f"pipeline:worker:{w}"])[0].split()[0])
                      for w in range(run.config["num_workers"]))
        assert fetched == len(run.of_kind("fetch")), name


def test_ranks_get_their_own_lanes() -> None:
    """merge_runs: one queue and worker box per (rank, worker)."""
    run = dlviz.merge_runs([load("clean"), load("clean")])
    t = texts(draw(run))
    titles = sorted(v for k, v in t.items() if k.startswith("pipeline:worker:")
                    and k.endswith(":title"))
    assert titles == ["rank 0 worker 0", "rank 0 worker 1", "rank 1 worker 0", "rank 1 worker 1"]
    assert lines(t["pipeline:loop"]) == ["16 batches", "128 samples", "(64 unique)"]


def test_an_empty_run_still_draws() -> None:
    run = Run(config={"num_workers": 0}, dataset_size=0, keys=None,
              events=[Event("wait", -1, -1, -1, 0, 10, "ok")], errors=[], occurrences=[],
              workers={}, duration=10, stop="exhausted")
    t = texts(draw(run))
    assert lines(t["pipeline:loop"]) == ["0 batches", "0 samples"]


def test_matplotlib_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    """ax=None draws on the current Axes and returns it; no plt.show, rcParams untouched."""
    def no_show(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("plt.show() called")

    monkeypatch.setattr(plt, "show", no_show)
    rc = copy.deepcopy(dict(matplotlib.rcParams))
    fig = plt.figure()
    try:
        ax = dlviz.plot_pipeline(load("docs"))
        assert ax is plt.gca() and ax.figure is fig
        other = fig.add_subplot(212)
        assert dlviz.plot_pipeline(load("clean"), ax=other) is other
    finally:
        plt.close(fig)
    assert dict(matplotlib.rcParams) == rc


def test_draws_without_torch() -> None:
    """A saved run draws its map where torch cannot be imported."""
    run_without_torch(f"""
import matplotlib.pyplot as plt
import dlviz
dlviz.plot_pipeline(dlviz.Run.from_json({str(FIXTURES / "docs.json")!r}))
plt.gcf().savefig(io.BytesIO())
""")
