"""Scenarios against a real PostgreSQL and PgBouncer: cause the condition, assert the right alert and
no wrong one. The host collector reads a recorded quiet host so the machine running the tests cannot
add alerts of its own."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube_api import KubeApiServer
from tests.fixtures.pgbouncer_server import STATS_USER, PgBouncerServer
from tests.fixtures.postgres_server import APP_ROLE, MONITOR_ROLE, PostgresServer
from tests.fixtures.redis_server import RedisServer
from tests.scenarios import (
    BURN_SQL,
    active_alerts,
    firing,
    scenario_agent,
    sessions_running,
    wait_for_alerts,
)
from tests.support import AgentProcess, every_core_busy, running, start_python, value

pytestmark = pytest.mark.usefixtures("one_connection_per_target")


def postgres_section(tmp_path: Path, server: PostgresServer) -> list[dict[str, Any]]:
    password = tmp_path / "postgres-password"
    password.write_text(server.passwords[MONITOR_ROLE])
    return [{"name": "main", "dsn": server.dsn(), "password_file": str(password)}]


def pgbouncer_section(tmp_path: Path, pooler: PgBouncerServer) -> list[dict[str, Any]]:
    password = tmp_path / "pgbouncer-password"
    password.write_text(pooler.passwords[STATS_USER])
    return [{"name": "pool", "dsn": pooler.dsn(), "password_file": str(password)}]


def process_named(tag: str, busy: bool) -> AbstractContextManager[None]:
    """A process standing in for the app on a shared host: busy-looping or asleep, at most 30 s."""
    return running(start_python(30, tag, busy=busy))


def test_cpu_heavy_queries_with_an_idle_app_are_database_bound(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    tag = "tierwatch-scenario-idle-app"
    app = [{"name": "api", "process": tag}]
    burn = sessions_running(lambda: postgres_server.connect(APP_ROLE), BURN_SQL, 3)
    # app processes are real, so the host is too: psutil reads the host's procfs (one per agent)
    postgres = postgres_section(tmp_path, postgres_server)
    agent = scenario_agent(tmp_path, postgres=postgres, app=app, host={"enabled": False})
    with process_named(tag, busy=False), burn, agent:
        # the rule also holds while the app's CPU is unknown; the evidence should show it known
        agent.wait_for(
            lambda: value(agent.metrics(), "tierwatch_app_process_cpu_ratio", target="api") is not None,
            "app cpu",
        )
        wait_for_alerts(agent, {("DatabaseBound", "main")})
        # The same burn saturates this host, whose CPU may decide first; the sessions' load follows.
        agent.wait_for(lambda: on_cpu_load(agent) >= 0.9, "the on-CPU load in the evidence")
        alert = firing(agent)[("DatabaseBound", "main")]

    assert alert["severity"] == "critical"
    assert alert["evidence"]["db_cpu_load_per_vcpu"] >= 0.9
    assert alert["evidence"]["app_tier_cpu_max_ratio"] < 0.85
    assert "more app servers will not help" in alert["remediation"]
    # the remediation points at the statements using the time: they come with the alert
    assert "pg_stat_statements, listed in this alert's details" in alert["remediation"]
    top = alert["details"]["top_queries"]
    assert top
    assert {"queryid", "calls", "total_seconds", "mean_seconds", "query"} <= set(top[0])


def test_a_database_host_saturated_by_other_work_is_database_bound(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    # The server is on this machine, so its host's CPU is read: busy with anything, the database waits.
    postgres = postgres_section(tmp_path, postgres_server)
    agent = scenario_agent(tmp_path, postgres=postgres, host={"enabled": False})
    with every_core_busy(30), agent:
        alerts = wait_for_alerts(agent, {("DatabaseBound", "main")})
    evidence = alerts["DatabaseBound"]["evidence"]
    assert evidence["db_host_cpu_ratio"] >= 0.9
    assert evidence["db_cpu_load_per_vcpu"] < 0.9  # not its own sessions
    assert "host CPU" in alerts["DatabaseBound"]["summary"]


def on_cpu_load(agent: AgentProcess) -> float:
    return float(firing(agent)[("DatabaseBound", "main")]["evidence"]["db_cpu_load_per_vcpu"])


def test_busy_app_with_an_idle_database_is_app_compute_bound(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    tag = "tierwatch-scenario-busy-app"
    # One busy process is one core: half of this 2-core machine. The default 85% would need the
    # whole machine, which the tests share; the naming logic is what is under test here.
    rules = {"AppComputeBound": {"for": 1, "app_cpu_ratio": 0.3}}
    app = [{"name": "api", "process": tag}]
    postgres = postgres_section(tmp_path, postgres_server)
    agent = scenario_agent(tmp_path, rules, postgres=postgres, app=app, host={"enabled": False})
    with process_named(tag, busy=True), agent:
        alerts = wait_for_alerts(agent, {("AppComputeBound", "api")})
    evidence = alerts["AppComputeBound"]["evidence"]
    assert evidence["app_cpu_ratio"] >= 0.3
    assert evidence["db_cpu_load_max_per_vcpu"] < 0.9


def test_92_of_100_connections_is_connection_pool_exhaustion(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    agent = scenario_agent(tmp_path, postgres=postgres_section(tmp_path, postgres_server))
    with postgres_server.held(92, "scenario-holder"), agent:
        alerts = wait_for_alerts(agent, {("ConnectionPoolExhaustion", "main")})
        # besides the 92: the agent's own, the test's watcher, and PgBouncer's idle server
        # connections if an earlier test pooled some; the server's own count is the truth
        with postgres_server.connect() as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
    assert row is not None
    evidence = alerts["ConnectionPoolExhaustion"]["evidence"]
    # the count above includes its own query's connection; usable = 100 minus 3 superuser slots
    assert evidence["db_connections_used_ratio"] == pytest.approx((row[0] - 1) / 97)
    assert evidence["because"] == ["db_connections_used_ratio"]


def test_pooler_with_waiting_clients_is_connection_pool_exhaustion(
    tmp_path: Path, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
) -> None:
    # a pool of 2 server connections and 6 clients each holding one for 2 s at a time
    slow = sessions_running(pgbouncer_server.connect, "SELECT pg_sleep(2)", 6)
    sections = {
        "postgres": postgres_section(tmp_path, postgres_server),
        "pgbouncer": pgbouncer_section(tmp_path, pgbouncer_server),
    }
    with slow, scenario_agent(tmp_path, **sections) as agent:
        alerts = wait_for_alerts(agent, {("ConnectionPoolExhaustion", "pool")})
    evidence = alerts["ConnectionPoolExhaustion"]["evidence"]
    assert evidence["pool_clients_waiting"] >= 1
    assert evidence["pool_longest_wait_seconds"] >= 1


def test_lock_held_over_waiting_sessions_is_lock_contention(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with postgres_server.connect() as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS scenario_locked (id int)")
        admin.execute("GRANT ALL ON scenario_locked TO app")
    with postgres_server.connect(APP_ROLE) as holder:
        holder.autocommit = False
        holder.execute("LOCK TABLE scenario_locked IN ACCESS EXCLUSIVE MODE")
        waiters = sessions_running(
            lambda: postgres_server.connect(APP_ROLE), "SELECT count(*) FROM scenario_locked", 3
        )
        with waiters, scenario_agent(tmp_path, postgres=postgres_section(tmp_path, postgres_server)) as agent:
            try:
                alerts = wait_for_alerts(agent, {("LockContention", "main")})
            finally:
                holder.rollback()  # releases the waiters so the load stops, found or not
    evidence = alerts["LockContention"]["evidence"]
    assert evidence["db_blocked_sessions"] == 3
    assert evidence["db_lock_load_share"] >= 0.5


def kubernetes_section(tmp_path: Path, kube_api: KubeApiServer) -> dict[str, Any]:
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    return {"enabled": True, "kubeconfig": str(kubeconfig), "namespace": "shop"}


def test_pool_size_times_max_replicas_over_budget(
    tmp_path: Path, postgres_server: PostgresServer, kube_api: KubeApiServer
) -> None:
    sections = {
        "postgres": postgres_section(tmp_path, postgres_server),
        "kubernetes": kubernetes_section(tmp_path, kube_api),
        "app": [{"name": "web", "pool_size": 20, "hpa": "web"}],  # web scales to 6 pods
    }
    with scenario_agent(tmp_path, **sections) as agent:
        alerts = wait_for_alerts(
            agent,
            {
                ("ConnectionBudgetExceededAtMaxScale", "main"),
                ("HorizontalScalingCeiling", "shop/web"),
                ("NewInstancesUnhealthy", "shop/web"),
            },
        )
    # 20 connections x 6 replicas against 97 usable; the one other client is the agent, which
    # the 120 the app already accounts for at its current 6 pods more than covers
    budget = alerts["ConnectionBudgetExceededAtMaxScale"]
    assert budget["evidence"]["db_projected_connections_ratio"] == pytest.approx(120 / 97)
    assert budget["evidence"]["app_connections_at_max_scale"] == 120


def test_replicas_added_against_a_saturated_database(
    tmp_path: Path, postgres_server: PostgresServer, kube_api: KubeApiServer
) -> None:
    sections = {
        "window": 20,  # "rose within the window": a short window keeps the test short
        "postgres": postgres_section(tmp_path, postgres_server),
        "kubernetes": kubernetes_section(tmp_path, kube_api),
    }
    with postgres_server.held(92, "scenario-holder"), scenario_agent(tmp_path, **sections) as agent:
        time.sleep(3)  # a few cycles with worker at 2 replicas
        worker = next(
            h
            for h in kube_api.lists["horizontalpodautoscalers"]["items"]
            if h["metadata"]["name"] == "worker"
        )
        worker["status"]["currentReplicas"] = worker["status"]["desiredReplicas"] = 5
        alerts = wait_for_alerts(
            agent,
            {
                ("DownstreamSharedBottleneck", "shop/worker"),
                ("ConnectionPoolExhaustion", "main"),
                ("HorizontalScalingCeiling", "shop/web"),
                ("NewInstancesUnhealthy", "shop/web"),
            },
        )
    shared = alerts["DownstreamSharedBottleneck"]
    assert shared["evidence"]["hpa_replica_rise"] == 3
    assert shared["evidence"]["throughput_gain_ratio"] < 1.1
    assert "db_connections_max_ratio" in shared["evidence"]["because"]  # it names the resource
    assert shared["evidence"]["root_cause"] == "ConnectionPoolExhaustion on postgres/main"
    # a saturated shared tier turns the ceiling's advice around
    assert alerts["HorizontalScalingCeiling"]["remediation"].startswith(
        "The autoscaler is at maxReplicas, but do NOT"
    )
    # new pods that cannot get ready while the database has no connections left: it says so
    assert (
        alerts["NewInstancesUnhealthy"]["evidence"]["root_cause"]
        == "ConnectionPoolExhaustion on postgres/main"
    )


def test_quiet_system_raises_nothing_for_a_minute(
    tmp_path: Path,
    postgres_server: PostgresServer,
    pgbouncer_server: PgBouncerServer,
    redis_server: RedisServer,
) -> None:
    sections = {
        "postgres": postgres_section(tmp_path, postgres_server),
        "pgbouncer": pgbouncer_section(tmp_path, pgbouncer_server),
        "redis": [{"name": "sessions", "url": redis_server.url}],
    }
    # A target that is down or missing has unknown signals, which raise nothing: quiet only counts
    # while every target is collected.
    targets = {("host", "node-a"), ("postgres", "main"), ("pgbouncer", "pool"), ("redis", "sessions")}
    with scenario_agent(tmp_path, **sections) as agent:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert active_alerts(agent) == [], agent.log()[-2000:]
            assert collectors_up(agent) == dict.fromkeys(targets, 1), agent.log()[-2000:]
            time.sleep(1)


def collectors_up(agent: AgentProcess) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["collector"], dict(labels)["target"]): up
        for (name, labels), up in agent.metrics().items()
        if name == "tierwatch_collector_up"
    }
