"""The PostgreSQL collector against a real server: each test causes the condition, then reads it back.

Cycles are driven by calling ``collect()`` directly; the load sampler runs in its own thread as in the
agent, one sample a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from agent.config.loader import validate_config
from collectors.base import Sample
from collectors.postgres import PostgresCollector, build
from collectors.postgres.queries import read_top_queries
from tests.fixtures.postgres_server import (
    APP_ROLE,
    MAX_CONNECTIONS,
    MONITOR_ROLE,
    SUPERUSER_RESERVED,
    UNPRIVILEGED_ROLE,
    PostgresServer,
)
from tests.support import every_core_busy

pytestmark = pytest.mark.usefixtures("one_connection_per_target")
MakeCollector = Callable[..., PostgresCollector]
USABLE = MAX_CONNECTIONS - SUPERUSER_RESERVED
STATS_DB = "tw_stats"


@pytest.fixture
def make(postgres_server: PostgresServer) -> Iterator[MakeCollector]:
    """Builds collectors as the agent does (interval 2 s), closes them and waits for their sessions to end."""
    made: list[PostgresCollector] = []

    def make_collector(user: str = MONITOR_ROLE, dbname: str = "postgres") -> PostgresCollector:
        entry = {
            "name": "main",
            "dsn": postgres_server.dsn(user, dbname),
            "password": postgres_server.passwords[user],
        }
        config = validate_config({"interval": 2, "postgres": [entry]})
        made.append(build(config, config.postgres[0]))
        return made[-1]

    yield make_collector
    for collector in made:
        collector.close()
    postgres_server.wait_for_no_monitor_connections()


@pytest.fixture(scope="module")
def stats_database(postgres_server: PostgresServer) -> str:
    """A database of its own, so that its counters move only with what a test does there."""
    with postgres_server.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {STATS_DB}")
        admin.execute(f"CREATE DATABASE {STATS_DB} OWNER {APP_ROLE}")
    with postgres_server.connect(APP_ROLE, STATS_DB) as connection:
        connection.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        connection.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10000) AS g")
    return STATS_DB


def poll(collector: PostgresCollector, done: Callable[[Sample], bool], timeout: float = 5.0) -> Sample:
    """Cycles until ``done``: a backend publishes its statistics when it exits, a moment after close."""
    deadline = time.monotonic() + timeout
    while not done(sample := collector.collect()):
        assert time.monotonic() < deadline, "the condition never showed up"
        time.sleep(0.1)
    return sample


class SourceAddressRelay:
    """Forwards connections to the server from one loopback source address (127.0.0.2, ...), so the
    server sees clients at distinct addresses; libpq cannot pick its source address itself."""

    def __init__(self, source: str, server_port: int) -> None:
        self._source = source
        self._server_port = server_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(
                    ("127.0.0.1", self._server_port), source_address=(self._source, 0)
                )
                self._sockets += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self._sockets:
            # close() alone neither wakes a pump blocked in recv() on the socket nor ends the TCP
            # connection while that call holds it: the server's sessions would outlive the test.
            with contextlib.suppress(OSError):  # the listener, or a socket the peer already closed
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_held_connections_count_against_the_usable_maximum(
    make: MakeCollector, postgres_server: PostgresServer
) -> None:
    collector = make()
    with postgres_server.held(80, "holder"):
        sample = collector.collect()
    assert sample.get("postgres_connections_by_application", "holder") == 80
    assert sample.get("postgres_connections_by_application", "tierwatch") == 1
    assert sample.get("postgres_connections", "idle") >= 80
    assert sample.get("postgres_max_connections") == MAX_CONNECTIONS
    assert sample.get("postgres_superuser_reserved_connections") == SUPERUSER_RESERVED
    assert sample.get("postgres_reserved_connections") == 0  # PostgreSQL 15 has no such setting
    assert sample.get("postgres_usable_connections") == USABLE
    total = sum(sample.series("postgres_connections").values())
    # the holders, the collector itself, the connection watcher, at most a passing superuser session
    assert 82 <= total <= 84
    assert sample.get("postgres_connections_used_ratio") == pytest.approx(total / USABLE)
    assert sample.get("postgres_connections_by_client_address", "127.0.0.1") == 81
    assert sample.get("postgres_connections_per_client_address_max") == 81

    released = poll(collector, lambda s: s.get("postgres_connections_by_application", "holder") is None)
    assert released.get("postgres_connections_used_ratio") == pytest.approx((total - 80) / USABLE)


def test_client_addresses_are_bounded_to_ten_and_other(
    make: MakeCollector, postgres_server: PostgresServer
) -> None:
    # 12 relayed addresses: 127.0.0.2 with 4 connections, 127.0.0.3 with 3, ten more with 1 each
    counts = {f"127.0.0.{i}": 1 for i in range(2, 14)} | {"127.0.0.2": 4, "127.0.0.3": 3}
    relays = [SourceAddressRelay(address, postgres_server.port) for address in counts]
    password = postgres_server.passwords[APP_ROLE]
    connections = []
    collector = make()
    try:
        for relay, (_, count) in zip(relays, counts.items(), strict=True):
            conninfo = f"host=127.0.0.1 port={relay.port} dbname=postgres user={APP_ROLE} password={password}"
            connections += [psycopg.connect(conninfo, autocommit=True) for _ in range(count)]
        sample = collector.collect()
    finally:
        for connection in connections:
            connection.close()
        for relay in relays:
            relay.close()
    by_address = sample.series("postgres_connections_by_client_address")
    assert len(by_address) == 11  # the ten largest and "other"
    assert by_address[("127.0.0.2",)] == 4
    assert by_address[("127.0.0.3",)] == 3
    assert sum(by_address.values()) == sum(sample.series("postgres_connections").values())
    # ties at one connection go to the smaller address: .7, .8, .9 and "local" are folded
    assert by_address[("other",)] == 4
    # 12 relayed, 127.0.0.1 (the collector) and the socket (the watcher)
    assert sample.get("postgres_client_addresses") == 14
    assert sample.get("postgres_connections_per_client_address_max") == 4
    assert sample.get("postgres_connections_per_client_address_median") == 1


def test_a_held_lock_shows_a_blocked_session_and_lock_load(
    make: MakeCollector, postgres_server: PostgresServer
) -> None:
    collector = make()
    with postgres_server.connect(APP_ROLE) as holder, postgres_server.connect(APP_ROLE) as waiter:
        holder.execute("CREATE TABLE IF NOT EXISTS locked (id int)")
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        blocked = threading.Thread(target=waiter.execute, args=["SELECT count(*) FROM locked"])
        blocked.start()
        collector.collect()  # from here on the sampler sees the waiter in every sample
        time.sleep(2.2)
        sample = collector.collect()
        holder.execute("COMMIT")
        blocked.join(5)
    assert sample.get("postgres_blocked_sessions") == 1
    assert sample.get("postgres_load_average_active_sessions", "lock") == 1
    assert sample.get("postgres_load_lock_wait_ratio") >= 0.5  # a passing watcher query may share it
    assert 2.0 <= sample.get("postgres_longest_query_seconds") < 5
    assert 2.0 <= sample.get("postgres_longest_transaction_seconds") < 5
    assert collector.collect().get("postgres_blocked_sessions") == 0


def test_an_idle_transaction_ages(make: MakeCollector, postgres_server: PostgresServer) -> None:
    collector = make()
    with postgres_server.connect(APP_ROLE) as idle:
        idle.execute("BEGIN")
        idle.execute("SELECT 1")
        first = collector.collect()
        time.sleep(1.0)
        second = collector.collect()
    assert first.get("postgres_connections", "idle_in_transaction") == 1
    grown = second.get("postgres_longest_idle_in_transaction_seconds") - first.get(
        "postgres_longest_idle_in_transaction_seconds"
    )
    assert 0.9 <= grown <= 1.5
    assert second.get("postgres_longest_transaction_seconds") >= second.get(
        "postgres_longest_idle_in_transaction_seconds"
    )
    assert collector.collect().get("postgres_longest_idle_in_transaction_seconds") == 0


def test_cpu_heavy_queries_raise_the_on_cpu_load(
    make: MakeCollector, postgres_server: PostgresServer
) -> None:
    collector = make()
    sessions = 3
    stop_at = time.monotonic() + 3.6

    def burn() -> None:
        with postgres_server.connect(APP_ROLE) as connection:
            while time.monotonic() < stop_at:
                connection.execute("SELECT count(*) FROM generate_series(1, 1000000)")

    burners = [threading.Thread(target=burn) for _ in range(sessions)]
    for burner in burners:
        burner.start()
    collector.collect()  # drops the samples taken before the burners ran
    time.sleep(3.2)  # three samples, all while the burners run
    sample = collector.collect()
    for burner in burners:
        burner.join()
    on_cpu = sample.get("postgres_load_average_active_sessions", "cpu")
    assert 1 < on_cpu <= sessions
    assert sample.get("postgres_host_vcpus") == os.cpu_count()  # the DSN points at this host
    assert sample.get("postgres_load_on_cpu_per_vcpu") == pytest.approx(on_cpu / os.cpu_count())


def test_a_local_servers_host_cpu_counts_every_process(
    make: MakeCollector, postgres_server: PostgresServer
) -> None:
    collector = make()
    with every_core_busy(10):
        time.sleep(0.3)
        collector.collect()
        time.sleep(1.5)
        sample = collector.collect()
    assert sample.get("postgres_host_cpu_utilization_ratio") >= 0.9  # none of it PostgreSQL's
    assert sample.get("postgres_load_on_cpu_per_vcpu") < 0.5
    collector.close()  # one session per role at a time (the module's watcher checks)
    postgres_server.wait_for_no_monitor_connections()
    # A configured vcpus says the server is elsewhere (a tunnel, say): this host's CPU is not its.
    entry = {
        "name": "main",
        "dsn": postgres_server.dsn(),
        "password": postgres_server.passwords[MONITOR_ROLE],
    }
    config = validate_config({"interval": 2, "postgres": [{**entry, "vcpus": 8}]})
    remote = build(config, config.postgres[0])
    try:
        for _ in range(2):
            assert remote.collect().get("postgres_host_cpu_utilization_ratio") is None
    finally:
        remote.close()


def test_database_counters(make: MakeCollector, postgres_server: PostgresServer, stats_database: str) -> None:
    collector = make()
    before = collector.collect()
    rollbacks = 7
    with postgres_server.connect(APP_ROLE, stats_database) as connection:
        for _ in range(rollbacks):
            connection.execute("BEGIN")
            connection.execute("UPDATE items SET v = v + 1 WHERE id = 1")
            connection.execute("ROLLBACK")
        connection.execute("SET work_mem = '64kB'")  # so that this sort spills to a temporary file
        connection.execute(
            "SELECT count(*) FROM (SELECT g FROM generate_series(1, 100000) g ORDER BY g DESC) s"
        )
    cause_deadlock(postgres_server, stats_database)  # rolls back two more transactions

    def grown(sample: Sample, name: str) -> float:
        return sample.get(name, stats_database) - before.get(name, stats_database)

    # each backend publishes its counters as it exits: wait for the last of them
    after = poll(
        collector,
        lambda sample: (
            grown(sample, "postgres_deadlocks_total") >= 1
            and grown(sample, "postgres_rollbacks_total") >= rollbacks + 2
        ),
    )
    assert grown(after, "postgres_deadlocks_total") == 1
    assert grown(after, "postgres_rollbacks_total") == rollbacks + 2
    assert grown(after, "postgres_commits_total") >= 2
    assert grown(after, "postgres_temp_bytes_total") >= 1_000_000


def cause_deadlock(server: PostgresServer, dbname: str) -> None:
    with server.connect(APP_ROLE, dbname) as first, server.connect(APP_ROLE, dbname) as second:
        for connection, row in ((first, 1), (second, 2)):
            connection.execute("BEGIN")
            connection.execute("UPDATE items SET v = v + 1 WHERE id = %s", [row])
        crossing = threading.Thread(target=_update_quietly, args=[first, 2])
        crossing.start()
        time.sleep(0.2)  # first now waits for second's row
        _update_quietly(second, 1)  # closes the cycle: one of the two is chosen as the victim
        crossing.join(5)
        for connection in (first, second):
            connection.execute("ROLLBACK")


def _update_quietly(connection: psycopg.Connection, row: int) -> None:
    with contextlib.suppress(psycopg.errors.DeadlockDetected):
        connection.execute("UPDATE items SET v = v + 1 WHERE id = %s", [row])


def test_scan_and_cache_ratios_cover_the_last_cycle(
    make: MakeCollector, postgres_server: PostgresServer, stats_database: str
) -> None:
    collector = make(dbname=stats_database)  # table scans are visible in the connected database only
    first = collector.collect()
    assert first.get("postgres_sequential_scan_ratio", stats_database) is None  # no previous cycle
    with postgres_server.connect(APP_ROLE, stats_database) as connection:
        for _ in range(3):
            connection.execute("SELECT sum(v) FROM items")
        connection.execute("SELECT v FROM items WHERE id = 42")
    sample = poll(collector, lambda s: s.get("postgres_sequential_scan_ratio", stats_database) is not None)
    assert sample.get("postgres_sequential_scan_ratio", stats_database) == 0.75
    assert sample.get("postgres_buffer_cache_hit_ratio", stats_database) >= 0.9
    assert sample.get("postgres_sequential_scan_ratio", "postgres") is None


def test_targets_of_one_server_report_each_database_once(
    postgres_server: PostgresServer, stats_database: str
) -> None:
    """A target per database: each reports its own database's counters, the first also those of the
    databases no target names, and every one the server-wide connections. (Two roles, so that the
    module's one-session-per-role check holds.)"""
    entries = [
        {
            "name": name,
            "dsn": postgres_server.dsn(user, dbname),
            "password": postgres_server.passwords[user],
        }
        for name, user, dbname in (
            ("main", MONITOR_ROLE, "postgres"),
            ("stats", UNPRIVILEGED_ROLE, stats_database),
        )
    ]
    config = validate_config({"interval": 2, "postgres": entries})
    collectors = [build(config, entry) for entry in config.postgres]
    try:
        main, stats = (collector.collect() for collector in collectors)
    finally:
        for collector in collectors:
            collector.close()
        postgres_server.wait_for_no_monitor_connections()

    def databases(sample: Sample) -> set[str]:
        return {labels[0] for labels in sample.series("postgres_commits_total")}

    with postgres_server.connect() as admin:
        every = {name for (name,) in admin.execute("SELECT datname FROM pg_database").fetchall()}
    assert {"postgres", "template1"} <= databases(main)
    assert databases(main) == every - {stats_database}
    assert databases(stats) == {stats_database}
    for sample in (main, stats):
        assert sample.get("postgres_max_connections") == MAX_CONNECTIONS
        assert sample.get("postgres_connections", "idle") is not None


def test_top_statements_are_evidence_not_labels(make: MakeCollector, postgres_server: PostgresServer) -> None:
    app_password = postgres_server.passwords[APP_ROLE]
    with postgres_server.connect() as admin:
        admin.execute("SELECT pg_stat_statements_reset()")
        admin.execute(f"ALTER ROLE {APP_ROLE} PASSWORD '{app_password}'")  # unchanged, but now recorded
    with postgres_server.connect(APP_ROLE) as connection:
        for _ in range(3):
            connection.execute("SELECT count(*) AS tw_marker FROM generate_series(1, 300000)")
    sample = make().collect()
    top = sample.details["top_queries"]
    assert top[0]["query"] == "SELECT count(*) AS tw_marker FROM generate_series($1, $2)"
    assert top[0]["calls"] == 3
    assert 0 < top[0]["mean_seconds"] < 1
    assert top[0]["total_seconds"] == pytest.approx(3 * top[0]["mean_seconds"])
    assert isinstance(top[0]["queryid"], int)
    texts = [entry["query"] for entry in top]
    assert f"ALTER ROLE {APP_ROLE} PASSWORD …" in texts
    assert not any(app_password in text for text in texts)
    labels = {value for (_, values) in sample.values for value in values}
    assert not any("tw_marker" in label or "ALTER" in label for label in labels)


SECRET = "tw-secret-7c1e"
# Utility statements that pg_stat_statements records with their literals as written.
SECRET_STATEMENTS = {
    f"ALTER ROLE {{role}} PASSWORD $${SECRET}-1$$": "ALTER ROLE {role} PASSWORD …",
    f"ALTER ROLE {{role}} PASSWORD $tw${SECRET}-2$tw$": "ALTER ROLE {role} PASSWORD …",
    f"ALTER ROLE {{role}} PASSWORD E'x\\'{SECRET}-3'": "ALTER ROLE {role} PASSWORD …",
    f"COMMENT ON ROLE {{role}} IS $${SECRET}-4$$": "COMMENT ON ROLE {role} IS '…'",
    f"COMMENT ON ROLE {{role}} IS $note$ it's {SECRET}-5 $note$": "COMMENT ON ROLE {role} IS '…'",
    f"COMMENT ON ROLE {{role}} IS E'it\\'s {SECRET}-6'": "COMMENT ON ROLE {role} IS '…'",
}


@pytest.fixture
def scratch_role(postgres_server: PostgresServer) -> Iterator[str]:
    """A role of no use but to be altered by a test, dropped afterwards."""
    role = "tw_scratch"
    with postgres_server.connect() as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} NOLOGIN")
    yield role
    with postgres_server.connect() as admin:
        admin.execute(f"DROP ROLE {role}")


