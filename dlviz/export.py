"""Export a Run as a Chrome trace, for Perfetto (ui.perfetto.dev) or chrome://tracing.

Layout: one process per rank; inside it, track 0 is the main process and track
``w + 1`` is worker ``w``, so spans on a track never overlap. Lesson 7 opens one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlviz.run import Run

_SPAN_NAMES = {"fetch": "fetch", "collate": "collate", "wait": "wait in __next__",
               "step": "your step"}
_INSTANT_NAMES = {"dispatch": "dispatch", "deliver": "delivered", "lost": "failed",
                  "arrive": "arrive", "worker_start": "worker start"}


def _us(ns: int) -> float:
    return ns / 1000


def chrome_trace(run: Run) -> dict[str, Any]:
    """The ``{"traceEvents": [...]}`` object for ``run`` (see :meth:`Run.to_chrome_trace`)."""
    out: list[dict[str, Any]] = []
    ranks = sorted({e.rank for e in run.events} | {0})
    lanes = sorted({(e.rank, e.worker) for e in run.events if e.kind != "dispatch"}
                   | {(r, -1) for r in ranks})
    for rank in ranks:
        out.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
                    "args": {"name": f"DataLoader (rank {rank})"}})
    for rank, worker in lanes:
        name = "main process" if worker < 0 else f"worker {worker}"
        pid = run.workers.get(worker + 1000 * rank)
        if pid is not None:
            name += f" (pid {pid})"
        out.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": worker + 1,
                    "args": {"name": name}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": worker + 1,
                    "args": {"sort_index": worker + 1}})
    for e in run.events:
        args = {"batch": e.batch, "status": e.status or "ok"}
        if e.kind in _SPAN_NAMES:
            name = _SPAN_NAMES[e.kind]
            if e.kind == "fetch":
                name = f"fetch {e.index}"
                args["index"] = e.index
            elif e.kind == "collate":
                name = f"collate batch {e.batch}"
            out.append({"ph": "X", "name": name, "cat": e.kind, "pid": e.rank,
                        "tid": e.worker + 1, "ts": _us(e.start), "dur": _us(e.end - e.start),
                        "args": args})
        else:
            lane = 0 if e.kind in ("dispatch", "arrive", "deliver", "lost") else e.worker + 1
            name = _INSTANT_NAMES[e.kind]
            if e.batch >= 0:
                name += f" batch {e.batch}"
            if e.kind == "dispatch":
                name += f" -> worker {e.worker}"
                args["worker"] = e.worker
            out.append({"ph": "i", "s": "t", "name": name, "cat": e.kind, "pid": e.rank,
                        "tid": lane, "ts": _us(e.start), "args": args})
    for x in run.errors:
        out.append({"ph": "i", "s": "p", "name": f"error: {x.kind}", "cat": "error",
                    "pid": x.rank, "tid": 0 if x.worker is None else x.worker + 1,
                    "ts": _us(x.time), "args": {"kind": x.kind, "worker": x.worker,
                                                 "index": x.index, "batch": x.batch,
                                                 "message": x.message[-2000:]}})
    for time, level in run.outstanding():
        out.append({"ph": "C", "name": "outstanding batches", "pid": 0, "tid": 0,
                    "ts": _us(time), "args": {"outstanding": level}})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"dlviz": "run", "summary": run.summary(),
                          "config": {k: str(v) for k, v in run.config.items()}}}
