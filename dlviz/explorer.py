"""The explorer: sliders that re-run a real DataLoader and redraw it.

``dlviz.explore(controls=[...], **initial)`` returns a widget. Every change of a
control builds a DataLoader over :class:`dlviz.datasets.SyntheticDataset` with
the chosen settings, records one real pass with :func:`dlviz.record` (real worker
processes, every time) and draws it with :func:`dlviz.plot_run`. Every lesson
has one ("tweak, twiddle, and frob"); lesson 0 shows how to use it.

- A change that arrives while a pass is running supersedes it: the running pass
  stops at its next batch and only the newest settings are recorded and drawn
  (slider changes never pile up).
- ``widget.rerun(**values)`` sets controls and records by the same path a slider
  takes, and waits for it; it returns the new Run (tests and papermill use it).
- Nothing escapes into your kernel: an impossible combination or an injected
  fault is explained inside the widget. A hang always runs with a timeout.
- The picture is drawn for speed (issue 15; ``benchmarks/explorer.py`` times each
  step): ``plot_run`` without its counts row (the counts are shown once, above it),
  drawn on one kept canvas whose text cache blits each line of text at once, on the
  kept figure while the lanes stay the same (what does not change kept as pixels:
  blitting), encoded as a fast-zlib PNG written directly.
- With ``persistent_workers`` on, the workers are kept while only the loop
  settings (``on_error``, ``max_batches``, ``step_ms``) change, as a training
  script keeps them from epoch to epoch; ``widget.close()`` stops them.
"""

from __future__ import annotations

import base64
import contextlib
import html
import multiprocessing
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager, get_font
from matplotlib.ft2font import FT2Font
from matplotlib.transforms import Bbox
from torch.utils.data import DataLoader

from dlviz import _check
from dlviz.datasets import SyntheticDataset, collate_skip_none
from dlviz.ledger import FATE_COLORS
from dlviz.plot import (
    _describe,
    _lane_name,
    _lanes,
    _ledger_codes,
    plot_ledger,
    plot_run,
    plot_timeline,
)
from dlviz.recorder import Traced, play
from dlviz.run import Run, merge_runs

__all__ = ["explore", "Explorer"]

HANG_TIMEOUT_S = 1.0
SLOW_START_S = 15.0  # added to the hang timeout when workers start a fresh Python
DPI = 80
"""Resolution of the explorer's image (plot_run's figure is 12 inches wide: 960 px)."""
PNG_COMPRESSION = 1
"""zlib level for the image: 1 encodes in about 60% of the time of the default 6, and
the flat colours of a plot compress almost as well (about 50 KB)."""
ANNOUNCE_AFTER_S = 0.25
"""A pass that takes longer than this is announced ("running a real DataLoader…"); a
quicker one only shows its result (issue 15: the page does no work during the pass)."""
PERSISTENT_PASSES = 4
"""Passes a set of persistent workers is kept for: their Traced keeps every pass's notes,
so the fifth re-run starts fresh workers rather than let those pile up."""
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
    # lesson 9: a job checkpointed after checkpoint_at batches, then resumed (dlviz.checkpoint)
    "resume": Control("choice", "none", options=("none", "naive skip", "state_dict",
                                                 "restart from zero"), label="resume"),
    "checkpoint_at": Control("int", 3, 1, 64, label="checkpoint after batch"),
}
DEFAULT_SHOWN = ("n", "batch_size", "num_workers", "prefetch_factor", "drop_last", "shuffle",
                 "fault", "fault_at", "on_error", "max_batches", "cost_ms", "step_ms")
LOOP_SETTINGS = ("on_error", "max_batches", "step_ms")
"""Controls that change only the loop: persistent workers survive a change of these."""


def _make_widget(name: str, spec: Control, value: Any, span: tuple[Any, Any] | None
                 ) -> widgets.ValueWidget:
    low, high = span or (spec.low, spec.high)
    common = {"description": spec.label or name, "continuous_update": False,
              "style": {"description_width": "initial"}}
    if spec.kind == "int":
        return widgets.IntSlider(value=value, min=low, max=high, **common)
    if spec.kind == "float":
        return widgets.FloatSlider(value=value, min=low, max=high, step=0.1, **common)
    if spec.kind == "bool":
        return widgets.Checkbox(value=value, description=name, indent=False)
    return widgets.Dropdown(value=value, options=list(spec.options),
                            description=spec.label or name,
                            style={"description_width": "initial"})


