"""A Run at the scale of a real epoch: build, memory, queries and drawing.

One epoch of ``SyntheticDataset(n)`` (no work per sample), ``batch_size=256``,
``num_workers=2`` (fork), recorded with ``dlviz.trace`` as a practitioner would
audit their own loader, at n = 4096, 128k and 1.28M (ImageNet's train split).
Each size runs in a fresh process (so its RSS is its own), twice: once for the
times, once under ``tracemalloc`` for the bytes the Run holds (tracing slows
everything ~10x, so no time is taken then).

Printed per size: plain and traced pass (s, medians of interleaved repetitions:
15 at 4096, 7 at 128k, 3 at 1.28M) and the paired median of plain/traced, building
the Run (ms, and us per sample), the Run's bytes per sample (tracemalloc), the process's RSS
growth over the whole audit (pass, build, summary, plot), ``summary()`` (ms),
``fate(i)`` (us, median of 1000 random indices), ``plot_run`` to PNG (s), and in a
third process the peak RSS of one whole audit (pass, build, summary, plot) over the
RSS it started from (after matplotlib and a first pass were warmed up).
``--big`` adds a 10M-sample pass with 8 workers: whether every fetch event was
kept, the event log's spill to disk, and the peak RSS.

    .venv/bin/python benchmarks/scale.py            # 4096, 128k, 1.28M
    .venv/bin/python benchmarks/scale.py --big      # and 10M with 8 workers
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

SIZES = (4096, 131_072, 1_281_167)


def reps(n: int) -> int:
    """Repetitions of the plain and traced pass at size ``n`` (fewer for big epochs)."""
    return 15 if n <= 5000 else 7 if n <= 200_000 else 3
TARGETS = "build <= 0.3 us/sample; Run <= 64 B/sample; audit <= 300 MB over start; " \
          "summary <= 50 ms, fate <= 50 us, plot <= 1 s at 1.28M"


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def _peak_rss_mb() -> float:
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _loader(n: int, workers: int) -> Any:
    from torch.utils.data import DataLoader

    from dlviz.datasets import SyntheticDataset

    return DataLoader(SyntheticDataset(n), batch_size=256, num_workers=workers)


def measure(n: int, workers: int, memory: bool = False, audit: bool = False
            ) -> dict[str, Any]:
    """One size, in this process (called in a child by :func:`main`)."""
    import numpy as np

    import dlviz
    import dlviz.plot

    # what a practitioner's process has done before: matplotlib imported, fonts loaded
    dlviz.plot_run(dlviz.record(_loader(64, 0))).savefig(io.BytesIO(), format="png")
    for _ in _loader(4096, workers):  # workers started once (the OS caches torch's files)
        pass
    start_rss = _rss_mb()
    out: dict[str, Any] = {"samples": n}
    if audit:  # one audit as a practitioner runs it: its peak RSS over the start
        traced = dlviz.trace(_loader(n, workers))
        for _ in traced:
            pass
        run = traced.run
        run.summary()
        dlviz.plot_run(run).savefig(io.BytesIO(), format="png")
        out["audit_rss_mb"] = _peak_rss_mb() - start_rss
        return out
    if memory:
        traced = dlviz.trace(_loader(n, workers))
        for _ in traced:
            pass
        tracemalloc.start()
        run = traced.run
        out["run_bytes_per_sample"] = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
        return out
    plain, traced_s, builds = [], [], []
    for _ in range(reps(n)):  # interleaved: the machine's drift hits both alike
        t = time.perf_counter()
        for _ in _loader(n, workers):
            pass
        plain.append(time.perf_counter() - t)
        traced = dlviz.trace(_loader(n, workers))
        t = time.perf_counter()
        for _ in traced:
            pass
        traced_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        run = traced.run
        builds.append(time.perf_counter() - t)
        del traced
    out["plain_s"], out["traced_s"] = statistics.median(plain), statistics.median(traced_s)
    out["ratio"] = statistics.median(p / q for p, q in zip(plain, traced_s))  # paired
    out["build_us_per_sample"] = statistics.median(builds) / n * 1e6
    out["build_ms"] = statistics.median(builds) * 1e3
    t = time.perf_counter()
    summary = run.summary()
    out["summary_ms"] = (time.perf_counter() - t) * 1e3
    assert summary["delivered"] == n, summary
    rng = np.random.default_rng(0)
    times = []
    for i in rng.integers(0, n, 1000).tolist():
        t = time.perf_counter_ns()
        run.fate(i)
        times.append(time.perf_counter_ns() - t)
    out["fate_us"] = statistics.median(times) / 1e3
    t = time.perf_counter()
    fig = dlviz.plot_run(run)
    fig.savefig(io.BytesIO(), format="png")
    out["plot_s"] = time.perf_counter() - t
    out["events"] = len(run.events)
    out["notes"] = "; ".join(run.notes)
    return out


def big(n: int = 10_000_000, workers: int = 8) -> dict[str, Any]:
    """A 10M-sample pass with 8 workers: every fetch kept? peak memory?"""
    import dlviz
    from dlviz import eventlog

    start = _rss_mb()
    traced = dlviz.trace(_loader(n, workers))
    t = time.perf_counter()
    for _ in traced:
        pass
    pass_s = time.perf_counter() - t
    spilled = sum(os.path.getsize(os.path.join(traced.log.spill_dir, f))
                  for f in os.listdir(traced.log.spill_dir)) if os.path.isdir(
                      traced.log.spill_dir) else 0
    t = time.perf_counter()
    run = traced.run
    build_s = time.perf_counter() - t
    fetches = len(run.of_kind("fetch"))
    return {"samples": n, "workers": workers, "pass_s": pass_s, "build_s": build_s,
            "fetch_events": fetches, "all_kept": fetches == n,
            "spilled_mb": spilled / 2**20,
            "shared_log_mb": traced.log.buffer.numel() * 8 / 2**20,
            "region_records": eventlog.REGION_RECORDS,
            "start_rss_mb": start, "peak_rss_mb": _peak_rss_mb(),
            "run_mb": run.nbytes / 2**20}


def _child(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(quick: bool = False, sizes: tuple[int, ...] = SIZES, with_big: bool = False
         ) -> list[dict[str, Any]]:
    rows = []
    for n in sizes[:2] if quick else sizes:
        row = _child(["--size", str(n)])
        row.update(_child(["--size", str(n), "--memory"]))
        row.update(_child(["--size", str(n), "--audit"]))
        rows.append({
            "samples": n, "events": row["events"],
            "plain / traced s": f"{row['plain_s']:.2f} / {row['traced_s']:.2f}",
            "plain/traced (paired median)": f"{row['ratio']:.2f}",
            "build ms": f"{row['build_ms']:.1f}",
            "build us/sample": f"{row['build_us_per_sample']:.3f}",
            "Run B/sample": f"{row['run_bytes_per_sample']:.0f}",
            "audit RSS +MB": f"{row['audit_rss_mb']:.0f}",
            "summary() ms": f"{row['summary_ms']:.2f}",
            "fate(i) us": f"{row['fate_us']:.1f}",
            "plot_run s": f"{row['plot_s']:.2f}",
        })
    if with_big:
        rows.append({"samples": "10M, 8 workers", **_child(["--big"])})
    return rows


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--size" in argv:
        size = int(argv[argv.index("--size") + 1])
        print(json.dumps(measure(size, 2, memory="--memory" in argv, audit="--audit" in argv)))
    elif argv == ["--big"]:
        print(json.dumps(big()))
    else:
        for r in main(with_big="--big" in argv):
            print(r)
        print("targets:", TARGETS)
