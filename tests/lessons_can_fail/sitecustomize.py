"""Test-only: change one behaviour of torch's DataLoader inside every Python that starts
with this folder on PYTHONPATH (the notebook's kernel, and spawned workers too).

tests/test_lessons_can_fail.py sets ``DLVIZ_MUTATION`` to one of the names below and
runs a lesson: the lesson's Check cell for that behaviour must fail. Without
``DLVIZ_MUTATION`` nothing is imported or changed. Each change is one a torch release
could plausibly make; none touches dlviz.
"""

from __future__ import annotations

import os
from typing import Any


def _round_robin_reversed() -> None:
    """Dispatch batches to workers W-1, W-2, ..., 0, W-1, ... instead of 0, 1, ..."""
    import itertools

    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as It

    put = It._try_put_index

    def _try_put_index(self: Any) -> None:
        if getattr(self, "_mutation_cycle", None) is not self._worker_queue_idx_cycle:
            self._worker_queue_idx_cycle = itertools.cycle(reversed(range(self._num_workers)))
            self._mutation_cycle = self._worker_queue_idx_cycle
        put(self)

    It._try_put_index = _try_put_index


def _empty_buffer_ends_epoch() -> None:
    """The folk claim made true: no finished batch at hand ends the epoch."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as It

    def _get_data(self: Any) -> Any:
        ok, data = self._try_get_data(0.001)
        if ok:
            return data
        raise StopIteration

    It._get_data = _get_data


def _batch_sampler_ignores_drop_last() -> None:
    """``BatchSampler`` yields the short last batch even with ``drop_last=True``."""
    from torch.utils.data import BatchSampler

    def __iter__(self: Any) -> Any:
        batch = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    BatchSampler.__iter__ = __iter__


def _prefetch_one() -> None:
    """Each worker holds one batch, whatever ``prefetch_factor`` says."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as It

    reset = It._reset

    def _reset(self: Any, loader: Any, first_iter: bool = False) -> None:
        self._prefetch_factor = 1
        reset(self, loader, first_iter)

    It._reset = _reset


def _numpy_seed_shared() -> None:
    """Every worker seeds the global NumPy generator as worker 0 does."""
    from torch.utils.data._utils import worker

    generate = worker._generate_state
    worker._generate_state = lambda base_seed, worker_id: generate(base_seed, 0)


def _stream_ignores_drop_last() -> None:
    """An IterableDataset's worker hands over its short last batch despite ``drop_last``."""
    from torch.utils.data._utils import fetch

    init = fetch._IterableDatasetFetcher.__init__

    def __init__(self: Any, dataset: Any, auto_collation: bool, collate_fn: Any,
                 drop_last: bool) -> None:
        init(self, dataset, auto_collation, collate_fn, False)

    fetch._IterableDatasetFetcher.__init__ = __init__


def _distributed_pads_from_the_end() -> None:
    """``DistributedSampler`` pads with the last indices of the list instead of the first."""
    import torch
    from torch.utils.data import DistributedSampler

    def __iter__(self: Any) -> Any:
        if self.shuffle:  # torch's own code from here on, but for the padding
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            indices = list(range(len(self.dataset)))
        padding = self.total_size - len(indices)
        if self.drop_last:
            indices = indices[: self.total_size]
        elif padding:
            indices += indices[-padding:]
        return iter(indices[self.rank : self.total_size : self.num_replicas])

    DistributedSampler.__iter__ = __iter__


def _persistent_workers_ignored() -> None:
    """``persistent_workers=True`` starts new workers every epoch anyway."""
    from torch.utils.data import DataLoader

    DataLoader.__iter__ = lambda self: self._get_iterator()


def _set_epoch_ignored() -> None:
    """``DistributedSampler.set_epoch`` does nothing: every epoch draws epoch 0's order."""
    from torch.utils.data import DistributedSampler

    def set_epoch(self: Any, epoch: int) -> None:
        pass

    DistributedSampler.set_epoch = set_epoch


def _stateful_resume_restarts() -> None:
    """torchdata's ``StatefulDataLoader.load_state_dict`` keeps nothing: a resumed loader
    starts its epoch from the beginning."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def load_state_dict(self: Any, state_dict: dict[str, Any]) -> None:
        pass

    StatefulDataLoader.load_state_dict = load_state_dict


MUTATIONS = {
    "round_robin_reversed": _round_robin_reversed,
    "empty_buffer_ends_epoch": _empty_buffer_ends_epoch,
    "batch_sampler_ignores_drop_last": _batch_sampler_ignores_drop_last,
    "prefetch_one": _prefetch_one,
    "numpy_seed_shared": _numpy_seed_shared,
    "stream_ignores_drop_last": _stream_ignores_drop_last,
    "distributed_pads_from_the_end": _distributed_pads_from_the_end,
    "persistent_workers_ignored": _persistent_workers_ignored,
    "set_epoch_ignored": _set_epoch_ignored,
    "stateful_resume_restarts": _stateful_resume_restarts,
}

if os.environ.get("DLVIZ_MUTATION"):
    MUTATIONS[os.environ["DLVIZ_MUTATION"]]()
