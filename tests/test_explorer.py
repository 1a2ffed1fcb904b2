"""Tests for dlviz.explorer (issue "Interactive explorer"), headless, with real DataLoaders.

Every control is moved and the Run that comes back is checked against what that
control means for a DataLoader (numbers computed here from the settings, never
read back from the drawing code). Slider changes are made the way the browser
makes them: by setting ``explorer.controls[name].value``, which runs the widget's
observer; ``explorer.rerun(...)`` is the synchronous path notebooks use.

The leak test (300 re-runs) is marked slow; the spawn test too.
"""

from __future__ import annotations

import base64
import os
import re
import statistics
import threading
from collections.abc import Callable, Iterator
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from helpers import (  # noqa: E402
    check_ledger_adds_up,
    descriptors_gained,
    live_objects,
    open_descriptors,
    worker_children,
)
from matplotlib.figure import Figure  # noqa: E402

import dlviz  # noqa: E402
from dlviz import explorer as explorer_module  # noqa: E402
from dlviz.explorer import Explorer  # noqa: E402
from dlviz.ledger import FATE_COLORS  # noqa: E402
from dlviz.run import MAIN, Run  # noqa: E402

# small and cheap: a pass takes well under a second even on a loaded 2-core machine
FAILED_COLOR = FATE_COLORS["failed"]  # errors are listed in this colour
BASE: dict[str, Any] = {"n": 64, "batch_size": 8, "num_workers": 2, "cost_ms": 0.0}


@pytest.fixture
def make() -> Iterator[Callable[..., Explorer]]:
    """``make(**values)``: an explorer over BASE updated with ``values`` (closed after)."""
    made: list[Explorer] = []

    def _make(controls: list[str] | None = None, **values: Any) -> Explorer:
        kwargs = {**BASE, **values}
        explorer: Explorer = dlviz.explore(controls=controls, **kwargs)
        made.append(explorer)
        return explorer

    yield _make
    for explorer in made:
        explorer.close()


@pytest.fixture
def thread_errors() -> Iterator[list[BaseException]]:
    """Exceptions raised in any thread during the test (the kernel would print them)."""
    caught: list[BaseException] = []
    previous = threading.excepthook

    def hook(args: Any) -> None:
        caught.append(args.exc_value)

    threading.excepthook = hook
    try:
        yield caught
    finally:
        threading.excepthook = previous


def delivered_batch_sizes(run: Run) -> list[int]:
    return [len(b.indices) for b in run.batches() if b.fate == "delivered"]


def spans(run: Run, kind: str) -> list[int]:
    return [e.end - e.start for e in run.events if e.kind == kind]


def batch_waits(run: Run) -> list[int]:
    """How long ``__next__`` waited for batches 1, 2, ... (ns). Batch 0's wait
    includes starting the workers, the final wait (StopIteration) stopping them."""
    waits = [e for e in run.events if e.kind == "wait" and e.batch >= 0]
    return [e.end - e.start for e in waits[1:]]


