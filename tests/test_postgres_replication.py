"""Replication seen from both ends: a real streaming standby of the test cluster whose replay is paused,
so that the primary's lag per replica and the standby's replay delay have something to show."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from agent.config.loader import validate_config
from collectors.base import Sample
from collectors.postgres import PostgresCollector, build
from tests.fixtures.postgres_server import MONITOR_ROLE, PostgresServer, owned_temp_dir

pytestmark = pytest.mark.usefixtures("one_connection_per_target")
REPLICA = "replica-a"


@pytest.fixture(scope="module")
def standby(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    root = owned_temp_dir("tierwatch-pg-standby-")
    replica = postgres_server.standby(root, REPLICA)
    try:
        replica.start()
        yield replica
    finally:
        if (replica.data / "postmaster.pid").exists():
            replica.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def collector_of(server: PostgresServer) -> PostgresCollector:
    entry = {"name": "main", "dsn": server.dsn(), "password": server.passwords[MONITOR_ROLE]}
    config = validate_config({"interval": 2, "postgres": [entry]})
    return build(config, config.postgres[0])


def poll(collector: PostgresCollector, done: Callable[[Sample], bool], timeout: float = 10.0) -> Sample:
    deadline = time.monotonic() + timeout
    while not done(sample := collector.collect()):
        assert time.monotonic() < deadline, "replication never reached the expected state"
        time.sleep(0.1)
    return sample


def test_paused_replay_shows_lag_on_the_primary_and_delay_on_the_standby(
    postgres_server: PostgresServer, standby: PostgresServer
) -> None:
    primary, replica = collector_of(postgres_server), collector_of(standby)
    try:
        with postgres_server.connect() as admin:
            # The standby's delay counts from the last transaction it replayed: give it one. The test
            # cluster commits asynchronously; this commit must be written before "caught up" means it.
            admin.execute("SET synchronous_commit = on")
            admin.execute("CREATE TABLE IF NOT EXISTS replicated (id int)")
        caught_up = poll(primary, lambda s: s.get("postgres_replica_replay_lag_bytes", REPLICA) == 0)
        assert caught_up.get("postgres_in_recovery") == 0
        assert caught_up.get("postgres_replicas") == 1
        assert caught_up.get("postgres_replica_replay_lag_seconds", REPLICA) == 0
        assert replica.collect().get("postgres_replay_delay_seconds") == 0

        with standby.connect() as standby_admin, postgres_server.connect() as admin:
            standby_admin.execute("SELECT pg_wal_replay_pause()")
            admin.execute("INSERT INTO replicated SELECT generate_series(1, 1000)")
            behind = poll(primary, lambda s: s.get("postgres_replica_replay_lag_bytes", REPLICA) > 0)
            delayed = poll(replica, lambda s: s.get("postgres_replay_delay_seconds") > 0)
            time.sleep(0.5)
            later = replica.collect()
            standby_admin.execute("SELECT pg_wal_replay_resume()")
        assert 0 < behind.get("postgres_replica_replay_lag_bytes", REPLICA) < 1_000_000
        assert delayed.get("postgres_in_recovery") == 1
        assert delayed.get("postgres_replicas") is None  # a standby reports its own delay instead
        assert (
            later.get("postgres_replay_delay_seconds") >= delayed.get("postgres_replay_delay_seconds") + 0.4
        )
        poll(primary, lambda s: s.get("postgres_replica_replay_lag_bytes", REPLICA) == 0)
        poll(replica, lambda s: s.get("postgres_replay_delay_seconds") == 0)
    finally:
        primary.close()
        replica.close()
        postgres_server.wait_for_no_monitor_connections()
