"""Draw a recorded :class:`dlviz.Run`: the timeline, the ledger, and both together.

- :func:`plot_timeline`: what every process did, and when (lessons 0, 1, 3, 8).
- :func:`plot_ledger`: what became of every dataset index (lessons 1-7).
- :func:`plot_run`: both, plus the counts, as the notebooks and the explorer show it.
- :func:`plot_pipeline`: the stages a batch goes through, with this run's counts (lesson 0).
- :func:`plot_waterfall`: from the dataset's size to what your loop got, one bar per
  cause that :func:`dlviz.explain` names (lesson 7).

Plots read only a Run, so a run loaded with :meth:`dlviz.Run.from_json` draws
anywhere, without torch. Fates always wear the colours of
:data:`dlviz.ledger.FATE_COLORS` (Okabe-Ito, colour-blind safe). The functions
follow matplotlib's conventions: they draw on the Axes you pass (or the current
one), return it, never call ``plt.show()`` and never touch ``rcParams``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Patch

from dlviz.ledger import FATE_COLORS, FATES, SUMMARY_KEYS
from dlviz.run import MAIN, STATUSES, BatchInfo, Events, Run

__all__ = ["plot_timeline", "plot_ledger", "plot_run", "plot_pipeline", "plot_passes",
           "plot_waterfall", "BATCH_COLORS"]

BATCH_COLORS = ("#BBCCEE", "#CCDDAA", "#DDDDDD", "#EEEEBB", "#CCEEFF", "#E8D0E8", "#FFD8C8")
"""Pale tints for fetch spans, cycling with the batch number (7: never in step with
round-robin dispatch). Pale, so that the fate colours drawn on top stand out."""
_BATCH_RGBA = np.array([to_rgba(c) for c in BATCH_COLORS])
COLLATE_COLOR, WAIT_COLOR, STEP_COLOR, INK = "#333333", "#F0E442", "#777777", "#222222"
_LOADING = -2  # lane of fetches the main process does itself (num_workers=0)
_H = 0.62  # span height in lane units
_LEDGER = ("delivered", "duplicated", "dropped", "failed", "filtered", "in_flight",
           "never_sampled")
_LEDGER_LABELS = {"delivered": "delivered once", "duplicated": "delivered 2+ times",
                  "in_flight": "in flight", "never_sampled": "never sampled"}
_LEGEND = {"fontsize": 8, "frameon": False, "handlelength": 1.6, "borderaxespad": 0.0}
MAX_LEADS = 1000
"""More batches than this: the lines from each dispatch to its delivery are left out (at
that density they are a grey wash); the triangles and circles stay."""
DENSE_SPANS = 50_000
"""A lane with more spans than this is drawn as a density strip (how busy the lane
was in each pixel column) instead of one bar per span: the same reading, drawn in
a fraction of the time (a 1.28M-sample epoch in about a second)."""

Lane = tuple[int, int]  # (rank, worker); worker MAIN = your loop, _LOADING = main's fetches


def _ms(ns: Any) -> Any:
    return np.asarray(ns, dtype=float) / 1e6


def _ranges(values: Iterable[int], limit: int = 3) -> str:
    """``[40, 41, 42, 44]`` -> ``"40-42, 44"`` (at most ``limit`` runs, then a count)."""
    runs: list[list[int]] = []
    for v in sorted(set(values)):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    more = sum(b - a + 1 for a, b in runs[limit:])
    return text + (f" and {more} more" if more else "")


def _lane_name(lane: Lane, ranks: int, part: str = "rank") -> str:
    """``worker 1``; with several ranks (or passes, merged by ``merge_runs``): ``rank 0
    worker 1``."""
    rank, worker = lane
    name = {MAIN: "main", _LOADING: "main (fetch)"}.get(worker, f"worker {worker}")
    return f"{part} {rank} {name}" if ranks > 1 else name


def _part(run: Run) -> str:
    """What a merged Run's ``rank`` column counts: ranks, or passes (epochs)."""
    return "pass" if run.config.get("merged_by") == "pass" else "rank"


def _lane_column(events: Events) -> np.ndarray:
    """Each event's lane worker: its worker, or :data:`_LOADING` for fetches and collates
    the main process did itself (num_workers=0)."""
    worker = events.column("worker").astype(np.int64)
    own = (worker == MAIN) & events.is_("kind", "fetch", "collate")
    return np.where(own, _LOADING, worker)


def _pairs(rank: Any, worker: Any) -> list[Lane]:
    """The distinct ``(rank, worker)`` pairs of two columns, sorted (counted, not sorted:
    a million events take milliseconds)."""
    rank, worker = np.asarray(rank, dtype=np.int64), np.asarray(worker, dtype=np.int64) + 8
    if not len(rank):
        return []
    out = []
    ranks = np.flatnonzero(np.bincount(rank)) if rank.min() >= 0 else np.unique(rank)
    for r in ranks.tolist():
        mine = worker if len(ranks) == 1 else worker[rank == r]
        out += [(r, w - 8) for w in np.flatnonzero(np.bincount(mine)).tolist()]
    return out


def _lanes(run: Run) -> dict[Lane, int]:
    """Row of every lane, top to bottom: per rank, main, main's own fetches, workers."""
    ev = run.events
    keep = ~ev.is_("kind", "deliver")
    lanes: set[Lane] = set(_pairs(ev.column("rank")[keep], _lane_column(ev)[keep]))
    lanes |= {(r, MAIN) for r, _ in lanes} | {(0, MAIN)}
    if int(run.config.get("world_size", 1)) == 1:  # idle workers get a lane too
        lanes |= {(0, w) for w in range(int(run.config.get("num_workers", 0)))}
    order = sorted(lanes, key=lambda k: (k[0], {MAIN: -2, _LOADING: -1}.get(k[1], k[1])))
    return {lane: row for row, lane in enumerate(order)}


def _bars(ax: Axes, x0: Any, x1: Any, y: float, colors: Any, gid: str,
          **kw: Any) -> PolyCollection | None:
    """Many spans on one lane as a single PolyCollection (fast: one artist per lane)."""
    x0, x1 = np.atleast_1d(x0), np.atleast_1d(x1)
    if not len(x0):
        return None
    verts = np.empty((len(x0), 4, 2))
    verts[:, :, 0] = np.stack([x0, x0, x1, x1], axis=1)
    verts[:, :, 1] = [y + _H / 2, y - _H / 2, y - _H / 2, y + _H / 2]
    thin = len(x0) > 400 or "edgecolors" in kw
    kw.setdefault("edgecolors", "none" if thin else "white")
    kw.setdefault("linewidths", 0.4)
    bars = PolyCollection(verts, facecolors=colors, gid=gid, zorder=2, **kw)  # type: ignore[arg-type]
    ax.add_collection(bars, autolim=False)
    return bars


