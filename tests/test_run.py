"""The Run file formats: exact JSON round trip, strict loading, Perfetto export, merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dlviz
from dlviz.run import FORMAT, VERSION, Run

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_json_round_trip_is_exact(path: Path, tmp_path: Path) -> None:
    run = Run.from_json(path)
    again = tmp_path / "again.json"
    run.to_json(again)
    assert Run.from_json(again) == run
    assert json.loads(again.read_text()) == json.loads(path.read_text())


def test_fresh_recording_round_trips(tmp_path: Path) -> None:
    from dlviz.datasets import SyntheticDataset, make_loader

    run = dlviz.record(make_loader(SyntheticDataset(50, fail_at=[7], none_at=[20]),
                                   batch_size=8, num_workers=2,
                                   collate_fn=dlviz.datasets.collate_skip_none),
                       on_error="continue")
    run.to_json(tmp_path / "run.json")
    loaded = Run.from_json(tmp_path / "run.json")
    assert loaded == run
    assert loaded.summary() == run.summary()
    assert loaded.fate(7) == "failed" and loaded.fate(20) == "filtered"


def test_newer_version_is_refused_with_advice(tmp_path: Path) -> None:
    data = json.loads(FIXTURES[0].read_text())
    data["version"] = VERSION + 1
    (tmp_path / "new.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="upgrade dlviz"):
        Run.from_json(tmp_path / "new.json")


@pytest.mark.parametrize("text", ["", "[]", '{"format": "other"}', "NaN", "{" * 5000,
                                  '{"format": "' + FORMAT + '", "version": "1"}'])
def test_foreign_files_raise_value_error(text: str, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ValueError):
        Run.from_json(tmp_path / "bad.json")


def test_chrome_trace_has_a_track_per_worker(tmp_path: Path) -> None:
    run = Run.from_json(Path(__file__).parent / "fixtures" / "exception_continue.json")
    run.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert any(n.startswith("main process") for n in names)
    assert {n.split(" (")[0] for n in names} >= {"worker 0", "worker 1"}
    phases = {e["ph"] for e in events}
    assert {"X", "i", "C", "M"} <= phases
    fetches = [e for e in events if e.get("cat") == "fetch"]
    assert len(fetches) == sum(1 for e in run.events if e.kind == "fetch")
    for track in {(e["pid"], e["tid"]) for e in fetches}:  # spans on one track never overlap
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                       if e["ph"] == "X" and (e["pid"], e["tid"]) == track)
        assert all(a[1] <= b[0] + 1e-3 for a, b in zip(spans, spans[1:]))
    errors = [e for e in events if e.get("cat") == "error"]
    assert [e["args"]["kind"] for e in errors] == [x.kind for x in run.errors]
    counter = [e["args"]["outstanding"] for e in events if e["ph"] == "C"]
    assert max(counter) == run.prefetch_limit


def test_merge_runs_keeps_ranks_and_spans_one_ledger() -> None:
    run = Run.from_json(Path(__file__).parent / "fixtures" / "clean.json")
    merged = dlviz.merge_runs([run, run])
    assert {e.rank for e in merged.events} == {0, 1}
    s = merged.summary()
    assert s["deliveries"] == 2 * run.summary()["deliveries"]
    assert s["duplicated"] == run.summary()["delivered"]
    assert merged.config["world_size"] == 2
    with pytest.raises(TypeError, match="runs"):
        dlviz.merge_runs([])
