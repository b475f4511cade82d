"""The dashboards against a live agent running every collector that needs a server: PostgreSQL,
PgBouncer, Redis, the Kubernetes API and an app's metrics page. Every series a dashboard names for
these tiers must appear on /metrics, unless it exists only in a condition this run does not cause
(listed below with the reason, and covered by the collectors' own tests)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fixtures.app_server import AppServer
from tests.fixtures.kube_api import KubeApiServer
from tests.fixtures.pgbouncer_server import STATS_USER, PgBouncerServer
from tests.fixtures.postgres_server import APP_ROLE, MONITOR_ROLE, PostgresServer
from tests.fixtures.redis_server import RedisServer
from tests.scenarios import sessions_running
from tests.support import AgentProcess, http_get
from tests.test_dashboards import NAMES, expressions, load, metric_names

SERVER_TIERS = ("tierwatch_postgres_", "tierwatch_pgbouncer_", "tierwatch_redis_", "tierwatch_kubernetes_")
SERVER_TIERS += (
    "tierwatch_app_requests",
    "tierwatch_app_request_",
    "tierwatch_app_pool",
    "tierwatch_signal_value",
)
CONDITIONAL = {
    # replication: needs a standby (tests/test_postgres_replication.py builds one)
    "tierwatch_postgres_replica_replay_lag_seconds",
    "tierwatch_postgres_replica_replay_lag_bytes",
    "tierwatch_postgres_replay_delay_seconds",
    # a Redis replica's link to its master (tests/test_redis_collector.py runs a replica)
    "tierwatch_redis_replication_master_link_up",
    "tierwatch_redis_replication_master_last_io_age_seconds",
    # absent by design while maxmemory is 0, unlimited (tests/test_redis_collector.py sets one)
    "tierwatch_redis_memory_used_ratio",
    # derived for the exported rules only while a rule reads them: the connection budget needs an
    # app with a pool size linked to an HPA (tests/test_scenarios_database.py)
    "tierwatch_signal_value",
}
pytestmark = pytest.mark.usefixtures("one_connection_per_target")


def test_dashboards_name_only_series_a_live_agent_with_every_server_exports(
    tmp_path: Path,
    postgres_server: PostgresServer,
    pgbouncer_server: PgBouncerServer,
    redis_server: RedisServer,
    kube_api: KubeApiServer,
    app_server: AppServer,
) -> None:
    (tmp_path / "pg").write_text(postgres_server.passwords[MONITOR_ROLE])
    (tmp_path / "bouncer").write_text(pgbouncer_server.passwords[STATS_USER])
    config = {
        "interval": 0.5,
        "host": {"enabled": False},
        "postgres": [{"name": "main", "dsn": postgres_server.dsn(), "password_file": str(tmp_path / "pg")}],
        "pgbouncer": [
            {"name": "pool", "dsn": pgbouncer_server.dsn(), "password_file": str(tmp_path / "bouncer")}
        ],
        "redis": [{"name": "sessions", "url": redis_server.url}],
        "kubernetes": {
            "enabled": True,
            "kubeconfig": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
            "namespace": "shop",
            "hpas": ["web", "api", "retired"],  # one named HPA is gone: hpas_missing
        },
        "app": [
            {
                "name": "web",
                "metrics_url": f"{app_server.url}/metrics",
                "requests_metric": "http_requests_total",
                "latency_metric": "http_request_duration_seconds",
                "pool_size": 10,
                "hpa": "web",
            }
        ],
    }
    with postgres_server.connect() as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS dashboard_scans AS SELECT 1 AS id")
        admin.execute("GRANT SELECT ON dashboard_scans TO app")
    seen: set[str] = set()
    cache = redis_server.client()
    # a session always active (sleeping), so the load, and ratios over it, are never 0/0
    sleeping = sessions_running(lambda: postgres_server.connect(APP_ROLE), "SELECT pg_sleep(0.5)", 1)
    with sleeping, AgentProcess(tmp_path, config) as agent:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            # traffic for every tier in each cycle: app requests, a pooled query, a transaction
            for status in (200, 500):
                assert http_get(f"{app_server.url}/work?status={status}")[0] == status
            with pgbouncer_server.connect() as pooled:
                pooled.execute("SELECT 1")
            with postgres_server.connect(APP_ROLE) as direct:
                direct.execute("SELECT count(*) FROM dashboard_scans")
            cache.set("seen", "1")
            cache.get("seen")
            cache.get("unseen")
            seen.update(name for name, _ in agent.metrics())
            time.sleep(0.25)
    cache.close()
    used = {
        name
        for dashboard_name in NAMES
        for _, target in expressions(load(dashboard_name))
        for name in metric_names(target["expr"])
    }
    checked = {name for name in used if name.startswith(SERVER_TIERS)}
    # guard against a vacuous pass: each server tier is really on the dashboards
    for prefix in SERVER_TIERS[:4]:
        assert any(name.startswith(prefix) for name in checked), prefix
    missing = sorted(checked - seen - CONDITIONAL)
    assert missing == [], missing
    # and the allowlist holds only what the dashboards use and this run could not show
    assert used >= CONDITIONAL
    assert not CONDITIONAL & seen - {"tierwatch_signal_value"}