def text(explorer: Explorer) -> str:
    """The message shown in the widget, without tags (entities decoded)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", explorer.message.value))


def shown_counts(explorer: Explorer) -> dict[str, int]:
    found = re.findall(r'class="dlviz-count" data-key="(\w+)"[^>]*>(\d+)<',
                       explorer.summary.value)
    return {key: int(value) for key, value in found}


# ---------------------------------------------------------------- each control
def values(**changes: Any) -> dict[str, Any]:
    """Every control at its default, with ``changes``."""
    return {**{k: c.default for k, c in explorer_module.CONTROLS.items()}, **changes}


def test_build_loader_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the explorer adjusts is said in words (no recording needed)."""
    monkeypatch.setattr(explorer_module, "_cores", lambda: 2)
    loader, notes = explorer_module.build_loader(values(num_workers=3))
    assert loader.num_workers == 3
    assert any("more than this machine's 2 CPU cores" in note for note in notes)
    loader, notes = explorer_module.build_loader(values(num_workers=2, fault="hang",
                                                        fault_at=5))
    assert loader.timeout == explorer_module.HANG_TIMEOUT_S
    assert loader.dataset.hang_at == {5}  # type: ignore[attr-defined]
    spawned, _ = explorer_module.build_loader(values(num_workers=2, fault="hang", fault_at=5,
                                                     start_method="spawn"))
    # under spawn the first batch waits for torch to import: the timeout allows for it
    assert spawned.timeout == explorer_module.HANG_TIMEOUT_S + explorer_module.SLOW_START_S
    loader, notes = explorer_module.build_loader(values(num_workers=0, fault="hang",
                                                        fault_at=5))
    assert loader.timeout == 0 and loader.prefetch_factor is None
    assert any("would take your kernel with it" in note for note in notes)
    loader, notes = explorer_module.build_loader(values(n=10, fail_at=12, none_at=3))
    assert loader.dataset.fail_at == frozenset()  # type: ignore[attr-defined]
    assert loader.collate_fn is dlviz.datasets.collate_skip_none
    assert notes == ["fail_at 12 is outside the dataset (0..9): no fault."]


@pytest.mark.parametrize("n", [1, 37, 64])
def test_n_is_the_dataset_size(make: Callable[..., Explorer], n: int) -> None:
    run = make(n=n).run
    assert run is not None
    assert run.dataset_size == n
    assert sorted(run.delivered()) == list(range(n))


def test_n_via_rerun(make: Callable[..., Explorer]) -> None:
    explorer = make()
    run = explorer.rerun(n=50)
    assert run.dataset_size == 50 and run.summary()["delivered"] == 50
    assert explorer.values["n"] == 50 and explorer.controls["n"].value == 50


def test_batch_size_sets_the_batch_sizes(make: Callable[..., Explorer]) -> None:
    explorer = make()
    assert delivered_batch_sizes(explorer.rerun(batch_size=10)) == [10] * 6 + [4]
    assert delivered_batch_sizes(explorer.rerun(batch_size=64)) == [64]
    assert delivered_batch_sizes(explorer.rerun(batch_size=1)) == [1] * 64


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_num_workers_sets_the_worker_lanes(make: Callable[..., Explorer], workers: int) -> None:
    run = make(num_workers=workers).run
    assert run is not None
    assert run.config["num_workers"] == workers
    fetch_lanes = {e.worker for e in run.events if e.kind == "fetch"}
    starts = [e for e in run.events if e.kind == "worker_start"]
    if workers == 0:
        assert fetch_lanes == {MAIN}
        assert starts == []
    else:
        assert fetch_lanes <= set(range(workers)) and len(fetch_lanes) == min(workers, 8)
        assert sorted(e.worker for e in starts) == list(range(workers))
        pids = {e.index for e in starts}
        assert len(pids) == workers and os.getpid() not in pids
        assert {e.worker for e in run.events if e.kind == "dispatch"} == set(range(workers))


@pytest.mark.parametrize("factor", [1, 3])
def test_prefetch_factor_caps_outstanding_batches(make: Callable[..., Explorer],
                                                  factor: int) -> None:
    # a slow step: the workers run ahead until prefetch_factor * num_workers are out
    run = make(n=96, prefetch_factor=factor, step_ms=15.0).run
    assert run is not None
    most = max(level for _, level in run.outstanding())
    assert most == factor * 2 == run.prefetch_limit


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (64, 8), (10, 3)])
def test_drop_last_drops_the_tail(make: Callable[..., Explorer], n: int, batch_size: int
                                  ) -> None:
    explorer = make(n=n, batch_size=batch_size, drop_last=True)
    s = explorer.run.summary()  # type: ignore[union-attr]
    assert s["dropped"] == n % batch_size
    assert s["delivered"] == n - n % batch_size
    s = explorer.rerun(drop_last=False).summary()
    assert s["dropped"] == 0 and s["delivered"] == n


