"""Record a real DataLoader run: :func:`trace` and :func:`record`.

``trace(loader)`` rebuilds your DataLoader from instrumented parts and gives you
something to iterate exactly like the loader. The batches are the same objects
your loop would get untraced (same values, order and count); on the side, dlviz
notes what every process did and when:

- in the main process: when each batch's indices were drawn from the sampler and
  sent to a worker (``dispatch``), when it came back (``arrive``) and was handed to
  you (``deliver``), how long ``__next__`` waited, how long your loop's step took;
- in each worker (or in the main process when ``num_workers=0``): every
  ``dataset[index]`` fetch, every ``collate_fn`` call (batch assembly), the
  worker's start, and whether a fetch raised or returned ``None``. These go to a
  shared-memory log (:mod:`dlviz.eventlog`) the moment they happen, so they
  survive a worker that raises, crashes or hangs.

When the pass ends (for any reason) the events become a :class:`dlviz.Run` with
a ledger of every sample's fate. ``record(loader)`` runs the loop for you with a
chosen error pattern. Lesson 0 introduces both; lesson 7 uses ``trace`` on a
loader you build yourself.

The parts, one module each:

- here: the public API (:func:`trace`, :func:`record`), the loop, and the main
  process's notes of a pass (:class:`_Epoch`). dlviz draws the batches itself
  from your sampler exactly as ``BatchSampler`` would (:class:`_BatchDrawer`),
  so it also sees the tail that ``drop_last`` throws away; a custom
  ``batch_sampler`` is used as is;
- :mod:`dlviz.worker`: the wrappers that run inside the workers (your dataset,
  ``collate_fn``, ``worker_init_fn``), public torch API only;
- :mod:`dlviz.torch_hooks`: torch's multi-worker iterator with dlviz's hooks, and
  every private torch name dlviz relies on, probed at import;
- :mod:`dlviz.eventlog`: the shared-memory log the workers write;
- :mod:`dlviz.assemble`: the notes of one pass, frozen, become a :class:`dlviz.Run`.
"""

from __future__ import annotations

import array
import copy
import io
import itertools
import multiprocessing
import pickle
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

from dlviz import _check, eventlog, interrupts, state, torch_hooks
from dlviz.assemble import PassNotes, build_run
from dlviz.eventlog import EventLog, clock
from dlviz.run import MAIN, ErrorRecord, Run
from dlviz.torch_hooks import TracedLoader
from dlviz.worker import (
    Batch,
    StatefulTracedMapDataset,
    StatefulTracedStream,
    TracedCollate,
    TracedMapDataset,
    TracedStream,
    TracedWorkerInit,
)

__all__ = ["trace", "record", "play", "Traced"]

MAX_STEP_MS = 60_000.0
"""The longest simulated training step :func:`record` takes (a minute)."""
KEEP = 16
"""How many passes a traced loader keeps by default (see :func:`trace`)."""
MAX_KEYS = 10_000_000
"""The most keys ``expected`` may list (the ledger holds one fate per key)."""

_FATE_MARKS = {"delivered": "deliver", "failed": "lost"}  # a batch's fate -> its mark


# ---------------------------------------------------------------- sampler side
class _BatchDrawer:
    """Draws batches from the user's sampler (main process only) and logs each draw.

    For a StatefulDataLoader (``stateful``), a pass's draws carry the state of the
    iterator they come from (:mod:`dlviz.state`), and a BatchSampler subclass
    (torchdata's own) is used as is, over your sampler watched, so its state is
    exactly its own and dlviz still sees the tail ``drop_last`` throws away.
    """

    def __init__(self, loader: DataLoader[Any], box: torch_hooks.EpochBox,
                 stateful: bool = False) -> None:
        self.box = box
        self.stateful = stateful
        self.skip = 0  # batches a resume skips (a sampler without state: dlviz.state)
        self.seq = itertools.count()
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.source: Any
        if type(loader.batch_sampler) is BatchSampler:  # draw ourselves: see the dropped tail
            self.mode, self.source = "batch", loader.batch_sampler.sampler
            self.batch_size = loader.batch_sampler.batch_size
            self.drop_last = loader.batch_sampler.drop_last
        elif stateful and isinstance(loader.batch_sampler, BatchSampler):  # torchdata's
            self.mode, self.source = "watched", loader.batch_sampler
        elif loader.batch_sampler is not None:  # a custom batch_sampler, used as is
            self.mode, self.source = "custom", loader.batch_sampler
        else:  # batch_size=None: one sample at a time
            self.mode, self.source = "single", loader.sampler

    def __len__(self) -> int:
        if self.mode == "batch":
            return len(BatchSampler(self.source, self.batch_size or 1, self.drop_last))
        return len(self.source)

    def __iter__(self) -> Iterator[Batch]:
        drawn: list[Any] = []  # "watched": indices drawn for the batch being made
        if not self.stateful:  # your sampler's iter() is called at the first draw, as torch does
            return self._draw(None, drawn)
        if self.mode == "watched":
            batches = copy.copy(self.source)
            batches.sampler = state.watched(self.source.sampler, drawn)
            source = iter(batches)
        else:
            source = iter(self.source)
        if self.mode != "batch" and state.is_stateful(source):  # torchdata saves its state
            self.skip = 0  # and restores it: nothing is drawn twice
            return state.StatefulDraws(self._draw(source, drawn), source, drawn)
        return self._draw(source, drawn)

    def _draw(self, source: Iterator[Any] | None, drawn: list[Any]) -> Iterator[Batch]:
        epoch = self.box.epoch  # read at the first draw: the pass that asks
        if source is None:
            source = iter(self.source)
        skip, self.skip = self.skip, 0
        for _ in range(skip):  # given before the checkpoint: drawn again, thrown away
            size = (self.batch_size or 1) if self.mode == "batch" else 1
            if not list(itertools.islice(source, size)):
                return
            yield Batch(-1, [])
        while True:
            if self.mode == "batch":
                indices = list(itertools.islice(source, self.batch_size))
                if not indices:
                    return
                if self.drop_last and len(indices) < (self.batch_size or 1):
                    epoch.dropped_tail(next(self.seq), indices)
                    return
            else:
                try:
                    item = next(source)
                except StopIteration:
                    if drawn:  # drawn, never batched: drop_last's tail
                        epoch.dropped_tail(next(self.seq), list(drawn))
                    return
                drawn.clear()
                indices = [item] if self.mode == "single" else list(item)
            batch = Batch(next(self.seq), indices)
            epoch.drawn(batch)
            yield batch


