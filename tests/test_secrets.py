"""Passwords typed into a DSN or URL without percent-encoding their @ / ? # stay out of every output.

Parsers cut such a password at the first of those characters and show the rest as a host, port or
path: libpq reads ``u:p@ss@db`` as host ``ss@db``, and ``u:p/ss@db`` as a host named after the whole
string; urllib reads ``u:p/ss@am`` as host ``u``, port ``p``. Those pieces reach the start-up lines and
the error details, so the redactor must know each of them, not only the password as written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.redact import MIN_SECRET_LENGTH
from tests.support import REPO, AgentProcess, free_port

AT_PASSWORD = "p@ssw0rd-7Qx"  # libpq shows "ssw0rd-7Qx@host"
SLASH_PASSWORD = "Zx9k/Qw3m"  # libpq shows the whole URI as the host; urllib "Zx9k" as the port
PORT_PASSWORD = "8081/Vb7n-x"  # urllib reads u:8081/Vb7n-x@app as host u, port 8081: the URL is used


def pieces(password: str) -> list[str]:
    """The password and the parts of it a parser may show, long enough to be masked."""
    parts = re.split("[@/]", password)
    return [password, *(part for part in parts if len(part) >= MIN_SECRET_LENGTH)]


def check_output(tmp_path: Path, config: dict[str, Any]) -> str:
    """Everything ``tierwatch check --json`` prints, stderr (its log) and stdout (the report)."""
    path = tmp_path / "tierwatch.yaml"
    path.write_text(yaml.safe_dump({"interval": 1, "host": {"enabled": False}, **config}))
    command = [sys.executable, "-m", "agent.cli", "check", "--config", str(path), "--duration", "0.2"]
    command.append("--json")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    # 2: no target could be read, which is what these tests cause.
    assert done.returncode == 2, done.stderr
    tiers = json.loads(done.stdout)["tiers"]
    assert all(tier["error"] is not None for tier in tiers), "each target should fail to connect"
    return done.stderr + done.stdout


@pytest.mark.parametrize(
    ("section", "entry", "password"),
    [
        ("postgres", {"dsn": f"postgresql://monitor:{AT_PASSWORD}@127.0.0.1:1/postgres"}, AT_PASSWORD),
        ("postgres", {"dsn": f"postgresql://monitor:{SLASH_PASSWORD}@127.0.0.1:1/postgres"}, SLASH_PASSWORD),
        ("pgbouncer", {"dsn": f"postgresql://stats:{AT_PASSWORD}@127.0.0.1:1/pgbouncer"}, AT_PASSWORD),
        (
            "app",
            {"metrics_url": f"http://scraper:{PORT_PASSWORD}@127.0.0.1:1/metrics", "requests_metric": "r"},
            PORT_PASSWORD,
        ),
    ],
)
def test_check_never_shows_a_password_cut_by_an_unencoded_character(
    tmp_path: Path, section: str, entry: dict[str, str], password: str
) -> None:
    output = check_output(tmp_path, {section: [{"name": "main", **entry}]})
    assert "127.0.0.1" in output  # the details still say where
    for piece in pieces(password):
        assert piece not in output


def test_agent_never_logs_such_a_password_of_an_alertmanager_or_of_an_app_added_by_a_reload(
    tmp_path: Path,
) -> None:
    alertmanager = f"http://admin:{SLASH_PASSWORD}@127.0.0.1:{free_port()}"
    config: dict[str, Any] = {"interval": 0.5, "alertmanager": {"urls": [alertmanager]}}
    with AgentProcess(tmp_path, config) as agent:
        agent.wait_for(lambda: "sending alerts to" in agent.log(), "the Alertmanager start-up line")
        url = f"http://scraper:{PORT_PASSWORD}@127.0.0.1:1/m"
        app = {"name": "web", "metrics_url": url, "requests_metric": "r"}
        agent.reload({**config, "app": [app]})
        agent.wait_for(lambda: "collector app/web failed" in agent.log(), "the new app's failure")
    log = agent.log()
    assert "monitoring app web" in log
    for piece in pieces(SLASH_PASSWORD) + pieces(PORT_PASSWORD):
        assert piece not in log