def test_shuffle_changes_the_order_not_the_set(make: Callable[..., Explorer]) -> None:
    explorer = make(n=64)
    assert explorer.run is not None and explorer.run.delivered() == list(range(64))
    shuffled = explorer.rerun(shuffle=True).delivered()
    assert shuffled != list(range(64)) and sorted(shuffled) == list(range(64))
    reseeded = explorer.rerun(seed=1).delivered()
    assert reseeded != shuffled and sorted(reseeded) == list(range(64))
    assert explorer.rerun(seed=0).delivered() == shuffled  # the seed fixes the order


FAULT_CASES = [
    # fault, error kind (None: no error), words the message must contain
    ("exception", "exception", ["exception", "worker", "index 20",
                                "ValueError: SyntheticDataset: injected failure at index 20"]),
    ("worker crash", "worker_died", ["worker_died", "exited unexpectedly"]),
    ("hang", "timeout", ["timeout=1 s", "timed out after 1"]),
    ("None sample", None, []),
]


@pytest.mark.parametrize(("fault", "kind", "words"), FAULT_CASES,
                         ids=[c[0] for c in FAULT_CASES])
def test_each_fault_is_recorded_and_explained(make: Callable[..., Explorer], fault: str,
                                              kind: str | None, words: list[str]) -> None:
    explorer = make(fault=fault, fault_at=20)
    run = explorer.run
    assert run is not None
    check_ledger_adds_up(run)
    if kind is None:  # None sample: skipped by collate_skip_none, no error
        assert run.errors == []
        assert run.summary()["filtered"] == 1 and run.fate(20) == "filtered"
        assert run.summary()["delivered"] == 63
        return
    assert [e.kind for e in run.errors] == [kind]
    assert run.fate(20) == "failed"
    assert run.stop == "error"
    if kind != "worker_died":  # the dead worker's own index is known from its log only
        assert run.errors[0].index in (20, None)
    shown = text(explorer)
    for word in words:
        assert word in shown, (word, shown)


@pytest.mark.parametrize(("control", "kind"), [("fail_at", "exception"),
                                               ("crash_at", "worker_died")])
def test_direct_fault_controls(make: Callable[..., Explorer], control: str, kind: str) -> None:
    run = make(**{control: 9}).run
    assert run is not None and [e.kind for e in run.errors] == [kind]
    assert run.fate(9) == "failed"


def test_none_at_control(make: Callable[..., Explorer]) -> None:
    run = make(none_at=5).run
    assert run is not None and run.fate(5) == "filtered" and run.errors == []


@pytest.mark.parametrize("fault", ["worker crash", "hang"])
def test_crash_and_hang_without_workers_raise_instead(make: Callable[..., Explorer],
                                                      fault: str) -> None:
    explorer = make(num_workers=0, fault=fault, fault_at=20)
    run = explorer.run
    assert run is not None and [e.kind for e in run.errors] == ["exception"]
    assert run.fate(20) == "failed"
    assert "would take your kernel with it" in text(explorer)
    assert "RuntimeError" in text(explorer)


def test_fault_at_outside_the_dataset_is_explained(make: Callable[..., Explorer]) -> None:
    explorer = make(controls=["n", "fault", "fault_at"], n=50, fault="exception", fault_at=80)
    run = explorer.run
    assert run is not None and run.errors == [] and run.summary()["delivered"] == 50
    assert "fail_at 80 is outside the dataset (0..49): no fault." in text(explorer)
    # the slider keeps the value (it is not moved silently onto index 49)
    assert explorer.controls["fault_at"].value == 80 and explorer.values["fault_at"] == 80
    passes = explorer.passes
    run = explorer.rerun(fault_at=120, n=40)
    assert run.errors == [] and "fail_at 120 is outside" in text(explorer)
    assert explorer.passes == passes + 1  # and nothing else started in the background
    assert not explorer._busy
    run = explorer.rerun(fault_at=10)
    assert [e.kind for e in run.errors] == ["exception"] and run.fate(10) == "failed"
    assert explorer.controls["fault_at"].max == 39  # back to the dataset's last index


