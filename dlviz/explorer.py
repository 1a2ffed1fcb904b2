"""The explorer: sliders that re-run a real DataLoader and redraw it.

``dlviz.explore(controls=[...], **initial)`` returns a widget. Every change of a
control builds a DataLoader over :class:`dlviz.datasets.SyntheticDataset` with
the chosen settings, records one real pass with :func:`dlviz.record` (real worker
processes, every time) and draws it with :func:`dlviz.plot_run`. Every lesson
has one ("tweak, twiddle, and frob"); lesson 0 shows how to use it.

- A change that arrives while a pass is running supersedes it: the running pass
  stops at its next batch and only the newest settings are drawn.
- ``widget.rerun(**values)`` sets controls and records synchronously, by the same
  path a slider takes; it returns the new Run (tests and papermill use it).
- Nothing escapes into your kernel: an impossible combination or an injected
  fault is explained inside the widget. A hang always runs with a timeout.
"""

from __future__ import annotations

import base64
import html
import io
import multiprocessing
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import torch
from torch.utils.data import DataLoader

from dlviz import _check
from dlviz.datasets import SyntheticDataset, collate_skip_none
from dlviz.ledger import FATE_COLORS
from dlviz.plot import plot_run
from dlviz.recorder import Traced, play
from dlviz.run import Run

__all__ = ["explore", "Explorer"]

HANG_TIMEOUT_S = 1.0
FAULTS = {"none": None, "exception": "fail_at", "worker crash": "crash_at",
          "hang": "hang_at", "None sample": "none_at"}
START_METHODS = ("default", *multiprocessing.get_all_start_methods())


@dataclass(frozen=True)
class Control:
    """One control: its kind, default and range, and the label shown."""

    kind: str  # int, float, bool, choice
    default: Any
    low: Any = None
    high: Any = None
    options: tuple[str, ...] = ()
    label: str = ""


CONTROLS: dict[str, Control] = {
    "n": Control("int", 200, 1, 2000, label="dataset size n"),
    "batch_size": Control("int", 32, 1, 256),
    "num_workers": Control("int", 2, 0, 8),
    "prefetch_factor": Control("int", 2, 1, 8),
    "drop_last": Control("bool", False),
    "shuffle": Control("bool", False),
    "fault": Control("choice", "none", options=tuple(FAULTS), label="injected fault"),
    "fault_at": Control("int", 100, 0, 1999, label="fault at index"),
    "fail_at": Control("int", -1, -1, 1999, label="exception at (-1 off)"),
    "crash_at": Control("int", -1, -1, 1999, label="crash at (-1 off)"),
    "hang_at": Control("int", -1, -1, 1999, label="hang at (-1 off)"),
    "none_at": Control("int", -1, -1, 1999, label="None at (-1 off)"),
    "on_error": Control("choice", "stop", options=("raise", "stop", "continue"),
                        label="on error"),
    "max_batches": Control("int", 0, 0, 64, label="break after (0 never)"),
    "cost_ms": Control("float", 1.0, 0.0, 20.0, label="fetch cost ms"),
    "step_ms": Control("float", 0.0, 0.0, 50.0, label="step ms"),
    "start_method": Control("choice", "default", options=START_METHODS),
    "persistent_workers": Control("bool", False),
    "in_order": Control("bool", True),
    "seed": Control("int", 0, 0, 10_000),
}
DEFAULT_SHOWN = ("n", "batch_size", "num_workers", "prefetch_factor", "drop_last", "shuffle",
                 "fault", "fault_at", "on_error", "max_batches", "cost_ms", "step_ms")


def _make_widget(name: str, spec: Control, value: Any, span: tuple[Any, Any] | None
                 ) -> widgets.ValueWidget:
    low, high = span or (spec.low, spec.high)
    common = {"description": spec.label or name, "continuous_update": False,
              "style": {"description_width": "initial"}}
    if spec.kind == "int":
        return widgets.IntSlider(value=value, min=low, max=high, **common)
    if spec.kind == "float":
        return widgets.FloatSlider(value=value, min=low, max=high, step=0.5, **common)
    if spec.kind == "bool":
        return widgets.Checkbox(value=value, description=name, indent=False)
    return widgets.Dropdown(value=value, options=list(spec.options),
                            description=spec.label or name,
                            style={"description_width": "initial"})


