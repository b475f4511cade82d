"""One held connection per target, shared by the cycle and the load sampler, reopened with backoff.

Used by the PostgreSQL and the PgBouncer collectors. Driver errors become ``CollectorError`` here with
details written by tierwatch itself: libpq messages may quote parts of the connection string, so they
are matched for their cause and never passed on.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from collectors.backoff import Backoff
from collectors.base import CollectorError, Reason

Connect = Callable[[], psycopg.Connection]
FIRST_RETRY_SECONDS = 1.0
LONGEST_RETRY_SECONDS = 30.0
CLOSE_WAIT_SECONDS = 1.0

# Connection failures carry no SQLSTATE: libpq reports them as text. (marker, reason, what to log)
CONNECT_FAILURES: tuple[tuple[str, Reason, str], ...] = (
    ("password authentication failed", Reason.AUTH, "password authentication failed"),
    ("no password supplied", Reason.AUTH, "the server wants a password and none is configured"),
    ("authentication failed", Reason.AUTH, "authentication failed"),
    ("pg_hba.conf", Reason.AUTH, "no pg_hba.conf entry allows this connection"),
    ("permission denied", Reason.PERMISSION, "permission denied (CONNECT privilege on the database?)"),
    ("timeout expired", Reason.TIMEOUT, "connection timed out"),
    ("timed out", Reason.TIMEOUT, "connection timed out"),
    # A full server is up and answering: "other", as are the role and database connection limits.
    ("too many connections", Reason.OTHER, "no free connection slot on the server"),
    ("connection slots are reserved", Reason.OTHER, "no free connection slot on the server"),
    ("too many clients", Reason.OTHER, "no free connection slot on the server (max_connections)"),
    ("no more connections allowed", Reason.OTHER, "PgBouncer is full (max_client_conn)"),
    # PgBouncer's refusal of a console user that it does not list.
    ("not allowed", Reason.PERMISSION, "the user is in neither admin_users nor stats_users of PgBouncer"),
    ("does not exist", Reason.OTHER, "the database or role does not exist"),
    ("unsupported startup parameter", Reason.OTHER, "the server rejected a connection parameter"),
    ("the database system is", Reason.UNREACHABLE, "the server is starting up or shutting down"),
    ("Connection refused", Reason.UNREACHABLE, "connection refused"),
    ("No such file or directory", Reason.UNREACHABLE, "no server socket at that path"),
    ("resolve host", Reason.UNREACHABLE, "the host name does not resolve"),
    ("translate host name", Reason.UNREACHABLE, "the host name does not resolve"),
    ("unreachable", Reason.UNREACHABLE, "network unreachable"),
    ("No route to host", Reason.UNREACHABLE, "no route to host"),
    ("server closed the connection", Reason.UNREACHABLE, "the server closed the connection"),
    ("Connection reset", Reason.UNREACHABLE, "the server reset the connection"),
)
# Query failures do carry one. Class 08 and the 57P0x shutdown states mean the server went away.
QUERY_FAILURE_CLASSES = {"08": Reason.UNREACHABLE, "28": Reason.AUTH}
QUERY_FAILURES: dict[str, tuple[Reason, str]] = {
    "57014": (Reason.TIMEOUT, "statement timeout"),
    "55P03": (Reason.TIMEOUT, "lock timeout"),
    "42501": (Reason.PERMISSION, "permission denied"),
    "57P01": (Reason.UNREACHABLE, "the server is shutting down"),
    "57P02": (Reason.UNREACHABLE, "the server crashed"),
    "57P03": (Reason.UNREACHABLE, "the server is not accepting connections"),
}


def connect_error(error: psycopg.Error, where: str) -> CollectorError:
    message = str(error)
    for marker, reason, cause in CONNECT_FAILURES:
        if marker in message:
            return CollectorError(reason, f"cannot connect to {where}: {cause}")
    return CollectorError(Reason.OTHER, f"cannot connect to {where} ({type(error).__name__})")


def query_error(error: psycopg.Error, where: str) -> CollectorError:
    state = error.sqlstate
    if state is None:
        # No SQLSTATE after connecting: libpq lost the connection itself.
        return CollectorError(Reason.UNREACHABLE, f"{where}: connection lost ({type(error).__name__})")
    if state in QUERY_FAILURES:
        reason, cause = QUERY_FAILURES[state]
    else:
        reason = QUERY_FAILURE_CLASSES.get(state[:2], Reason.OTHER)
        # The server's own message names objects, never connection parameters.
        cause = error.diag.message_primary or type(error).__name__
    return CollectorError(reason, f"{where}: {cause} (SQLSTATE {state})")


class Session:
    """The target's one connection, opened on first use and again after it broke.

    A lock gives the connection to one user at a time; the cycle waits for it at most ``wait``
    seconds (a query stuck on a paused server holds it), the sampler never waits.
    """

    def __init__(
        self,
        connect: Connect,
        endpoint: str,
        *,
        wait: float,
        on_connect: Callable[[psycopg.Connection], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._connect = connect
        self._on_connect = on_connect
        self._wait = wait
        self._lock = threading.Lock()
        self._connection: psycopg.Connection | None = None
        self._clock = clock
        self._backoff = Backoff(FIRST_RETRY_SECONDS, LONGEST_RETRY_SECONDS)
        self._last_failure = CollectorError(Reason.UNREACHABLE, f"cannot connect to {endpoint}")

    @contextmanager
    def cycle(self) -> Iterator[psycopg.Connection]:
        """The connection, opened if needed; raises ``CollectorError`` for every driver failure."""
        if not self._lock.acquire(timeout=self._wait):
            raise CollectorError(Reason.TIMEOUT, f"{self.endpoint}: an earlier query has not returned")
        try:
            connection = self._connection or self._open()
            with self._guarded(connection):
                yield connection
        finally:
            self._lock.release()

    @contextmanager
    def idle(self) -> Iterator[psycopg.Connection | None]:
        """The open connection if nobody uses it right now, else None. Never connects."""
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._connection is None:
                yield None
            else:
                with self._guarded(self._connection):
                    yield self._connection
        finally:
            self._lock.release()

    def close(self) -> None:
        # A query stuck on a paused server keeps the lock; the process exit then ends the connection.
        if self._lock.acquire(timeout=CLOSE_WAIT_SECONDS):
            try:
                self._discard()
            finally:
                self._lock.release()

    @contextmanager
    def _guarded(self, connection: psycopg.Connection) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as error:
            if connection.closed or connection.broken:
                self._discard()
            raise query_error(error, self.endpoint) from None

    def _open(self) -> psycopg.Connection:
        wait = self._backoff.remaining(self._clock())
        if wait > 0:
            failure = self._last_failure
            raise CollectorError(failure.reason, f"{failure.detail}; next attempt in {math.ceil(wait)} s")
        try:
            connection = self._connect()
        except psycopg.Error as error:
            raise self._failed(connect_error(error, self.endpoint)) from None
        try:
            if self._on_connect is not None:
                self._on_connect(connection)
        except psycopg.Error as error:
            connection.close()
            raise self._failed(query_error(error, self.endpoint)) from None
        except CollectorError as error:  # an answer that is not what PostgreSQL gives
            connection.close()
            raise self._failed(error) from None
        self._backoff.succeeded()
        self._connection = connection
        return connection

    def _failed(self, failure: CollectorError) -> CollectorError:
        self._last_failure = failure
        delay = self._backoff.failed(self._clock())
        return CollectorError(failure.reason, f"{failure.detail}; next attempt in {delay:.0f} s")

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
