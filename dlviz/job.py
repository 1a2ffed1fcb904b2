"""A real training job under ``torchrun``, recorded rank by rank (lesson 9).

Run it as a training script, then merge what its ranks wrote::

    torchrun --nproc-per-node 2 -m dlviz.job --out runs --epochs 2 --samples 100 --shuffle
    python -m dlviz merge runs/*.json -o job.json       # every rank and epoch, one ledger
    python -m dlviz report job.json -o report.html

or from Python (a notebook, a test)::

    import dlviz.job
    files = dlviz.job.launch(2, "runs", epochs=2)   # the same torchrun, in a subprocess

Every rank is one process that torchrun started. It joins the process group torchrun
describes in its environment (``env://``; gloo, CPU), measures where its clock stands
against rank 0's (:func:`sync_clocks`), and trains a tiny model (one linear layer in
``DistributedDataParallel``) for ``--epochs`` epochs on its ``DistributedSampler``
share of a :class:`dlviz.datasets.SyntheticDataset`, calling ``sampler.set_epoch``
before every epoch, as a training script must. The loader is wrapped in
:func:`dlviz.trace`; each epoch (one pass) is saved as ``OUT/rank{r}-pass{p}.json``.

Nothing here needs the ranks to share a machine. ``time.perf_counter_ns`` starts at
a different value on every machine, so each rank stores the offset of its clock from
rank 0's (``run.config["clock_sync"]``, measured through the process group), and
:func:`dlviz.merge_runs` uses it to put runs from many machines on one timeline.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlviz import _check

__all__ = ["launch", "main", "sync_clocks", "fork_ranks", "files_of", "SETTINGS",
           "MAX_WORLD_SIZE"]

MAX_WORLD_SIZE = 16
"""Ranks :func:`launch` starts on this machine, at most (each one imports torch)."""

SETTINGS: dict[str, Any] = {"epochs": 2, "n": 100, "batch_size": 8, "num_workers": 0,
                            "shuffle": False, "drop_last": False, "sampler_drop_last": False,
                            "seed": 0, "cost_ms": 0.0}
"""The job's settings and their defaults (on the command line: ``--batch-size``;
``n``, the dataset size, is ``--samples``)."""

_SYNC_ROUNDS = 5


def sync_clocks(rounds: int = _SYNC_ROUNDS) -> dict[str, Any]:
    """Where this rank's ``perf_counter_ns`` clock stands against rank 0's.

    Each of ``rounds`` times, every rank waits at a barrier and reads its clock as it
    leaves: the readings of one round were taken at (nearly) the same instant. The
    readings are gathered, and this rank's offset is the median over the rounds of
    (its reading - rank 0's reading), so a rank that was descheduled in one round
    does not skew it. Collective: every rank of the group must call it.

    Returns ``{"job": id, "offset_ns": offset, "spread_ns": max - min over the rounds}``,
    ``job`` a random id that rank 0 draws and broadcasts (runs of different jobs
    are not aligned with each other). ``local time - offset_ns`` is rank 0's time.
    """
    import torch
    import torch.distributed as dist

    readings = torch.zeros(rounds, dtype=torch.int64)
    for k in range(rounds):
        dist.barrier()
        readings[k] = time.perf_counter_ns()
    gathered = [torch.zeros_like(readings) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, readings)
    job = torch.tensor([secrets.randbits(62) if dist.get_rank() == 0 else 0])
    dist.broadcast(job, src=0)
    diff = (readings - gathered[0]).sort().values
    return {"job": f"{int(job.item()):016x}", "offset_ns": int(diff[rounds // 2]),
            "spread_ns": int(diff[-1] - diff[0])}


def train(out: Path, s: dict[str, Any]) -> list[Path]:
    """One rank's job (torchrun started this process): train, record, write its files."""
    import socket

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    from dlviz.datasets import SyntheticDataset
    from dlviz.recorder import trace

    torch.set_num_threads(1)  # several ranks share a few cores
    dist.init_process_group("gloo")  # rank, world size and address: from torchrun (env://)
    try:
        clock = sync_clocks()
        dataset = SyntheticDataset(s["n"], cost_ms=s["cost_ms"])  # sample i is tensor(i)
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, shuffle=s["shuffle"], seed=s["seed"], drop_last=s["sampler_drop_last"])
        loader = DataLoader(dataset, batch_size=s["batch_size"], sampler=sampler,
                            drop_last=s["drop_last"], num_workers=s["num_workers"])
        model = DistributedDataParallel(torch.nn.Linear(1, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        traced = trace(loader, keep=None)
        loss = torch.zeros(())
        for epoch in range(s["epochs"]):
            sampler.set_epoch(epoch)  # a new shuffle every epoch (the same one without it)
            for batch in traced:
                x = batch.float().unsqueeze(1) / s["n"]
                loss = torch.nn.functional.mse_loss(model(x), 2 * x + 1)
                optimizer.zero_grad()
                # DDP averages the gradients of all ranks here (a collective: ranks wait)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
        traced.close()
        rank = dist.get_rank()
        files = []
        for p, run in enumerate(traced.runs):
            run.config.update({
                "rank": rank, "world_size": dist.get_world_size(), "backend": "gloo",
                "pass": p, "epoch": p, "clock_sync": clock, "host": socket.gethostname(),
                "rank_pid": os.getpid(), "sampler_num_samples": sampler.num_samples,
                "sampler_total_size": sampler.total_size,
                "sampler_drop_last": s["sampler_drop_last"], "shuffle": s["shuffle"],
                "seed": s["seed"], "cost_ms": s["cost_ms"], "loss": float(loss.item())})
            files.append(out / f"rank{rank}-pass{p}.json")
            run.to_json(files[-1])
        dist.barrier()  # rank 0 hosts the store: nobody leaves before everyone has written
        return files
    finally:
        dist.destroy_process_group()


def fork_ranks(nproc: int, port: int, out: Path, s: dict[str, Any]) -> dict[int, list[Path]]:
    """Start ``nproc`` ranks of :func:`train` with torchrun's engine, forked from here.

    ``elastic_launch`` is what ``torchrun`` runs: it sets each rank's environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and waits for them all; with a
    function to run and ``start_method="fork"`` the ranks are forks of this process,
    which has imported torch already. Returns each rank's files.
    """
    import gc

    import torch._dynamo  # noqa: F401  (what DistributedDataParallel imports: ~800 modules)
    import torch.nn.parallel  # noqa: F401
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from dlviz.recorder import trace  # noqa: F401  (imported once, here, for every rank)

    gc.freeze()  # the ranks' garbage collector leaves these objects (and their pages) shared
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="dlviz",
                          rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{port}",
                          rdzv_configs={"rank": 0, "timeout": 900}, max_restarts=0,
                          start_method="fork", monitor_interval=0.1)
    result: dict[int, list[Path]] = elastic_launch(config, train)(out, s)
    return result


def files_of(out_dir: str | os.PathLike[str], world_size: int, epochs: int) -> list[Path]:
    """The files a job of ``world_size`` ranks and ``epochs`` epochs writes, by pass then rank."""
    return [Path(out_dir) / f"rank{r}-pass{p}.json" for p in range(epochs)
            for r in range(world_size)]


def _settings(given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r}; the settings are {sorted(SETTINGS)}")
    s = {**SETTINGS, **given}
    for name in ("shuffle", "drop_last", "sampler_drop_last"):
        _check.flag(name, s[name])
    _check.count("epochs", s["epochs"], minimum=1, maximum=1000)
    _check.count("n", s["n"], minimum=1, maximum=10**7)
    _check.count("batch_size", s["batch_size"], minimum=1)
    _check.count("num_workers", s["num_workers"], maximum=64)
    _check.count("seed", s["seed"])
    s["cost_ms"] = _check.non_negative("cost_ms", s["cost_ms"], maximum=1000)
    return s


def _option(name: str) -> str:
    """A setting's command-line option: ``--batch-size``; ``n`` is ``--samples`` (torchrun
    would take ``--n`` for an abbreviation of its own ``--nnodes``, and stop)."""
    return "--samples" if name == "n" else "--" + name.replace("_", "-")


def _arguments(s: dict[str, Any]) -> list[str]:
    """``s`` as this script's command-line arguments."""
    out = []
    for name, value in s.items():
        option = _option(name)
        if isinstance(value, bool):
            out += [option] if value else []
        else:
            out += [option, str(value)]
    return out


def launch(nproc: int, out_dir: str | os.PathLike[str], *, timeout_s: float = 300.0,
           launcher: str = "torchrun", **settings: Any) -> list[Path]:
    """Run this job under torchrun with ``nproc`` CPU ranks on this machine; its files.

    ``launcher="torchrun"``: runs ``python -m torch.distributed.run --nproc-per-node
    nproc --master-addr 127.0.0.1 --master-port <a free port> -m dlviz.job --out
    out_dir ...`` in a subprocess, as you would in a terminal: every rank is a fresh
    Python that imports torch (about 145 MiB of its own each, and torchrun's too).
    ``launcher="fork"`` (Linux, macOS): ``python -m dlviz.job --fork-ranks nproc ...``
    starts the ranks with torchrun's own engine (``torch.distributed.launcher.api.
    elastic_launch``, the same environment, rendezvous and process group) from one
    process that imported torch once and *forks* them, so the ranks share its memory:
    how lesson 9 stays within a learner's memory. ``settings`` are :data:`SETTINGS`
    (``epochs``, ``n``, ``batch_size``, ``num_workers``, ``shuffle``, ``drop_last``,
    ``sampler_drop_last``, ``seed``, ``cost_ms``). Files ``rank*-pass*.json`` already in
    ``out_dir`` are deleted first, so the files returned are this job's.

    Returns the files, pass by pass and rank by rank (:func:`files_of`).
    Raises ``TypeError``/``ValueError`` for a bad argument, ``RuntimeError`` if the job
    fails (with the end of its output), ``TimeoutError`` after ``timeout_s``. On a
    timeout, an error or Ctrl-C, torchrun and its ranks are stopped (their whole
    process group) before this returns. Lesson 9.
    """
    world = _check.count("nproc", nproc, minimum=1, maximum=MAX_WORLD_SIZE)
    launcher = _check.choice("launcher", launcher, ("torchrun", "fork"))
    if launcher == "fork" and os.name != "posix":
        raise ValueError("launcher='fork' needs fork (Linux, macOS); use 'torchrun'")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a str or a pathlib.Path, not {type(out_dir).__name__}")
    timeout = _check.non_negative("timeout_s", timeout_s)
    if timeout == 0:
        raise ValueError("timeout_s must be > 0")
    s = _settings(settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*-pass*.json"):
        old.unlink()
    from dlviz.distributed import _loopback_interface, free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(_SHUTDOWN_S),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")]))}
    interface = _loopback_interface()
    if interface is not None:
        env.setdefault("GLOO_SOCKET_IFNAME", interface)  # gloo listens on loopback only
    port = free_port()
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
                   "--master-addr=127.0.0.1", f"--master-port={port}",
                   "-m", "dlviz.job", "--out", str(out), *_arguments(s)]
    else:
        command = [sys.executable, "-m", "dlviz.job", "--fork-ranks", str(world),
                   "--master-port", str(port), "--out", str(out), *_arguments(s)]
    posix = os.name == "posix"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=posix)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, posix)
        raise TimeoutError(f"launch: the job did not finish within timeout_s={timeout:g} s; "
                           "torchrun and its ranks were stopped") from None
    except BaseException:  # Ctrl-C, or anything else: no rank is left running
        _stop(proc, posix)
        raise
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise RuntimeError(f"launch: torchrun exited with status {proc.returncode}:\n{tail}")
    files = files_of(out, world, s["epochs"])
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise RuntimeError(f"launch: the job finished but did not write {missing}")
    return files


