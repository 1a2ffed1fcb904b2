"""Bad input: every public function answers it with TypeError or ValueError naming
the argument, never with a crash from deep inside (OverflowError, MemoryError,
AttributeError, ...) and never with a hang; ``Run.from_json`` answers any file
that is not a dlviz run, however damaged, with ValueError.

Hypothesis feeds wrong types, negatives, huge values and None to one argument at
a time (the others valid). A value that happens to be valid must simply work.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import check_ledger_adds_up, deadline, fixture_paths  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import dlviz  # noqa: E402
from dlviz import datasets, eventlog  # noqa: E402
from dlviz.explorer import CONTROLS  # noqa: E402
from dlviz.ledger import FATES  # noqa: E402
from dlviz.run import Run  # noqa: E402

FIXTURES = fixture_paths()
TEXTS = {path.stem: path.read_text() for path in FIXTURES}

# anything at all: wrong types, negatives, huge, None, NaN, containers of junk
JUNK = st.one_of(
    st.none(), st.booleans(),
    st.integers(-10**40, 10**40),
    st.sampled_from([-1, 0, 1, 2**31, 2**63, 2**64, 10**30, -10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, -0.5, 1e300, -1e300, math.nan, math.inf, -math.inf]),
    st.text(max_size=4), st.binary(max_size=4),
    st.lists(st.one_of(st.integers(-3, 10**20), st.text(max_size=2), st.none(),
                       st.floats()), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([object(), range(10**12), range(-5, 5), np.int64(3), np.float64(2.0),
                     torch.tensor(3), torch.tensor([1, 2]), (1, 2), {1, 2}, "fork",
                     b"spawn", print, type]),
)
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def answers_clearly(argument: str, call: Callable[[], Any]) -> Any:
    """Call; it may return, or raise TypeError/ValueError whose message names
    ``argument``. Anything else (or a hang: the deadline is a hang guard, far above
    the second or so a call takes) fails the test."""
    with deadline():
        try:
            return call()
        except (TypeError, ValueError) as exc:
            assert argument in str(exc), f"{type(exc).__name__} does not name {argument!r}: {exc}"
            return None


def slow_if_valid(low: float, high: float) -> Callable[[Any], bool]:
    """Leave out values that are valid and would make the call slow (a step of 30 s)."""
    def ok(value: Any) -> bool:
        return not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and low <= value <= high)
    return ok


# ---------------------------------------------------------------- record and trace
def tiny_loader(stream: bool = False) -> DataLoader[Any]:
    dataset: Any = datasets.SyntheticStream(4) if stream else datasets.SyntheticDataset(4)
    return DataLoader(dataset, batch_size=2)


RECORD_ARGS: dict[str, Any] = {"on_error": "stop", "max_batches": None, "step_ms": 0.0,
                               "key": None, "expected": None}


@FUZZ
@example(argument="expected", stream=True, value=range(10**12))  # was a hang
@example(argument="expected", stream=False, value=torch.tensor(3))
@example(argument="step_ms", stream=False, value=1e300)  # was OverflowError in time.sleep
@given(argument=st.sampled_from(sorted(RECORD_ARGS) + ["loader"]), stream=st.booleans(),
       value=JUNK.filter(slow_if_valid(1, 60_000)))
def test_record_bad_arguments(argument: str, stream: bool, value: Any) -> None:
    kwargs = {**RECORD_ARGS, "loader": tiny_loader(stream)}
    kwargs[argument] = value
    loader = kwargs.pop("loader")
    run = answers_clearly(argument, lambda: dlviz.record(loader, **kwargs))
    if run is not None:
        assert isinstance(run, dlviz.Run)


@FUZZ
@example(argument="expected", stream=True, value=range(10**12))  # was a hang
@example(argument="expected", stream=True, value=torch.tensor(3))
@given(argument=st.sampled_from(["loader", "key", "expected"]), stream=st.booleans(),
       value=JUNK)
def test_trace_bad_arguments(argument: str, stream: bool, value: Any) -> None:
    kwargs: dict[str, Any] = {"loader": tiny_loader(stream), "key": None, "expected": None}
    kwargs[argument] = value
    traced = answers_clearly(argument, lambda: dlviz.trace(**kwargs))
    if traced is not None:
        traced.close()


def test_record_refuses_a_step_that_would_never_end() -> None:
    """step_ms=1e300 used to reach time.sleep and raise OverflowError after the first
    batch; a step of hours would hang the kernel. Both are refused up front."""
    for step in (1e300, 10**400, 3_600_000):
        with pytest.raises(ValueError, match="step_ms"):
            dlviz.record(tiny_loader(), step_ms=step)


class HugeDataset(torch.utils.data.Dataset[int]):
    """A user's dataset of a billion samples (cheap to index)."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, index: int) -> int:
        return index