def plot_timeline(run: Run, ax: Axes | None = None) -> Axes:
    """Draw what every process did, and when: one lane per process, time in ms.

    - Lane ``main``: your loop. Yellow spans: ``__next__`` waiting for a batch;
      grey spans: your loop's step. Circles at the bottom of the lane: a batch
      handed to your loop (green) or lost (vermillion); thin lines join each one
      to the triangle where its indices were sent to a worker, so the distance
      between them is how far ahead the DataLoader prefetched it.
    - Lanes ``worker 0``, ``worker 1``, ...: one span per ``dataset[i]`` fetch,
      tinted by batch (its number written on it when there is room), then the
      dark ``collate`` span that assembles the batch. Hatched: a fetch that never
      finished (the worker hung or died). With ``num_workers=0`` the main process
      fetches itself, in lane ``main (fetch)``.
    - Errors: a cross at the failing fetch (exception), where the worker died,
      or where ``__next__`` timed out, labelled with the kind. A ``drop_last``
      tail is marked with its indices ("dropped 40-44").
    - A thin panel under the lanes (an inset Axes, ``ax.child_axes[0]``): how
      many batches were outstanding (sent, not yet delivered or lost) over time,
      against the ``prefetch_factor * num_workers`` ceiling.
    - At scale (a lane with more than :data:`DENSE_SPANS` spans: an ImageNet-size
      epoch), the lane's spans are one density strip, as opaque as the lane was
      busy in each pixel column; failed, None and unfinished fetches stay bars.
      If the event log ever filled up, the top right says so in red.

    Used in lesson 0 (the pipeline map), 1 (the main process waits, the buffer
    never "runs dry"), 3 (errors, crashes, timeouts) and 8 (finding the bottleneck).
    Returns the Axes of the lanes; the legend sits to its right, outside.
    """
    ax = ax or plt.gca()
    lanes = _lanes(run)
    ranks = len({rank for rank, _ in lanes})
    y = {lane: float(row) for lane, row in lanes.items()}
    end_ms = max(run.duration / 1e6, 1e-3)
    deaths = {(x.rank, x.worker): x.time for x in run.errors if x.kind == "worker_died"}
    legend: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    # points, not pixels: which labels fit must not depend on the dpi it is drawn at
    pt_per_ms = ax.get_window_extent().width * 72 / ax.figure.dpi / end_ms

    spans = run.events.of_kind("fetch", "collate", "wait", "step")
    lane_of, rank_of = _lane_column(spans), spans.column("rank")
    kinds = spans.column("kind")
    drawn_fetches = False
    for code in np.unique(kinds).tolist():
        kind = spans.names["kind"][code]
        for lane in _pairs(rank_of[kinds == code], lane_of[kinds == code]):
            mine = (kinds == code) & (rank_of == lane[0]) & (lane_of == lane[1])
            name, ly = _lane_name(lane, ranks, _part(run)), y[lane]
            start = _ms(spans.column("start")[mine])  # only the columns drawn are read
            stop = _ms(np.minimum(spans.column("end")[mine],
                                  deaths.get(lane, np.iinfo(np.int64).max)))
            if kind == "fetch":
                drawn_fetches = True
                _fetch_lane(ax, spans.column("status")[mine], spans.column("batch")[mine],
                            start, stop, ly, name, pt_per_ms, end_ms, extra)
            else:
                color = {"collate": COLLATE_COLOR, "wait": WAIT_COLOR, "step": STEP_COLOR}[kind]
                bars = _bars(ax, start, stop, ly, color, f"{kind}:{name}") if len(start) <= \
                    DENSE_SPANS else _density(ax, start, stop, ly, color, f"{kind}:{name}", end_ms)
                if bars and kind == "wait":  # measured inside __next__: on top of inferred steps
                    bars.set_zorder(2.2)
    if drawn_fetches:
        legend["fetch dataset[i] (tint = batch)"] = tuple(Patch(fc=c) for c in BATCH_COLORS[:3])
        legend.update(sorted(extra.items()))
        legend["collate (batch assembly)"] = Patch(color=COLLATE_COLOR)
    legend["main waits in __next__"] = Patch(color=WAIT_COLOR)
    legend["your loop's step"] = Patch(color=STEP_COLOR)

    starts = [e for e in run.of_kind("worker_start") if (e.rank, e.worker) in y]
    if starts:
        ax.plot(_ms([e.start for e in starts]), [y[(e.rank, e.worker)] for e in starts], "|",
                color=INK, ms=14, mew=1.5, zorder=4, gid="worker_start")
        legend["worker started"] = _key("|", INK, ms=9)
    if len(run.of_kind("dispatch")) > MAX_LEADS:
        _dispatches_dense(ax, run, y, legend)
    else:
        _dispatches(ax, run, run.batches(), y, legend)
    _errors(ax, run, _dropped(run), y, legend)

    ax.set_ylim(len(lanes) - 0.45, -0.75)
    ax.set_xlim(0, end_ms * 1.01)
    ax.set_yticks(range(len(lanes)), [_lane_name(lane, ranks, _part(run)) for lane in lanes])
    ax.tick_params(axis="y", length=0)
    ax.xaxis.set_visible(False)  # the time axis is drawn under the panel below
    ax.spines[:].set_visible(False)
    # y given: matplotlib need not look for tick labels above the Axes (there are none)
    ax.set_title("Timeline: who fetched what, and when", loc="left", fontsize=11, y=1.0)
    _legend(ax, list(legend.values()), list(legend), loc="upper left",
            bbox_to_anchor=(1.01, 1), handler_map={tuple: HandlerTuple(ndivide=None, pad=0)})
    missing = [n for n in run.notes if "filled up" in n]
    if missing:  # a limit was reached: say so on the picture, not only in run.notes
        ax.text(1.0, 1.0, "incomplete: " + "; ".join(missing), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color=FATE_COLORS["failed"],
                gid="log_incomplete")
    _window(ax, run, end_ms)
    return ax


def _fetch_lane(ax: Axes, status: Any, batch: Any, start: Any, stop: Any, ly: float,
                name: str, pt_per_ms: float, end_ms: float, extra: dict[str, Any]) -> None:
    """One lane's fetches (their status codes and batches): tinted by batch, errors and
    None in fate colours, unfinished ones hatched; past :data:`DENSE_SPANS`, a density
    strip with the odd ones on top."""
    ok = status == STATUSES.index("ok")
    none = status == STATUSES.index("none")
    unfinished = status == STATUSES.index("unfinished")
    if len(status) > DENSE_SPANS:  # the common spans as density; the rare ones as bars
        _density(ax, start[ok], stop[ok], ly, BATCH_COLORS[0], f"fetch:{name}", end_ms)
        keep = ~ok
    else:
        keep = np.ones(len(status), dtype=bool)
    colors = np.zeros((len(status), 4))
    colors[keep] = _BATCH_RGBA[batch[keep] % len(BATCH_COLORS)]
    colors[status == STATUSES.index("raised")] = to_rgba(FATE_COLORS["failed"])
    colors[none] = to_rgba(FATE_COLORS["filtered"])
    done = keep & ~unfinished
    _bars(ax, start[done], stop[done], ly, colors[done], f"fetch:{name}")
    if _bars(ax, start[unfinished], stop[unfinished], ly, colors[unfinished],
             f"unfinished:{name}", hatch="////", edgecolors="#666666"):
        extra["fetch never finished"] = Patch(fc=BATCH_COLORS[0], ec="#666666", hatch="////")
    if none.any():
        extra["fetch returned None"] = Patch(color=FATE_COLORS["filtered"])
    if len(status) <= DENSE_SPANS:
        _batch_numbers(ax, batch, start, stop, ly, pt_per_ms)


