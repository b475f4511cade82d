"""Scenarios: a real Redis pushed to its limits, and recorded Kubernetes objects, named by the agent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.kube_api import KubeApiServer
from tests.fixtures.redis_server import RedisServers
from tests.scenarios import scenario_agent, wait_for_alerts


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
