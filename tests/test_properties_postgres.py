"""PostgreSQL and PgBouncer values out of range: rows with NULLs, negative counters, huge values and
values of the wrong type, fed through the collectors' real cycles.

A real server cannot produce these (a count(*) is never negative, xact_commit never NULL, SHOW POOLS
never answers text for cl_waiting), so the collectors get a stand-in connection that answers each of
their statements with generated rows; the real-server tests cover the values a server does produce.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from collectors.host.procfs import CpuTicks
from collectors.pgbouncer import PGBOUNCER_METRICS, REQUIRED, PgBouncerCollector
from collectors.postgres import PostgresCollector, queries
from collectors.postgres.metrics import POSTGRES_METRICS
from tests.test_properties_base import (
    ODD_INTS,
    THOROUGH,
    Counters,
    check_cycle,
    check_ratio_sets,
    mostly,
)

TICKS = st.integers(0, 2**64)
POSTGRES_SHARES = {
    "postgres_host_cpu_utilization_ratio",
    "postgres_buffer_cache_hit_ratio",
    "postgres_sequential_scan_ratio",
    "postgres_load_lock_wait_ratio",
}
POSTGRES_NOT_SHARES = {
    # Superusers (and pg_use_reserved_connections members) connect into the reserved slots.
    "postgres_connections_used_ratio": "connections / usable slots exceeds 1 when reserved slots are used",
}
PGBOUNCER_SHARES: set[str] = set()
PGBOUNCER_NOT_SHARES = {
    # RELOAD with a lower max_client_conn leaves the clients already connected.
    "pgbouncer_client_connections_used_ratio": "clients can exceed a lowered max_client_conn",
}

Row = tuple[Any, ...]
# What a numeric column could hold if the server, the driver or a proxy went wrong. The kind is drawn
# as a number first: inside the composite strategies below, a plain one_of came out Decimal-heavy and
# almost never beyond a float.
ODD_KINDS = (
    st.none(),
    st.integers(),
    ODD_INTS,
    st.floats(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("sNaN"), Decimal("1e400"), True]),
    st.text(max_size=5),
    st.binary(max_size=5),
)
odd_values = st.integers(0, len(ODD_KINDS) - 1).flatmap(ODD_KINDS.__getitem__)
# Values a server does send, small and large: a bigint up to 2**63 - 1, a float8 up to 1e308.
bigints = mostly(st.integers(0, 10_000), st.integers(0, 2**63 - 1))
float8s = mostly(st.floats(0, 1e5), st.floats(0, 1e308))


def server_counters(draw: st.DrawFn) -> Counters:
    """Each named counter of a generated server across its cycles: a start and a step, so that the
    counters mostly grow and the collectors compute their per-cycle ratios; a bigint at most."""
    return Counters(draw, bigints, mostly(st.integers(0, 1000), bigints), lambda value: min(value, 2**63 - 1))


def spoil(draw: st.DrawFn, rows: list[Any], cells: Sequence[Any]) -> None:
    """Replaces one of ``cells`` (indexes or keys into a row) of one of ``rows`` by an odd value."""
    if rows:
        index = draw(st.integers(0, len(rows) - 1))
        row = dict(rows[index]) if isinstance(rows[index], dict) else list(rows[index])
        row[draw(st.sampled_from(list(cells)))] = draw(odd_values)
        rows[index] = row if isinstance(row, dict) else tuple(row)


class StandInCursor:
    """The part of a psycopg cursor the collectors use; the signatures are psycopg's."""

    def __init__(self, rows: Sequence[Any], columns: Sequence[str] = ()) -> None:
        self._rows = list(rows)
        self.description = [Column(name) for name in columns]

    def execute(self, query: str, params: object = None, *, prepare: bool | None = None) -> StandInCursor:  # noqa: ARG002
        return self

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


@dataclass(frozen=True)
class Column:
    name: str


class StandInConnection:
    """Answers each statement with the rows prepared for it; never raises a driver error."""

    closed = False
    broken = False

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def execute(self, query: str, params: object = None) -> StandInCursor:  # noqa: ARG002
        return StandInCursor(self.answers[query])

    def cursor(self, row_factory: object = None) -> StandInCursor:  # noqa: ARG002 - rows are dicts already
        return _ShowCursor(self)

    def close(self) -> None:
        pass


