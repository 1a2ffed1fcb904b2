"""A torchdata StatefulDataLoader traced by dlviz keeps its checkpoints truthful.

Each test runs the same job twice, side by side: untraced (torchdata alone: the
ground truth) and through ``dlviz.trace``; the batches, the ``state_dict()`` at the
checkpoint and the resumed pass must be the same, and the recording's ledger over
both passes must say what torch did (every index delivered exactly once).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch
from helpers import check_ledger_adds_up, live_processes, processes_left
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, Dataset, IterableDataset, RandomSampler

import dlviz
from dlviz.datasets import SyntheticDataset

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader


def make(n: int = 100, *, seed: int = 5, method: str | None = "fork", **kw: Any) -> Any:
    """A shuffled StatefulDataLoader whose order depends only on ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    if kw.get("num_workers", 0) > 0 and method is not None:
        kw["multiprocessing_context"] = multiprocessing.get_context(method)
    kw.setdefault("batch_size", 10)
    kw.setdefault("shuffle", True)
    return StatefulDataLoader(SyntheticDataset(n), generator=generator, **kw)


def indices(batch: Any) -> list[int]:
    return [int(i) for i in batch]


def same_state(a: Any, b: Any) -> bool:
    """Equal state dicts (tensors compared by value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return bool(type(a) is type(b) and a == b)


def until(loader: Any, steps: int) -> tuple[list[int], Any]:
    """Iterate ``steps`` batches, then checkpoint; the indices seen and the state."""
    seen: list[int] = []
    for step, batch in enumerate(loader):
        seen += indices(batch)
        if step + 1 == steps:
            break
    return seen, loader.state_dict()


def job(traced: bool, steps: int, **kw: Any) -> tuple[list[int], list[int], Any, list[Any]]:
    """Checkpoint after ``steps`` batches, resume in a new loader: (before, after, state,
    the traced passes' runs)."""
    loader = make(**kw)
    source = dlviz.trace(loader) if traced else loader
    before, state = until(source, steps)
    resumed = make(**kw)
    resumed.load_state_dict(state)
    again = dlviz.trace(resumed) if traced else resumed
    after = [i for batch in again for i in indices(batch)]
    runs = [source.run, again.run] if traced else []
    for one in (source, again):
        if traced:
            one.close()
    return before, after, state, runs


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_checkpoint_through_trace_resumes_exactly_as_untraced(num_workers: int) -> None:
    before_pids = live_processes()
    plain = job(False, 3, num_workers=num_workers)
    traced = job(True, 3, num_workers=num_workers)
    assert traced[0] == plain[0] and traced[1] == plain[1]
    assert same_state(traced[2], plain[2])
    assert sorted(traced[0] + traced[1]) == list(range(100))  # each index exactly once
    merged = dlviz.merge_runs(traced[3], by="pass")
    check_ledger_adds_up(merged, 100)
    assert merged.summary()["delivered"] == 100
    assert merged.ledger.deliveries.tolist() == [1] * 100
    assert [r.delivered() for r in traced[3]] == [traced[0], traced[1]]
    assert not processes_left(before_pids)


def test_your_own_loader_says_where_the_traced_pass_is() -> None:
    """``your_loader.state_dict()`` (not only ``traced.state_dict()``) tells the truth,
    and a state given to your loader before tracing is where the traced pass resumes."""
    loader = make(num_workers=1)
    traced = dlviz.trace(loader)
    seen, state = until(traced, 4)
    assert same_state(loader.state_dict(), state)
    assert state["_snapshot"]["_snapshot_step"] == 4
    traced.close()
    fresh = make(num_workers=1)
    fresh.load_state_dict(state)
    rest = [i for batch in dlviz.trace(fresh) for i in indices(batch)]
    assert sorted(seen + rest) == list(range(100))
    with pytest.raises(TypeError, match="StatefulDataLoader"):
        dlviz.trace(torch.utils.data.DataLoader(SyntheticDataset(4))).state_dict()


def test_a_state_asked_before_the_first_batch_begins_that_pass() -> None:
    """As untraced: ``state_dict()`` before iterating begins the pass, whose order the
    state then reproduces."""
    plain = make()
    state = plain.state_dict()
    order = [i for batch in plain for i in indices(batch)]
    traced = dlviz.trace(make())
    assert same_state(traced.state_dict(), state)
    assert [i for batch in traced for i in indices(batch)] == order
    resumed = make(seed=99)
    resumed.load_state_dict(state)
    assert [i for batch in dlviz.trace(resumed) for i in indices(batch)] == order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_sampler_without_state_resumes_by_skipping_unrecorded(num_workers: int) -> None:
    """A torch BatchSampler has no state: torchdata resumes by drawing the batches
    already given again and throwing them away. The resumed pass did not sample them."""
    dataset = SyntheticDataset(50)

    def build() -> Any:
        ctx = multiprocessing.get_context("fork") if num_workers else None
        return StatefulDataLoader(dataset, num_workers=num_workers, multiprocessing_context=ctx,
                                  batch_sampler=BatchSampler(RandomSampler(
                                      dataset, generator=torch.Generator().manual_seed(3)),
                                      5, drop_last=False))

    outcome = []
    for wrap in (False, True):
        loader = build()
        source = dlviz.trace(loader) if wrap else loader
        before, state = until(source, 3)
        resumed = build()
        resumed.load_state_dict(state)
        again = dlviz.trace(resumed) if wrap else resumed
        outcome.append((before, [i for batch in again for i in indices(batch)]))
    assert outcome[1] == outcome[0]
    run = again.run
    assert run.summary()["never_sampled"] == 15 == len(outcome[1][0])
    assert [run.fate(i) for i in outcome[1][0]] == ["never_sampled"] * 15
    assert run.delivered() == outcome[1][1]
    source.close()


def test_drop_last_tail_is_seen_through_torchdatas_batch_sampler() -> None:
    loader = make(95, drop_last=True, num_workers=2)
    traced = dlviz.trace(loader)
    delivered = [i for batch in traced for i in indices(batch)]
    run = traced.run
    dropped = [i for i in range(95) if run.fate(i) == "dropped"]
    assert len(delivered) == 90 and sorted(delivered + dropped) == list(range(95))
    check_ledger_adds_up(run, 95)


def test_persistent_workers_resume_in_a_later_epoch() -> None:
    kw: dict[str, Any] = {"num_workers": 2, "persistent_workers": True}
    plain, traced = make(**kw), dlviz.trace(make(**kw))
    for loader in (plain, traced):
        first = [i for batch in loader for i in indices(batch)]
        assert sorted(first) == list(range(100))
    plain_rest, plain_state = until(plain, 2)
    seen, state = until(traced, 2)
    assert seen == plain_rest and same_state(state, plain_state)
    resumed = make(**kw)
    resumed.load_state_dict(state)
    with dlviz.trace(resumed) as again:
        rest = [i for batch in again for i in indices(batch)]
    traced.close()
    assert sorted(seen + rest) == list(range(100))
    assert len(traced.runs) == 2 and traced.runs[1].delivered() == seen


class Counting(Dataset[int]):
    """A map-style dataset with a state of its own (fetches so far, per process)."""

    def __init__(self, n: int) -> None:
        self.n, self.fetched = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        self.fetched += 1
        return index

    def state_dict(self) -> dict[str, int]:
        return {"fetched": self.fetched}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.fetched = state["fetched"]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_datasets_own_state_passes_through(num_workers: int) -> None:
    states = []
    for wrap in (False, True):
        ctx = multiprocessing.get_context("fork") if num_workers else None
        loader = StatefulDataLoader(Counting(40), batch_size=4, num_workers=num_workers,
                                    multiprocessing_context=ctx,
                                    generator=torch.Generator().manual_seed(1))
        source = dlviz.trace(loader) if wrap else loader
        states.append(until(source, 3)[1])
        if wrap:
            source.close()
    assert same_state(states[1], states[0])
    assert "'fetched': 12" in str(states[1])


class Counter:
    """A stream's iterator with a state of its own: where it is."""

    def __init__(self, n: int) -> None:
        self.n, self.at = n, 0

    def __iter__(self) -> Counter:
        return self

    def __next__(self) -> int:
        if self.at == self.n:
            raise StopIteration
        self.at += 1
        return self.at - 1

    def state_dict(self) -> dict[str, int]:
        return {"at": self.at}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.at = state["at"]


class CountingStream(IterableDataset[int]):
    def __iter__(self) -> Counter:
        return Counter(30)


def test_a_streams_iterator_state_passes_through() -> None:
    """An IterableDataset whose iterator keeps its place: the traced stream's state is
    torchdata's, and the resumed pass goes on from it, as untraced."""
    outcome = []
    for wrap in (False, True):
        loader = StatefulDataLoader(CountingStream(), batch_size=4)
        source = dlviz.trace(loader, key=int, expected=range(30)) if wrap else loader
        before, state = until(source, 2)
        resumed = StatefulDataLoader(CountingStream(), batch_size=4)
        resumed.load_state_dict(state)
        again = dlviz.trace(resumed, key=int, expected=range(30)) if wrap else resumed
        outcome.append((before, [i for batch in again for i in indices(batch)], state))
    assert outcome[1][:2] == outcome[0][:2] == (list(range(8)), list(range(8, 30)))
    assert same_state(outcome[1][2], outcome[0][2])
    assert "'at': 8" in str(outcome[1][2])
    assert again.run.delivered() == list(range(8, 30))


def test_a_loader_that_changes_how_it_iterates_is_refused() -> None:
    class OwnIterator(StatefulDataLoader):  # type: ignore[misc,valid-type]
        def __iter__(self) -> Any:
            return iter([])

    with pytest.raises(ValueError, match="OwnIterator.*__iter__"):
        dlviz.trace(OwnIterator(SyntheticDataset(10)))


def test_a_checkpoint_under_spawn() -> None:
    """Traced under spawn, against torchdata alone under fork (the order and the state
    depend on the generator, not the start method)."""
    plain = job(False, 2, num_workers=2, method="fork")
    traced = job(True, 2, num_workers=2, method="spawn")
    assert traced[:2] == plain[:2] and same_state(traced[2], plain[2])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 60), batch_size=st.integers(1, 9), workers=st.integers(0, 3),
       drop_last=st.booleans(), persistent=st.booleans(), data=st.data())
