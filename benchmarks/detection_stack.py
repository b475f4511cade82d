"""The processes the detection benchmark runs next to PostgreSQL: tierwatch with default settings, and
the common setup (postgres_exporter, Prometheus with the community rule), each sending to a private
Alertmanager whose webhook notifications are time-stamped as they arrive.

What the other benchmarks share lives here too (fleet.py builds on it): ``BenchmarkError``, ``Service``
for a child process, the agent's environment as deployments give it, and ``run_benchmark`` for the
exit codes and the handling of Ctrl-C and SIGTERM.

The PostgreSQL and Alertmanager classes of the test fixtures are reused as they are; they only need
pytest to be importable, which `make bench` installs with the test extras.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import yaml

from tests.fixtures import alertmanager_server as fixture
from tests.fixtures.alertmanager_server import Alertmanager, Webhook
from tests.support import DEPLOYED_ENVIRONMENT, REPO, free_port, http_get, parse_metrics, value

TIERWATCH = Path(sys.executable).parent / "tierwatch"
PROMETHEUS = "/usr/bin/prometheus"
EXPORTER = "/usr/bin/prometheus-postgres-exporter"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
TARGET = "bench"  # tierwatch's name for the database, its alerts' `target` label
EXIT_OK, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 2, 130
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The common setup users run today, as the issue describes it.
SCRAPE_INTERVAL = "15s"
EVALUATION_INTERVAL = "15s"
COMMUNITY_RULE = {
    "alert": "PostgresqlTooManyConnections",
    "expr": "sum by (instance, job, server) (pg_stat_activity_count) "
    "> on (instance, job, server) (pg_settings_max_connections * 0.8)",
    "for": "2m",
    "labels": {"severity": "warning"},
    "annotations": {
        "summary": "Postgresql too many connections (instance {{ $labels.instance }})",
        "description": "PostgreSQL instance has too many connections (> 80%).\n"
        "  VALUE = {{ $value }}\n  LABELS = {{ $labels }}",
    },
}


Result = TypeVar("Result")


class BenchmarkError(Exception):
    """Something the benchmark needs could not be started or read."""


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def run_benchmark(
    run: Callable[[], Result],
    report: Callable[[Result], None],
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """``report(run())`` and the benchmark's exit status: 0 whatever the verdict; 2 when something could
    not run (a BenchmarkError, RuntimeError, OSError or one of ``errors``); 130 on Ctrl-C or SIGTERM,
    which unwind ``run`` so that everything it started is stopped."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run()
    except (BenchmarkError, RuntimeError, OSError, *errors) as error:
        print(f"cannot run: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    report(result)
    return EXIT_OK


def agent_environment() -> dict[str, str]:
    """This process's environment as a deployment hands it to ``tierwatch run``: DEPLOYED_ENVIRONMENT
    set, and no TIERWATCH_* variable, which would override the config the benchmark is about.

    The bytecode cache it names must have been filled (by `make`): an agent that compiles its modules at
    start-up keeps 2-4 MiB more resident than a deployed one, and would skew every memory figure. The
    project's own modules are compiled again here, as they may have been edited since (an agent under
    PYTHONDONTWRITEBYTECODE would otherwise compile an edited module at every start).
    """
    cache = Path(DEPLOYED_ENVIRONMENT["PYTHONPYCACHEPREFIX"])
    if next(cache.rglob("*.opt-2.pyc"), None) is None:
        raise BenchmarkError(f"no bytecode cache in {cache}: run `make bench` or `make run`, which fill it")
    compile_project = [sys.executable, "-OO", "-m", "compileall", "-q", "agent", "collectors", "alerts"]
    into_cache = {**os.environ, "PYTHONPYCACHEPREFIX": str(cache)}
    subprocess.run(compile_project, cwd=REPO, env=into_cache, check=True)
    inherited = {key: val for key, val in os.environ.items() if not key.startswith("TIERWATCH_")}
    return {**inherited, **DEPLOYED_ENVIRONMENT}


def require(path: str | Path, package: str) -> str:
    if not os.access(path, os.X_OK):
        raise BenchmarkError(f"{path} is missing (Debian package {package})")
    return str(path)


def answers(url: str, check: Callable[[bytes], bool] = lambda _: True) -> bool:
    """True when ``url`` answers 200 and its body passes ``check``; a refused connection is False."""
    try:
        status, body = http_get(url, 2)
    except OSError:
        return False
    return status == 200 and check(body)


class Service:
    """A child process logging to a file in its work directory, stopped with SIGTERM, then SIGKILL.

    It gets a session of its own, so that Ctrl-C reaches only the benchmark, which then stops the
    children in order instead of racing their own shutdown.
    """

    def __init__(
        self, name: str, command: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self._command = command
        self._env = env
        self.log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} has not been started"
        return self._process.pid

    def start(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> Service:
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self._command, stdout=self._log, stderr=self._log, env=self._env, start_new_session=True
        )
        self.wait_for(ready, "ready", timeout)
        return self

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.name}: not {what} within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.2)

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise BenchmarkError(f"{self.name} exited ({self._process.returncode}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()


@contextmanager
def running(service: Service, ready: Callable[[], bool]) -> Iterator[Service]:
    try:
        yield service.start(ready)
    finally:
        service.stop()


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() when the webhook received the notification
    alert: dict[str, Any]  # one alert of it: labels, annotations, status


class StampedNotifications(fixture.StampedNotifications):
    """The fixture's time-stamped webhook notifications, looked up by alert name."""

    def first_firing(self, alertname: str, since: float) -> Arrival | None:
        for at, alert in self.since(since):
            if alert["status"] == "firing" and alert["labels"]["alertname"] == alertname:
                return Arrival(at, alert)
        return None

    def names_firing(self, since: float) -> set[str]:
        return {alert["labels"]["alertname"] for _, alert in self.since(since) if alert["status"] == "firing"}


@contextmanager
def alertmanager_server(
    workdir: Path, notifications: list[dict[str, Any]] | None = None
) -> Iterator[Alertmanager]:
    """A private Alertmanager (group_wait 0s, group_interval 1s) whose webhook appends what it receives
    to ``notifications`` when given."""
    binary = require(ALERTMANAGER, "prometheus-alertmanager")
    webhook = Webhook()
    if notifications is not None:
        webhook.notifications = notifications
    workdir.mkdir()
    server = Alertmanager(binary, workdir, webhook)
    try:
        try:
            server.start()
        except AssertionError as error:  # the fixture reports a failed start as a test failure
            raise BenchmarkError(str(error)) from None
        yield server
    finally:
        server.stop()
        webhook.close()


@contextmanager
def alertmanager(workdir: Path) -> Iterator[tuple[Alertmanager, StampedNotifications]]:
    """A private Alertmanager and what its webhook receives, each notification stamped as it arrives."""
    notifications = StampedNotifications()
    with alertmanager_server(workdir, notifications) as server:
        yield server, notifications


@contextmanager
def tierwatch(workdir: Path, dsn: str, alertmanager_url: str) -> Iterator[Service]:
    """``tierwatch run`` with only a postgres target and an Alertmanager: every other setting default."""
    workdir.mkdir()
    config = workdir / "tierwatch.yaml"
    settings = {"postgres": [{"name": TARGET, "dsn": dsn}], "alertmanager": {"urls": [alertmanager_url]}}
    config.write_text(yaml.safe_dump(settings))
    config.chmod(0o600)  # the DSN holds a password
    address = f"127.0.0.1:{free_port()}"
    command = [
        require(TIERWATCH, "tierwatch (make run)"),
        "run",
        "--config",
        str(config),
        "--listen",
        address,
    ]
    with running(
        Service("tierwatch", command, workdir, agent_environment()),
        lambda: answers(f"http://{address}/readyz"),
    ) as agent:
        agent.wait_for(lambda: _postgres_collector_up(address), "collecting from PostgreSQL")
        yield agent


def _postgres_collector_up(address: str) -> bool:
    status, body = http_get(f"http://{address}/metrics")
    series = parse_metrics(body.decode()) if status == 200 else {}
    return value(series, "tierwatch_collector_up", collector="postgres", target=TARGET) == 1


@contextmanager
def common_setup(workdir: Path, dsn_url: str, alertmanager_port: int) -> Iterator[list[Service]]:
    """postgres_exporter scraped by Prometheus, which evaluates the community rule; yields once
    Prometheus holds the exporter's connection count, so the condition starts on a warm setup."""
    workdir.mkdir()
    exporter_address, prometheus_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    exporter = _exporter(workdir, dsn_url, exporter_address)
    with running(exporter, lambda: answers(f"http://{exporter_address}/metrics", _database_up)):
        prometheus = _prometheus(workdir, exporter_address, alertmanager_port, prometheus_address)
        prometheus_url = f"http://{prometheus_address}"
        with running(prometheus, lambda: answers(f"{prometheus_url}/-/ready")):
            # The first scrape comes up to one scrape interval after start.
            scraped = partial(_has_series, prometheus_url, "pg_stat_activity_count")
            prometheus.wait_for(scraped, "scraping postgres_exporter", 60)
            yield [exporter, prometheus]


def _database_up(metrics: bytes) -> bool:
    return b"\npg_up 1" in metrics


def _exporter(workdir: Path, dsn_url: str, address: str) -> Service:
    command = [require(EXPORTER, "prometheus-postgres-exporter"), f"--web.listen-address={address}"]
    env = {**os.environ, "DATA_SOURCE_NAME": dsn_url}
    return Service("postgres_exporter", command, workdir, env)


def _prometheus(workdir: Path, exporter_address: str, alertmanager_port: int, address: str) -> Service:
    rules = workdir / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "postgresql", "rules": [COMMUNITY_RULE]}]}))
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": EVALUATION_INTERVAL},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [{"job_name": "postgres", "static_configs": [{"targets": [exporter_address]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    command = [
        require(PROMETHEUS, "prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address={address}",
    ]
    return Service("prometheus", command, workdir)


def _has_series(prometheus_url: str, query: str) -> bool:
    try:
        status, body = http_get(f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    except OSError:
        return False
    return status == 200 and bool(json.loads(body)["data"]["result"])
