"""The worker-side event log: what each worker did, kept even if the worker dies.

A DataLoader worker sends a batch back only when the batch succeeds, so events
that ride along with the batch are lost exactly when they matter most: when a
sample raises, when the OOM killer ends the worker, when a fetch hangs. dlviz
therefore writes worker events straight into shared memory as they happen: one
region of int64 records per worker (and one for the main process, which does the
fetching when ``num_workers=0``). The main process reads the regions after the
run, whatever happened to the workers.

A record is four int64: ``(code, batch, value, time_ns)``. ``code`` is written
last, so a record with a non-zero code is complete; the first zero code marks the
end of a region. A fetch record holds the start time of the fetch; the fetch
ends where the worker's next record begins (the next fetch, the collate, or the
``RAISED`` / ``NONE`` / ``END`` record that closes it).

Writing costs four memoryview stores per sample (about 0.2 us); see
``benchmarks/overhead.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

# record codes
WORKER_START = 1  # value = pid
FETCH = 2  # value = dataset index (map-style) or sample key (iterable; -1 until known)
RAISED = 3  # the previous fetch raised; value = index or -1
NONE = 4  # the previous fetch returned None; value = index
END = 5  # an iterable's next() found no more data
COLLATE = 6  # collate_fn started
COLLATED = 7  # collate_fn returned
COLLATE_RAISED = 8  # collate_fn raised

FIELDS = 4
HEADER = 1  # record 0 of a region: (overflowed, pid, 0, 0)

clock = time.perf_counter_ns

# The batch this process is working on. DataLoader's fetcher never tells the
# dataset which batch it is serving, so dlviz's batch object announces itself
# here when a worker starts on it (see ``trace._Batch``). One process, one value.
current_batch = -1


class EventLog:
    """Shared-memory regions, one per worker plus one (the last) for the main process.

    The object travels to the workers inside dlviz's dataset wrapper (forked, or
    pickled under spawn/forkserver: torch moves the tensor to shared memory and
    sends a handle). Each process attaches to its own region on first use.
    """

    def __init__(self, num_workers: int, capacity: int) -> None:
        self.num_workers = num_workers
        self.capacity = capacity
        self.buffer = torch.zeros((num_workers + 1) * (capacity + HEADER) * FIELDS,
                                  dtype=torch.int64)
        if num_workers > 0:  # workers write into it: shared memory
            self.buffer.share_memory_()
        self.view: memoryview | None = None  # this process's view, once attached
        self.pos = 0  # where this process writes its next record
        self._end = 0

    # --- pickling: only the shared tensor travels, never a process's position ---
    def __getstate__(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "capacity": self.capacity,
                "buffer": self.buffer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.view, self.pos, self._end = None, 0, 0

    # --- writing (in whichever process fetches) ---
    def attach(self, worker: int) -> None:
        """Start writing to ``worker``'s region (-1: the main process's region)."""
        region = self.num_workers if worker < 0 else worker
        stride = (self.capacity + HEADER) * FIELDS
        self.view = memoryview(self.buffer.numpy()).cast("B").cast("q")  # type: ignore[arg-type]
        start = region * stride
        self.pos = start + HEADER * FIELDS
        self._end = start + stride
        # continue after records already there (persistent workers, the main
        # process's region across epochs)
        while self.pos < self._end and self.view[self.pos] != 0:
            self.pos += FIELDS
        self.view[start + 1] = os.getpid()

    def room(self, records: int) -> bool:
        """Whether ``records`` more records fit; marks the region as overflowed if not."""
        view = self.view
        if view is None:
            raise RuntimeError("EventLog.attach() was not called in this process")
        if self.pos + records * FIELDS <= self._end:
            return True
        view[self._end - (self.capacity + HEADER) * FIELDS] = 1
        return False

    def write(self, code: int, batch: int, value: int, at: int) -> None:
        """Append one record (callers check :meth:`room` first)."""
        view, pos = self.view, self.pos
        assert view is not None
        view[pos + 1] = batch
        view[pos + 2] = value
        view[pos + 3] = at
        view[pos] = code
        self.pos = pos + FIELDS

    def set_value_of_last(self, value: int) -> None:
        """Fill in the value of the last record (an iterable's key, known only after next())."""
        assert self.view is not None
        self.view[self.pos - FIELDS + 2] = value

    def reset(self) -> None:
        """Empty every region (between passes whose workers are gone)."""
        self.buffer.zero_()
        self.view, self.pos = None, 0

    @property
    def attached(self) -> bool:
        return self.view is not None

    # --- reading (main process) ---
    def regions(self) -> list[tuple[int, int, bool, np.ndarray]]:
        """``(worker, pid, overflowed, records)`` per region; records is an (n, 4) array.

        Worker -1 is the main process. Regions with no record are left out.
        """
        table = self.buffer.numpy().reshape(self.num_workers + 1, self.capacity + HEADER, FIELDS)
        out = []
        for region in range(self.num_workers + 1):
            header, records = table[region, 0], table[region, HEADER:]
            codes = records[:, 0]
            stop = int(np.argmin(codes != 0)) if codes[-1] == 0 else len(codes)
            if stop == 0:
                continue
            worker = -1 if region == self.num_workers else region
            out.append((worker, int(header[1]), bool(header[0]), records[:stop].copy()))
        return out
