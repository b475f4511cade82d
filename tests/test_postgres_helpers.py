"""The pure parts of the PostgreSQL and PgBouncer collectors: bounded label sets, DSN handling, backoff,
statement texts. No server needed."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from agent.config import ConfigError
from agent.config.loader import validate_config
from collectors.base import CollectorError, Reason
from collectors.postgres import build, database_share, local_vcpus
from collectors.postgres.bounded import OTHER, fold, largest, top_n
from collectors.postgres.dsn import connector, endpoint, is_local, parse_dsn, server
from collectors.postgres.queries import EVERY_DATABASE, DatabaseShare, shorten, state_label, worst_per_name
from collectors.postgres.session import Session, connect_error


def test_top_n_keeps_the_largest_and_sums_the_rest() -> None:
    counts = {f"10.0.0.{i}": float(i) for i in range(1, 16)}
    bounded = top_n(counts)
    assert len(bounded) == 11
    assert bounded[OTHER] == sum(range(1, 6))
    assert min(value for key, value in bounded.items() if key != OTHER) == 6
    assert sum(bounded.values()) == sum(counts.values())


def test_top_n_is_stable_on_ties_and_leaves_small_sets_alone() -> None:
    ties = dict.fromkeys("abcdefghijkl", 1.0)
    assert set(top_n(ties)) == set("abcdefghij") | {OTHER}
    assert top_n({"a": 2.0, "b": 1.0}) == {"a": 2.0, "b": 1.0}


def test_a_real_key_named_other_joins_the_catch_all() -> None:
    values = {OTHER: 5.0, **{f"k{i:02}": 9.0 for i in range(12)}}
    assert top_n(values, combine=max)[OTHER] == 9.0
    assert top_n(values)[OTHER] == 5.0 + 9.0 + 9.0


def test_fold_combines_with_the_keys_chosen_once() -> None:
    pools = {("db", f"user{i}"): float(i) for i in range(12)}
    kept = largest(pools, 2)
    assert kept == {("db", "user11"), ("db", "user10")}
    waits = {pool: 100.0 - value for pool, value in pools.items()}
    folded = fold(waits, kept, ("other", "other"), max)
    assert folded == {("db", "user11"): 89.0, ("db", "user10"): 90.0, ("other", "other"): 100.0}


@pytest.mark.parametrize(
    ("dsn", "local"),
    [
        ("host=127.0.0.1 port=5432", True),
        ("host=localhost", True),
        ("host=::1", True),
        ("host=/var/run/postgresql", True),
        ("dbname=postgres", True),  # no host: libpq's default socket
        ("postgresql://tierwatch@127.0.0.1/postgres", True),
        ("host=db.internal", False),
        ("host=127.0.0.1,db.internal", False),
        ("hostaddr=10.1.2.3", False),
    ],
)
def test_local_hosts(dsn: str, local: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    assert is_local(parse_dsn(dsn)) is local


def test_vcpus_come_from_config_or_the_local_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    assert local_vcpus(parse_dsn("host=db.internal"), 8) == 8
    assert local_vcpus(parse_dsn("host=db.internal"), None) is None
    assert local_vcpus(parse_dsn("host=127.0.0.1"), None) == 12


def test_endpoint_names_no_secret() -> None:
    params = parse_dsn("postgresql://monitor:s3cret-pw@db.internal:6432/orders?sslmode=require")
    assert endpoint(params) == "db.internal:6432/orders as monitor"


def shares(*dsns: str) -> list[DatabaseShare]:
    config = validate_config({"postgres": [{"name": f"t{i}", "dsn": dsn} for i, dsn in enumerate(dsns)]})
    return [
        database_share(config, entry, parse_dsn(entry.dsn.get_secret_value())) for entry in config.postgres
    ]


def test_a_target_alone_on_its_server_reports_every_database() -> None:
    assert shares("host=db dbname=orders") == [EVERY_DATABASE]
    assert (
        shares("host=db dbname=a", "host=db port=5433 dbname=b", "host=other dbname=c")
        == [EVERY_DATABASE] * 3
    )


def test_targets_of_one_server_split_its_databases() -> None:
    first, second, third, elsewhere = shares(
        "host=db dbname=postgres",
        "postgresql://db:5432/orders",
        "host=db port=5432 dbname=billing user=other",
        "host=db2 dbname=orders",
    )
    assert first == DatabaseShare(others=True, elsewhere=("billing", "orders"))
    assert second == third == DatabaseShare(others=False)
    assert elsewhere == EVERY_DATABASE


def test_a_sibling_without_a_database_name_is_not_left_out() -> None:
    """libpq's default database is not known here: the first target keeps reporting it (a database
    reported twice beats one reported by nobody)."""
    first, _, _ = shares("host=db dbname=postgres", "host=db user=app", "host=db dbname=postgres user=x")
    assert first == EVERY_DATABASE


def test_server_is_hosts_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    assert server(parse_dsn("host=a,b port=6432")) == (("a", "b"), "6432")
    assert server(parse_dsn("postgresql://db/x")) == server(parse_dsn("host=db port=5432 dbname=y"))
    assert server(parse_dsn("dbname=x")) == (("",), "5432")


def test_a_bad_dsn_is_a_config_error_that_does_not_echo_it() -> None:
    with pytest.raises(ValueError, match="not a valid connection string") as caught:
        parse_dsn("host=db password='s3cret-pw")
    assert "s3cret" not in str(caught.value)
    config = validate_config({"postgres": [{"name": "orders", "dsn": "host=db bogus_option=s3cret-pw"}]})
    with pytest.raises(ConfigError, match="postgres orders: dsn is not a valid") as refused:
        build(config, config.postgres[0])
    assert "s3cret" not in str(refused.value)


def test_connections_carry_the_name_and_timeouts_below_the_cycle() -> None:
    params = parse_dsn("host=db user=monitor options='-c search_path=app'")
    server = connector(params, "pw", 4.0).keywords
    assert server["application_name"] == "tierwatch"
    assert server["autocommit"] is True
    assert server["password"] == "pw"
    assert server["connect_timeout"] == "2"
    assert server["tcp_user_timeout"] == "4000"
    assert server["options"] == "-c search_path=app -c statement_timeout=2000 -c lock_timeout=1000"
    console = connector(params, None, 4.0, admin_console=True).keywords
    assert console["prepare_threshold"] is None
    assert console["options"] == "-c search_path=app"  # as configured; PgBouncer rejects ours
    assert "password" not in console


def test_connections_probe_a_silent_peer_with_keepalives() -> None:
    """An acknowledged query whose answer a partition swallows sends nothing more: only keepalive
    probes find the peer gone, after the timeout (rounded up) and three probes a second apart."""
    expected = {
        "keepalives": "1",
        "keepalives_idle": "3",
        "keepalives_interval": "1",
        "keepalives_count": "3",
    }
    for admin_console in (False, True):
        made = connector(parse_dsn("host=db"), None, 2.5, admin_console=admin_console).keywords
        assert {key: made[key] for key in expected} == expected
    assert connector(parse_dsn("host=db"), None, 0.3).keywords["keepalives_idle"] == "1"


def test_keepalive_settings_of_the_dsn_are_kept() -> None:
    made = connector(parse_dsn("host=db keepalives_idle=60 keepalives_count=9"), None, 2.5).keywords
    assert made["keepalives_idle"] == "60"
    assert made["keepalives_count"] == "9"
    assert made["keepalives"] == "1"
    assert made["keepalives_interval"] == "1"
    assert connector(parse_dsn("host=db keepalives=0"), None, 2.5).keywords["keepalives"] == "0"


def test_statement_texts_are_one_short_line_without_literals() -> None:
    assert shorten("SELECT *\n  FROM orders\n WHERE id = $1") == "SELECT * FROM orders WHERE id = $1"
    assert shorten("COMMENT ON TABLE t IS 'it''s here'") == "COMMENT ON TABLE t IS '…'"
    assert shorten("COMMENT ON TABLE t IS 'cut off by the 1000-char limi") == "COMMENT ON TABLE t IS '…'"
    long = shorten("SELECT " + ", ".join(f"column_{i}" for i in range(100)))
    assert len(long) == 200
    assert long.endswith("…")
    assert shorten(None) == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("COMMENT ON TABLE t IS $$a 'b' c$$", "COMMENT ON TABLE t IS '…'"),
        ("COMMENT ON TABLE t IS $x$ $$ $y$ $x$ AND 1", "COMMENT ON TABLE t IS '…' AND 1"),
        ("COMMENT ON TABLE t IS $x$cut off", "COMMENT ON TABLE t IS '…'"),
        (r"COMMENT ON TABLE t IS E'a\'b' || 'c'", "COMMENT ON TABLE t IS '…' || '…'"),
        (r"COMMENT ON TABLE t IS e'a\\' || 'b'", "COMMENT ON TABLE t IS '…' || '…'"),
        ("COMMENT ON TABLE t IS E'cut off \\", "COMMENT ON TABLE t IS '…'"),
        ("SELECT $1, a$b$ FROM t WHERE x = $2", "SELECT $1, a$b$ FROM t WHERE x = $2"),
        ("SELECT \"it's\", 'b' FROM t", "SELECT \"it's\", '…' FROM t"),
        ("SELECT 1 /* it's */, 'b' -- don't\n, 'c'", "SELECT 1 /* it's */, '…' -- don't , '…'"),
        ("ALTER ROLE app PASSWORD 'it''s secret'", "ALTER ROLE app PASSWORD …"),
        ("alter user app with Password $$x$$ VALID UNTIL 'infinity'", "alter user app with Password …"),
        ("ALTER ROLE app PASSWORD 'cut off by the 1000-char limi", "ALTER ROLE app PASSWORD …"),
        ("UPDATE users SET password_hash = $1", "UPDATE users SET password_hash = $1"),
    ],
)
def test_every_form_of_string_literal_is_masked(text: str, shown: str) -> None:
    assert shorten(text) == shown


def test_replicas_under_one_name_keep_the_worst_lag() -> None:
    rows: list[tuple[str | None, float | None]] = [
        ("walreceiver", 9.0),
        ("walreceiver", 0.0),
        ("walreceiver", None),
        ("replica-b", 1.0),
        (None, 2.0),
    ]
    assert worst_per_name(rows) == {"walreceiver": 9.0, "replica-b": 1.0, "unknown": 2.0}


@pytest.mark.parametrize(
    ("message", "reason", "cause"),
    [
        ("FATAL:  sorry, too many clients already", Reason.OTHER, "no free connection slot"),
        ("FATAL:  not allowed", Reason.PERMISSION, "admin_users nor stats_users"),
        ("FATAL:  no more connections allowed (max_client_conn)", Reason.OTHER, "PgBouncer is full"),
    ],
)
def test_refusals_are_named(message: str, reason: Reason, cause: str) -> None:
    refused = connect_error(psycopg.OperationalError(f"connection failed: {message}"), "db:5432")
    assert refused.reason is reason
    assert cause in refused.detail


def test_state_labels() -> None:
    assert state_label("idle in transaction (aborted)") == "idle_in_transaction_aborted"
    assert state_label("idle in transaction") == "idle_in_transaction"
    assert state_label(None) == "unknown"


class StandInConnection:
    """What the session sees of a connection once it is open: only whether it gets closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_an_unexpected_answer_at_connect_closes_the_connection_and_backs_off() -> None:
    """A server that is not PostgreSQL (a proxy answering oddly) can fail the limits query with a parse
    error rather than a driver error; the connection must still be closed and retried with backoff."""
    opened: list[StandInConnection] = []

    def connect() -> Any:
        opened.append(StandInConnection())
        return opened[-1]

    def odd_limits(_connection: Any) -> None:
        raise CollectorError(Reason.PARSE, "the server's limits did not come back as one row")

    session = Session(connect, "db:5432", wait=1.0, on_connect=odd_limits, clock=lambda: 100.0)
    for _ in range(2):
        with pytest.raises(CollectorError) as raised, session.cycle():
            pass
        assert raised.value.reason is Reason.PARSE
    assert len(opened) == 1  # the second cycle falls within the backoff: no new connection
    assert opened[0].closed
    assert "next attempt in" in raised.value.detail


@pytest.mark.parametrize("dsn", ["postgresql://m:p@ssw0rd@db/x", "postgres://m:Zx9k/Qw3m@db/x"])
def test_a_uri_password_cut_short_by_an_unencoded_character_is_refused(dsn: str) -> None:
    """libpq would take the rest of the password for the host, and every error would quote it."""
    with pytest.raises(ValueError, match="percent-encode") as error:
        parse_dsn(dsn)
    assert "ssw0rd" not in str(error.value)
    assert "Qw3m" not in str(error.value)
    assert parse_dsn("postgresql://m:p%40ss%2Fw@db/x")["password"] == "p@ss/w"
