"""App tier: one target combines what is known of one application.

Any of: ``process`` (CPU and memory of its processes on a shared host), ``metrics_url`` (its own
Prometheus page: request rate, 5xx share, latency quantiles), ``pool_size`` (its per-instance database
pool, for connection math) and ``hpa`` (the HPA that scales it, kept as evidence).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from agent.config import ConfigError
from agent.config.model import CUT_SHORT, AppTarget, Config, userinfo_cut_short
from collectors.app.metrics import APP_METRICS, APP_READINGS
from collectors.app.process import ProcessUsage
from collectors.app.scrape import Scraper
from collectors.base import Collector, Sample, SampleBuilder

# The scrape must give up before the scheduler does, leaving room for the process listing.
SCRAPE_TIMEOUT_SHARE = 0.75


class Part(Protocol):
    def describe(self) -> str: ...

    def collect(self, out: SampleBuilder) -> None: ...


class AppCollector(Collector):
    name = "app"
    tier = "app"
    metrics = APP_METRICS
    readings = APP_READINGS

    def __init__(
        self,
        target: str,
        parts: Sequence[Part],
        *,
        pool_size: int | None = None,
        hpa: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(target)
        self._parts = tuple(parts)
        self._pool_size = pool_size
        self._hpa = hpa
        self._wall_clock = wall_clock

    def describe(self) -> str:
        facts = [part.describe() for part in self._parts]
        if self._pool_size is not None:
            facts.append(f"pool size {self._pool_size}")
        if self._hpa is not None:
            facts.append(f"scaled by HPA {self._hpa}")
        return f"app {self.target} ({'; '.join(facts)})"

    def collect(self) -> Sample:
        out = self.builder()
        for part in self._parts:
            part.collect(out)
        if self._pool_size is not None:
            out.set("app_pool_size", self._pool_size)
        if self._hpa is not None:
            out.detail("hpa", self._hpa)
        return out.build(self.name, self.target, self._wall_clock())


def _check(entry: AppTarget) -> None:
    where = f"app {entry.name}"
    if not (entry.process or entry.metrics_url or entry.pool_size or entry.hpa):
        raise ConfigError(f"{where}: set at least one of process, metrics_url, pool_size, hpa")
    if entry.metrics_url is None:
        if entry.requests_metric or entry.latency_metric:
            raise ConfigError(f"{where}: requests_metric and latency_metric need metrics_url")
        return
    try:
        url = urlsplit(entry.metrics_url)
    except ValueError:  # an unclosed [ of an IPv6 address; the message is not quoted: it may hold a password
        raise ConfigError(f"{where}: metrics_url is not a URL") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{where}: metrics_url must be an http:// or https:// URL with a host")
    if userinfo_cut_short(entry.metrics_url):
        raise ConfigError(f"{where}: metrics_url: {CUT_SHORT}")
    try:
        _ = url.port  # urlsplit checks the port only when it is read, as each scrape would
    except ValueError:
        raise ConfigError(f"{where}: metrics_url has a port that is not a number from 0 to 65535") from None
    if not (entry.requests_metric or entry.latency_metric):
        raise ConfigError(f"{where}: metrics_url needs requests_metric, latency_metric or both")


def build(config: Config, entry: AppTarget) -> AppCollector:
    _check(entry)
    parts: list[Part] = []
    if entry.metrics_url:
        timeout = SCRAPE_TIMEOUT_SHARE * config.cycle_timeout
        parts.append(Scraper(entry.metrics_url, entry.requests_metric, entry.latency_metric, timeout))
    if entry.process:
        parts.append(ProcessUsage(entry.process))
    return AppCollector(entry.name, parts, pool_size=entry.pool_size, hpa=entry.hpa)