def _density(ax: Axes, start: Any, stop: Any, y: float, color: str, gid: str,
             end_ms: float) -> Any:
    """Many spans on one lane as a strip whose opacity is the share of each pixel
    column the spans cover (one image instead of a bar per span)."""
    if not len(start):
        return None
    bins = 2000
    edges = np.linspace(0, end_ms * 1.01, bins + 1)
    width = edges[1] - edges[0]
    busy = np.zeros(bins + 1)
    # each span adds its length to the columns it covers (difference array, then cumsum)
    a = np.clip(start / width, 0, bins)
    b = np.clip(stop / width, 0, bins)
    ia, ib = a.astype(np.int64), b.astype(np.int64)
    same = ia == ib
    np.add.at(busy, ia[same], (b - a)[same])
    split = ~same
    np.add.at(busy, ia[split], (ia[split] + 1 - a[split]))  # the first, partial column
    np.add.at(busy, ib[split], (b[split] - ib[split]))  # the last, partial column
    full = np.zeros(bins + 2)  # whole columns in between
    np.add.at(full, ia[split] + 1, 1)
    np.add.at(full, ib[split], -1)
    busy += np.cumsum(full)[:bins + 1]
    rgba = np.zeros((1, bins, 4))
    rgba[0, :, :3] = to_rgba(color)[:3]
    rgba[0, :, 3] = np.clip(busy[:bins], 0, 1) ** 0.5
    image = ax.imshow(rgba, extent=(edges[0], edges[-1], y + _H / 2, y - _H / 2),
                      aspect="auto", interpolation="nearest", zorder=2, gid=f"density:{gid}")
    return image


def _legend(ax: Axes, handles: Sequence[Any], labels: Sequence[str], **kw: Any) -> None:
    """``ax.legend(handles, labels, **kw)`` in this module's style, unless ``ax`` shows a
    legend of these very labels already: here a label always comes with the same
    handle, so it would look the same (the explorer draws each run on the Axes of the
    last one, and making a legend is a good part of its drawing time)."""
    old = ax.get_legend()
    if old is not None and [t.get_text() for t in old.get_texts()] == list(labels):
        return
    ax.legend(list(handles), list(labels), **{**kw, **_LEGEND})


def _key(marker: str, color: str, ls: str = "", **kw: Any) -> Line2D:
    """A legend entry for a marker."""
    return Line2D([], [], ls=ls, marker=marker, color=color, mec=INK, **kw)


def _note(ax: Axes, text: str, xy: tuple[float, float], offset: tuple[float, float],
          ha: str, gid: str, edge: str) -> None:
    """A small label in a white box, ``offset`` points away from ``xy``."""
    ax.annotate(text, xy, xytext=offset, textcoords="offset points", ha=ha, va="center",
                fontsize=8, color=INK, zorder=7, gid=gid, bbox={
                    "boxstyle": "round,pad=0.2", "fc": "white", "ec": edge, "alpha": 0.9})


def _batch_numbers(ax: Axes, batches: Any, start: Any, stop: Any, ly: float,
                   pt_per_ms: float) -> None:
    """Write each batch's number on its fetches, where it fits (about 6.5 points plus
    3.6 per digit: the same at any dpi, so every copy of a picture labels the same)."""
    batches = np.asarray(batches)
    if not len(batches):
        return
    order = np.argsort(batches, kind="stable")
    numbers, first = np.unique(batches[order], return_index=True)
    low = np.minimum.reduceat(np.asarray(start)[order], first)
    high = np.maximum.reduceat(np.asarray(stop)[order], first)
    room = (high - low) * pt_per_ms >= 0.72 * (9 + 5 * np.char.str_len(numbers.astype(str)))
    for batch, a, b in zip(numbers[room].tolist(), low[room].tolist(), high[room].tolist()):
        if batch >= 0:
            ax.text((a + b) / 2, ly, str(batch), ha="center", va="center", fontsize=7,
                    color="#444444", zorder=3, gid="batch_number")


def _dispatches(ax: Axes, run: Run, batches: Sequence[BatchInfo], y: dict[Lane, float],
                legend: dict[str, Any]) -> None:
    """Triangles where indices were sent, circles where batches ended, lines between."""
    sent: list[tuple[float, float, str]] = []
    segments, seg_styles = [], []
    ends: dict[str, list[tuple[float, float]]] = {}
    loop = run.of_kind("wait", "step").column("end")
    stopped = (loop.max() if len(loop) else run.duration) / 1e6  # when your loop stopped
    for b in batches:
        lane = (b.rank, _LOADING if b.worker == MAIN else b.worker)
        if b.dispatched is None or lane not in y:
            continue
        x0, top = b.dispatched / 1e6, y[lane] - _H / 2 - 0.08
        sent.append((x0, top, BATCH_COLORS[b.batch % len(BATCH_COLORS)]))
        fate = b.fate if b.indices else ""  # a stream's empty end-of-data request
        if fate in ("delivered", "failed", "in_flight"):
            x1 = stopped if b.done is None else b.done / 1e6
            bottom = y[(b.rank, MAIN)] + _H / 2 + 0.08
            segments.append([(x0, top), (x1, bottom)])
            seg_styles.append("--" if fate == "in_flight" else "-")
            ends.setdefault(fate, []).append((x1, bottom))
    dense = len(sent) > 80
    if sent:
        xs, ys, cs = zip(*sent, strict=True)
        ax.scatter(xs, ys, s=12 if dense else 22, c=cs, marker="v", edgecolors=INK,
                   linewidths=0.6, zorder=5, gid="dispatch")
        legend["indices sent to worker"] = _key("v", "white", ms=6)
    if segments and len(segments) <= MAX_LEADS:
        ax.add_collection(LineCollection(segments, colors="#8A8A8A", linewidths=0.7,
                                         alpha=0.4 if dense else 0.7,
                                         linestyles=seg_styles, zorder=1.5, gid="lead"),
                          autolim=False)
    for fate, label in (("delivered", "delivered to your loop"),
                        ("failed", "lost with an error"),
                        ("in_flight", "in flight at the stop")):
        if fate in ends:
            ax.plot(*zip(*ends[fate], strict=True), "o", color=FATE_COLORS[fate], mec=INK, mew=0.5,
                    ms=4 if dense else 5, zorder=5, gid=f"end:{fate}")
            legend[label] = _key("o", "#8A8A8A", ls="-", lw=0.7, mfc=FATE_COLORS[fate], mew=0.5,
                                 ms=5)


def _dispatches_dense(ax: Axes, run: Run, y: dict[Lane, float], legend: dict[str, Any]) -> None:
    """:func:`_dispatches` past :data:`MAX_LEADS` batches, from the event columns: the
    triangles and the circles, no lines (at that density they are a grey wash)."""
    sent = run.of_kind("dispatch")
    worker = sent.column("worker").astype(np.int64)
    lane = np.where(worker == MAIN, _LOADING, worker)
    rank = sent.column("rank").astype(np.int64)
    row = np.array([y.get((r, w), np.nan) for r, w in zip(rank.tolist(), lane.tolist())])
    shown = ~np.isnan(row)
    ax.scatter(_ms(sent.column("start"))[shown], row[shown] - _H / 2 - 0.08, s=12,
               c=_BATCH_RGBA[sent.column("batch")[shown] % len(BATCH_COLORS)], marker="v",
               edgecolors=INK, linewidths=0.6, zorder=5, gid="dispatch")
    legend["indices sent to worker"] = _key("v", "white", ms=6)
    for kind, fate, label in (("deliver", "delivered", "delivered to your loop"),
                              ("lost", "failed", "lost with an error")):
        ends = run.of_kind(kind)
        if not len(ends):
            continue
        main = np.array([y[(r, MAIN)] for r in ends.column("rank").tolist()])
        ax.plot(_ms(ends.column("start")), main + _H / 2 + 0.08, "o", color=FATE_COLORS[fate],
                mec=INK, mew=0.5, ms=4, zorder=5, gid=f"end:{fate}")
        legend[label] = _key("o", "#8A8A8A", ls="-", lw=0.7, mfc=FATE_COLORS[fate], mew=0.5,
                             ms=5)


