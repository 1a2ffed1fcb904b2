"""Recorder overhead: plain DataLoader vs dlviz.trace vs torch.profiler vs viztracer.

Every variant runs the same workloads, interleaved: for each repetition every
variant runs once, in an order that rotates from one repetition to the next, so
drift of the machine (frequency, noisy neighbours) hits all variants alike.

What is timed (the same way for every variant): one full pass, from ``iter()``
to the ``StopIteration`` of a DataLoader built just before (not timed), so worker
start-up and shut-down are inside. Variant by variant:

- ``plain``: ``for batch in loader``;
- ``dlviz``: ``for batch in dlviz.trace(loader)``: building the traced loader
  (its event log) is inside the timed loop; building the Run is not, because
  dlviz does it only when asked (``traced.run``): it is timed apart, as
  ``dlviz: build Run``, like the profilers' ``finalize ms``;
- ``torch.profiler``: ``with torch.profiler.profile(CPU): for batch in loader``,
  timed from before entering to the last batch; stopping the profiler (its
  ``__exit__``) is reported apart, as ``finalize ms``;
- ``viztracer``: ``with VizTracer(output_file=<temp dir>): for batch in loader``
  (inline, not the CLI), timed the same way; its ``__exit__`` (stop and save the
  JSON) is ``finalize ms``.

``ratio`` is throughput relative to plain: median(plain) / median(variant), the
figure the targets are judged on. Two more robust readings, because a shared
virtual machine can run at half speed for a second at a time: ``paired``, the
median over repetitions of plain / variant within the same repetition, and
``best``, min(plain) / min(variant). The plain row notes the machine's CPU
pressure while that workload ran (Linux PSI "some": the share of the time any
task waited for a CPU; other jobs on the machine raise it, and so do two workers
plus the main process on two cores).
Separately, ``dlviz: build Run`` times the first ``traced.run`` on the pass just
recorded (freezing its notes, then :func:`dlviz.assemble.build_run`), an
absolute time; ``benchmarks/scale.py`` times the same at epoch scale.

Workloads: ``dlviz.datasets.SyntheticDataset`` with ``work="sleep"`` (a sample
waits, like I/O: the wall time per sample is stable, and on a 2-core machine two
spinning workers plus the main process would measure the scheduler rather than
the recorder; ``--work cpu`` spins instead). ``time.sleep`` overshoots, so the
real per-sample cost is printed (``us/sample``, from plain with 0 workers).
Batch size 32, num_workers 0 and 2:

- no work: 4096 samples, ``cost_ms=0``;
- 0.1 ms/sample: 4096 samples, ``cost_ms=0.1``;
- 1 ms/sample: 1024 samples, ``cost_ms=1.0`` (4096 x 1 ms would take the whole
  benchmark past three minutes on two cores).

Run: ``.venv/bin/python benchmarks/overhead.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _machine import cpu_stall_us
from torch.utils.data import DataLoader

import dlviz
from dlviz.datasets import SyntheticDataset

BATCH = 32
VARIANTS = ("plain", "dlviz", "torch.profiler", "viztracer")


def _workloads(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [
            {"name": "no work", "n": 256, "cost_ms": 0.0, "reps": 2},
            {"name": "1 ms/sample", "n": 32, "cost_ms": 1.0, "reps": 2},
        ]
    return [
        {"name": "no work", "n": 4096, "cost_ms": 0.0, "reps": 31},  # a pass: ~30 ms
        # the target 0.97 is 3% of a pass, about what a phase of a shared machine moves
        # a single pass by: 15 repetitions gave medians 0.968-0.99, 41 gave 0.985
        {"name": "0.1 ms/sample", "n": 4096, "cost_ms": 0.1, "reps": 31},
        {"name": "1 ms/sample", "n": 1024, "cost_ms": 1.0, "reps": 9},
    ]


# ---------------------------------------------------------------- one timed pass
def _loader(wl: dict[str, Any], workers: int, work: str) -> DataLoader[Any]:
    dataset = SyntheticDataset(wl["n"], cost_ms=wl["cost_ms"], work=work)
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers)


def _plain(loader: DataLoader[Any], look: bool, tmp: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    n = 0
    for _ in loader:
        n += 1
    return {"s": time.perf_counter() - t0, "batches": n}


def _dlviz(loader: DataLoader[Any], look: bool, tmp: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    it = iter(dlviz.trace(loader))  # exactly what `for batch in dlviz.trace(loader)` does
    n = 0
    for _ in it:
        n += 1
    elapsed = time.perf_counter() - t0
    epoch = it.epoch
    gc.collect()
    out: dict[str, Any] = {"s": elapsed, "batches": n}
    t0 = time.perf_counter()
    run = epoch.result()  # what the first ``traced.run`` costs: freeze the notes, build
    out["build_s"] = time.perf_counter() - t0
    out["events"], out["occurrences"] = len(run.events), len(run.occurrences)
    if look:
        fetches = [e for e in run.events if e.kind == "fetch"]
        lanes = sorted({e.worker for e in fetches})
        out["sees"] = (f"{len(fetches)} fetches on lanes {lanes}, "
                       f"{len(run.events)} events; ledger {run.summary()['delivered']} delivered")
    return out


def _profiler(loader: DataLoader[Any], look: bool, tmp: str) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    prof = profile(activities=[ProfilerActivity.CPU])
    prof.__enter__()
    n = 0
    for _ in loader:
        n += 1
    elapsed = time.perf_counter() - t0
    prof.__exit__(None, None, None)
    out: dict[str, Any] = {"s": elapsed, "batches": n,
                           "finalize_s": time.perf_counter() - t0 - elapsed}
    if look:
        names = [e.name for e in prof.events()]
        nexts = sum(1 for x in names if x.startswith("enumerate(DataLoader)"))
        # torch.tensor(i) in __getitem__ shows as aten::lift_fresh, one per sample
        samples = sum(1 for x in names if x == "aten::lift_fresh")
        out["sees"] = (f"{nexts} __next__ spans, {samples} per-sample ops "
                       f"(aten::lift_fresh), {len(names)} events, main process only")
    return out


def _viztracer(loader: DataLoader[Any], look: bool, tmp: str) -> dict[str, Any]:
    from viztracer import VizTracer

    path = os.path.join(tmp, "viztracer.json")
    t0 = time.perf_counter()
    tracer = VizTracer(output_file=path, verbose=0)
    tracer.__enter__()
    n = 0
    for _ in loader:
        n += 1
    elapsed = time.perf_counter() - t0
    tracer.__exit__(None, None, None)
    out: dict[str, Any] = {"s": elapsed, "batches": n,
                           "finalize_s": time.perf_counter() - t0 - elapsed}
    if look:
        with open(path) as f:
            events = json.load(f)["traceEvents"]
        calls = [e for e in events if e.get("ph") == "X"]
        getitem = sum(1 for e in calls if "__getitem__" in e.get("name", ""))
        pids = {e.get("pid") for e in calls}
        size = os.path.getsize(path) / 1e6
        out["sees"] = (f"{getitem} __getitem__ calls, {len(calls)} calls from "
                       f"{len(pids)} process(es), {size:.1f} MB JSON")
    if os.path.exists(path):
        os.remove(path)
    return out


RUNNERS: dict[str, Callable[[DataLoader[Any], bool, str], dict[str, Any]]] = {
    "plain": _plain,
    "dlviz": _dlviz,
    "torch.profiler": _profiler,
    "viztracer": _viztracer,
}


@contextlib.contextmanager
def _quiet_kineto() -> Iterator[None]:
    """Hide the ``USDT: ... profiler_start/stop`` lines torch.profiler writes to fd 2
    (KINETO_LOG_LEVEL is only read from the environment the process started with);
    anything else written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(("USDT:", "STAGE:")):
                    sys.stderr.write(line)