def test_no_string_literal_of_any_form_reaches_the_top_statements(
    make: MakeCollector, postgres_server: PostgresServer, scratch_role: str
) -> None:
    with postgres_server.connect() as admin:
        admin.execute("SELECT pg_stat_statements_reset()")
        for statement in SECRET_STATEMENTS:
            admin.execute(statement.format(role=scratch_role))
    sample = make().collect()
    with postgres_server.connect(MONITOR_ROLE) as monitor:
        listed = read_top_queries(monitor, 1000)  # beyond the top five: every statement recorded
    assert listed is not None
    texts = {entry["query"] for entry in listed}
    assert {masked.format(role=scratch_role) for masked in SECRET_STATEMENTS.values()} <= texts
    assert not any(SECRET in text for text in texts)
    assert SECRET not in repr(sample.details)


def test_a_monitor_role_named_in_capitals_reads_top_statements_without_its_own(
    postgres_server: PostgresServer,
) -> None:
    """current_user::regrole would fold "Monitor" to monitor: no such role, a failed cycle."""
    role, password = "Monitor", "capital-pw-5e2d"
    with postgres_server.connect() as admin:
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        admin.execute(f'GRANT pg_monitor TO "{role}"')
        admin.execute("SELECT pg_stat_statements_reset()")
    entry = {"name": "main", "dsn": postgres_server.dsn(role), "password": password}
    config = validate_config({"interval": 2, "postgres": [entry]})
    collector = build(config, config.postgres[0])
    try:
        with postgres_server.connect(APP_ROLE) as connection:
            connection.execute("SELECT count(*) AS tw_capital FROM generate_series(1, 300000)")
        # The cycle statement runs before the top statements are read: it is recorded by then.
        texts = [entry["query"] for entry in collector.collect().details["top_queries"]]
    finally:
        collector.close()
        postgres_server.wait_for_no_monitor_connections()
        with postgres_server.connect() as admin:
            admin.execute(f'DROP ROLE "{role}"')
    assert any("tw_capital" in text for text in texts)
    assert not any("pg_blocking_pids" in text for text in texts)  # the monitor's own cycle statement