def _dropped(run: Run) -> list[BatchInfo]:
    """The batches ``drop_last`` threw away, with their indices (from the ledger's
    columns: no list of every batch)."""
    occ = run.occurrences
    drop = occ.is_("fate", "dropped")
    if not drop.any():
        return []
    rank, batch, index = (occ.column(n)[drop] for n in ("rank", "batch", "index"))
    sent = run.of_kind("dispatch")
    worker_of = dict(zip(zip(sent.column("rank").tolist(), sent.column("batch").tolist()),
                         sent.column("worker").tolist()))
    out = []
    for r, b in sorted(set(zip(rank.tolist(), batch.tolist()))):
        mine = (rank == r) & (batch == b)
        out.append(BatchInfo(b, worker_of.get((r, b), MAIN), tuple(index[mine].tolist()),
                             None, None, "dropped", r))
    return out


def _errors(ax: Axes, run: Run, batches: Sequence[BatchInfo], y: dict[Lane, float],
            legend: dict[str, Any]) -> None:
    """A cross per error (with its kind), and the dropped tail with its indices."""
    end_ms = run.duration / 1e6
    failed = run.of_kind("fetch", "collate")
    spans = {(e.rank, e.batch, e.kind): e for e in failed.where(failed.is_("status", "raised"))}
    for err in run.errors:
        main, lane = (err.rank, MAIN), (err.rank, MAIN if err.worker is None else err.worker)
        x, label = err.time / 1e6, err.kind.replace("_", " ")
        if err.kind == "exception":
            batch = -1 if err.batch is None else err.batch
            span = spans.get((err.rank, batch, "fetch")) or spans.get((err.rank, batch, "collate"))
            if span is not None:
                x, lane = span.end / 1e6, (span.rank, span.worker)
                if span.worker == MAIN:
                    lane = (span.rank, _LOADING)
                if span.kind == "collate":
                    label += " in collate"
                elif err.index is not None:  # a stream's failing key is unknown
                    label += f" at index {err.index}"
        elif err.kind == "timeout":
            lane, label = main, f"timeout ({run.config.get('timeout', 0):g} s)"
        ly, right = y.get(lane, y[main]), x > 0.7 * end_ms  # near the legend: text to the left
        ax.plot([x], [ly], "X", color=FATE_COLORS["failed"], mec=INK, mew=0.8, ms=11,
                zorder=6, gid=f"error:{err.kind}")
        _note(ax, label, (x, ly), (-6 if right else 6, 10), "right" if right else "left",
              "error_label", "none")
        legend["error (kind written next to it)"] = _key("X", FATE_COLORS["failed"], ms=8)
    for b in batches:
        if b.fate != "dropped" or not b.indices:
            continue
        lane = (b.rank, b.worker)
        fetches = run.of_kind("fetch")
        tail = fetches.column("end")[(fetches.column("batch") == b.batch)
                                     & (fetches.column("rank") == b.rank)]
        if lane not in y or not len(tail):  # map-style: the sampler's tail was never sent
            ends = run.events.column("end")[run.events.column("rank") == b.rank]
            x = ends.max() if len(ends) else run.duration
            lane, x, align, off = (b.rank, MAIN), x / 1e6, "right", -6
        else:
            x = tail.max() / 1e6
            align, off = ("right", -6) if x > 0.7 * end_ms else ("left", 6)
        ly = y[lane] - _H / 2 - 0.08
        ax.plot([x], [ly], "s", color=FATE_COLORS["dropped"], mec=INK, mew=0.5, ms=6,
                zorder=6, gid="dropped")
        _note(ax, f"dropped {_ranges(b.indices)}", (x, ly), (off, 0), align, "dropped_label",
              FATE_COLORS["dropped"])
        legend["dropped (drop_last)"] = _key("s", FATE_COLORS["dropped"], ms=6)


def _window(ax: Axes, run: Run, end_ms: float) -> Axes:
    """The thin panel under the lanes: outstanding batches vs the prefetch ceiling.

    An empty panel already under ``ax`` is drawn on (the explorer empties and reuses
    it: making an Axes builds its ticks, a good part of the drawing time)."""
    panels = [child for child in ax.child_axes if isinstance(child, Axes)
              and child.get_label() == "outstanding_panel" and not child.has_data()
              and not child.texts]
    if panels:
        panel = panels[0]
    else:
        height_in = ax.bbox.height / ax.figure.dpi
        frac = 0.62 / max(height_in, 0.5)
        panel = ax.inset_axes((0, -frac - 0.12 / max(height_in, 0.5), 1, frac), sharex=ax,
                              label="outstanding_panel")
    times, levels = run.outstanding_steps()
    last = int(levels[-1]) if len(levels) else 0
    t = _ms(np.concatenate([[0], times, [run.duration]]))
    level = np.concatenate([[0], levels, [last]])
    panel.fill_between(t, level, step="post", color="#C9D7E8", lw=0, gid="outstanding_fill")
    panel.step(t, level, where="post", color="#2B4C7E", lw=1.2, gid="outstanding")
    limit = run.prefetch_limit
    top = max(limit, int(level.max(initial=0)), 1)
    if limit:
        panel.axhline(limit, color=INK, ls="--", lw=0.9, gid="prefetch_limit")
        c = run.config
        panel.annotate(f"-- ceiling: prefetch_factor {c.get('prefetch_factor')}\n"
                       f"   x num_workers {c.get('num_workers')} = {limit}",
                       (1.01, limit), xycoords=panel.get_yaxis_transform(), va="center",
                       fontsize=8, color=INK, annotation_clip=False, gid="prefetch_limit_label")
    panel.set_ylim(0, top * 1.3)
    panel.set_yticks(sorted({0, limit or top}))
    panel.set_ylabel("batches\noutstanding", fontsize=8, rotation=0, ha="right", va="center")
    panel.tick_params(labelsize=8)
    panel.set_xlabel("time since the loop started (ms)", fontsize=9)
    panel.spines[["top", "right"]].set_visible(False)
    return panel


def _ledger_codes(run: Run) -> np.ndarray[Any, np.dtype[np.int8]]:
    """Each index's position in :data:`_LEDGER` (fates, with "duplicated" split out)."""
    led = run.ledger
    n = led.size
    to_ledger = np.array([_LEDGER.index(f) for f in FATES], dtype=np.int8)
    out = to_ledger[led.best[:n]]
    out[led.deliveries[:n] > 1] = _LEDGER.index("duplicated")
    if led.keys is not None:  # the ledger sorts keys; the plot keeps run.keys's order
        out = out[np.searchsorted(led.keys, run.keys)]
    return np.asarray(out, dtype=np.int8)


