"""Shared test set-up: every test must leave no DataLoader worker process behind.

The helpers live in ``tests/helpers.py``; the names tests used to import from here
(``worker_children``, ``open_descriptors``, ``descriptors_gained``) still work.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest
from helpers import (  # noqa: F401  (re-exported for the tests that import them from here)
    descriptors_gained,
    open_descriptors,
    processes_left,
    python_sigint,
    worker_children,
)


@pytest.fixture(scope="session", autouse=True)
def fork_unless_told() -> Iterator[None]:
    """Workers start by fork unless a test names another start method: the tests
    (their hang guards, the matrix's cheap fork cases) are sized for it. Linux's
    default before Python 3.14; 3.14 defaults to forkserver, macOS to spawn, so the
    tests say so rather than inherit it. Tests of spawn and forkserver pass
    ``multiprocessing_context``, and notebooks run in their own kernels."""
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("fork", force=True)
    yield
    multiprocessing.set_start_method(previous, force=True)


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Fail a test that leaves a worker alive. A worker still exiting is waited for
    until it is gone (the wait's deadline is a hang guard: a passing test never waits
    for it, a loaded machine never fails one)."""
    before = {p.pid for p in worker_children()}
    yield
    leaked = processes_left(before, recursive=False)
    assert not leaked, f"worker processes left alive: {sorted(leaked)}"


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt during the test, even when the test command was
    started in the background with SIGINT ignored (see ``helpers.python_sigint``)."""
    with python_sigint():
        yield