@pytest.mark.parametrize(("on_error", "delivered", "stop"),
                         [("raise", 16, "error"), ("stop", 16, "error"),
                          ("continue", 56, "exhausted")])
def test_on_error_sets_what_the_loop_loses(make: Callable[..., Explorer], on_error: str,
                                           delivered: int, stop: str) -> None:
    # 64 samples, batches of 8 in order; index 20 is in batch 2, so a loop that ends at
    # the error got batches 0 and 1 (16 samples); one that goes on gets all but batch 2
    explorer = make(fault="exception", fault_at=20, on_error=on_error)
    run = explorer.run
    assert run is not None
    s = run.summary()
    assert (s["delivered"], s["failed"], run.stop) == (delivered, 8, stop)
    assert [e.kind for e in run.errors] == ["exception"]
    check_ledger_adds_up(run)
    if on_error == "continue":
        assert s["in_flight"] == 0 and s["never_sampled"] == 0
    else:
        assert s["in_flight"] + s["never_sampled"] == 64 - 16 - 8
    assert ("on_error='raise'" in text(explorer)) == (on_error == "raise")


@pytest.mark.parametrize("max_batches", [1, 3])
def test_max_batches_breaks_the_loop(make: Callable[..., Explorer], max_batches: int) -> None:
    run = make(max_batches=max_batches).run
    assert run is not None
    assert delivered_batch_sizes(run) == [8] * max_batches
    assert run.stop == "max_batches"
    s = run.summary()
    assert s["delivered"] == 8 * max_batches
    assert s["in_flight"] > 0  # the workers had prefetched past the break


def test_cost_and_step_decide_who_waits(make: Callable[..., Explorer]) -> None:
    # Data-bound: the mean wait, not the median. Two workers that finish their batches
    # at the same moment make the waits alternate ~32 ms and ~0 ms (the second batch is
    # already there), and the median of 11 such waits can be the short one. A load
    # spike can only lengthen a wait, so the mean is as safe for "waits long" as the
    # median of the steps is for "steps short".
    explorer = make(n=96, cost_ms=4.0, step_ms=0.0)
    data_bound = explorer.run
    assert data_bound is not None
    wait = statistics.mean(batch_waits(data_bound))
    step = statistics.median(spans(data_bound, "step"))
    assert wait > 4 * step, (wait, step)  # 8 x 4 ms per batch, shared by 2 workers
    assert wait > 4e6
    compute_bound = explorer.rerun(cost_ms=0.0, step_ms=20.0)
    # compute-bound: medians, so that a load spike in one wait cannot flip it
    wait = statistics.median(batch_waits(compute_bound))
    step = statistics.median(spans(compute_bound, "step"))
    assert step > 4 * wait, (wait, step)
    assert step >= 20e6


@pytest.mark.slow
def test_spawn_start_method(make: Callable[..., Explorer]) -> None:
    explorer = make(n=32, start_method="spawn")
    run = explorer.run
    assert run is not None
    assert run.config["start_method"] == "spawn"
    assert run.summary()["delivered"] == 32 and run.errors == []
    assert "spawn: every worker starts a fresh Python" in text(explorer)
    run = explorer.rerun(fault="exception", fault_at=3)
    assert [e.kind for e in run.errors] == ["exception"] and run.fate(3) == "failed"


def worker_pids() -> set[int]:
    return {p.pid for p in worker_children()}