def _nice(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 25, 50, 100, 200, 250, ... that is >= x."""
    return min(v for v in (int(m * 10**k) for k in range(10) for m in (1, 2, 2.5, 5))
               if v >= min(x, 10**9))


def plot_ledger(run: Run, ax: Axes | None = None, *, columns: int | None = None) -> Axes:
    """Draw every dataset index (or stream key) as a cell coloured by its fate.

    Cells are laid out in rows of ``columns`` (chosen so cells come out roughly
    square, a round number so the index is easy to read: row start + column).
    Colours come from :data:`dlviz.ledger.FATE_COLORS`; "delivered 2+ times"
    (an index delivered more than once: padding, replacement, an unsharded
    stream) has its own. The legend (outside, to the right) gives each count.
    One image (``imshow``), so it stays fast at 100 000 indices.
    Lessons 1-7 read it: nothing lost (1), the dropped tail (2), failed and
    filtered batches (3), duplicated streams (5), never-sampled indices (6).
    """
    ax = ax or plt.gca()
    codes = _ledger_codes(run)
    n = len(codes)
    bbox = ax.get_window_extent()
    if columns is None:
        columns = min(_nice(math.sqrt(max(n, 1) * bbox.width / max(bbox.height, 1.0))), max(n, 1))
    rows = max(1, math.ceil(n / columns))
    table = np.array([to_rgba(FATE_COLORS[f]) for f in _LEDGER] + [(0.0, 0.0, 0.0, 0.0)])
    grid = np.full(rows * columns, len(_LEDGER), dtype=np.int8)
    grid[:n] = codes
    ax.imshow(table[grid.reshape(rows, columns)], aspect="auto", interpolation="nearest",
              extent=(-0.5, columns - 0.5, rows - 0.5, -0.5), gid="ledger")
    if columns <= 100 and rows <= 40:  # big cells: a white grid shows each index
        cols, rws = np.arange(1, columns) - 0.5, np.arange(1, rows) - 0.5
        lines = [[(x, -0.5), (x, rows - 0.5)] for x in cols]
        lines += [[(-0.5, r), (columns - 0.5, r)] for r in rws]
        ax.add_collection(LineCollection(lines, colors="white", linewidths=0.6), autolim=False)
    xstep = _nice(columns / 8)
    ax.set_xticks(range(0, columns, xstep))
    ystep = _nice(rows / 4)
    ax.set_yticks(range(0, rows, ystep), [str(r * columns) for r in range(0, rows, ystep)])
    ax.tick_params(labelsize=8)
    unit = "key" if run.keys is not None else "index"
    ax.set_xlabel(f"{unit} = row start + column", fontsize=8)
    counts = np.bincount(codes, minlength=len(_LEDGER))
    shown = [(f, f"{_LEDGER_LABELS.get(f, f)}: {counts[i]}") for i, f in enumerate(_LEDGER)
             if counts[i]]
    _legend(ax, [Patch(color=FATE_COLORS[f]) for f, _ in shown], [label for _, label in shown],
            loc="upper left", bbox_to_anchor=(1.01, 1), ncols=1 if len(shown) <= 5 else 2)
    what = "stream key" if run.keys is not None else "dataset index"
    ax.set_title(f"Ledger: the fate of every {what} ({n})", loc="left", fontsize=11, y=1.0)
    return ax


def _describe(run: Run) -> str:
    c = run.config
    parts = [str(c.get("dataset", "dataset")), f"{c.get('num_workers', '?')} workers",
             f"batch_size {c.get('batch_size')}"]
    if c.get("num_workers"):
        parts.append(f"prefetch_factor {c.get('prefetch_factor')}")
    parts += [k for k in ("drop_last", "persistent_workers") if c.get(k)]
    parts += [f"{k}={c[k]}" for k in ("on_error", "max_batches") if c.get(k)]
    return " · ".join(parts) + f"  (stopped: {run.stop})"


def _summary(fig: Figure, run: Run, box: tuple[float, float, float, float]) -> None:
    """The counts of ``run.summary()`` as a row of numbers, fates in their colours."""
    counts = run.summary()
    x0, y0, w, h = box
    for i, key in enumerate(SUMMARY_KEYS):
        color = FATE_COLORS.get(key, INK) if counts[key] else "#AAAAAA"
        fig.text(x0 + w * (i + 0.5) / len(SUMMARY_KEYS), y0 + h * 0.85,
                 f"{counts[key]}\n{key.replace('_', ' ')}", ha="center", va="top",
                 fontsize=9.5, linespacing=1.4, color=color, gid=f"count:{key}")


def plot_run(run: Run, *, counts: bool = True) -> Figure:
    """The whole run on one figure: timeline, ledger strip and the summary counts.

    Layout, top to bottom: :func:`plot_timeline` (with its outstanding-batches
    panel), :func:`plot_ledger` as a strip, and the counts of ``run.summary()``
    (``counts=False`` leaves that row out: the explorer shows the counts beside the
    picture; the ledger's legend still gives each fate's count).
    The figure is a plain :class:`matplotlib.figure.Figure`, not registered with
    pyplot, so redrawing it on every slider change (the explorer does) leaks
    nothing; a notebook shows it when it is the cell's value. Fixed sizes and no
    layout engine keep it cheap (``benchmarks/render.py`` times it).
    Lessons 0-8 all show their runs this way.
    """
    lanes = _lanes(run)
    names = [_lane_name(lane, len({r for r, _ in lanes}), _part(run)) for lane in lanes]
    left, right, width = max(1.0, 0.3 + 0.08 * max(map(len, names))), 2.75, 12.0
    rows = {"title": 0.55, "timeline": 0.5 * len(lanes) + 0.35, "window": 1.55, "ledger": 1.1,
            "gap": 0.55, "summary": 0.6, "bottom": 0.05}  # inches, top to bottom
    if not counts:
        rows.update(gap=0.45, summary=0.0)
    height = sum(rows.values())
    fig = Figure(figsize=(width, height), dpi=100)
    box, top = {}, height
    for name, h in rows.items():
        top -= h
        box[name] = (left / width, top / height, 1 - (left + right) / width, h / height)
    fig.suptitle(_describe(run), x=left / width, ha="left", y=1 - 0.12 / height, fontsize=11,
                 fontweight="bold")
    plot_timeline(run, fig.add_axes(box["timeline"]))
    plot_ledger(run, fig.add_axes(box["ledger"]))
    if counts:
        _summary(fig, run, (0.2 / width, box["summary"][1], 1 - 0.4 / width,
                            box["summary"][3]))
    return fig


def plot_passes(runs: Run | Sequence[Run], ax: Axes | None = None, *, show: str = "fate"
                ) -> Axes:
    """Every index (columns) in every pass, or rank (rows): what a job did to each sample.

    ``runs``: the passes of one job (``traced.runs``: epochs, or a checkpointed pass
    and its resumed pass), or a Run merged by :func:`dlviz.merge_runs`. ``show``:
    ``"fate"`` colours each cell by the index's fate in that pass (a resume that
    repeats indices shows them delivered twice; one that skips, never delivered);
    ``"order"`` colours it by when the index was delivered in its pass (dark: early,
    light: late; grey: not delivered), so identical rows mean the same order every
    epoch (``set_epoch`` forgotten). Lesson 9.
    """
    from dlviz.ledger import compute as ledger_of
    from dlviz.run import merge_runs

    if show not in ("fate", "order"):
        raise ValueError(f"show must be 'fate' or 'order', not {show!r}")
    if isinstance(runs, Run):
        merged = runs
    elif isinstance(runs, (list, tuple)):
        merged = merge_runs(runs, by="pass")
    else:
        raise TypeError(f"runs must be a dlviz.Run or a list of them, not {type(runs).__name__}")
    ax = ax or plt.gca()
    led = merged.ledger
    occ = merged.occurrences
    labels, occ_row, event_row = _pass_rows(merged)
    parts = len(labels)
    word = _part(merged)
    if show == "fate":
        to_ledger = np.array([_LEDGER.index(f) for f in FATES], dtype=np.int8)
        grid = np.stack([to_ledger[ledger_of(merged.dataset_size, merged.keys,
                                             occ.where(occ_row == p)).best[:led.size]]
                         for p in range(parts)]) if led.size else np.zeros((parts, 0), np.int8)
        table = np.array([to_rgba(FATE_COLORS[f]) for f in _LEDGER])
        image = table[grid]
        counts = np.bincount(grid.ravel(), minlength=len(_LEDGER))
        handles = [Patch(color=FATE_COLORS[f], label=_LEDGER_LABELS.get(f, f))
                   for i, f in enumerate(_LEDGER) if counts[i]]
    else:
        image = np.tile(np.array(to_rgba("#DDDDDD")), (parts, max(led.size, 1), 1))
        cmap = plt.get_cmap("viridis")
        for p in range(parts):
            order = np.asarray(Run(config=merged.config, dataset_size=merged.dataset_size,
                                   keys=merged.keys, events=merged.events.where(
                                       event_row == p), errors=[],
                                   occurrences=occ.where(occ_row == p), workers={}, duration=0,
                                   stop="exhausted").delivered(), dtype=np.int64)
            where = led.positions(order)
            ok = where >= 0
            image[p, where[ok]] = cmap(np.arange(len(order))[ok] / max(len(order) - 1, 1))
        handles = [Patch(color=cmap(0.0), label="delivered first"),
                   Patch(color=cmap(1.0), label="delivered last"),
                   Patch(color="#DDDDDD", label="not delivered")]
    ax.imshow(image, aspect="auto", interpolation="nearest",
              extent=(-0.5, max(led.size, 1) - 0.5, parts - 0.5, -0.5), gid=f"passes:{show}")
    ax.set_yticks(range(parts), labels)
    unit = "key" if merged.keys is not None else "index"
    ax.set_xlabel(f"dataset {unit} (position in the sorted dataset)" if merged.keys is not None
                  else "dataset index", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), **_LEGEND)
    what = "fate" if show == "fate" else "delivery order"
    rows = f"{word} and pass" if len(labels) > int(occ.column("rank").max(initial=0)) + 1 \
        else word
    ax.set_title(f"Every {unit} in every {rows}: its {what}", loc="left", fontsize=11)
    return ax


def _pass_rows(merged: Run) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The rows of :func:`plot_passes`: a label each, and the row of every occurrence and
    event. One row per part (rank or pass); a job merged by rank whose ranks ran several
    passes (``config["chained"]``: the first batch of each) gets one row per rank and pass."""
    word = _part(merged)
    occ_part = merged.occurrences.column("rank").astype(np.int64)
    event_part = merged.events.column("rank").astype(np.int64)
    parts = int(max(occ_part.max(initial=0), event_part.max(initial=0))) + 1
    chained = merged.config.get("chained")
    if not isinstance(chained, list) or len(chained) != parts:
        return [f"{word} {p}" for p in range(parts)], occ_part, event_part
    first_row = np.cumsum([0] + [len(c) for c in chained])
    labels = [f"{word} {p} · pass {k}" for p, c in enumerate(chained) for k in range(len(c))]

    def rows(part: np.ndarray, batch: np.ndarray) -> np.ndarray:
        out = np.zeros(len(part), np.int64)
        for p, starts in enumerate(chained):
            mine = part == p
            k = np.searchsorted(np.asarray(starts), batch[mine], side="right") - 1
            out[mine] = first_row[p] + np.clip(k, 0, len(starts) - 1)
        return out

    return (labels, rows(occ_part, merged.occurrences.column("batch")),
            rows(event_part, merged.events.column("batch")))


