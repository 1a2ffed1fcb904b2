"""What the benchmarks say about the machine they ran on."""

from __future__ import annotations


def cpu_stall_us() -> int | None:
    """Total time (us) some task on this machine waited for a CPU (Linux PSI), if known."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None
