"""CPU time of another process from the kernel's per-process CPU clock.

/proc/PID/stat's utime and stime count whole clock ticks (10 ms), as coarse as the few milliseconds
an agent cycle costs; the CPU clock counts nanoseconds, for every thread of the process, live or
exited.
"""

from __future__ import annotations

import time

CPUCLOCK_SCHED = 2


def process_cpu_clock(pid: int) -> int:
    """What clock_getcpuclockid(3) returns on Linux: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)."""
    return (~pid << 3) | CPUCLOCK_SCHED


def cpu_seconds(pid: int) -> float:
    """Raises OSError when the process is gone."""
    return time.clock_gettime(process_cpu_clock(pid))
