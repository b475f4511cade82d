"""The one connection to a Redis target: each cycle's commands in one round trip, reopened with backoff.

A raw redis-py connection rather than a client: no pool that could open a second connection, no
response callbacks (the collector parses the replies itself), and RESP2 so that connecting sends
nothing beyond AUTH and CLIENT SETNAME, which keeps the least-privilege ACL short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis.exceptions as errors
from redis.connection import AbstractConnection, Connection, SSLConnection, parse_url

from agent.config import ConfigError
from agent.config.model import CUT_SHORT, RedisTarget, userinfo_cut_short
from collectors.backoff import Backoff
from collectors.base import CollectorError, Reason

CLIENT_NAME = "tierwatch"
Command = tuple[str | int, ...]
# The most specific class first: an AuthenticationError is also a ConnectionError.
REASONS: tuple[tuple[type[Exception], Reason], ...] = (
    (errors.AuthenticationError, Reason.AUTH),
    (errors.NoPermissionError, Reason.PERMISSION),
    (errors.TimeoutError, Reason.TIMEOUT),
    (TimeoutError, Reason.TIMEOUT),
    (errors.InvalidResponse, Reason.PARSE),
    (errors.ConnectionError, Reason.UNREACHABLE),
    (OSError, Reason.UNREACHABLE),
)


def reason_of(error: Exception) -> Reason:
    return next((reason for kind, reason in REASONS if isinstance(error, kind)), Reason.OTHER)


class Session:
    def __init__(self, connection: AbstractConnection, clock: Callable[[], float], backoff: Backoff) -> None:
        self._connection = connection
        self._clock = clock
        self._backoff = backoff
        self._last_failure: tuple[Reason, str] | None = None

    def execute(self, commands: Sequence[Command]) -> list[object]:
        """Each command's reply, or the ``ResponseError`` the server answered that command with.

        Raises ``CollectorError`` when the target cannot be reached or refuses the connection; after
        such a failure it raises again, without trying, until the backoff delay has passed.
        """
        now = self._clock()
        wait = self._backoff.remaining(now)
        if wait and self._last_failure is not None:
            reason, detail = self._last_failure
            raise CollectorError(reason, f"{detail} (next attempt in {wait:.3g} s)")
        reused = self._connection.is_connected
        try:
            try:
                replies = self._round_trip(commands)
            except errors.ConnectionError as error:
                if not reused or isinstance(error, errors.AuthenticationError):
                    raise
                # The server closed a connection kept from an earlier cycle (a restart, an idle
                # timeout): one retry on a fresh connection before calling the target unreachable.
                replies = self._round_trip(commands)
        except (errors.RedisError, OSError) as error:
            self._connection.disconnect()
            delay = self._backoff.failed(now)
            self._last_failure = (reason_of(error), str(error) or type(error).__name__)
            reason, detail = self._last_failure
            raise CollectorError(reason, f"{detail} (next attempt in {delay:g} s)") from None
        self._backoff.succeeded()
        self._last_failure = None
        return replies

    def _round_trip(self, commands: Sequence[Command]) -> list[object]:
        connection = self._connection
        connection.connect()
        connection.send_packed_command(connection.pack_commands(commands))
        return [self._reply() for _ in commands]

    def _reply(self) -> object:
        try:
            return self._connection.read_response()
        except errors.ResponseError as error:
            return error  # an error reply ends this command only; the connection stays usable

    def close(self) -> None:
        self._connection.disconnect()


def _address(options: dict[str, object]) -> str:
    if "path" in options:
        where = f"unix:{options['path']}"
    else:
        where = f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
        if options.get("connection_class") is SSLConnection:
            where += " (TLS)"
    username = options.get("username")
    return f"{username}@{where}" if username else where


def _parse_url(url: str) -> dict[str, object]:
    if userinfo_cut_short(url):
        raise ValueError(CUT_SHORT)
    return parse_url(url)


def open_connection(entry: RedisTarget, timeout: float) -> tuple[AbstractConnection, str]:
    """The (not yet connected) connection to ``entry`` and its address for logs, without the password."""
    try:
        options = _parse_url(entry.url.get_secret_value())
    except ValueError as error:
        raise ConfigError(f"redis {entry.name}: url: {error}") from None
    if entry.password is not None:
        options["password"] = entry.password.get_secret_value()
    address = _address(options)
    connection_class = options.pop("connection_class", Connection)
    options.update(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        client_name=CLIENT_NAME,
        protocol=2,  # RESP3 would add a HELLO to every connect
        decode_responses=False,
        driver_info=None,  # no CLIENT SETINFO: one command fewer to permit
        db=0,  # INFO is server-wide; selecting a database would only need another permission
    )
    try:
        return connection_class(**options), address
    except TypeError as error:  # an option in the URL's query that redis-py does not know
        raise ConfigError(f"redis {entry.name}: url: {error}") from None
