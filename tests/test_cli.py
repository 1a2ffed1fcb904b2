"""``python -m dlviz``: merge, summary and report on good and bad files, run as a user
runs them (a separate process), and the passes plot they draw."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest
from helpers import FIXTURES, cli

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import dlviz  # noqa: E402
from dlviz.datasets import SyntheticDataset  # noqa: E402
from dlviz.run import Run  # noqa: E402


def test_help_lists_the_three_commands() -> None:
    done = cli("--help")
    assert done.returncode == 0
    assert all(re.search(rf"^\s+{c}\s", done.stdout, re.M) for c in ("merge", "summary", "report"))


def test_summary_prints_the_counts_of_the_file() -> None:
    path = FIXTURES / "exception_continue.json"
    done = cli("summary", path)
    assert done.returncode == 0, done.stderr
    counts = dict(re.findall(r"^\s+(\w+)\s+(\d+)$", done.stdout, re.M))
    assert {k: int(v) for k, v in counts.items()} == Run.from_json(path).summary()
    assert "error: exception" in done.stdout
    assert "[worker_error] " in done.stdout  # dlviz.explain's finding for the lost batch


@pytest.mark.parametrize("by", ["rank", "pass"])
def test_merge_writes_one_ledger(by: str, tmp_path: Path) -> None:
    files = [FIXTURES / "clean.json", FIXTURES / "exception_continue.json"]
    done = cli("merge", *files, "--by", by, "-o", tmp_path / "job.json")
    assert done.returncode == 0, done.stderr
    merged = Run.from_json(tmp_path / "job.json")
    expected = dlviz.merge_runs([Run.from_json(f) for f in files], by=by)
    assert merged == expected and merged.config["merged_by"] == by
    assert merged.summary()["deliveries"] == 64 + 56


def test_report_is_one_self_contained_page(tmp_path: Path) -> None:
    cli("merge", FIXTURES / "clean.json", FIXTURES / "drop_last.json", "-o", tmp_path / "j.json")
    done = cli("report", tmp_path / "j.json", "-o", tmp_path / "report.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    # timeline + ledger, the waterfall, the passes grid
    assert len(re.findall(r"""src=["']data:image/png;base64,""", page)) == 3
    assert "Where the data went" in page
    done = cli("report", FIXTURES / "drop_last.json", "-o", tmp_path / "single.html")
    assert done.returncode == 0, done.stderr
    assert "<b>drop_last</b> (5)" in (tmp_path / "single.html").read_text()  # indices 40-44
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # opens offline
    assert "<td>104</td>" in page  # deliveries of the merged job, from its summary


@pytest.mark.parametrize("content", ["", "{}", "[1, 2]", '{"format": "dlviz.run", "version": 99}'])
def test_a_bad_file_gets_one_line_and_exit_2(content: str, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(content)
    for args in (("summary", tmp_path / "bad.json"),
                 ("report", tmp_path / "bad.json", "-o", tmp_path / "r.html"),
                 ("merge", FIXTURES / "clean.json", tmp_path / "bad.json", "-o", tmp_path / "m")):
        done = cli(*args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and "bad.json" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "m").exists()


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert cli().returncode == 2
    assert cli("summary").returncode == 2
    assert cli("merge", FIXTURES / "clean.json").returncode == 2  # no -o
    assert cli("merge", FIXTURES / "clean.json", "--by", "epoch", "-o", tmp_path / "x"
               ).returncode == 2
    assert cli("summary", tmp_path / "missing.json").returncode == 2


def test_passes_show_the_same_order_without_a_new_shuffle(tmp_path: Path) -> None:
    """Three epochs of a shuffled loader: each pass delivers every index once, in a new
    order; the passes grid draws one row per pass, the merged ledger counts 3 each."""
    dataset = SyntheticDataset(60)
    with dlviz.trace(DataLoader(dataset, batch_size=8, shuffle=True), keep=None) as traced:
        for _ in range(3):
            assert sum(len(b) for b in traced) == 60
    runs = traced.runs
    merged = dlviz.merge_runs(runs, by="pass")
    assert merged.ledger.deliveries.tolist() == [3] * 60
    orders = [run.delivered() for run in runs]
    assert all(sorted(o) == list(range(60)) for o in orders) and orders[0] != orders[1]
    fig, ax = plt.subplots()
    for show in ("fate", "order"):
        ax.clear()
        dlviz.plot_passes(runs, ax, show=show)
        image = ax.get_images()[0].get_array()
        assert image.shape[:2] == (3, 60)
        rows_equal = [bool((image[0] == image[p]).all()) for p in (1, 2)]
        assert rows_equal == ([True, True] if show == "fate" else [False, False])
    plt.close(fig)
    with pytest.raises(ValueError, match="show"):
        dlviz.plot_passes(runs, show="colour")
    with pytest.raises(TypeError, match="runs"):
        dlviz.plot_passes("runs.json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="by"):
        dlviz.merge_runs(runs, by="epoch")
    json.dumps(merged.to_dict())  # a merged Run is a run file too
