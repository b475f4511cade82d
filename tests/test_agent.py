"""The agent as users run it: `tierwatch run` in a child process, its endpoints and its shutdown."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __version__
from tests.support import REPO, AgentProcess, assert_promtool_accepts, http_get, start_python, value

BURNER_TAG = "tierwatch-test-app-burner"


@pytest.fixture
def app_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the app on a shared host: it burns CPU for at most 20 s."""
    process = start_python(20, BURNER_TAG)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def agent(tmp_path: Path, app_process: subprocess.Popen[bytes]) -> Iterator[AgentProcess]:
    assert app_process.poll() is None, "the app stand-in must be running before the agent starts"
    config = {"interval": 0.5, "host": {"name": "node-a"}, "app": [{"name": "api", "process": BURNER_TAG}]}
    with AgentProcess(tmp_path, config) as running:
        yield running


def test_metrics_pass_promtool(agent: AgentProcess) -> None:
    agent.wait_for(lambda: value(agent.metrics(), "tierwatch_app_process_cpu_ratio", target="api"), "app cpu")
    text = agent.metrics_text()
    assert_promtool_accepts(text)
    assert "Value as of the last collection cycle." in text


def test_metrics_content(agent: AgentProcess) -> None:
    agent.wait_for(lambda: value(agent.metrics(), "tierwatch_app_process_cpu_ratio", target="api"), "app cpu")
    series = agent.metrics()
    assert value(series, "tierwatch_collector_up", collector="host", target="node-a") == 1
    assert value(series, "tierwatch_collector_up", collector="app", target="api") == 1
    assert value(series, "tierwatch_build_info", version=__version__) == 1
    assert value(series, "tierwatch_app_processes", target="api") == 1
    # one busy-looping process: close to one core's worth of the host's CPUs
    cores = value(series, "tierwatch_app_process_cpu_cores", target="api")
    assert cores is not None
    assert 0.5 < cores <= 1.1
    assert value(series, "tierwatch_app_process_resident_memory_bytes", target="api") > 1_000_000
    cpu = value(series, "tierwatch_host_cpu_utilization_ratio", target="node-a")
    assert cpu is not None
    assert 0 < cpu <= 1
    errors = [v for (name, _), v in series.items() if name == "tierwatch_collector_errors_total"]
    assert len(errors) == 2 * 6  # every reason of both targets, all zero
    assert not any(errors)


def test_health_readiness_and_alerts(agent: AgentProcess) -> None:
    assert http_get(f"{agent.url}/healthz") == (200, b"ok\n")
    assert http_get(f"{agent.url}/readyz") == (200, b"ready\n")
    status, body = http_get(f"{agent.url}/api/v1/alerts")
    assert status == 200
    assert json.loads(body) == []
    assert http_get(f"{agent.url}/nope")[0] == 404


def test_start_up_log_names_what_is_monitored(agent: AgentProcess) -> None:
    log = agent.log()
    assert "collector host: monitoring host node-a (procfs /proc" in log
    assert f"collector app: monitoring app api (processes matching '{BURNER_TAG}')" in log


def test_an_agent_with_nothing_to_collect_says_so(tmp_path: Path) -> None:
    idle = AgentProcess(tmp_path, {"host": {"enabled": False}}).start(wait_ready=False)
    try:
        idle.wait_for(lambda: "no collector is configured" in idle.log(), "the warning")
        assert http_get(f"{idle.url}/readyz")[0] == 503
    finally:
        assert idle.stop() == 0


def test_start_up_log_names_alertmanagers_without_credentials(tmp_path: Path) -> None:
    """A token given as the URL's user name has no password the scrubbing filter would know."""
    urls = ["http://am-token-7f3a9c@127.0.0.1:9/", "http://user:pw-5e1d@127.0.0.1:9/"]
    config = {"host": {"enabled": False}, "alertmanager": {"urls": urls}}
    sender = AgentProcess(tmp_path, config).start(wait_ready=False)
    try:
        sender.wait_for(lambda: "sending alerts to" in sender.log(), "the start-up line")
        assert "sending alerts to http://127.0.0.1:9/, http://127.0.0.1:9/" in sender.log()
        assert "am-token-7f3a9c" not in sender.log()
        assert "pw-5e1d" not in sender.log()
    finally:
        assert sender.stop() == 0


def test_sigterm_stops_cleanly_within_5_seconds(agent: AgentProcess) -> None:
    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 5
    assert "stopped" in agent.log()


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--version"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"tierwatch {__version__}"


def test_listen_address_in_use_exits_2(agent: AgentProcess) -> None:
    # A config of its own: without one the agent would probe the machine's PostgreSQL and Redis.
    workdir = agent.config_path.parent / "second"
    workdir.mkdir()
    second = AgentProcess(workdir, {"host": {"name": "node-b"}})
    second.port = agent.port
    assert second.spawn().wait(timeout=30) == 2
    assert f"cannot listen on 127.0.0.1:{agent.port}" in second.log()


def test_kept_alive_scrapes_do_not_stall(agent: AgentProcess) -> None:
    """Prometheus reuses its connection. With Nagle's algorithm on, the body (the second small write)
    waited for the delayed ACK, about 40 ms a response: 50 scrapes took over 2 s instead of ~0.05."""
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    started = time.monotonic()
    for _ in range(50):
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b"ok\n"
    connection.close()
    assert time.monotonic() - started < 1.5


def test_a_sighup_while_starting_does_not_end_the_agent(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"interval": 0.5, "host": {"name": "node-a"}})
    process = agent.spawn()
    try:
        # As soon as SIGHUP is ignored or handled, before the config is read or the port bound.
        agent.wait_for(lambda: _handles_sighup(process.pid), "SIGHUP disposition", timeout=10)
        with pytest.raises(OSError, match="Connection refused"):  # still starting: the config is checked
            http_get(f"{agent.url}/healthz", 1)
        process.send_signal(signal.SIGHUP)
        agent.wait_for(lambda: http_get(f"{agent.url}/readyz", 1)[0] == 200, "readyz")
    finally:
        assert agent.stop() == 0


def _handles_sighup(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    masks = dict(line.split(":\t") for line in status.splitlines() if line.startswith(("SigIgn", "SigCgt")))
    return any(int(mask, 16) & (1 << (signal.SIGHUP - 1)) for mask in masks.values())