# ---------------------------------------------------------------- the pipeline map
_STAGE_FILL, _WORKER_FILL, _PROCESS_BAND, _OFF = "#F4F4F4", "#E4ECF7", "#EEF3FA", "#9A9A9A"
_COLUMNS = {"sampler": (6.5, 12.0), "batch_sampler": (23.5, 13.0), "queue": (40.5, 12.0),
            "worker": (58.0, 14.5), "reorder": (76.0, 13.0), "loop": (93.0, 12.0)}
"""Each stage's (x centre, width), in axis units 0..100."""


@dataclass(frozen=True)
class _Flow:
    """The numbers :func:`plot_pipeline` writes on its map, every one read from a Run."""

    iterable: bool
    workers: int
    in_order: bool
    dataset_size: int
    draws: int  # samples the sampler produced (a stream: the samples its workers yielded)
    unique: int  # distinct indices among them
    batch_size: int | None
    batches: int  # batches sent on (dispatch events), the drop_last tail not included
    lanes: list[Lane]  # (rank, worker); worker MAIN when the main process fetches itself
    sent: dict[Lane, int]  # batches sent to each worker's index queue
    fetched: dict[Lane, int]  # dataset[i] calls in each worker
    collated: dict[Lane, int]  # collate_fn calls in each worker
    back: dict[Lane, int]  # batches each worker handed back to the main process
    delivered_batches: int
    lost_batches: int
    in_flight_batches: int
    dropped_batches: int
    deliveries: int  # samples that reached your loop (repeats included)
    delivered_unique: int
    lost: int  # samples, by their occurrence's fate
    in_flight: int
    dropped: int
    filtered: int


