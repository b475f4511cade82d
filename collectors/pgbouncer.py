"""PgBouncer tier: clients queueing per pool, server connections in use, throughput per database and the
client headroom, from the admin console (SHOW POOLS, STATS, LISTS, DATABASES, CONFIG).

The console speaks only the simple query protocol and rejects startup options: the held connection
prepares nothing and carries no server-side timeouts, only the client-side ones. A ``stats_users``
account is enough. Pools are bounded to the 10 with the most clients; the rest share ("other", "other").
Databases are bounded too, since with an auto-database (``* =``) every name a client asks for becomes
one: the 10 with the most transactions in the cycle keep their series, and the rest add up to
"other" in the rates. Their lifetime totals are left out, not summed: "other" would gain and lose
members from cycle to cycle, and a sum that goes down reads as a counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg.rows import dict_row

from agent.config.model import Config, PgBouncerTarget
from collectors.base import (
    Collector,
    CollectorError,
    Column,
    Kind,
    MetricSpec,
    Reading,
    Reason,
    Sample,
    SampleBuilder,
    Unit,
)
from collectors.deltas import Deltas
from collectors.postgres.bounded import OTHER, fold, largest
from collectors.postgres.dsn import endpoint, entry_connector
from collectors.postgres.session import Connect, Session

G, C = Kind.GAUGE, Kind.COUNTER
POOL = ("database", "user")
DATABASE = ("database",)
OTHER_POOL = (OTHER, OTHER)
CONSOLE_DATABASE = "pgbouncer"  # the console's own pseudo-database is not a pool of the application

PGBOUNCER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("pgbouncer_clients_active", G, "Clients paired with a server connection or idle.", POOL),
    MetricSpec("pgbouncer_clients_waiting", G, "Clients queued for a server connection.", POOL),
    MetricSpec("pgbouncer_servers_active", G, "Server connections paired with a client.", POOL),
    MetricSpec("pgbouncer_servers_idle", G, "Server connections not serving a client.", POOL),
    MetricSpec("pgbouncer_longest_client_wait_seconds", G, "Wait of the oldest queued client.", POOL),
    MetricSpec("pgbouncer_transactions_total", C, "Transactions pooled.", DATABASE),
    MetricSpec("pgbouncer_queries_total", C, "Queries pooled.", DATABASE),
    MetricSpec("pgbouncer_transactions_per_second", G, "Transactions per second, last cycle.", DATABASE),
    MetricSpec("pgbouncer_queries_per_second", G, "Queries per second, last cycle.", DATABASE),
    MetricSpec("pgbouncer_pool_size", G, "Server connections each pool of the database may open.", DATABASE),
    MetricSpec("pgbouncer_client_connections", G, "Client connections open, the console's included."),
    MetricSpec("pgbouncer_max_client_connections", G, "The max_client_conn setting."),
    MetricSpec("pgbouncer_client_connections_used_ratio", G, "Client connections / max_client_conn."),
    MetricSpec("pgbouncer_server_connections", G, "Server connections open."),
)
PGBOUNCER_READINGS: tuple[Reading, ...] = (
    Reading(Column.UTILIZATION, "clients", "pgbouncer_client_connections_used_ratio", Unit.RATIO),
    Reading(Column.SATURATION, "waiting", "pgbouncer_clients_waiting", Unit.COUNT, "sum"),
    Reading(Column.SATURATION, "longest wait", "pgbouncer_longest_client_wait_seconds", Unit.SECONDS),
)
# Columns each command must have (PgBouncer 1.18); a missing one is a parse error, not a zero.
REQUIRED = {
    "SHOW POOLS": {
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "maxwait",
    },
    "SHOW STATS": {"database", "total_xact_count", "total_query_count"},
    "SHOW LISTS": {"list", "items"},
    "SHOW DATABASES": {"name", "pool_size"},
    "SHOW CONFIG": {"key", "value"},
}
POOL_SERIES = {
    "pgbouncer_clients_active": ("cl_active",),
    "pgbouncer_clients_waiting": ("cl_waiting",),
    "pgbouncer_servers_active": ("sv_active",),
    # "used" servers are idle too; they only run server_check_query before their next client
    "pgbouncer_servers_idle": ("sv_idle", "sv_used"),
}
Row = dict[str, object]
# SHOW STATS column -> (its lifetime total's series, its rate's series)
THROUGHPUT = {
    "total_xact_count": ("pgbouncer_transactions_total", "pgbouncer_transactions_per_second"),
    "total_query_count": ("pgbouncer_queries_total", "pgbouncer_queries_per_second"),
}


def number(row: Row, column: str) -> float:
    value = row.get(column)
    if value is None:
        return 0.0  # an optional column this PgBouncer version does not have
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: digits beyond a float
        raise CollectorError(Reason.PARSE, f"{column} is not a number") from None


class PgBouncerCollector(Collector):
    name = "pgbouncer"
    tier = "database"
    metrics = PGBOUNCER_METRICS
    readings = PGBOUNCER_READINGS

    def __init__(
        self,
        target: str,
        connect: Connect,
        *,
        where: str,
        wait: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(target)
        self._where = where
        self._session = Session(connect, where, wait=wait, clock=clock)
        self._deltas = Deltas()
        self._clock = clock
        self._wall_clock = wall_clock

    def describe(self) -> str:
        return f"pgbouncer {self.target} at {self._where}"

    def close(self) -> None:
        self._session.close()

    def collect(self) -> Sample:
        with self._session.cycle() as connection:
            shown = {command: self._show(connection, command) for command in REQUIRED}
        out = self.builder()
        elapsed = self._deltas.begin(self._clock())
        self._pools(out, [row for row in shown["SHOW POOLS"] if row["database"] != CONSOLE_DATABASE])
        stats = {
            str(row["database"]): row for row in shown["SHOW STATS"] if row["database"] != CONSOLE_DATABASE
        }
        kept = self._throughput(out, stats, elapsed)
        for row in shown["SHOW DATABASES"]:
            if row["name"] in kept:  # every database has a SHOW STATS row, used or not
                out.set("pgbouncer_pool_size", number(row, "pool_size"), str(row["name"]))
        lists = {str(row["list"]): number(row, "items") for row in shown["SHOW LISTS"]}
        config = {str(row["key"]): row["value"] for row in shown["SHOW CONFIG"]}
        clients = lists.get("used_clients", 0.0)
        max_clients = number(config, "max_client_conn")
        out.set("pgbouncer_client_connections", clients)
        out.set("pgbouncer_server_connections", lists.get("used_servers", 0.0))
        out.set("pgbouncer_max_client_connections", max_clients)
        out.ratio("pgbouncer_client_connections_used_ratio", clients, max_clients)
        return out.build(self.name, self.target, self._wall_clock())

    @staticmethod
    def _show(connection: psycopg.Connection, command: str) -> list[Row]:
        cursor = connection.cursor(row_factory=dict_row)
        cursor.execute(command, prepare=False)
        columns = {column.name for column in cursor.description or ()}
        missing = REQUIRED[command] - columns
        if missing:
            raise CollectorError(Reason.PARSE, f"{command} has no column {', '.join(sorted(missing))}")
        return cursor.fetchall()

    def _pools(self, out: SampleBuilder, pools: list[Row]) -> None:
        by_pool = {(str(row["database"]), str(row["user"])): row for row in pools}
        clients = {
            pool: number(row, "cl_active") + number(row, "cl_waiting") for pool, row in by_pool.items()
        }
        kept = largest(clients)
        for series, columns in POOL_SERIES.items():
            values = {pool: sum(number(row, column) for column in columns) for pool, row in by_pool.items()}
            for pool, value in fold(values, kept, OTHER_POOL).items():
                out.set(series, value, *pool)
        # maxwait holds the whole seconds, maxwait_us the microseconds on top.
        waits = {
            pool: number(row, "maxwait") + number(row, "maxwait_us") / 1e6 for pool, row in by_pool.items()
        }
        for pool, wait in fold(waits, kept, OTHER_POOL, max).items():
            out.set("pgbouncer_longest_client_wait_seconds", wait, *pool)

    def _throughput(self, out: SampleBuilder, stats: dict[str, Row], elapsed: float | None) -> set[str]:
        """Exports the throughput of the busiest databases (and the rates of the rest as "other");
        returns the databases kept."""
        totals = {
            column: {database: number(row, column) for database, row in stats.items()}
            for column in THROUGHPUT
        }
        increases = {
            column: {
                database: increase
                for database, total in totals[column].items()
                if (increase := self._deltas.delta((database, column), total)) is not None
            }
            for column in THROUGHPUT
        }
        # Busiest in this cycle; on the first cycle, before any increase is known, over their lifetime.
        weights = {**totals["total_xact_count"], **increases["total_xact_count"]}
        kept = largest(weights)
        for column, (total_series, rate_series) in THROUGHPUT.items():
            for database in kept:
                out.set(total_series, totals[column][database], database)
            if elapsed:
                rates = {database: increase / elapsed for database, increase in increases[column].items()}
                for database, rate in fold(rates, kept, OTHER).items():
                    out.set(rate_series, rate, database)
        return kept


def build(config: Config, entry: PgBouncerTarget) -> PgBouncerCollector:
    timeout = config.cycle_timeout
    connect, params = entry_connector("pgbouncer", entry, timeout, admin_console=True)
    return PgBouncerCollector(entry.name, connect, where=endpoint(params), wait=timeout / 4)
