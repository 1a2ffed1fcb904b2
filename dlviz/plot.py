"""Draw a recorded :class:`dlviz.Run`: the timeline, the ledger, and both together.

- :func:`plot_timeline`: what every process did, and when (lessons 0, 1, 3, 8).
- :func:`plot_ledger`: what became of every dataset index (lessons 1-7).
- :func:`plot_run`: both, plus the counts, as the notebooks and the explorer show it.

Plots read only a Run, so a run loaded with :meth:`dlviz.Run.from_json` draws
anywhere, without torch. Fates always wear the colours of
:data:`dlviz.ledger.FATE_COLORS` (Okabe-Ito, colour-blind safe). The functions
follow matplotlib's conventions: they draw on the Axes you pass (or the current
one), return it, never call ``plt.show()`` and never touch ``rcParams``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dlviz.ledger import FATE_COLORS, FATES, SUMMARY_KEYS
from dlviz.run import MAIN, BatchInfo, Event, Run

__all__ = ["plot_timeline", "plot_ledger", "plot_run", "BATCH_COLORS"]

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


def _lane_name(lane: Lane, ranks: int) -> str:
    rank, worker = lane
    name = {MAIN: "main", _LOADING: "main (fetch)"}.get(worker, f"worker {worker}")
    return f"rank {rank} {name}" if ranks > 1 else name


def _lane(e: Event) -> Lane:
    own = e.worker == MAIN and e.kind in ("fetch", "collate")  # num_workers=0
    return (e.rank, _LOADING if own else e.worker)


def _lanes(run: Run) -> dict[Lane, int]:
    """Row of every lane, top to bottom: per rank, main, main's own fetches, workers."""
    lanes: set[Lane] = {_lane(e) for e in run.events if e.kind != "deliver"}
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
    px_per_ms = ax.get_window_extent().width / end_ms

    by_lane: dict[tuple[str, Lane], list[Any]] = {}
    for e in run.events:
        if e.kind in ("fetch", "collate", "wait", "step"):
            by_lane.setdefault((e.kind, _lane(e)), []).append(e)
    for (kind, lane), events in by_lane.items():
        name, ly = _lane_name(lane, ranks), y[lane]
        start = _ms([e.start for e in events])
        stop = _ms([min(e.end, deaths.get(lane, e.end)) for e in events])
        if kind == "fetch":
            status = np.array([e.status for e in events])
            colors = _BATCH_RGBA[np.array([e.batch for e in events]) % len(BATCH_COLORS)]
            colors[status == "raised"] = to_rgba(FATE_COLORS["failed"])
            colors[status == "none"] = to_rgba(FATE_COLORS["filtered"])
            done = status != "unfinished"
            _bars(ax, start[done], stop[done], ly, colors[done], f"fetch:{name}")
            if _bars(ax, start[~done], stop[~done], ly, colors[~done], f"unfinished:{name}",
                     hatch="////", edgecolors="#666666"):
                extra["fetch never finished"] = Patch(fc=BATCH_COLORS[0], ec="#666666",
                                                      hatch="////")
            if (status == "none").any():
                extra["fetch returned None"] = Patch(color=FATE_COLORS["filtered"])
            _batch_numbers(ax, [e.batch for e in events], start, stop, ly, px_per_ms)
        else:
            color = {"collate": COLLATE_COLOR, "wait": WAIT_COLOR, "step": STEP_COLOR}[kind]
            bars = _bars(ax, start, stop, ly, color, f"{kind}:{name}")
            if bars and kind == "wait":  # measured inside __next__: on top of inferred steps
                bars.set_zorder(2.2)
    if any(k == "fetch" for k, _ in by_lane):
        legend["fetch dataset[i] (tint = batch)"] = tuple(Patch(fc=c) for c in BATCH_COLORS[:3])
        legend.update(sorted(extra.items()))
        legend["collate (batch assembly)"] = Patch(color=COLLATE_COLOR)
    legend["main waits in __next__"] = Patch(color=WAIT_COLOR)
    legend["your loop's step"] = Patch(color=STEP_COLOR)

    starts = [e for e in run.events if e.kind == "worker_start" and (e.rank, e.worker) in y]
    if starts:
        ax.plot(_ms([e.start for e in starts]), [y[(e.rank, e.worker)] for e in starts], "|",
                color=INK, ms=14, mew=1.5, zorder=4, gid="worker_start")
        legend["worker started"] = _key("|", INK, ms=9)
    batches = run.batches()
    _dispatches(ax, run, batches, y, legend)
    _errors(ax, run, batches, y, legend)

    ax.set_ylim(len(lanes) - 0.45, -0.75)
    ax.set_xlim(0, end_ms * 1.01)
    ax.set_yticks(range(len(lanes)), [_lane_name(lane, ranks) for lane in lanes])
    ax.tick_params(axis="y", length=0)
    ax.xaxis.set_visible(False)  # the time axis is drawn under the panel below
    ax.spines[:].set_visible(False)
    ax.set_title("Timeline: who fetched what, and when", loc="left", fontsize=11)
    ax.legend(list(legend.values()), list(legend), loc="upper left", bbox_to_anchor=(1.01, 1),
              handler_map={tuple: HandlerTuple(ndivide=None, pad=0)}, **_LEGEND)
    _window(ax, run, end_ms)
    return ax


