"""The event log: what each process that fetches did, kept even if a worker dies.

A DataLoader worker sends a batch back only when the batch succeeds, so events
that ride along with the batch are lost exactly when they matter most: when a
sample raises, when the OOM killer ends the worker, when a fetch hangs. dlviz
therefore writes worker events straight into shared memory as they happen: one
region of int64 records per worker. The main process reads the regions after the
run, whatever happened to the workers. When ``num_workers=0`` the main process
fetches itself; nothing there outlives it, so its records go to Python lists,
cheaper to append to than shared memory is to write.

A record is four int64: ``(code, batch, value, time_ns)``. ``time_ns`` is written
last and is never zero, so a record with a time is complete; the first record
without one marks the end of a region. A fetch record holds the start time of the
fetch; the fetch ends where the process's next record begins (the next fetch, the
collate, or the ``RAISED`` / ``END`` record that closes it).

In a worker, a batch's fetch records are laid out before its first fetch starts,
all at once (code, batch and index for every sample, but no time yet); each fetch
then costs one store, its start time, the moment it begins. A worker that dies
mid-batch leaves the fetches it started, the last one unfinished. The main
process notes a batch's start times in a list and logs them when the batch ends.
See ``benchmarks/overhead.py`` for what this costs.

A region holds at most :data:`REGION_RECORDS` records (4 MiB). When a worker's
region is full it *spills*: it appends the region's records to a file of its own
(``<tmp>/dlviz-<pid>-<log>/w<worker>-p<pass>.bin``, flushed at once, so a worker
that dies later loses nothing) and starts the region again. Shared memory stays
bounded (4 MiB per worker) and no event is lost however long the pass: the disk
holds 32 bytes per event beyond the first 4 MiB (320 MB for a 10M-sample pass).
The main process reads a region's spill file, then the region.

Persistent workers keep their regions from pass to pass: when a new pass starts,
the main process (having copied the last one, :meth:`EventLog.regions`) counts up
a number in each region's header, and each worker empties its region before it
logs anything more.
"""

from __future__ import annotations

import array
import itertools
import os
import shutil
import tempfile
import time
import weakref
from typing import Any

import numpy as np
import torch

# record codes
WORKER_START = 1  # value = pid
FETCH = 2  # value = dataset index (map-style) or sample key (iterable; -1 until known)
RAISED = 3  # the previous fetch raised; value = index or -1
NONE = 4  # a fetch that returned None (a FETCH record whose code was changed after)
END = 5  # an iterable's next() found no more data
COLLATE = 6  # collate_fn started
COLLATED = 7  # collate_fn returned
COLLATE_RAISED = 8  # collate_fn raised

FIELDS = 4
HEADER = 1  # record 0 of a region: (overflowed, pid, pass, 0)
PASS = 2  # the header field where the main process announces a new pass
TIME = 3  # the field written last

REGION_RECORDS = 2**17
"""The most records a worker's region holds before it spills to its file (4 MiB)."""

clock = time.perf_counter_ns
_numbers = itertools.count()

_Fetches = tuple[int, Any, Any, list[int], int]
"""One batch's fetches in the main process: the arguments of :meth:`EventLog.note_fetches`."""


def _remove_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:  # never from a forked worker that inherited the log
        shutil.rmtree(path, ignore_errors=True)