class _StatefulBatchDrawer(state.PassesState, _BatchDrawer):
    """The drawer of a StatefulDataLoader whose batch sampler has a state of its own."""

    state_of = "index_sampler"

    def __init__(self, loader: DataLoader[Any], box: torch_hooks.EpochBox) -> None:
        super().__init__(loader, box, stateful=True)
        self.index_sampler = loader._index_sampler


# ---------------------------------------------------------------- worker side
# ---------------------------------------------------------------- main side
class _Epoch:
    """Everything the main process notes during one pass; :meth:`freeze` hands it on.

    Notes are raw tuples on the absolute clock (cheap on the hot path). When the
    pass is over, :meth:`freeze` copies them, with the workers' log, into a
    :class:`dlviz.assemble.PassNotes` (no Run is built then: that waits until
    someone asks for it, :meth:`result`).
    """

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.origin = clock()
        # (kind, worker, batch, index, start, end, status), absolute clock
        self.marks: list[tuple[str, int, int, int, int, int, str]] = []
        self.errors: list[ErrorRecord] = []
        self.batches: dict[int, list[Any]] = {}  # seq -> indices, in draw order
        self.tail: tuple[int, list[Any]] | None = None  # dropped by drop_last
        self.task_seq: dict[int, int] = {}  # torch's task number -> our batch number
        self.batch_worker: dict[int, int] = {}
        self.resolved: dict[int, str] = {}  # seq -> "delivered" | "failed" | "empty"
        self.last_drawn = -1
        self.current: tuple[int, int, bool] | None = None  # (seq, worker, failed)
        self.iterator: Any = None
        self.pids: dict[int, int] = {}
        self.stop: str | None = None  # set when the pass is over
        self.duration = 0
        self.notes: PassNotes | None = None
        self._run: Run | None = None
        self.loop: dict[str, Any] = {}  # record()'s loop settings, for the Run's config
        # the sampler's settings as this pass begins (set_epoch may change them between)
        self.settings = {"sampler_settings": _sampler_settings(traced.original.sampler)}

    def now(self) -> int:
        return clock() - self.origin

    def mark(self, kind: str, worker: int, seq: int, at: int | None = None) -> None:
        """An instant on the timeline, at ``at`` (absolute clock) or now."""
        t = clock() if at is None else at
        self.marks.append((kind, worker, seq, -1, t, t, ""))

    # --- hooks (called from the sampler side and torch's iterator) ---
    def drawn(self, batch: Batch) -> None:
        self.batches[batch.seq] = _compact(batch.indices)
        self.last_drawn = batch.seq
        if self.traced.num_workers == 0:
            self.batch_worker[batch.seq] = MAIN
            self.mark("dispatch", MAIN, batch.seq)

    def dropped_tail(self, seq: int, indices: list[Any]) -> None:
        self.tail = (seq, _compact(indices))

    def dispatched(self, task: int, worker: int) -> None:
        self.task_seq[task] = self.last_drawn
        self.batch_worker[self.last_drawn] = worker
        self.mark("dispatch", worker, self.last_drawn)

    def arrived(self, task: int, ended_worker: int | None, other_tasks: list[int]) -> None:
        """Task ``task`` came back; ``ended_worker``: its stream ran out of data, and
        ``other_tasks`` (still queued for that worker) will never bring a batch."""
        if task not in self.task_seq:
            # a persistent worker's batch from a pass cut short: torch discards it
            # while it starts this pass, before anything of this pass is sent
            return
        seq = self.task_seq[task]
        worker = self.batch_worker.get(seq, MAIN)
        self.mark("arrive", worker, seq)
        if ended_worker is not None:
            for other in other_tasks:
                self.resolve(self.task_seq.get(other, -1), "empty", ended_worker)
            self.resolve(seq, "empty", worker)

    def processing(self, task: int, worker: int, failed: bool) -> None:
        """torch is handing out a task (before it sends the next one to a worker)."""
        seq = self.task_seq.get(task, -1)
        self.current = (seq, worker, failed)
        self.resolve(seq, "failed" if failed else "delivered", worker)

    # --- the pass ---
    def resolve(self, seq: int, fate: str, worker: int, at: int | None = None) -> None:
        """Give batch ``seq`` its fate (once) and mark it on the timeline, at ``at`` or now."""
        if seq < 0 or seq in self.resolved:
            return
        self.resolved[seq] = fate
        self.mark(_FATE_MARKS.get(fate, fate), worker, seq, at)

    def error(self, exc: BaseException) -> str:
        """Note an error the loop saw; returns its kind."""
        t = self.now()
        message, type_name = str(exc), type(exc).__name__
        it = self.iterator
        self.lose_current()
        pids = torch_hooks.dead_pids(message)
        if pids is not None and self.traced.num_workers > 0:  # else it only looks like one
            workers = [w for w, pid in self.pids.items() if pid in pids]
            for w in workers:  # everything it still held is lost with it
                for task in torch_hooks.pending_tasks(it, w):
                    self.resolve(self.task_seq.get(task, -1), "failed", w)
            worker = workers[0] if workers else None
            batch, index = self._unfinished_fetch(worker)  # what it was doing when it died
            self.errors.append(ErrorRecord("worker_died", worker, index, batch, t, message,
                                           type=type_name))
            return "worker_died"
        if (isinstance(exc, RuntimeError) and message.startswith(torch_hooks.TIMED_OUT)
                and self.traced.num_workers > 0 and self.traced.original.timeout > 0):
            task, worker = torch_hooks.waited_task(it)
            seq = self.task_seq.get(task, -1)
            self.resolve(seq, "failed", MAIN if worker is None else worker)
            batch, index = self._unfinished_fetch(worker)  # the fetch that hangs, if any
            self.errors.append(ErrorRecord("timeout", worker, index if batch == seq else None,
                                           seq if seq >= 0 else None, t, message,
                                           type=type_name))
            return "timeout"
        if self.current is not None:  # torch was handing out this batch: it is lost
            seq, worker, _ = self.current
        elif self.traced.num_workers == 0 and self.last_drawn not in self.resolved:
            seq, worker = self.last_drawn, MAIN  # the fetch ran in this process
        else:  # raised by torch's main-process code (a sampler, say): no batch is lost
            seq, worker = -1, MAIN
        self.resolve(seq, "failed", worker)
        index = self._raised_index(seq) if seq >= 0 else None
        self.errors.append(ErrorRecord("exception", worker, index, seq if seq >= 0 else None,
                                       t, message, type=type_name))
        return "exception"

    def lose_current(self) -> None:
        """The batch torch was handing out never reached the loop (an error or a Ctrl-C
        landed before ``next()`` returned it): delivered -> lost."""
        if self.current is None or self.resolved.get(self.current[0]) != "delivered":
            return
        seq = self.current[0]
        self.resolved[seq] = "failed"
        for i in range(len(self.marks) - 1, -1, -1):
            kind, worker, batch, index, start, end, status = self.marks[i]
            if kind == "deliver" and batch == seq:
                self.marks[i] = ("lost", worker, batch, index, start, end, status)
                break

    def _unfinished_fetch(self, worker: int | None) -> tuple[int | None, int | None]:
        """``(batch, index)`` of the fetch ``worker`` started last and never finished."""
        last = None if worker is None else self.traced.log.last_record(worker)
        if last is not None and last[0] == eventlog.FETCH:
            index = int(last[2])
            return int(last[1]), (index if index >= 0 else None)
        return None, None

    def _raised_index(self, seq: int) -> int | None:
        hit = self.traced.log.find(eventlog.RAISED, seq)
        if hit is None or hit[2] < 0:  # -1: a stream's key is not known
            return None
        return int(hit[2])

    def finish(self, stop: str, shutdown: bool) -> None:
        """End the pass: note why, stop the workers (unless persistent and kept)."""
        if self.stop is None:
            self.stop = stop
            self.duration = self.now()
        if shutdown:
            hung = [e.worker for e in self.errors if e.kind == "timeout" and e.worker is not None]
            if self.stop == "interrupt":  # stop now, without waiting for any worker: one
                hung = list(range(self.traced.num_workers))  # may hang with no timeout
            torch_hooks.shutdown(self.iterator, hung=hung)

    def freeze(self) -> PassNotes:
        """Copy this pass's notes and log into a frozen record (once the pass is over);
        the main process's own lists are let go. Cheap: arrays are copied, no Run built."""
        if self.notes is None:
            self.notes = self._snapshot(self.stop or "break", self.duration)
            self.batches, self.marks, self.tail = {}, [], None
        return self.notes

    def _snapshot(self, stop: str, duration: int) -> PassNotes:
        traced = self.traced
        return PassNotes.make(
            config={**traced.config, **self.settings, **self.loop}, origin=self.origin,
            duration=duration,
            stop=stop, iterable=traced.iterable, expected=traced.expected,
            dataset=traced.original.dataset, marks=self.marks, errors=self.errors,
            batches=self.batches, tail=self.tail, resolved=self.resolved,
            regions=traced.log.regions(), num_workers=traced.num_workers)

    def result(self) -> Run:
        """The Run of this pass, built once, on first request (a snapshot if still open)."""
        if self._run is not None:
            return self._run
        if self.stop is None:
            return build_run(self._snapshot("break", self.now()))
        self._run = build_run(self.freeze())
        self.notes = None  # the Run holds it all now
        return self._run


