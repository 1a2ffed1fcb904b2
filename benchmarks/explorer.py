"""Explorer latency: from a slider change to the new picture (issue "Interactive explorer").

What is timed: ``explorer.rerun(step_ms=...)``, the path a slider takes (the
observer calls the same code in a thread), from the call to the new PNG being in
the widget: build the DataLoader, record one real pass (workers started, run,
stopped), ``plot_run``, draw and encode the PNG, update the widgets. The value
moved is ``step_ms`` (0 <-> 0.1 ms), a loop setting, so every case records the
same work and persistent workers can be reused. Where the time goes is measured
in the same re-runs, by timing the functions the explorer calls:

- ``record``: :func:`dlviz.recorder.play` (the pass, worker start and stop
  included; ``plain pass`` is a plain ``for batch in loader`` over the same
  DataLoader, the floor for this column);
- ``plot_run``: building the matplotlib figure;
- ``png``: ``savefig``: drawing the figure (mostly text) and zlib-encoding it;
- ``other``: the rest (widgets, HTML, base64).

Cases: fork with 2 workers over 256 cheap samples (``cost_ms=0``), the figure
the targets are for: median <= 150 ms, p95 <= 250 ms over >= 30 re-runs; then
spawn and forkserver, with and without persistent workers (fewer re-runs: a
spawned worker imports torch). Separate ``render:`` rows time the drawing of one
run in the ways the explorer could draw it (fresh canvas vs the explorer's
shared canvas, PNG compression 6 vs 1, dpi 80 vs 72), interleaved, in this
thread's CPU time (steadier than wall time on a shared machine), compared on
their fastest repetition.

The ``CPU pressure`` column is Linux PSI "some" while the case ran: the share of
the time some task waited for a CPU (other jobs on the machine raise it). On a
busy 2-core machine the latencies are several times those of an idle one.

Run: ``.venv/bin/python benchmarks/explorer.py`` (``--quick`` for a smoke run),
or through ``benchmarks/run_all.py``.
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
TARGET_MEDIAN_MS, TARGET_P95_MS = 150.0, 250.0


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

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start
        return timed


@contextmanager
def _instrumented(timings: _Timings) -> Iterator[None]:
    """Time ``play`` and ``plot_run`` and ``render_png`` as the explorer calls them."""
    explorer_module = _explorer_module()
    saved = {name: getattr(explorer_module, name) for name in ("play", "plot_run",
                                                                "render_png")}
    try:
        for name, func in saved.items():
            setattr(explorer_module, name, timings.wrap(name, func))
        yield
    finally:
        for name, func in saved.items():
            setattr(explorer_module, name, func)


def _plain_pass_ms(start_method: str, persistent: bool, reps: int) -> float:
    """A plain loop over the same DataLoader the explorer builds (no recording)."""
    explorer_module = _explorer_module()
    values = {**{k: c.default for k, c in explorer_module.CONTROLS.items()},
              "n": N, "num_workers": WORKERS, "cost_ms": 0.0, "start_method": start_method,
              "persistent_workers": persistent}
    times = []
    loader, _ = explorer_module.build_loader(values)
    for _ in range(reps + 1):  # the first pass starts persistent workers: not counted
        start = time.perf_counter()
        for _batch in loader:
            pass
        times.append((time.perf_counter() - start) * 1000)
    if persistent:
        iterator = loader._iterator
        if iterator is not None:
            iterator._shutdown_workers()
    return statistics.median(times[1:])


def measure_case(start_method: str, persistent: bool, reps: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """``reps`` timed re-runs of one explorer (after one untimed warm-up re-run)."""
    explorer = _explorer_module().explore(n=N, num_workers=WORKERS, cost_ms=0.0,
                                          start_method=start_method,
                                          persistent_workers=persistent)
    try:
        explorer.rerun(step_ms=0.1)  # warm-up: forkserver preload, fonts, caches
        totals: list[float] = []
        parts: dict[str, list[float]] = {"play": [], "plot_run": [], "render_png": [],
                                         "other": []}
        stall0, t0 = cpu_stall_us(), time.perf_counter()
        fresh_workers = 0
        for i in range(reps):
            timings = _Timings()
            with _instrumented(timings):
                start = time.perf_counter()
                run = explorer.rerun(step_ms=0.0 if i % 2 == 0 else 0.1)
                totals.append((time.perf_counter() - start) * 1000)
            for name in ("play", "plot_run", "render_png"):
                parts[name].append(timings.spent.get(name, 0.0) * 1000)
            parts["other"].append(totals[-1] - parts["play"][-1] - parts["render_png"][-1])
            fresh_workers += any(e.kind == "worker_start" for e in run.events)
            if run.summary()["delivered"] != N:
                raise AssertionError(f"a re-run delivered {run.summary()['delivered']}")
        wall = time.perf_counter() - t0
        stall1 = cpu_stall_us()
    finally:
        explorer.close()
    pressure = (None if stall0 is None or stall1 is None
                else round(100 * (stall1 - stall0) / 1e6 / wall))
    plain = _plain_pass_ms(start_method, persistent, max(3, reps // 3))
    med = {name: statistics.median(values) for name, values in parts.items()}
    median, p95 = statistics.median(totals), _p95(totals)
    targeted = start_method == "fork" and not persistent
    row = {
        "case": f"{start_method}{', persistent' if persistent else ''}",
        "re-runs": reps,
        "median ms": round(median, 1),
        "p95 ms": round(p95, 1),
        "min ms": round(min(totals), 1),
        "record ms": round(med["play"], 1),
        "plain pass ms": round(plain, 1),
        "plot_run ms": round(med["plot_run"], 1),
        "png ms": round(med["render_png"] - med["plot_run"], 1),
        "other ms": round(med["other"], 1),
        "fresh workers": f"{fresh_workers}/{reps}",
        "target": f"median <= {TARGET_MEDIAN_MS:g}, p95 <= {TARGET_P95_MS:g}" if targeted
        else "",
        "ok": ("yes" if median <= TARGET_MEDIAN_MS and p95 <= TARGET_P95_MS else "NO")
        if targeted else "",
        "CPU pressure %": pressure,
    }
    log(f"{row['case']}: median {row['median ms']} ms, p95 {row['p95 ms']} ms "
        f"(record {row['record ms']}, plot_run {row['plot_run ms']}, png {row['png ms']})")
    return row


def _render_rows(run: Run, reps: int) -> list[dict[str, Any]]:
    """Ways to draw one run, interleaved, in this thread's CPU time (ms)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dlviz.plot import plot_run

    shared = FigureCanvasAgg(plot_run(run))

    def draw(dpi: int, level: int, reuse: bool) -> Callable[[], None]:
        def once() -> None:
            fig = plot_run(run)
            if reuse:
                shared.figure = fig
                fig.set_canvas(shared)
            else:
                FigureCanvasAgg(fig)
            fig.savefig(io.BytesIO(), format="png", dpi=dpi,
                        pil_kwargs={"compress_level": level})
        return once

    def plot_only() -> None:
        plot_run(run)

    variants: dict[str, tuple[str, Callable[[], None]]] = {
        "plot_run only": ("figure built, not drawn", plot_only),
        "before: fresh canvas, zlib 6, dpi 80": ("what the explorer did", draw(80, 6, False)),
        "fresh canvas, zlib 1, dpi 80": ("PNG compression alone", draw(80, 1, False)),
        "now: shared canvas, zlib 1, dpi 80": ("what the explorer does", draw(80, 1, True)),
        "shared canvas, zlib 1, dpi 72": ("smaller picture (864 px)", draw(72, 1, True)),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _, work in variants.values():
        work()  # warm-up
    for _ in range(reps):
        for name, (_, work) in variants.items():
            start = time.thread_time()
            work()
            cpu[name].append((time.thread_time() - start) * 1000)
    # compared on the fastest repetition: the one least disturbed by other jobs
    base = min(cpu["before: fresh canvas, zlib 6, dpi 80"])
    rows = []
    for name, (note, _) in variants.items():
        best = min(cpu[name])
        rows.append({"case": f"render: {name}", "re-runs": reps,
                     "median ms": round(statistics.median(cpu[name]), 1),
                     "min ms": round(best, 1), "fresh workers": "", "target": note,
                     "ok": f"min {best / base:.2f} x before" if name.startswith(
                         ("fresh", "now", "shared")) else ""})
    return rows


def main(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The run_all convention: run every case and return the rows."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    methods = multiprocessing.get_all_start_methods()
    reps_fork = 5 if quick else 40
    reps_other = 2 if quick else 8
    rows = [measure_case("fork", False, reps_fork, log)] if "fork" in methods else []
    if "fork" in methods and not quick:
        rows.append(measure_case("fork", True, reps_other * 2, log))
    for method in ("spawn", "forkserver"):
        if method not in methods:
            continue
        for persistent in (False, True):
            if quick and persistent:
                continue
            rows.append(measure_case(method, persistent, reps_other, log))
    explorer = _explorer_module().explore(n=N, num_workers=WORKERS, cost_ms=0.0)
    try:
        run = explorer.run
    finally:
        explorer.close()
    assert run is not None
    rows += _render_rows(run, 3 if quick else 25)
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
