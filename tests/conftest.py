"""Shared test set-up: every test must leave no DataLoader worker process behind."""

from __future__ import annotations

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