class TracedIterator:
    """One pass over a traced loader. Iterate it like the DataLoader's own iterator.

    ``next()`` may raise what the DataLoader raises; the pass goes on if you call
    ``next()`` again (the try-around-``next()`` pattern), as with torch.
    """

    def __init__(self, traced: Traced, epoch: _Epoch) -> None:
        self.traced = traced
        self.epoch = epoch
        epoch.iterator = iter(traced.loader)
        self.torch_iter = epoch.iterator
        epoch.pids = torch_hooks.worker_pids(self.torch_iter)

    def __iter__(self) -> TracedIterator:
        return self

    def __len__(self) -> int:
        return len(self.traced.loader)

    def __next__(self) -> Any:
        epoch = self.epoch
        if epoch.stop is not None:
            raise StopIteration
        start = clock()  # your step ran from the last wait's end to here (see build_run)
        epoch.current = None
        waited = None
        try:  # everything up to ``return``, so a Ctrl-C anywhere before it is seen here
            batch = next(self.torch_iter)
            end = clock()
            if epoch.current is None:  # num_workers=0: the batch just fetched is handed out
                epoch.current = (epoch.last_drawn, MAIN, False)
                epoch.resolve(epoch.last_drawn, "delivered", MAIN, at=end)
            waited = ("wait", MAIN, epoch.current[0], -1, start, end, "ok")
            epoch.marks.append(waited)
        except StopIteration:  # the wait ends where torch began to stop its workers
            end = getattr(self.torch_iter, "_dlviz_shutdown_at", None) or clock()
            epoch.marks.append(("wait", MAIN, -1, -1, start, max(start, end), "ok"))
            self._end("exhausted")
            raise
        except KeyboardInterrupt:  # a Ctrl-C before the batch was returned: it is lost
            if waited is not None and epoch.marks[-1] is waited:
                epoch.marks.pop()  # the wait had ended, but the loop never got the batch
            epoch.marks.append(("wait", MAIN, -1, -1, start, clock(), "raised"))
            epoch.lose_current()
            self._end("interrupt")
            raise
        except Exception as exc:
            epoch.marks.append(("wait", MAIN, -1, -1, start, clock(), "raised"))
            epoch.error(exc)
            raise
        return batch

    def finish(self, stop: str = "break") -> Run:
        """End this pass now (workers stopped unless persistent) and return its Run."""
        self._end(stop)
        return self.epoch.result()

    def _end(self, stop: str) -> None:
        """End the pass without building its Run (that waits until someone asks)."""
        keep = self.traced.persistent and stop in ("exhausted", "break", "max_batches")
        self.epoch.finish(stop, shutdown=not keep)

    def __del__(self) -> None:
        try:
            if self.epoch.stop is None:
                self.epoch.finish("break", shutdown=not self.traced.persistent)
        except Exception:  # never raise from a finalizer
            pass


