"""Tests for dlviz.plot (issue 4): what the Axes contain, and how the figure looks.

The runs are real DataLoader passes recorded once by tests/fixtures/make_fixtures.py
and stored as JSON, so these tests need neither torch nor worker processes. The
expected numbers come from each fixture's configuration (64 samples, batch 8,
2 workers, round robin, index 20 failing, ...), not from the drawing code.

Image baselines: ``DLVIZ_REGEN_BASELINES=1 pytest tests/test_plot.py -k image``
rewrites them (after re-recording fixtures or changing the look on purpose).
"""

from __future__ import annotations

import copy
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_hex, to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.testing.compare import compare_images  # noqa: E402
from no_torch import run_without_torch  # noqa: E402

import dlviz  # noqa: E402
from dlviz import plot  # noqa: E402
from dlviz.ledger import FATE_COLORS, Occurrence  # noqa: E402
from dlviz.run import Event, Run  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
BASELINES = HERE / "baseline_images"
ALL = ["clean", "drop_last", "exception_stop", "exception_continue", "worker_died", "timeout",
       "stream_duplicated", "filtered", "max_batches", "docs"]


def load(name: str) -> Run:
    return Run.from_json(FIXTURES / f"{name}.json")


def timeline(run: Run) -> Axes:
    fig = Figure(figsize=(12, 4), dpi=100)
    return dlviz.plot_timeline(run, fig.add_axes((0.1, 0.35, 0.65, 0.55)))


def ledger(run: Run, **kw: Any) -> Axes:
    fig = Figure(figsize=(10, 3), dpi=100)
    return dlviz.plot_ledger(run, fig.add_axes((0.1, 0.2, 0.65, 0.65)), **kw)


def by_gid(ax: Axes, gid: str) -> list[Any]:
    return [a for a in ax.get_children() if a.get_gid() == gid]


def one(ax: Axes, gid: str) -> Any:
    found = by_gid(ax, gid)
    assert len(found) == 1, f"expected one artist {gid!r}, found {len(found)}"
    return found[0]


def spans(ax: Axes, gid: str) -> list[tuple[float, float, float]]:
    """(x0, x1, y centre) of every polygon of a span collection, in drawing order."""
    found = by_gid(ax, gid)
    if not found:
        return []
    coll = found[0]
    assert isinstance(coll, PolyCollection)
    out = []
    for path in coll.get_paths():
        xy = path.vertices[:4]
        out.append((xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].mean()))
    return out


def rows(ax: Axes) -> dict[str, int]:
    return {t.get_text(): i for i, t in enumerate(ax.get_yticklabels())}


def texts(ax: Axes, gid: str) -> list[str]:
    return [t.get_text() for t in by_gid(ax, gid)]


