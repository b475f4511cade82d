"""Passwords typed into a DSN or URL without percent-encoding their @ / ? # stay out of every output.

Parsers cut such a password at the first of those characters and take the rest for a host, port or
path: libpq reads ``u:p@ss@db`` as host ``ss@db``, urllib reads ``u:p/ss@am`` as host ``u``, port
``p``. The config refuses such a DSN or URL without quoting it; behind that, the redactor knows each
piece a parser could show.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.redact import MASK, MIN_SECRET_LENGTH, Redactor, passwords_in
from tests.scenarios import quiet_host
from tests.support import REPO, AgentProcess, free_port

AT_PASSWORD = "p@ssw0rd-7Qx"  # libpq shows "ssw0rd-7Qx@host"
SLASH_PASSWORD = "Zx9k/Qw3m"  # libpq shows the whole URI as the host; urllib "Zx9k" as the port
PORT_PASSWORD = "8081/Vb7n-x"  # urllib reads u:8081/Vb7n-x@app as host u, port 8081: the URL is used


def pieces(password: str) -> list[str]:
    """The password and the parts of it a parser may show, long enough to be masked."""
    parts = re.split("[@/]", password)
    return [password, *(part for part in parts if len(part) >= MIN_SECRET_LENGTH)]


@pytest.mark.parametrize(
    ("section", "entry", "password"),
    [
        ("postgres", {"dsn": f"postgresql://monitor:{AT_PASSWORD}@127.0.0.1:1/postgres"}, AT_PASSWORD),
        ("postgres", {"dsn": f"postgresql://monitor:{SLASH_PASSWORD}@127.0.0.1:1/postgres"}, SLASH_PASSWORD),
        ("pgbouncer", {"dsn": f"postgresql://stats:{AT_PASSWORD}@127.0.0.1:1/pgbouncer"}, AT_PASSWORD),
        ("redis", {"url": f"redis://:{SLASH_PASSWORD}@127.0.0.1:1/0"}, SLASH_PASSWORD),
        (
            "app",
            {"metrics_url": f"http://scraper:{PORT_PASSWORD}@127.0.0.1:1/metrics", "requests_metric": "r"},
            PORT_PASSWORD,
        ),
    ],
)
def test_check_refuses_a_password_cut_by_an_unencoded_character_without_quoting_it(
    tmp_path: Path, section: str, entry: dict[str, str], password: str
) -> None:
    path = tmp_path / "tierwatch.yaml"
    config = {"interval": 1, "host": {"enabled": False}, section: [{"name": "main", **entry}]}
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "agent.cli", "check", "--config", str(path), "--duration", "0.2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "percent-encode" in done.stderr
    for piece in pieces(password):
        assert piece not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "connection",
    [
        f"postgresql://monitor:{AT_PASSWORD}@db/postgres",
        f"postgresql://monitor:{SLASH_PASSWORD}@db/postgres",
        f"http://scraper:{PORT_PASSWORD}@app/metrics",
    ],
)
def test_every_piece_a_parser_may_show_is_masked(connection: str) -> None:
    """Behind the config's refusal: should such a string reach a driver anyway, the pieces it would
    show as host, port or path are masked too."""
    password = next(p for p in (AT_PASSWORD, SLASH_PASSWORD, PORT_PASSWORD) if p in connection)
    redactor = Redactor()
    redactor.register(passwords_in(connection))
    shown = " ".join(pieces(password))
    assert redactor.scrub(shown).split() == [MASK] * len(pieces(password))


def test_a_reload_to_such_a_url_is_refused_and_logs_no_piece_of_it(tmp_path: Path) -> None:
    config: dict[str, Any] = {"interval": 0.5, "host": quiet_host()}
    alertmanager = f"http://admin:{SLASH_PASSWORD}@127.0.0.1:{free_port()}"
    app = {
        "name": "web",
        "metrics_url": f"http://scraper:{PORT_PASSWORD}@127.0.0.1:1/m",
        "requests_metric": "r",
    }
    with AgentProcess(tmp_path, config) as agent:
        agent.reload({**config, "alertmanager": {"urls": [alertmanager]}, "app": [app]})
        agent.wait_for(lambda: "reload failed" in agent.log(), "the refused reload")
    log = agent.log()
    assert "percent-encode" in log
    for piece in pieces(SLASH_PASSWORD) + pieces(PORT_PASSWORD):
        assert piece not in log