def _flow(run: Run) -> _Flow:
    """Count what passed through each stage of :func:`plot_pipeline`'s map."""
    occ, ev = run.occurrences, run.events
    fates = Counter(dict(zip(FATES, np.bincount(occ.column("fate"), minlength=len(FATES))
                             .tolist())))
    workers = int(run.config.get("num_workers", 0) or 0)
    ranks = sorted({0} | set(np.unique(occ.column("rank")).tolist())
                   | set(np.unique(ev.column("rank")).tolist()))
    per_kind: dict[str, Counter[Lane]] = {}
    for kind in ("dispatch", "fetch", "collate", "arrive", "deliver", "lost"):
        mine = ev.of_kind(kind)
        key = mine.column("rank").astype(np.int64) * 2**32 + mine.column("worker") + 8
        values, counts = np.unique(key, return_counts=True)
        per_kind[kind] = Counter({(int(k // 2**32), int(k % 2**32) - 8): int(c)
                                  for k, c in zip(values.tolist(), counts.tolist())})
    if workers == 0:
        lanes = [(r, MAIN) for r in ranks]
        back = per_kind["deliver"] + per_kind["lost"]  # no queues: every resolved batch
    else:
        seen = {lane for kind in ("dispatch", "fetch", "collate") for lane in per_kind[kind]
                if lane[1] != MAIN}
        lanes = sorted(seen | {(r, w) for r in ranks for w in range(workers)})
        back = per_kind["arrive"]
    batches = run.batches()
    by_fate = Counter(b.fate for b in batches if b.indices or b.fate != "in_flight")
    batch_size = run.config.get("batch_size")
    return _Flow(
        iterable=run.config.get("dataset_kind") == "iterable",
        workers=workers,
        in_order=bool(run.config.get("in_order", True)),
        dataset_size=run.dataset_size,
        draws=len(occ),
        unique=len(np.unique(occ.column("index"))),
        batch_size=batch_size if isinstance(batch_size, int) else None,
        batches=sum(per_kind["dispatch"].values()),
        lanes=lanes,
        sent={lane: per_kind["dispatch"][lane] for lane in lanes},
        fetched={lane: per_kind["fetch"][lane] for lane in lanes},
        collated={lane: per_kind["collate"][lane] for lane in lanes},
        back={lane: back[lane] for lane in lanes},
        delivered_batches=by_fate["delivered"],
        lost_batches=by_fate["failed"],
        in_flight_batches=by_fate["in_flight"],
        dropped_batches=len({(r, b) for r, b in zip(
            occ.column("rank")[occ.is_("fate", "dropped")].tolist(),
            occ.column("batch")[occ.is_("fate", "dropped")].tolist())}),
        deliveries=fates["delivered"],
        delivered_unique=len(np.unique(occ.column("index")[occ.is_("fate", "delivered")])),
        lost=fates["failed"],
        in_flight=fates["in_flight"],
        dropped=fates["dropped"],
        filtered=fates["filtered"],
    )


def _plural(count: int, word: str) -> str:
    """``1 batch``, ``2 batches``, ``1 sample``, ``2 samples``."""
    if count == 1:
        return f"1 {word}"
    return f"{count} {word}es" if word.endswith("ch") else f"{count} {word}s"


def _box(ax: Axes, column: str, y: float, h: float, title: str, body: str, gid: str, *,
         fill: str | tuple[float, float, float, float] = _STAGE_FILL, edge: str = INK,
         ink: str = INK, dashed: bool = False) -> None:
    """A rounded box centred on ``column`` and ``y``: a bold title, then the numbers.

    The body text carries ``gid``; the title ``gid:title``; the box ``gid:box``.
    """
    x, width = _COLUMNS[column]
    ax.add_patch(FancyBboxPatch((x - width / 2, y - h / 2), width, h,
                                boxstyle="round,pad=0,rounding_size=0.1", fc=fill, ec=edge,
                                lw=1.0, ls="--" if dashed else "-", zorder=2,
                                mutation_aspect=1 / 8, gid=f"{gid}:box"))
    ax.text(x, y - h / 2 + 0.07, title, ha="center", va="top", fontsize=9,
            fontweight="bold", color=ink, zorder=3, gid=f"{gid}:title")
    ax.text(x, y + 0.1, body, ha="center", va="center", fontsize=8.5, color=ink,
            linespacing=1.3, zorder=3, gid=gid)


def _edge(column: str, side: int) -> float:
    """The x of a column's left (``side=-1``) or right (``side=1``) edge."""
    x, width = _COLUMNS[column]
    return x + side * width / 2


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], gid: str, *,
           label: str = "", at: float = 0.5, color: str = INK, dashed: bool = False) -> None:
    """An arrow from ``start`` to ``end``; a label (``gid:label``) ``at`` along it."""
    ax.annotate("", end, start, zorder=1.5, gid=gid, arrowprops={
        "arrowstyle": "-|>", "color": color, "lw": 1.1, "shrinkA": 0, "shrinkB": 0,
        "mutation_scale": 11, "linestyle": "--" if dashed else "-"})
    if label:
        x = start[0] + at * (end[0] - start[0])
        y = start[1] + at * (end[1] - start[1])
        ax.text(x, y, label, ha="center", va="center", fontsize=8, color=color, zorder=4,
                gid=f"{gid}:label", bbox={"boxstyle": "round,pad=0.2", "fc": "white",
                                          "ec": "none"})


def _sink(ax: Axes, column: str, y: float, top: float, fate: str, title: str, body: str,
          count: int, gid: str) -> None:
    """Where samples leave the pipeline, under a stage: fate-coloured, grey when 0."""
    color = FATE_COLORS[fate] if count else _OFF
    fill = to_rgba(FATE_COLORS[fate], 0.16) if count else "white"
    h = 0.95
    _arrow(ax, (_COLUMNS[column][0], top), (_COLUMNS[column][0], y - h / 2), f"{gid}:arrow",
           color=color, dashed=True)
    _box(ax, column, y, h, title, body, gid, fill=fill, edge=color,
         ink=INK if count else _OFF)


