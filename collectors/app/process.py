"""CPU and memory of the app's processes on a shared host, matched by name.

``process`` is a regular expression searched in each process's name, then in its command line (so
``gunicorn`` finds workers whose name is ``python3``). CPU comes from per-process CPU-time deltas
keyed by (pid, start time), so a reused pid never inherits another process's counters. The agent's
own process never counts, even when the pattern matches its command line. A process started since the
last cycle (a worker a server recycles after so many requests) used all its CPU time within this cycle.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import psutil

from collectors.base import CollectorError, Reason, SampleBuilder
from collectors.deltas import Deltas

PROCESS_ATTRS = ("name", "cmdline", "cpu_times", "memory_info", "create_time")


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

    def _matches(self, info: dict[str, object]) -> bool:
        name = info.get("name") or ""
        if self._pattern.search(str(name)):
            return True
        cmdline = info.get("cmdline") or []
        return isinstance(cmdline, list) and bool(self._pattern.search(" ".join(map(str, cmdline))))

    def collect(self, out: SampleBuilder) -> None:
        elapsed = self._deltas.begin(self._clock())
        last_cycle_at, self._last_cycle_at = self._last_cycle_at, self._since_boot()
        boot_time = psutil.boot_time()
        own_pid = os.getpid()
        count, rss, cpu_seconds, complete = 0, 0, 0.0, True
        try:
            for process in psutil.process_iter(PROCESS_ATTRS):
                info = process.info
                if process.pid == own_pid or info["cpu_times"] is None or not self._matches(info):
                    continue  # processes that vanished or deny access report None attributes
                count += 1
                rss += info["memory_info"].rss if info["memory_info"] else 0
                times = info["cpu_times"]
                used = self._deltas.delta((process.pid, info["create_time"]), times.user + times.system)
                started = info["create_time"] - boot_time
                if used is None and last_cycle_at is not None and started > last_cycle_at:
                    used = times.user + times.system  # started within this cycle
                if used is None:
                    complete = False  # running before this cycle, first seen now: its share is unknown
                else:
                    cpu_seconds += used
        except psutil.Error as error:
            raise CollectorError(Reason.OTHER, f"listing processes failed: {error}") from None
        out.set("app_processes", count)
        out.set("app_process_resident_memory_bytes", rss)
        if elapsed and (complete or cpu_seconds > 0):
            out.set("app_process_cpu_cores", cpu_seconds / elapsed)
            out.set("app_process_cpu_ratio", cpu_seconds / elapsed / self._cpus)