def _checked(name: str, value: Any) -> Any:
    """A control's value, checked against its type and limits (errors name it)."""
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
    elif workers > _cores():
        notes.append(f"num_workers={workers} is more than this machine's {_cores()} CPU "
                     "cores: the workers take turns on them (torch warns about this too).")
    method = v["start_method"]
    fresh_python = workers > 0 and (method in ("spawn", "forkserver") or (
        method == "default" and multiprocessing.get_start_method() != "fork"))
    timeout = 0.0
    if faults["hang_at"] and workers > 0:
        # torch's timeout also covers the first batch, which under spawn/forkserver
        # waits for the workers to import torch: give that time, or batch 0 "hangs"
        timeout = HANG_TIMEOUT_S + (SLOW_START_S if fresh_python else 0.0)
        notes.append(f"Hang injected: running with timeout={timeout:g} s, so the "
                     "DataLoader raises instead of waiting forever.")
    if workers > 0 and method == "forkserver":  # what every worker needs, imported once
        multiprocessing.set_forkserver_preload(["torch", "dlviz.datasets", "dlviz.recorder"])
    if fresh_python:
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


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


_GLYPHS = all(hasattr(FT2Font, name) for name in ("_layout", "_set_transform",
                                                  "_render_glyph"))
"""matplotlib draws text glyph by glyph (3.10 and later): the text cache applies. Earlier
versions draw a line in one call already; their renderer is used as it is."""
_NORMAL = getattr(import_module("matplotlib.ft2font"), "RenderMode", None)
_NORMAL = getattr(_NORMAL, "NORMAL", None)