def legend_labels(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


# ----------------------------------------------------------------- the timeline
def test_lanes_are_main_then_workers() -> None:
    assert list(rows(timeline(load("clean")))) == ["main", "worker 0", "worker 1"]
    assert list(rows(timeline(load("max_batches")))) == [
        "main", "worker 0", "worker 1", "worker 2"]
    # num_workers=0: the main process fetches itself, on a lane of its own
    assert list(rows(timeline(load("filtered")))) == ["main", "main (fetch)"]


def test_spans_per_lane_follow_round_robin() -> None:
    # 64 samples, batch 8, 2 workers: 8 batches, 4 per worker, 32 fetches per worker
    ax = timeline(load("clean"))
    lane = rows(ax)
    for w in (0, 1):
        fetches = spans(ax, f"fetch:worker {w}")
        assert len(fetches) == 32
        assert {round(y) for _, _, y in fetches} == {lane[f"worker {w}"]}
        assert len(spans(ax, f"collate:worker {w}")) == 4
    # main: 8 batches + the call that raised StopIteration; a step after each batch
    assert len(spans(ax, "wait:main")) == 9
    assert len(spans(ax, "step:main")) == 8
    assert {round(y) for _, _, y in spans(ax, "wait:main")} == {lane["main"]}
    assert not spans(ax, "fetch:main")


def test_span_extents_are_the_event_times_in_ms() -> None:
    run = load("clean")
    ax = timeline(run)
    drawn = sorted((a, b) for a, b, _ in spans(ax, "fetch:worker 1"))
    recorded = sorted((e.start / 1e6, e.end / 1e6) for e in run.events
                      if e.kind == "fetch" and e.worker == 1)
    np.testing.assert_allclose(drawn, recorded)
    assert ax.get_xlim()[1] >= run.duration / 1e6
    assert "ms" in ax.child_axes[0].get_xlabel()


def test_fetches_are_tinted_by_batch_not_by_fate() -> None:
    run = load("clean")
    ax = timeline(run)
    colors = [to_hex(c) for c in one(ax, "fetch:worker 0").get_facecolors()]
    batches = [e.batch for e in run.events if e.kind == "fetch" and e.worker == 0]
    by_batch: dict[int, set[str]] = {}
    for batch, color in zip(batches, colors, strict=True):
        by_batch.setdefault(batch, set()).add(color)
    assert all(len(c) == 1 for c in by_batch.values())  # one tint per batch
    tints = [c.pop() for _, c in sorted(by_batch.items())]
    assert all(a != b for a, b in zip(tints, tints[1:], strict=False))  # neighbours differ
    assert not set(tints) & {c.lower() for c in FATE_COLORS.values()}


def test_failed_and_filtered_fetches_wear_their_fate_colour() -> None:
    run = load("exception_continue")
    ax = timeline(run)
    colors = [to_hex(c) for c in one(ax, "fetch:worker 0").get_facecolors()]
    assert colors.count(FATE_COLORS["failed"].lower()) == 1
    ax = timeline(load("filtered"))  # None at 3 and 11
    colors = [to_hex(c) for c in one(ax, "fetch:main (fetch)").get_facecolors()]
    assert colors.count(FATE_COLORS["filtered"].lower()) == 2


def test_dispatch_markers_show_which_worker_got_each_batch() -> None:
    run = load("clean")
    ax = timeline(run)
    lane = rows(ax)
    xy = one(ax, "dispatch").get_offsets()
    assert len(xy) == 8
    sent = sorted(e.start / 1e6 for e in run.events if e.kind == "dispatch")
    np.testing.assert_allclose(sorted(xy[:, 0]), sent)
    # batch b went to worker b % 2: its triangle sits on top of that worker's lane
    for (x, y), b in zip(sorted(map(tuple, xy)), range(8), strict=True):
        assert lane[f"worker {b % 2}"] - 1 < y < lane[f"worker {b % 2}"], (x, y, b)


def test_deliveries_failures_and_in_flight_batches() -> None:
    ax = timeline(load("clean"))
    assert len(one(ax, "end:delivered").get_xdata()) == 8
    assert not by_gid(ax, "end:failed")
    assert len(one(ax, "lead").get_segments()) == 8
    ax = timeline(load("exception_continue"))  # batch 2 (16-23) lost, 7 delivered
    assert len(one(ax, "end:delivered").get_xdata()) == 7
    assert len(one(ax, "end:failed").get_xdata()) == 1
    run = load("exception_stop")  # the loop ends at the error: prefetched batches
    ax = timeline(run)
    in_flight = one(ax, "end:in_flight").get_xdata()
    assert len(in_flight) == run.summary()["in_flight"] // 8
    loop_end = max(e.end for e in run.events if e.kind in ("wait", "step")) / 1e6
    np.testing.assert_allclose(in_flight, loop_end)
    for (x0, _), (x1, _) in one(ax, "lead").get_segments():
        assert x1 > x0  # delivered (or given up) after it was sent: the prefetch lead


def test_prefetch_window_panel() -> None:
    run = load("clean")
    panel = timeline(run).child_axes[0]
    level = one(panel, "outstanding").get_ydata()
    assert max(level) >= 4  # 2 workers x prefetch_factor 2 primed at the start
    assert level[0] == 0 and level[-1] == 0
    assert list(one(panel, "prefetch_limit").get_ydata()) == [4, 4]
    assert "= 4" in texts(panel, "prefetch_limit_label")[0]
    panel = timeline(load("max_batches")).child_axes[0]  # 3 workers
    assert list(one(panel, "prefetch_limit").get_ydata()) == [6, 6]
    panel = timeline(load("filtered")).child_axes[0]  # no workers: nothing prefetched
    assert not by_gid(panel, "prefetch_limit")
    assert max(one(panel, "outstanding").get_ydata()) == 1


def test_exception_marker_at_the_failing_sample() -> None:
    run = load("exception_continue")
    ax = timeline(run)
    marker = one(ax, "error:exception")
    raised = [e for e in run.events if e.kind == "fetch" and e.status == "raised"]
    assert [e.index for e in raised] == [20]
    # index 20 is in batch 2, which round robin sends to worker 0
    assert marker.get_ydata()[0] == rows(ax)["worker 0"]
    assert marker.get_xdata()[0] == pytest.approx(raised[0].end / 1e6)
    assert texts(ax, "error_label") == ["exception at index 20"]
    assert "error (kind written next to it)" in legend_labels(ax)


def test_worker_death_marker_and_unfinished_fetch() -> None:
    run = load("worker_died")
    ax = timeline(run)
    (death,) = run.errors
    marker = one(ax, "error:worker_died")
    assert marker.get_ydata()[0] == rows(ax)["worker 0"]
    assert marker.get_xdata()[0] == pytest.approx(death.time / 1e6)
    assert texts(ax, "error_label") == ["worker died"]
    (hung,) = spans(ax, "unfinished:worker 0")  # it died fetching index 20
    assert hung[1] == pytest.approx(death.time / 1e6)  # clipped at the death
    assert one(ax, "unfinished:worker 0").get_hatch() == "////"
    assert not spans(ax, "unfinished:worker 1")


def test_timeout_marker_on_the_main_lane() -> None:
    run = load("timeout")
    ax = timeline(run)
    marker = one(ax, "error:timeout")
    assert marker.get_ydata()[0] == rows(ax)["main"]
    assert marker.get_xdata()[0] == pytest.approx(run.errors[0].time / 1e6)
    assert texts(ax, "error_label") == ["timeout (0.2 s)"]
    assert len(spans(ax, "unfinished:worker 0")) == 1  # index 20 never returned


def test_dropped_tail_is_labelled_with_its_indices() -> None:
    ax = timeline(load("drop_last"))  # 45 samples, batch 8
    assert texts(ax, "dropped_label") == ["dropped 40-44"]
    assert to_hex(one(ax, "dropped").get_color()) == FATE_COLORS["dropped"].lower()
    assert "dropped (drop_last)" in legend_labels(ax)
    ax = timeline(load("docs"))  # 100 samples, batch 8
    assert texts(ax, "dropped_label") == ["dropped 96-99"]
    assert not by_gid(timeline(load("clean")), "dropped_label")


def test_legend_lists_only_what_is_drawn() -> None:
    labels = legend_labels(timeline(load("clean")))
    for expected in ("collate (batch assembly)", "main waits in __next__", "your loop's step",
                     "indices sent to worker", "delivered to your loop"):
        assert expected in labels
    assert not [label for label in labels if "error" in label or "dropped" in label]


def test_batch_numbers_are_written_where_they_fit() -> None:
    numbers = texts(timeline(load("clean")), "batch_number")
    assert sorted(numbers, key=int) == [str(b) for b in range(8)]


@pytest.mark.parametrize("name", ALL)
def test_batch_numbers_do_not_depend_on_the_dpi(name: str) -> None:
    """Which numbers fit is measured in points: the explorer's picture (dpi 80) and
    plot_run's (dpi 100) of one run label the same batches (a bug found in issue 15)."""
    run = load(name)
    labelled = []
    for dpi in (60, 80, 100, 150):
        fig = Figure(figsize=(12, 4), dpi=dpi)
        ax = dlviz.plot_timeline(run, fig.add_axes((0.1, 0.35, 0.65, 0.55)))
        labelled.append(sorted(texts(ax, "batch_number"), key=int))
    assert all(numbers == labelled[2] for numbers in labelled), labelled


def test_ranges() -> None:
    assert plot._ranges([992, 993, 994, 995, 996]) == "992-996"
    assert plot._ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert plot._ranges([1, 3, 5, 7, 8], limit=2) == "1, 3 and 3 more"


# ----------------------------------------------------------------- the ledger
def expected_fates(run: Run) -> list[str]:
    """Each index's colour name, straight from the ledger (run.fate) and occurrences."""
    delivered = Counter(o.index for o in run.occurrences if o.fate == "delivered")
    return ["duplicated" if delivered[i] > 1 else run.fate(i) for i in run.universe]


@pytest.mark.parametrize("name", ALL)
def test_ledger_cells_are_coloured_by_fate(name: str) -> None:
    run = load(name)
    ax = ledger(run)
    (image,) = ax.get_images()
    cells = np.asarray(image.get_array()).reshape(-1, 4)
    want = np.array([to_rgba(FATE_COLORS[f]) for f in expected_fates(run)])
    np.testing.assert_allclose(cells[: len(want)], want)
    assert (cells[len(want):, 3] == 0).all()  # padding after the last index is blank


@pytest.mark.parametrize("name", ALL)
def test_ledger_legend_counts_match_the_summary(name: str) -> None:
    run = load(name)
    s = run.summary()
    want = {"delivered once": s["delivered"] - s["duplicated"],
            "delivered 2+ times": s["duplicated"], "dropped": s["dropped"],
            "failed": s["failed"], "filtered": s["filtered"], "in flight": s["in_flight"],
            "never sampled": s["never_sampled"]}
    got = dict(label.rsplit(": ", 1) for label in legend_labels(ledger(run)))
    assert got == {k: str(v) for k, v in want.items() if v}
    assert sum(int(v) for v in got.values()) == s["dataset_size"]


def test_ledger_specific_cells() -> None:
    cells = np.asarray(ledger(load("drop_last"), columns=10).get_images()[0].get_array())
    assert cells.shape[:2] == (5, 10)  # 45 indices in rows of 10
    orange = to_rgba(FATE_COLORS["dropped"])
    assert [tuple(c) for c in cells[4, :5]] == [orange] * 5  # 40-44
    assert tuple(cells[3, 9]) == to_rgba(FATE_COLORS["delivered"])  # 39
    cells = np.asarray(ledger(load("stream_duplicated")).get_images()[0].get_array())
    blue = np.array(to_rgba(FATE_COLORS["duplicated"]))
    assert (cells.reshape(-1, 4)[:32] == blue).all()  # unsharded: every key twice


def test_ledger_of_100k_indices_is_one_image() -> None:
    n = 100_000
    fates = ["delivered", "dropped", "failed", "in_flight"]
    occurrences = [Occurrence(i, i // 100, fates[i // 2 % 4]) for i in range(0, n, 2)]
    occurrences += [Occurrence(4, 0, "delivered")]  # failed once, delivered once: delivered
    run = Run(config={}, dataset_size=n, keys=None, events=[], errors=[],
              occurrences=occurrences, workers={}, duration=0, stop="exhausted")
    ax = ledger(run)
    assert len(ax.get_images()) == 1 and not ax.collections
    cells = np.asarray(ax.get_images()[0].get_array()).reshape(-1, 4)
    assert tuple(cells[1]) == to_rgba(FATE_COLORS["never_sampled"])
    assert tuple(cells[2]) == to_rgba(FATE_COLORS["dropped"])
    assert tuple(cells[4]) == to_rgba(FATE_COLORS["delivered"])
    assert tuple(cells[6]) == to_rgba(FATE_COLORS["in_flight"])
    assert tuple(cells[12]) == to_rgba(FATE_COLORS["failed"])
    assert "never sampled: 50000" in legend_labels(ax)
    assert "failed: 12499" in legend_labels(ax)


def test_ledger_of_stream_keys_follows_the_expected_keys() -> None:
    run = Run(config={}, dataset_size=3, keys=[30, 10, 20], events=[], errors=[],
              occurrences=[Occurrence(10, 0, "delivered"), Occurrence(99, 0, "delivered"),
                           Occurrence(20, 0, "dropped")], workers={}, duration=0,
              stop="exhausted")
    cells = np.asarray(ledger(run).get_images()[0].get_array()).reshape(-1, 4)
    assert [to_hex(c) for c in cells[:3]] == [
        FATE_COLORS[f].lower() for f in ("never_sampled", "delivered", "dropped")]


# ----------------------------------------------------------------- plot_run
def test_plot_run_draws_timeline_ledger_and_counts() -> None:
    run = load("docs")
    before = plt.get_fignums()
    fig = dlviz.plot_run(run)
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == before  # not registered with pyplot: nothing leaks
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0].startswith("Timeline") and titles[1].startswith("Ledger")
    assert len(fig.axes[0].child_axes) == 1  # the prefetch window panel
    counts = {t.get_gid(): t.get_text().split("\n")[0] for t in fig.texts if t.get_gid()}
    assert counts == {f"count:{k}": str(v) for k, v in run.summary().items()}
    assert "2 workers" in fig.get_suptitle() and "on_error=continue" in fig.get_suptitle()


def test_no_pid_or_machine_detail_is_drawn() -> None:
    run = load("docs")
    fig = dlviz.plot_run(run)
    drawn = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert "pid" not in drawn and str(run.config["torch"]) not in drawn
    for pid in run.workers.values():
        assert str(pid) not in drawn


def test_matplotlib_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_show(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("plt.show() called")

    monkeypatch.setattr(plt, "show", no_show)
    rc = copy.deepcopy(dict(matplotlib.rcParams))
    run = load("exception_continue")
    fig = plt.figure()
    try:
        ax = dlviz.plot_timeline(run)  # no ax: the current Axes
        assert ax is plt.gca() and ax.figure is fig
        fig2 = plt.figure()
        assert dlviz.plot_ledger(run) is fig2.gca()
        plt.close(fig2)
        dlviz.plot_run(run)
    finally:
        plt.close(fig)
    assert dict(matplotlib.rcParams) == rc


def test_plots_work_without_torch() -> None:
    """A run loaded from JSON draws where torch cannot even be imported."""
    run_without_torch(f"""
package = types.ModuleType("dlviz")  # the plotting half of dlviz, without trace
package.__path__ = [{str(HERE.parent / "dlviz")!r}]
sys.modules["dlviz"] = package
from dlviz.plot import plot_run
from dlviz.run import Run
plot_run(Run.from_json({str(FIXTURES / "docs.json")!r})).savefig(io.BytesIO())
""")


def test_events_without_workers_or_time() -> None:
    """A run with nothing in it (an empty loader) still draws."""
    run = Run(config={"num_workers": 0}, dataset_size=0, keys=None,
              events=[Event("wait", -1, -1, -1, 0, 10, "ok")], errors=[], occurrences=[],
              workers={}, duration=10, stop="exhausted")
    fig = dlviz.plot_run(run)
    assert list(rows(fig.axes[0])) == ["main"]


# ----------------------------------------------------------------- image regression
@pytest.mark.parametrize("name", ["docs", "worker_died", "stream_duplicated"])
def test_image(name: str, tmp_path: Path) -> None:
    actual = tmp_path / f"{name}.png"
    dlviz.plot_run(load(name)).savefig(actual, dpi=60)
    baseline = BASELINES / f"plot_run_{name}.png"
    if os.environ.get("DLVIZ_REGEN_BASELINES"):
        shutil.copyfile(actual, baseline)
    assert baseline.exists(), f"no baseline {baseline}: run with DLVIZ_REGEN_BASELINES=1"
    diff = compare_images(str(baseline), str(actual), tol=2)
    assert diff is None, diff