def _stop(proc: subprocess.Popen[str], posix: bool) -> None:
    """Stop torchrun and everything it started.

    torchrun starts each rank in a session of its own, and stops them when it gets
    SIGTERM (within ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds, set by :func:`launch`).
    So: SIGTERM to torchrun's process group, a wait, then SIGKILL to its group and to
    each rank's group (a rank and its DataLoader workers), found before the SIGTERM.
    """
    if not posix:  # Windows: no process groups to signal; torchrun stops its ranks
        proc.terminate()
        try:
            proc.communicate(timeout=_SHUTDOWN_S + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
        return
    groups = [proc.pid, *_children(proc.pid)]
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=_SHUTDOWN_S + 5)
    except subprocess.TimeoutExpired:
        pass
    for group in groups:  # whatever is left
        _signal_group(group, signal.SIGKILL)
    proc.wait()


_SHUTDOWN_S = 5  # how long torchrun gives its ranks to exit after SIGTERM


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's /proc; elsewhere none are found)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone already


def main(argv: Sequence[str] | None = None) -> int:
    """The training script's command line (what torchrun runs in every rank)."""
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m dlviz.job",
        description="A tiny DDP training job on CPU (gloo) whose DataLoader is recorded; "
        "each rank writes OUT/rank{r}-pass{p}.json. Merge them with python -m dlviz merge.")
    parser.add_argument("--out", required=True, type=Path, help="folder for the run files")
    parser.add_argument("--fork-ranks", type=int, default=0, metavar="N",
                        help="not under torchrun: start N ranks with torchrun's engine, "
                        "forked from this process (they share its torch)")
    parser.add_argument("--master-port", type=int, default=29500,
                        help="with --fork-ranks: the port of rank 0's store")
    for name, default in SETTINGS.items():
        if isinstance(default, bool):
            parser.add_argument(_option(name), dest=name, action="store_true")
        else:
            parser.add_argument(_option(name), dest=name, type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    out, forked, port = args.pop("out"), args.pop("fork_ranks"), args.pop("master_port")
    try:
        s = _settings(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if forked:
        out.mkdir(parents=True, exist_ok=True)
        for paths in fork_ranks(forked, port, out, s).values():
            for path in paths:
                print(f"wrote {path}", flush=True)
        return 0
    if "RANK" not in os.environ:
        parser.error("run me under torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR...): "
                     "torchrun --nproc-per-node 2 -m dlviz.job --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    for path in train(out, s):
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