def _checked(name: str, value: Any) -> Any:
    spec = CONTROLS[name]
    if spec.kind == "int":
        number = _check.integer(name, value)
        if not spec.low <= number <= spec.high:
            raise ValueError(f"{name} must be in {spec.low}..{spec.high}, got {number}")
        return number
    if spec.kind == "float":
        number_f = _check.non_negative(name, value)
        if number_f > spec.high:
            raise ValueError(f"{name} must be at most {spec.high}, got {value}")
        return number_f
    if spec.kind == "bool":
        return _check.flag(name, value)
    return _check.choice(name, value, spec.options)


def build_loader(values: dict[str, Any]) -> tuple[DataLoader[Any], list[str]]:
    """The DataLoader for a set of control values, and notes on what was adjusted."""
    v = values
    notes = []
    n, workers = v["n"], v["num_workers"]
    faults: dict[str, set[int]] = {"fail_at": set(), "crash_at": set(), "hang_at": set(),
                                   "none_at": set()}
    chosen = FAULTS[v["fault"]]
    if chosen is not None:
        faults[chosen].add(v["fault_at"])
    for name in faults:
        if v[name] >= 0:
            faults[name].add(v[name])
    for name, indices in faults.items():
        outside = sorted(i for i in indices if i >= n)
        if outside:
            notes.append(f"{name} {outside[0]} is outside the dataset (0..{n - 1}): no fault.")
            indices.difference_update(outside)
    if workers == 0:
        notes.append("num_workers=0: the main process fetches; prefetch_factor and "
                     "persistent_workers do not apply.")
        if faults["crash_at"] or faults["hang_at"]:
            notes.append("A crash or hang in the main process would take your kernel with "
                         "it, so the dataset raises RuntimeError instead.")
    timeout = 0.0
    if faults["hang_at"] and workers > 0:
        timeout = HANG_TIMEOUT_S
        notes.append(f"Hang injected: running with timeout={HANG_TIMEOUT_S:g} s, so the "
                     "DataLoader raises instead of waiting forever.")
    method = v["start_method"]
    if workers > 0 and method != "default":
        if method == "forkserver":
            multiprocessing.set_forkserver_preload(["torch", "dlviz.datasets"])
    if workers > 0 and (method in ("spawn", "forkserver") or (
            method == "default" and multiprocessing.get_start_method() != "fork")):
        notes.append(f"{method}: every worker starts a fresh Python that imports torch, "
                     "about a second per re-run. forkserver preloads torch once (the first "
                     "run pays for it); persistent_workers reuses the workers while only "
                     "the loop settings change.")
    dataset = SyntheticDataset(n, cost_ms=v["cost_ms"], **faults)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=v["batch_size"],
        shuffle=v["shuffle"],
        drop_last=v["drop_last"],
        num_workers=workers,
        prefetch_factor=v["prefetch_factor"] if workers else None,
        persistent_workers=v["persistent_workers"] and workers > 0,
        in_order=v["in_order"],
        timeout=timeout,
        collate_fn=collate_skip_none if faults["none_at"] else None,
        multiprocessing_context=method if workers and method != "default" else None,
        generator=torch.Generator().manual_seed(v["seed"]),
    )
    return loader, notes


LOOP_SETTINGS = ("on_error", "max_batches", "step_ms")


