"""Real distributed ranks on one machine: :func:`record_ranks` (lesson 6).

Data-parallel training runs one process per *rank*. Each rank builds its own
DataLoader, and a ``DistributedSampler`` gives it one share of the dataset: the
indices ``rank, rank + world_size, rank + 2 * world_size, ...``. When the dataset
does not divide evenly the sampler *pads* by repeating leading indices (so some
samples are seen twice per epoch), or, with ``drop_last=True``, *trims* the tail
(so some are never seen). The DataLoader's own ``drop_last`` then applies per
rank, to that rank's share.

:func:`record_ranks` shows all of this on real ranks, not a simulation: it starts
``world_size`` processes, each joins a ``torch.distributed`` process group (gloo
backend, CPU, over TCP on 127.0.0.1), builds a DataLoader with
``DistributedSampler(dataset)``, which reads its rank and the world size from the
process group exactly as in a training script, and records one pass with
:func:`dlviz.record`. The parent collects the runs; :func:`dlviz.merge_runs`
puts them on one clock and one ledger::

    runs = dlviz.record_ranks(3, 1000, 32)      # one Run per rank
    merged = dlviz.merge_runs(runs)             # padding shows as duplicated
    dlviz.plot_run(merged)
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from dlviz import _check
from dlviz.run import Run

__all__ = ["record_ranks", "MAX_WORLD_SIZE"]

MAX_WORLD_SIZE = 16
"""Every rank is a process that imports torch: more than this on one machine is a mistake."""

_PRELOAD = ("torch", "torch.distributed", "dlviz.datasets", "dlviz.recorder",
            "dlviz.distributed")
_GRACE_S = 1.0  # how long a rank that exited may take to show up in the queue
_JOIN_S = 5.0  # how long a finished rank may take to exit before it is terminated


def record_ranks(
    world_size: int,
    n: int,
    batch_size: int,
    *,
    drop_last: bool = False,
    sampler_drop_last: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    start_method: str | None = None,
    cost_ms: float = 0.0,
    fail_at: Iterable[int] = (),
    rank_start_method: str | None = None,
    timeout_s: float = 120.0,
) -> list[Run]:
    """Record one epoch on ``world_size`` real ranks; one :class:`dlviz.Run` per rank.

    Each rank is a separate process, as under ``torchrun``, that joins a gloo
    process group on ``127.0.0.1`` and iterates

    .. code-block:: python

        dataset = SyntheticDataset(n, cost_ms=cost_ms, fail_at=fail_at)
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed,
                                     drop_last=sampler_drop_last)  # rank from the group
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                            drop_last=drop_last, num_workers=num_workers,
                            multiprocessing_context=start_method)

    under :func:`dlviz.record`. All ranks start their pass together (a barrier),
    so their timelines line up after :func:`dlviz.merge_runs`. Used in lesson 6.

    Args:
        world_size: number of ranks (processes), 1..:data:`MAX_WORLD_SIZE`.
        n: dataset size (indices ``0..n-1``).
        batch_size: the DataLoader's batch size on every rank.
        drop_last: the *DataLoader's* ``drop_last``: each rank drops its own
            final partial batch.
        sampler_drop_last: the *sampler's* ``drop_last``: trim the dataset to a
            multiple of ``world_size`` instead of padding it.
        shuffle, seed, epoch: the sampler's shuffling (``set_epoch(epoch)``).
        num_workers, start_method: DataLoader workers inside each rank and how
            they start (None: this process's default, e.g. fork on Linux).
        cost_ms: time each sample's fetch takes (so the timeline has width).
        fail_at: indices whose fetch raises, to see a failing rank.
        rank_start_method: how the rank processes start: ``"forkserver"`` (the
            default where available: torch is imported once per session, later
            launches take a fraction of a second) or ``"spawn"`` (a fresh
            interpreter per rank, every time; the only choice on Windows). Not
            ``"fork"``: a process group should not be set up in a copy of a
            process that runs threads, such as a notebook kernel.
        timeout_s: the whole job's time limit (the process group's too).

    Returns:
        The runs, sorted by rank (``runs[r].config["rank"] == r``).

    Raises:
        TypeError, ValueError: a bad argument (the message names it).
        RuntimeError: a rank failed (its traceback is in the message) or died.
        TimeoutError: the ranks did not finish within ``timeout_s``.

    Every rank process is stopped before this returns or raises.
    """
    world_size = _check.count("world_size", world_size, minimum=1)
    if world_size > MAX_WORLD_SIZE:
        raise ValueError(f"world_size must be at most {MAX_WORLD_SIZE}, got {world_size}")
    settings: dict[str, Any] = {
        "n": _check.count("n", n, minimum=1),
        "batch_size": _check.count("batch_size", batch_size, minimum=1),
        "drop_last": _check.flag("drop_last", drop_last),
        "sampler_drop_last": _check.flag("sampler_drop_last", sampler_drop_last),
        "shuffle": _check.flag("shuffle", shuffle),
        "seed": _check.count("seed", seed),
        "epoch": _check.count("epoch", epoch),
        "num_workers": _check.count("num_workers", num_workers),
        # resolved here: inside a rank started by spawn or forkserver, the default
        # would be that method, not the one your platform uses for DataLoaders
        "start_method": multiprocessing.get_start_method() if start_method is None
        else _check.choice("start_method", start_method, multiprocessing.get_all_start_methods()),
        "cost_ms": _check.non_negative("cost_ms", cost_ms),
        "fail_at": sorted(_check.index_set("fail_at", fail_at, n)),
    }
    available = [m for m in ("forkserver", "spawn")
                 if m in multiprocessing.get_all_start_methods()]
    method = available[0] if rank_start_method is None else _check.choice(
        "rank_start_method", rank_start_method, available)
    timeout = _check.non_negative("timeout_s", timeout_s)
    if timeout == 0:
        raise ValueError("timeout_s must be > 0")
    deadline = time.monotonic() + timeout
    for attempt in range(2):
        try:
            return _launch(world_size, settings, method, deadline, timeout)
        except _PortTaken:  # another program took the free port first: once more
            if attempt:
                raise RuntimeError("record_ranks: could not bind a free port on 127.0.0.1"
                                   ) from None
    raise AssertionError("unreachable")  # pragma: no cover


class _PortTaken(Exception):
    """Rank 0 could not listen on the port chosen for the process group."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(world_size: int, settings: dict[str, Any], method: str, deadline: float,
            timeout: float) -> list[Run]:
    """Start the ranks, collect one Run from each, and always stop them."""
    ctx = _rank_context(method)
    results: Any = ctx.Queue()
    address = f"tcp://127.0.0.1:{free_port()}"
    timeout_s = max(1.0, deadline - time.monotonic())
    procs = [ctx.Process(target=_rank_main, name=f"dlviz-rank-{rank}",
                         args=(rank, world_size, address, settings, timeout_s, results))
             for rank in range(world_size)]
    runs: dict[int, Run] = {}
    dead_since: float | None = None
    try:
        for proc in procs:
            proc.start()
        while len(runs) < world_size:
            now = time.monotonic()
            if now >= deadline:
                missing = [r for r in range(world_size) if r not in runs]
                raise TimeoutError(f"record_ranks: ranks {missing} did not finish within "
                                   f"timeout_s={timeout:g} s; every rank was stopped")
            try:
                rank, status, payload = results.get(timeout=min(0.05, deadline - now))
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs)
                        if r not in runs and p.exitcode is not None]
                if dead:  # its result may still be on its way through the pipe
                    dead_since = dead_since or now
                    if now - dead_since > _GRACE_S:
                        rank, code = dead[0]
                        raise RuntimeError(f"record_ranks: rank {rank} exited (code {code}) "
                                           "without sending its run") from None
                continue
            if status == "error":
                if "ddress already in use" in payload:
                    raise _PortTaken(payload)
                raise RuntimeError(f"record_ranks: rank {rank} failed:\n{payload}")
            run = Run.from_dict(payload)
            runs[rank] = run
        for proc in procs:  # they leave the process group and exit by themselves
            proc.join(timeout=max(0.1, min(_JOIN_S, deadline - time.monotonic())))
    finally:
        _stop(procs)
        results.close()
        results.join_thread()
    return [runs[rank] for rank in range(world_size)]


