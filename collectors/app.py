"""App tier on a shared host: CPU and memory of the processes matched by name.

``process`` is a regular expression searched in each process's name, then in its command line (so
``gunicorn`` finds workers whose name is ``python3``). CPU comes from per-process CPU-time deltas
keyed by (pid, start time), so a reused pid never inherits another process's counters.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import psutil

from agent.config import ConfigError
from agent.config.model import AppTarget, Config
from collectors.base import Collector, CollectorError, Column, Kind, MetricSpec, Reading, Reason, Sample, Unit
from collectors.deltas import Deltas

G = Kind.GAUGE
APP_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("app_processes", G, "Processes matching the app's process pattern."),
    MetricSpec("app_process_cpu_cores", G, "CPU cores used by the matched processes over the last cycle."),
    MetricSpec("app_process_cpu_ratio", G, "CPU used by the matched processes / the host's CPU capacity."),
    MetricSpec("app_process_resident_memory_bytes", G, "Resident memory of the matched processes."),
)
PROCESS_ATTRS = ("name", "cmdline", "cpu_times", "memory_info", "create_time")


class AppCollector(Collector):
    name = "app"
    tier = "app"
    metrics = APP_METRICS
    readings = (
        Reading(Column.UTILIZATION, "cpu", "app_process_cpu_ratio", Unit.RATIO),
        Reading(Column.UTILIZATION, "rss", "app_process_resident_memory_bytes", Unit.BYTES),
    )

    def __init__(
        self,
        target: str,
        process: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(target)
        self._pattern = re.compile(process)
        self._clock = clock
        self._wall_clock = wall_clock
        self._deltas = Deltas()
        self._cpus = psutil.cpu_count() or 1

    def describe(self) -> str:
        return f"app {self.target} (processes matching {self._pattern.pattern!r})"

    def _matches(self, info: dict[str, object]) -> bool:
        name = info.get("name") or ""
        if self._pattern.search(str(name)):
            return True
        cmdline = info.get("cmdline") or []
        return isinstance(cmdline, list) and bool(self._pattern.search(" ".join(map(str, cmdline))))

    def collect(self) -> Sample:
        out = self.builder()
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
        return out.build(self.name, self.target, self._wall_clock())


def build(_config: Config, entry: AppTarget) -> AppCollector:
    if not entry.process:
        raise ConfigError(f"app {entry.name}: metrics_url scraping is not in this build yet; set process")
    return AppCollector(entry.name, entry.process)