def test_persistent_workers_survive_a_loop_change(make: Callable[..., Explorer]) -> None:
    explorer = make(persistent_workers=True)
    run = explorer.run
    assert run is not None and run.config["persistent_workers"] is True
    started = {e.index for e in run.events if e.kind == "worker_start"}
    assert len(started) == 2 and worker_pids() == started  # alive between passes
    run = explorer.rerun(step_ms=2.0)  # loop setting only: the same workers serve it
    assert run.summary()["delivered"] == 64
    assert [e for e in run.events if e.kind == "worker_start"] == []  # none started
    assert set(run.workers.values()) == started and worker_pids() == started
    run = explorer.rerun(batch_size=16)  # the loader changes: new workers
    fresh = {e.index for e in run.events if e.kind == "worker_start"}
    assert len(fresh) == 2 and not fresh & started and worker_pids() == fresh
    explorer.rerun(persistent_workers=False)
    assert worker_pids() == set()


def test_persistent_workers_after_an_error_and_many_passes(make: Callable[..., Explorer]
                                                           ) -> None:
    explorer = make(persistent_workers=True, fault="exception", fault_at=20)
    assert explorer.run is not None and explorer.run.stop == "error"
    assert worker_pids() == set()  # an error stops them (torch would too)
    for i in range(2 * explorer_module.PERSISTENT_PASSES + 1):
        run = explorer.rerun(step_ms=float(i % 2))
        assert [e.kind for e in run.errors] == ["exception"], text(explorer)
        assert run.summary()["delivered"] == 16
    run = explorer.rerun(fault="none")
    for _ in range(2 * explorer_module.PERSISTENT_PASSES + 1):
        run = explorer.rerun(step_ms=0.5 if run.config["step_ms"] == 0 else 0.0)
        assert run.summary()["delivered"] == 64 and run.errors == []
        assert not any("filled up" in note for note in run.notes), run.notes
        assert len(worker_pids()) == 2
    explorer.close()
    assert worker_pids() == set()


def test_in_order_false_delivers_the_same_set(make: Callable[..., Explorer]) -> None:
    run = make(in_order=False, cost_ms=0.5, num_workers=3).run
    assert run is not None and run.config["in_order"] is False
    assert sorted(run.delivered()) == list(range(64))
    assert run.summary()["delivered"] == 64


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"batch_size": "32"}, TypeError, "batch_size"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"num_workers": -1}, ValueError, "num_workers"),
    ({"num_workers": 2.0}, TypeError, "num_workers"),
    ({"drop_last": 1}, TypeError, "drop_last"),
    ({"fault": "meteor"}, ValueError, "fault"),
    ({"on_error": None}, TypeError, "on_error"),
    ({"cost_ms": -1}, ValueError, "cost_ms"),
    ({"cost_ms": float("nan")}, ValueError, "cost_ms"),
    ({"step_ms": "1"}, TypeError, "step_ms"),
    ({"start_method": "thread"}, ValueError, "start_method"),
    ({"bogus": 1}, ValueError, "bogus"),
    ({"controls": "n"}, TypeError, "controls"),
    ({"controls": 3}, TypeError, "controls"),
    ({"controls": [3]}, TypeError, "controls"),
    ({"controls": ["n", "nope"]}, ValueError, "nope"),
    ({"ranges": [("n", (1, 2))]}, TypeError, "ranges"),
    ({"ranges": {"drop_last": (0, 1)}}, ValueError, "drop_last"),
    ({"ranges": {"n": (10, 5)}}, ValueError, "ranges['n']"),
    ({"ranges": {"n": (0, 5)}}, ValueError, "ranges['n']"),
    ({"ranges": {"n": 5}}, TypeError, "ranges['n']"),
    ({"ranges": {"n": ("1", 5)}}, TypeError, "ranges['n']"),
    ({"num_workers": 6, "ranges": {"num_workers": (0, 4)}}, ValueError, "num_workers"),
])
def test_explore_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception],
                                       name: str) -> None:
    with pytest.raises(error, match=re.escape(name)):
        dlviz.explore(**kwargs)


