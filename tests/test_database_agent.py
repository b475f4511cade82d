"""The PostgreSQL and PgBouncer tiers in the agent as users run it: `tierwatch run` and `tierwatch check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.pgbouncer_server import MAX_CLIENT_CONN, STATS_USER, PgBouncerServer
from tests.fixtures.postgres_server import MAX_CONNECTIONS, MONITOR_ROLE, PostgresServer
from tests.support import REPO, AgentProcess, assert_promtool_accepts, parse_metrics, value

pytestmark = pytest.mark.usefixtures("one_connection_per_target")
HIT_RATIO = "tierwatch_postgres_buffer_cache_hit_ratio"


def agent_config(tmp_path: Path, postgres: PostgresServer, pgbouncer: PgBouncerServer) -> dict[str, object]:
    (tmp_path / "postgres-password").write_text(postgres.passwords[MONITOR_ROLE])
    (tmp_path / "pgbouncer-password").write_text(pgbouncer.passwords[STATS_USER])
    return {
        "interval": 0.5,
        "host": {"enabled": False},
        "postgres": [
            {"name": "main", "dsn": postgres.dsn(), "password_file": str(tmp_path / "postgres-password")}
        ],
        "pgbouncer": [
            {"name": "pool", "dsn": pgbouncer.dsn(), "password_file": str(tmp_path / "pgbouncer-password")}
        ],
    }


def test_agent_exports_both_tiers(
    tmp_path: Path, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
) -> None:
    with AgentProcess(tmp_path, agent_config(tmp_path, postgres_server, pgbouncer_server)) as agent:
        # ratios over a cycle need two cycles
        agent.wait_for(
            lambda: value(agent.metrics(), HIT_RATIO, target="main", database="postgres"), "2 cycles"
        )
        text = agent.metrics_text()
        log = agent.log()
    postgres_server.wait_for_no_monitor_connections()
    series = parse_metrics(text)
    assert value(series, "tierwatch_collector_up", collector="postgres", target="main") == 1
    assert value(series, "tierwatch_collector_up", collector="pgbouncer", target="pool") == 1
    assert value(series, "tierwatch_postgres_max_connections", target="main") == MAX_CONNECTIONS
    # cycles of 0.5 s sample the load themselves, without a sampler thread
    assert (
        value(series, "tierwatch_postgres_load_average_active_sessions", target="main", wait_class="cpu") == 0
    )
    assert value(series, "tierwatch_pgbouncer_max_client_connections", target="pool") == MAX_CLIENT_CONN
    assert_promtool_accepts(text)
    assert f"127.0.0.1:{postgres_server.port}/postgres as {MONITOR_ROLE}" in log
    for secret in (postgres_server.passwords[MONITOR_ROLE], pgbouncer_server.passwords[STATS_USER]):
        assert secret not in text
        assert secret not in log


def test_check_shows_the_database_tier(
    tmp_path: Path, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
) -> None:
    config_path = tmp_path / "tierwatch.yaml"
    config_path.write_text(yaml.safe_dump(agent_config(tmp_path, postgres_server, pgbouncer_server)))
    command = [sys.executable, "-m", "agent.cli", "check", "--config", str(config_path), "--duration", "1.2"]
    with pgbouncer_server.connect():  # PgBouncer makes a pool when its first client arrives
        result = subprocess.run([*command, "--json"], cwd=REPO, capture_output=True, text=True, check=False)
    postgres_server.wait_for_no_monitor_connections()
    report = json.loads(result.stdout)
    tiers = {tier["collector"]: tier for tier in report["tiers"]}
    postgres, pgbouncer = tiers["postgres"], tiers["pgbouncer"]
    assert postgres["tier"] == pgbouncer["tier"] == "database"
    assert postgres["up"]
    assert pgbouncer["up"]
    assert 0 < postgres["utilization"]["connections"]["value"] < 0.2
    assert postgres["utilization"]["on-CPU/vCPU"]["unit"] == "count"
    assert postgres["saturation"]["blocked"]["value"] == 0
    assert postgres["errors"]["deadlocks"]["unit"] == "count"
    assert pgbouncer["saturation"]["waiting"]["value"] == 0
    assert pgbouncer["utilization"]["clients"]["value"] == 2 / MAX_CLIENT_CONN  # the app's and check's own
