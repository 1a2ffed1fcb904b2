"""The explorer in a real JupyterLab: a key press on a slider to the new picture.

The harness of ``tests/test_browser.py`` (JupyterLab on a free port, Debian's headless
Chromium driven by Playwright; never ``playwright install``): a notebook whose cell is
an explorer over 256 free samples (``cost_ms=0``), 2 workers, fork. The ``batch_size``
slider's handle is moved with the keyboard (32 <-> 33, alternating), and each press is
timed in the page (``performance.now()``, epoch milliseconds) against the kernel's own
clock (the cell wraps the explorer's refresh and writes its start and end to a file):

- ``key -> kernel``: the key press to the kernel starting the re-run (the widget's
  message to the kernel);
- ``kernel``: the re-run in the kernel (the pass, the picture, the widget update;
  ``benchmarks/explorer.py`` breaks it down);
- ``browser receive``: the kernel done to the new ``<img>`` in the page (the widget
  messages' trip, JupyterLab rendering the output);
- ``decode``: the new ``<img>`` to its picture decoded (``img.decode()``);
- ``key -> picture``: the key press to the new ``<img>`` (the figure of issue 15's goal:
  p50 <= 150 ms); ``... decoded``: to the decoded picture.

Skipped (no rows, a message) without chromium or playwright. Run:
``.venv/bin/python benchmarks/browser.py`` (``--quick``: 5 presses), or through
``benchmarks/run_all.py`` (``./dev bench``). Needs the ``dlviz`` kernel (``./dev test``
installs it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 150.0
TIMES = "kernel_times.jsonl"
SOURCE = f'''import json, time
import dlviz
explorer = dlviz.explore(controls=["batch_size", "num_workers"], n=256, batch_size=32,
                         num_workers=2, cost_ms=0.0)
_refresh = explorer._refresh
def _timed(values, superseded):
    start = time.time()
    _refresh(values, superseded)
    with open({TIMES!r}, "a") as f:
        f.write(json.dumps([start * 1000, time.time() * 1000]) + "\\n")
explorer._refresh = _timed
explorer'''
WATCH = """() => {
  const box = document.querySelector('.dlviz-explorer');
  window.dlvizBench = {t0: 0, t1: 0, t2: 0, old: ''};
  document.addEventListener('keydown', () => {
      window.dlvizBench.t0 = performance.timeOrigin + performance.now(); }, true);
  const seen = () => {
    const b = window.dlvizBench, img = box.querySelector('img');
    if (img === null || b.t1 || !img.src || img.src === b.old) return;
    b.t1 = performance.timeOrigin + performance.now();
    img.decode().then(() => { b.t2 = performance.timeOrigin + performance.now(); },
                      () => { b.t2 = -1; });
  };
  new MutationObserver(seen).observe(box, {subtree: true, childList: true,
                                           attributes: true, attributeFilter: ['src']});
}"""
ARM = """old => { Object.assign(window.dlvizBench, {t0: 0, t1: 0, t2: 0, old: old}); }"""


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def main(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The run_all convention: time ``reps`` key presses, return one row per stage."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sys.path.insert(0, str(ROOT / "tests"))
    import test_browser as harness

    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        log("browser: skipped (needs Debian's chromium and playwright)")
        return []
    reps = 5 if quick else 30
    stages: dict[str, list[float]] = {name: [] for name in (
        "key -> kernel", "kernel", "browser receive", "decode", "key -> picture",
        "key -> picture decoded")}
    with tempfile.TemporaryDirectory() as tmp, harness.jupyter_lab(Path(tmp), SOURCE) as lab, \
            sync_playwright() as p:
        times = Path(tmp) / "root" / TIMES
        browser = p.chromium.launch(executable_path=chromium, args=harness.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(f"{lab['base']}/lab/tree/explorer.ipynb?token={lab['token']}")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=harness.KERNEL_S * 1000)
            harness._run_all(page)
            harness._wait_for(page, harness.CHANGED, "", harness.KERNEL_S)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=harness.KERNEL_S * 1000)
            page.evaluate(WATCH)
            handle = page.locator(".dlviz-explorer .widget-slider",
                                  has_text="batch_size").locator(".noUi-handle")
            for i in range(reps + 1):  # the first press warms up: not counted
                done = len(times.read_text().splitlines()) if times.exists() else 0
                page.evaluate(ARM, harness._src(page))
                handle.focus()
                page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                page.wait_for_function("() => window.dlvizBench.t2 !== 0",
                                       timeout=harness.PASS_S * 1000)
                deadline = time.monotonic() + 30
                while (len(times.read_text().splitlines()) if times.exists() else 0) <= done:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the kernel wrote no time for a re-run")
                    time.sleep(0.02)
                start, end = json.loads(times.read_text().splitlines()[-1])
                t = page.evaluate("() => window.dlvizBench")
                page.wait_for_timeout(300)  # the counts and message follow: let them land
                if i == 0:
                    continue
                stages["key -> kernel"].append(start - t["t0"])
                stages["kernel"].append(end - start)
                stages["browser receive"].append(t["t1"] - end)
                stages["decode"].append(t["t2"] - t["t1"])
                stages["key -> picture"].append(t["t1"] - t["t0"])
                stages["key -> picture decoded"].append(t["t2"] - t["t0"])
        finally:
            browser.close()
    rows = []
    for name, values in stages.items():
        goal = name == "key -> picture"
        p50 = statistics.median(values)
        rows.append({"stage": name, "presses": len(values), "p50 ms": round(p50, 1),
                     "p95 ms": round(_p95(values), 1),
                     "goal": f"p50 <= {GOAL_MS:g}" if goal else "",
                     "ok": ("yes" if p50 <= GOAL_MS else "NO") if goal else ""})
        log(f"browser: {name}: p50 {rows[-1]['p50 ms']} ms, p95 {rows[-1]['p95 ms']} ms")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 key presses")
    args = parser.parse_args()
    rows = main(quick=args.quick)
    if rows:
        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        print("\n".join("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows))
