"""Finds PostgreSQL and Redis answering on their default local addresses, for the no-config default.

A bare TCP connect would also succeed against any other service on the port, so each probe speaks the
first step of the real protocol: PostgreSQL's SSLRequest (answered with one byte, S or N) and Redis's
PING (answered with +PONG, or -NOAUTH when a password is required).
"""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path
from typing import Any

log = logging.getLogger("tierwatch.detect")
POSTGRES_SOCKET_DIR = Path("/var/run/postgresql")
POSTGRES_PORT = 5432
REDIS_TCP = ("127.0.0.1", 6379)
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
PROBE_TIMEOUT = 0.5


def _exchange(family: int, address: Any, request: bytes) -> bytes:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as connection:
            connection.settimeout(PROBE_TIMEOUT)
            connection.connect(address)
            connection.sendall(request)
            return connection.recv(64)
    except OSError:
        return b""


def postgres_answers(family: int, address: Any) -> bool:
    return _exchange(family, address, SSL_REQUEST)[:1] in (b"S", b"N")


def redis_answers(address: tuple[str, int]) -> bool:
    return _exchange(socket.AF_INET, address, b"PING\r\n").startswith((b"+PONG", b"-NOAUTH"))


def detect_local() -> dict[str, Any]:
    """Config sections for what answers locally; logs what was and was not found."""
    found: dict[str, Any] = {}
    socket_path = POSTGRES_SOCKET_DIR / f".s.PGSQL.{POSTGRES_PORT}"
    # No exists() first: it raises when the agent's user may not search the directory (0750, say).
    if postgres_answers(socket.AF_UNIX, str(socket_path)):
        dsn = f"host={POSTGRES_SOCKET_DIR} port={POSTGRES_PORT} dbname=postgres"
        found["postgres"] = [{"name": "local", "dsn": dsn}]
        log.info("auto-detected PostgreSQL on the local socket %s", socket_path)
    elif postgres_answers(socket.AF_INET, ("127.0.0.1", POSTGRES_PORT)):
        found["postgres"] = [{"name": "local", "dsn": f"host=127.0.0.1 port={POSTGRES_PORT} dbname=postgres"}]
        log.info("auto-detected PostgreSQL at 127.0.0.1:%d", POSTGRES_PORT)
    else:
        log.info("no PostgreSQL answered at %s or 127.0.0.1:%d", socket_path, POSTGRES_PORT)
    if redis_answers(REDIS_TCP):
        found["redis"] = [{"name": "local", "url": "redis://{}:{}/0".format(*REDIS_TCP)}]
        log.info("auto-detected Redis at %s:%d", *REDIS_TCP)
    else:
        log.info("no Redis answered at %s:%d", *REDIS_TCP)
    return found
