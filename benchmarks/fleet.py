"""Servers and the agent for the soak and scale benchmarks: many Redis servers, one PostgreSQL cluster
with several databases, PgBouncer, the Kubernetes stand-in, an app and Alertmanager, all on loopback.

The test fixtures' classes are reused outside pytest as they are (they only need pytest importable,
which `make bench` installs with the test extras). Only servers started here are ever stopped.
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from tests.fixtures.alertmanager_server import Alertmanager, Webhook
from tests.fixtures.app_server import AppServer
from tests.fixtures.pgbouncer_server import ADMIN_USER, CONFIG, PGBOUNCER, STATS_USER, PgBouncerServer
from tests.fixtures.postgres_server import APP_ROLE, MONITOR_ROLE, PG_BIN, PostgresServer, owned_temp_dir
from tests.fixtures.redis_server import RedisServer, RedisServers
from tests.support import free_port, http_get, parse_metrics

TIERWATCH = Path(sys.executable).parent / "tierwatch"
REDIS_SERVER = "/usr/bin/redis-server"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MONITOR_NAME = "tierwatch"  # application_name and CLIENT SETNAME of the agent's connections
OBSERVER_NAME = "bench-observer"


class BenchmarkError(Exception):
    """Something the benchmark needs could not be started or read."""


def require(path: str | Path, package: str) -> str:
    if not os.access(path, os.X_OK):
        raise BenchmarkError(f"{path} is missing (Debian package {package})")
    return str(path)


def database_names(count: int) -> list[str]:
    return [f"bench{index}" for index in range(1, count + 1)]


@contextmanager
def postgres_cluster(databases: int) -> Iterator[PostgresServer]:
    """The fixture's cluster (max_connections 100, role tierwatch with pg_monitor) with ``databases``
    extra databases, one target each."""
    require(PG_BIN / "postgres", "postgresql-15")
    server = PostgresServer(owned_temp_dir("tierwatch-bench-pg-"), free_port())
    try:
        server.initialize()
        server.start()
        server.create_roles()
        with server.connect() as admin:
            for name in database_names(databases):
                admin.execute(f"CREATE DATABASE {name}")
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@contextmanager
def pgbouncer(postgres: PostgresServer) -> Iterator[PgBouncerServer]:
    """PgBouncer in front of the cluster, configured as the test fixture configures it."""
    require(PGBOUNCER, "pgbouncer")
    root = owned_temp_dir("tierwatch-bench-pgbouncer-")
    passwords = {
        APP_ROLE: postgres.passwords[APP_ROLE],
        STATS_USER: secrets.token_urlsafe(18),
        ADMIN_USER: secrets.token_urlsafe(18),
    }
    server = PgBouncerServer(root, free_port(), passwords)
    config = CONFIG.format(
        database="app",
        server_port=postgres.port,
        pool_size=2,
        port=server.port,
        root=root,
        admin=ADMIN_USER,
        stats=STATS_USER,
        max_client_conn=40,
    )
    (root / "pgbouncer.ini").write_text(config)
    (root / "userlist.txt").write_text("".join(f'"{user}" "{pw}"\n' for user, pw in passwords.items()))
    try:
        server.start()
        yield server
    finally:
        if (root / "pgbouncer.pid").exists():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_fleet(workdir: Path, count: int) -> Iterator[list[RedisServer]]:
    servers = RedisServers(require(REDIS_SERVER, "redis-server"), workdir)
    try:
        yield [servers.start() for _ in range(count)]
    finally:
        servers.stop_all()


@contextmanager
def alertmanager(workdir: Path) -> Iterator[Alertmanager]:
    webhook = Webhook()
    workdir.mkdir()
    server = Alertmanager(require(ALERTMANAGER, "prometheus-alertmanager"), workdir, webhook)
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
def app_with_traffic(requests_per_second: float) -> Iterator[AppServer]:
    """The fixture app, answering a steady trickle of requests so its counters and histogram move."""
    app = AppServer()
    stop = threading.Event()

    def send() -> None:
        while not stop.wait(1 / requests_per_second):
            # The app speaks HTTP/1.0: one connection per request.
            connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
            try:
                connection.request("GET", "/work?delay=0.005")
                connection.getresponse().read()
            except (OSError, http.client.HTTPException):
                pass  # a missed request changes nothing the benchmark measures
            finally:
                connection.close()

    thread = threading.Thread(target=send, name="app-traffic", daemon=True)
    thread.start()
    try:
        yield app
    finally:
        stop.set()
        thread.join(5)
        app.stop()


@contextmanager
def database_trickle(server: PostgresServer, names: Sequence[str], per_second: float) -> Iterator[None]:
    """A catalog read in each database ``per_second`` times a second, so every database has block
    accesses in every interval; an idle one has none, and its buffer cache hit ratio (hits over
    accesses) has no denominator: the agent then rightly exports no such series, and the series count
    would flicker with the idleness of the databases."""
    stop = threading.Event()
    connections = [server.connect(APP_ROLE, name, application_name=OBSERVER_NAME) for name in names]

    def read() -> None:
        while not stop.wait(1 / per_second):
            for connection in connections:
                connection.execute("SELECT count(*) FROM pg_class")

    thread = threading.Thread(target=read, name="database-trickle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for connection in connections:
            connection.close()


def postgres_targets(workdir: Path, server: PostgresServer, count: int) -> list[dict[str, str]]:
    password = workdir / "postgres-password"
    password.write_text(server.passwords[MONITOR_ROLE])
    return [
        {"name": name, "dsn": server.dsn(dbname=name), "password_file": str(password)}
        for name in database_names(count)
    ]


def redis_targets(servers: Sequence[RedisServer]) -> list[dict[str, str]]:
    return [{"name": f"redis{index}", "url": server.url} for index, server in enumerate(servers, 1)]


class Agent:
    """``tierwatch run`` with a config written from a dict, in a session of its own."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._config = workdir / "tierwatch.yaml"
        self._config.write_text(yaml.safe_dump(config))
        self._log_path = workdir / "tierwatch.log"
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> Agent:
        command = [
            require(TIERWATCH, "tierwatch (make run)"),
            "run",
            "--config",
            str(self._config),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        # TIERWATCH_* variables would override the config the benchmark is about.
        env = {key: val for key, val in os.environ.items() if not key.startswith("TIERWATCH_")}
        self._log = self._log_path.open("wb")
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=self._log, env=env, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"tierwatch not ready within {START_TIMEOUT:.0f} s\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{self.port}/readyz", 2)[0] == 200
        except OSError:
            return False

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise BenchmarkError(f"tierwatch exited ({self._process.returncode}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        return self._log_path.read_text(errors="replace")[-chars:] if self._log_path.exists() else ""

    def metrics_text(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        if status != 200:
            raise BenchmarkError(f"/metrics answered {status}")
        return body.decode()

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
def running_agent(workdir: Path, config: dict[str, Any]) -> Iterator[Agent]:
    agent = Agent(workdir, config)
    try:
        yield agent.start()
    finally:
        agent.stop()


def series_keys(text: str, leave_out: tuple[str, ...] = ()) -> frozenset[str]:
    """The series of a /metrics page, as ``name{labels}``, but for those starting with ``leave_out``."""
    return frozenset(
        line.rpartition(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#") and not (leave_out and line.startswith(leave_out))
    )


def self_metrics(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """{(collector, target): {"up": .., "duration": .., "last_success": ..}} from a /metrics page."""
    names = {
        "tierwatch_collector_up": "up",
        "tierwatch_collector_duration_seconds": "duration",
        "tierwatch_collector_last_success_timestamp_seconds": "last_success",
    }
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(tuple(names)))
    found: dict[tuple[str, str], dict[str, float]] = {}
    for (name, labels), value in parse_metrics(wanted + "\n").items():
        label = dict(labels)
        found.setdefault((label["collector"], label["target"]), {})[names[name]] = value
    return found


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def rss_bytes(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def thread_count(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def open_files(pid: int) -> tuple[int, int]:
    """(open file descriptors, how many of them are sockets)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue  # closed while we looked
    return len(targets), sum(target.startswith("socket:") for target in targets)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"
