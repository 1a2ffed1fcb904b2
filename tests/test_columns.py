"""The columnar Run: tables read like records, the cached ledger equals a plain count,
files of both versions load, the event log spills instead of losing events, passes
are frozen (not built) when the next one starts, and dlviz refuses a torch it
cannot trace faithfully."""

from __future__ import annotations

import collections
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import dlviz
from dlviz import eventlog, torch_hooks
from dlviz.datasets import SyntheticDataset
from dlviz.ledger import FATES, Occurrence, Occurrences
from dlviz.run import Event, Events, Run


def test_a_table_reads_like_records_and_like_columns() -> None:
    rows = [Event("dispatch", 0, 0, -1, 5, 5), Event("fetch", 0, 0, 7, 6, 9, "ok"),
            Event("fetch", 1, 1, 8, 7, 12, "raised", 1)]
    events = Events.from_rows(rows)
    assert list(events) == rows and len(events) == 3 and events[1] == rows[1]
    assert events[-1].status == "raised" and events[-1].rank == 1
    fetches = events.of_kind("fetch")
    assert [e.index for e in fetches] == [7, 8] and fetches[0].start == 6
    assert fetches.start.tolist() == [6, 7] and fetches.kind.tolist() == ["fetch", "fetch"]
    assert events.where(events.column("end") > 8) == Events.from_rows(rows[1:])
    assert events.of_kind("step") == [] and events.of_kind("fetch") == rows[1:]
    with pytest.raises(IndexError):
        events[3]
    with pytest.raises(ValueError, match="kind"):
        events.of_kind("fetched")
    with pytest.raises(ValueError, match="unknown kind"):
        Events.from_rows([("nothing", 0, 0, 0, 0, 0)])


def test_to_frame_names_pandas_when_it_is_missing_or_gives_a_frame() -> None:
    events = Events.from_rows([Event("fetch", 0, 0, 7, 6, 9, "ok")])
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            events.to_frame()
    else:
        frame = events.to_frame()
        assert list(frame.columns) == list(Event._fields) and frame["kind"][0] == "fetch"


def _naive(size: int, occurrences: list[Occurrence]) -> dict[str, int]:
    """The ledger's counts the slow, obvious way (the definition in dlviz.ledger): fates
    over the dataset's indices, deliveries over every occurrence."""
    best = {i: len(FATES) - 1 for i in range(size)}
    for o in occurrences:
        if o.index in best:
            best[o.index] = min(best[o.index], FATES.index(o.fate))
    delivered = collections.Counter(o.index for o in occurrences if o.fate == "delivered")
    counts = collections.Counter(FATES[b] for b in best.values())
    return {"dataset_size": size,
            "sampled": len({o.index for o in occurrences if 0 <= o.index < size}),
            "delivered": counts["delivered"], "deliveries": sum(delivered.values()),
            "duplicated": sum(1 for v in delivered.values() if v > 1),
            **{f: counts[f] for f in FATES[1:]}}


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 40), occurrences=st.lists(st.tuples(
    st.integers(-3, 45), st.integers(0, 5), st.sampled_from(FATES[:-1])), max_size=80))
def test_the_cached_ledger_equals_a_plain_count(size: int, occurrences: list[Any]) -> None:
    occ = [Occurrence(i, b, f) for i, b, f in occurrences]
    run = Run(config={}, dataset_size=size, keys=None, events=[], errors=[], occurrences=occ,
              workers={}, duration=0, stop="exhausted")
    assert run.summary() == _naive(size, occ)
    fates = run.fates()
    assert list(fates) == list(range(size))
    for index in range(size):
        assert run.fate(index) == fates[index]
    for o in occ:  # an index outside the dataset is answered too
        assert FATES.index(run.fate(o.index)) <= FATES.index(o.fate)
    s = run.summary()
    assert sum(s[f] for f in FATES) == size  # the fates partition the dataset


def test_fate_is_constant_time_and_summary_is_cached() -> None:
    n = 200_000
    occ = Occurrences(index=np.arange(n), batch=np.arange(n) // 256,
                      fate=np.zeros(n, np.int8), rank=np.zeros(n))
    run = Run(config={}, dataset_size=n, keys=None, events=Events.empty(), errors=[],
              occurrences=occ, workers={}, duration=0, stop="exhausted")
    assert run.summary()["delivered"] == n
    ledger = run.ledger
    assert run.ledger is ledger  # computed once
    assert run.fate(n - 1) == "delivered" and run.summary() is not run.summary()  # copies


def test_version_1_files_still_load_and_equal_their_version_2_copy(tmp_path: Path) -> None:
    old = Run.from_json(FIXTURES / "v1" / "exception_continue.json")
    new = Run.from_json(FIXTURES / "exception_continue.json")
    assert old == new and old.summary() == new.summary()
    assert json.loads((FIXTURES / "exception_continue.json").read_text())["version"] == 2


