"""CPU and memory of the app's processes on a shared host, matched by name.

``process`` is a regular expression searched in each process's name, then in its command line (so
``gunicorn`` finds workers whose name is ``python3``). CPU comes from per-process CPU-time deltas
keyed by (pid, start time), so a reused pid never inherits another process's counters. The agent's
own process never counts, even when the pattern matches its command line.
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
    def __init__(self, pattern: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._pattern = re.compile(pattern)
        self._clock = clock
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
                if used is None:
                    complete = False  # new process: its share of this cycle is unknown
                else:
                    cpu_seconds += used
        except psutil.Error as error:
            raise CollectorError(Reason.OTHER, f"listing processes failed: {error}") from None
        out.set("app_processes", count)
        out.set("app_process_resident_memory_bytes", rss)
        if elapsed and (complete or cpu_seconds > 0):
            out.set("app_process_cpu_cores", cpu_seconds / elapsed)
            out.set("app_process_cpu_ratio", cpu_seconds / elapsed / self._cpus)