def test_a_default_outside_a_range_is_moved_into_it() -> None:
    explorer = dlviz.explore(controls=["batch_size"], ranges={"batch_size": (1, 4)}, n=8,
                             num_workers=0)
    try:
        assert explorer.values["batch_size"] == 4  # the default 32, moved into (1, 4)
        assert explorer.controls["batch_size"].max == 4
        assert explorer.run is not None and delivered_batch_sizes(explorer.run) == [4, 4]
    finally:
        explorer.close()


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"batch_size": "8"}, TypeError, "batch_size"),
    ({"n": 0}, ValueError, "n"),
    ({"n": 5000}, ValueError, "n"),
    ({"shuffle": "yes"}, TypeError, "shuffle"),
    ({"fault": "boom"}, ValueError, "fault"),
    ({"max_batches": -1}, ValueError, "max_batches"),
    ({"bogus": 1}, ValueError, "bogus"),
])
def test_rerun_rejects_bad_arguments_and_changes_nothing(
        make: Callable[..., Explorer], kwargs: dict[str, Any], error: type[Exception],
        name: str) -> None:
    explorer = make(num_workers=0)
    before, passes, run = dict(explorer.values), explorer.passes, explorer.run
    with pytest.raises(error, match=re.escape(name)):
        explorer.rerun(batch_size=16, **kwargs)
    assert explorer.values == before and explorer.passes == passes and explorer.run is run


def test_rerun_widens_a_slider_to_show_the_value(make: Callable[..., Explorer]) -> None:
    explorer = make(controls=["num_workers"], ranges={"num_workers": (1, 2)}, num_workers=1)
    run = explorer.rerun(num_workers=0)
    assert run.config["num_workers"] == 0
    slider = explorer.controls["num_workers"]
    assert (slider.min, slider.value) == (0, 0)


def test_a_closed_explorer_refuses_to_rerun(make: Callable[..., Explorer]) -> None:
    explorer = make(num_workers=0)
    explorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        explorer.rerun()


# ---------------------------------------------------------------- the kernel is safe
@pytest.mark.parametrize("fault", ["exception", "worker crash", "hang", "None sample"])
@pytest.mark.parametrize("on_error", ["raise", "continue"])
def test_faults_give_messages_not_exceptions(make: Callable[..., Explorer],
                                             thread_errors: list[BaseException], fault: str,
                                             on_error: str) -> None:
    """Through the slider path (observer + background thread) and through rerun()."""
    explorer = make(controls=["fault", "on_error"], n=48, num_workers=2, on_error=on_error)
    explorer.controls["fault"].value = fault  # as the browser does
    assert explorer.wait(timeout=60)
    run = explorer.run
    assert run is not None and explorer.values["fault"] == fault
    assert thread_errors == []
    if fault != "None sample":
        assert run.errors and run.errors[0].kind in text(explorer)
    run = explorer.rerun(fault="none")
    assert run.errors == [] and FAILED_COLOR not in explorer.message.value


# ---------------------------------------------------------------- what is shown
def test_summary_html_shows_the_runs_counts(make: Callable[..., Explorer]) -> None:
    explorer = make(n=100, batch_size=32, drop_last=True)
    assert explorer.run is not None
    assert shown_counts(explorer) == explorer.run.summary()
    assert shown_counts(explorer)["delivered"] == 96 and shown_counts(explorer)["dropped"] == 4
    run = explorer.rerun(fault="exception", fault_at=50, on_error="continue")
    assert shown_counts(explorer) == run.summary()
    assert shown_counts(explorer)["failed"] == 32


def test_the_image_is_a_png_of_the_run(make: Callable[..., Explorer]) -> None:
    explorer = make()
    bundle = explorer._repr_mimebundle_()
    assert "image/png" in bundle and "application/vnd.jupyter.widget-view+json" in bundle
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == explorer.png
    (output,) = explorer.figure.outputs
    assert base64.b64decode(output["data"]["image/png"]) == png
    assert output["data"]["text/plain"] == repr(explorer.run)
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 12 * explorer_module.DPI and 200 < height < 1200
    explorer.rerun(batch_size=16)
    assert explorer.png != png  # a new run, a new picture


