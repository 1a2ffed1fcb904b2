"""``python -m dlviz``: merge, summarise and report run files, without torch.

    python -m dlviz merge rank0.json rank1.json -o job.json       # ranks: one ledger
    python -m dlviz merge epoch0.json epoch1.json --by pass -o job.json
    python -m dlviz summary job.json                  # counts, errors, notes, findings
    python -m dlviz report job.json -o report.html                  # one self-contained page

Run files are what ``run.to_json(path)`` writes (lesson 7). A bad file or argument
gets one line on stderr and exit status 2; nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dlviz.explain import explain
from dlviz.ledger import SUMMARY_KEYS
from dlviz.run import Run, merge_runs


def _fail(message: str) -> SystemExit:
    """One line on stderr, exit status 2 (as argparse does for a bad argument)."""
    print(f"python -m dlviz: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _load(path: str) -> Run:
    try:
        return Run.from_json(path)
    except FileNotFoundError:
        raise _fail(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise _fail(f"{path}: {exc}") from None


def _merged(paths: Sequence[str], by: str) -> Run:
    runs = [_load(p) for p in paths]
    return runs[0] if len(runs) == 1 else merge_runs(runs, by=by)


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{path}: {exc.strerror}") from None


def merge(args: argparse.Namespace) -> None:
    merged = _merged(args.files, args.by)
    _write(args.output, json.dumps(merged.to_dict(), separators=(",", ":")))
    print(f"{len(args.files)} runs merged by {args.by} into {args.output}: "
          f"{merged.summary()['delivered']}/{merged.dataset_size} delivered")


def summary_text(run: Run) -> str:
    """The counts, the errors and the notes of a run, as plain text."""
    s = run.summary()
    c = run.config
    lines = [f"{c.get('dataset', 'dataset')}: {c.get('num_workers', '?')} workers, "
             f"batch_size {c.get('batch_size')}, stopped: {run.stop}"]
    if c.get("merged_by"):
        parts = c.get("world_size") if c["merged_by"] == "rank" else c.get("passes")
        lines.append(f"merged: {parts} {c['merged_by']}s on one ledger")
    width = max(map(len, SUMMARY_KEYS))
    lines += [f"  {key:<{width}}  {s[key]}" for key in SUMMARY_KEYS]
    lines += [f"error: {e.kind} ({e.type or 'unknown type'}) in worker {e.worker}, index "
              f"{e.index}: {e.message.strip().splitlines()[-1] if e.message.strip() else ''}"
              for e in run.errors]
    lines += [f"note: {n}" for n in run.notes]
    if run.config.get("merged_by") != "pass":  # passes are explained from their own files
        lines += ["", "where the data went (dlviz.explain):"]
        lines += [str(f) for f in explain(run)] or ["  nothing is missing or repeated"]
    return "\n".join(lines)


def summary(args: argparse.Namespace) -> None:
    print(summary_text(_merged(args.files, args.by)))


def _png(fig: object) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)  # type: ignore[attr-defined]
    return base64.b64encode(buffer.getvalue()).decode()


def report_html(run: Run, title: str) -> str:
    """One self-contained HTML page: the summary table, the timeline and ledger, where
    the data went (:func:`dlviz.explain`'s findings and waterfall), and for a merged
    run every index in every pass or rank. Pictures are inlined."""
    from matplotlib.figure import Figure

    from dlviz.plot import plot_passes, plot_run, plot_waterfall

    s = run.summary()
    rows = "".join(f"<tr><th>{k.replace('_', ' ')}</th><td>{s[k]}</td></tr>"
                   for k in SUMMARY_KEYS)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<pre>{html.escape(summary_text(run).splitlines()[0])}</pre>",
             f"<table>{rows}</table>",
             f'<h2>Timeline and ledger</h2><img alt="timeline and ledger" '
             f'src="data:image/png;base64,{_png(plot_run(run))}">']
    if run.config.get("merged_by") != "pass":
        findings = "".join(f"<li><b>{html.escape(f.cause)}</b> ({f.count}): "
                           f"{html.escape(f.message)}<br><i>fix:</i> {html.escape(f.fix)} "
                           f"<i>({html.escape(f.lesson)})</i></li>" for f in explain(run))
        fig = Figure(figsize=(10, 3.2))
        plot_waterfall(run, fig.add_axes((0.08, 0.15, 0.6, 0.72)))
        findings = findings or "<li>nothing is missing or repeated</li>"
        parts.append(f"<h2>Where the data went</h2><ul>{findings}</ul><img alt='waterfall' "
                     f"src='data:image/png;base64,{_png(fig)}'>")
    if run.config.get("merged_by"):
        fig = Figure(figsize=(12, 1.2 + 0.35 * int(run.config.get("passes")
                                                   or run.config.get("world_size") or 1)))
        plot_passes(run, fig.add_axes((0.08, 0.2, 0.72, 0.65)))
        parts.append(f'<h2>Every index in every {run.config["merged_by"]}</h2><img alt="passes"'
                     f' src="data:image/png;base64,{_png(fig)}">')
    if run.errors or run.notes:
        items = [f"<li>{html.escape(e.kind)}: {html.escape(e.message[-500:])}</li>"
                 for e in run.errors] + [f"<li>{html.escape(n)}</li>" for n in run.notes]
        parts.append(f"<h2>Errors and notes</h2><ul>{''.join(items)}</ul>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1300px}"
             "table{border-collapse:collapse}th,td{padding:2px 10px;text-align:left}"
             "th{font-weight:normal;color:#555}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def report(args: argparse.Namespace) -> None:
    run = _merged(args.files, args.by)
    _write(args.output, report_html(run, " + ".join(Path(f).name for f in args.files)))
    print(f"wrote {args.output}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dlviz", description="Merge, summarise and report dlviz run files "
        "(written by run.to_json).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, text in (("merge", merge, "merge run files (ranks or passes) into one"),
                             ("summary", summary, "print a run's counts, errors and notes"),
                             ("report", report, "write a self-contained HTML report")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("files", nargs="+", metavar="FILE", help="run files (JSON)")
        sub.add_argument("--by", choices=("rank", "pass"), default="rank",
                         help="several files: ranks of one job, or its passes (epochs)")
        if name != "summary":
            sub.add_argument("-o", "--output", required=True, metavar="OUT",
                             help="where to write" + (" the HTML" if name == "report" else ""))
        sub.set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