def _key(marker: str, color: str, ls: str = "", **kw: Any) -> Line2D:
    """A legend entry for a marker."""
    return Line2D([], [], ls=ls, marker=marker, color=color, mec=INK, **kw)


def _note(ax: Axes, text: str, xy: tuple[float, float], offset: tuple[float, float],
          ha: str, gid: str, edge: str) -> None:
    """A small label in a white box, ``offset`` points away from ``xy``."""
    ax.annotate(text, xy, xytext=offset, textcoords="offset points", ha=ha, va="center",
                fontsize=8, color=INK, zorder=7, gid=gid, bbox={
                    "boxstyle": "round,pad=0.2", "fc": "white", "ec": edge, "alpha": 0.9})


def _batch_numbers(ax: Axes, batches: Sequence[int], start: Any, stop: Any, ly: float,
                   px_per_ms: float) -> None:
    """Write each batch's number on its fetches, where it fits."""
    spans: dict[int, list[float]] = {}
    for batch, a, b in zip(batches, start, stop, strict=True):
        span = spans.setdefault(batch, [a, b])
        span[0], span[1] = min(span[0], a), max(span[1], b)
    for batch, (a, b) in spans.items():
        if batch >= 0 and (b - a) * px_per_ms >= 9 + 5 * len(str(batch)):
            ax.text((a + b) / 2, ly, str(batch), ha="center", va="center", fontsize=7,
                    color="#444444", zorder=3, gid="batch_number")


def _dispatches(ax: Axes, run: Run, batches: Sequence[BatchInfo], y: dict[Lane, float],
                legend: dict[str, Any]) -> None:
    """Triangles where indices were sent, circles where batches ended, lines between."""
    sent: list[tuple[float, float, str]] = []
    segments, seg_styles = [], []
    ends: dict[str, list[tuple[float, float]]] = {}
    loop = [e.end for e in run.events if e.kind in ("wait", "step")]
    stopped = max(loop, default=run.duration) / 1e6  # when your loop stopped
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
    if segments:
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


def _errors(ax: Axes, run: Run, batches: Sequence[BatchInfo], y: dict[Lane, float],
            legend: dict[str, Any]) -> None:
    """A cross per error (with its kind), and the dropped tail with its indices."""
    end_ms = run.duration / 1e6
    spans = {(e.rank, e.batch, e.kind): e for e in run.events
             if e.kind in ("fetch", "collate") and e.status == "raised"}
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
                label += f" at index {err.index}" if span.kind == "fetch" else " in collate"
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
        tail = [e.end for e in run.events if e.kind == "fetch" and e.batch == b.batch
                and e.rank == b.rank]
        if lane not in y or not tail:  # map-style: the sampler's tail was never sent
            x = max((e.end for e in run.events if e.rank == b.rank), default=run.duration)
            lane, x, align, off = (b.rank, MAIN), x / 1e6, "right", -6
        else:
            x = max(tail) / 1e6
            align, off = ("right", -6) if x > 0.7 * end_ms else ("left", 6)
        ly = y[lane] - _H / 2 - 0.08
        ax.plot([x], [ly], "s", color=FATE_COLORS["dropped"], mec=INK, mew=0.5, ms=6,
                zorder=6, gid="dropped")
        _note(ax, f"dropped {_ranges(b.indices)}", (x, ly), (off, 0), align, "dropped_label",
              FATE_COLORS["dropped"])
        legend["dropped (drop_last)"] = _key("s", FATE_COLORS["dropped"], ms=6)