def test_the_kept_figure_draws_what_a_new_one_draws(make: Callable[..., Explorer]) -> None:
    """The explorer draws each run on its kept figure (issue 15): the picture must be
    the one a new figure gives, through faults, drops and lane changes; the counts are
    shown once, in the widget, not also in the picture."""
    explorer = make()  # the ledger is kept as pixels across the timing-only changes
    for change in ({"batch_size": 16}, {"fault": "exception", "fault_at": 20,
                                        "on_error": "continue"},
                   {"fault": "none", "drop_last": True, "n": 60}, {"num_workers": 3},
                   {"num_workers": 2, "max_batches": 2}, {"max_batches": 0},
                   {"batch_size": 20}, {"prefetch_factor": 4}):
        run = explorer.rerun(**change)
        fresh, figure = explorer_module.render_png(run)  # a canvas and figure of its own
        assert explorer.png == fresh, change
        assert not [t for t in figure.texts if (t.get_gid() or "").startswith("count:")]
        assert shown_counts(explorer) == run.summary()


# ---------------------------------------------------------------- superseding
SLOW = {"n": 400, "batch_size": 8, "cost_ms": 2.0}  # ~0.4 s with 2 workers


@pytest.mark.parametrize("announce_after_s", [0.0, 60.0], ids=["announced", "quiet"])
def test_running_is_announced_only_after_a_while(make: Callable[..., Explorer],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 announce_after_s: float) -> None:
    """A pass longer than ANNOUNCE_AFTER_S shows "running…" before its result; a
    quicker one changes the message once, with its result (issue 15)."""
    explorer = make(controls=["batch_size"], **SLOW)
    monkeypatch.setattr(explorer_module, "ANNOUNCE_AFTER_S", announce_after_s)
    shown: list[str] = []
    explorer.message.observe(lambda change: shown.append(change["new"]), names="value")
    explorer.rerun(batch_size=5, fault="exception", fault_at=3, on_error="continue")
    running = [m for m in shown if "running a real DataLoader" in m]
    assert len(running) == (1 if announce_after_s == 0 else 0), shown
    assert shown[-1] == explorer.message.value and "running" not in shown[-1]
    assert "ValueError" in shown[-1]  # the result's message came last


def test_a_newer_change_supersedes_the_running_pass(make: Callable[..., Explorer],
                                                     thread_errors: list[BaseException]
                                                     ) -> None:
    explorer = make(controls=["batch_size", "num_workers"], **SLOW)
    passes = explorer.passes
    explorer.controls["batch_size"].value = 16  # starts a pass in the background
    explorer.controls["batch_size"].value = 24  # supersedes it
    explorer.controls["num_workers"].value = 1
    assert explorer.wait(timeout=60)
    assert not explorer._busy
    run = explorer.run
    assert run is not None
    assert (run.config["batch_size"], run.config["num_workers"]) == (24, 1)
    assert run.stop == "exhausted" and run.summary()["delivered"] == 400
    assert explorer.passes - passes <= 3  # one per change at the very most, no pile-up
    assert shown_counts(explorer) == run.summary()
    assert thread_errors == []


def test_many_quick_changes_do_not_pile_up(make: Callable[..., Explorer]) -> None:
    explorer = make(controls=["batch_size"], **SLOW)
    passes = explorer.passes
    for size in range(10, 30):
        explorer.controls["batch_size"].value = size
    assert explorer.wait(timeout=60)
    assert explorer.run is not None and explorer.run.config["batch_size"] == 29
    assert explorer.passes - passes <= 3, explorer.passes - passes
    assert delivered_batch_sizes(explorer.run)[0] == 29


def test_rerun_during_a_background_pass_records_once_more(make: Callable[..., Explorer]
                                                          ) -> None:
    explorer = make(controls=["batch_size"], **SLOW)
    passes = explorer.passes
    explorer.controls["batch_size"].value = 16  # background pass
    run = explorer.rerun(batch_size=40, drop_last=True)
    assert run is explorer.run and not explorer._busy
    assert (run.config["batch_size"], run.config["drop_last"]) == (40, True)
    assert run.summary()["delivered"] == 400 and run.summary()["dropped"] == 0
    assert explorer.passes - passes <= 2  # the background one (cut short) and this one
    assert explorer.controls["batch_size"].value == 40


