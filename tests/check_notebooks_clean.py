"""Fail if a committed notebook carries outputs or execution counts.

Notebooks are committed clean so that diffs stay readable and learners run them
themselves; ``./dev handouts`` writes executed copies to build/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dirty_notebooks() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "notebooks"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.split()
    paths = [p for p in listed if p.endswith(".ipynb")] or [
        str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb")]
    dirty = []
    for name in paths:
        cells = json.loads((ROOT / name).read_text(encoding="utf-8"))["cells"]
        if any(c.get("outputs") or c.get("execution_count") for c in cells
               if c["cell_type"] == "code"):
            dirty.append(name)
    return dirty


if __name__ == "__main__":
    bad = dirty_notebooks()
    if bad:
        sys.exit("notebooks committed with outputs (clear them): " + ", ".join(bad))
    print("notebooks: no outputs committed")
