"""Every lesson runs end to end under papermill: smoke mode, default start method
and spawn (what macOS and Windows use). A failed Check cell fails the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import papermill
import pytest
from jupyter_client.kernelspec import find_kernel_specs

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KERNEL = "dlviz" if "dlviz" in find_kernel_specs() else "python3"


def execute(path: Path, out: Path, start_method: str | None) -> dict[str, Any]:
    papermill.execute_notebook(
        str(path), str(out), parameters={"smoke": True, "start_method": start_method},
        kernel_name=KERNEL, cwd=str(path.parent), progress_bar=False,
        request_save_on_cell_execute=False, execution_timeout=600,
    )
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("start_method", [None, "spawn"], ids=["default", "spawn"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_lesson_runs_and_draws(path: Path, start_method: str | None, tmp_path: Path) -> None:
    executed = execute(path, tmp_path / path.name, start_method)
    cells = [c for c in executed["cells"] if c["cell_type"] == "code"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_lesson_structure(path: Path) -> None:
    """Parameters first, objectives up front, Check cells, exercises with solutions."""
    cells = json.loads(path.read_text())["cells"]
    first = cells[0]
    assert first["cell_type"] == "code" and "parameters" in first["metadata"].get("tags", [])
    source = "".join(first["source"])
    assert "smoke" in source and "start_method" in source
    text = "\n".join("".join(c["source"]) for c in cells)
    assert "objectives" in text.lower()
    checks = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).lstrip()
              .startswith("# Check")]
    assert len(checks) >= 2, "each claim needs a Check cell that asserts it"
    assert all("assert" in "".join(c["source"]) for c in checks)
    assert "dlviz.explore(" in text, "each lesson has an explorer"
    assert "Exercise" in text and "Solution" in text
    for cell in cells:  # datasets and helpers come from dlviz, so spawn can import them
        code = "".join(cell["source"])
        if code.startswith("%%writefile"):  # a module written from the notebook: importable
            continue
        if cell["cell_type"] == "code" and ("class " in code or "lambda" in code):
            assert "bug-hunt" in cell["metadata"].get("tags", []), code[:80]


def test_a_kernel_without_dlviz_gets_one_line_to_run() -> None:
    """Every lesson's first cell, run in a real kernel that cannot import dlviz (as a
    learner's default kernel can't): it prints what to run and stops with a one-line
    SystemExit, not a traceback wall, and leaves the kernel alive for the fix."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(
        kernel_name=KERNEL,
        extra_arguments=["--IPKernelApp.exec_lines=import sys; sys.modules['dlviz'] = None"])
    try:
        for path in NOTEBOOKS:
            first = "".join(json.loads(path.read_text())["cells"][0]["source"])
            outputs: list[dict[str, Any]] = []
            reply = client.execute_interactive(first, timeout=120, output_hook=outputs.append)
            assert reply["content"]["status"] == "error", path.name
            printed = "".join(m["content"].get("text", "") for m in outputs
                              if m["msg_type"] == "stream")
            assert "Choose the kernel named 'dlviz'" in printed, (path.name, printed)
            assert "%pip install -e .." in printed, (path.name, printed)
            [error] = [m["content"] for m in outputs if m["msg_type"] == "error"]
            assert error["ename"] == "SystemExit", (path.name, error)
            assert error["evalue"] == "dlviz is not installed in this kernel", error
            assert len("\n".join(error["traceback"]).splitlines()) <= 3, error["traceback"]
        assert manager.is_alive()
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
