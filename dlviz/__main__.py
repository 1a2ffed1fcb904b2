"""``python -m dlviz``: merge, summarise and report run files, without torch.

    python -m dlviz merge rank0.json rank1.json -o job.json       # ranks: one ledger
    python -m dlviz merge epoch0.json epoch1.json --by pass -o job.json
    python -m dlviz merge runs/*.json -o job.json     # a torchrun job: ranks x epochs
    python -m dlviz summary job.json                  # counts, errors, notes, findings
    python -m dlviz report job.json -o report.html                  # one self-contained page

Run files are what ``run.to_json(path)`` writes (lesson 7). A bad file or argument
gets one line on stderr and exit status 2; nothing is ever unpickled.

Files that say which rank wrote them (``config["rank"]``, and ``config["pass"]`` or
``"epoch"``: :mod:`dlviz.job`'s ``rank{r}-pass{p}.json``, :func:`dlviz.record_ranks`'s
runs) are put in order by themselves, whatever order the shell gives them in:

- ``--by rank`` (the default): one part per rank. A rank's passes are chained in its
  part, in pass order (:func:`dlviz.merge_runs` with ``parts``), so the timeline shows
  each rank's lanes through the whole job and the ledger counts every delivery of it
  (each index once per epoch, more where DistributedSampler padded). Every rank must
  have the same passes, and the ranks must be 0..N-1.
- ``--by pass``: one part per pass, for the passes of *one* rank (``rank0-*.json``):
  the ranks of one pass run at the same time, and their lanes would overlap.

Other files are merged in the order given (part ``r`` is the ``r``-th file). To see
one epoch of every rank: ``python -m dlviz merge runs/*-pass0.json -o epoch0.json``.
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
from typing import Any

import numpy as np

from dlviz.explain import Finding, explain
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
    if len(runs) == 1:
        return runs[0]
    order, parts = _arrange([r.config for r in runs], paths, by)
    return merge_runs([runs[k] for k in order], by=by, parts=parts)


def _arrange(configs: Sequence[dict[str, Any]], paths: Sequence[str], by: str
             ) -> tuple[list[int], list[int] | None]:
    """The order to merge files in, and each one's part (see the module's docstring)."""
    def place(c: dict[str, Any]) -> tuple[Any, Any]:
        return c.get("rank"), c.get("pass", c.get("epoch", 0))

    if not all(isinstance(v, int) and not isinstance(v, bool) and "merged_by" not in c
               for c in configs for v in place(c)):
        return list(range(len(configs))), None  # not all of one job's ranks: as given
    seen: dict[tuple[Any, Any], str] = {}
    for c, path in zip(configs, paths):
        if place(c) in seen:
            raise _fail(f"rank {place(c)[0]} pass {place(c)[1]} is in two files: "
                        f"{seen[place(c)]} and {path}")
        seen[place(c)] = path
    ranks = sorted({r for r, _ in seen})
    passes = sorted({p for _, p in seen})
    if by == "pass":
        if len(ranks) > 1:
            raise _fail(f"--by pass merges the passes of one rank, but these files hold ranks "
                        f"{ranks}: merge them --by rank, or give one rank's files")
        if passes != list(range(len(passes))):
            raise _fail(f"the files hold passes {passes}; merged passes are numbered 0, 1, ...:"
                        " give passes 0..P-1")
        order = sorted(range(len(configs)), key=lambda k: place(configs[k])[1])
        return order, None
    if ranks != list(range(len(ranks))):
        raise _fail(f"the files hold ranks {ranks}; merged ranks are numbered 0, 1, ...: "
                    "give ranks 0..N-1")
    for r in ranks:
        mine = sorted(p for q, p in seen if q == r)
        if mine != passes:
            raise _fail(f"rank {r} has passes {mine} of {passes}: a file is missing")
    order = sorted(range(len(configs)), key=lambda k: place(configs[k])[::-1])
    return order, [place(configs[k])[0] for k in order]


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{path}: {exc.strerror}") from None


def merge(args: argparse.Namespace) -> None:
    merged = _merged(args.files, args.by)
    _write(args.output, json.dumps(merged.to_dict(), separators=(",", ":")))
    print(f"{len(args.files)} runs merged by {args.by} into {args.output}: {_layout(merged)}, "
          f"{merged.summary()['delivered']}/{merged.dataset_size} delivered")


def _layout(run: Run) -> str:
    """``2 ranks``, ``3 passes``, ``2 ranks x 2 passes``: the parts of a merged run."""
    c = run.config
    parts = int(c.get("world_size" if c.get("merged_by") == "rank" else "passes") or 1)
    word = "rank" if c.get("merged_by") == "rank" else "pass"
    text = f"{parts} {word}{'s' if parts != 1 else ''}"
    chained = c.get("chained")
    if chained:
        each = max(len(p) for p in chained)
        text += f" x {each} {'passes' if word == 'rank' else 'runs'}"
    return text


def summary_text(run: Run) -> str:
    """The counts, the errors and the notes of a run, as plain text."""
    s = run.summary()
    c = run.config
    lines = [f"{c.get('dataset', 'dataset')}: {c.get('num_workers', '?')} workers, "
             f"batch_size {c.get('batch_size')}, stopped: {run.stop}"]
    if c.get("merged_by"):
        lines.append(f"merged: {_layout(run)} on one ledger")
    width = max(map(len, SUMMARY_KEYS))
    lines += [f"  {key:<{width}}  {s[key]}" for key in SUMMARY_KEYS]
    lines += [f"error: {e.kind} ({e.type or 'unknown type'}) in worker {e.worker}, index "
              f"{e.index}: {e.message.strip().splitlines()[-1] if e.message.strip() else ''}"
              for e in run.errors]
    lines += [f"note: {n}" for n in run.notes]
    findings = _findings(run)
    if findings is not None:
        lines += ["", "where the data went (dlviz.explain" + (
            ", epoch by epoch):" if run.config.get("chained") else "):")]
        lines += [_in_pass(f, run) + str(f) for f in findings] or [
            "  nothing is missing or repeated"]
    elif run.config.get("chained"):
        lines += ["", _PER_PASS]
    return "\n".join(lines)


_PER_PASS = ("where the data went: dlviz.explain reads one pass at a time, and these passes "
             "did not all run to their end: summary of one pass's files (DIR/*-pass0.json)")


def _in_pass(finding: Finding, run: Run) -> str:
    """``pass 1: `` before a finding about one pass of a job whose passes are chained."""
    if not run.config.get("chained") or not finding.passes:
        return ""
    return f"pass {', '.join(map(str, finding.passes))}: "


def _findings(run: Run) -> list[Finding] | None:
    """:func:`dlviz.explain`'s findings, or None where it cannot read ``run``: passes
    merged by pass are explained from their own files; a job's ranks with their passes
    chained (``config["chained"]``) pass by pass, when every pass ran to its end."""
    if run.config.get("merged_by") == "pass":
        return None
    if not run.config.get("chained"):
        return explain(run)
    passes = _passes(run)
    return None if passes is None else explain(passes)


def _passes(run: Run) -> list[Run] | None:
    """A job merged by rank, its passes chained (:func:`dlviz.merge_runs` with
    ``parts``), split back into one Run per pass with its ranks: what each epoch did.
    None unless every rank has the same number of passes and every pass was exhausted
    (the merged file keeps one ``stop``: a pass that stopped early would read as a
    checkpoint to :func:`dlviz.explain`)."""
    chained = run.config["chained"]
    count = len(chained[0])
    if run.stop != "exhausted" or any(len(p) != count for p in chained):
        return None
    ev, occ = run.events, run.occurrences
    config = {k: v for k, v in run.config.items() if k != "chained"}
    out = []
    for k in range(count):
        in_events = np.zeros(len(ev), bool)
        in_occ = np.zeros(len(occ), bool)
        errors = []
        for part, starts in enumerate(chained):
            low, high = starts[k], starts[k + 1] if k + 1 < count else np.iinfo(np.int64).max
            mine = ev.column("rank") == part
            batch = ev.column("batch")
            in_events |= mine & (batch >= low) & (batch < high)
            batch = occ.column("batch")
            in_occ |= (occ.column("rank") == part) & (batch >= low) & (batch < high)
            errors += [e for e in run.errors if e.rank == part and e.batch is not None
                       and low <= e.batch < high]
        out.append(Run(config=config, dataset_size=run.dataset_size, keys=run.keys,
                       events=ev.where(in_events), errors=errors,
                       occurrences=occ.where(in_occ), workers=run.workers,
                       duration=run.duration, stop=run.stop, origin=run.origin,
                       labels=run.labels))
    return out


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
    findings = _findings(run)
    if findings is not None:
        found = "".join(f"<li>{_in_pass(f, run)}<b>{html.escape(f.cause)}</b> ({f.count}): "
                        f"{html.escape(f.message)}<br><i>fix:</i> {html.escape(f.fix)} "
                        f"<i>({html.escape(f.lesson)})</i></li>" for f in findings)
        found = found or "<li>nothing is missing or repeated</li>"
        picture = ""
        if not run.config.get("chained"):  # a job's epochs: no one waterfall
            fig = Figure(figsize=(10, 3.2))
            plot_waterfall(run, fig.add_axes((0.08, 0.15, 0.6, 0.72)))
            picture = f"<img alt='waterfall' src='data:image/png;base64,{_png(fig)}'>"
        parts.append(f"<h2>Where the data went</h2><ul>{found}</ul>{picture}")
    elif run.config.get("chained"):
        parts.append(f"<h2>Where the data went</h2><p>{html.escape(_PER_PASS)}</p>")
    if run.config.get("merged_by"):
        height = run.config.get("world_size" if run.config["merged_by"] == "rank" else "passes")
        fig = Figure(figsize=(12, 1.2 + 0.35 * int(height or 1)))
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
    for name, func, text in (("merge", merge, "merge run files (ranks, passes, or the ranks "
                              "x passes of a torchrun job) into one"),
                             ("summary", summary, "print a run's counts, errors and notes"),
                             ("report", report, "write a self-contained HTML report")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("files", nargs="+", metavar="FILE", help="run files (JSON)")
        sub.add_argument("--by", choices=("rank", "pass"), default="rank",
                         help="several files: one part per rank (a rank's passes chained; "
                         "the default), or per pass (epochs of one rank)")
        if name != "summary":
            sub.add_argument("-o", "--output", required=True, metavar="OUT",
                             help="where to write" + (" the HTML" if name == "report" else ""))
        sub.set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
