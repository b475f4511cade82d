"""Faults against one agent that runs every collector: PostgreSQL paused (SIGSTOP) and restarted,
PgBouncer killed, Redis restarted, the Kubernetes API hanging, Alertmanager down and back.

For each fault, caused for real against a server the tests started:
- it is reported (``tierwatch_collector_up`` 0 and ``tierwatch_collector_errors_total{reason}`` up)
  within the cycle timeout plus one interval, plus SCHEDULING_MARGIN, from the moment it was caused;
- every other collector keeps its cycle (no missed cycle in its last-success timestamps);
- /metrics answers every request of a kept-alive client, p99 under 50 ms;
- no alert is lost: the alerts firing before the fault, one of them on the faulted target itself, still
  fire afterwards with the same start, Alertmanager holds them and never got a resolution of them;
- the target is collected again (up 1) by the same agent process.

One agent serves the whole module; each test first waits for the steady state it starts from, so any
test also runs alone. The figures are printed: run with -s to see them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from alerts.names import ALERT_NAMES
from tests.fixtures.alertmanager_server import Alertmanager, StampedNotifications, Webhook
from tests.fixtures.app_server import AppServer
from tests.fixtures.kube_api import NAMESPACE, KubeApiServer
from tests.fixtures.pgbouncer_server import STATS_USER, PgBouncerServer, running
from tests.fixtures.postgres_server import APP_ROLE, MONITOR_ROLE, PostgresServer
from tests.fixtures.redis_server import RedisServer, RedisServers
from tests.reliability import (
    ERRORS,
    UP,
    HeldConnections,
    LoopingClients,
    Probe,
    Scrape,
    TargetKey,
    p99,
    self_labels,
    success_gaps,
)
from tests.scenarios import quiet_host
from tests.support import AgentProcess, http_get, require_tool, value

# Also checked for the whole module: no fault makes the agent open a second connection to a database.
pytestmark = pytest.mark.usefixtures("one_connection_per_target")

INTERVAL = 0.5
CYCLE_TIMEOUT = 0.8 * INTERVAL  # the agent's default cycle timeout
# On top of "timeout plus one cycle": the probe's spacing (35 ms), a job that APScheduler starts a few
# ms late, and this 2-CPU machine running the servers, the agent and the test process at once.
SCHEDULING_MARGIN = 0.2
REPORT_BOUND = CYCLE_TIMEOUT + INTERVAL + SCHEDULING_MARGIN
# Rules fire after 1 s and keep firing for KEEP_FIRING once their condition stops holding. Each fault
# lasts HOLD, so its target is unknown from its report (at most REPORT_BOUND, 1.1 s) to the end of the
# fault, 2.4 s or more: longer than KEEP_FIRING plus a cycle (2 s), so an agent that let go of an alert
# while its target is unknown would resolve it during the fault, where the test sees it. The
# keep-firing window also bridges the moment after a restart before the test's clients are back.
KEEP_FIRING = 1.5
HOLD = 3.5
PROBE_PERIOD = HOLD / 100  # ~100 requests over each fault
P99_BOUND = 0.050
RECOVERY_TIMEOUT = 15.0  # PostgreSQL's reconnection backoff doubles: 1, 2, 4 s ...
ALERT_TIMEOUT = 20.0
TARGETS = 6  # host, postgres, pgbouncer, redis, kubernetes, app

RESEND_INTERVAL = 1.0
# The sender tries again at the next re-send (or retry) and is woken by every alerting cycle.
ALERTMANAGER_REPORT_BOUND = RESEND_INTERVAL + INTERVAL + SCHEDULING_MARGIN
# One retry period, then Alertmanager's own dispatch (group_wait 0s) to the webhook.
REDELIVERY_BOUND = RESEND_INTERVAL + 1.0

HELD_POSTGRES = 92  # of max_connections 100 (97 usable): ConnectionPoolExhaustion on the server
REDIS_MAXCLIENTS = 20
HELD_REDIS = 18  # plus the agent: 95% of maxclients, RedisConnectionsExhausted
QUEUED_CLIENTS = 6  # through PgBouncer's pool of 2: clients wait, ConnectionPoolExhaustion on the pool
POOLER_WAIT_THRESHOLD = 0.2  # seconds the longest client waited; 1 s by default, shorter to refire fast

POSTGRES: TargetKey = ("postgres", "main")
PGBOUNCER: TargetKey = ("pgbouncer", "pool")
REDIS: TargetKey = ("redis", "cache")
KUBERNETES: TargetKey = ("kubernetes", NAMESPACE)

AlertKey = tuple[str, str]  # (alertname, target)
POOL_EXHAUSTED: AlertKey = ("ConnectionPoolExhaustion", "main")
POOLER_QUEUE: AlertKey = ("ConnectionPoolExhaustion", "pool")
REDIS_FULL: AlertKey = ("RedisConnectionsExhausted", "cache")
SCALING_CEILING: AlertKey = ("HorizontalScalingCeiling", "shop/web")
# What the recorded cluster raises with no load at all: web is at maxReplicas and still above its
# target, and its pool of 20 connections x 6 replicas exceeds the database's 97 usable ones.
BASELINE = frozenset({SCALING_CEILING, ("ConnectionBudgetExceededAtMaxScale", "main")})


@dataclass
class Stack:
    agent: AgentProcess
    postgres: PostgresServer
    pooler: PgBouncerServer
    redis: RedisServer
    kube: KubeApiServer
    alertmanager: Alertmanager
    inbox: StampedNotifications

    def firing(self) -> dict[AlertKey, dict[str, Any]]:
        status, body = http_get(f"{self.agent.url}/api/v1/alerts")
        assert status == 200
        return {(a["name"], a["target"]): a for a in json.loads(body) if a["state"] == "firing"}

    def at_alertmanager(self) -> dict[AlertKey, datetime]:
        """The alerts Alertmanager holds as active, with their start."""
        return {
            (a["labels"]["alertname"], a["labels"]["target"]): datetime.fromisoformat(a["startsAt"])
            for a in self.alertmanager.alerts()
        }

    def all_up(self) -> bool:
        ups = [v for (name, _), v in self.agent.metrics().items() if name == UP]
        return len(ups) == TARGETS and all(v == 1 for v in ups)

    def wait_steady(self, expected: frozenset[AlertKey]) -> dict[AlertKey, dict[str, Any]]:
        """Waits until every collector is up and exactly ``expected`` fire, held by Alertmanager."""
        self.agent.wait_for(
            lambda: (
                self.all_up() and set(self.firing()) == expected and expected <= set(self.at_alertmanager())
            ),
            f"every collector up and exactly {sorted(expected)} firing and delivered",
            ALERT_TIMEOUT,
        )
        return self.firing()

    def resolutions(self, since: float) -> list[AlertKey]:
        return [
            (alert["labels"]["alertname"], alert["labels"]["target"])
            for _, alert in self.inbox.since(since)
            if alert["status"] == "resolved"
        ]


def agent_config(
    workdir: Path,
    postgres: PostgresServer,
    pooler: PgBouncerServer,
    redis_server: RedisServer,
    kube: KubeApiServer,
    app: AppServer,
    alertmanager: Alertmanager,
) -> dict[str, Any]:
    postgres_password = workdir / "postgres-password"
    postgres_password.write_text(postgres.passwords[MONITOR_ROLE])
    pooler_password = workdir / "pgbouncer-password"
    pooler_password.write_text(pooler.passwords[STATS_USER])
    rules: dict[str, dict[str, Any]] = {
        name: {"for": 1, "keep_firing_for": KEEP_FIRING} for name in ALERT_NAMES
    }
    rules["ConnectionPoolExhaustion"]["longest_wait_seconds"] = POOLER_WAIT_THRESHOLD
    # Whether it fires depends on the recorded pods' ages, which grow with the test session (the
    # recordings are shifted once, when it starts); it is not what these tests are about.
    rules["NewInstancesUnhealthy"] = {"enabled": False}
    return {
        "interval": INTERVAL,
        "host": quiet_host(),
        "postgres": [{"name": POSTGRES[1], "dsn": postgres.dsn(), "password_file": str(postgres_password)}],
        "pgbouncer": [{"name": PGBOUNCER[1], "dsn": pooler.dsn(), "password_file": str(pooler_password)}],
        "redis": [{"name": REDIS[1], "url": redis_server.url}],
        "kubernetes": kube.agent_section(workdir),
        "app": [app.agent_entry("web", pool_size=20, hpa="web")],
        "alertmanager": {"urls": [alertmanager.url], "resend_interval": RESEND_INTERVAL, "timeout": 1},
        "rules": rules,
    }


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    pgbouncer_server: PgBouncerServer,
    redis_binary: str,
    kube_api_server: KubeApiServer,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("faults")
    alertmanager_binary = require_tool("prometheus-alertmanager", "/usr/bin/prometheus-alertmanager")
    with ExitStack() as cleanup:
        # Redis, the app and Alertmanager are this module's own: restarting them disturbs no other test.
        redis_servers = RedisServers(redis_binary, workdir)
        cleanup.callback(redis_servers.stop_all)
        redis_server = redis_servers.start(f"maxclients {REDIS_MAXCLIENTS}")
        app = AppServer()
        cleanup.callback(app.stop)
        webhook = Webhook()
        cleanup.callback(webhook.close)
        inbox = StampedNotifications()
        webhook.notifications = inbox
        (workdir / "alertmanager").mkdir()
        alertmanager = Alertmanager(alertmanager_binary, workdir / "alertmanager", webhook)
        cleanup.callback(alertmanager.stop)
        alertmanager.start()
        kube_api_server.reset()
        cleanup.callback(kube_api_server.reset)
        config = agent_config(
            workdir, postgres_server, pgbouncer_server, redis_server, kube_api_server, app, alertmanager
        )
        agent = cleanup.enter_context(AgentProcess(workdir, config))
        yield Stack(
            agent, postgres_server, pgbouncer_server, redis_server, kube_api_server, alertmanager, inbox
        )


def self_value(scrape: Scrape, name: str, key: TargetKey, **extra: str) -> float | None:
    return scrape.self_metrics().get((name, self_labels(key, **extra)))


def up(stack: Stack, key: TargetKey) -> float | None:
    return stack.agent.metrics().get((UP, self_labels(key)))


def check_others_kept_their_cycle(probe: Probe, start: float, end: float, faulted: TargetKey | None) -> int:
    """Every collector but ``faulted`` succeeded every cycle between ``start`` and ``end``; returns the
    fewest successful cycles any of them had."""
    during = probe.between(start, end)
    keys = {
        (dict(labels)["collector"], dict(labels)["target"])
        for name, labels in during[0].self_metrics()
        if name == UP
    }
    others = sorted(keys - {faulted})
    assert len(others) == (TARGETS if faulted is None else TARGETS - 1), others
    fewest = len(during)
    for key in others:
        gaps = success_gaps(during, key)
        assert gaps, f"{key} did not succeed during the fault"
        # a missed cycle shows as a gap of two intervals
        assert max(gaps) < 1.5 * INTERVAL, f"{key} missed a cycle during the fault: gaps {gaps}"
        fewest = min(fewest, len(gaps))
    assert fewest >= (end - start) / INTERVAL - 2
    return fewest


def check_latency(probe: Probe, start: float, end: float) -> tuple[int, float, float]:
    """Every request answered; returns (requests during the fault, their p99, the slowest)."""
    assert all(scrape.status == 200 for scrape in probe.scrapes), "/metrics failed to answer"
    latencies = [scrape.latency for scrape in probe.between(start, end)]
    assert len(latencies) >= 80
    assert p99(latencies) < P99_BOUND, sorted(latencies)[-5:]
    return len(latencies), p99(latencies), max(latencies)


def check_no_alert_lost(
    stack: Stack,
    before: dict[AlertKey, dict[str, Any]],
    since: float,
) -> None:
    """Every alert firing before the fault still fires as the same alert (same start), Alertmanager
    holds it, and no resolution of it was notified since ``since``."""
    after = stack.firing()
    delivered = stack.at_alertmanager()
    for key, alert in before.items():
        assert key in after, f"{key} was lost: firing {sorted(after)}"
        assert after[key]["active_since"] == alert["active_since"], f"{key} was resolved and fired again"
        assert key in delivered, f"{key} is not at Alertmanager: {sorted(delivered)}"
    # A resolution of the previous test's alert may still be on its way; only these count.
    resolved = [key for key in stack.resolutions(since) if key in before]
    assert not resolved, f"resolutions notified during the fault: {resolved}"


@dataclass
class Outcome:
    name: str
    reported_after: float  # seconds from causing the fault to the first /metrics saying so
    requests: int
    p99: float
    slowest: float
    fewest_cycles_of_others: int
    recovered_after: float  # seconds from the end of the fault to up 1

    def show(self) -> None:
        print(
            f"\n[{self.name}] reported after {self.reported_after * 1000:.0f} ms "
            f"(bound {REPORT_BOUND * 1000:.0f} ms); /metrics p99 {self.p99 * 1000:.1f} ms, slowest "
            f"{self.slowest * 1000:.1f} ms over {self.requests} requests; every other collector "
            f"{self.fewest_cycles_of_others}+ cycles, none missed; up again "
            f"{self.recovered_after:.1f} s after the fault ended"
        )


def run_fault(
    stack: Stack,
    name: str,
    faulted: TargetKey,
    reason: str,
    fault: AbstractContextManager[Any],
    held: AlertKey,
) -> Outcome:
    """Causes ``fault`` (entering it) for HOLD seconds with the probe running, ends it (leaving it),
    waits for the target to be collected again, and checks what the module docstring lists. ``held``
    is the alert on the faulted target itself that must outlive the fault."""
    before = stack.wait_steady(BASELINE | {held})
    pid = stack.agent.process.pid if stack.agent.process else None
    errors_before = stack.agent.metrics()[(ERRORS, self_labels(faulted, reason=reason))]
    mark = time.monotonic()
    with Probe(stack.agent.port, PROBE_PERIOD) as probe:
        time.sleep(5 * PROBE_PERIOD)  # a few answers from before the fault
        caused = time.monotonic()
        with fault:
            time.sleep(max(0.0, caused + HOLD - time.monotonic()))
            ended = time.monotonic()
        stack.agent.wait_for(lambda: up(stack, faulted) == 1, f"{faulted} up again", RECOVERY_TIMEOUT)
        recovered = time.monotonic()
    # Whatever the fault made the agent let go of is resolved once the keep-firing window has passed.
    time.sleep(KEEP_FIRING + INTERVAL)

    def reported(scrape: Scrape) -> bool:
        errors = self_value(scrape, ERRORS, faulted, reason=reason) or 0
        return self_value(scrape, UP, faulted) == 0 and errors > errors_before

    first = next((s for s in probe.scrapes if s.sent >= caused and s.status == 200 and reported(s)), None)
    assert first is not None, f"{faulted}: no {reason} error reported"
    reported_after = first.received - caused
    assert reported_after <= REPORT_BOUND
    requests, percentile, slowest = check_latency(probe, caused, ended)
    fewest = check_others_kept_their_cycle(probe, caused, ended, faulted)
    check_no_alert_lost(stack, before, mark)
    assert stack.agent.process is not None
    assert stack.agent.process.pid == pid  # the same agent, never restarted
    outcome = Outcome(name, reported_after, requests, percentile, slowest, fewest, recovered - ended)
    outcome.show()
    return outcome


def postgres_holders(server: PostgresServer) -> HeldConnections[psycopg.Connection]:
    return HeldConnections(
        HELD_POSTGRES,
        lambda: server.connect(APP_ROLE, application_name="fault-holder"),
        lambda connection: connection.close(),
    )


def redis_holders(server: RedisServer) -> HeldConnections[redis.Redis]:
    def open_one() -> redis.Redis:
        client = server.client()
        client.ping()
        return client

    return HeldConnections(HELD_REDIS, open_one, lambda client: client.close())


def test_postgres_paused(stack: Stack) -> None:
    """SIGSTOP: the server accepts TCP but answers nothing; the cycle is bounded by its timeout."""
    with postgres_holders(stack.postgres):
        run_fault(stack, "postgres SIGSTOP", POSTGRES, "timeout", stack.postgres.paused(), POOL_EXHAUSTED)


def test_postgres_restarted(stack: Stack) -> None:
    with postgres_holders(stack.postgres) as held:

        @contextmanager
        def restarted() -> Iterator[None]:
            stack.postgres.stop()  # fast: every session ends, the agent's too
            try:
                yield
            finally:
                stack.postgres.start()
                reopened = held.reopen()  # the application's pool reconnects
                print(f"\n[postgres restart] {HELD_POSTGRES} connections back {reopened:.2f} s after start")

        run_fault(stack, "postgres restart", POSTGRES, "unreachable", restarted(), POOL_EXHAUSTED)


def test_pgbouncer_killed(stack: Stack) -> None:
    pooler = stack.pooler

    @contextmanager
    def killed() -> Iterator[None]:
        pid_file = pooler.root / "pgbouncer.pid"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)  # no shutdown of its own: its clients and the agent see sockets die
        try:
            yield
        finally:
            deadline = time.monotonic() + 10
            while running(pid):
                assert time.monotonic() < deadline, "pgbouncer did not die"
                time.sleep(0.02)
            pid_file.unlink(missing_ok=True)  # it had no chance to remove it
            pooler.start()

    # Clients queue for the pool's 2 server connections, and reconnect by themselves after the kill.
    with LoopingClients(QUEUED_CLIENTS, pooler.connect, "SELECT pg_sleep(0.5)"):
        run_fault(stack, "pgbouncer SIGKILL", PGBOUNCER, "unreachable", killed(), POOLER_QUEUE)


def test_redis_restarted(stack: Stack) -> None:
    with redis_holders(stack.redis) as held:

        @contextmanager
        def restarted() -> Iterator[None]:
            stack.redis.stop()
            try:
                yield
            finally:
                stack.redis.start()
                reopened = held.reopen()
                print(f"\n[redis restart] {HELD_REDIS} clients back {reopened:.3f} s after start")

        run_fault(stack, "redis restart", REDIS, "unreachable", restarted(), REDIS_FULL)


@contextmanager
def kubernetes_api_hanging(kube: KubeApiServer) -> Iterator[None]:
    kube.fail("hang")  # the HPA list, the first call of every cycle, gets no answer
    try:
        yield
    finally:
        kube.reset()


def test_kubernetes_api_hanging(stack: Stack) -> None:
    # Both alerts outlive the hang: the per-HPA one (no HPA names are seen while the list hangs) and
    # the budget alert on the database, judged on the HPA's maxReplicas.
    run_fault(
        stack,
        "kubernetes API hang",
        KUBERNETES,
        "timeout",
        kubernetes_api_hanging(stack.kube),
        ("ConnectionBudgetExceededAtMaxScale", "main"),
    )


def test_alertmanager_down_and_back(stack: Stack) -> None:
    """An alert that starts firing while Alertmanager is down reaches it once it is back, and the
    alerts it held before are sent again with their original start. The outage is reported in the
    log and in tierwatch_alertmanager_alerts_failed_total (Alertmanager has no collector of its own)."""
    before = stack.wait_steady(BASELINE)
    mark = time.monotonic()
    log_start = len(stack.agent.log())
    failed = re.compile(rf"sending \d+ alerts to {re.escape(stack.alertmanager.url)}/api/v2/alerts failed: ")

    def failed_alerts() -> float:
        series = stack.agent.metrics()
        count = value(
            series, "tierwatch_alertmanager_alerts_failed_total", alertmanager=stack.alertmanager.url
        )
        assert count is not None
        return count

    failed_before = failed_alerts()

    def arrival() -> float | None:
        for at, alert in stack.inbox.since(mark):
            labels = alert["labels"]
            if (labels["alertname"], labels["target"]) == REDIS_FULL and alert["status"] == "firing":
                return at
        return None

    with Probe(stack.agent.port, PROBE_PERIOD) as probe:
        time.sleep(5 * PROBE_PERIOD)
        caused = time.monotonic()
        stack.alertmanager.stop()
        try:
            stack.agent.wait_for(lambda: failed.search(stack.agent.log()[log_start:]), "a failed delivery", 5)
            reported_after = time.monotonic() - caused
            stack.agent.wait_for(lambda: failed_alerts() > failed_before, "failed alerts counted", 5)
            with redis_holders(stack.redis):
                stack.agent.wait_for(lambda: REDIS_FULL in stack.firing(), "the new alert", ALERT_TIMEOUT)
                time.sleep(max(0.0, caused + HOLD - time.monotonic()))
                ended = time.monotonic()
                assert arrival() is None  # nowhere to go
                stack.alertmanager.start()
                back = time.monotonic()
                stack.agent.wait_for(lambda: arrival() is not None, "the new alert at Alertmanager", 10)
                stack.agent.wait_for(
                    lambda: set(before) | {REDIS_FULL} <= set(stack.at_alertmanager()),
                    "every alert again",
                    10,
                )
                delivered = stack.at_alertmanager()
                after = stack.firing()
        finally:
            if stack.alertmanager.process is None or stack.alertmanager.process.poll() is not None:
                stack.alertmanager.start()  # a failed test leaves it running for the next
    arrived = arrival()
    assert arrived is not None
    assert reported_after <= ALERTMANAGER_REPORT_BOUND
    assert back <= arrived <= back + REDELIVERY_BOUND
    for key, alert in before.items():
        assert after[key]["active_since"] == alert["active_since"]
        assert delivered[key] == datetime.fromisoformat(alert["fired_at"])  # startsAt: when it fired
    assert not [key for key in stack.resolutions(mark) if key in before]
    requests, percentile, slowest = check_latency(probe, caused, ended)
    fewest = check_others_kept_their_cycle(probe, caused, ended, None)
    print(
        f"\n[alertmanager down] failed delivery logged after {reported_after * 1000:.0f} ms "
        f"(bound {ALERTMANAGER_REPORT_BOUND * 1000:.0f} ms); the alert raised meanwhile delivered "
        f"{arrived - back:.2f} s after Alertmanager was back; /metrics p99 {percentile * 1000:.1f} ms, "
        f"slowest {slowest * 1000:.1f} ms over {requests} requests; every collector {fewest}+ cycles, "
        "none missed"
    )