@pytest.fixture
def old_statements_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A database whose pg_stat_statements is at 1.7, as pg_upgrade from PostgreSQL 12 leaves it until
    ALTER EXTENSION ... UPDATE: its view names the times total_time and mean_time."""
    name = "tw_old_statements"
    with postgres_server.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    with postgres_server.connect(dbname=name) as admin:
        admin.execute("CREATE EXTENSION pg_stat_statements VERSION '1.7'")
        admin.execute("SELECT pg_stat_statements_reset()")
    yield name
    with postgres_server.connect() as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_top_statements_of_an_extension_older_than_1_8(
    make: MakeCollector, postgres_server: PostgresServer, old_statements_database: str
) -> None:
    with postgres_server.connect(APP_ROLE, old_statements_database) as connection:
        for _ in range(2):
            connection.execute("SELECT count(*) AS tw_old_marker FROM generate_series(1, 300000)")
    collector = make(dbname=old_statements_database)
    sample = collector.collect()  # the first cycle reads the top statements
    top = {entry["query"]: entry for entry in sample.details["top_queries"]}
    marker = top["SELECT count(*) AS tw_old_marker FROM generate_series($1, $2)"]
    assert marker["calls"] == 2
    assert marker["total_seconds"] == pytest.approx(2 * marker["mean_seconds"])
    assert sample.get("postgres_max_connections") == MAX_CONNECTIONS


def test_pg_monitor_alone_sees_every_session(make: MakeCollector, postgres_server: PostgresServer) -> None:
    with postgres_server.held(3, "visible"):
        sample = make().collect()
    assert sample.get("postgres_connections_by_application", "visible") == 3
    assert sample.get("postgres_connections", "unknown") is None
    assert sample.get("postgres_connections_by_client_address", "127.0.0.1") >= 4


def test_without_pg_read_all_stats_it_runs_and_says_so_once(
    make: MakeCollector, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    collector = make(UNPRIVILEGED_ROLE)
    with caplog.at_level(logging.WARNING, "tierwatch.postgres"), postgres_server.held(3, "hidden"):
        first = collector.collect()
        second = collector.collect()
    warnings = [
        record.getMessage() for record in caplog.records if "pg_read_all_stats" in record.getMessage()
    ]
    assert len(warnings) == 1
    assert f"GRANT pg_monitor TO {UNPRIVILEGED_ROLE}" in warnings[0]
    # other roles' sessions are counted, without their state, name or address
    assert first.get("postgres_connections", "unknown") >= 3
    assert first.get("postgres_connections_by_application", "hidden") is None
    assert first.get("postgres_connections_by_application", "unknown") >= 3
    total = sum(second.series("postgres_connections").values())
    assert second.get("postgres_connections_used_ratio") == pytest.approx(total / USABLE)
