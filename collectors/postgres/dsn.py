"""DSNs: what they point at, and connections opened from them with tierwatch's name and limits."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import partial
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from agent.config import ConfigError
from agent.config.model import CUT_SHORT, PgBouncerTarget, PostgresTarget, userinfo_cut_short
from collectors.postgres.session import Connect

APPLICATION_NAME = "tierwatch"
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
URI_SCHEMES = ("postgresql://", "postgres://")


def parse_dsn(dsn: str) -> dict[str, str]:
    """The DSN's parameters; the error never repeats the DSN, which may hold a password."""
    # libpq ends a URI's user information at its first "@": the rest of such a password is the host.
    if dsn.startswith(URI_SCHEMES) and (userinfo_cut_short(dsn) or urlsplit(dsn).netloc.count("@") > 1):
        raise ValueError(f"dsn: {CUT_SHORT}")
    try:
        return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError:
        raise ValueError("dsn is not a valid connection string or URI") from None


def _hosts(params: Mapping[str, str]) -> list[str]:
    return (params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "")).split(",")


def endpoint(params: Mapping[str, str]) -> str:
    """Where the DSN points, for logs and errors: host, port, database and user, nothing else."""
    host = ",".join(_hosts(params)) or "the default socket"
    port = params.get("port") or os.environ.get("PGPORT") or 5432
    return f"{host}:{port}/{params.get('dbname') or 'default'} as {params.get('user') or 'default'}"


def server(params: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """The server the DSN points at, as (hosts, port): two DSNs with the same one reach the same cluster
    (spelled alike; ``localhost`` and ``127.0.0.1`` count as two)."""
    return tuple(_hosts(params)), str(params.get("port") or os.environ.get("PGPORT") or 5432)


def is_local(params: Mapping[str, str]) -> bool:
    """True when every host of the DSN is this machine: loopback, a socket directory, or the default."""
    return all(host in LOCAL_HOSTS or host.startswith(("/", "@")) for host in _hosts(params))


def connector(
    params: Mapping[str, str], password: str | None, timeout: float, *, admin_console: bool = False
) -> Connect:
    """Opens connections named ``tierwatch`` whose every wait ends well within the cycle ``timeout``.

    PgBouncer's admin console accepts no startup ``options`` and only the simple query protocol; a
    PostgreSQL server gets statement and lock timeouts for the session and prepares the cycle's
    statements once instead of planning them every cycle.
    """
    settings = dict(params)
    settings.update(
        application_name=APPLICATION_NAME,
        connect_timeout=str(max(2, round(timeout / 2))),  # libpq's minimum is 2 s
        # Sent data the peer does not acknowledge (a partition) fails the call instead of hanging it.
        tcp_user_timeout=str(max(1, round(timeout * 1000))),
    )
    settings.update(keepalives(params, timeout))
    if password is not None:
        settings["password"] = password
    if admin_console:
        return partial(psycopg.connect, autocommit=True, prepare_threshold=None, **settings)
    statement_ms, lock_ms = max(1, round(timeout * 500)), max(1, round(timeout * 250))
    limits = f"-c statement_timeout={statement_ms} -c lock_timeout={lock_ms}"
    settings["options"] = f"{params['options']} {limits}" if params.get("options") else limits
    return partial(psycopg.connect, autocommit=True, prepare_threshold=0, **settings)


def keepalives(params: Mapping[str, str], timeout: float) -> dict[str, str]:
    """libpq keepalive settings the DSN leaves unset.

    ``tcp_user_timeout`` only bounds data the peer has not acknowledged: a partition that starts after
    the server acknowledged the query leaves the socket silent, and without probes of our own the
    call would wait for the kernel's two-hour keepalive while holding the session. Probing after
    ``timeout`` idle seconds, once a second, three times, ends it within a few seconds more.
    """
    wanted = {
        "keepalives": "1",
        "keepalives_idle": str(max(1, math.ceil(timeout))),
        "keepalives_interval": "1",
        "keepalives_count": "3",
    }
    return {key: value for key, value in wanted.items() if not params.get(key)}


def entry_connector(
    section: str, entry: PostgresTarget | PgBouncerTarget, timeout: float, *, admin_console: bool = False
) -> tuple[Connect, dict[str, str]]:
    """The connection factory of a configured target, and its DSN's parameters."""
    try:
        params = parse_dsn(entry.dsn.get_secret_value())
    except ValueError as error:
        raise ConfigError(f"{section} {entry.name}: {error}") from None
    password = entry.password.get_secret_value() if entry.password is not None else None
    return connector(params, password, timeout, admin_console=admin_console), params
