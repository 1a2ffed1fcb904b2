"""``./dev handouts``: the HTML a workshop hands out shows every picture, the
explorer's last one included, and needs no network to show them (issue 16).

Two lessons, in smoke mode, into a temporary folder (never build/ or any tracked
file). Checked from the HTML itself: one ``<img>`` per picture the executed
notebook has, each a ``data:`` URI; no widget left that only a widget renderer from a
CDN could draw; no script, style or frame the page would fetch from the network; and
the explorer's picture is the one its widget showed last (after the lesson's
re-runs), not the first.
"""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from jupyter_client.kernelspec import find_kernel_specs

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "dlviz" if "dlviz" in find_kernel_specs() else "python3"
LESSONS = ["00", "02"]  # the start page and a lesson with two explorer re-runs
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def load_dev() -> ModuleType:
    """The ``dev`` script as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("dlviz_dev", str(ROOT / "dev"))
    spec = importlib.util.spec_from_loader("dlviz_dev", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def pngs(nb: dict[str, Any]) -> list[str]:
    """Every PNG output of an executed notebook, in order, base64 without whitespace."""
    found = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                found.append(re.sub(r"\s", "", png if isinstance(png, str) else "".join(png)))
    return found


def family(state: dict[str, Any], model_id: str) -> list[dict[str, Any]]:
    """The widget ``model_id`` and every widget it refers to, at any depth."""
    found, todo, seen = [], [model_id], set()
    while todo:
        current = todo.pop(0)
        if current in seen or current not in state:
            continue
        seen.add(current)
        found.append(state[current])
        todo += re.findall(r"IPY_MODEL_(\w+)", json.dumps(state[current]["state"]))
    return found


@pytest.fixture(scope="module")
def handouts(tmp_path_factory: pytest.TempPathFactory
             ) -> list[tuple[Path, dict[str, Any]]]:
    """(HTML written, the executed notebook as papermill saved it) per lesson, made
    with the functions ``./dev handouts`` runs."""
    dev = load_dev()
    out = tmp_path_factory.mktemp("handouts")
    made = []
    for nb in dev.lessons(LESSONS):
        executed = dev.execute(nb, out, smoke=True, python=sys.executable, kernel=KERNEL)
        raw = json.loads(executed.read_text())
        made.append((dev.static_html(executed, python=sys.executable), raw))
    return made


@pytest.mark.slow
def test_every_picture_is_in_the_html_and_needs_no_network(
        handouts: list[tuple[Path, dict[str, Any]]]) -> None:
    assert [page.name[:2] for page, _ in handouts] == LESSONS
    for page, raw in handouts:
        text = page.read_text()
        expected = pngs(json.loads(page.with_suffix(".ipynb").read_text()))
        assert len(expected) == len(pngs(raw)), "a picture was lost on the way"
        sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', text)
        assert all(s.startswith("data:image/png;base64,") for s in sources), \
            [s[:60] for s in sources if not s.startswith("data:")]
        shown = [re.sub(r"\s", "", s.split(",", 1)[1]) for s in sources]
        assert shown == expected, f"{page.name}: {len(shown)} pictures shown, {len(expected)} made"
        for png in shown:
            assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
        # nothing left that only a widget renderer (loaded from a CDN) could draw
        assert WIDGET_VIEW not in text and "widget-state+json" not in text
        # and nothing the page would fetch: no script, style or frame from the network
        fetched = re.findall(r'<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)='
                             r'"((?:https?:)?//[^"]*)"', text)
        fetched += re.findall(r'import\(\s*["\']((?:https?:)?//[^"\']*)', text)
        assert not fetched, f"{page.name} loads {fetched} from the network"


@pytest.mark.slow
def test_each_explorer_shows_its_last_picture(
        handouts: list[tuple[Path, dict[str, Any]]]) -> None:
    """Each explorer's picture in the handout is the one its widget showed when the
    lesson finished (after the lesson's re-runs), not the one it showed first."""
    changed = 0
    for page, raw in handouts:
        state = raw["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        views = [(i, o) for i, c in enumerate(raw["cells"]) for o in c.get("outputs", [])
                 if WIDGET_VIEW in o.get("data", {})]
        assert views, f"{page.name}: no explorer output was saved"
        handout = json.loads(page.with_suffix(".ipynb").read_text())
        for i, output in views:
            figures = [m for m in family(state, output["data"][WIDGET_VIEW]["model_id"])
                       if m["model_name"] == "OutputModel" and m["state"].get("outputs")]
            assert figures, f"{page.name}: the explorer's figure is not in the widget state"
            last = pngs({"cells": [{"outputs": figures[-1]["state"]["outputs"]}]})[-1]
            [shown] = pngs({"cells": [handout["cells"][i]]})
            assert shown == last, f"{page.name} cell {i}: not the explorer's last picture"
            first = re.sub(r"\s", "", "".join(output["data"]["image/png"]))
            changed += shown != first
    assert changed, "no lesson re-ran its explorer: the test would not see a stale picture"