def _window(ax: Axes, run: Run, end_ms: float) -> Axes:
    """The thin panel under the lanes: outstanding batches vs the prefetch ceiling."""
    height_in = ax.bbox.height / ax.figure.dpi
    frac = 0.62 / max(height_in, 0.5)
    panel = ax.inset_axes((0, -frac - 0.12 / max(height_in, 0.5), 1, frac), sharex=ax)
    steps = run.outstanding() + [(run.duration, run.outstanding()[-1][1])]
    t, level = _ms([s[0] for s in steps]), np.array([s[1] for s in steps])
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
    n, occ = len(run.universe), run.occurrences
    if not n or not occ:
        return np.full(n, _LEDGER.index("never_sampled"), dtype=np.int8)
    ranks = {name: rank for rank, name in enumerate(FATES)}
    idx = np.array(list(map(itemgetter(0), occ)), dtype=np.int64)
    code = np.array(list(map(ranks.__getitem__, map(itemgetter(2), occ))), dtype=np.int8)
    if run.keys is None:  # indices 0..n-1
        pos, ok = idx, (idx >= 0) & (idx < n)
    else:  # a stream's keys, in the order of run.keys
        keys = np.array(run.keys, dtype=np.int64)
        order = np.argsort(keys)
        pos = order[np.clip(np.searchsorted(keys, idx, sorter=order), 0, n - 1)]
        ok = keys[pos] == idx
    best = np.full(n, ranks["never_sampled"], dtype=np.int8)
    np.minimum.at(best, pos[ok], code[ok])
    out = np.array([_LEDGER.index(f) for f in FATES], dtype=np.int8)[best]
    out[np.bincount(pos[ok & (code == 0)], minlength=n) > 1] = _LEDGER.index("duplicated")
    return out


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
    handles = [Patch(color=FATE_COLORS[f], label=f"{_LEDGER_LABELS.get(f, f)}: {counts[i]}")
               for i, f in enumerate(_LEDGER) if counts[i]]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1),
              ncols=1 if len(handles) <= 5 else 2, **_LEGEND)
    what = "stream key" if run.keys is not None else "dataset index"
    ax.set_title(f"Ledger: the fate of every {what} ({n})", loc="left", fontsize=11)
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


def plot_run(run: Run) -> Figure:
    """The whole run on one figure: timeline, ledger strip and the summary counts.

    Layout, top to bottom: :func:`plot_timeline` (with its outstanding-batches
    panel), :func:`plot_ledger` as a strip, and the counts of ``run.summary()``.
    The figure is a plain :class:`matplotlib.figure.Figure`, not registered with
    pyplot, so redrawing it on every slider change (the explorer does) leaks
    nothing; a notebook shows it when it is the cell's value. Fixed sizes and no
    layout engine keep it cheap (``benchmarks/render.py`` times it).
    Lessons 0-8 all show their runs this way.
    """
    lanes = _lanes(run)
    names = [_lane_name(lane, len({r for r, _ in lanes})) for lane in lanes]
    left, right, width = max(1.0, 0.3 + 0.08 * max(map(len, names))), 2.75, 12.0
    rows = {"title": 0.55, "timeline": 0.5 * len(lanes) + 0.35, "window": 1.55, "ledger": 1.1,
            "gap": 0.55, "summary": 0.6, "bottom": 0.05}  # inches, top to bottom
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
    _summary(fig, run, (0.2 / width, box["summary"][1], 1 - 0.4 / width, box["summary"][3]))
    return fig
