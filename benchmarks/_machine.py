"""What the benchmarks say about the machine they ran on."""

from __future__ import annotations

import time


def cpu_stall_us() -> int | None:
    """Total time (us) some task on this machine waited for a CPU (Linux PSI), if known."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def reference_s() -> float:
    """Seconds that a fixed piece of pure-Python work takes now (20 000 small tuples).

    Timed just before each of a series of measurements: its best time over the
    series against its median says at what share of its best speed the machine ran
    meanwhile (a shared virtual machine can run at half speed for seconds at a time).
    """
    t0 = time.perf_counter()
    rows = [(i, i, "ok", 0) for i in range(20_000)]
    elapsed = time.perf_counter() - t0
    del rows
    return elapsed