@pytest.mark.parametrize("change", [
    lambda d: d["events"]["columns"].update(start=[1.5] * len(d["events"]["columns"]["start"])),
    lambda d: d["events"]["columns"].update(kind=[99] * len(d["events"]["columns"]["kind"])),
    lambda d: d["events"]["names"].update(kind=["bogus"]),
    lambda d: d["occurrences"]["columns"]["index"].pop(),
    lambda d: d["occurrences"]["columns"].update(rank=[True] * len(
        d["occurrences"]["columns"]["rank"])),
    lambda d: d.pop("labels"),
    lambda d: d.update(version=1),
], ids=["float", "code", "name", "length", "bool", "missing", "version"])
def test_malformed_version_2_files_raise_value_error(change: Any, tmp_path: Path) -> None:
    data = json.loads((FIXTURES / "clean.json").read_text())
    change(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError):
        Run.from_json(tmp_path / "bad.json")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_region_spills_to_disk_and_loses_no_event(
        workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "REGION_RECORDS", 64)  # spill every few batches
    traced = dlviz.trace(DataLoader(SyntheticDataset(3000), batch_size=16,
                                    num_workers=workers))
    assert sum(len(b) for b in traced) == 3000
    assert traced.log.capacity == 64
    assert os.listdir(traced.log.spill_dir)  # it did spill
    run = traced.run
    assert sorted(run.of_kind("fetch").index.tolist()) == list(range(3000))
    assert len(run.of_kind("collate")) == 188 and not run.notes
    assert run.summary()["delivered"] == 3000


def test_persistent_passes_spill_separately_and_are_frozen_not_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "REGION_RECORDS", 48)
    loader = DataLoader(SyntheticDataset(600), batch_size=10, num_workers=2,
                        persistent_workers=True, shuffle=True)
    with dlviz.trace(loader, keep=2) as traced:
        for _ in range(3):
            assert sum(len(b) for b in traced) == 600
            # the pass before this one was copied, not built
            assert all(e._run is None for e in traced.epochs[:-1])
        runs = traced.runs
    assert len(runs) == 2 and traced.passes_let_go == 1
    for run in runs:
        assert sorted(run.of_kind("fetch").index.tolist()) == list(range(600))
        assert run.summary()["delivered"] == 600


def test_keep_is_checked() -> None:
    loader = DataLoader(SyntheticDataset(4))
    with pytest.raises(ValueError, match="keep"):
        dlviz.trace(loader, keep=0)
    with pytest.raises(TypeError, match="keep"):
        dlviz.trace(loader, keep="all")  # type: ignore[arg-type]


def test_an_untested_torch_is_refused_with_the_supported_range() -> None:
    torch_hooks.probe()  # the installed one passes
    with pytest.raises(torch_hooks.UnsupportedTorch, match="torch 2.7 or newer"):
        torch_hooks.probe("2.6.0")


def test_a_torch_without_a_hook_dlviz_needs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as It

    def one_argument(self: Any, data: Any) -> Any:  # torch 2.6's signature
        return data

    monkeypatch.setattr(It, "_process_data", one_argument)
    with pytest.raises(torch_hooks.UnsupportedTorch, match="_process_data"):
        torch_hooks.probe(torch.__version__)
    monkeypatch.delattr(It, "_try_put_index")
    with pytest.raises(torch_hooks.UnsupportedTorch, match="_try_put_index"):
        torch_hooks.probe(torch.__version__)


class _OddMessage(torch.utils.data.Dataset[int]):
    """Raises errors that look like torch's messages, but are not quite them."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise RuntimeError("DataLoader worker (pid(s) , ) exited unexpectedly")
        if index == 5:
            raise RuntimeError("DataLoader timed out after")
        return index


def test_a_changed_torch_message_never_crashes_the_recorder() -> None:
    run = dlviz.record(DataLoader(_OddMessage(), batch_size=1), on_error="continue")
    assert [(e.kind, e.type) for e in run.errors] == [("exception", "RuntimeError")] * 2
    assert run.summary()["delivered"] >= 6


def test_a_loader_that_iterates_its_own_way_is_refused_not_silently_changed() -> None:
    """dlviz rebuilds a loader from its parts: a subclass with its own iteration would
    silently become a plain DataLoader. Refused (torchdata's StatefulDataLoader is
    traced as itself: tests/test_stateful.py)."""

    class EveryOther(DataLoader):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return itertools.islice(super().__iter__(), 0, None, 2)

    loader = EveryOther(SyntheticDataset(100), batch_size=10)
    with pytest.raises(ValueError, match="EveryOther.*__iter__"):
        dlviz.trace(loader)
    with pytest.raises(ValueError, match="__iter__"):
        dlviz.record(loader)

    class JustNamed(DataLoader):  # type: ignore[type-arg]  # changes nothing: traced
        pass

    assert dlviz.record(JustNamed(SyntheticDataset(10), batch_size=5)).summary()[
        "delivered"] == 10


def test_an_epoch_scale_timeline_keeps_its_reading() -> None:
    """Past DENSE_SPANS fetches in a lane and MAX_LEADS batches, the timeline draws a
    density strip and markers from the columns: the lanes, the error, the dropped tail and
    every delivery are still there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlviz import plot

    n = plot.DENSE_SPANS + 4_000
    run = dlviz.record(DataLoader(SyntheticDataset(n, fail_at=[777]), batch_size=32,
                                  drop_last=True), on_error="continue")
    assert len(run.of_kind("fetch")) > plot.DENSE_SPANS
    assert len(run.of_kind("dispatch")) > plot.MAX_LEADS
    fig, ax = plt.subplots()
    plot.plot_timeline(run, ax)
    gids = [a.get_gid() for a in ax.get_children()]
    assert "density:fetch:main (fetch)" in gids and "error:exception" in gids
    assert "dropped" in gids and "dispatch" in gids
    delivered = [a for a in ax.get_lines() if a.get_gid() == "end:delivered"]
    assert len(delivered[0].get_xdata()) == len(run.of_kind("deliver")) == n // 32 - 1
    plt.close(fig)