def test_slider_moves_while_persistent_workers_run(make: Callable[..., Explorer]) -> None:
    explorer = make(controls=["step_ms", "batch_size"], persistent_workers=True, **SLOW)
    explorer.controls["step_ms"].value = 1.0
    explorer.controls["step_ms"].value = 2.0
    explorer.controls["batch_size"].value = 16
    assert explorer.wait(timeout=60)
    run = explorer.run
    assert run is not None and (run.config["batch_size"], run.config["step_ms"]) == (16, 2.0)
    assert run.summary()["delivered"] == 400
    assert len(worker_pids()) == 2


# ---------------------------------------------------------------- leaks
LEAK_CYCLE: list[dict[str, Any]] = [
    {"num_workers": 2, "fault": "none", "persistent_workers": False},
    {"num_workers": 3, "fault": "exception", "on_error": "stop"},
    {"num_workers": 1, "fault": "worker crash"},
    {"num_workers": 0, "fault": "None sample"},
    {"num_workers": 2, "fault": "exception", "on_error": "continue"},
    {"num_workers": 2, "fault": "none", "persistent_workers": True},
    {"step_ms": 0.5},  # same loader: the persistent workers serve it
    {"num_workers": 3, "fault": "None sample", "drop_last": True},
    {"num_workers": 1, "fault": "exception", "on_error": "raise"},
    {"num_workers": 0, "fault": "worker crash", "persistent_workers": False},
    {"num_workers": 2, "fault": "none", "shuffle": True, "max_batches": 2},
    {"num_workers": 3, "fault": "worker crash", "persistent_workers": True},
    {"num_workers": 2, "fault": "none", "max_batches": 0, "step_ms": 0.0, "shuffle": False},
    {"step_ms": 0.5},
]
HANG = {"num_workers": 2, "fault": "hang", "persistent_workers": False}


CLEAN = {"num_workers": 2, "fault": "none", "persistent_workers": False, "on_error": "stop",
         "max_batches": 0, "step_ms": 0.0, "shuffle": False, "drop_last": False}


@pytest.mark.slow
def test_300_reruns_leak_nothing(make: Callable[..., Explorer],
                                 thread_errors: list[BaseException]) -> None:
    """300 re-runs through faults, worker counts and persistent workers leave nothing.

    Measured in the same state before and after (a clean pass, no persistent workers
    alive), so the file descriptors of live workers' pipes do not blur the count: no
    slack is allowed, once the closed queues' feeder threads (which close their
    pipes) have ended. Objects (Runs, loaders, iterators, queues, figures) are
    counted exactly, after a warm-up (fonts, caches, the first forks)."""
    explorer = make(n=48, batch_size=8)
    reruns = 0

    def cycle(count: int) -> None:
        nonlocal reruns
        for _ in range(count):
            values = HANG if reruns % 100 == 50 else LEAK_CYCLE[reruns % len(LEAK_CYCLE)]
            run = explorer.rerun(**values)
            assert run.summary()["dataset_size"] == 48, text(explorer)
            reruns += 1

    cycle(20)  # warm-up: fonts, caches, torch's shared memory, the first forks
    explorer.rerun(**CLEAN)
    assert worker_pids() == set()
    fds = open_descriptors()
    objects = live_objects(Figure)
    cycle(280)
    explorer.rerun(**CLEAN)
    assert worker_pids() == set(), f"worker processes left alive: {worker_pids()}"
    leaked = descriptors_gained(fds)
    assert not leaked, f"{len(leaked)} file descriptors leaked: {leaked}"
    assert live_objects(Figure) == objects
    assert reruns == 300 and explorer.passes >= 302 and thread_errors == []