def test_record_of_a_huge_dataset_stays_small() -> None:
    """The shared event log is sized for one pass, but capped: a billion samples
    used to ask for 3 regions x 32 GB before the first batch. The log's own size is
    checked (RSS, which the allocator and a busy machine move, is not)."""
    loader = DataLoader(HugeDataset(), batch_size=8, num_workers=2,
                        multiprocessing_context="fork")
    traced = dlviz.trace(loader)
    region = (eventlog.REGION_RECORDS + eventlog.HEADER) * eventlog.FIELDS * 8  # 4 MiB
    assert traced.log.buffer.nbytes == 2 * region
    traced.close()
    with deadline():  # a hang guard: it takes well under a second
        run = dlviz.record(loader, max_batches=3)
    assert run.dataset_size == 10**9 and len(run.delivered()) == 24
    assert [o.fate for o in run.occurrences].count("delivered") == 24


# ---------------------------------------------------------------- each bug found, pinned
def _config_file(tmp: Path, **config: Any) -> Path:
    tree = json.loads(TEXTS["clean"])
    tree["config"].update(config)
    path = tmp / "run.json"
    path.write_text(json.dumps(tree))
    return path


REGRESSIONS: dict[str, tuple[Callable[[Path], Any], type[Exception], str]] = {
    # was OverflowError from len() inside DataLoader / from time.sleep in the worker
    "n=10**30": (lambda _: datasets.SyntheticDataset(10**30), ValueError, "n must be <="),
    "cost_ms=1e300": (lambda _: datasets.SyntheticDataset(4, cost_ms=1e300), ValueError,
                      "cost_ms"),
    "cost_ms=10**400": (lambda _: datasets.SyntheticStream(4, cost_ms=10**400), ValueError,
                        "cost_ms"),
    # was a hang: ten to the twelve indices checked after they were all collected
    "fail_at=range(10**12)": (lambda _: datasets.SyntheticDataset(10, fail_at=range(10**12)),
                              ValueError, "fail_at"),
    # was MemoryError (or the OOM killer: 10**10 asks for 160 GB)
    "CountingDataset(10**12)": (lambda _: datasets.CountingDataset(10**12), ValueError, "n"),
    # was "TypeError: iteration over a 0-d tensor"
    "crash_at=tensor(3)": (lambda _: datasets.SyntheticDataset(10, crash_at=torch.tensor(3)),
                           TypeError, "crash_at"),
    # was "'>' not supported between instances of 'str' and 'int'" (and None passed on)
    "make_loader num_workers='2'": (lambda _: datasets.make_loader(
        datasets.SyntheticDataset(4), start_method="fork", num_workers="2"), TypeError,
        "num_workers"),
    "make_loader(None)": (lambda _: datasets.make_loader(None), TypeError, "dataset"),
    # was "'int' object is not iterable", and MemoryError for range(10**12)
    "merge_runs(5)": (lambda _: dlviz.merge_runs(5), TypeError, "runs"),  # type: ignore[arg-type]
    "merge_runs(range(10**12))": (lambda _: dlviz.merge_runs(range(10**12)),  # type: ignore[arg-type]
                                  TypeError, "runs"),
    # was "expected str, bytes or os.PathLike object, not int"
    "from_json(5)": (lambda _: Run.from_json(5), TypeError, "path"),  # type: ignore[arg-type]
    # was OverflowError (int too large to convert to float)
    "config 10**400": (lambda tmp: Run.from_json(_config_file(tmp, seed=10**400)), ValueError,
                       "config"),
    # loaded fine, then run.prefetch_limit (and the plots) raised TypeError
    "config num_workers=[1]": (lambda tmp: Run.from_json(_config_file(tmp, num_workers=[1])),
                               ValueError, "num_workers"),
    "config timeout='1 s'": (lambda tmp: Run.from_json(_config_file(tmp, timeout="1 s")),
                             ValueError, "timeout"),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_bugs_found_stay_fixed(case: str, tmp_path: Path) -> None:
    call, exc_type, words = REGRESSIONS[case]
    with deadline(), pytest.raises(exc_type, match=words):  # a hang guard
        call(tmp_path)


# ---------------------------------------------------------------- datasets
DATASET_ARGS: dict[Callable[..., Any], dict[str, Any]] = {
    datasets.SyntheticDataset: {"n": 10, "cost_ms": 0.0, "work": "sleep", "fail_at": (),
                                "crash_at": (), "hang_at": (), "none_at": ()},
    datasets.SyntheticStream: {"n": 10, "sharding": "none", "cost_ms": 0.0, "fail_at": ()},
    datasets.CountingDataset: {"n": 10},
    datasets.EpochDataset: {"n": 10},
    datasets.RandomDataset: {"n": 10, "source": "generator", "seed": 0},
}


@st.composite
def dataset_calls(draw: st.DrawFn) -> tuple[Callable[..., Any], str, dict[str, Any]]:
    cls = draw(st.sampled_from(list(DATASET_ARGS)))
    argument = draw(st.sampled_from(sorted(DATASET_ARGS[cls])))
    return cls, argument, {**DATASET_ARGS[cls], argument: draw(JUNK)}


@settings(FUZZ, max_examples=300)
@given(dataset_calls())
def test_dataset_bad_arguments(call: tuple[Callable[..., Any], str, dict[str, Any]]) -> None:
    cls, argument, kwargs = call
    dataset = answers_clearly(argument, lambda: cls(**kwargs))
    if dataset is not None:
        assert len(dataset) == kwargs["n"] if hasattr(dataset, "__len__") else True


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@FUZZ
@given(argument=st.sampled_from(["dataset", "start_method", "num_workers", "batch_size"]),
       method=st.sampled_from([None, "fork"]), value=JUNK)
def test_make_loader_bad_arguments(argument: str, method: str | None, value: Any) -> None:
    kwargs: dict[str, Any] = {"dataset": datasets.SyntheticDataset(4), "start_method": method,
                              "num_workers": 0, "batch_size": 2}
    kwargs[argument] = value
    dataset = kwargs.pop("dataset")
    answers_clearly(argument, lambda: datasets.make_loader(dataset, **kwargs))


# ---------------------------------------------------------------- Run
@pytest.fixture(scope="module")
def run() -> Run:
    return Run.from_json(FIXTURES[0])


@FUZZ
@given(value=JUNK)
def test_run_fate_bad_index(run: Run, value: Any) -> None:
    fate = answers_clearly("index", lambda: run.fate(value))
    assert fate is None or fate in FATES


@FUZZ
@example(value=torch.tensor(3))  # was "iteration over a 0-d tensor"
@example(value=range(10**12))  # was MemoryError
@given(value=st.one_of(JUNK, st.lists(JUNK, max_size=3)))
def test_merge_runs_bad_runs(run: Run, value: Any) -> None:
    answers_clearly("runs", lambda: dlviz.merge_runs(value))
    for mixed in ([run, value], (run, value)):
        answers_clearly("runs", lambda: dlviz.merge_runs(mixed))  # noqa: B023


def test_from_json_bad_path_types(tmp_path: Path) -> None:
    for path in (None, 5, b"\x00", ["a.json"]):
        answers_clearly("path", lambda: Run.from_json(path))  # noqa: B023
        answers_clearly("path", lambda: Run.from_json(FIXTURES[0]).to_json(path))  # noqa: B023


# ---------------------------------------------------------------- the explorer
EXPLORE_BASE: dict[str, Any] = {"n": 8, "batch_size": 4, "num_workers": 0, "cost_ms": 0.0}


@settings(FUZZ, max_examples=25)
@given(argument=st.sampled_from(["controls", "ranges", *sorted(CONTROLS), "unknown_name"]),
       value=st.one_of(JUNK, st.lists(st.sampled_from([*CONTROLS, "bogus"]), max_size=2),
                       st.dictionaries(st.sampled_from([*CONTROLS, "bogus"]),
                                       st.tuples(JUNK, JUNK), max_size=1)))
def test_explore_bad_arguments(argument: str, value: Any) -> None:
    kwargs = {**EXPLORE_BASE, argument: value}
    name = "unknown" if argument == "unknown_name" else argument
    widget = answers_clearly(name, lambda: dlviz.explore(**kwargs))
    if widget is not None:
        widget.close()


@settings(FUZZ, max_examples=20)
@given(argument=st.sampled_from([*sorted(CONTROLS), "unknown_name"]), value=JUNK)
def test_rerun_bad_arguments(argument: str, value: Any) -> None:
    widget = dlviz.explore(**EXPLORE_BASE)
    try:
        name = "unknown" if argument == "unknown_name" else argument
        run = answers_clearly(name, lambda: widget.rerun(**{argument: value}))
        assert run is None or isinstance(run, Run)
    finally:
        widget.close()


# ---------------------------------------------------------------- Run.from_json
def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON tree (the root is ``()``)."""
    yield path
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*path, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, (*path, i))


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


JSON_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.sampled_from([-1, 0, 2**63, 10**50, 10**400]), st.floats(allow_nan=False),
    st.text(max_size=5), st.just([]), st.just({}), st.just([[[[[]]]]]),
    st.lists(st.integers(-2, 2), max_size=8), st.just({"format": "dlviz.run"}),
)


def use(run: Run, tmp_path: Path) -> None:
    """What a notebook does with a loaded run: none of it may fail."""
    repr(run)
    dataset = set(run.keys) if run.keys is not None else range(run.dataset_size)
    outside = [o.index for o in run.occurrences if o.index not in dataset]
    # the ledger is O(dataset_size) by design; an index (or stream key) outside the
    # dataset is a known hole (test_from_json_takes_an_index_outside_the_dataset)
    if run.dataset_size <= 10**6 and not outside:
        check_ledger_adds_up(run)  # any run the loader accepts has a ledger that adds up
    run.batches()
    delivered = run.delivered()
    assert run.outstanding()[0] == (0, 0)
    workers = run.config.get("num_workers", 0)
    assert (run.prefetch_limit == 0) == (workers == 0 or not run.config.get("prefetch_factor"))
    if run.dataset_size <= 10**6:
        assert len(delivered) == run.summary()["deliveries"]
    run.to_json(tmp_path / "again.json")
    assert Run.from_json(tmp_path / "again.json") == run


def loads_or_value_error(data: bytes | str, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    with deadline():
        try:
            run = Run.from_json(path)
        except ValueError:
            return
        use(run, tmp_path)


FUZZ_FILES = settings(FUZZ, max_examples=150,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


@FUZZ_FILES
@given(name=st.sampled_from(sorted(TEXTS)), data=st.data())
def test_from_json_truncated(name: str, data: st.DataObject, tmp_path: Path) -> None:
    text = TEXTS[name]
    loads_or_value_error(text[:data.draw(st.integers(0, len(text) - 1))], tmp_path)


@FUZZ_FILES
@given(name=st.sampled_from(sorted(TEXTS)), data=st.data())
def test_from_json_byte_flips(name: str, data: st.DataObject, tmp_path: Path) -> None:
    raw = bytearray(TEXTS[name].encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    loads_or_value_error(bytes(raw), tmp_path)


def test_from_json_takes_an_index_outside_the_dataset_and_its_ledger_adds_up(
        tmp_path: Path) -> None:
    """Found by the fuzz below: occurrence 1 of clean.json given index -1 (a sampler can
    yield an index the dataset lacks). It loads, its fate is answered, and the ledger's
    counts still partition the dataset: the stray index is left out of them."""
    tree = json.loads(TEXTS["clean"])
    tree["occurrences"]["columns"]["index"][1] = -1
    path = tmp_path / "outside.json"
    path.write_text(json.dumps(tree))
    run = Run.from_json(path)
    check_ledger_adds_up(run)
    assert run.fate(-1) == "delivered" and run.fate(1) == "never_sampled"
    assert run.ledger.outside.tolist() == [-1]


@FUZZ_FILES
@given(name=st.sampled_from(sorted(TEXTS)), data=st.data(),
       mutation=st.sampled_from(["delete", "swap"]))
def test_from_json_deleted_and_swapped_fields(name: str, data: st.DataObject, mutation: str,
                                              tmp_path: Path) -> None:
    tree = json.loads(TEXTS[name])
    # favour the top and the first records: most of the tree is events
    places = [p for p in _paths(tree) if len(p) < 2 or all(
        not isinstance(step, int) or step < 3 for step in p)]
    place = data.draw(st.sampled_from(places))
    if mutation == "swap" or place == ():
        new = data.draw(JSON_JUNK)
        if place == ():
            tree = new
        else:
            _at(tree, place[:-1])[place[-1]] = new
    else:
        parent = _at(tree, place[:-1])
        del parent[place[-1]]
    loads_or_value_error(json.dumps(tree), tmp_path)


@FUZZ
@given(version=JSON_JUNK)
def test_from_json_wrong_version(version: Any, tmp_path_factory: Any) -> None:
    if type(version) is int and version == 1:
        return  # the right version
    tree = json.loads(TEXTS["clean"])
    tree["version"] = version
    path = tmp_path_factory.mktemp("version") / "run.json"
    path.write_text(json.dumps(tree))
    with pytest.raises(ValueError):
        Run.from_json(path)


@pytest.mark.parametrize("content", [
    b"", b" \n", b"\x89PNG\r\n\x1a\n\x00\x00", b"\x1f\x8b\x08\x00gzip", b"\xff\xfe{\x00}\x00",
    b"null", b"42", b'"dlviz.run"', b"[]", b'{"traceEvents": []}', b"[" * 100_000,
    b'{"a":' * 50_000, b"1" * 5000, b'{"format": "dlviz.run", "version": 1}',
    b"{\"format\": \"dlviz.run\", \"version\": 1e999}",
], ids=lambda c: repr(c[:12]))
def test_from_json_wrong_type_files(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        Run.from_json(path)


def test_from_json_never_unpickles(tmp_path: Path) -> None:
    """A pickled Run (what a careless save would write) is refused, not loaded."""
    path = tmp_path / "run.json"
    path.write_bytes(pickle.dumps(Run.from_json(FIXTURES[0])))
    with pytest.raises(ValueError):
        Run.from_json(path)