class _ShowCursor(StandInCursor):
    """PgBouncer's SHOW commands: dict rows, and a description naming the columns."""

    def __init__(self, connection: StandInConnection) -> None:
        super().__init__([])
        self._connection = connection

    def execute(self, query: str, params: object = None, *, prepare: bool | None = None) -> StandInCursor:  # noqa: ARG002
        columns, rows = self._connection.answers[query]
        self.description = [Column(name) for name in columns]
        self._rows = rows
        return self


# --- PostgreSQL ---------------------------------------------------------------------------------


def replication_rows(replicas: list[tuple[str | None, float | None, float | None]]) -> list[Row]:
    """The activity statement's replication rows: (name, lag seconds, lag bytes) per replica, or a
    standby's replay delay under the name None."""
    rows: list[Row] = []
    for name, seconds, lag in replicas:
        if name is None:
            rows.append(("standby", None, seconds))
        else:
            rows += [("replica_seconds", name, seconds), ("replica_bytes", name, lag)]
    return rows


@st.composite
def postgres_cycles(draw: st.DrawFn) -> list[dict[str, list[Row]]]:
    """Consecutive cycles' rows for every statement of the PostgreSQL collector; in about half of the
    cycles one numeric value of one statement is odd."""
    n = server_counters(draw)
    names = draw(st.lists(st.sampled_from(["shop", "postgres", "template1"]), unique=True))
    cycles = []
    for cycle in range(draw(st.integers(1, 3))):
        n.cycle = cycle
        states = draw(st.lists(st.sampled_from(["active", "idle", "idle in transaction", None]), unique=True))
        applications = draw(st.lists(st.sampled_from(["web", "", None]), unique=True))
        clients = draw(st.lists(st.sampled_from(["10.0.0.1", "local", None]), unique=True))
        waits = ("blocked", "query", "transaction", "idle_in_transaction")
        answers: dict[str, list[Row]] = {
            queries.LIMITS_SQL: [(draw(st.integers(1, 10_000)), 3, 0, True, "tierwatch")],
            queries.cycle_statement(): [
                *(("state", state, float(draw(bigints))) for state in states),
                *(("application", name, draw(bigints)) for name in applications),
                *(("client", name, draw(bigints)) for name in clients),
                *(("wait", key, draw(st.none() | float8s)) for key in waits),
                *(
                    ("load", wait, draw(bigints))
                    for wait in draw(
                        st.lists(st.sampled_from([None, "IO", "Lock", "LWLock", "Timeout"]), unique=True)
                    )
                ),
                *replication_rows(
                    draw(
                        st.lists(
                            st.tuples(
                                st.sampled_from(["replica1", ""]), st.none() | float8s, st.none() | float8s
                            )
                        )
                        | st.just([(None, 0.5, None)])  # a standby
                    )
                ),
                *(
                    (f"db_{counter}", name, n(f"{name} {counter}"))
                    for name in names
                    for counter in queries.DATABASE_COUNTERS
                ),
                # Scans are counted for the connection's own database only.
                *(
                    (f"db_{scan}", name, float(n(f"{name} {scan}")) if name == "shop" else None)
                    for name in names
                    for scan in queries.DATABASE_SCANS
                ),
            ],
            queries.STATEMENT_TIMES_SQL: [],  # pg_stat_statements not installed
        }
        numeric_cells = {queries.LIMITS_SQL: (0, 1, 2), queries.cycle_statement(): (2,)}
        if draw(st.booleans()):
            statement = draw(st.sampled_from(sorted(numeric_cells)))
            spoil(draw, answers[statement], numeric_cells[statement])
        cycles.append(answers)
    return cycles


def test_every_postgres_ratio_series_is_decided() -> None:
    check_ratio_sets(POSTGRES_METRICS, POSTGRES_SHARES, POSTGRES_NOT_SHARES)