class Explorer(widgets.VBox):
    """The widget :func:`explore` returns. ``.run`` is the Run on display."""

    def __init__(self, shown: Sequence[str], values: dict[str, Any],
                 ranges: dict[str, tuple[Any, Any]]) -> None:
        self.values = values
        self.controls = {name: _make_widget(name, CONTROLS[name], values[name],
                                            ranges.get(name)) for name in shown}
        self.message = widgets.HTML()
        self.summary = widgets.HTML()
        self.figure = widgets.Output()
        self.run: Run | None = None
        self.png = b""
        self._lock = threading.Lock()
        self._wanted = 0  # newest request
        self._busy = False
        self._cancel = threading.Event()
        self._persistent: tuple[tuple[Any, ...], Traced] | None = None
        grid = widgets.GridBox(list(self.controls.values()), layout=widgets.Layout(
            grid_template_columns="repeat(3, minmax(240px, 1fr))"))
        super().__init__([grid, self.message, self.summary, self.figure])
        self.add_class("dlviz-explorer")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self._enable()
        self.refresh()

    # --- changes from sliders ---
    def _on_change(self, change: dict[str, Any]) -> None:
        for name, control in self.controls.items():
            self.values[name] = control.value
        self._enable()
        with self._lock:
            self._wanted += 1
            if self._busy:
                self._cancel.set()  # the running pass ends at its next batch
                return
            self._busy = True
        threading.Thread(target=self._work, daemon=True, name="dlviz-explore").start()

    def _work(self) -> None:
        while True:
            with self._lock:
                wanted = self._wanted
                self._cancel.clear()
            self.refresh(lambda wanted=wanted: wanted != self._wanted)
            with self._lock:
                if wanted == self._wanted:
                    self._busy = False
                    return

    def _enable(self) -> None:
        """Grey out what does not apply (prefetch etc. without workers; fault index)."""
        workers = self.values["num_workers"]
        for name in ("prefetch_factor", "persistent_workers", "start_method", "in_order"):
            if name in self.controls:
                self.controls[name].disabled = workers == 0
        if "fault_at" in self.controls:
            self.controls["fault_at"].disabled = self.values["fault"] == "none"
            self.controls["fault_at"].max = max(0, self.values["n"] - 1)

    # --- the one path every re-run takes ---
    def rerun(self, **values: Any) -> Run:
        """Set controls (by name) and record a new pass now; returns its Run."""
        unknown = sorted(set(values) - set(CONTROLS))
        if unknown:
            raise ValueError(f"unknown controls {unknown}; known: {sorted(CONTROLS)}")
        checked = {name: _checked(name, value) for name, value in values.items()}
        with self._lock:  # let a background pass finish first, superseded
            self._wanted += 1
            self._cancel.set()
        while self._busy:
            threading.Event().wait(0.01)
        self.values.update(checked)
        for name, value in checked.items():
            if name in self.controls:
                control = self.controls[name]
                control.unobserve(self._on_change, names="value")
                if isinstance(control, widgets.IntSlider) and name == "fault_at":
                    control.max = max(value, control.max)
                control.value = value
                control.observe(self._on_change, names="value")
        self._enable()
        self._cancel.clear()
        self.refresh()
        assert self.run is not None
        return self.run

    def refresh(self, superseded: Any = None) -> None:
        """Record a pass with the current values and draw it (errors shown, never raised)."""
        self.message.value = "<i>running a real DataLoader…</i>"
        notes: list[str] = []
        error = ""
        run = None
        try:
            loader, notes = build_loader(self.values)
            run = self._record(loader, superseded)
        except Exception as exc:  # shown in the widget, never raised into the kernel
            run = getattr(exc, "dlviz_run", None)
            error = f"{type(exc).__name__}: {exc}"
        if superseded is not None and superseded():
            return
        if run is not None:
            self.run = run
            self._draw(run)
        self.message.value = _message_html(notes, error, run)

    def _record(self, loader: DataLoader[Any], superseded: Any) -> Run:
        v = self.values
        max_batches = v["max_batches"] or None
        if not loader.persistent_workers:
            self._close_persistent()
            return play(Traced(loader), v["on_error"], max_batches, v["step_ms"] / 1000,
                        superseded)
        # persistent workers: keep the traced loader while only loop settings change
        key = tuple(sorted((k, val) for k, val in v.items() if k not in LOOP_SETTINGS))
        if self._persistent is None or self._persistent[0] != key:
            self._close_persistent()
            self._persistent = (key, Traced(loader))
        traced = self._persistent[1]
        try:
            return play(traced, v["on_error"], max_batches, v["step_ms"] / 1000, superseded,
                        keep_workers=True)
        except Exception:
            self._close_persistent()
            raise

    def _close_persistent(self) -> None:
        if self._persistent is not None:
            self._persistent[1].close()
            self._persistent = None

    def close(self) -> None:
        self._close_persistent()
        super().close()

    def _draw(self, run: Run) -> None:
        fig = plot_run(run)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        self.png = buffer.getvalue()
        self.figure.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": base64.b64encode(self.png).decode(),
                                         "text/plain": repr(run)}},)
        self.summary.value = _summary_html(run)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live widget, plus the last figure as PNG for static viewers and papermill."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if self.png and isinstance(bundle, dict):
            bundle["image/png"] = base64.b64encode(self.png).decode()
        return bundle


