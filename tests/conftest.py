"""Shared test set-up: every test must leave no DataLoader worker process behind."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator

import psutil
import pytest


def worker_children(recursive: bool = False) -> list[psutil.Process]:
    """Child processes that could be DataLoader workers (not multiprocessing's helpers);
    ``recursive``: grandchildren too, such as the forkserver's workers."""
    out = []
    for child in psutil.Process().children(recursive=recursive):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if "resource_tracker" in cmdline or "forkserver" in cmdline:
            continue
        if "jupyter" in cmdline or "chromium" in cmdline or "ipykernel" in cmdline:
            continue
        out.append(child)
    return out


def open_descriptors() -> dict[int, str]:
    """This process's open file descriptors and what each is (a pipe, a socket, a file)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def descriptors_gained(before: dict[int, str], settle_s: float = 2.0) -> list[str]:
    """Descriptors open now beyond ``before``'s count, as ``"fd -> what"`` (empty: none).

    Counted again (after a ``gc.collect()``) for up to ``settle_s`` while there are
    more: a descriptor closed a moment after the pass ends (by a helper thread, a
    finalizer) is not a leak, one still open then is.
    """
    give_up = time.monotonic() + settle_s
    while True:
        gc.collect()
        now = open_descriptors()
        if len(now) <= len(before):
            return []
        if time.monotonic() >= give_up:
            return [f"{fd} -> {what}" for fd, what in sorted(now.items()) if before.get(fd) != what]
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Fail a test that leaves a worker alive (1 s grace for processes still exiting)."""
    before = {p.pid for p in worker_children()}
    yield
    deadline = time.monotonic() + 1.0
    while True:
        leaked = [p for p in worker_children() if p.pid not in before]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"worker processes left alive: {[p.pid for p in leaked]}"
