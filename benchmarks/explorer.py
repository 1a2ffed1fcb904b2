"""Explorer latency: a slider change against a plain DataLoader pass of the same settings.

The learner waits for the DataLoader pass itself (that is what the explorer shows);
everything beyond it is the explorer's cost. So every case times, interleaved in one
run (the order alternating), a plain pass (``build_loader`` then ``for batch in
loader: pass``, workers started and stopped as the loader does) and
``explorer.rerun(...)`` with the same settings: the path a slider takes, from the call
to the new picture in the widget. The moved value is ``batch_size`` (16 <-> 32, as in
issue 15), or ``step_ms`` (0 <-> 0.1 ms, a loop setting) where persistent workers are to
be reused. Reported: medians and p95 of each, the ratio of the medians and what the
re-run adds over the plain pass.

Where a re-run's time goes is measured in the same re-runs, by timing the functions
the explorer calls (their medians; ``pass`` is what is left of ``play``):

- ``build loader``: :func:`dlviz.explorer.build_loader`;
- ``start workers``: the traced iterator's start (``iter(loader)``: the workers fork
  or spawn);
- ``pass``: the batches, up to the end of the last one; ``stop workers``: torch's
  ``_shutdown_workers`` (inside the last ``next()`` for a pass that runs out);
- ``Run build``: making the Run from the logs;
- ``draw``: :func:`dlviz.explorer.draw_run` (``plot_run`` built and drawn on the
  explorer's canvas); ``encode``: :func:`dlviz.explorer.encode_png`;
- ``widget update``: the rest (HTML, base64, the widgets' state).

The browser's part (the picture's trip to JupyterLab and its decoding) is measured
by ``benchmarks/browser.py``.

Separate ``render:`` rows time the drawing of one run in the ways the explorer could
draw it, interleaved, in this thread's CPU time (steadier than wall time on a shared
machine): before issue 15 (``plot_run`` with its counts row, ``savefig``), and now
(no counts row, drawn on the explorer's canvas, whose text cache draws each line of
text in one blit, the kept figure drawn by blitting: what stays the same kept as
pixels), with the text cache, the kept figure or the blitting left out.

The ``CPU pressure`` column is Linux PSI "some" while the case ran: the share of the
time some task waited for a CPU (other jobs on the machine raise it).

Run: ``.venv/bin/python benchmarks/explorer.py`` (``--quick`` for a smoke run), or
through ``benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from _machine import cpu_stall_us

if TYPE_CHECKING:
    from dlviz.run import Run

# Only the standard library at the top: spawn and forkserver workers re-import the
# main module (this file, when run as a script), and a worker that had to import
# matplotlib and ipywidgets too would make those rows measure this file, not dlviz.

N, WORKERS = 256, 2
GOAL_RATIO, GOAL_OVER_MS, GOAL_P95_RATIO = 2.0, 60.0, 3.0
STAGES = ("build loader", "start workers", "pass", "stop workers", "Run build", "draw",
          "encode", "widget update")


def _explorer_module() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    from dlviz import explorer

    return explorer


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class _Timings:
    """Wall time spent inside the functions the explorer calls, per re-run."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.on = False

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return func(*args, **kwargs)
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start
        return timed


