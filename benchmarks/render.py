"""How fast dlviz draws (issue 4): timeline spans, a big ledger, the explorer's redraw.

Records three real runs, then times each case (medians of several repeats, Agg): wall
clock, and this process's CPU time (steadier on a shared machine):

- ``spans``: drawing the span collections of :func:`dlviz.plot_timeline` for a run
  with 4096 fetch spans (4 workers x 64 batches each of 16). Target <= 100 ms (one
  PolyCollection per lane and kind; one artist per span costs ~2 s);
- ``timeline``: the whole :func:`dlviz.plot_timeline` of that run on a fresh Axes
  (lanes, markers, legend, prefetch panel), then ``canvas.draw()``;
- ``ledger``: :func:`dlviz.plot_ledger` of 100 000 indices (one ``imshow``), then
  ``canvas.draw()``. Target <= 100 ms;
- ``plot_run``: what the explorer does on every slider change: :func:`dlviz.plot_run`
  of a 256-sample 2-worker run, then ``savefig`` to PNG at dpi 80. Target < 100 ms;
- ``floor``: matplotlib alone: one empty Axes, ``canvas.draw()``: the cost no plot
  can go under on this machine (read the other rows against it).

Run ``python benchmarks/render.py`` for a markdown table, or call :func:`main`,
which returns the rows.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import dlviz  # noqa: E402
from dlviz.datasets import SyntheticDataset  # noqa: E402


def _median_ms(work: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU (this process) milliseconds of ``work()``."""
    work()  # warm up: fonts, caches
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return round(statistics.median(wall), 1), round(statistics.median(cpu), 1)


def record_runs() -> dict[str, dlviz.Run]:
    """The three runs to draw (recorded with real workers; a few seconds)."""
    spans = dlviz.record(DataLoader(SyntheticDataset(4096), batch_size=16, num_workers=4))
    big = DataLoader(SyntheticDataset(100_000), batch_size=500, num_workers=2, shuffle=True)
    ledger = dlviz.record(big, max_batches=150)
    explorer = dlviz.record(DataLoader(SyntheticDataset(256, cost_ms=0.2), batch_size=16,
                                       num_workers=2), step_ms=0.5)
    return {"timeline": spans, "ledger": ledger, "plot_run": explorer}


def main(repeats: int = 7) -> list[dict[str, Any]]:
    """Time each case; returns rows ``{case, size, median_ms, cpu_ms, target_ms}``."""
    runs = record_runs()

    def timeline() -> Any:
        fig = Figure(figsize=(12, 4), dpi=80)
        ax = dlviz.plot_timeline(runs["timeline"], fig.add_axes((0.08, 0.3, 0.7, 0.6)))
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return ax, canvas.get_renderer()

    ax, renderer = timeline()
    collections = [c for c in ax.collections
                   if str(c.get_gid()).startswith(("fetch:", "collate:"))]

    def spans() -> None:
        for collection in collections:
            collection.draw(renderer)

    def ledger() -> None:
        fig = Figure(figsize=(8, 6), dpi=80)
        dlviz.plot_ledger(runs["ledger"], fig.add_axes((0.1, 0.1, 0.6, 0.8)))
        FigureCanvasAgg(fig).draw()

    def plot_run() -> None:
        dlviz.plot_run(runs["plot_run"]).savefig(io.BytesIO(), format="png", dpi=80)

    def floor() -> None:
        fig = Figure(figsize=(12, 4), dpi=80)
        fig.add_axes((0.1, 0.1, 0.8, 0.8))
        FigureCanvasAgg(fig).draw()

    fetches = sum(1 for e in runs["timeline"].events if e.kind == "fetch")
    drawn = sum(len(c.get_paths()) for c in collections)
    cases = [
        ("spans", f"{drawn} spans ({fetches} fetches) in {len(collections)} collections",
         spans, 100.0),
        ("timeline", f"plot_timeline, {fetches} fetch spans, 4 workers", timeline, None),
        ("ledger", f"{runs['ledger'].dataset_size} indices", ledger, 100.0),
        ("plot_run", "256 samples, 2 workers, savefig dpi 80", plot_run, 100.0),
        ("floor", "one empty Axes, canvas.draw()", floor, None),
    ]
    rows = []
    for name, size, work, target in cases:
        wall, cpu = _median_ms(work, repeats)
        rows.append({"case": name, "size": size, "median_ms": wall, "cpu_ms": cpu,
                     "target_ms": target})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | size | median ms | cpu ms | target ms |", "|---|---|---:|---:|---:|"]
    for r in rows:
        target = "" if r["target_ms"] is None else f"<= {r['target_ms']:g}"
        lines.append(f"| {r['case']} | {r['size']} | {r['median_ms']:.1f} | "
                     f"{r['cpu_ms']:.1f} | {target} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    print(table(main(parser.parse_args().repeats)))
