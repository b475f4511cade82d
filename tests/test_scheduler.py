"""The scheduler bounds a hung collector by its timeout while everything else keeps going.

A collector that blocks forever in a driver call cannot be produced on demand by a real server in a
repeatable way, so these tests use small collectors that block, fail or count (the error path).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo

import apscheduler.executors.base
import apscheduler.schedulers.base
import pytest

from agent import scheduler as scheduling
from agent.check import _run_cycles
from agent.exporter import MetricsPage
from agent.http import AgentServer
from agent.scheduler import CollectorRunner, Scheduler
from agent.store import Store
from alerts.signals import counter_rate
from collectors.base import Collector, CollectorError, Kind, MetricSpec, Reason, Sample
from tests.support import http_get, parse_metrics, value

TICKS = MetricSpec("test_ticks", Kind.GAUGE, "Cycles done.")
TIMEOUT = 0.3
INTERVAL = 0.2


class Ticking(Collector):
    name = "ticking"
    tier = "host"
    metrics = (TICKS,)

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.cycles = 0

    def collect(self) -> Sample:
        self.cycles += 1
        out = self.builder()
        out.set("test_ticks", self.cycles)
        return out.build(self.name, self.target, time.time())


class Blocking(Ticking):
    name = "blocking"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.release = threading.Event()
        self.started = 0

    def collect(self) -> Sample:
        self.started += 1
        self.release.wait(30)
        return super().collect()


class Failing(Ticking):
    name = "failing"

    def collect(self) -> Sample:
        raise CollectorError(Reason.AUTH, "password authentication failed for user tierwatch")


@pytest.fixture
def agent() -> Iterator[tuple[Store, AgentServer, dict[str, Ticking]]]:
    collectors: dict[str, Ticking] = {c.name: c for c in (Ticking("a"), Blocking("b"), Failing("c"))}
    store = Store()
    runners = [CollectorRunner(collector, store, TIMEOUT) for collector in collectors.values()]
    scheduler = Scheduler(runners, INTERVAL, after_each_round=lambda: None)
    page = MetricsPage(store, {c.name: c.metrics for c in collectors.values()})
    server = AgentServer(("127.0.0.1", 0), page, store)
    server.start()
    scheduler.start()
    yield store, server, collectors
    blocking = collectors["blocking"]
    assert isinstance(blocking, Blocking)
    blocking.release.set()
    scheduler.stop()
    server.stop()


def test_hung_collector_is_bounded_and_isolated(agent: tuple[Store, AgentServer, dict[str, Ticking]]) -> None:
    store, server, collectors = agent
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    time.sleep(2.0)
    started = time.perf_counter()
    status, body = http_get(url)
    assert status == 200
    assert time.perf_counter() - started < 0.5  # /metrics does not wait for the hung cycle
    series = parse_metrics(body.decode())
    assert value(series, "tierwatch_collector_up", collector="blocking", target="b") == 0
    timeouts = value(
        series, "tierwatch_collector_errors_total", collector="blocking", target="b", reason="timeout"
    )
    assert timeouts is not None
    assert timeouts >= 3
    assert value(series, "tierwatch_collector_duration_seconds", collector="blocking", target="b") >= TIMEOUT
    # the hung collect() is never started twice: later cycles report it still running
    blocking = collectors["blocking"]
    assert isinstance(blocking, Blocking)
    assert blocking.started == 1
    assert "still running" in (store.statuses()[("blocking", "b")].last_error or ("", ""))[1]
    # the other collectors kept their cycle: about 2.0 / 0.2 cycles
    assert value(series, "tierwatch_collector_up", collector="ticking", target="a") == 1
    assert value(series, "tierwatch_test_ticks", target="a") >= 6
    assert (
        value(series, "tierwatch_collector_errors_total", collector="failing", target="c", reason="auth") >= 6
    )
    # after release the collector recovers without being recreated
    blocking.release.set()
    time.sleep(1.0)
    series = parse_metrics(http_get(url)[1].decode())
    assert value(series, "tierwatch_collector_up", collector="blocking", target="b") == 1
    assert value(series, "tierwatch_test_ticks", target="b") >= 2


def test_failure_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    runner = CollectorRunner(Failing("c"), store, TIMEOUT)
    with caplog.at_level("WARNING", logger="tierwatch.scheduler"):
        for _ in range(5):
            runner.run_cycle()
    assert len(caplog.records) == 1
    assert "failing/c failed (auth)" in caplog.records[0].getMessage()
    assert store.statuses()[("failing", "c")].errors_total[Reason.AUTH] == 5


def test_down_target_exports_no_stale_series() -> None:
    store = Store()
    collector = Ticking("a")
    runner = CollectorRunner(collector, store, TIMEOUT)
    runner.run_cycle()
    assert [s.target for s in store.latest()] == ["a"]
    store.record_failure(("ticking", "a"), Reason.UNREACHABLE, "connection refused", 0.01)
    assert store.latest() == []
    assert len(store.window("ticking", "a")) == 1  # history stays for the classifier
    assert not store.statuses()[("ticking", "a")].up


def test_store_window_is_bounded_and_thinned() -> None:
    store = Store(window_seconds=100.0, capacity=10)
    collector = Ticking("a")
    for second in range(1000):
        out = collector.builder()
        out.set("test_ticks", second)
        store.record_success(out.build("ticking", "a", float(second)), 0.001)
    window = store.window("ticking", "a")
    assert len(window) <= 10
    assert window[-1].timestamp == 999.0  # the newest is always kept
    assert window[-1].timestamp - window[0].timestamp <= 100.0
    # every kept sample but the newest is at least window/capacity after its predecessor
    gaps = [later.timestamp - earlier.timestamp for earlier, later in itertools.pairwise(window[:-1])]
    assert all(gap >= 10.0 for gap in gaps)


def test_a_window_starts_again_when_the_wall_clock_is_set_back() -> None:
    """Samples carry wall time; after an NTP step back of 10 minutes, rates are known again two
    cycles later, not once the clock has caught up with the last sample before the step."""
    store, collector = Store(), Ticking("a")
    rate = counter_rate("ticks_rate", "ticking", "test_ticks")

    def cycle(timestamp: float) -> None:
        collector.cycles += 10  # a counter that keeps rising through the step, 2 per second
        out = collector.builder()
        out.set("test_ticks", collector.cycles)
        store.record_success(out.build("ticking", "a", timestamp), 0.001)

    for second in range(1000, 1100, 5):
        cycle(float(second))
    for second in (400.0, 405.0):
        cycle(second)
    window = store.window("ticking", "a")
    assert [sample.timestamp for sample in window] == [400.0, 405.0]
    assert rate.compute_target is not None
    assert rate.compute_target(window) == 2.0


def test_a_reloaded_store_carries_over_the_targets_it_still_has() -> None:
    before = Store()
    for target in ("kept", "dropped"):
        before.register("ticking", target)
        for second in range(3):
            out = Ticking(target).builder()
            out.set("test_ticks", second)
            before.record_success(out.build("ticking", target, float(second)), 0.001)
    before.record_failure(("ticking", "kept"), Reason.TIMEOUT, "slow", 0.8)
    after = Store()
    after.register("ticking", "kept")
    after.register("ticking", "new")
    after.carry_over(before, {("ticking", "kept"), ("ticking", "new"), ("ticking", "dropped")})
    assert after.window("ticking", "kept") == before.window("ticking", "kept")
    assert [sample.get("test_ticks") for sample in after.window("ticking", "kept")] == [0, 2]  # thinned
    statuses = after.statuses()
    assert statuses[("ticking", "kept")].errors_total[Reason.TIMEOUT] == 1
    assert statuses[("ticking", "kept")].cycles == 4
    assert statuses[("ticking", "new")].cycles == 0
    assert ("ticking", "dropped") not in statuses
    assert after.window("ticking", "dropped") == ()
    assert after.latest() == []  # the kept target's last cycle failed: no series until it answers


def test_check_reports_a_hung_collector_and_does_not_wait_for_it() -> None:
    """`tierwatch check` runs two cycles by itself: a hung collector is reported in each, once past
    the timeout, and the other targets' cycles are recorded."""
    store = Store()
    blocking, ticking = Blocking("b"), Ticking("a")
    runners = [CollectorRunner(collector, store, TIMEOUT) for collector in (blocking, ticking)]
    started = time.monotonic()
    try:
        _run_cycles(runners, 0.1, TIMEOUT)
        elapsed = time.monotonic() - started
        statuses = store.statuses()
    finally:
        blocking.release.set()
    assert TIMEOUT + 0.1 <= elapsed < TIMEOUT + 1.0  # the second cycle does not wait for the hung one
    assert statuses[("blocking", "b")].errors_total[Reason.TIMEOUT] == 2
    assert blocking.started == 1  # the second cycle found the first still running
    assert statuses[("ticking", "a")].cycles == 2
    assert statuses[("ticking", "a")].up


