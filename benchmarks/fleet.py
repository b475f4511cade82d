"""Servers and the agent for the soak and scale benchmarks: many Redis servers, one PostgreSQL cluster
with several databases, PgBouncer, the Kubernetes stand-in, an app and Alertmanager, all on loopback.

The test fixtures' classes are reused outside pytest as they are (they only need pytest importable,
which `make bench` installs with the test extras), and so are detection_stack's process handling and
exit codes. Only servers started here are ever stopped.
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from detection_stack import TIERWATCH, BenchmarkError, Service, agent_environment, answers, require, running

from tests.fixtures.app_server import AppServer
from tests.fixtures.pgbouncer_server import PGBOUNCER, PgBouncerServer, pgbouncer_in_front
from tests.fixtures.postgres_server import APP_ROLE, MONITOR_ROLE, PG_BIN, PostgresServer, owned_temp_dir
from tests.fixtures.redis_server import RedisServer, RedisServers
from tests.support import free_port, http_get, parse_metrics

REDIS_SERVER = "/usr/bin/redis-server"
MONITOR_NAME = "tierwatch"  # application_name and CLIENT SETNAME of the agent's connections
OBSERVER_NAME = "bench-observer"


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
    with pgbouncer_in_front(postgres, root, database="app", pool_size=2, max_client_conn=40) as server:
        yield server


@contextmanager
def redis_fleet(workdir: Path, count: int) -> Iterator[list[RedisServer]]:
    servers = RedisServers(require(REDIS_SERVER, "redis-server"), workdir)
    try:
        yield [servers.start() for _ in range(count)]
    finally:
        servers.stop_all()


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


class Agent(Service):
    """``tierwatch run`` with a config written from a dict, in a session of its own, with the
    environment a deployment gives it (``agent_environment``)."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        path = workdir / "tierwatch.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [
            require(TIERWATCH, "tierwatch (make run)"),
            "run",
            "--config",
            str(path),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        super().__init__("tierwatch", command, workdir, agent_environment())

    def ready(self) -> bool:
        return answers(f"http://127.0.0.1:{self.port}/readyz")

    def metrics_text(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        if status != 200:
            raise BenchmarkError(f"/metrics answered {status}")
        return body.decode()


@contextmanager
def running_agent(workdir: Path, config: dict[str, Any]) -> Iterator[Agent]:
    agent = Agent(workdir, config)
    with running(agent, agent.ready):
        yield agent


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


def process_environment(pid: int) -> dict[str, str]:
    """The environment the process started with (/proc/PID/environ)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode(errors="replace").partition("=")[::2] for entry in entries if entry)


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


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_fields(header: Sequence[str], cells: Sequence[str]) -> None:
    """One row as ``name=value`` pairs on a line of its own, printed at once (progress while running)."""
    print("  ".join(f"{name}={cell}" for name, cell in zip(header, cells, strict=True)), flush=True)


def print_checks(checks: Sequence[tuple[str, bool]]) -> None:
    """Each check as PASS or FAIL with its text, then the verdict: PASS only if every check passed."""
    for text, passed in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {text}")
    print(f"\n{'PASS' if all(passed for _, passed in checks) else 'FAIL'}")


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"
