"""The statements of a cycle and what they return, as plain values.

A cycle is one statement, one round trip: sessions, a load sample, replication and the databases'
counters, as (kind, key, value) rows; the top statements are read every so often besides. It reads
pg_stat_activity and friends once and aggregates on the server, so a server with thousands of
sessions returns a few dozen rows. pg_stat_database is read for the target's share of the server's
databases only (DatabaseShare). Each statement is prepared once per connection: the server plans it
once, not every cycle.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from psycopg import errors, sql

from collectors.base import CollectorError, Reason, as_finite

QUERY_TEXT_LENGTH = 200
HIDDEN, UNNAMED = "unknown", "unnamed"
# Scanned left to right, so that a quote inside an identifier or a comment opens no literal and a
# literal's own quotes and backslashes close none early. Each form may be cut off by the end of the text
# (pg_stat_statements text is read up to 1000 characters). Plain '...' literals follow
# standard_conforming_strings = on, the default since PostgreSQL 9.1.
SQL_TOKEN = re.compile(
    r"""
      (?P<kept> "(?:[^"]|"")*(?:"|\Z)            # quoted identifier
              | --[^\n]*                          # line comment
              | /\*.*?(?:\*/|\Z) )               # block comment
    | (?<![\w$])[Ee]'(?:[^'\\]|\\(?:.|\Z)|'')*(?:'|\Z)  # E'...': a backslash escapes the next character
    | (?<![\w$])\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z)  # $$...$$, $tag$...$tag$
    | '(?:[^']|'')*(?:'|\Z)                        # '...', also U&'...', B'...', X'...'
    """,
    re.VERBOSE | re.DOTALL,
)
# Whatever follows PASSWORD is dropped, whatever form its value takes: a literal form the scan above
# misses must still not carry a password into alert evidence.
PASSWORD_KEYWORD = re.compile(r"\bpassword\b", re.IGNORECASE)

LIMITS_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       pg_has_role('pg_read_all_stats', 'USAGE'),
       current_user
"""

# Active sessions by wait event type: one sample of DB load (sampler.py). The activity statement
# takes one too, so a cycle that needs a sample gets it without a round trip of its own.
LOAD_SAMPLE_SQL = """
SELECT wait_event_type, count(*)::float8
FROM pg_stat_activity
WHERE state = 'active'
  AND backend_type IN ('client backend', 'parallel worker')
  AND pid <> pg_backend_pid()
GROUP BY wait_event_type
"""

# A caught-up standby has nothing to replay: its delay is 0, not the age of the last transaction. Only
# one that streams from its primary knows it has caught up: cut off (primary gone, WAL it needs already
# removed there), it has replayed all it received while the primary moves on. One that has replayed no
# transaction since it started has no such age (NULL); its last replayed transaction is then older than
# its start, so the time since the start is a lower bound of the delay, which beats no value at all for
# a standby stuck since a restart. pg_stat_wal_receiver has a row, its pid visible to every role, while
# a WAL receiver is connected. A primary has a row per replica (application_name), each with its lag in
# seconds and in bytes. A standby has rows in pg_stat_replication too when it feeds a cascading standby or
# pg_receivewal, and pg_current_wal_lsn() fails there ("recovery is in progress"): a WHERE does not keep
# the planner from calling it for those rows, a CASE does.
REPLICATION_SQL = """
SELECT 'standby', NULL,
       CASE WHEN wal.streaming AND wal.received = wal.replayed THEN 0
            ELSE extract(epoch FROM now() - coalesce(
                pg_last_xact_replay_timestamp(),
                CASE WHEN wal.received > wal.replayed OR NOT wal.streaming
                     THEN pg_postmaster_start_time() END))::float8 END
FROM (SELECT pg_last_wal_receive_lsn() AS received, pg_last_wal_replay_lsn() AS replayed,
             EXISTS (SELECT FROM pg_stat_wal_receiver) AS streaming) AS wal
WHERE pg_is_in_recovery()
UNION ALL
SELECT lag.kind, coalesce(application_name, ''), lag.value
FROM (SELECT CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn() END AS current) AS wal,
     pg_stat_replication,
     LATERAL (VALUES
        ('replica_seconds',
         CASE WHEN replay_lsn = wal.current THEN 0 ELSE extract(epoch FROM replay_lag)::float8 END),
        ('replica_bytes', pg_wal_lsn_diff(wal.current, replay_lsn)::float8)
     ) AS lag(kind, value)
WHERE wal.current IS NOT NULL
"""

# Rows of (kind, key, value), replication's among them: one round trip for all. Without
# pg_read_all_stats, other roles' sessions show neither backend_type nor state; having a database
# still tells them from background processes.
ACTIVITY_SQL = f"""
WITH sessions AS MATERIALIZED (
    SELECT pid, state, wait_event_type, query_start, xact_start, state_change,
           CASE WHEN backend_type IS NOT NULL THEN application_name END AS application_name,
           CASE WHEN client_port = -1 THEN 'local' ELSE host(client_addr) END AS client
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL)
), waits AS (
    SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND cardinality(pg_blocking_pids(pid)) > 0)
               AS blocked,
           max(now() - query_start) FILTER (WHERE state = 'active') AS query,
           max(now() - xact_start) AS transaction,
           max(now() - state_change) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_in_transaction
    FROM sessions
    WHERE pid <> pg_backend_pid()
)
SELECT 'state', state, count(*)::float8 FROM sessions GROUP BY state
UNION ALL
SELECT 'application', application_name, count(*) FROM sessions GROUP BY application_name
UNION ALL
SELECT 'client', client, count(*) FROM sessions GROUP BY client
UNION ALL
SELECT 'wait', age.key, age.value
FROM waits, LATERAL (VALUES
    ('blocked', blocked::float8),
    ('query', extract(epoch FROM query)::float8),
    ('transaction', extract(epoch FROM transaction)::float8),
    ('idle_in_transaction', extract(epoch FROM idle_in_transaction)::float8)
) AS age(key, value)
UNION ALL
SELECT 'load', load.* FROM ({LOAD_SAMPLE_SQL}) AS load
UNION ALL
{REPLICATION_SQL}"""

# pg_stat_user_tables covers only the database of the connection. The rows are those of the target's
# share (DatabaseShare), whose values are written into the statement (cycle_statement); the filter
# reaches into the view: no counter of a database left out is read. A row per database and counter.
DATABASES_SQL = """
SELECT counter.kind, d.datname::text, counter.value
FROM pg_stat_database AS d
LEFT JOIN (
    SELECT current_database() AS datname,
           coalesce(sum(seq_scan), 0)::float8 AS seq_scans,
           coalesce(sum(idx_scan), 0)::float8 AS index_scans
    FROM pg_stat_user_tables
) AS s USING (datname),
LATERAL (VALUES
    ('db_commits', d.xact_commit::float8),
    ('db_rollbacks', d.xact_rollback::float8),
    ('db_deadlocks', d.deadlocks::float8),
    ('db_temp_bytes', d.temp_bytes::float8),
    ('db_blocks_hit', d.blks_hit::float8),
    ('db_blocks_read', d.blks_read::float8),
    ('db_seq_scans', s.seq_scans),
    ('db_index_scans', s.index_scans)
) AS counter(kind, value)
WHERE d.datname IS NOT NULL
  AND (d.datname = current_database() OR ({others} AND d.datname::text <> ALL ({elsewhere}::text[])))
"""
DATABASE_COUNTERS = ("commits", "rollbacks", "deadlocks", "temp_bytes", "blocks_hit", "blocks_read")
DATABASE_SCANS = ("seq_scans", "index_scans")

# The monitor's own statements would top the list on a quiet server. The role is looked up by its exact
# name: current_user::regrole would parse it as an identifier and fold "Monitor" to monitor.
TOP_QUERIES_SQL = """
SELECT queryid, calls, {total} / 1000, {mean} / 1000, left(query, 1000)
FROM pg_stat_statements
WHERE queryid IS NOT NULL AND userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
ORDER BY {total} DESC
LIMIT %s
"""
# pg_stat_statements before 1.8 names its times total_time and mean_time: so does a newer server's after
# pg_upgrade, which keeps each extension's version until ALTER EXTENSION ... UPDATE. No row: not installed.
STATEMENT_TIMES_SQL = """
SELECT attname::text FROM pg_attribute
WHERE attrelid = to_regclass('pg_stat_statements') AND attname IN ('total_exec_time', 'total_time')
"""
TOP_QUERIES_BY_TIMES = {
    total: TOP_QUERIES_SQL.format(total=total, mean=mean)
    for total, mean in (("total_exec_time", "mean_exec_time"), ("total_time", "mean_time"))
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Settings fixed while a connection lives (max_connections needs a restart)."""

    max_connections: int
    superuser_reserved: int
    reserved: int
    reads_all_stats: bool
    user: str

    @property
    def usable(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    name: str
    commits: float
    rollbacks: float
    deadlocks: float
    temp_bytes: float
    blocks_hit: float
    blocks_read: float
    seq_scans: float | None  # None for the databases the connection is not in
    index_scans: float | None


@dataclass(frozen=True, slots=True)
class DatabaseShare:
    """The databases whose pg_stat_database counters a target reports: always its own; the others
    (``others``) except those another target of the same server reports (``elsewhere``).

    A target alone on its server reports every database. Targets that share a server split them, so
    that each database is reported once, not once per target: with a target per database, N targets
    would otherwise read and export N x N rows a cycle.
    """

    others: bool = True
    elsewhere: tuple[str, ...] = ()


EVERY_DATABASE = DatabaseShare()


@functools.cache
def cycle_statement(share: DatabaseShare = EVERY_DATABASE) -> str:
    """The one statement of a cycle: activity (with replication) and the share's databases. The share
    is fixed per target, so it is written in as literals: no parameters to adapt every cycle."""
    databases = sql.SQL(DATABASES_SQL).format(
        others=sql.Literal(share.others), elsewhere=sql.Literal(list(share.elsewhere))
    )
    return f"{ACTIVITY_SQL}UNION ALL\n{databases.as_string(None)}"


@dataclass(frozen=True, slots=True)
class Replication:
    in_recovery: bool
    replay_delay: float | None = None  # on a standby
    replicas: int = 0  # on a primary, with the worst lag per application_name where known
    lag_seconds: dict[str, float] = field(default_factory=dict)
    lag_bytes: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Activity:
    by_state: dict[str, float]
    by_application: dict[str, float]
    by_client: dict[str, float]
    waits: dict[str, float]
    load: tuple[tuple[str | None, float], ...]  # a load sample: active sessions per wait event type
    replication: Replication
    databases: list[DatabaseStats]


def number(value: object, what: str, *, signed: bool = False) -> float:
    """A numeric column as a float: int, float or numeric, finite, and not below zero unless ``signed``.

    A server sends nothing else in these columns, but a proxy, a driver change or a broken extension
    could; a NULL count or a text would otherwise surface as a TypeError, a negative count as a share
    above 1 (lock waits / all load).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise CollectorError(Reason.PARSE, f"{what} is not a number: {type(value).__name__}")
    try:
        converted = as_finite(value)
    except ValueError:  # Decimal('sNaN') refuses conversion
        converted = None
    if converted is None or (converted < 0 and not signed):
        raise CollectorError(Reason.PARSE, f"{what} is out of range: {str(value)[:24]}")
    return converted


def read_limits(connection: psycopg.Connection) -> Limits:
    rows = connection.execute(LIMITS_SQL).fetchall()
    if len(rows) != 1 or len(rows[0]) != 5:  # only a server that is not PostgreSQL answers otherwise
        raise CollectorError(Reason.PARSE, "the server's limits did not come back as one row of five values")
    [(max_connections, superuser_reserved, reserved, reads_all_stats, user)] = rows
    return Limits(
        int(number(max_connections, "max_connections")),
        int(number(superuser_reserved, "superuser_reserved_connections")),
        int(number(reserved, "reserved_connections")),
        reads_all_stats,
        user,
    )


def state_label(state: str | None) -> str:
    """'idle in transaction (aborted)' -> 'idle_in_transaction_aborted'; None (hidden) -> 'unknown'."""
    return HIDDEN if state is None else state.replace(" (aborted)", "_aborted").replace(" ", "_")


def name_label(name: str | None) -> str:
    return HIDDEN if name is None else name or UNNAMED


LABEL_OF_KIND = {"state": state_label, "application": name_label, "client": name_label, "wait": str}
REPLICATION_KINDS = ("standby", "replica_seconds", "replica_bytes")


def read_activity(connection: psycopg.Connection, share: DatabaseShare = EVERY_DATABASE) -> Activity:
    groups: dict[str, dict[str, float]] = {kind: {} for kind in LABEL_OF_KIND}
    load = []
    lags: dict[str, list[tuple[str | None, float | None]]] = {kind: [] for kind in REPLICATION_KINDS}
    databases: dict[str, dict[str, object]] = {}
    for kind, key, value in connection.execute(cycle_statement(share)):
        if kind == "load":
            load.append((key, number(value, "active sessions")))
        elif kind in lags:
            # Replay delays can be below zero: the primary's clock may be ahead of the standby's.
            lags[kind].append((key, None if value is None else number(value, "replication lag", signed=True)))
        elif kind.startswith("db_"):
            databases.setdefault(key, {})[kind[3:]] = value
        elif value is not None:  # an age is NULL when no session is in that state
            # Counts are never negative; an age is when a query began after the statement's now().
            signed = kind == "wait" and key != "blocked"
            groups[kind][LABEL_OF_KIND[kind](key)] = number(value, f"pg_stat_activity {kind}", signed=signed)
    return Activity(
        groups["state"],
        groups["application"],
        groups["client"],
        groups["wait"],
        tuple(load),
        _replication(lags),
        [_database(name, counters) for name, counters in databases.items()],
    )


def _database(name: str, values: dict[str, object]) -> DatabaseStats:
    where = f"pg_stat_database of {name}"
    counters = (number(values.get(counter), where) for counter in DATABASE_COUNTERS)
    # Scans are counted for the connection's own database only; the others' are NULL.
    scans = (None if (value := values.get(scan)) is None else number(value, where) for scan in DATABASE_SCANS)
    return DatabaseStats(name, *counters, *scans)


def _replication(lags: dict[str, list[tuple[str | None, float | None]]]) -> Replication:
    if lags["standby"]:
        return Replication(True, replay_delay=lags["standby"][0][1])
    return Replication(
        False,
        replicas=len(lags["replica_seconds"]),  # every standby, however many share a name
        lag_seconds=worst_per_name(lags["replica_seconds"]),
        lag_bytes=worst_per_name(lags["replica_bytes"]),
    )


def worst_per_name(rows: list[tuple[str | None, float | None]]) -> dict[str, float]:
    """The largest known lag per replica name. Standbys cloned with ``pg_basebackup -R`` all connect as
    ``walreceiver``: one that has caught up must not hide one that lags behind the same name."""
    worst: dict[str, float] = {}
    for name, lag in rows:
        if lag is not None:
            label = name_label(name)
            worst[label] = max(lag, worst.get(label, lag))
    return worst


def read_top_queries(connection: psycopg.Connection, limit: int) -> tuple[dict[str, object], ...] | None:
    """The statements with the most total execution time, or None without pg_stat_statements."""
    times = connection.execute(STATEMENT_TIMES_SQL).fetchall()
    if len(times) != 1:
        return None
    try:
        rows = connection.execute(TOP_QUERIES_BY_TIMES[times[0][0]], [limit]).fetchall()
    except (errors.ObjectNotInPrerequisiteState, errors.InsufficientPrivilege):
        return None  # created but not preloaded, or not readable: the rest of the cycle is still good
    return tuple(
        {
            "queryid": queryid,
            "calls": calls,
            "total_seconds": total,
            "mean_seconds": mean,
            "query": shorten(text),
        }
        for queryid, calls, total, mean, text in rows
    )


def shorten(text: str | None) -> str:
    """One line of at most 200 characters, string literals masked.

    Normalized statements carry $1 placeholders, but utility statements keep their literals, and
    ``ALTER ROLE ... PASSWORD '...'`` would put a password into alert evidence.
    """
    if not text:
        return ""
    # Masked before the whitespace is joined: a line comment ends at its line break.
    flat = " ".join(mask_literals(text).split())
    return flat if len(flat) <= QUERY_TEXT_LENGTH else flat[: QUERY_TEXT_LENGTH - 1] + "…"


def mask_literals(text: str) -> str:
    """The text with every string literal replaced by '…' and everything after PASSWORD by …"""
    if cut := PASSWORD_KEYWORD.search(text):
        text = text[: cut.end()] + " …"
    return SQL_TOKEN.sub(lambda token: token["kept"] or "'…'", text)