class SetBack(datetime):
    """The wall clock as APScheduler reads it, ``offset`` away from the real one. Stepping the real
    clock needs CAP_SYS_TIME and would move it under every other process of the machine."""

    offset = timedelta(0)

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:
        return super().now(tz) + cls.offset


def test_collection_goes_on_when_the_wall_clock_is_set_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NTP step back of a minute must not hold every cycle (and the alerting run) for a minute."""
    for module in (apscheduler.schedulers.base, apscheduler.executors.base, scheduling):
        monkeypatch.setattr(module, "datetime", SetBack)
    monkeypatch.setattr(SetBack, "offset", timedelta(0))
    store, rounds = Store(), []
    scheduler = Scheduler(
        [CollectorRunner(Ticking("a"), store, TIMEOUT)], INTERVAL, after_each_round=lambda: rounds.append(1)
    )
    scheduler.start()
    try:
        time.sleep(5 * INTERVAL)
        before = store.statuses()[("ticking", "a")].cycles, len(rounds)
        assert min(before) >= 2
        SetBack.offset = timedelta(seconds=-60)
        time.sleep(10 * INTERVAL)
        after = store.statuses()[("ticking", "a")].cycles, len(rounds)
    finally:
        scheduler.stop()
    assert after[0] - before[0] >= 5
    assert after[1] - before[1] >= 5
