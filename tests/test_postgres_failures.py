"""The PostgreSQL collector when things go wrong: a stopped, paused or locked server, a wrong password,
missing privileges. Each failure is caused for real and read back as the reason the agent reports.

The server is stopped and paused here, so these tests leave the shared cluster running as they found it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest

from agent.config.loader import validate_config
from collectors.base import Collector, CollectorError, Reason
from collectors.pgbouncer import build as build_pgbouncer
from collectors.postgres import PostgresCollector, build
from collectors.postgres.session import query_error
from tests.fixtures.pgbouncer_server import PgBouncerServer
from tests.fixtures.postgres_server import APP_ROLE, MAX_CONNECTIONS, MONITOR_ROLE, PostgresServer
from tests.support import AgentProcess, http_get, value

pytestmark = pytest.mark.usefixtures("one_connection_per_target")
WRONG_PASSWORD = "not-the-password-7Qx"
UP = "tierwatch_collector_up"
ERRORS = "tierwatch_collector_errors_total"
SELF = {"collector": "postgres", "target": "main"}


@pytest.fixture
def collector(postgres_server: PostgresServer) -> Iterator[PostgresCollector]:
    entry = {
        "name": "main",
        "dsn": postgres_server.dsn(),
        "password": postgres_server.passwords[MONITOR_ROLE],
    }
    config = validate_config({"interval": 2, "postgres": [entry]})
    built = build(config, config.postgres[0])
    yield built
    built.close()
    postgres_server.wait_for_no_monitor_connections()


def failure(collector: Collector) -> CollectorError:
    with pytest.raises(CollectorError) as caught:
        collector.collect()
    return caught.value


def agent_config(server: PostgresServer, password_file: Path, interval: float) -> dict[str, object]:
    return {
        "interval": interval,
        "host": {"enabled": False},
        "postgres": [{"name": "main", "dsn": server.dsn(), "password_file": str(password_file)}],
    }


def test_a_locked_catalog_times_the_cycle_out_and_the_connection_survives(
    collector: PostgresCollector, postgres_server: PostgresServer
) -> None:
    collector.collect()
    with postgres_server.connect() as admin:
        admin.execute("BEGIN")
        admin.execute("LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        error = failure(collector)
        waited = time.monotonic() - began
        admin.execute("ROLLBACK")
    assert error.reason is Reason.TIMEOUT
    assert "lock timeout" in error.detail
    assert waited < 1.6  # lock_timeout is a quarter of the 1.6 s cycle timeout
    assert collector.collect().get("postgres_max_connections") == 100


def test_server_errors_map_to_reasons(postgres_server: PostgresServer) -> None:
    with postgres_server.connect(MONITOR_ROLE, options="-c statement_timeout=100") as connection:
        with pytest.raises(psycopg.Error) as denied:
            connection.execute("SELECT pg_read_file('/etc/hostname')")
        with pytest.raises(psycopg.Error) as slow:
            connection.execute("SELECT pg_sleep(1)")
    permission = query_error(denied.value, "db")
    assert permission.reason is Reason.PERMISSION
    assert permission.detail == "db: permission denied (SQLSTATE 42501)"
    assert query_error(slow.value, "db").reason is Reason.TIMEOUT


def test_wrong_password_is_auth_and_never_repeated(postgres_server: PostgresServer) -> None:
    entry = {"name": "main", "dsn": postgres_server.dsn(), "password": WRONG_PASSWORD}
    config = validate_config({"interval": 2, "postgres": [entry]})
    collector = build(config, config.postgres[0])
    first, again = failure(collector), failure(collector)
    assert first.reason is Reason.AUTH
    assert first.detail == (
        f"cannot connect to 127.0.0.1:{postgres_server.port}/postgres as {MONITOR_ROLE}: "
        "password authentication failed; next attempt in 1 s"
    )
    # within the backoff nothing is attempted, the reason stays
    assert again.reason is Reason.AUTH
    assert again.detail.endswith("next attempt in 1 s")
    assert WRONG_PASSWORD not in str(first) + str(again)
    collector.close()


def test_stopped_server_is_unreachable_and_the_same_collector_recovers(
    collector: PostgresCollector, postgres_server: PostgresServer
) -> None:
    collector.collect()
    postgres_server.stop()
    try:
        lost = failure(collector)  # the held connection was terminated with the server
        refused = failure(collector)  # first reconnection attempt
        backing_off = failure(collector)
    finally:
        postgres_server.start()
    assert lost.reason is Reason.UNREACHABLE
    assert refused.reason is Reason.UNREACHABLE
    assert "connection refused" in refused.detail
    assert backing_off.reason is Reason.UNREACHABLE
    assert backing_off.detail.endswith("next attempt in 1 s")
    time.sleep(1.0)  # the first backoff step
    assert collector.collect().get("postgres_max_connections") == 100


def test_agent_reports_a_wrong_password_without_showing_it(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(WRONG_PASSWORD + "\n")
    with AgentProcess(tmp_path, agent_config(postgres_server, password_file, 0.5)) as agent:
        agent.wait_for(lambda: value(agent.metrics(), ERRORS, **SELF, reason="auth"), "an auth error")
        text = agent.metrics_text()
        series = agent.metrics()
        log = agent.log()
    assert value(series, UP, **SELF) == 0
    assert value(series, ERRORS, **SELF, reason="unreachable") == 0
    assert WRONG_PASSWORD not in text
    assert WRONG_PASSWORD not in log
    assert "password authentication failed" in log


def test_paused_server_bounds_the_cycle_and_metrics_keep_answering(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(postgres_server.passwords[MONITOR_ROLE])
    with AgentProcess(tmp_path, agent_config(postgres_server, password_file, 1.0)) as agent:
        agent.wait_for(lambda: value(agent.metrics(), UP, **SELF) == 1, "postgres up")
        with postgres_server.paused():
            agent.wait_for(lambda: value(agent.metrics(), UP, **SELF) == 0, "postgres down", timeout=5)
            began = time.monotonic()
            status, _ = http_get(f"{agent.url}/metrics")
            answered_in = time.monotonic() - began
            series = agent.metrics()
        agent.wait_for(lambda: value(agent.metrics(), UP, **SELF) == 1, "postgres up again", timeout=10)
        log = agent.log()
    postgres_server.wait_for_no_monitor_connections()
    assert status == 200
    assert answered_in < 0.5
    assert value(series, ERRORS, **SELF, reason="timeout") >= 1
    # Past the 0.8 s cycle timeout, the hung cycle is reported when the next one comes due (1 s),
    # give or take the scheduler thread's wake-up on a loaded machine.
    assert 0.8 <= value(series, "tierwatch_collector_duration_seconds", **SELF) <= 1.0 + 0.25
    assert "recovered" in log


@contextmanager
def every_slot_taken(server: PostgresServer) -> Iterator[None]:
    """Superuser sessions over the socket in every connection slot, the reserved ones included, so
    that the next client meets PostgreSQL's "too many clients" refusal; they are closed on exit and
    the slots are free again before it returns."""
    with ExitStack() as sessions:
        refusal = ""
        for _ in range(MAX_CONNECTIONS + 1):
            try:
                sessions.enter_context(server.connect(application_name="slot-holder"))
            except psycopg.OperationalError as error:
                refusal = str(error)
                break
        assert "too many clients" in refusal, "the server never refused a session"
        yield
    with server.connect() as admin:
        deadline = time.monotonic() + 5
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'slot-holder'"
        while admin.execute(count).fetchone() != (0,):
            assert time.monotonic() < deadline, "the slot holders' sessions did not end"
            time.sleep(0.02)


def test_a_server_without_a_free_slot_is_named_as_full(
    collector: PostgresCollector, postgres_server: PostgresServer
) -> None:
    with every_slot_taken(postgres_server):
        error = failure(collector)
    assert error.reason is Reason.OTHER  # the server is up and answering, only full
    assert "no free connection slot on the server" in error.detail
    time.sleep(1.0)  # the first backoff step
    assert collector.collect().get("postgres_max_connections") == MAX_CONNECTIONS


def test_a_pgbouncer_console_user_not_listed_is_a_permission_error(
    pgbouncer_server: PgBouncerServer,
) -> None:
    """A user PgBouncer knows (auth_file) but lists in neither admin_users nor stats_users."""
    entry = {
        "name": "pool",
        "dsn": pgbouncer_server.dsn(APP_ROLE),
        "password": pgbouncer_server.passwords[APP_ROLE],
    }
    config = validate_config({"interval": 2, "pgbouncer": [entry]})
    collector = build_pgbouncer(config, config.pgbouncer[0])
    try:
        error = failure(collector)
    finally:
        collector.close()
    assert error.reason is Reason.PERMISSION
    assert "admin_users nor stats_users" in error.detail
