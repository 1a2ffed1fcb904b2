"""Memory and time per learner: every lesson executed as a learner runs it (issue 16).

Each lesson (``notebooks/NN_*.ipynb``) is executed in full mode (``smoke=False``)
through papermill with the ``dlviz`` kernel, once per start method (fork, what Linux
uses; spawn, what macOS and Windows use). While it runs, the proportional set size
(PSS, ``psutil.Process.memory_full_info().pss``) of the kernel's whole process tree
(the kernel and every DataLoader worker, forkserver and resource tracker it starts)
is summed every ``--interval`` seconds; the table gives the peak of that sum, the
kernel's own share of it, the most processes seen at once, the cell that was running
at the peak (its index in the notebook, from papermill's cell timestamps), and the
lesson's wall-clock run time.

PSS shares each page among the processes that map it, so forked workers that
share the kernel's torch pages are not counted twice (RSS would). It shares them
with processes outside the tree too (on a shared machine, other people's Pythons
that map the same torch libraries), which lowers the sum. So each row also gives
``alone_mib``, the peak of the unique set size (USS) of every process plus
the kernel's shared pages (RSS - USS) once, an estimate of the tree's memory on a
machine where nothing else maps those files (it assumes the workers share no page
that the kernel does not map: true of forked and spawned workers, not quite of a
forkserver's). Sampling can miss a peak shorter than the interval: read the figures
as "at least".

    .venv/bin/python benchmarks/memory.py                    # every lesson, fork + spawn
    .venv/bin/python benchmarks/memory.py 00 08 --methods spawn
    .venv/bin/python benchmarks/memory.py --quick            # smoke mode, fork only

Rows are printed as each lesson finishes (a long run can be read while it goes), then
the whole table. ``benchmarks/run_all.py`` calls :func:`main` too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "dlviz"
MiB = 2**20


def lessons(prefixes: list[str] | None = None) -> list[Path]:
    """The lesson notebooks, or those whose names start with one of ``prefixes``."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(x) for x in prefixes)]
    return found


def tree_pss(root: psutil.Process) -> tuple[int, int, int, int]:
    """(summed PSS in bytes, process count, PSS of the kernel, the tree's memory were
    it alone: summed USS plus the kernel's shared pages) of ``root``'s descendants (not
    ``root``: that is papermill itself; its children are the kernel and what the kernel
    starts; the kernel is the child that runs ``ipykernel``)."""
    total = count = kernel = alone = 0
    try:
        family = root.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0, 0
    for process in family:
        try:
            info = process.memory_full_info()
            total += info.pss
            alone += info.uss
            count += 1
            if process.ppid() == root.pid and "ipykernel" in " ".join(process.cmdline()):
                kernel = info.pss
                alone += info.rss - info.uss
        except psutil.Error:  # exited between the listing and the read
            continue
    return total, count, kernel, alone


def cell_at(notebook: Path, when: float) -> int | None:
    """Index of the cell papermill was executing at wall-clock time ``when``."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for index, cell in enumerate(cells):
        meta = cell.get("metadata", {}).get("papermill", {})
        if not meta.get("start_time") or not meta.get("end_time"):
            continue
        start, end = (datetime.datetime.fromisoformat(meta[k].replace("Z", "+00:00")).timestamp()
                      for k in ("start_time", "end_time"))
        if start <= when <= end:
            return index
    return None


def measure(path: Path, method: str, smoke: bool, interval: float,
            timeout_s: float) -> dict[str, Any]:
    """Execute one lesson with papermill in a subprocess; sample its kernel's tree."""
    with tempfile.TemporaryDirectory(prefix="dlviz-memory-") as tmp:
        out = Path(tmp) / path.name
        cmd = [sys.executable, "-m", "papermill", "--kernel", KERNEL, "--cwd", str(NOTEBOOKS),
               "--no-progress-bar", "-p", "smoke", str(smoke), "-p", "start_method", method,
               str(path), str(out)]
        started = time.monotonic()
        papermill = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        root = psutil.Process(papermill.pid)
        peak = most = peak_kernel = peak_alone = 0
        peak_at = time.time()
        try:
            while papermill.poll() is None:
                pss, count, kernel, alone = tree_pss(root)
                if pss > peak:
                    peak, peak_kernel, peak_at = pss, kernel, time.time()
                peak_alone = max(peak_alone, alone)
                most = max(most, count)
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"{path.name} ({method}) ran over {timeout_s:.0f} s")
                time.sleep(interval)
        finally:
            if papermill.poll() is None:
                for child in root.children(recursive=True):
                    child.kill()
                papermill.kill()
            err = papermill.communicate()[1].decode(errors="replace")
        elapsed = time.monotonic() - started
        peak_cell = cell_at(out, peak_at)
    if papermill.returncode != 0:
        # papermill ends its report with the cell's exception: name that
        lines = [line for line in err.splitlines() if line.strip()]
        raise RuntimeError(f"{path.name} ({method}) failed: " + " / ".join(lines[-3:]))
    return {"lesson": path.stem, "start_method": method, "peak_pss_mib": round(peak / MiB),
            "kernel_at_peak_mib": round(peak_kernel / MiB), "alone_mib": round(peak_alone / MiB),
            "processes": most,
            "peak_cell": peak_cell, "run_s": round(elapsed, 1)}


def main(quick: bool = False, prefixes: list[str] | None = None,
         methods: tuple[str, ...] | None = None, interval: float = 0.1,
         timeout_s: float = 1800.0) -> list[dict[str, Any]]:
    if shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None:
        print("warning: jupyter is not next to this python", file=sys.stderr)
    methods = methods or (("fork",) if quick else ("fork", "spawn"))
    rows = []
    for path in lessons(prefixes):
        for method in methods:
            try:
                row = measure(path, method, quick, interval, timeout_s)
            except (RuntimeError, TimeoutError) as exc:
                row = {"lesson": path.stem, "start_method": method, "error": str(exc)[-300:]}
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lessons", nargs="*", help="lesson number prefixes (default: all)")
    ap.add_argument("--methods", nargs="+", choices=["fork", "spawn", "forkserver"])
    ap.add_argument("--quick", action="store_true", help="smoke mode (fork only by default)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import markdown

    rows = main(args.quick, args.lessons, tuple(args.methods) if args.methods else None,
                args.interval)
    print(markdown(rows))


if __name__ == "__main__":
    _cli()
