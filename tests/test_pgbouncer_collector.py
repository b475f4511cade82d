"""The PgBouncer collector against a real PgBouncer 1.18 in front of the test cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent.config.loader import validate_config
from collectors.base import CollectorError, Reason
from collectors.pgbouncer import PgBouncerCollector, build
from collectors.postgres.bounded import OTHER, TOP_N
from tests.fixtures.pgbouncer_server import (
    MAX_CLIENT_CONN,
    POOL_DATABASE,
    POOL_SIZE,
    STATS_USER,
    PgBouncerServer,
    pgbouncer_in_front,
)
from tests.fixtures.postgres_server import APP_ROLE, PostgresServer, owned_temp_dir

POOL = (POOL_DATABASE, APP_ROLE)
MakeCollector = Callable[..., PgBouncerCollector]


@pytest.fixture
def make(pgbouncer_server: PgBouncerServer) -> Iterator[MakeCollector]:
    made: list[PgBouncerCollector] = []

    def make_collector(password: str | None = None) -> PgBouncerCollector:
        entry = {
            "name": "pool",
            "dsn": pgbouncer_server.dsn(),
            "password": password or pgbouncer_server.passwords[STATS_USER],
        }
        config = validate_config({"interval": 2, "pgbouncer": [entry]})
        made.append(build(config, config.pgbouncer[0]))
        return made[-1]

    yield make_collector
    for collector in made:
        collector.close()


def test_an_exhausted_pool_queues_clients(make: MakeCollector, pgbouncer_server: PgBouncerServer) -> None:
    collector = make()
    clients = [pgbouncer_server.connect() for _ in range(POOL_SIZE + 2)]
    sleepers = [threading.Thread(target=client.execute, args=["SELECT pg_sleep(1.2)"]) for client in clients]
    try:
        for sleeper in sleepers:
            sleeper.start()
        time.sleep(0.5)
        sample = collector.collect()
        for sleeper in sleepers:
            sleeper.join(5)
        drained = collector.collect()
    finally:
        for client in clients:
            client.close()
    assert sample.get("pgbouncer_clients_active", *POOL) == POOL_SIZE
    assert sample.get("pgbouncer_clients_waiting", *POOL) == 2
    assert sample.get("pgbouncer_servers_active", *POOL) == POOL_SIZE
    assert 0.4 <= sample.get("pgbouncer_longest_client_wait_seconds", *POOL) < 1.2
    assert drained.get("pgbouncer_clients_waiting", *POOL) == 0
    assert drained.get("pgbouncer_longest_client_wait_seconds", *POOL) == 0
    assert drained.get("pgbouncer_servers_idle", *POOL) == POOL_SIZE
    # the console's own pseudo-pool is not an application pool
    assert sample.get("pgbouncer_clients_active", "pgbouncer", "pgbouncer") is None


def test_throughput_and_client_headroom(make: MakeCollector, pgbouncer_server: PgBouncerServer) -> None:
    collector = make()
    transactions = 30
    with pgbouncer_server.connect() as client:
        outer_began = time.monotonic()
        before = collector.collect()
        inner_began = time.monotonic()
        for _ in range(transactions):
            client.execute("SELECT 1")
        inner = time.monotonic() - inner_began
        after = collector.collect()
        outer = time.monotonic() - outer_began

    def grown(name: str) -> float:
        return after.get(name, POOL_DATABASE) - before.get(name, POOL_DATABASE)

    assert grown("pgbouncer_transactions_total") == transactions
    assert grown("pgbouncer_queries_total") == transactions
    # the collector's own interval lies between the time spent querying and the whole span
    for rate in ("pgbouncer_transactions_per_second", "pgbouncer_queries_per_second"):
        assert transactions / outer <= after.get(rate, POOL_DATABASE) <= transactions / inner
    assert after.get("pgbouncer_pool_size", POOL_DATABASE) == POOL_SIZE
    assert after.get("pgbouncer_max_client_connections") == MAX_CLIENT_CONN
    assert after.get("pgbouncer_client_connections") == 2  # the client and the console connection
    assert after.get("pgbouncer_client_connections_used_ratio") == 2 / MAX_CLIENT_CONN


def test_wrong_password_is_auth(make: MakeCollector) -> None:
    wrong = "wrong-console-password"
    with pytest.raises(CollectorError) as caught:
        make(password=wrong).collect()
    assert caught.value.reason is Reason.AUTH
    assert wrong not in str(caught.value)


def test_stopped_pgbouncer_is_unreachable_then_recovers(
    make: MakeCollector, pgbouncer_server: PgBouncerServer
) -> None:
    collector = make()
    collector.collect()
    pgbouncer_server.stop()
    try:
        with pytest.raises(CollectorError) as lost:
            collector.collect()
        with pytest.raises(CollectorError) as refused:
            collector.collect()
    finally:
        pgbouncer_server.start()
    assert lost.value.reason is Reason.UNREACHABLE
    assert refused.value.reason is Reason.UNREACHABLE
    assert "connection refused" in refused.value.detail
    time.sleep(1.0)  # the first backoff step
    assert collector.collect().get("pgbouncer_max_client_connections") == MAX_CLIENT_CONN


def test_databases_an_auto_database_makes_are_bounded(postgres_server: PostgresServer) -> None:
    """Behind ``* =`` every database name a client asks for becomes one of PgBouncer's: the ten busiest
    keep their series, the rest add up to "other" in the rates, and no lifetime total sums them."""
    names = [f"tenant_{number:02}" for number in range(TOP_N + 3)]
    with pgbouncer_in_front(
        postgres_server, owned_temp_dir("tierwatch-autodb-"), database="*", pool_size=1, max_client_conn=40
    ) as autodb:

        def transactions(repeat: Callable[[str], int]) -> None:
            for name in names:
                with autodb.connect(dbname=name) as client:
                    for _ in range(repeat(name)):
                        client.execute("SELECT 1")

        entry = {"name": "pool", "dsn": autodb.dsn(), "password": autodb.passwords[STATS_USER]}
        config = validate_config({"interval": 2, "pgbouncer": [entry]})
        collector = build(config, config.pgbouncer[0])
        try:
            transactions(lambda _: 1)
            collector.collect()
            transactions(lambda name: 1 + 3 * names.index(name))  # the later, the busier
            time.sleep(0.2)
            sample = collector.collect()
        finally:
            collector.close()
    busiest = set(names[-TOP_N:])
    assert {labels[0] for labels in sample.series("pgbouncer_transactions_total")} == busiest
    assert {labels[0] for labels in sample.series("pgbouncer_pool_size")} == busiest
    rates = sample.series("pgbouncer_transactions_per_second")
    assert {labels[0] for labels in rates} == busiest | {OTHER}
    assert rates[(OTHER,)] > 0  # the three quietest still count, together