@contextmanager
def _instrumented(timings: _Timings) -> Iterator[None]:
    """Time the functions a re-run calls, where the explorer calls them."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    from dlviz import recorder

    explorer_module = _explorer_module()
    targets: list[tuple[Any, str, str]] = [
        (explorer_module, "build_loader", "build loader"),
        (explorer_module, "play", "play"),
        (explorer_module, "draw_run", "draw"),
        (explorer_module, "encode_png", "encode"),
        (recorder.TracedIterator, "__init__", "start workers"),
        (recorder._Epoch, "result", "Run build"),
        (_MultiProcessingDataLoaderIter, "_shutdown_workers", "stop workers"),
    ]
    if not hasattr(explorer_module, "draw_run"):  # before issue 15: one function did both
        targets[2:4] = [(explorer_module, "render_png", "draw")]
    saved = [(owner, attr, owner.__dict__[attr] if isinstance(owner, type)
              else getattr(owner, attr)) for owner, attr, _ in targets]
    try:
        for (owner, attr, name), (_, _, func) in zip(targets, saved, strict=True):
            setattr(owner, attr, timings.wrap(name, func))
        yield
    finally:
        for owner, attr, func in saved:
            setattr(owner, attr, func)


def _values(explorer_module: ModuleType, **changes: Any) -> dict[str, Any]:
    return {**{k: c.default for k, c in explorer_module.CONTROLS.items()}, **changes}


def measure_case(start_method: str, persistent: bool, cost_ms: float, reps: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """``reps`` re-runs and ``reps`` plain passes, interleaved (after a warm-up of each)."""
    explorer_module = _explorer_module()
    base = {"n": N, "num_workers": WORKERS, "cost_ms": cost_ms, "start_method": start_method,
            "persistent_workers": persistent}
    explorer = explorer_module.explore(**base)
    plain_loader = None
    if persistent:  # a training script keeps its loader, and so its workers, across epochs
        plain_loader, _ = explorer_module.build_loader(_values(explorer_module, **base))

    def change(i: int) -> dict[str, Any]:
        if persistent:
            return {"step_ms": 0.0 if i % 2 == 0 else 0.1}
        return {"batch_size": 16 if i % 2 == 0 else 32}

    def plain(i: int) -> float:
        start = time.perf_counter()
        loader = plain_loader
        if loader is None:
            loader, _ = explorer_module.build_loader(_values(explorer_module, **base,
                                                             **change(i)))
        for _batch in loader:
            pass
        return (time.perf_counter() - start) * 1000

    timings = _Timings()
    totals: list[float] = []
    plains: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name in STAGES}
    fresh_workers = 0
    try:
        with _instrumented(timings):
            explorer.rerun(**change(1))  # warm-up: forkserver preload, fonts, caches
            plain(1)
            stall0, t0 = cpu_stall_us(), time.perf_counter()
            for i in range(reps):
                for first in ((True, False) if i % 2 == 0 else (False, True)):
                    if not first:
                        plains.append(plain(i))
                        continue
                    timings.spent, timings.on = {}, True
                    start = time.perf_counter()
                    run = explorer.rerun(**change(i))
                    totals.append((time.perf_counter() - start) * 1000)
                    timings.on = False
                    ms = {k: v * 1000 for k, v in timings.spent.items()}
                    inner = sum(ms.get(k, 0.0) for k in ("start workers", "Run build",
                                                           "stop workers"))
                    ms["pass"] = ms.get("play", 0.0) - inner
                    ms["widget update"] = totals[-1] - sum(
                        ms.get(k, 0.0) for k in ("build loader", "play", "draw", "encode"))
                    for name in STAGES:
                        parts[name].append(ms.get(name, 0.0))
                    fresh_workers += any(e.kind == "worker_start" for e in run.events)
                    if run.summary()["delivered"] != N:
                        raise AssertionError(f"a re-run delivered {run.summary()['delivered']}")
            wall = time.perf_counter() - t0
            stall1 = cpu_stall_us()
    finally:
        explorer.close()
        if plain_loader is not None and plain_loader._iterator is not None:
            plain_loader._iterator._shutdown_workers()
    pressure = (None if stall0 is None or stall1 is None
                else round(100 * (stall1 - stall0) / 1e6 / wall))
    median, p95 = statistics.median(totals), _p95(totals)
    plain_median, plain_p95 = statistics.median(plains), _p95(plains)
    ratio, over = median / plain_median, median - plain_median
    goal = start_method == "fork" and not persistent and cost_ms == 0
    met = ratio <= GOAL_RATIO and over <= GOAL_OVER_MS and p95 / plain_median <= GOAL_P95_RATIO
    row: dict[str, Any] = {
        "case": f"{start_method}{' (preload)' if start_method == 'forkserver' else ''}"
                f"{', persistent' if persistent else ''}, cost_ms={cost_ms:g}",
        "re-runs": reps,
        "plain pass p50 ms": round(plain_median, 1),
        "plain pass p95 ms": round(plain_p95, 1),
        "rerun p50 ms": round(median, 1),
        "rerun p95 ms": round(p95, 1),
        "p50 ratio": round(ratio, 2),
        "p50 over plain ms": round(over, 1),
        "p95 / plain p50": round(p95 / plain_median, 2),
        **{f"{name} ms": round(statistics.median(parts[name]), 1) for name in STAGES},
        "fresh workers": f"{fresh_workers}/{reps}",
        "goal": (f"ratio <= {GOAL_RATIO:g}, over <= {GOAL_OVER_MS:g} ms, "
                 f"p95 <= {GOAL_P95_RATIO:g}x") if goal else "",
        "ok": ("yes" if met else "NO") if goal else "",
        "CPU pressure %": pressure,
    }
    log(f"{row['case']}: rerun p50 {row['rerun p50 ms']} ms (p95 {row['rerun p95 ms']}), "
        f"plain {row['plain pass p50 ms']} ms: {row['p50 ratio']}x, "
        f"+{row['p50 over plain ms']} ms; "
        + ", ".join(f"{name} {row[f'{name} ms']}" for name in STAGES))
    return row


def _render_rows(run: Run, reps: int) -> list[dict[str, Any]]:
    """Ways to draw one run, interleaved, in this thread's CPU time (ms)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dlviz.plot import plot_run

    explorer_module = _explorer_module()
    shared = FigureCanvasAgg(plot_run(run))
    cached = explorer_module._Canvas()
    fresh = explorer_module._Canvas()
    blitless = explorer_module._Canvas()
    plain_canvas = FigureCanvasAgg(plot_run(run))

    def before() -> None:  # what the explorer did before issue 15
        fig = plot_run(run)
        shared.figure = fig
        fig.set_canvas(shared)
        fig.savefig(io.BytesIO(), format="png", dpi=80, pil_kwargs={"compress_level": 1})
        fig.clear()

    def now(canvas: Any, keep: bool = True, blit: bool = True) -> Callable[[], None]:
        def once() -> None:
            if not keep:
                canvas.kept = None
            if not blit and hasattr(canvas, "background"):
                canvas.background = None  # the kept pixels drawn again: a full draw
            explorer_module.render_png(run, canvas=canvas)
        return once

    variants: dict[str, tuple[str, Callable[[], None]]] = {
        "before: plot_run + counts, savefig": ("what the explorer did", before),
        "no counts row, new figure, text per glyph": ("Agg's own text", now(plain_canvas)),
        "no counts row, new figure, text cache": ("figure not kept", now(fresh, False)),
        "no counts row, kept figure, text cache, no blitting": ("all drawn each time",
                                                                 now(blitless, blit=False)),
        "now: no counts row, kept figure, text cache, blitting": ("what the explorer does",
                                                                  now(cached)),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _, work in variants.values():
        work()  # warm-up
    for _ in range(reps):
        for name, (_, work) in variants.items():
            start = time.thread_time()
            work()
            cpu[name].append((time.thread_time() - start) * 1000)
    base = statistics.median(cpu["before: plot_run + counts, savefig"])
    rows = []
    for name, (note, _) in variants.items():
        median = statistics.median(cpu[name])
        rows.append({"case": f"render: {name}", "re-runs": reps,
                     "draw ms": round(median, 1), "goal": note,
                     "ok": f"{median / base:.2f} x before"})
    return rows


def main(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The run_all convention: run every case and return the rows."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    methods = multiprocessing.get_all_start_methods()
    reps_goal = 6 if quick else 30
    reps_other = 3 if quick else 12
    rows = []
    if "fork" in methods:
        rows.append(measure_case("fork", False, 0.0, reps_goal, log))
        rows.append(measure_case("fork", False, 1.0, reps_other, log))
    if "forkserver" in methods:
        rows.append(measure_case("forkserver", False, 0.0, reps_other, log))
    if "spawn" in methods:
        rows.append(measure_case("spawn", True, 0.0, reps_other, log))
    explorer = _explorer_module().explore(n=N, num_workers=WORKERS, cost_ms=0.0)
    try:
        run = explorer.run
    finally:
        explorer.close()
    assert run is not None
    if hasattr(_explorer_module(), "_Canvas"):
        rows += _render_rows(run, 3 if quick else 15)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols)
              + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (a minute)")
    args = parser.parse_args()
    print(_markdown(main(quick=args.quick)))