def _rank_context(method: str) -> Any:
    """The multiprocessing context that starts ranks.

    forkserver: the server imports torch and dlviz once per Python session, and
    every rank after that is a cheap fork of it (a fresh spawn imports torch in
    every rank, every time). The preload list is added to, never replaced.
    """
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        current = list(getattr(forkserver._forkserver, "_preload_modules", []) or [])
        wanted = [m for m in _PRELOAD if m not in current]
        if wanted:
            ctx.set_forkserver_preload(current + wanted)
    return ctx


def _stop(procs: list[Any]) -> None:
    """Terminate (then kill) every rank still alive, and reap them all."""
    started = [p for p in procs if p.pid is not None]
    for proc in started:
        if proc.is_alive():
            proc.terminate()
    for proc in started:
        proc.join(timeout=_JOIN_S)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=_JOIN_S)
        if not proc.is_alive():
            proc.close()


def _loopback_interface() -> str | None:
    """The loopback interface's name, so that gloo listens on 127.0.0.1 only."""
    if sys.platform.startswith("linux"):
        return "lo"
    if sys.platform == "darwin":
        return "lo0"
    return None  # Windows: gloo resolves the host name; TCP init is still 127.0.0.1


def _rank_main(rank: int, world_size: int, address: str, settings: dict[str, Any],
               timeout_s: float, results: Any) -> None:
    """One rank (runs in its own process): join the group, record, send the Run back.

    Importable (module level) so that spawn and forkserver can start it. An error
    is sent to the parent as its traceback text, never lost in the child.
    """
    import torch
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    from dlviz.datasets import SyntheticDataset, make_loader
    from dlviz.recorder import record

    interface = _loopback_interface()
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    torch.set_num_threads(1)  # several ranks share a few cores
    try:
        dist.init_process_group("gloo", init_method=address, rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        s = settings
        dataset = SyntheticDataset(s["n"], cost_ms=s["cost_ms"], fail_at=s["fail_at"])
        # no num_replicas / rank: the sampler reads them from the process group
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, shuffle=s["shuffle"], seed=s["seed"], drop_last=s["sampler_drop_last"])
        sampler.set_epoch(s["epoch"])
        loader = make_loader(dataset, start_method=s["start_method"],
                             batch_size=s["batch_size"], sampler=sampler,
                             drop_last=s["drop_last"], num_workers=s["num_workers"])
        dist.barrier()  # every rank starts its pass together
        run = record(loader)
        run.config.update({
            "rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": "gloo",
            "rank_pid": os.getpid(),
            "sampler_num_samples": sampler.num_samples, "sampler_total_size": sampler.total_size,
            "sampler_drop_last": s["sampler_drop_last"], "shuffle": s["shuffle"],
            "seed": s["seed"], "epoch": s["epoch"], "cost_ms": s["cost_ms"],
        })
        results.put((rank, "ok", run.to_dict()))
        dist.barrier()  # rank 0 hosts the store: nobody leaves before everyone has sent
    except BaseException:
        results.put((rank, "error", traceback.format_exc(limit=-8)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