class EventLog:
    """One shared-memory region per worker, and Python lists for the main process.

    The object travels to the workers inside dlviz's dataset wrapper (forked, or
    pickled under spawn/forkserver: torch moves the tensor to shared memory and
    sends a handle). Each process attaches to its own region on first use.
    """

    def __init__(self, num_workers: int, capacity: int) -> None:
        self.num_workers = num_workers
        self.capacity = min(capacity, REGION_RECORDS)  # records per region
        size = num_workers * (self.capacity + HEADER) * FIELDS
        self.buffer = torch.zeros(size, dtype=torch.int64)
        if num_workers > 0:  # workers write into it: shared memory
            self.buffer.share_memory_()
        # where full regions spill (made by the first worker that needs it)
        self.spill_dir = os.path.join(tempfile.gettempdir(),
                                      f"dlviz-{os.getpid()}-{next(_numbers)}")
        weakref.finalize(self, _remove_dir, self.spill_dir, os.getpid())
        self._spill: Any = None  # a worker's open spill file
        self.view: memoryview | None = None  # a worker's view of the buffer, once attached
        self.local = False  # attached in the main process: records go to self.main
        self.main: list[list[int] | _Fetches] = []  # the main process's records
        self.main_overflowed = False
        self.pos = 0  # where this process writes its next record (in int64s)
        self._start = self._end = 0  # a worker's region
        self._pass = 0  # the pass a worker's records belong to

    # --- pickling: only the shared tensor travels, never a process's position ---
    def __getstate__(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "capacity": self.capacity,
                "buffer": self.buffer, "spill_dir": self.spill_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.view, self.local, self.main, self.main_overflowed = None, False, [], False
        self.pos, self._start, self._end, self._pass = 0, 0, 0, 0
        self._spill = None

    # --- writing (in whichever process fetches) ---
    def attach(self, worker: int) -> None:
        """Start writing: to ``worker``'s region, or (-1) to the main process's lists."""
        if worker < 0:  # the main process's lists grow as needed (16 bytes a fetch)
            self.local, self.pos, self._end = True, 0, 2**62
            return
        stride = (self.capacity + HEADER) * FIELDS
        self.view = memoryview(self.buffer.numpy()).cast("B").cast("q")  # type: ignore[arg-type]
        self._start = start = worker * stride
        self._end = start + stride
        self._pass = self.view[start + PASS]
        self.pos = start + HEADER * FIELDS
        self.view[start + 1] = os.getpid()
        self.worker = worker
        self._spill = None

    def new_pass(self) -> None:
        """In the main process, once the last pass's Run is built: tell persistent workers
        to empty their regions and log the next pass from the start."""
        table = self._table()
        table[:, 0, PASS] += 1

    def _start_pass(self) -> None:
        """In a worker, before its first write of a new pass: empty its region."""
        assert self.view is not None
        self.buffer.numpy()[self._start + HEADER * FIELDS:self._end] = 0
        self.view[self._start] = 0  # not overflowed
        self._pass = self.view[self._start + PASS]
        self.pos = self._start + HEADER * FIELDS
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def _spill_path(self, worker: int, pass_number: int) -> str:
        return os.path.join(self.spill_dir, f"w{worker}-p{pass_number}.bin")

    def _spill_region(self) -> None:
        """In a worker whose region is full: append its records to the spill file, then
        start the region again."""
        assert self.view is not None
        first = self._start + HEADER * FIELDS
        if self._spill is None:
            os.makedirs(self.spill_dir, exist_ok=True)
            self._spill = open(self._spill_path(self.worker, self._pass), "ab", buffering=0)
        self._spill.write(self.view[first:self.pos])
        self.buffer.numpy()[first:self.pos] = 0
        self.pos = first

    @property
    def attached(self) -> bool:
        return self.local or self.view is not None

    def room(self, records: int) -> bool:
        """Whether ``records`` more records fit; marks the region as overflowed if not."""
        if not self.attached:
            raise RuntimeError("EventLog.attach() was not called in this process")
        if not self.local and self.view[self._start + PASS] != self._pass:  # type: ignore[index]
            self._start_pass()
        if self.pos + records * FIELDS <= self._end:
            return True
        if self.local:
            self.main_overflowed = True
        elif records < self.capacity:
            self._spill_region()
            return True
        else:
            self.view[self._end - (self.capacity + HEADER) * FIELDS] = 1  # type: ignore[index]
        return False

    def write(self, code: int, batch: int, value: int, at: int) -> None:
        """Append one record (callers check :meth:`room` first)."""
        pos = self.pos
        self.pos = pos + FIELDS
        if self.local:
            self.main.append([code, batch, value, at])
            return
        view = self.view
        assert view is not None
        view[pos] = code
        view[pos + 1] = batch
        view[pos + 2] = value
        view[pos + TIME] = at

    def lay_out_fetches(self, batch: int, indices: list[Any]) -> int:
        """In a worker: write one FETCH record per index, all at once and without
        times (callers check :meth:`room` for ``len(indices) + 1`` records: a RAISED
        may follow any fetch).

        Returns where the first fetch's time goes; the caller stores ``clock()``
        there as the first fetch starts, ``FIELDS`` further on for the next, and
        moves :attr:`pos` past the fetches it started. An index that is not an int
        is logged as -1.
        """
        view, pos, n = self.view, self.pos, len(indices)
        assert view is not None
        records = array.array("q", (FETCH, batch, 0, 0)) * n
        records[2::FIELDS] = _int64s(indices)
        view[pos:pos + n * FIELDS] = records
        return pos + TIME

    def note_fetches(self, batch: int, indices: list[Any], times: list[int],
                     nones: list[int], raised_at: int) -> None:
        """In the main process: log a batch's fetches once they are over (callers check
        :meth:`room` as for :meth:`lay_out_fetches`). ``times``: the start of each
        fetch made; ``nones``: positions that returned None; ``raised_at``: when the
        last fetch raised (0: none did)."""
        self.main.append((batch, _int64s(indices[:len(times)]), array.array("q", times),
                          nones, raised_at))
        self.pos += (len(times) + bool(raised_at)) * FIELDS

    def set_code_of_last(self, code: int) -> None:
        """Change the code of the last record (a fetch turns out to have returned None)."""
        self._set_in_last(0, code)

    def set_value_of_last(self, value: int) -> None:
        """Fill in the value of the last record (an iterable's key, known only after next())."""
        self._set_in_last(2, value)

    def _set_in_last(self, field: int, value: int) -> None:
        if self.local:
            last = self.main[-1]
            assert isinstance(last, list)
            last[field] = value
        else:
            self.view[self.pos - FIELDS + field] = value  # type: ignore[index]

    def reset(self) -> None:
        """Empty every region (between passes whose workers are gone)."""
        self.buffer.zero_()
        self.view, self.local, self.main, self.main_overflowed = None, False, [], False
        self.pos = 0
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def forget_pass(self) -> None:
        """In the main process, once a pass's records are copied: remove its spill files."""
        if os.path.isdir(self.spill_dir):
            table = self._table()
            for worker in range(self.num_workers):
                path = self._spill_path(worker, int(table[worker, 0, PASS]))
                if os.path.exists(path):
                    os.remove(path)

    # --- reading (main process) ---
    def regions(self) -> list[tuple[int, int, bool, np.ndarray]]:
        """``(worker, pid, overflowed, records)`` per region; records is an (n, 4) array.

        Worker -1 is the main process. Regions with no record are left out.
        """
        table = self._table()
        out = []
        for worker in range(self.num_workers):
            header, region = table[worker, 0], table[worker, HEADER:]
            region = region[:_complete(region)]
            spilled = self._spill_path(worker, int(header[PASS]))
            size = os.path.getsize(spilled) // (FIELDS * 8) if os.path.exists(spilled) else 0
            records = np.empty((size + len(region), FIELDS), dtype=np.int64)
            if size:  # what the region held before, in order
                with open(spilled, "rb") as f:
                    f.readinto(records[:size].data.cast("B"))
                size = _complete(records[:size])
                records = records[:size + len(region)]
            records[size:] = region
            if len(records):
                out.append((worker, int(header[1]), bool(header[0]), records))
        if self.main:
            out.append((-1, os.getpid(), self.main_overflowed, _main_records(self.main)))
        return out


    def last_record(self, worker: int) -> Any:
        """The last complete record of ``worker``'s region (its spill file's, if the
        region was just emptied), without copying the region."""
        table = self._table()
        if not 0 <= worker < self.num_workers:
            return None
        records = table[worker, HEADER:]
        n = _complete(records)
        if n:
            return records[n - 1].copy()
        spilled = self._spill_path(worker, int(table[worker, 0, PASS]))
        if os.path.exists(spilled) and os.path.getsize(spilled) >= FIELDS * 8:
            with open(spilled, "rb") as f:
                f.seek(-FIELDS * 8, os.SEEK_END)
                return np.frombuffer(f.read(), dtype=np.int64).copy()
        return None

    def find(self, code: int, batch: int) -> Any:
        """The last record with this code and batch (the regions, the main process's last
        batches, then the spill files, which only hold older records), or None."""
        table = self._table()
        sources = [table[worker, HEADER:] for worker in range(self.num_workers)]
        if self.main:
            sources.append(_main_records(self.main[-8:]))  # an error is in the last batches
        for worker in range(self.num_workers):
            path = self._spill_path(worker, int(table[worker, 0, PASS]))
            if os.path.exists(path):  # a worker killed mid-write leaves a partial record
                spilled = np.fromfile(path, dtype=np.int64)
                sources.append(spilled[:len(spilled) // FIELDS * FIELDS].reshape(-1, FIELDS))
        for records in sources:
            hit = np.flatnonzero((records[:, 0] == code) & (records[:, 1] == batch))
            if len(hit):
                return records[hit[-1]].copy()
        return None

    def _table(self) -> np.ndarray:
        """The shared buffer as (worker, record, field); record 0 is the header."""
        return self.buffer.numpy().reshape(self.num_workers, self.capacity + HEADER, FIELDS)


def _complete(records: np.ndarray) -> int:
    """How many records, from the first, are complete (have a time)."""
    times = records[:, TIME]
    return int(np.argmin(times != 0)) if len(times) and times[-1] == 0 else len(times)


def _main_records(entries: list[list[int] | _Fetches]) -> np.ndarray:
    """The main process's records as one (n, 4) array, each batch's fetches laid out
    where the batch ended (column by column: no Python object per fetch)."""
    singles = [k for k, e in enumerate(entries) if isinstance(e, list)]
    fetches = [e for e in entries if not isinstance(e, list)]
    size = np.ones(len(entries), dtype=np.int64)
    made = np.array([len(e[2]) for e in fetches], dtype=np.int64)
    raised = np.array([bool(e[4]) for e in fetches], dtype=bool)
    is_fetch = np.ones(len(entries), dtype=bool)
    is_fetch[singles] = False
    size[is_fetch] = made + raised
    first = np.cumsum(size) - size  # each entry's first row
    out = np.empty((int(size.sum()), FIELDS), dtype=np.int64)
    if singles:
        out[first[singles]] = np.array([entries[k] for k in singles], dtype=np.int64)
    if fetches:
        start = first[is_fetch]
        rows = np.repeat(start - (np.cumsum(made) - made), made) + np.arange(int(made.sum()))
        out[rows, 0] = FETCH
        out[rows, 1] = np.repeat([e[0] for e in fetches], made)
        out[rows, 2] = np.frombuffer(_join(e[1] for e in fetches), dtype=np.int64)
        out[rows, TIME] = np.frombuffer(_join(e[2] for e in fetches), dtype=np.int64)
        for row, entry in zip(start.tolist(), fetches):
            for k in entry[3]:
                out[row + k, 0] = NONE
        last = start[raised] + made[raised]
        out[last, 0] = RAISED
        out[last, 1] = [e[0] for e, r in zip(fetches, raised) if r]
        out[last, 2] = [e[1][-1] if len(e[1]) else -1 for e, r in zip(fetches, raised) if r]
        out[last, TIME] = [e[4] for e, r in zip(fetches, raised) if r]
    return out


def _join(parts: Any) -> array.array[int]:
    joined = array.array("q")
    for part in parts:
        joined += part
    return joined


def _int64s(values: list[Any]) -> array.array[int]:
    """Values as int64; one that is not an int (a sampler's key), or too big: -1."""
    try:
        return array.array("q", values)
    except (TypeError, ValueError, OverflowError):
        return array.array("q", map(_int_or_minus_one, values))


def _int_or_minus_one(value: Any) -> int:
    try:
        converted: int = array.array("q", (value,))[0]
    except (TypeError, ValueError, OverflowError):
        return -1
    return converted