@THOROUGH
@given(
    cycles=postgres_cycles(),
    vcpus=st.none() | st.integers(1, 64),
    # The host's /proc/stat as it reads when the server is local: counters that may stall, jump,
    # or (a non-atomic read) show busy beyond total.
    host=st.none() | st.lists(st.builds(CpuTicks, busy=TICKS, iowait=TICKS, total=TICKS), min_size=1),
)
def test_postgres_cycles_emit_finite_values_and_shares_within_0_and_1(
    cycles: list[dict[str, list[Row]]], vcpus: int | None, host: list[CpuTicks] | None
) -> None:
    connection = StandInConnection(cycles[0])
    now = [0.0]
    collector = PostgresCollector(
        "db",
        lambda: cast(psycopg.Connection, connection),
        where="stand-in",
        vcpus=vcpus,
        wait=1.0,
        sample_period=None,  # no sampler thread: each cycle takes its own load sample
        host_cpu=None if host is None else itertools.cycle(host).__next__,
        clock=lambda: now[0],
        wall_clock=lambda: 0.0,
    )
    for answers in cycles:
        connection.answers = answers
        now[0] += 5.0
        check_cycle(collector.collect, POSTGRES_SHARES)


# --- PgBouncer ----------------------------------------------------------------------------------

POOL_COLUMNS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait", "maxwait_us")
STATS_COLUMNS = ("total_xact_count", "total_query_count")


@st.composite
def pgbouncer_cycles(draw: st.DrawFn) -> list[dict[str, tuple[list[str], list[dict[str, Any]]]]]:
    """Consecutive cycles' SHOW output (columns, rows); in about half of the cycles one value is odd,
    and now and then a command lacks a column."""
    n = server_counters(draw)
    names = st.sampled_from(["shop", "pgbouncer", "other", ""])
    pool_names = draw(st.lists(st.tuples(names, st.sampled_from(["app", "batch"])), unique=True, max_size=4))
    databases = draw(st.lists(names, unique=True))
    cycles = []
    for cycle in range(draw(st.integers(1, 3))):
        n.cycle = cycle
        shown = {
            "SHOW POOLS": [
                {"database": database, "user": user, **{column: draw(bigints) for column in POOL_COLUMNS}}
                for database, user in pool_names
            ],
            "SHOW STATS": [
                {"database": database, **{column: n(f"{database} {column}") for column in STATS_COLUMNS}}
                for database in databases
            ],
            "SHOW LISTS": [
                {"list": name, "items": draw(bigints)} for name in ("used_clients", "used_servers")
            ],
            "SHOW DATABASES": [{"name": name, "pool_size": draw(bigints)} for name in databases],
            "SHOW CONFIG": [{"key": "max_client_conn", "value": str(draw(bigints))}],
        }
        numeric_columns = {
            "SHOW POOLS": POOL_COLUMNS,
            "SHOW STATS": STATS_COLUMNS,
            "SHOW LISTS": ("items",),
            "SHOW DATABASES": ("pool_size",),
            "SHOW CONFIG": ("value",),
        }
        if draw(st.booleans()):
            command = draw(st.sampled_from(sorted(numeric_columns)))
            spoil(draw, shown[command], numeric_columns[command])
        missing = draw(mostly(st.none(), st.sampled_from(sorted(REQUIRED))))
        answers = {}
        for command, rows in shown.items():
            columns = sorted({*REQUIRED[command], *(column for row in rows for column in row)})
            if command == missing:
                columns.remove(draw(st.sampled_from(sorted(REQUIRED[command]))))
            answers[command] = (columns, rows)
        cycles.append(answers)
    return cycles


def test_every_pgbouncer_ratio_series_is_decided() -> None:
    check_ratio_sets(PGBOUNCER_METRICS, PGBOUNCER_SHARES, PGBOUNCER_NOT_SHARES)


@THOROUGH
@given(cycles=pgbouncer_cycles())
def test_pgbouncer_cycles_emit_finite_values(
    cycles: list[dict[str, tuple[list[str], list[dict[str, Any]]]]],
) -> None:
    connection = StandInConnection(cycles[0])
    now = [0.0]
    collector = PgBouncerCollector(
        "pool", lambda: cast(psycopg.Connection, connection), where="stand-in", wait=1.0, clock=lambda: now[0]
    )
    for answers in cycles:
        connection.answers = answers
        now[0] += 5.0
        check_cycle(collector.collect, PGBOUNCER_SHARES)