def test_resume_at_a_random_step_matches_torch(n: int, batch_size: int, workers: int,
                                               drop_last: bool, persistent: bool,
                                               data: st.DataObject) -> None:
    """An epoch, then a checkpoint at a random step of the next and a resume: the same
    batches as untraced, and the ledger over the three passes counts what torch gave."""
    kw: dict[str, Any] = {"n": n, "batch_size": batch_size, "num_workers": workers,
                          "drop_last": drop_last,
          "persistent_workers": persistent and workers > 0}
    batches = n // batch_size if drop_last else -(-n // batch_size)
    steps = data.draw(st.integers(1, max(1, batches)))
    results = []
    for traced in (False, True):
        loader = make(**kw)
        source: Any = dlviz.trace(loader) if traced else loader
        epoch = [i for batch in source for i in indices(batch)]
        before, state = until(source, steps)
        resumed = make(**kw)
        resumed.load_state_dict(state)
        again: Any = dlviz.trace(resumed) if traced else resumed
        after = [i for batch in again for i in indices(batch)]
        results.append((epoch, before, after))
        if traced:
            merged = dlviz.merge_runs([*source.runs, again.run], by="pass")
            counts = [0] * n
            for i in epoch + before + after:
                counts[i] += 1
            assert merged.ledger.deliveries.tolist() == counts
            check_ledger_adds_up(merged, n)
            source.close()
            again.close()
    assert results[1] == results[0]
