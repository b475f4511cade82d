"""Replication seen from both ends: a real streaming standby of the test cluster whose replay is paused,
so that the primary's lag per replica and the standby's replay delay have something to show."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.config.loader import validate_config
from collectors.base import Sample
from collectors.postgres import PostgresCollector, build
from tests.fixtures.postgres_server import MONITOR_ROLE, SUPERUSER, PostgresServer, as_os_user, owned_temp_dir
from tests.scenarios import scenario_agent, wait_for_alerts
from tests.support import value

pytestmark = pytest.mark.usefixtures("one_connection_per_target")
REPLICA = "replica-a"


def running_standby(
    primary: PostgresServer, prefix: str, settings: dict[str, str] | None = None
) -> Iterator[PostgresServer]:
    root = owned_temp_dir(prefix)
    replica = primary.standby(root, REPLICA, settings)
    try:
        replica.start()
        yield replica
    finally:
        if (replica.data / "postmaster.pid").exists():
            replica.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def standby(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    yield from running_standby(postgres_server, "tierwatch-pg-standby-")


def target_of(server: PostgresServer) -> dict[str, str]:
    """The server as the monitor role's target named "main", in the configuration's terms."""
    return {"name": "main", "dsn": server.dsn(), "password": server.passwords[MONITOR_ROLE]}


def collector_of(server: PostgresServer) -> PostgresCollector:
    config = validate_config({"interval": 2, "postgres": [target_of(server)]})
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


@pytest.fixture
def delayed_twin(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """A second standby that connects under the first one's name (as every standby made with
    ``pg_basebackup -R`` connects as ``walreceiver``) and holds each transaction back for an hour: it
    receives WAL at once but replays no commit."""
    # The primary learns how far a standby replayed from its status reports; every second instead of
    # the default ten lets the lag in seconds show (and grow) within a short test.
    settings = {"recovery_min_apply_delay": "'1h'", "wal_receiver_status_interval": "1"}
    yield from running_standby(postgres_server, "tierwatch-pg-twin-", settings)


def commit(server: PostgresServer) -> str:
    """A committed transaction on the primary, and the WAL position right after it."""
    with server.connect() as admin:
        admin.execute("SET synchronous_commit = on")  # written before the standbys are asked about it
        admin.execute("CREATE TABLE IF NOT EXISTS replicated (id int)")
        admin.execute("INSERT INTO replicated VALUES (1)")
        [(lsn,)] = admin.execute("SELECT pg_current_wal_lsn()::text").fetchall()
    return str(lsn)


def wait_for_replayed(server: PostgresServer, lsn: str, count: int, timeout: float = 10.0) -> None:
    """Waits until the primary sees exactly ``count`` of the replicas named REPLICA past ``lsn``."""
    query = (
        "SELECT count(*) FILTER (WHERE replay_lsn >= %s::pg_lsn) FROM pg_stat_replication "
        "WHERE application_name = %s"
    )
    deadline = time.monotonic() + timeout
    with server.connect() as admin:
        while admin.execute(query, [lsn, REPLICA]).fetchone() != (count,):
            assert time.monotonic() < deadline, f"never {count} replicas past {lsn}"
            time.sleep(0.05)


def test_replicas_sharing_a_name_show_the_worst_lag(
    postgres_server: PostgresServer, standby: PostgresServer, delayed_twin: PostgresServer
) -> None:
    """Each of the two lags in turn while the other has caught up, so that whichever of them comes
    first in pg_stat_replication, one of the two cycles has the lagging row before the caught-up one."""
    primary = collector_of(postgres_server)
    try:
        wait_for_replayed(postgres_server, commit(postgres_server), 1)  # the first standby only
        twin_behind = primary.collect()

        with delayed_twin.connect() as twin_admin:
            twin_admin.execute("ALTER SYSTEM SET recovery_min_apply_delay = 0")
            twin_admin.execute("SELECT pg_reload_conf()")
        wait_for_replayed(postgres_server, commit(postgres_server), 2)
        with standby.connect() as standby_admin:
            standby_admin.execute("SELECT pg_wal_replay_pause()")
            try:
                wait_for_replayed(postgres_server, commit(postgres_server), 1)  # the twin only
                first_behind = primary.collect()
            finally:
                standby_admin.execute("SELECT pg_wal_replay_resume()")
    finally:
        primary.close()
        postgres_server.wait_for_no_monitor_connections()
    for sample in (twin_behind, first_behind):
        assert sample.get("postgres_replicas") == 2  # both counted, though under one name
        assert sample.get("postgres_replica_replay_lag_bytes", REPLICA) > 0


def test_a_standby_that_replayed_nothing_since_it_started_reports_its_delay(
    postgres_server: PostgresServer, delayed_twin: PostgresServer
) -> None:
    """No transaction replayed since the start leaves no replay timestamp; WAL waiting to be replayed
    must still show as a delay, at least as long as the standby has been up."""
    state = (
        "SELECT pg_last_xact_replay_timestamp() IS NULL, "
        "pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), "
        "extract(epoch FROM now() - pg_postmaster_start_time())::float8"
    )
    collector = collector_of(delayed_twin)
    try:
        commit(postgres_server)
        with delayed_twin.connect() as twin_admin:
            deadline = time.monotonic() + 10
            while twin_admin.execute(state).fetchone()[:2] != (True, True):
                assert time.monotonic() < deadline, "the twin never received the transaction"
                time.sleep(0.05)
            sample = collector.collect()
            [(_, _, uptime)] = twin_admin.execute(state).fetchall()
    finally:
        collector.close()
    assert sample.get("postgres_in_recovery") == 1
    delay = sample.get("postgres_replay_delay_seconds")
    assert delay is not None
    assert 0 < delay <= uptime < delay + 2  # the time since the start, not the hour it holds back


@contextmanager
def receiving_wal(server: PostgresServer) -> Iterator[None]:
    """pg_receivewal streaming from ``server`` (as WAL archiving from a standby does): a walsender there,
    listed in its pg_stat_replication as a cascading standby would be."""
    directory = owned_temp_dir("tierwatch-pg-receivewal-")
    command = [server.tool("pg_receivewal"), "-D", str(directory), "-h", str(server.root)]
    receiver = subprocess.Popen(as_os_user([*command, "-p", str(server.port), "-U", SUPERUSER, "-n"]))
    try:
        with server.connect() as admin:
            deadline = time.monotonic() + 10
            while admin.execute("SELECT count(*) FROM pg_stat_replication").fetchone() != (1,):
                assert receiver.poll() is None, "pg_receivewal exited"
                assert time.monotonic() < deadline, "pg_receivewal never streamed"
                time.sleep(0.05)
        yield
    finally:
        receiver.terminate()
        receiver.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_standby_that_feeds_wal_onwards_is_still_read(standby: PostgresServer) -> None:
    """A standby's own walsenders (a cascading standby, pg_receivewal) list rows in its
    pg_stat_replication; the primary's current WAL position, which lag needs, is not to be had there."""
    collector = collector_of(standby)
    try:
        with receiving_wal(standby):
            sample = collector.collect()
    finally:
        collector.close()
    assert sample.get("postgres_in_recovery") == 1
    assert sample.get("postgres_replay_delay_seconds") is not None
    assert sample.get("postgres_replicas") is None


