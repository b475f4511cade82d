"""Scenarios: a real Redis pushed to its limits, and recorded Kubernetes objects, named by the agent."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures.kube_api import KubeApiServer
from tests.fixtures.postgres_server import APP_ROLE, MONITOR_ROLE, PostgresServer
from tests.fixtures.redis_server import RedisServer, RedisServers
from tests.scenarios import BURN_SQL, LOAD_SECONDS, scenario_agent, sessions_running, wait_for_alerts
from tests.support import value


def test_redis_at_maxclients_is_redis_connections_exhausted(
    tmp_path: Path, redis_servers: RedisServers
) -> None:
    server = redis_servers.start("maxclients 40")
    held = [server.client() for _ in range(37)]
    for client in held:
        client.ping()
    try:
        agent = scenario_agent(tmp_path, redis=[{"name": "sessions", "url": server.url}])
        with agent:
            # 37 held + the agent's own connection = 38 of 40
            alerts = wait_for_alerts(agent, {("RedisConnectionsExhausted", "sessions")})
            alert = alerts["RedisConnectionsExhausted"]
            assert alert["severity"] == "critical"
            assert alert["tier"] == "cache"
            assert alert["evidence"]["redis_clients_used_ratio"] == pytest.approx(38 / 40)
            assert alert["evidence"]["because"] == ["redis_clients_used_ratio"]
            assert alert["runbook_url"] == "docs/alerts/RedisConnectionsExhausted.md"
    finally:
        for client in held:
            client.close()


@pytest.fixture
def writer(redis_servers: RedisServers) -> Iterator[tuple[str, threading.Event]]:
    """A Redis with a 2 MiB maxmemory and a writer that keeps it evicting (bounded to 60 s)."""
    server = redis_servers.start("maxmemory 2mb", "maxmemory-policy allkeys-lru")
    stop = threading.Event()

    def write() -> None:
        client = server.client()
        deadline, key = time.monotonic() + 60, 0
        while not stop.is_set() and time.monotonic() < deadline:
            client.set(f"k{key}", b"x" * 1024)
            key += 1
            if key % 200 == 0:
                time.sleep(0.05)
        client.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    yield server.url, stop
    stop.set()
    thread.join()


def test_full_redis_evicting_is_redis_memory_pressure(
    tmp_path: Path, writer: tuple[str, threading.Event]
) -> None:
    url, _ = writer
    with scenario_agent(tmp_path, redis=[{"name": "sessions", "url": url}]) as agent:
        alerts = wait_for_alerts(agent, {("RedisMemoryPressure", "sessions")})
        evidence = alerts["RedisMemoryPressure"]["evidence"]
        assert evidence["redis_memory_used_ratio"] >= 0.9
        assert evidence["redis_evicted_per_second"] > 0


@contextmanager
def mostly_missing_lookups(server: RedisServer) -> Iterator[None]:
    """One client looking up a present key for every four absent ones until the block ends (or
    LOAD_SECONDS pass): a hit ratio of 0.2 in every cycle. Paced, so the lookups leave the two cores
    to the database's sessions and the agent."""
    stop = threading.Event()
    deadline = time.monotonic() + LOAD_SECONDS

    def look_up() -> None:
        with server.client() as client:
            client.set("present", "x")
            while not stop.is_set() and time.monotonic() < deadline:
                batch = client.pipeline(transaction=False)
                for key in ("present", "absent-1", "absent-2", "absent-3", "absent-4"):
                    batch.get(key)
                batch.execute()
                time.sleep(0.01)

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_missing_cache_in_front_of_a_busy_database_is_cache_ineffective(
    tmp_path: Path, redis_servers: RedisServers, postgres_server: PostgresServer
) -> None:
    server = redis_servers.start()
    monitor = {
        "name": "main",
        "dsn": postgres_server.dsn(),
        "password": postgres_server.passwords[MONITOR_ROLE],
    }
    # One session on CPU more than the server's host has vCPUs (it is this machine): a load past
    # both CacheIneffective's 0.7 and DatabaseBound's 0.9 per vCPU at their defaults.
    sessions = (os.cpu_count() or 1) + 1
    burn = sessions_running(lambda: postgres_server.connect(APP_ROLE), BURN_SQL, sessions)
    agent = scenario_agent(tmp_path, postgres=[monitor], redis=[{"name": "cache", "url": server.url}])
    with mostly_missing_lookups(server), burn, agent:
        # Both by design: a database this busy is a root cause of its own, and the cache's alert
        # points at it.
        alerts = wait_for_alerts(agent, {("CacheIneffective", "cache"), ("DatabaseBound", "main")})
        hit_ratio = value(agent.metrics(), "tierwatch_redis_keyspace_hit_ratio", target="cache")
    postgres_server.wait_for_no_monitor_connections()  # the next test may count the agent's sessions
    assert hit_ratio == pytest.approx(0.2, abs=0.05)
    cache = alerts["CacheIneffective"]
    assert cache["severity"] == "warning"
    assert cache["tier"] == "cache"
    assert cache["evidence"]["redis_hit_ratio"] == pytest.approx(0.2, abs=0.05)
    assert cache["evidence"]["db_load_max_per_vcpu"] >= 0.7
    assert cache["evidence"]["because"] == ["redis_hit_ratio", "db_load_max_per_vcpu"]
    assert cache["evidence"]["root_cause"] == "DatabaseBound on postgres/main"
    assert alerts["DatabaseBound"]["evidence"]["db_cpu_load_per_vcpu"] >= 0.9


def test_recorded_hpas_name_the_ceiling_and_unhealthy_new_pods(
    tmp_path: Path, kube_api: KubeApiServer
) -> None:
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    kubernetes = {"enabled": True, "kubeconfig": str(kubeconfig), "namespace": "shop"}
    with scenario_agent(tmp_path, kubernetes=kubernetes) as agent:
        # web: at its maximum of 6 and above target; its scale-up left 3 new pods unready beside 3
        # ready old ones. api sits at max too, but with min == max it cannot scale: no ceiling.
        alerts = wait_for_alerts(
            agent, {("HorizontalScalingCeiling", "shop/web"), ("NewInstancesUnhealthy", "shop/web")}
        )
        ceiling = alerts["HorizontalScalingCeiling"]
        assert ceiling["evidence"]["hpa_max_replicas"] == 6
        assert ceiling["evidence"]["hpa_usage_to_target"] >= 1.1
        # nothing downstream is known to be saturated: the default advice, raise the ceiling
        assert ceiling["remediation"].startswith("The autoscaler wants more replicas")
        unhealthy = alerts["NewInstancesUnhealthy"]
        assert unhealthy["evidence"]["new_pods_not_ready"] == 3
        assert unhealthy["evidence"]["old_pods_ready"] == 3
        assert unhealthy["evidence"]["pods_unscheduled"] == 0  # all placed on nodes: not waiting for room