def _summary_html(run: Run) -> str:
    counts = run.summary()
    cells = []
    for key, value in counts.items():
        color = FATE_COLORS.get(key, "#333")
        cells.append(f'<div style="text-align:center;padding:0 8px">'
                     f'<div class="dlviz-count" data-key="{key}" style="font-size:1.4em;'
                     f'color:{color}">{value}</div><div style="font-size:0.85em">'
                     f'{key.replace("_", " ")}</div></div>')
    return '<div class="dlviz-summary" style="display:flex;flex-wrap:wrap">' + "".join(cells) \
        + "</div>"


def _message_html(notes: list[str], error: str, run: Run | None) -> str:
    parts = [f"<li>{html.escape(n)}</li>" for n in notes]
    if run is not None:
        for e in run.errors:
            first = e.message.strip().splitlines()[0] if e.message.strip() else e.kind
            where = f"worker {e.worker}" if e.worker is not None and e.worker >= 0 else "main"
            parts.append(f'<li style="color:{FATE_COLORS["failed"]}"><b>{e.kind}</b> '
                         f"({where}): {html.escape(first)}</li>")
    if error and (run is None or not run.errors):
        parts.append(f'<li style="color:{FATE_COLORS["failed"]}">{html.escape(error)}</li>')
    return '<ul class="dlviz-message">' + "".join(parts) + "</ul>" if parts else ""


def explore(*, controls: Sequence[str] | None = None,
            ranges: dict[str, tuple[Any, Any]] | None = None, **initial: Any) -> Explorer:
    """An explorer widget over a real DataLoader (lesson 0 shows how to use it).

    Args:
        controls: which controls to show, by name (DataLoader's argument names:
            ``batch_size``, ``num_workers``, ``prefetch_factor``, ``drop_last``,
            ``shuffle``, ``persistent_workers``, ``in_order``; ``n`` for the dataset
            size; ``fault`` and ``fault_at``, or ``fail_at``/``crash_at``/``hang_at``/
            ``none_at`` directly; ``on_error``, ``max_batches``, ``cost_ms``,
            ``step_ms``, ``start_method``, ``seed``). Default: the common ones.
        ranges: ``{name: (low, high)}`` for sliders, e.g. ``{"num_workers": (0, 4)}``.
        **initial: starting values for any control, shown or not.

    Returns the widget; ``widget.rerun(**values)`` records a new pass headlessly.
    """
    shown = list(DEFAULT_SHOWN if controls is None else controls)
    if isinstance(controls, str):
        raise TypeError("controls must be a list of control names, not a str")
    unknown = sorted((set(shown) | set(initial)) - set(CONTROLS))
    if unknown:
        raise ValueError(f"unknown controls {unknown}; known: {sorted(CONTROLS)}")
    ranges = dict(ranges or {})
    for name, span in ranges.items():
        if name not in CONTROLS or CONTROLS[name].kind not in ("int", "float"):
            raise ValueError(f"ranges: {name!r} is not a slider")
        if not (isinstance(span, tuple) and len(span) == 2 and span[0] <= span[1]):
            raise ValueError(f"ranges[{name!r}] must be a (low, high) tuple")
    values = {name: spec.default for name, spec in CONTROLS.items()}
    values.update({name: _checked(name, value) for name, value in initial.items()})
    if "fault_at" not in initial:
        values["fault_at"] = values["n"] // 2
    for name, (low, high) in ranges.items():
        if not low <= values[name] <= high:
            values[name] = min(max(values[name], low), high)
    return Explorer(shown, values, ranges)