class Traced:
    """A DataLoader with a recorder attached; see :func:`trace`."""

    def __init__(self, loader: DataLoader[Any], *, key: Callable[[Any], int] | None = None,
                 expected: Sequence[int] | None = None, keep: int | None = KEEP) -> None:
        if not isinstance(loader, DataLoader):
            raise TypeError(f"loader must be a torch DataLoader, not {type(loader).__name__}")
        self.keep = _check.optional_count("keep", keep, minimum=1)
        self.passes_let_go = 0  # passes older than the last ``keep``, no longer held
        if hasattr(loader, "dlviz_box"):
            raise ValueError("loader is already traced; pass the original DataLoader")
        self.stateful = torch_hooks.is_stateful_loader(loader)
        _check_faithful(loader, self.stateful)
        dataset = loader.dataset
        self.iterable = isinstance(dataset, IterableDataset)
        self.key, self.expected = _stream_keys(dataset, key, expected, self.iterable)
        self.original = loader
        self.num_workers = loader.num_workers
        self.persistent = bool(loader.persistent_workers)
        self.epochs: list[_Epoch] = []
        self._iterator: TracedIterator | None = None
        self._primed: TracedIterator | None = None  # a pass begun by state_dict()
        self.log = EventLog(loader.num_workers, _capacity(loader))
        self.box = torch_hooks.EpochBox()
        self.drawer = (_StatefulBatchDrawer(loader, self.box)
                       if self.stateful and state.is_stateful(loader._index_sampler)
                       else _BatchDrawer(loader, self.box, self.stateful))
        method = _start_method(loader)
        if method in ("spawn", "forkserver"):
            _check_picklable(loader, key, method)
        self.config = _describe(loader, method, self.iterable)
        self.loader = self._rebuild(loader)
        if self.stateful:  # your loader's state_dict() is the traced pass's (dlviz.state)
            self._take_resume_state()

    def _rebuild(self, loader: DataLoader[Any]) -> Any:
        stateful = self.stateful and state.is_stateful(loader.dataset)
        if self.iterable:
            kind: Any = StatefulTracedStream if stateful else TracedStream
            dataset: Any = kind(loader.dataset, self.log, self.key)
        else:
            kind = StatefulTracedMapDataset if stateful else TracedMapDataset
            dataset = kind(loader.dataset, self.log)
        extra = {}
        if self.stateful:
            extra["snapshot_every_n_steps"] = loader.snapshot_every_n_steps  # type: ignore[attr-defined]
        rebuilt = (torch_hooks.traced_stateful_loader() if self.stateful else TracedLoader)(
            dataset,
            batch_size=(loader.batch_size or 1) if self.iterable else 1,
            drop_last=loader.drop_last,
            num_workers=loader.num_workers,
            collate_fn=TracedCollate(loader.collate_fn, self.log,
                                      unbatched=loader.batch_sampler is None),
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=TracedWorkerInit(loader.worker_init_fn, self.log, loader.dataset),
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
            persistent_workers=loader.persistent_workers,
            pin_memory_device=loader.pin_memory_device,
            in_order=getattr(loader, "in_order", True),
            **extra,
        )
        rebuilt.dlviz_box = self.box
        rebuilt.dlviz_drawer = self.drawer
        return rebuilt

    def __iter__(self) -> TracedIterator:
        return self.iterate()

    def iterate(self) -> TracedIterator:
        """Start a pass (an epoch). A pass still open is ended first."""
        if self._primed is not None:  # state_dict() began this pass: it starts now
            primed, self._primed = self._primed, None
            return primed
        if self.stateful:
            self._take_resume_state()
        if self._iterator is not None and self._iterator.epoch.stop is None:
            self._iterator._end("break")
        if self.epochs:
            # copy the last pass's notes and log (no Run is built here), then empty the
            # log for this one: new workers find it empty; persistent ones empty their
            # own regions before they log anything of this pass
            self.epochs[-1].freeze()
            if self.persistent:
                self.log.forget_pass()
                self.log.new_pass()
            else:
                self.log.reset()
        epoch = _Epoch(self)
        self.box.epoch = epoch
        self.epochs.append(epoch)
        if self.keep is not None and len(self.epochs) > self.keep:
            del self.epochs[0]  # memory stays bounded over many epochs
            self.passes_let_go += 1
        try:
            self._iterator = TracedIterator(self, epoch)
        except BaseException as exc:  # the loader failed to start, or was interrupted starting
            interrupted = isinstance(exc, KeyboardInterrupt)
            if isinstance(exc, Exception):
                epoch.error(exc)
            epoch.finish("interrupt" if interrupted else "error", shutdown=False)
            exc.dlviz_run = epoch.result()  # type: ignore[attr-defined]
            raise
        return self._iterator

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """A torchdata StatefulDataLoader's checkpoint of the pass (lesson 09): where it
        is, exactly as your loader untraced would say (``your_loader.state_dict()``
        says the same). Resume with ``load_state_dict()`` on a new loader, traced or not.
        Before the first pass, this begins it (torchdata does the same)."""
        if not self.stateful:
            raise TypeError(f"state_dict() is for a torchdata StatefulDataLoader; this loader "
                            f"is a {type(self.original).__name__}")
        if self._iterator is None:
            self._primed = self.iterate()
        return dict(self.loader.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next pass from a StatefulDataLoader's ``state_dict()`` (lesson 09)."""
        if not self.stateful:
            raise TypeError(f"load_state_dict() is for a torchdata StatefulDataLoader; this "
                            f"loader is a {type(self.original).__name__}")
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict from state_dict(), "
                            f"not {type(state_dict).__name__}")
        self._primed = None
        self.loader.load_state_dict(state_dict)
        self._resume_from(state_dict)

    def _resume_from(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(self.drawer, _StatefulBatchDrawer):
            self.drawer.skip = state.batches_to_skip(state_dict)

    def _take_resume_state(self) -> None:
        """A state your loader was given (``load_state_dict``) goes to the traced one,
        and your loader's ``state_dict()`` asks the traced pass from now on."""
        original: Any = self.original
        if original.next_iter_state is not None:
            self.loader.load_state_dict(original.next_iter_state)
            self._resume_from(original.next_iter_state)
            original.next_iter_state = None
        if not isinstance(original._iterator, state.StateOfTraced):
            original._iterator = state.StateOfTraced(self)
            original._initial_iter_for_state_dict = False

    @property
    def run(self) -> Run:
        """The Run of the latest pass (a snapshot if that pass is still going)."""
        if not self.epochs:
            raise RuntimeError("nothing recorded yet: iterate over the traced loader first")
        return self.epochs[-1].result()

    @property
    def runs(self) -> list[Run]:
        """One Run per pass so far, oldest first: the last ``keep`` passes (see
        :func:`trace`; :attr:`passes_let_go` counts the older ones)."""
        return [epoch.result() for epoch in self.epochs]

    def close(self) -> None:
        """Stop any workers still alive (persistent workers live until this)."""
        self._close("break")

    def _close(self, stop: str) -> None:
        if self._iterator is not None:
            self._iterator._end(stop)  # the Run is built only when someone asks for it
            torch_hooks.shutdown(self._iterator.torch_iter)

    def __enter__(self) -> Traced:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        # a Ctrl-C in your loop's body never reaches dlviz; it ends the pass here
        self._close("interrupt" if kind is not None and issubclass(kind, KeyboardInterrupt)
                    else "break")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def trace(loader: DataLoader[Any], *, key: Callable[[Any], int] | None = None,
          expected: Sequence[int] | None = None, keep: int | None = KEEP) -> Traced:
    """Wrap ``loader`` so that iterating it records a :class:`dlviz.Run`.

    ``for batch in trace(loader)`` gives the same batches as ``for batch in loader``;
    afterwards ``traced.run`` holds the recording (``traced.runs``: one per pass).
    For an IterableDataset, samples are ledgered by key: dlviz's streams supply
    keys; for yours pass ``key`` (sample -> int; importable under spawn) and
    ``expected`` (every key one pass should deliver). With persistent workers,
    call ``traced.close()`` (or use ``with``) to stop them. Lessons 0 and 7.

    A torchdata ``StatefulDataLoader`` is traced as itself (lesson 09): checkpoint
    with ``traced.state_dict()`` (or ``loader.state_dict()``: your loader says where
    the traced pass is) and resume a new loader, traced or not, with
    ``load_state_dict()``; the state is exactly what torchdata alone would save
    (:mod:`dlviz.state`). ``dlviz.merge_runs([before, after], by="pass")`` then shows
    every index delivered once. Any other DataLoader subclass that iterates its own
    way is refused with a ValueError rather than recorded as something else.

    Over many epochs, ``traced.runs`` keeps the last ``keep`` passes (default
    :data:`KEEP`; ``None``: all). A pass holds about 40 bytes per sample until its
    Run is built, about 45 after (``benchmarks/scale.py``): 16 passes of a
    1.28M-sample epoch, under 1 GB. No Run is built between passes: a pass's
    notes are copied when the next begins (milliseconds), and built when asked.
    """
    return Traced(loader, key=key, expected=expected, keep=keep)


def record(loader: DataLoader[Any], *, on_error: str = "raise", max_batches: int | None = None,
           step_ms: float = 0.0, key: Callable[[Any], int] | None = None,
           expected: Sequence[int] | None = None) -> Run:
    """Run one pass over ``loader`` with a loop of your choice and return its Run.

    Args:
        on_error: what the loop does when ``next()`` raises:
            ``"raise"``: let it propagate (the Run is on the exception as
            ``exc.dlviz_run``); ``"stop"``: end the pass, as a ``try`` around the
            whole ``for`` loop does; ``"continue"``: skip the failed batch and go on,
            as a ``try`` around each ``next()`` does. A timeout always ends the
            pass: the hung batch would time out again on every ``next()``.
        max_batches: stop after this many delivered batches (a ``break``).
        step_ms: simulated training step per batch (time.sleep), to see the
            workers prefetch while your loop is busy; at most :data:`MAX_STEP_MS`.
        key, expected: see :func:`trace`.

    All worker processes of the pass are stopped before this returns, whatever
    happened; a KeyboardInterrupt stops them at once (a worker may hang) and
    carries the Run as ``exc.dlviz_run`` too. Lessons 1-8.
    """
    on_error = _check.choice("on_error", on_error, ("raise", "stop", "continue"))
    max_batches = _check.optional_count("max_batches", max_batches)
    step_s = _check.non_negative("step_ms", step_ms, maximum=MAX_STEP_MS) / 1000
    return play(Traced(loader, key=key, expected=expected), on_error, max_batches, step_s)


def play(traced: Traced, on_error: str, max_batches: int | None, step_s: float,
         cancel: Callable[[], bool] | None = None, keep_workers: bool = False) -> Run:
    """The loop that :func:`record` runs (arguments already checked).

    ``cancel`` is asked before each batch; when it says True the pass ends as if
    the loop broke out (the explorer uses it when a newer slider value arrives).
    ``keep_workers`` leaves persistent workers up for the next pass (the explorer
    re-runs them while only loop settings change).
    """
    it = traced.iterate()
    it.epoch.loop = {"on_error": on_error, "max_batches": max_batches, "step_ms": step_s * 1000}
    stop = "exhausted"
    try:
        with interrupts.kept():  # Ctrl-C is never lost, even in a finalizer
            stop = _loop(it, on_error, max_batches, step_s, cancel)
    except KeyboardInterrupt as exc:
        exc.dlviz_run = it.finish("interrupt")  # type: ignore[attr-defined]
        raise
    finally:
        run = it.finish(stop)
        if not keep_workers:
            torch_hooks.shutdown(it.torch_iter)
    return run


def _loop(it: Any, on_error: str, max_batches: int | None, step_s: float,
          cancel: Callable[[], bool] | None) -> str:
    """:func:`play`'s loop over the traced iterator ``it``; returns why it stopped
    (the Run's ``stop``)."""
    delivered = 0
    while max_batches is None or delivered < max_batches:
        interrupts.raise_if_lost()
        if cancel is not None and cancel():
            return "break"
        try:
            next(it)
        except StopIteration:
            return "exhausted"
        except Exception as exc:
            last = it.epoch.errors[-1] if it.epoch.errors else None
            if on_error == "raise":
                exc.dlviz_run = it.finish("error")  # type: ignore[attr-defined]
                raise
            if on_error == "stop" or (last is not None and last.kind == "timeout"):
                return "error"
            continue
        delivered += 1
        if step_s:
            time.sleep(step_s)
    return "max_batches"


# ---------------------------------------------------------------- helpers
def _compact(indices: list[Any]) -> Any:
    """A batch's indices as an int64 array (8 bytes each instead of ~36 for a list of
    ints: an epoch of 10M samples is held until the pass ends); other keys as they are."""
    try:
        return array.array("q", indices)
    except (TypeError, OverflowError):
        return indices


def _stream_keys(dataset: Any, key: Callable[[Any], int] | None,
                 expected: Sequence[int] | None, iterable: bool
                 ) -> tuple[Callable[[Any], int], list[int] | None]:
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function sample -> int, not {type(key).__name__}")
    if expected is not None:
        if isinstance(expected, (str, bytes)) or not hasattr(expected, "__iter__"):
            raise TypeError(f"expected must be a collection of int keys, "
                            f"not {type(expected).__name__}")
    if not iterable:
        if key is not None or expected is not None:
            raise ValueError("key and expected are for IterableDatasets; a map-style "
                             "dataset is ledgered by index")
        return _no_key, None
    if expected is not None:
        expected = _expected_keys(expected)
    if key is None:
        key = getattr(dataset, "sample_key", None)
        if key is None:
            raise ValueError("an IterableDataset needs key= (sample -> int) so dlviz can "
                             "tell its samples apart; dlviz's own streams provide it")
    if expected is None and hasattr(dataset, "expected_keys"):
        expected = list(dataset.expected_keys())
    return _IntKey(key), expected


def _expected_keys(expected: Any) -> list[int]:
    """``expected`` as a list of ints, checked one by one (``range(10**12)`` fails fast)."""
    try:
        items = iter(expected)
    except TypeError:  # a 0-d tensor, say
        raise TypeError(f"expected must be a collection of int keys, "
                        f"not {type(expected).__name__}") from None
    try:
        size = len(expected)
    except TypeError:  # no len(): counted below
        size = 0
    except OverflowError:
        size = MAX_KEYS + 1
    keys: list[int] = []
    for k in items:
        if size > MAX_KEYS or len(keys) == MAX_KEYS:
            raise ValueError(f"expected has more than {MAX_KEYS:_} keys")
        keys.append(_check.integer("expected item", k))
    return keys


def _no_key(sample: Any) -> int:
    return -1


class _IntKey:
    """Calls the key function and insists on an int (the log stores int64)."""

    def __init__(self, key: Callable[[Any], int]) -> None:
        self.key = key

    def __call__(self, sample: Any) -> int:
        value = self.key(sample)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = int(value.item())
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        raise TypeError(f"key must return an int, got {type(value).__name__}")


def _capacity(loader: DataLoader[Any]) -> int:
    """Records per region: one pass over all the samples, so a small pass never spills,
    up to :data:`dlviz.eventlog.REGION_RECORDS` (4 MiB); a longer pass spills to disk
    (see :mod:`dlviz.eventlog`) and loses nothing."""
    try:
        sized: Any = (loader.sampler if loader.batch_sampler is None
                      or type(loader.batch_sampler) is BatchSampler else loader.dataset)
        samples = len(sized)
    except (TypeError, OverflowError):  # no len(), or one too large for len()
        samples = 65536
    batches = samples // max(1, loader.batch_size or 1) + 1
    per_pass = samples + 3 * batches + 64  # a fetch per sample; collate, end per batch
    return min(eventlog.REGION_RECORDS, per_pass)


_BEHAVIOUR = ("__iter__", "_get_iterator", "state_dict", "load_state_dict", "__len__",
              "_index_sampler")


def _check_faithful(loader: DataLoader[Any], stateful: bool) -> None:
    """Refuse a DataLoader subclass that changes how it iterates or keeps state.

    dlviz records a pass by rebuilding the loader from its parts (dataset, sampler,
    collate_fn, ...) as a plain DataLoader, or as a torchdata ``StatefulDataLoader``
    when it is one. A subclass with its own iteration would silently become
    something else (a job resumed from its checkpoint could replay the epoch);
    better to say so.
    """
    base: type = (sys.modules["torchdata.stateful_dataloader"].StatefulDataLoader if stateful
                  else DataLoader)
    changed = [name for name in _BEHAVIOUR
               if getattr(type(loader), name, None) is not getattr(base, name, None)]
    if changed:
        raise ValueError(
            f"loader is a {type(loader).__name__}, which changes {', '.join(changed)}: dlviz "
            f"rebuilds a loader as a {base.__name__} to record it, so this one would not "
            "behave as yours does. Trace a plain DataLoader (or a torchdata "
            "StatefulDataLoader) built from the same dataset and sampler.")


def _start_method(loader: DataLoader[Any]) -> str:
    if loader.num_workers == 0:
        return "none"
    ctx = loader.multiprocessing_context
    if ctx is None:
        return str(multiprocessing.get_start_method())
    return str(ctx.get_start_method())


class _WorkerPickler(pickle.Pickler):
    """Pickles as a spawned worker will unpickle: refuses what lives only in ``__main__``.

    In a notebook, ``__main__`` is the kernel: a class defined in a cell pickles fine
    here, by name, but a fresh worker process cannot import that name back.
    """

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, (type, types.FunctionType))
                and getattr(obj, "__module__", None) == "__main__"
                and not hasattr(sys.modules["__main__"], "__file__")):
            raise pickle.PicklingError(
                f"{obj.__qualname__} is defined in the notebook, not in a module")
        return NotImplemented


