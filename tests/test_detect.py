"""The no-config default: PostgreSQL and Redis are found by speaking their protocols, nothing else is."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import detect
from agent.config.loader import load_config
from tests.fixtures.postgres_server import PostgresServer
from tests.fixtures.redis_server import RedisServer
from tests.support import REPO, free_port


@pytest.fixture
def impostor() -> Iterator[int]:
    """A TCP service that accepts and answers with something that is neither PostgreSQL nor Redis."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_probes_tell_the_real_servers_from_an_impostor(
    postgres_server: PostgresServer, redis_server: RedisServer, impostor: int
) -> None:
    assert detect.postgres_answers(socket.AF_INET, ("127.0.0.1", postgres_server.port))
    assert detect.redis_answers(("127.0.0.1", redis_server.port))
    assert not detect.postgres_answers(socket.AF_INET, ("127.0.0.1", impostor))
    assert not detect.redis_answers(("127.0.0.1", impostor))
    assert not detect.postgres_answers(socket.AF_INET, ("127.0.0.1", free_port()))  # nothing listens


def test_found_servers_become_valid_config(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    monkeypatch.setattr(detect, "POSTGRES_SOCKET_DIR", postgres_server.root)
    monkeypatch.setattr(detect, "POSTGRES_PORT", postgres_server.port)
    monkeypatch.setattr(detect, "REDIS_TCP", ("127.0.0.1", redis_server.port))
    with caplog.at_level(logging.INFO, logger="tierwatch.detect"):
        found = detect.detect_local()
    config = load_config(None, environ={}, base=found)
    assert config.postgres[0].dsn.get_secret_value() == (
        f"host={postgres_server.root} port={postgres_server.port} dbname=postgres"
    )
    assert config.redis[0].url.get_secret_value() == f"redis://127.0.0.1:{redis_server.port}/0"
    assert f"auto-detected PostgreSQL on the local socket {postgres_server.root}" in caplog.text
    assert f"auto-detected Redis at 127.0.0.1:{redis_server.port}" in caplog.text


def test_nothing_answering_is_logged_and_leaves_the_host_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(detect, "POSTGRES_SOCKET_DIR", tmp_path)
    monkeypatch.setattr(detect, "POSTGRES_PORT", free_port())
    monkeypatch.setattr(detect, "REDIS_TCP", ("127.0.0.1", free_port()))
    with caplog.at_level(logging.INFO, logger="tierwatch.detect"):
        assert detect.detect_local() == {}
    assert "no PostgreSQL answered" in caplog.text
    assert "no Redis answered" in caplog.text


def test_a_socket_directory_the_agent_may_not_search_is_nothing_found() -> None:
    """PostgreSQL's socket directory is often 0750: an agent outside its group may not look into it.
    Root may search any directory: as root the detection runs as nobody, else as this user in a
    directory its owner may not search."""
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        private = Path(top) / "postgresql"
        private.mkdir(mode=0o700 if as_root else 0o600)
        script = (
            "from pathlib import Path\n"
            "from agent import detect\n"
            f"detect.POSTGRES_SOCKET_DIR = Path({str(private)!r})\n"
            f"detect.POSTGRES_PORT = {free_port()}\n"
            f"detect.REDIS_TCP = ('127.0.0.1', {free_port()})\n"
            "print(detect.detect_local())\n"
        )
        nobody = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            user=65534 if as_root else None,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert nobody.returncode == 0, nobody.stderr
    assert nobody.stdout.strip() == "{}"