@pytest.fixture
def own_standby(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """A standby of this test's own, free to be cut off from the primary."""
    yield from running_standby(postgres_server, "tierwatch-pg-cut-")


def test_a_standby_cut_off_from_its_primary_is_not_caught_up(
    postgres_server: PostgresServer, own_standby: PostgresServer
) -> None:
    """Its WAL receiver gone (primary unreachable, the WAL it needs removed there), a standby has replayed
    everything it received while the primary commits on: its delay grows, it is not 0."""
    collector = collector_of(own_standby)
    try:
        commit(postgres_server)
        poll(collector, lambda s: s.get("postgres_replay_delay_seconds") == 0)
        with own_standby.connect() as standby_admin:
            standby_admin.execute("ALTER SYSTEM SET primary_conninfo = ''")
            standby_admin.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 10
            while standby_admin.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone() != (0,):
                assert time.monotonic() < deadline, "the WAL receiver never stopped"
                time.sleep(0.05)
        commit(postgres_server)  # never reaches the standby
        cut_off = collector.collect()
        time.sleep(0.5)
        later = collector.collect()
    finally:
        collector.close()
    assert cut_off.get("postgres_in_recovery") == 1
    assert cut_off.get("postgres_replay_delay_seconds") > 0
    assert later.get("postgres_replay_delay_seconds") >= cut_off.get("postgres_replay_delay_seconds") + 0.4


# The default 30 s would outlast the test; a lag of a few seconds is as real a lag.
LAG_RULES = {"ReplicationLagHigh": {"for": 1, "lag_seconds": 2}}


@pytest.mark.usefixtures("delayed_twin")
def test_a_replica_holding_back_a_commit_is_replication_lag_high(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """The twin receives the commit but will not replay it for an hour: the primary's lag in seconds
    for it grows with each status report, and the agent watching the primary names the lag."""
    with scenario_agent(tmp_path, LAG_RULES, postgres=[target_of(postgres_server)]) as agent:
        commit(postgres_server)
        alerts = wait_for_alerts(agent, {("ReplicationLagHigh", "main")})
        lag = value(
            agent.metrics(), "tierwatch_postgres_replica_replay_lag_seconds", target="main", replica=REPLICA
        )
    postgres_server.wait_for_no_monitor_connections()
    alert = alerts["ReplicationLagHigh"]
    assert alert["severity"] == "warning"
    assert alert["tier"] == "database"
    assert alert["evidence"]["db_replication_lag_seconds"] >= 2
    assert alert["evidence"]["because"] == ["db_replication_lag_seconds"]
    assert lag is not None
    assert lag >= alert["evidence"]["db_replication_lag_seconds"]  # still growing: nothing replayed
