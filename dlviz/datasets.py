"""Teaching datasets: small, importable, with faults you can inject on purpose.

Everything here lives in an importable module (not a notebook cell), so it works
under every start method: fork, spawn and forkserver (lesson 0 explains why a
Dataset defined in a cell breaks under spawn; lesson 4 hunts that bug).

A sample is the 0-d tensor ``torch.tensor(index)``, so a batch is simply the
indices it holds: ``batch.tolist()`` tells you exactly which samples arrived.

- :class:`SyntheticDataset` (lessons 1-3, 7, 8): map-style, with a per-sample cost
  and injected faults (``fail_at``, ``crash_at``, ``hang_at``, ``none_at``).
- :class:`SyntheticStream` (lesson 5): an IterableDataset with four sharding
  strategies, to show duplication and lossy sharding.
- :class:`CountingDataset`, :class:`EpochDataset`, :class:`RandomDataset`
  (lesson 4): state that lives in worker processes.
- :func:`collate_skip_none` (lesson 3): the "skip bad samples" collate pattern.
- :func:`seed_rng_per_worker` (lesson 4): a ``worker_init_fn`` that gives each
  worker's copy of a dataset its own NumPy ``Generator``.
- :func:`make_loader`: a DataLoader with the notebook's ``start_method``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from dlviz import _check

__all__ = [
    "SyntheticDataset",
    "SyntheticStream",
    "CountingDataset",
    "EpochDataset",
    "RandomDataset",
    "collate_skip_none",
    "seed_rng_per_worker",
    "make_loader",
]


MAX_N = 10_000_000
"""The most samples a teaching dataset holds (``CountingDataset`` keeps arrays of ``n``)."""
MAX_COST_MS = 60_000.0
"""The longest a sample may take (a minute): longer is a hang, and ``hang_at`` says so."""


def _spend(cost_ms: float, work: str) -> None:
    """Spend ``cost_ms`` milliseconds: asleep (I/O-bound) or spinning (CPU-bound)."""
    if cost_ms <= 0:
        return
    if work == "sleep":
        time.sleep(cost_ms / 1000)
    else:
        deadline = time.perf_counter_ns() + int(cost_ms * 1e6)
        while time.perf_counter_ns() < deadline:
            pass


def _in_worker() -> bool:
    return get_worker_info() is not None


class SyntheticDataset(Dataset[torch.Tensor | None]):
    """``n`` samples; sample ``i`` is ``torch.tensor(i)``. Used in lessons 1, 2, 3, 7, 8.

    Args:
        n: number of samples (indices ``0..n-1``), at most :data:`MAX_N`.
        cost_ms: time each ``__getitem__`` takes, at most :data:`MAX_COST_MS`.
        work: ``"sleep"`` (waits, like disk or network I/O) or ``"cpu"`` (spins,
            like decoding an image).
        fail_at: indices whose fetch raises ``ValueError("... index i")``.
        crash_at: indices whose fetch ends the worker process abruptly
            (``os._exit``: no Python cleanup, like the OOM killer). In the main
            process (``num_workers=0``) it raises ``RuntimeError`` instead, so a
            notebook kernel is never killed.
        crash_by: how a ``crash_at`` fetch ends its worker: ``"exit"`` (``os._exit``)
            or ``"SIGKILL"`` (the worker kills itself with the signal the OOM killer
            sends; where there is no SIGKILL, as on Windows, it exits instead).
        hang_at: indices whose fetch blocks forever, until the DataLoader's
            ``timeout`` fires and the worker is shut down. In the main process it
            raises ``RuntimeError`` instead, since nothing could interrupt it.
        none_at: indices for which ``__getitem__`` returns ``None`` (a bad sample);
            pair with :func:`collate_skip_none`.
        slow_at: indices whose fetch takes ``slow_ms`` longer (one slow file), to
            make one batch arrive late (lesson 1's ``in_order=False``).
        slow_ms: the extra time of a ``slow_at`` fetch, at most :data:`MAX_COST_MS`.
    """

    def __init__(
        self,
        n: int,
        cost_ms: float = 0.0,
        work: str = "sleep",
        fail_at: Iterable[int] = (),
        crash_at: Iterable[int] = (),
        hang_at: Iterable[int] = (),
        none_at: Iterable[int] = (),
        crash_by: str = "exit",
        slow_at: Iterable[int] = (),
        slow_ms: float = 250.0,
    ) -> None:
        self.n = _check.count("n", n, maximum=MAX_N)
        self.slow_at = _check.index_set("slow_at", slow_at, self.n)
        self.slow_ms = _check.non_negative("slow_ms", slow_ms, maximum=MAX_COST_MS)
        self.crash_by = _check.choice("crash_by", crash_by, ("exit", "SIGKILL"))
        self.cost_ms = _check.non_negative("cost_ms", cost_ms, maximum=MAX_COST_MS)
        self.work = _check.choice("work", work, ("sleep", "cpu"))
        self.fail_at = _check.index_set("fail_at", fail_at, self.n)
        self.crash_at = _check.index_set("crash_at", crash_at, self.n)
        self.hang_at = _check.index_set("hang_at", hang_at, self.n)
        self.none_at = _check.index_set("none_at", none_at, self.n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor | None:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} is out of range for a dataset of {self.n}")
        _spend(self.cost_ms, self.work)
        if index in self.slow_at:
            _spend(self.slow_ms, self.work)
        if index in self.fail_at:
            raise ValueError(f"SyntheticDataset: injected failure at index {index}")
        if index in self.crash_at:
            if not _in_worker():
                raise RuntimeError(
                    f"SyntheticDataset: crash_at index {index} would kill the main process "
                    "(num_workers=0); use num_workers >= 1 to see a worker crash"
                )
            if self.crash_by == "SIGKILL" and hasattr(signal, "SIGKILL"):
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(70)  # abrupt: no finally blocks, no atexit, like a SIGKILL
        if index in self.hang_at:
            if not _in_worker():
                raise RuntimeError(
                    f"SyntheticDataset: hang_at index {index} would hang the main process "
                    "(num_workers=0); use num_workers >= 1 and a DataLoader timeout"
                )
            threading.Event().wait()  # forever: only the loader's timeout ends this
        if index in self.none_at:
            return None
        return torch.tensor(index)

    def __repr__(self) -> str:
        faults = {
            k: sorted(v)
            for k, v in (("fail_at", self.fail_at), ("crash_at", self.crash_at),
                         ("hang_at", self.hang_at), ("none_at", self.none_at))
            if v
        }
        extra = "".join(f", {k}={v}" for k, v in faults.items())
        return f"SyntheticDataset(n={self.n}, cost_ms={self.cost_ms}{extra})"


class SyntheticStream(IterableDataset[torch.Tensor]):
    """An IterableDataset of ``n`` samples (keys ``0..n-1``). Used in lesson 5.

    With ``num_workers > 0`` every worker gets its own copy of this object and
    calls ``__iter__`` on it, so what each worker yields depends on ``sharding``:

    - ``"none"``: every worker yields every sample (``num_workers`` duplicates);
    - ``"floor"``: worker ``w`` yields ``[w*k, (w+1)*k)`` with ``k = n // num_workers``:
      the last ``n % num_workers`` samples are lost;
    - ``"stride"``: worker ``w`` yields ``w, w+W, w+2W, ...``: every sample once.
    - ``"ceil"``: worker ``w`` yields ``[w*k, min(n, (w+1)*k))`` with ``k = ceil(n / W)``:
      every sample once, the last worker gets fewer.

    ``fail_at`` keys raise ``ValueError`` inside the generator, which finishes that
    worker's generator (Python generators cannot resume after raising).

    dlviz ledgers streams by key: :meth:`sample_key` and :meth:`expected_keys`.
    """

    def __init__(
        self,
        n: int,
        sharding: str = "none",
        cost_ms: float = 0.0,
        fail_at: Iterable[int] = (),
    ) -> None:
        self.n = _check.count("n", n, maximum=MAX_N)
        self.sharding = _check.choice("sharding", sharding, ("none", "floor", "stride", "ceil"))
        self.cost_ms = _check.non_negative("cost_ms", cost_ms, maximum=MAX_COST_MS)
        self.fail_at = _check.index_set("fail_at", fail_at, self.n)

    def _my_keys(self) -> range:
        info = get_worker_info()
        if info is None or self.sharding == "none":
            return range(self.n)
        w, count = info.id, info.num_workers
        if self.sharding == "floor":
            share = self.n // count
            return range(w * share, (w + 1) * share)
        if self.sharding == "ceil":
            share = -(-self.n // count)
            return range(min(self.n, w * share), min(self.n, (w + 1) * share))
        return range(w, self.n, count)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for key in self._my_keys():
            _spend(self.cost_ms, "sleep")
            if key in self.fail_at:
                raise ValueError(f"SyntheticStream: injected failure at key {key}")
            yield torch.tensor(key)

    @staticmethod
    def sample_key(sample: Any) -> int:
        """The key of one sample (its value)."""
        return int(sample)

    def expected_keys(self) -> Sequence[int]:
        """Every key one full pass should deliver exactly once."""
        return range(self.n)

    def __repr__(self) -> str:
        return f"SyntheticStream(n={self.n}, sharding={self.sharding!r})"


class CountingDataset(Dataset[torch.Tensor]):
    """Counts its own ``__getitem__`` calls, three ways. Used in lesson 4.

    - ``calls`` (a Python int) and ``hits_array`` (a NumPy array) are copied into
      each worker process: the main process keeps seeing its own copy (0 calls).
    - ``hits_tensor`` is a torch tensor: under spawn/forkserver torch moves it to
      shared memory when the dataset is sent to a worker, so the workers' in-place
      writes reach the main process; under fork it is a private copy.
    """

    def __init__(self, n: int) -> None:
        self.n = _check.count("n", n, maximum=MAX_N)
        self.calls = 0
        self.hits_array = np.zeros(self.n, dtype=np.int64)
        self.hits_tensor = torch.zeros(self.n, dtype=torch.int64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        self.calls += 1
        self.hits_array[index] += 1
        self.hits_tensor[index] += 1
        return torch.tensor(index)


class EpochDataset(Dataset[torch.Tensor]):
    """Returns ``[index, epoch]``; set ``dataset.epoch`` in the main loop. Lesson 4.

    With ``persistent_workers=True`` the workers keep the copy they got in the
    first epoch, so a change of ``epoch`` in the main process never reaches them.
    """

    def __init__(self, n: int) -> None:
        self.n = _check.count("n", n, maximum=MAX_N)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, self.epoch])


class RandomDataset(Dataset[torch.Tensor]):
    """Returns ``[index, draw]`` with a random draw per sample. Lesson 4.

    ``source="generator"`` keeps a NumPy ``Generator`` on the dataset: each worker
    gets an identical copy, so workers repeat each other's "random" draws.
    ``source="global"`` uses ``np.random``, which torch reseeds in every worker
    (since torch 1.9), and ``source="torch"`` uses torch's global generator, also
    seeded per worker.
    """

    def __init__(self, n: int, source: str = "generator", seed: int = 0) -> None:
        self.n = _check.count("n", n, maximum=MAX_N)
        self.source = _check.choice("source", source, ("generator", "global", "torch"))
        self.rng = np.random.default_rng(_check.count("seed", seed))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.source == "generator":
            draw = int(self.rng.integers(1_000_000))
        elif self.source == "global":
            draw = int(np.random.randint(1_000_000))
        else:
            draw = int(torch.randint(1_000_000, ()).item())
        return torch.tensor([index, draw])


def collate_skip_none(samples: Sequence[Any]) -> Any:
    """Collate a batch after dropping ``None`` samples (the "skip bad samples" pattern).

    The batch comes out shorter; the skipped samples are gone for good, and
    dlviz's ledger marks them ``filtered``. A batch with no valid sample becomes
    an empty ``int64`` tensor. Used in lesson 3.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        return torch.empty(0, dtype=torch.int64)
    return default_collate(kept)


def seed_rng_per_worker(worker_id: int) -> None:
    """``worker_init_fn``: replace the worker's copy of ``dataset.rng`` by a Generator
    seeded from the worker's own seed (``get_worker_info().seed``, different in every
    worker and every epoch). Lesson 4's recipe for :class:`RandomDataset`.
    """
    info = get_worker_info()
    assert info is not None, "seed_rng_per_worker runs in DataLoader workers only"
    dataset: Any = info.dataset  # a RandomDataset (or any dataset with an ``rng``)
    dataset.rng = np.random.default_rng(info.seed)


def make_loader(dataset: Any, *, start_method: str | None = None, **kwargs: Any) -> Any:
    """``DataLoader(dataset, **kwargs)`` started with ``start_method`` (None: the default).

    The notebooks build every loader through this, so CI can re-run a whole lesson
    under spawn (as macOS and Windows do) with one parameter. ``start_method`` is
    passed as ``multiprocessing_context`` only when there are workers to start.
    """
    from torch.utils.data import DataLoader

    if not (hasattr(dataset, "__getitem__") or hasattr(dataset, "__iter__")):
        raise TypeError(f"dataset must be a Dataset (indexable or iterable), "
                        f"not {type(dataset).__name__}")
    workers = _check.count("num_workers", kwargs.get("num_workers", 0))
    if start_method is not None:
        _check.choice("start_method", start_method, ("fork", "spawn", "forkserver"))
        if workers > 0:
            kwargs["multiprocessing_context"] = start_method
    return DataLoader(dataset, **kwargs)