class _TextCache:
    """Each line of text the explorer draws, rasterised once: its glyphs as one coverage
    image (uint8), with the offsets of its left and top edges from the text's origin.

    matplotlib 3.11's Agg draws text one glyph at a time in Python (a FreeType call, a
    transform and a blit per glyph): about 60% of drawing ``plot_run``. A re-run draws
    the same lane names, titles, legends and tick labels again, so they are drawn from
    here instead, one blit per line. A line is placed on whole pixels (matplotlib places
    glyphs on subpixels), a difference of under half a pixel. Bounded: cleared when full.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], tuple[np.ndarray, int, int] | None] = {}
        self.heights: dict[tuple[Any, ...], tuple[float | None, float | None,
                                                  float | None]] = {}

    def get(self, renderer: RendererAgg, s: str, prop: FontProperties, mtext: Any
            ) -> tuple[np.ndarray, int, int] | None:
        features = mtext.get_fontfeatures() if mtext is not None else None
        language = mtext.get_language() if mtext is not None else None
        key = (s, tuple(prop.get_family()), prop.get_style(), prop.get_variant(),
               prop.get_weight(), prop.get_stretch(), prop.get_size_in_points(),
               prop.get_file(), renderer.dpi,
               None if features is None else tuple(features), language)
        if key not in self.lines:
            if len(self.lines) >= self.LIMIT:
                self.lines.clear()
            self.lines[key] = self._rasterise(renderer, s, prop, features, language)
        return self.lines[key]

    @staticmethod
    def _rasterise(renderer: RendererAgg, s: str, prop: FontProperties, features: Any,
                   language: Any) -> tuple[np.ndarray, int, int] | None:
        """The glyphs of ``s`` as matplotlib lays them out, drawn at the origin."""
        font = renderer._prepare_font(prop)  # type: ignore[no-untyped-call]
        flags = get_hinting_flag()  # type: ignore[no-untyped-call]
        items = font._layout(s, flags=flags, features=features, language=language)
        size = prop.get_size_in_points()
        glyphs = []
        for item in items:
            ft = item.ft_object
            ft.set_size(size, renderer.dpi)
            ft._set_transform(np.array([[0x10000, 0], [0, 0x10000]]),
                              [round(0x40 * item.x), round(0x40 * item.y)])
            bitmap = ft._render_glyph(item.glyph_index, flags, _NORMAL)
            buffer = np.asarray(bitmap.buffer)
            if buffer.size:
                glyphs.append((buffer, int(bitmap.left), int(bitmap.top)))
        if not glyphs:
            return None
        left = min(g[1] for g in glyphs)
        top = max(g[2] for g in glyphs)
        right = max(g[1] + g[0].shape[1] for g in glyphs)
        bottom = min(g[2] - g[0].shape[0] for g in glyphs)
        image = np.zeros((top - bottom, right - left), dtype=np.uint8)
        for buffer, x, y in glyphs:
            h, w = buffer.shape
            region = image[top - y:top - y + h, x - left:x - left + w]
            np.maximum(region, buffer, out=region)
        return image, left, top


def _height_metrics(prop: FontProperties, dpi: float
                    ) -> tuple[float | None, float | None, float | None]:
    """What matplotlib's ``Text._get_layout`` reads from the font's tables: ascent,
    descent and line gap in pixels (Nones: it measures the text instead)."""
    font = get_font(fontManager._find_fonts_by_props(prop))
    head = font.get_sfnt_table("head")
    if head is None:
        return None, None, None
    scale = 1 / head["unitsPerEm"] * prop.get_size_in_points() * dpi / 72  # as matplotlib
    os2, hhea = font.get_sfnt_table("OS/2"), font.get_sfnt_table("hhea")
    if os2 is not None:
        return (os2["sTypoAscender"] * scale, -os2["sTypoDescender"] * scale,
                os2["sTypoLineGap"] * scale)
    if hhea is not None:
        return hhea["ascent"] * scale, -hhea["descent"] * scale, hhea["lineGap"] * scale
    return None, None, None


class _CachedTextRenderer(RendererAgg):
    """An Agg renderer that draws plain, unrotated text from a :class:`_TextCache`."""

    def __init__(self, width: float, height: float, dpi: float, cache: _TextCache) -> None:
        super().__init__(width, height, dpi)  # type: ignore[no-untyped-call]
        self._cache = cache

    def _get_font_height_metrics(self, prop: FontProperties
                                 ) -> tuple[float | None, float | None, float | None]:
        """A font's ascent, descent and line gap at this size, read once per font: the
        hook matplotlib 3.11+ asks a renderer for them before it reads the font's tables
        itself, for every text it measures (the same numbers, a tenth of drawing)."""
        key = (tuple(prop.get_family()), prop.get_style(), prop.get_variant(),
               prop.get_weight(), prop.get_stretch(), prop.get_size_in_points(),
               prop.get_file(), self.dpi)
        metrics = self._cache.heights.get(key)
        if metrics is None:
            metrics = self._cache.heights[key] = _height_metrics(prop, self.dpi)
        return metrics

    def draw_text(self, gc: Any, x: float, y: float, s: str, prop: FontProperties,
                  angle: float, ismath: Any = False, mtext: Any = None) -> None:
        if (ismath or angle % 360 or not gc.get_antialiased() or not _GLYPHS
                or _NORMAL is None):
            super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)  # type: ignore[no-untyped-call]
            return
        line = self._cache.get(self, s, prop, mtext)
        if line is None:
            return
        image, left, top = line
        # as RendererAgg does per glyph: x right, FreeType's y up; the image's bottom edge
        baseline = round(self.height - y)
        self._renderer.draw_text_image(image, round(x) + left,
                                       int(self.height) - (baseline + top) + image.shape[0],
                                       0, gc)


class _Canvas(FigureCanvasAgg):
    """The explorer's one canvas: renderers kept per size (matplotlib caches text
    measurements per renderer; a run with another lane count has another height),
    text drawn from one :class:`_TextCache`, and the last figure kept to draw the next
    run on (see :func:`draw_run`)."""

    KEEP = 4  # renderers kept (one per figure size seen lately; about 2 MB each)

    def __init__(self, figure: Figure | None = None) -> None:
        super().__init__(figure)
        self.texts = _TextCache()
        self._renderers: dict[tuple[Any, ...], _CachedTextRenderer] = {}
        self.kept: tuple[tuple[str, ...], Figure] | None = None  # (its lanes, the figure)
        self.background: tuple[tuple[Any, ...], Any] | None = None  # see _draw_kept
        self.ledger_shows: tuple[Any, ...] | None = None  # the kept ledger's _ledger_key
        self.ledger_pixels: tuple[tuple[Any, ...], Any] | None = None  # see _draw_kept

    def get_renderer(self) -> RendererAgg:
        w, h = self.get_width_height(physical=True)
        key = (w, h, self.figure.dpi)
        renderer = self._renderers.pop(key, None)
        if renderer is None:
            renderer = _CachedTextRenderer(w, h, self.figure.dpi, self.texts)
            if len(self._renderers) >= self.KEEP:
                self._renderers.pop(next(iter(self._renderers)))
        self._renderers[key] = renderer  # most recent last
        self.renderer = renderer
        self._lastKey = key
        return renderer


def draw_run(run: Run, dpi: int = DPI, canvas: FigureCanvasAgg | None = None, *,
             counts: bool = False) -> Figure:
    """Build ``plot_run(run, counts=counts)`` and draw it at ``dpi`` on ``canvas``.

    Draws on an Agg canvas, never through pyplot, so nothing is left registered.
    Pass the same ``canvas`` every time (the explorer keeps a :class:`_Canvas`): it
    keeps its renderers, whose text measurements matplotlib caches, and draws each
    line of text from its cache (``benchmarks/explorer.py`` times the difference).
    The counts row is left out by default: the explorer shows them above the picture.
    """
    fig = _redraw(run, canvas) if isinstance(canvas, _Canvas) and not counts else None
    if fig is None:
        fig = plot_run(run, counts=counts)
        if isinstance(canvas, _Canvas) and not counts:
            canvas.kept = (_lane_names(run), fig)
            canvas.ledger_shows = _ledger_key(run)
    fig.set_dpi(dpi)
    if canvas is None:
        canvas = _Canvas(fig)
    else:
        canvas.figure = fig
        fig.set_canvas(canvas)
    if isinstance(canvas, _Canvas) and canvas.kept is not None and canvas.kept[1] is fig:
        _draw_kept(canvas, fig)
    else:
        canvas.draw()  # type: ignore[no-untyped-call]
    return fig


def _draw_kept(canvas: _Canvas, fig: Figure) -> None:
    """Draw the kept figure by blitting (matplotlib's way to animate fast): what stays
    the same while the lanes do (the background, the lane names, the titles, the
    timeline's legend) is drawn once and kept as pixels; each run restores those pixels
    and draws the rest on top, in the order a full draw takes. They do not overlap, so
    the picture is the one a full draw makes (a test compares them). The kept pixels
    are drawn again when what they show changes. The ledger, below everything else, is
    kept as pixels too while its fates stay the same (a slider that changes the timing
    but loses nothing): its band is restored instead of drawn.
    """
    timeline, ledger = fig.axes
    panel = timeline.child_axes[0]
    still: dict[Any, tuple[Any, ...]] = {  # per Axes: the parts kept as pixels
        timeline: (timeline.yaxis, timeline.xaxis, *timeline.spines.values(),
                   timeline.legend_, *_backdrop(timeline)),
        panel: _backdrop(panel),  # tick marks touch the data at the edges: they move
        ledger: _backdrop(ledger),
    }
    moving = {ax: sorted((a for a in ax.get_children() if a is not panel
                          and not any(a is b for b in parts)), key=lambda a: a.get_zorder())
              for ax, parts in still.items()}
    title = fig._suptitle  # type: ignore[attr-defined]
    legend = timeline.get_legend()
    key = (fig, fig.dpi, tuple(t.get_text() for t in legend.get_texts()) if legend else (),
           ledger.get_title(loc="left"))
    animated = [*(a for artists in moving.values() for a in artists), title]
    band_key = (key, canvas.ledger_shows)
    band = Bbox.from_extents(0, 0, fig.bbox.x1, ledger.bbox.y1 + 2)  # the ledger and below
    keep_band = canvas.ledger_pixels is not None and canvas.ledger_pixels[0] == band_key
    drawn = [a for a in animated if not (keep_band and a in moving[ledger])]
    for artist in animated:
        artist.set_animated(True)  # a draw of the figure leaves these out
    try:
        if canvas.background is not None and canvas.background[0] == key:
            canvas.restore_region(canvas.background[1])  # type: ignore[no-untyped-call]
        else:
            canvas.draw()  # type: ignore[no-untyped-call]
            canvas.background = (key, canvas.copy_from_bbox(fig.bbox))  # type: ignore[no-untyped-call]
        if keep_band:
            assert canvas.ledger_pixels is not None
            canvas.restore_region(canvas.ledger_pixels[1])  # type: ignore[no-untyped-call]
        renderer = canvas.get_renderer()
        for artist in drawn:
            artist.draw(renderer)
        if not keep_band:  # keep the band if it holds the ledger and nothing else
            others = (timeline.get_tightbbox(renderer), title.get_window_extent(renderer))
            inside = (a.get_window_extent(renderer) for a in moving[ledger])
            clear = (all(b is None or b.y0 > band.y1 for b in others)
                     and all(b.y1 <= band.y1 for b in inside))
            canvas.ledger_pixels = (band_key, canvas.copy_from_bbox(band)) if clear else None  # type: ignore[no-untyped-call]
    finally:
        for artist in animated:
            artist.set_animated(False)


def _backdrop(ax: Any) -> tuple[Any, ...]:
    """An Axes' background and titles: kept as pixels by :func:`_draw_kept`."""
    return ax.patch, ax.title, ax._left_title, ax._right_title


def _lane_names(run: Run) -> tuple[str, ...]:
    """What ``plot_run``'s layout depends on: the lanes, by name (their number sets
    the height, the longest name the left margin)."""
    lanes = _lanes(run)
    ranks = len({rank for rank, _ in lanes})
    return tuple(_lane_name(lane, ranks) for lane in lanes)


def _redraw(run: Run, canvas: _Canvas) -> Figure | None:
    """``run`` drawn on the canvas's kept figure, if its layout fits (same lanes), else
    None. The timeline's and the ledger's Axes are emptied, not cleared: an Axes made
    or cleared builds its ticks again, most of what building ``plot_run`` costs; emptied,
    it keeps them and :func:`plot_timeline` and :func:`plot_ledger` draw on it again
    (plot_timeline draws on the emptied outstanding-batches panel it finds there; a
    legend whose labels are the same is kept)."""
    if canvas.kept is None or canvas.kept[0] != _lane_names(run):
        return None
    fig = canvas.kept[1]
    if len(fig.axes) != 2 or getattr(fig, "_suptitle", None) is None:  # cleared since
        return None
    timeline, ledger = fig.axes
    shows = _ledger_key(run)
    same_ledger = canvas.ledger_shows == shows  # its artists can stay
    emptied = (timeline, *timeline.child_axes) if same_ledger else (
        timeline, ledger, *timeline.child_axes)  # the panel is emptied too
    for ax in emptied:
        for artists in (ax.collections, ax.images, ax.lines, ax.patches, ax.texts,
                        ax.artists, ax.tables):
            for artist in list(artists):
                artist.remove()
        ax.ignore_existing_data_limits = True  # limits from this run's data only
    plot_timeline(run, timeline)
    if not same_ledger:
        plot_ledger(run, ledger)
        canvas.ledger_shows = shows
    title = getattr(fig, "_suptitle", None)  # set by plot_run: its text only changes
    if title is None:
        return None
    title.set_text(_describe(run))
    return fig


def _ledger_key(run: Run) -> tuple[Any, ...]:
    """What :func:`plot_ledger` draws from: each index's fate (its counts, size and
    layout follow from those) and whether they are stream keys."""
    return _ledger_codes(run).tobytes(), run.keys is None


def encode_png(fig: Figure) -> bytes:
    """The figure's canvas as drawn by :func:`draw_run`, as PNG bytes.

    Written directly (a PNG is a header, the zlib-compressed rows, each after a byte
    naming its filter, and an end mark): the canvas's RGBA rows as they are, filter
    "none", zlib level :data:`PNG_COMPRESSION`. A plot's flat colours compress well
    without filters, and skipping PIL's copy to RGB and its per-row filter search
    takes a third of the time (``benchmarks/explorer.py``, ``encode``).
    """
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    pixels = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    height, width = pixels.shape[:2]
    rows = np.zeros((height, 1 + 4 * width), dtype=np.uint8)  # filter byte 0: none
    rows[:, 1:] = pixels.reshape(height, 4 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"".join((b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(rows.data, PNG_COMPRESSION)),
                     _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, kind, data, CRC-32 of kind and data."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def render_png(run: Run, dpi: int = DPI, canvas: FigureCanvasAgg | None = None, *,
               counts: bool = False) -> tuple[bytes, Figure]:
    """What the explorer shows: :func:`draw_run` then :func:`encode_png`; the PNG
    bytes and the figure."""
    fig = draw_run(run, dpi, canvas, counts=counts)
    return encode_png(fig), fig


class Explorer(widgets.VBox):
    """The widget :func:`explore` returns. ``.run`` is the Run on display.

    ``.passes`` counts the passes started so far (superseded ones included), so you
    can see that fast slider changes do not pile up.
    """

    def __init__(self, shown: Sequence[str], values: dict[str, Any],
                 ranges: dict[str, tuple[Any, Any]]) -> None:
        self.values = values
        self._ranges = ranges
        self.controls = {name: _make_widget(name, CONTROLS[name], values[name],
                                            ranges.get(name)) for name in shown}
        self.message = widgets.HTML()
        self.summary = widgets.HTML()
        self.figure = widgets.Output()
        self.run: Run | None = None
        self.runs: list[Run] = []  # with resume: the job's passes (self.run merges them)
        self.png = b""
        self.passes = 0
        self.error = ""  # why the last pass has no Run (a bug, not a fault), else ""
        self._state = threading.Condition()
        self._generation = 0  # bumped by every request (slider change or rerun)
        self._busy = False  # a pass is being recorded, or one is about to be
        self._quiet = False  # the explorer is setting controls itself: not a request
        self._closed = False
        self._persistent: tuple[tuple[Any, ...], Traced] | None = None
        self._canvas = _Canvas(Figure())  # renderers and text kept for every redraw
        grid = widgets.GridBox(list(self.controls.values()), layout=widgets.Layout(
            grid_template_columns="repeat(3, minmax(240px, 1fr))"))
        super().__init__([grid, self.message, self.summary, self.figure])
        self.add_class("dlviz-explorer")
        self._sync_controls()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        if self._request():
            self._work()  # the first pass, here: the widget shows a run when returned

    # --- requests: from sliders (observer, any thread) or from rerun() ---
    def _on_change(self, change: dict[str, Any]) -> None:
        if self._quiet or self._closed:
            return
        with self._state:
            for name, control in self.controls.items():
                self.values[name] = control.value
        self._sync_controls()
        if self._request():
            threading.Thread(target=self._work, daemon=True, name="dlviz-explore").start()

    def _request(self) -> bool:
        """Ask for a pass with the current values; True if the caller must run it.

        A pass that is running sees the newer request at its next batch, stops, and
        the same thread records again with the newest values (see :meth:`_work`).
        """
        with self._state:
            self._generation += 1
            if self._busy:
                return False
            self._busy = True
            return True

    def _work(self) -> None:
        """Record until the newest request is done (one thread at a time: ``_busy``)."""
        done = False
        try:
            while not done:
                with self._state:
                    generation = self._generation
                    values = dict(self.values)

                def superseded(wanted: int = generation) -> bool:
                    return wanted != self._generation or self._closed

                self._refresh(values, superseded)
                with self._state:
                    done = generation == self._generation or self._closed
                    if done:
                        self._busy = False
                        self._state.notify_all()
        finally:
            if not done:  # an unexpected error: never leave the explorer stuck busy
                with self._state:
                    self._busy = False
                    self._state.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no pass is running or pending; False if ``timeout`` ran out."""
        with self._state:
            return self._state.wait_for(lambda: not self._busy, timeout)

    @contextlib.contextmanager
    def _setting_controls(self) -> Iterator[None]:
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _sync_controls(self) -> None:
        """Grey out what does not apply (prefetch etc. without workers; fault index)."""
        workers = self.values["num_workers"]
        with self._setting_controls():
            for name in ("prefetch_factor", "persistent_workers", "start_method", "in_order"):
                if name in self.controls:
                    self.controls[name].disabled = workers == 0
            if "fault_at" in self.controls:
                self.controls["fault_at"].disabled = self.values["fault"] == "none"
            if "fault_at" in self.controls and "fault_at" not in self._ranges:
                control = self.controls["fault_at"]
                # every index of the dataset is in reach; a value past the end stays
                # (and is explained: no fault) instead of being moved silently
                control.max = max(self.values["n"] - 1, self.values["fault_at"])

    # --- the one path every re-run takes ---
    def rerun(self, **values: Any) -> Run:
        """Set controls (by name), record a new pass and wait for it; returns its Run.

        Unknown names raise ``ValueError``, bad values ``TypeError``/``ValueError``
        naming the control. A value outside a slider's range widens the range.
        """
        if self._closed:
            raise RuntimeError("this explorer is closed")
        unknown = sorted(set(values) - set(CONTROLS))
        if unknown:
            raise ValueError(f"unknown controls {unknown}; known: {sorted(CONTROLS)}")
        checked = {name: _checked(name, value) for name, value in values.items()}
        with self._state:
            self.values.update(checked)
        with self._setting_controls():
            for name, value in checked.items():
                control = self.controls.get(name)
                if control is None:
                    continue
                if isinstance(control, (widgets.IntSlider, widgets.FloatSlider)):
                    control.min = min(control.min, value)
                    control.max = max(control.max, value)
                control.value = value
        self._sync_controls()
        if self._request():
            self._work()
        else:  # a background pass is running: it picks up these values next
            self.wait()
        if self.run is None:
            raise RuntimeError(f"the explorer could not record a pass: {self.error}")
        return self.run

    def refresh(self) -> None:
        """Record and draw again with the current values (waits for it)."""
        if self._request():
            self._work()
        else:
            self.wait()

    def _refresh(self, values: dict[str, Any], superseded: Callable[[], bool]) -> None:
        """Record a pass with ``values`` and draw it (errors shown, never raised).

        "running a real DataLoader…" is shown only when the pass has taken
        :data:`ANNOUNCE_AFTER_S` (a spawn start, a slow dataset): a quick pass changes
        the page once, with its result, and the browser does no work while it runs."""
        self.passes += 1
        announce = threading.Timer(ANNOUNCE_AFTER_S, self._announce)
        announce.daemon = True
        announce.start()
        try:
            run, runs, png, notes, error = self._record_and_draw(values, superseded)
        finally:
            announce.cancel()
            announce.join()  # an announcement under way lands before the result
        if superseded():
            return
        self.run = run
        self.runs = runs
        self.png = png
        self.error = error if run is None else ""
        self.figure.outputs = () if not png else (
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": base64.b64encode(png).decode(), "text/plain": repr(run)}},)
        self.summary.value = _summary_html(run) if run is not None else ""
        self.message.value = _message_html(notes, error, run, values["on_error"])
        # the figure is not cleared: Figure.clear() rebuilds every Axes' ticks (about a
        # tenth of the drawing time) only to throw them away; the garbage collector
        # takes the figure's cycles instead (the leak test counts figures after a gc)

    def _announce(self) -> None:
        self.message.value = "<i>running a real DataLoader…</i>"

    def _record_and_draw(self, values: dict[str, Any], superseded: Callable[[], bool]
                         ) -> tuple[Run | None, list[Run], bytes, list[str], str]:
        """The pass (or lesson 9's job) and its picture: Run, the job's Runs, PNG,
        notes on adjusted settings, and the error that stopped it ("" if none)."""
        notes: list[str] = []
        error = ""
        run = None
        runs: list[Run] = []
        try:
            if values["resume"] != "none":  # lesson 9: record a job of two passes
                self._close_persistent()
                runs, notes = _record_job(values)
                run = merge_runs(runs, by="pass")
            else:
                loader, notes = build_loader(values)
                run = self._record(loader, values, superseded)
        except Exception as exc:  # shown in the widget, never raised into the kernel
            run = getattr(exc, "dlviz_run", None)
            error = f"{type(exc).__name__}: {exc}"
        png = b""
        if run is not None and not superseded():
            try:
                png = (_render_job(runs) if runs else render_png(run, canvas=self._canvas)[0])
            except Exception as exc:  # a drawing bug must not take the explorer down
                error = f"could not draw the run: {type(exc).__name__}: {exc}"
        return run, runs, png, notes, error

    def _record(self, loader: DataLoader[Any], values: dict[str, Any],
                superseded: Callable[[], bool]) -> Run:
        max_batches = values["max_batches"] or None
        step_s = values["step_ms"] / 1000
        if not loader.persistent_workers:
            self._close_persistent()
            return play(Traced(loader), values["on_error"], max_batches, step_s, superseded)
        # persistent workers: keep the traced loader while only loop settings change
        key = tuple(sorted((k, v) for k, v in values.items() if k not in LOOP_SETTINGS))
        if (self._persistent is None or self._persistent[0] != key
                or len(self._persistent[1].epochs) >= PERSISTENT_PASSES):
            self._close_persistent()
            self._persistent = (key, Traced(loader))
        traced = self._persistent[1]
        try:
            run = play(traced, values["on_error"], max_batches, step_s, superseded,
                       keep_workers=True)
        except BaseException:
            self._close_persistent()
            raise
        if run.stop not in ("exhausted", "max_batches", "break"):  # workers were stopped
            self._close_persistent()
        return run

    def _close_persistent(self) -> None:
        if self._persistent is not None:
            traced = self._persistent[1]
            self._persistent = None
            traced.close()

    def close(self) -> None:
        """Stop the running pass and any persistent workers, and close the widgets."""
        if not hasattr(self, "_state"):  # __init__ did not get this far
            return
        with self._state:
            self._closed = True
            self._generation += 1
        self.wait()
        self._close_persistent()
        for control in self.controls.values():
            control.close()
        for part in (self.message, self.summary, self.figure):
            part.close()
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live widget, plus the last figure as PNG for static viewers and papermill."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if self.png and isinstance(bundle, dict):
            bundle["image/png"] = base64.b64encode(self.png).decode()
        return bundle


def _record_job(values: dict[str, Any]) -> tuple[list[Run], list[str]]:
    """Lesson 9: a pass checkpointed after ``checkpoint_at`` batches and the pass that
    resumes it (:func:`dlviz.checkpoint.record_resume`), and notes on what was adjusted."""
    from dlviz.checkpoint import record_resume

    n, size, workers = values["n"], values["batch_size"], values["num_workers"]
    batches = n // size if values["drop_last"] else -(-n // size)
    at = min(values["checkpoint_at"], batches - 1)
    notes = [] if at == values["checkpoint_at"] else [
        f"checkpoint_at={values['checkpoint_at']}: the epoch has {batches} batches; "
        f"checkpointed after batch {at} instead."]
    if at < 1:
        raise ValueError(f"an epoch of {batches} batch(es) has no step to checkpoint after")
    method = values["start_method"]
    runs = record_resume(
        SyntheticDataset(n, cost_ms=values["cost_ms"]), checkpoint_at=at,
        resume=values["resume"], batch_size=size, shuffle=values["shuffle"],
        seed=values["seed"], start_method=None if method == "default" else method,
        num_workers=workers, drop_last=values["drop_last"],
        prefetch_factor=values["prefetch_factor"] if workers else None,
        persistent_workers=values["persistent_workers"] and workers > 0)
    return runs, notes


def _render_job(runs: list[Run]) -> bytes:
    """The job's passes as :func:`dlviz.checkpoint.plot_resume` draws them, as PNG."""
    from dlviz.checkpoint import plot_resume

    fig = plot_resume(runs, Figure(figsize=(12, 4.6), dpi=DPI, layout="constrained"))
    FigureCanvasAgg(fig).draw()  # type: ignore[no-untyped-call]
    return encode_png(fig)


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


def _headline(message: str, kind: str) -> str:
    """The line of an error message that says what happened.

    torch wraps a worker's exception as "Caught ValueError in DataLoader worker
    process 0. Original Traceback ...": the last line is the exception itself.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return kind
    if len(lines) > 1 and "Original Traceback" in message:
        return f"{lines[-1]} ({lines[0].rstrip('.')})"
    return lines[0]


def _message_html(notes: list[str], error: str, run: Run | None, on_error: str) -> str:
    parts = [f"<li>{html.escape(n)}</li>" for n in notes]
    if run is not None:
        for e in run.errors:
            where = f"worker {e.worker}" if e.worker is not None and e.worker >= 0 else "main"
            at = f", index {e.index}" if e.index is not None else ""
            parts.append(f'<li style="color:{FATE_COLORS["failed"]}"><b>{e.kind}</b> '
                         f"({where}{at}): {html.escape(_headline(e.message, e.kind))}</li>")
        if run.errors and on_error == "raise":
            parts.append("<li>on_error='raise': your loop would stop here with this error; "
                         "the explorer shows it instead of raising it.</li>")
        parts += [f"<li>{html.escape(n)}</li>" for n in run.notes]
    if error and (run is None or not run.errors):
        parts.append(f'<li style="color:{FATE_COLORS["failed"]}">{html.escape(error)}</li>')
    return '<ul class="dlviz-message">' + "".join(parts) + "</ul>" if parts else ""


def _controls_arg(controls: Any) -> list[str]:
    if controls is None:
        return list(DEFAULT_SHOWN)
    if isinstance(controls, (str, bytes)) or not isinstance(controls, (list, tuple)):
        raise TypeError(f"controls must be a list of control names, "
                        f"not {type(controls).__name__}")
    bad = [c for c in controls if not isinstance(c, str)]
    if bad:
        raise TypeError(f"controls must be control names (str), got {bad[0]!r}")
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ValueError(f"controls: unknown {unknown}; known: {sorted(CONTROLS)}")
    return list(dict.fromkeys(controls))  # in order, each once


def _ranges_arg(ranges: Any) -> dict[str, tuple[Any, Any]]:
    if ranges is None:
        return {}
    if not isinstance(ranges, dict):
        raise TypeError(f"ranges must be a dict {{name: (low, high)}}, "
                        f"not {type(ranges).__name__}")
    out = {}
    for name, span in ranges.items():
        if name not in CONTROLS or CONTROLS[name].kind not in ("int", "float"):
            raise ValueError(f"ranges: {name!r} is not a slider")
        if not (isinstance(span, (tuple, list)) and len(span) == 2):
            raise TypeError(f"ranges[{name!r}] must be a (low, high) tuple")
        try:
            low, high = _checked(name, span[0]), _checked(name, span[1])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"ranges[{name!r}]: {exc}") from None
        if low > high:
            raise ValueError(f"ranges[{name!r}] must be (low, high) with low <= high, "
                             f"got {tuple(span)}")
        out[name] = (low, high)
    return out


def explore(*, controls: Sequence[str] | None = None,
            ranges: dict[str, tuple[Any, Any]] | None = None, **initial: Any) -> Explorer:
    """An explorer widget over a real DataLoader (lesson 0 shows how to use it).

    Args:
        controls: which controls to show, by name (DataLoader's argument names:
            ``batch_size``, ``num_workers``, ``prefetch_factor``, ``drop_last``,
            ``shuffle``, ``persistent_workers``, ``in_order``; ``n`` for the dataset
            size; ``fault`` and ``fault_at``, or ``fail_at``/``crash_at``/``hang_at``/
            ``none_at`` directly; ``on_error``, ``max_batches``, ``cost_ms``,
            ``step_ms``, ``start_method``, ``seed``; ``resume`` and ``checkpoint_at``:
            with ``resume`` not ``"none"`` every change records a job, a pass
            checkpointed after ``checkpoint_at`` batches and the pass that resumes it,
            and draws both (``widget.runs``; ``widget.run`` merges them), lesson 9).
            Default: the common ones.
        ranges: ``{name: (low, high)}`` for sliders, e.g. ``{"num_workers": (0, 4)}``.
        **initial: starting values for any control, shown or not.

    Records the first pass before it returns. Returns the widget;
    ``widget.rerun(**values)`` records a new pass headlessly.
    """
    shown = _controls_arg(controls)
    unknown = sorted(set(initial) - set(CONTROLS))
    if unknown:
        raise ValueError(f"unknown controls {unknown}; known: {sorted(CONTROLS)}")
    spans = _ranges_arg(ranges)
    values = {name: spec.default for name, spec in CONTROLS.items()}
    values.update({name: _checked(name, value) for name, value in initial.items()})
    if "fault_at" not in initial:
        values["fault_at"] = values["n"] // 2
    for name, (low, high) in spans.items():
        if low <= values[name] <= high:
            continue
        if name in initial:
            raise ValueError(f"{name}={values[name]} is outside ranges[{name!r}] "
                             f"= ({low}, {high})")
        values[name] = min(max(values[name], low), high)  # a default: moved into range
    return Explorer(shown, values, spans)
