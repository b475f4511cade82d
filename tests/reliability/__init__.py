"""What the fault tests share: loads that outlive a restart of their server, and a /metrics probe that
runs while a fault lasts (the webhook's notifications are stamped by the Alertmanager fixture).

Everything here drives real servers the tests started themselves; nothing is mocked.
"""

from __future__ import annotations

import http.client
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tests.support import BackgroundLoop, Series, parse_metrics

SELF_PREFIX = "tierwatch_collector_"
UP = "tierwatch_collector_up"
ERRORS = "tierwatch_collector_errors_total"
LAST_SUCCESS = "tierwatch_collector_last_success_timestamp_seconds"
# Looping clients stop by themselves after this, whatever the test does: a failed test must not leave
# sessions running against the shared servers.
LOAD_SECONDS = 60.0
OPENERS = 16  # connections opened in parallel when a load (re)connects after a restart

Handle = TypeVar("Handle")
TargetKey = tuple[str, str]  # (collector, target)


class HeldConnections(Generic[Handle]):
    """``count`` idle client connections, reopened all at once after their server restarted, as an
    application's pool does; the tests use them to hold a server near its connection limit."""

    def __init__(
        self, count: int, open_one: Callable[[], Handle], close_one: Callable[[Handle], None]
    ) -> None:
        self._count = count
        self._open_one = open_one
        self._close_one = close_one
        self._handles: list[Handle] = []

    def __enter__(self) -> HeldConnections[Handle]:
        self.reopen()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reopen(self) -> float:
        """Closes what is held (broken or not) and opens ``count`` again; returns the seconds it took."""
        started = time.monotonic()
        self.close()
        with ThreadPoolExecutor(OPENERS) as pool:
            opening = [pool.submit(self._open_one) for _ in range(self._count)]
        self._handles = [future.result() for future in opening if future.exception() is None]
        failure = next((error for future in opening if (error := future.exception()) is not None), None)
        if failure is not None:
            self.close()  # none of a half-opened set stays behind
            raise failure
        return time.monotonic() - started

    def close(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            with suppress(Exception):  # a connection its server already dropped
                self._close_one(handle)


class LoopingClients:
    """``count`` threads, each connecting and running ``statement`` back to back, reconnecting after
    any failure: clients of a pooler that keep queueing while it is killed and come back after."""

    RETRY_SECONDS = 0.1

    def __init__(self, count: int, connect: Callable[[], Any], statement: str) -> None:
        self._connect = connect
        self._statement = statement
        self._stop = threading.Event()
        self._deadline = time.monotonic() + LOAD_SECONDS
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def __enter__(self) -> LoopingClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _run(self) -> None:
        while self._running():
            try:
                with self._connect() as connection:
                    while self._running():
                        connection.execute(self._statement)
            except Exception:  # the pooler went away mid-statement: reconnect, as an app's pool does
                self._stop.wait(self.RETRY_SECONDS)


@dataclass(frozen=True)
class Scrape:
    sent: float  # time.monotonic() when the request left
    received: float  # time.monotonic() when the whole body was in
    status: int  # 0: no answer at all
    body: bytes

    @property
    def latency(self) -> float:
        return self.received - self.sent

    def self_metrics(self) -> Series:
        """The ``tierwatch_collector_*`` series only: parsing the whole page ~100 times per fault
        would cost the test process more than the checks need."""
        lines = [
            line
            for line in self.body.decode().splitlines()
            if line.startswith((SELF_PREFIX, f"# HELP {SELF_PREFIX}", f"# TYPE {SELF_PREFIX}"))
        ]
        return parse_metrics("\n".join(lines) + "\n")


class Probe(BackgroundLoop):
    """GETs /metrics at a steady pace over one kept-alive connection, as Prometheus does, on a thread
    of its own; keeps every answer's timing and body for the checks after the fault."""

    def __init__(self, port: int, period: float) -> None:
        self._port = port
        self._period = period
        self.scrapes: list[Scrape] = []
        super().__init__("metrics-probe")

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=5)
        next_at = time.monotonic()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                status, body = response.status, response.read()
            except (OSError, http.client.HTTPException):
                connection.close()  # counted as no answer; the next request reconnects
                status, body = 0, b""
            self.scrapes.append(Scrape(sent, time.monotonic(), status, body))
            # A fixed schedule, not a fixed sleep: a slow answer does not thin out the samples.
            next_at += self._period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        connection.close()

    def between(self, start: float, end: float) -> list[Scrape]:
        return [scrape for scrape in self.scrapes if start <= scrape.sent <= end]


def p99(values: Iterable[float]) -> float:
    """Nearest-rank 99th percentile: of 100 values, the second largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def success_gaps(scrapes: list[Scrape], key: TargetKey) -> list[float]:
    """Seconds between the successive successful cycles of ``key`` seen in ``scrapes``."""
    stamps = sorted(
        {
            stamp
            for scrape in scrapes
            if (stamp := scrape.self_metrics().get((LAST_SUCCESS, self_labels(key)))) is not None
        }
    )
    return [later - earlier for earlier, later in itertools.pairwise(stamps)]


def self_labels(key: TargetKey, **extra: str) -> frozenset[tuple[str, str]]:
    """The label set of a self-metric series of ``key``, as ``parse_metrics`` keys it."""
    return frozenset({"collector": key[0], "target": key[1], **extra}.items())
