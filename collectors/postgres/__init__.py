"""PostgreSQL tier: connections against the usable maximum, DB load by wait class, waits, per-database
throughput and efficiency, replication lag and the top statements, over one held connection.

The role needs only ``pg_monitor`` (docs/postgres.md). Without pg_read_all_stats the collector still
runs, says once what it cannot see, and counts other roles' sessions as state ``unknown``.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
import psycopg

from agent.config.model import Config, PostgresTarget
from collectors.base import Collector, Sample, SampleBuilder
from collectors.deltas import Deltas
from collectors.host import cpu_shares, procfs, read_required
from collectors.postgres import queries
from collectors.postgres.bounded import top_n
from collectors.postgres.dsn import endpoint, entry_connector, is_local, parse_dsn, server
from collectors.postgres.metrics import POSTGRES_METRICS, POSTGRES_READINGS
from collectors.postgres.sampler import LoadSampler
from collectors.postgres.session import Connect, Session

log = logging.getLogger("tierwatch.postgres")
Clock = Callable[[], float]
HostCpu = Callable[[], procfs.CpuTicks]  # the DB host's CPU ticks so far, when it is this machine
MAIN_STATES = ("active", "idle", "idle_in_transaction", "idle_in_transaction_aborted")
WAIT_SERIES = {
    "blocked": "postgres_blocked_sessions",
    "query": "postgres_longest_query_seconds",
    "transaction": "postgres_longest_transaction_seconds",
    "idle_in_transaction": "postgres_longest_idle_in_transaction_seconds",
}
SAMPLE_PERIOD_SECONDS = 1.0
TOP_QUERIES = 5
# pg_stat_statements reads its whole query-text file per call: evidence, not a per-second signal.
TOP_QUERIES_EVERY_SECONDS = 30.0
HIDDEN_FROM_UNPRIVILEGED = (
    "other roles' session states, wait events, query and transaction ages, client addresses and "
    "application names (their sessions count as state 'unknown'), replication positions and other "
    "roles' statements"
)


class PostgresCollector(Collector):
    name = "postgres"
    tier = "database"
    metrics = POSTGRES_METRICS
    readings = POSTGRES_READINGS

    def __init__(
        self,
        target: str,
        connect: Connect,
        *,
        where: str,
        vcpus: int | None,
        wait: float,
        sample_period: float | None = SAMPLE_PERIOD_SECONDS,
        top_queries_every: float = TOP_QUERIES_EVERY_SECONDS,
        databases: queries.DatabaseShare = queries.EVERY_DATABASE,
        host_cpu: HostCpu | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        super().__init__(target)
        self._where = where
        self._vcpus = vcpus
        self._host_cpu = host_cpu
        self._databases_share = databases
        self._session = Session(connect, where, wait=wait, on_connect=self._on_connect, clock=clock)
        self._sampler = LoadSampler(self._session, sample_period)
        self._deltas = Deltas()
        self._clock = clock
        self._wall_clock = wall_clock
        self._limits: queries.Limits | None = None
        self._top_queries_every = top_queries_every
        self._top_queries_due = 0.0
        self._top_queries: tuple[dict[str, object], ...] = ()
        self._said_once: set[str] = set()

    def describe(self) -> str:
        vcpus = self._vcpus if self._vcpus is not None else "unknown (set vcpus)"
        return f"postgres {self.target} at {self._where}, DB host vCPUs {vcpus}"

    def close(self) -> None:
        self._sampler.stop()
        self._session.close()

    def collect(self) -> Sample:
        self._sampler.start(self.target)
        with self._session.cycle() as connection:
            activity = queries.read_activity(connection, self._databases_share)
            load = self._sampler.average(activity.load)
            self._refresh_top_queries(connection)
        limits = self._limits
        assert limits is not None  # set by _on_connect before the session hands out a connection
        out = self.builder()
        self._deltas.begin(self._clock())
        self._connections(out, activity, limits)
        self._load(out, load)
        if self._host_cpu is not None:
            self._host(out, self._host_cpu())
        for key, series in WAIT_SERIES.items():
            # No session in that state: nothing is blocked, nothing is old. A query that began after
            # the statement's now() would have a negative age.
            out.set(series, max(0.0, activity.waits.get(key, 0.0)))
        self._databases(out, activity.databases)
        self._replication(out, activity.replication)
        out.detail("top_queries", self._top_queries)
        return out.build(self.name, self.target, self._wall_clock())

    def _on_connect(self, connection: psycopg.Connection) -> None:
        self._limits = queries.read_limits(connection)
        if not self._limits.reads_all_stats:
            self._say_once(
                "stats",
                f"postgres {self.target}: role {self._limits.user} is not a member of pg_read_all_stats "
                f"(GRANT pg_monitor TO {self._limits.user}); it cannot see {HIDDEN_FROM_UNPRIVILEGED}",
            )

    def _say_once(self, topic: str, message: str) -> None:
        if topic not in self._said_once:
            self._said_once.add(topic)
            log.warning("%s", message)

    def _refresh_top_queries(self, connection: psycopg.Connection) -> None:
        now = self._clock()
        if now < self._top_queries_due:
            return
        self._top_queries_due = now + self._top_queries_every
        found = queries.read_top_queries(connection, TOP_QUERIES)
        if found is None:
            self._say_once(
                "statements",
                f"postgres {self.target}: pg_stat_statements is not installed in this database or not "
                "readable (shared_preload_libraries and CREATE EXTENSION); no top statements",
            )
        self._top_queries = found or ()

    def _connections(self, out: SampleBuilder, activity: queries.Activity, limits: queries.Limits) -> None:
        for state in {*MAIN_STATES, *activity.by_state}:
            out.set("postgres_connections", activity.by_state.get(state, 0.0), state)
        out.set("postgres_max_connections", limits.max_connections)
        out.set("postgres_superuser_reserved_connections", limits.superuser_reserved)
        out.set("postgres_reserved_connections", limits.reserved)
        out.set("postgres_usable_connections", limits.usable)
        out.ratio("postgres_connections_used_ratio", sum(activity.by_state.values()), limits.usable)
        for application, count in top_n(activity.by_application).items():
            out.set("postgres_connections_by_application", count, application)
        for address, count in top_n(activity.by_client).items():
            out.set("postgres_connections_by_client_address", count, address)
        per_address = [count for address, count in activity.by_client.items() if address != queries.HIDDEN]
        out.set("postgres_client_addresses", len(per_address))
        if per_address:
            out.set("postgres_connections_per_client_address_median", statistics.median(per_address))
            out.set("postgres_connections_per_client_address_max", max(per_address))

    def _load(self, out: SampleBuilder, load: Mapping[str, float]) -> None:
        for wait_class, sessions in load.items():
            out.set("postgres_load_average_active_sessions", sessions, wait_class)
        out.ratio("postgres_load_lock_wait_ratio", load["lock"], sum(load.values()))
        if self._vcpus is not None:
            out.set("postgres_host_vcpus", self._vcpus)
            out.set("postgres_load_on_cpu_per_vcpu", load["cpu"] / self._vcpus)

    def _host(self, out: SampleBuilder, ticks: procfs.CpuTicks) -> None:
        # The whole host's CPU, PostgreSQL's or not: a DB host busy with something else still leaves
        # the database short of CPU.
        shares = cpu_shares(self._deltas, "host", ticks)
        if shares is not None:
            out.set("postgres_host_cpu_utilization_ratio", shares[0])

    def _databases(self, out: SampleBuilder, databases: list[queries.DatabaseStats]) -> None:
        for db in databases:
            out.set("postgres_commits_total", db.commits, db.name)
            out.set("postgres_rollbacks_total", db.rollbacks, db.name)
            out.set("postgres_deadlocks_total", db.deadlocks, db.name)
            out.set("postgres_temp_bytes_total", db.temp_bytes, db.name)
            hit = self._deltas.delta((db.name, "hit"), db.blocks_hit)
            read = self._deltas.delta((db.name, "read"), db.blocks_read)
            if hit is not None and read is not None:
                out.ratio("postgres_buffer_cache_hit_ratio", hit, hit + read, db.name)
            if db.seq_scans is None or db.index_scans is None:
                continue
            seq = self._deltas.delta((db.name, "seq"), db.seq_scans)
            index = self._deltas.delta((db.name, "index"), db.index_scans)
            if seq is not None and index is not None:
                out.ratio("postgres_sequential_scan_ratio", seq, seq + index, db.name)

    def _replication(self, out: SampleBuilder, replication: queries.Replication) -> None:
        out.set("postgres_in_recovery", replication.in_recovery)
        if replication.in_recovery:
            if replication.replay_delay is not None:
                out.set("postgres_replay_delay_seconds", replication.replay_delay)
            return
        out.set("postgres_replicas", replication.replicas)
        for series, lags in (
            ("postgres_replica_replay_lag_seconds", replication.lag_seconds),
            ("postgres_replica_replay_lag_bytes", replication.lag_bytes),
        ):
            for replica, lag in top_n(lags, combine=max).items():
                out.set(series, lag, replica)


def local_vcpus(params: Mapping[str, str], configured: int | None) -> int | None:
    """The DB host's vCPUs: configured, else this machine's when the DSN points here, else unknown."""
    if configured is not None:
        return configured
    return os.cpu_count() if is_local(params) else None


def read_host_cpu() -> procfs.CpuTicks:
    """This machine's CPU ticks so far, from the procfs psutil reads (the host section's ``procfs``)."""
    return procfs.parse_stat(read_required(Path(psutil.PROCFS_PATH) / "stat")).overall


def database_share(config: Config, entry: PostgresTarget, params: Mapping[str, str]) -> queries.DatabaseShare:
    """What ``entry`` reports of its server's pg_stat_database, given the other targets configured on the
    same server: its own database, and, for the first of them, also every database that none of the
    others names in its DSN. Each database is then read and exported once per server, not once per
    target; the server-wide facts (connections, load, waits, replication) stay with every target."""
    siblings: list[tuple[PostgresTarget, Mapping[str, str]]] = []
    for other in config.postgres:
        try:
            other_params = parse_dsn(other.dsn.get_secret_value())
        except ValueError:
            continue  # its own build reports it
        if server(other_params) == server(params):
            siblings.append((other, other_params))
    if siblings and siblings[0][0].name != entry.name:
        return queries.DatabaseShare(others=False)
    own = params.get("dbname")
    # A DSN without dbname gets libpq's default: that target reports it, and so may the first one.
    named = {other_params.get("dbname") for _, other_params in siblings[1:]}
    return queries.DatabaseShare(elsewhere=tuple(sorted(name for name in named if name and name != own)))


def build(config: Config, entry: PostgresTarget) -> PostgresCollector:
    timeout = config.cycle_timeout
    connect, params = entry_connector("postgres", entry, timeout)
    return PostgresCollector(
        entry.name,
        connect,
        where=endpoint(params),
        vcpus=local_vcpus(params, entry.vcpus),
        wait=timeout / 4,
        # A cycle every second or faster samples the load itself; a thread would only repeat it.
        sample_period=SAMPLE_PERIOD_SECONDS if config.interval > SAMPLE_PERIOD_SECONDS else None,
        databases=database_share(config, entry, params),
        # As with vcpus: a server on this machine is watched from its host, unless vcpus says otherwise.
        host_cpu=read_host_cpu if entry.vcpus is None and is_local(params) else None,
    )
