"""Run every benchmark in ``benchmarks/`` and print one markdown table per benchmark.

A benchmark is a module ``benchmarks/<name>.py`` with a ``main()`` that returns a
list of row dicts (one table row each; the columns are the union of the keys, in
order of first appearance). If ``main`` accepts a ``quick`` argument, ``--quick``
is passed on to it.

    .venv/bin/python benchmarks/run_all.py                # every benchmark found
    .venv/bin/python benchmarks/run_all.py --quick        # smoke run
    .venv/bin/python benchmarks/run_all.py overhead render

A benchmark named on the command line that does not exist (yet) is reported and
skipped; one that fails to import or raises is reported (traceback on stderr) and
the others still run. The exit status is 1 if any benchmark failed, else 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SKIP = {"run_all", "conftest"}


def discover() -> list[str]:
    """Benchmark module names in this folder, sorted (``_private`` files left out)."""
    return sorted(p.stem for p in HERE.glob("*.py")
                  if p.stem not in SKIP and not p.stem.startswith("_"))


def load(name: str) -> ModuleType | None:
    """Import ``benchmarks/<name>.py`` by path; None if there is no such file."""
    path = HERE / f"{name}.py"
    if not path.is_file():
        return None
    if str(HERE) not in sys.path:  # so a benchmark can import a sibling helper
        sys.path.insert(0, str(HERE))
    module_name = f"dlviz_benchmarks.{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def call_main(module: ModuleType, quick: bool) -> list[dict[str, Any]]:
    main = module.main
    try:
        params = inspect.signature(main).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    rows = main(quick=quick) if "quick" in params else main()
    if rows is None:
        return []
    rows = list(rows)
    bad = [r for r in rows if not isinstance(r, dict)]
    if bad:
        raise TypeError(f"main() must return a list of dicts; got a {type(bad[0]).__name__}")
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Rows as a GitHub markdown table (columns: union of keys, first-seen order)."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            value = f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def _title(module: ModuleType, name: str) -> str:
    doc = (module.__doc__ or "").strip().splitlines()
    return f"{name}: {doc[0]}" if doc else name


def run(names: list[str], quick: bool) -> int:
    failed = 0
    for name in names:
        print(f"## {name}\n", flush=True)
        try:
            module = load(name)
        except Exception:
            traceback.print_exc()
            print(f"_{name}: failed to import (traceback on stderr)_\n", flush=True)
            failed += 1
            continue
        if module is None:
            print(f"_{name}: no benchmarks/{name}.py here: skipped_\n", flush=True)
            continue
        if not callable(getattr(module, "main", None)):
            print(f"_{name}: has no main(): skipped_\n", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            rows = call_main(module, quick)
        except Exception:
            traceback.print_exc()
            print(f"_{name}: main() raised (traceback on stderr)_\n", flush=True)
            failed += 1
            continue
        print(_title(module, name) + "\n")
        print(markdown(rows))
        print(f"\n_{len(rows)} rows in {time.perf_counter() - t0:.1f} s_\n", flush=True)
    return 1 if failed else 0


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the dlviz benchmarks.")
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all found)")
    ap.add_argument("--quick", action="store_true", help="smoke run: pass quick=True")
    args = ap.parse_args(argv)
    names = args.names or discover()
    if not names:
        print("no benchmarks found")
        return 0
    return run(names, args.quick)


if __name__ == "__main__":
    sys.exit(_cli())