def plot_pipeline(run: Run, ax: Axes | None = None) -> Axes:
    """Draw the DataLoader's pipeline as boxes and arrows, with this run's numbers.

    Left to right, the stages every batch goes through (lesson 0's map):

    - ``sampler``: draws dataset indices (how many, out of how many);
    - ``batch sampler``: groups them into batches of ``batch_size`` (how many);
      with ``drop_last`` the short tail goes to the *dropped* box below it;
    - ``index queue w``: one per worker: the batches of indices sent to it
      (round robin, ``prefetch_factor * num_workers`` at a time at most);
    - ``worker w``: a separate process that fetches ``dataset[i]`` for each index
      and collates the samples into a batch (how many samples, how many batches).
      With ``num_workers=0`` the main process does this itself, with no queues;
    - ``reorder``: batches come back in any order and wait there until it is
      their turn (``in_order=True``), so your loop sees them in sampler order;
    - ``your loop``: the batches and samples that reached it.

    Under the stages, the boxes for samples that left the pipeline: dropped by
    ``drop_last``, lost with an error, in flight when the loop stopped, filtered
    (``None``): the first two always (grey when 0), the others when they happened.
    Every number is counted from the run's events and ledger, so a run loaded
    from JSON draws the same map. For an IterableDataset there are no indices to
    draw: the sampler only paces requests and each worker iterates its own copy
    of the dataset (lesson 5); its dropped tails are each worker's own.

    Give it room: about 12 x (1.1 + 0.95 x (workers + 2)) inches. Returns the Axes
    (axis lines hidden); the numbers are texts with gids ``pipeline:<stage>``
    (``pipeline:worker:0``, ``pipeline:loop``, ``pipeline:dropped``, ...).
    """
    ax = ax or plt.gca()
    f = _flow(run)
    rows = len(f.lanes)
    ranks = len({rank for rank, _ in f.lanes})
    mid = rows / 2
    stage_h = min(1.5, max(0.9, 0.9 * rows))
    lane_h = 0.84
    lane_y = {lane: i + 0.5 for i, lane in enumerate(f.lanes)}
    sinks_y = rows + 1.1
    bottom, lanes_bottom = mid + stage_h / 2, rows - 0.5 + lane_h / 2

    # where each stage runs
    for columns, where in ((("sampler", "batch_sampler"), "main process"),
                           (("reorder", "loop"), "main process"),
                           (("worker",), "worker processes" if f.workers else "main process")):
        x = sum(_COLUMNS[c][0] for c in columns) / len(columns)
        ax.text(x, -0.22, where, ha="center", va="bottom", fontsize=8.5, color="#555555",
                style="italic", gid="pipeline:process")
    if f.workers:
        x, width = _COLUMNS["worker"]
        ax.add_patch(FancyBboxPatch((x - width / 2 - 1.0, -0.06), width + 2.0, rows + 0.12,
                                    boxstyle="round,pad=0,rounding_size=0.1", fc=_PROCESS_BAND,
                                    ec="none", zorder=0.5, mutation_aspect=1 / 8,
                                    gid="pipeline:worker_band"))

    # sampler -> batch sampler
    if f.iterable:
        _box(ax, "sampler", mid, stage_h, "sampler", "none: each\nworker iterates\nits own copy",
             "pipeline:sampler")
    else:
        unique = f"\n({f.unique} unique)" if f.unique != f.draws else ""
        _box(ax, "sampler", mid, stage_h, "sampler",
             f"{f.draws} indices\nof {f.dataset_size}{unique}", "pipeline:sampler")
    _arrow(ax, (_edge("sampler", 1), mid), (_edge("batch_sampler", -1), mid),
           "pipeline:arrow:indices", label="" if f.iterable else str(f.draws))
    size = "?" if f.batch_size is None else str(f.batch_size)
    what = "requests" if f.iterable else "batches"
    drop = "\ndrop_last=True" if run.config.get("drop_last") else ""
    _box(ax, "batch_sampler", mid, stage_h, "batch sampler",
         f"{f.batches} {what}\nof up to {size}{drop}", "pipeline:batch_sampler")

    # per worker: index queue -> worker (fetch + collate) -> back to the main process
    for lane in f.lanes:
        y = lane_y[lane]
        name = _lane_name(lane, ranks, _part(run))
        key = f"{lane[1]}" if ranks == 1 else f"{lane[0]}.{lane[1]}"
        _arrow(ax, (_edge("batch_sampler", 1), mid), (_edge("queue", -1), y),
               f"pipeline:arrow:send:{key}")
        if f.workers:
            _box(ax, "queue", y, lane_h, f"index queue {name.split()[-1]}",
                 f"{_plural(f.sent[lane], 'batch')}\nsent", f"pipeline:queue:{key}")
            title = name
        else:
            _box(ax, "queue", y, lane_h, "no index queue", "num_workers=0",
                 f"pipeline:queue:{key}", fill="white", edge=_OFF, ink=_OFF, dashed=True)
            title = name.replace("main", "main process")
        _arrow(ax, (_edge("queue", 1), y), (_edge("worker", -1), y),
               f"pipeline:arrow:queue:{key}")
        verb = "yielded" if f.iterable else "fetched"
        _box(ax, "worker", y, lane_h, title,
             f"{_plural(f.fetched[lane], 'sample')} {verb}\n"
             f"{_plural(f.collated[lane], 'batch')} collated",
             f"pipeline:worker:{key}", fill=_WORKER_FILL)
        _arrow(ax, (_edge("worker", 1), y), (_edge("reorder", -1), mid),
               f"pipeline:arrow:back:{key}", label=str(f.back[lane]), at=0.4)

    # reorder -> your loop
    if f.workers:
        order = "in sampler order" if f.in_order else "as they arrive"
        _box(ax, "reorder", mid, stage_h, "reorder",
             f"{sum(f.back.values())} came back;\nhanded out\n{order}", "pipeline:reorder")
    else:
        _box(ax, "reorder", mid, stage_h, "no reorder", "one batch\nat a time",
             "pipeline:reorder", fill="white", edge=_OFF, ink=_OFF, dashed=True)
    _arrow(ax, (_edge("reorder", 1), mid), (_edge("loop", -1), mid), "pipeline:arrow:deliver",
           label=str(f.delivered_batches))
    repeats = (f"\n({f.delivered_unique} unique)" if f.delivered_unique != f.deliveries
               else "")
    _box(ax, "loop", mid, stage_h, "your loop",
         f"{_plural(f.delivered_batches, 'batch')}\n{_plural(f.deliveries, 'sample')}"
         f"{repeats}", "pipeline:loop", fill=to_rgba(FATE_COLORS["delivered"], 0.16),
         edge=FATE_COLORS["delivered"])

    # where samples leave the pipeline: dropped by the batch sampler (a stream: by each
    # worker), in flight past the queues, lost at __next__, filtered in collate
    _sink(ax, "worker" if f.iterable else "batch_sampler", sinks_y,
          lanes_bottom if f.iterable else bottom, "dropped", "dropped (drop_last)",
          f"{_plural(f.dropped_batches, 'batch')}\n{_plural(f.dropped, 'sample')}",
          f.dropped, "pipeline:dropped")
    if f.in_flight or f.in_flight_batches:
        _sink(ax, "queue", sinks_y, lanes_bottom, "in_flight", "in flight at stop",
              f"{_plural(f.in_flight_batches, 'batch')}\n{_plural(f.in_flight, 'sample')}",
              f.in_flight, "pipeline:in_flight")
    _sink(ax, "reorder", sinks_y, bottom, "failed", "lost (error)",
          f"{_plural(f.lost_batches, 'batch')}\n{_plural(f.lost, 'sample')}",
          f.lost_batches + f.lost, "pipeline:lost")
    if f.filtered:
        column = "loop" if f.iterable else "worker"
        _sink(ax, column, sinks_y, bottom if f.iterable else lanes_bottom, "filtered",
              "filtered (None)", f"{_plural(f.filtered, 'sample')}\nskipped in collate",
              f.filtered, "pipeline:filtered")

    ax.set_xlim(0, 100)
    ax.set_ylim(sinks_y + 0.55, -0.5)
    ax.set_axis_off()
    ax.set_title("Pipeline: the stages every batch passes through (numbers from this run)",
                 loc="left", fontsize=11)
    return ax


def plot_waterfall(run: Run, ax: Axes | None = None) -> Axes:
    """Where the samples went, as a waterfall: from the dataset's size down to the
    distinct samples delivered, one bar per cause of :func:`dlviz.explain` (its count
    and id, in the colour of the fate it leaves), then up by the repeated deliveries
    to the samples your loop got. Every bar is an artist with gid ``waterfall:<id>``
    (``dataset``, ``delivered``, ``got``, or a cause). Lesson 7.
    """
    from dlviz.explain import CAUSE_FATE, explain

    if not isinstance(run, Run):
        raise TypeError(f"run must be a dlviz.Run, not {type(run).__name__}")
    ax = ax or plt.gca()
    findings = explain(run)
    n, delivered = run.dataset_size, run.summary()["delivered"]
    # one bar: (id, label, bottom, top, colour, text above it)
    bars: list[tuple[str, str, int, int, str, str]] = [("dataset", "dataset", 0, n, "#555555",
                                                     str(n))]
    level = n
    for f in (f for f in findings if f.kind == "missing"):
        bars.append((f.cause, f.cause, level - f.count, level,
                     FATE_COLORS[CAUSE_FATE[f.cause]], f"-{f.count}"))
        level -= f.count
    bars.append(("delivered", "delivered\n(distinct)", 0, delivered, FATE_COLORS["delivered"],
                 str(delivered)))
    level = delivered
    for f in (f for f in findings if f.kind == "extra"):
        bars.append((f.cause, f.cause, level, level + f.count, FATE_COLORS["duplicated"],
                     f"+{f.count}"))
        level += f.count
    if level > delivered:
        bars.append(("got", "your loop\ngot", 0, level, FATE_COLORS["duplicated"], str(level)))
    for x, (gid, _, bottom, top, color, text) in enumerate(bars):
        ax.bar(x, top - bottom, bottom=bottom, color=color, width=0.7, gid=f"waterfall:{gid}",
               hatch="//" if gid == "unexplained" else None)
        ax.annotate(text, (x, top), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
        if x + 1 < len(bars):  # the level the next bar starts from
            step = bottom if text.startswith("-") else top
            ax.plot([x - 0.35, x + 1.35], [step, step], color="#999999", lw=0.6)
    ax.set_xticks(range(len(bars)), [label.replace("_", "_\n", 1) if "\n" not in label
                                     else label for _, label, *_ in bars], fontsize=8)
    ax.set_ylim(0, max(b[3] for b in bars) * 1.12 or 1)
    ax.set_ylabel("samples", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"Where the samples went: {n} in the dataset, {delivered} delivered",
                 loc="left", fontsize=11)
    return ax