def _check_picklable(loader: DataLoader[Any], key: Any, method: str) -> None:
    """Under spawn/forkserver, say early (and clearly) what cannot reach a worker."""
    parts = {"dataset": loader.dataset, "collate_fn": loader.collate_fn,
             "worker_init_fn": loader.worker_init_fn, "key": key}
    for name, part in parts.items():
        if part is None:
            continue
        try:
            _WorkerPickler(io.BytesIO()).dump(part)
        except Exception as exc:
            raise ValueError(
                f"{name} cannot be sent to {method} workers: {exc}. Under spawn and "
                "forkserver it must be importable (defined in a module, not a notebook "
                "cell or a lambda); see lesson 4") from None


_SAMPLER_SETTINGS = ("replacement", "num_samples", "num_replicas", "rank", "shuffle", "seed",
                     "drop_last", "epoch", "total_size")


def _sampler_settings(sampler: Any) -> dict[str, Any]:
    """The public settings of torch's samplers that decide which indices a pass draws
    (``RandomSampler.replacement``, ``DistributedSampler.epoch``, ...): what
    ``dlviz.explain`` reads to name a cause. Only plain numbers and flags are kept."""
    out: dict[str, Any] = {}
    for name in _SAMPLER_SETTINGS:
        try:
            value = getattr(sampler, name, None)
        except Exception:  # a property that needs something the sampler lacks
            continue
        if isinstance(value, (bool, int)) and (isinstance(value, bool)
                                               or -2**63 <= value < 2**63):
            out[name] = value
    return out


def _describe(loader: DataLoader[Any], method: str, iterable: bool) -> dict[str, Any]:
    dataset = loader.dataset
    return {
        "dataset": type(dataset).__name__,
        "dataset_kind": "iterable" if iterable else "map",
        "num_workers": loader.num_workers,
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "prefetch_factor": loader.prefetch_factor if loader.num_workers > 0 else None,
        "persistent_workers": bool(loader.persistent_workers),
        "in_order": bool(getattr(loader, "in_order", True)),
        "pin_memory": bool(loader.pin_memory),
        "timeout": float(loader.timeout),
        "start_method": method,
        "sampler": type(loader.sampler).__name__,
        "sampler_settings": _sampler_settings(loader.sampler),
        "batch_sampler": (None if loader.batch_sampler is None
                          else type(loader.batch_sampler).__name__),
        "torch": torch.__version__.split("+")[0],
    }
