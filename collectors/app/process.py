"""CPU and memory of the app's processes on a shared host, matched by name.

``process`` is a regular expression searched in each process's name, then in its command line (so
``gunicorn`` finds workers whose name is ``python3``). CPU comes from per-process CPU-time deltas
keyed by (pid, start time), so a reused pid never inherits another process's counters. The agent's
own process never counts, even when the pattern matches its command line. A process started since the
last cycle (a worker a server recycles after so many requests) used all its CPU time within this cycle;
one that started and exited between two cycles (a child forked per request) is never seen.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import psutil

from collectors.base import SampleBuilder
from collectors.deltas import Deltas


class ProcessUsage:
    def __init__(
        self,
        pattern: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        since_boot: Callable[[], float] = lambda: time.clock_gettime(time.CLOCK_BOOTTIME),
    ) -> None:
        self._pattern = re.compile(pattern)
        self._clock = clock
        # Start times are compared in seconds since boot, as the kernel keeps them: psutil's wall-clock
        # create_time adds a boot time rounded to the second, too coarse to tell this cycle from the last.
        self._since_boot = since_boot
        self._last_cycle_at: float | None = None
        self._deltas = Deltas()
        self._cpus = psutil.cpu_count() or 1

    def describe(self) -> str:
        return f"processes matching {self._pattern.pattern!r}"

    def _matches(self, process: psutil.Process) -> bool:
        if self._pattern.search(process.name()):
            return True
        return bool(self._pattern.search(" ".join(process.cmdline())))

    def collect(self, out: SampleBuilder) -> None:
        elapsed = self._deltas.begin(self._clock())
        last_cycle_at, self._last_cycle_at = self._last_cycle_at, self._since_boot()
        boot_time = psutil.boot_time()
        # Our pid as the procfs read numbers it: in a container reading the host's procfs without the
        # host's PID namespace, os.getpid() is another process's pid there.
        own_pid = int(os.readlink(f"{psutil.PROCFS_PATH}/self"))
        count, rss, cpu_seconds, complete = 0, 0, 0.0, True
        for pid in psutil.pids():
            if pid == own_pid:
                continue
            try:
                # A new Process each cycle: psutil.process_iter's cached ones keep the start time of
                # the process that had the pid before, so a reused pid was taken for that process.
                process = psutil.Process(pid)
                with process.oneshot():
                    if not self._matches(process):
                        continue
                    times, memory = process.cpu_times(), process.memory_info()
                cpu = times.user + times.system
                # psutil tells processes apart by pid and start time: a reused pid is another key.
                used = self._deltas.delta(process, cpu)
                # Only for a process first seen: create_time reads <procfs>/stat for the boot time.
                if (
                    used is None
                    and last_cycle_at is not None
                    and process.create_time() - boot_time > last_cycle_at
                ):
                    used = cpu  # started within this cycle
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited since the listing, or hidden from this user
            count += 1
            rss += memory.rss
            if used is None:
                complete = False  # running before this cycle, first seen now: its share is unknown
            else:
                cpu_seconds += used
        out.set("app_processes", count)
        out.set("app_process_resident_memory_bytes", rss)
        if elapsed and (complete or cpu_seconds > 0):
            out.set("app_process_cpu_cores", cpu_seconds / elapsed)
            out.set("app_process_cpu_ratio", cpu_seconds / elapsed / self._cpus)
