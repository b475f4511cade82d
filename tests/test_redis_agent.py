"""The Redis collector inside ``tierwatch run``: secrets stay out of /metrics and the log, and a
restarted server is picked up again without restarting the agent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions as redis_errors

from tests.fixtures.redis_server import RedisServers
from tests.scenarios import LOAD_SECONDS, scenario_agent, wait_for_alerts
from tests.support import AgentProcess, assert_promtool_accepts, value

WRONG_PASSWORD = "wrong-agent-pass-3d1a"


def test_wrong_password_reported_as_auth_and_never_shown(redis_servers: RedisServers, tmp_path: Path) -> None:
    server = redis_servers.start(password="right-agent-pass-8e42")
    password_file = tmp_path / "redis-password"
    password_file.write_text(WRONG_PASSWORD + "\n")
    config = {
        "interval": 0.5,
        "host": {"enabled": False},
        "redis": [
            {
                "name": "from-file",
                "url": f"redis://127.0.0.1:{server.port}/0",
                "password_file": str(password_file),
            },
            {"name": "from-url", "url": f"redis://:{WRONG_PASSWORD}@127.0.0.1:{server.port}/0"},
        ],
    }
    with AgentProcess(tmp_path, config) as agent:

        def auth_errors(target: str) -> float:
            labels = {"collector": "redis", "target": target, "reason": "auth"}
            return value(agent.metrics(), "tierwatch_collector_errors_total", **labels) or 0

        agent.wait_for(lambda: auth_errors("from-file") >= 2 and auth_errors("from-url") >= 2, "auth errors")
        metrics = agent.metrics()
        for target in ("from-file", "from-url"):
            assert value(metrics, "tierwatch_collector_up", collector="redis", target=target) == 0
        text = agent.metrics_text()
    log = agent.log()
    assert WRONG_PASSWORD not in text
    assert WRONG_PASSWORD not in log
    # One warning per target for the whole outage, not one per cycle.
    assert log.count("collector redis/from-file failed (auth)") == 1
    assert log.count("collector redis/from-url failed (auth)") == 1
    assert f"monitoring redis from-url at 127.0.0.1:{server.port}" in log


def test_agent_recovers_when_the_server_comes_back(redis_servers: RedisServers, tmp_path: Path) -> None:
    server = redis_servers.start()
    config = {"interval": 0.5, "host": {"enabled": False}, "redis": [{"name": "cache", "url": server.url}]}
    labels = {"collector": "redis", "target": "cache"}
    with AgentProcess(tmp_path, config) as agent:

        def up() -> float | None:
            return value(agent.metrics(), "tierwatch_collector_up", **labels)

        agent.wait_for(lambda: up() == 1, "first successful cycle")
        # Redis 7 reports latency percentiles of the agent's own commands: the page must still lint clean.
        latency = {"target": "cache", "command": "info", "percentile": "99"}
        agent.wait_for(
            lambda: value(agent.metrics(), "tierwatch_redis_command_latency_seconds", **latency) is not None,
            "latency percentiles",
        )
        assert_promtool_accepts(agent.metrics_text())
        metrics = agent.metrics()
        assert value(metrics, "tierwatch_redis_connected_clients", target="cache") == 1
        assert value(metrics, "tierwatch_redis_memory_max_bytes", target="cache") == 0
        # maxmemory 0 is unlimited: no ratio at all rather than +Inf or 0.
        assert "tierwatch_redis_memory_used_ratio" not in agent.metrics_text()
        server.stop()
        agent.wait_for(lambda: up() == 0, "failure while the server is down")
        unreachable = {**labels, "reason": "unreachable"}
        assert value(agent.metrics(), "tierwatch_collector_errors_total", **unreachable) >= 1
        server.start()
        agent.wait_for(lambda: up() == 1, "recovery")
        assert value(agent.metrics(), "tierwatch_redis_connected_clients", target="cache") == 1
    assert "collector redis/cache recovered" in agent.log()


@pytest.fixture
def refused_writer(redis_servers: RedisServers) -> Iterator[str]:
    """A full Redis under noeviction (the default policy) and a writer whose SETs it keeps refusing
    with OOM errors (bounded to LOAD_SECONDS); yields the server's URL."""
    server = redis_servers.start("maxmemory 2mb", "maxmemory-policy noeviction")
    stop = threading.Event()
    refused = threading.Event()

    def write() -> None:
        with server.client() as client:
            deadline, key = time.monotonic() + LOAD_SECONDS, 0
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    client.set(f"k{key}", b"x" * 1024)
                except redis_errors.OutOfMemoryError:
                    refused.set()
                    time.sleep(0.01)  # full: keep being refused at a pace that leaves the cores free
                key += 1

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    assert refused.wait(LOAD_SECONDS), "no write was refused"
    yield server.url
    stop.set()
    thread.join()


def test_full_redis_refusing_writes_under_noeviction_is_memory_pressure(
    tmp_path: Path, refused_writer: str
) -> None:
    with scenario_agent(tmp_path, redis=[{"name": "sessions", "url": refused_writer}]) as agent:
        alerts = wait_for_alerts(agent, {("RedisMemoryPressure", "sessions")})
        metrics = agent.metrics()
    evidence = alerts["RedisMemoryPressure"]["evidence"]
    assert evidence["redis_memory_used_ratio"] >= 0.9
    assert evidence["redis_evicted_per_second"] == 0
    assert evidence["redis_oom_rejected_per_second"] > 0
    assert evidence["because"] == ["redis_memory_used_ratio", "redis_oom_rejected_per_second"]
    assert value(metrics, "tierwatch_redis_oom_rejected_commands_total", target="sessions") > 0