def _once(variant: str, wl: dict[str, Any], workers: int, work: str, look: bool,
          tmp: str) -> dict[str, Any]:
    loader = _loader(wl, workers, work)
    quiet = _quiet_kineto() if variant == "torch.profiler" else contextlib.nullcontext()
    with quiet:
        gc.collect()
        return RUNNERS[variant](loader, look, tmp)


# ---------------------------------------------------------------- the benchmark
def _target(variant: str, wl: dict[str, Any]) -> float | None:
    """The issue's targets for dlviz: 0.97 once a sample costs >= 100 us, else 0.85."""
    if variant != "dlviz":
        return None
    return 0.97 if wl["cost_ms"] >= 0.1 else 0.85


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def measure(quick: bool = False, work: str = "sleep", reps: int | None = None,
            workers: tuple[int, ...] = (0, 2), variants: tuple[str, ...] = VARIANTS,
            log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; one row per workload x workers x variant, plus build rows."""
    log = log or (lambda _msg: None)
    rows: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="dlviz-overhead-")
    try:
        # warm-up, untimed: first use of torch.profiler (kineto) alone takes seconds
        warm = {"name": "warm-up", "n": 64 if quick else 256, "cost_ms": 0.0}
        for w in workers[:1] if quick else workers:
            for v in variants:
                _once(v, warm, w, work, False, tmp)
        # torch's and the tools' long-lived objects leave the collector's view, so the
        # gc.collect() before each pass takes ~1 ms instead of ~120 ms; the young
        # generations that a pass allocates into are collected as usual
        gc.collect()
        gc.freeze()
        for wl in _workloads(quick):
            count = reps or wl["reps"]
            for w in workers:
                results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
                stall0, t_start = cpu_stall_us(), time.perf_counter()
                for r in range(count):
                    order = variants[r % len(variants):] + variants[:r % len(variants)]
                    for v in order:
                        results[v].append(_once(v, wl, w, work, look=(r == 0), tmp=tmp))
                batches = {res["batches"] for rs in results.values() for res in rs}
                if len(batches) != 1:
                    raise AssertionError(f"variants saw different batch counts: {batches}")
                wall = time.perf_counter() - t_start
                stall1 = cpu_stall_us()
                pressure = (None if stall0 is None or stall1 is None
                            else round(100 * (stall1 - stall0) / 1e6 / wall))
                log(f"{wl['name']}, {w} workers: {count} reps in {wall:.1f} s"
                    + ("" if pressure is None else f", CPU pressure {pressure}%"))
                rows += _rows(wl, w, work, results, pressure)
    finally:
        gc.unfreeze()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _rows(wl: dict[str, Any], workers: int, work: str,
          results: dict[str, list[dict[str, Any]]], pressure: int | None) -> list[dict[str, Any]]:
    med = {v: statistics.median(r["s"] for r in rs) for v, rs in results.items()}
    plain = med.get("plain")
    rows = []
    base = {
        "workload": wl["name"] + (f" ({work})" if wl["cost_ms"] > 0 else ""),
        "samples": wl["n"],
        "workers": workers,
    }
    best = {v: min(r["s"] for r in rs) for v, rs in results.items()}
    for v, rs in results.items():
        ratio = None if plain is None else plain / med[v]
        paired = ([p["s"] / x["s"] for p, x in zip(results["plain"], rs, strict=True)]
                  if plain is not None else [])
        target = _target(v, wl)
        finalize = [r["finalize_s"] for r in rs if "finalize_s" in r]
        row = {
            **base,
            "variant": v,
            "runs": len(rs),
            "median ms": _ms(med[v]),
            "min ms": _ms(best[v]),
            "ratio": None if ratio is None else round(ratio, 3),
            "paired": round(statistics.median(paired), 3) if paired else None,
            "best": None if plain is None else round(best["plain"] / best[v], 3),
            "target": "" if target is None else f">= {target}",
            "ok": "" if target is None or ratio is None else ("yes" if ratio >= target else "NO"),
            "finalize ms": _ms(statistics.median(finalize)) if finalize else "",
            "sees": rs[0].get("sees", ""),
        }
        if v == "plain":  # with 0 workers: the real cost of one sample, loader included
            row["sees"] = f"{med[v] * 1e6 / wl['n']:.1f} us wall per sample"
            if pressure is not None:  # PSI: share of the time a task waited for a CPU
                row["sees"] += f"; CPU pressure {pressure}% while measured"
        rows.append(row)
        if v == "dlviz":
            builds = [r["build_s"] for r in rs if "build_s" in r]
            build_ms = statistics.median(builds) * 1000
            rows.append({
                **base,
                "variant": "dlviz: build Run",
                "runs": len(builds),
                "median ms": round(build_ms, 2),
                "min ms": round(min(builds) * 1000, 2),
                "target": "<= 5 ms",
                "ok": "yes" if build_ms <= 5 else "NO",
                "finalize ms": "",
                "sees": f"build_run on {rs[0]['events']} events, {rs[0]['occurrences']} "
                        f"occurrences, right after the pass",
            })
    return rows


def main(quick: bool = False) -> list[dict[str, Any]]:
    """The run_all convention: run and return the rows (progress on stderr)."""
    return measure(quick=quick, log=lambda m: print(m, file=sys.stderr, flush=True))


# ---------------------------------------------------------------- printing
def markdown(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]

    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (a few seconds)")
    ap.add_argument("--work", choices=("sleep", "cpu"), default="sleep",
                    help="how a sample spends its cost (default: sleep)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per workload")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    variants = tuple(v for v in VARIANTS if v in args.variants or v == "plain")
    t0 = time.perf_counter()
    rows = measure(quick=args.quick, work=args.work, reps=args.reps,
                   workers=tuple(args.workers), variants=variants,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(rows))
    print(f"\ntorch {torch.__version__}, {os.cpu_count()} CPUs, start method "
          f"{torch.multiprocessing.get_start_method()}, total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
