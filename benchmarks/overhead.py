"""Overhead of the tierwatch agent next to the exporter it would replace, on the same host, in one run.

    .venv/bin/python benchmarks/overhead.py {host,postgres,redis} [--seconds 60]

Both processes are started on free loopback ports and scraped once a second, interleaved, for the
same wall time. After a warm-up, the run measures CPU (the kernel's per-process CPU clock) per agent
cycle and per peer scrape, resident memory at the end and at its peak, and the client-side latency of GET
/metrics. Each mode is judged by the targets of its issue (host 3, postgres 4, redis 5); the script
reports PASS/FAIL but exits 0 either way, and 2 only when something could not run.

A mode is a function returning a ``Mode``: the agent's config, the collector whose cycles are counted,
and the peer's command line. Adding ``postgres`` or ``redis`` is one such function and a MODES entry;
a mode whose two sides watch a server (postgres, redis) also names it as a ``Service``, which is started
before them and stopped after them. A mode may also charge each side the CPU the server spends serving
it (postgres: the backends of each side's connections), which is then reported and compared too.

The agent runs as deployments start it: with tests/support.py's DEPLOYED_ENVIRONMENT (two malloc
arenas; PYTHONOPTIMIZE=2 from the bytecode cache `make` fills), on the interpreter of the venv `make`
built, as the Dockerfile, the Helm chart and `make run` start it.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import psycopg
from cpuclock import cpu_seconds
from detection_stack import BenchmarkError, agent_environment

from tests.support import DEPLOYED_ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / ".venv" / "bin" / "tierwatch"
WARM_UP_SECONDS = 5
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
EXIT_OK, EXIT_CANNOT_RUN = 0, 2
# Prometheus asks for the text format; gzip is left out so neither side is charged for compressing.
SCRAPE_HEADERS = {"Accept": "text/plain;version=0.0.4", "User-Agent": "tierwatch-overhead-benchmark"}
LAST_SUCCESS = "tierwatch_collector_last_success_timestamp_seconds"


@dataclass(frozen=True)
class Service:
    """A server both sides watch; its CPU is charged to neither of them."""

    name: str
    command: tuple[str, ...]
    port: int  # ready once it accepts connections here
    package: str


class ServerCost(Protocol):
    """CPU the watched server spends on each side's queries, accumulated over the measured window."""

    def start(self) -> None: ...

    def observe(self) -> None: ...

    def cpu_seconds(self, side: str) -> float: ...

    def backends(self, side: str) -> int: ...


@dataclass(frozen=True)
class Mode:
    agent_config: dict[str, object]
    collector: str  # whose cycles are counted in the agent's self-metrics
    peer_name: str
    peer_command: Callable[[int], list[str]]  # port -> argv
    peer_package: str  # the Debian package that provides the peer, named when it is missing
    issue: int  # whose targets the run is judged by
    targets: tuple[str, ...]  # keys of TARGETS
    peer_env: dict[str, str] = field(default_factory=dict)
    interval: float = 1.0  # must match agent_config's; cycles are counted in units of it
    service: Service | None = None
    server_cost: ServerCost | None = None


def host_mode() -> Mode:
    # Only the host collector: the agent's counterpart of node_exporter's default collectors.
    return Mode(
        agent_config={"interval": 1, "host": {}},
        collector="host",
        peer_name="node_exporter",
        peer_command=lambda port: [
            "/usr/bin/prometheus-node-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        peer_package="prometheus-node-exporter",
        issue=3,
        targets=("cpu_ratio", "rss_ratio", "agent_p99_ms"),
    )


def redis_mode() -> Mode:
    # Only the redis collector, against a Redis of its own that redis_exporter scrapes too.
    (port,) = free_ports(1)
    url = f"redis://127.0.0.1:{port}"
    return Mode(
        agent_config={"interval": 1, "host": {"enabled": False}, "redis": [{"name": "bench", "url": url}]},
        collector="redis",
        peer_name="redis_exporter",
        peer_command=lambda peer_port: [
            "/usr/bin/prometheus-redis-exporter",
            f"-redis.addr={url}",
            f"-web.listen-address=127.0.0.1:{peer_port}",
        ],
        peer_package="prometheus-redis-exporter",
        issue=5,
        targets=("cpu_ratio",),
        service=Service(
            name="redis-server",
            command=("/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""),
            port=port,
            package="redis-server",
        ),
    )


PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_EXPORTER = "postgres_exporter"


def postgres_mode() -> Mode:
    # Only the postgres collector, against a throwaway cluster that postgres_exporter watches too. Both
    # connect as the superuser over loopback (trust): the comparison is about cost, not privileges.
    (port,) = free_ports(1)
    root = Path(tempfile.mkdtemp(prefix="tierwatch-bench-pg-"))
    atexit.register(shutil.rmtree, root, True)
    as_owner: tuple[str, ...] = ()
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres", "postgres")
        as_owner = ("runuser", "-u", "postgres", "--")
    script = (
        f'{PG_BIN}/initdb -D "$1" -U postgres -A trust --no-sync >/dev/null && '
        f'exec {PG_BIN}/postgres -D "$1" -k "$1" -p {port} -c listen_addresses=127.0.0.1'
    )
    dsn = f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
    peer_dsn = (
        f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable&application_name={PG_EXPORTER}"
    )
    return Mode(
        agent_config={"interval": 1, "host": {"enabled": False}, "postgres": [{"name": "bench", "dsn": dsn}]},
        collector="postgres",
        peer_name=PG_EXPORTER,
        peer_command=lambda peer_port: [
            "/usr/bin/prometheus-postgres-exporter",
            f"--web.listen-address=127.0.0.1:{peer_port}",
        ],
        peer_package="prometheus-postgres-exporter",
        issue=4,
        targets=("cpu_ratio", "server_cpu_ratio"),
        peer_env={"DATA_SOURCE_NAME": peer_dsn},
        service=Service(
            name="postgres",
            command=(*as_owner, "sh", "-c", script, "sh", str(root / "data")),
            port=port,
            package="postgresql",
        ),
        server_cost=PostgresBackends(dsn, {"tierwatch": "tierwatch", PG_EXPORTER: PG_EXPORTER}),
    )


class PostgresBackends:
    """CPU time of the backends serving each side, found in pg_stat_activity by application_name and
    read from /proc. A backend first seen after the window began is new, so all its CPU counts; one
    that exits between two looks loses its last second."""

    SQL = "SELECT application_name, pid FROM pg_stat_activity WHERE application_name = ANY(%s)"

    def __init__(self, dsn: str, applications: dict[str, str]) -> None:
        self._dsn = f"{dsn} application_name=overhead-benchmark"
        self._side_of = {application: side for side, application in applications.items()}
        self._connection: psycopg.Connection | None = None
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._side: dict[int, str] = {}

    def start(self) -> None:
        self._look(started=True)

    def observe(self) -> None:
        self._look(started=False)

    def _look(self, started: bool) -> None:
        if self._connection is None:
            self._connection = psycopg.connect(self._dsn, autocommit=True)
        for application, pid in self._connection.execute(self.SQL, [list(self._side_of)]).fetchall():
            try:
                cpu = cpu_seconds(pid)
            except OSError:
                continue  # exited meanwhile
            self._first.setdefault(pid, cpu if started else 0.0)
            self._last[pid] = cpu
            self._side[pid] = self._side_of[application]

    def cpu_seconds(self, side: str) -> float:
        return sum(self._last[pid] - self._first[pid] for pid, owner in self._side.items() if owner == side)

    def backends(self, side: str) -> int:
        return sum(1 for owner in self._side.values() if owner == side)


MODES: dict[str, Callable[[], Mode]] = {"host": host_mode, "postgres": postgres_mode, "redis": redis_mode}

# The issues' bounds: CPU and RSS as agent/peer ratios, the agent's /metrics p99 in milliseconds, and
# the server's CPU for the agent's queries against the peer's. Each mode is judged by its issue's.
TARGETS = {"cpu_ratio": 0.5, "rss_ratio": 1.5, "agent_p99_ms": 5.0, "server_cpu_ratio": 1.0}


# --- processes -----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Loopback ports nobody listens on. All sockets stay open until every port is picked, so the
    kernel cannot hand out the same port twice; the processes bind them a moment after they close."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start(
    argv: list[str], log: IO[bytes], missing_hint: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    if shutil.which(argv[0]) is None:
        raise BenchmarkError(f"{argv[0]} not found; {missing_hint}")
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def memory_kib(pid: int) -> dict[str, int]:
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in wanted:
            values[key] = int(rest.split()[0])
    return values


# --- scraping ------------------------------------------------------------------------------------


class Scraper:
    """GET /metrics over one kept-alive connection, as Prometheus does, timed from the client side."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.page_bytes = 0
        self._connection: http.client.HTTPConnection | None = None

    def get(self) -> tuple[float, bytes]:
        began = time.perf_counter()
        try:
            body = self._request()
        except (OSError, http.client.HTTPException):
            # A server that closed the kept-alive connection gets one fresh try; the reconnect is timed.
            self.close()
            body = self._request()
        return time.perf_counter() - began, body

    def scrape(self, record: bool) -> bytes:
        elapsed, body = self.get()
        if record:
            self.latencies.append(elapsed)
            self.page_bytes = len(body)
        return body

    def _request(self) -> bytes:
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self._connection.request("GET", "/metrics", headers=SCRAPE_HEADERS)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchmarkError(f"port {self.port}: /metrics answered {response.status}")
        return body

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def wait_until_accepting(service: Service, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"{service.name} exited with {process.returncode} before accepting")
        try:
            socket.create_connection(("127.0.0.1", service.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BenchmarkError(f"{service.name} did not accept connections within {START_TIMEOUT:g} s")


def wait_until_serving(scraper: Scraper, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"{name} exited with {process.returncode} before serving /metrics")
        try:
            scraper.get()
            return
        except (OSError, http.client.HTTPException, BenchmarkError):
            scraper.close()
            time.sleep(0.1)
    raise BenchmarkError(f"{name} did not serve /metrics within {START_TIMEOUT:g} s")


def last_success(body: bytes, collector: str) -> float | None:
    """The agent's last successful cycle of ``collector``, from its own self-metrics."""
    marker = f'collector="{collector}"'
    for line in body.decode().splitlines():
        if line.startswith(LAST_SUCCESS + "{") and marker in line:
            return float(line.rpartition(" ")[2])
    return None


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    process: subprocess.Popen[bytes]
    scraper: Scraper
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rss_max_kib: int = 0
    memory_end: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float | None = None
    server_backends: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(f"{self.name} exited with {self.process.returncode} during the run")


@dataclass
class Window:
    seconds: float
    agent_cycles: int
    peer_scrapes: int


def scrape_each_second(
    agent: Side,
    peer: Side,
    clock: float,
    rounds: int,
    record: bool,
    *,
    each_round: Callable[[], None] = lambda: None,
) -> bytes:
    """Scrapes both at ``clock`` + 1 s, + 2 s, ...; returns the agent's last page.

    Each round sleeps first and scrapes last, so a caller reading CPU right after this returns has
    every recorded scrape inside its window.
    """
    agent_page = b""
    for second in range(1, rounds + 1):
        sleep_until(clock + second)
        # Alternate who goes first, so neither side always scrapes into the other's just-finished burst.
        order = (agent, peer) if second % 2 == 0 else (peer, agent)
        for side in order:
            side.check_alive()
            body = side.scraper.scrape(record)
            if side is agent:
                agent_page = body
            track_rss(side)
        each_round()
    return agent_page


def track_rss(side: Side) -> None:
    side.rss_max_kib = max(side.rss_max_kib, memory_kib(side.pid).get("VmRSS", 0))


def sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def cycles_between(first: bytes, last: bytes, mode: Mode, seconds: float) -> int:
    """Cycles the agent finished in the window: from its last-success timestamps, else the nominal count."""
    start, end = last_success(first, mode.collector), last_success(last, mode.collector)
    if start is None or end is None or end <= start:
        return max(1, round(seconds / mode.interval))
    return max(1, round((end - start) / mode.interval))


def measure(agent: Side, peer: Side, mode: Mode, seconds: int) -> Window:
    clock = time.monotonic()
    first_page = scrape_each_second(agent, peer, clock, WARM_UP_SECONDS, record=False)
    agent.rss_max_kib = peer.rss_max_kib = 0
    server = mode.server_cost
    if server is not None:
        server.start()
    began = time.monotonic()
    agent.cpu_start, peer.cpu_start = cpu_seconds(agent.pid), cpu_seconds(peer.pid)
    each_round = server.observe if server is not None else lambda: None
    last_page = scrape_each_second(
        agent, peer, clock + WARM_UP_SECONDS, seconds, record=True, each_round=each_round
    )
    agent.cpu_end, peer.cpu_end = cpu_seconds(agent.pid), cpu_seconds(peer.pid)
    elapsed = time.monotonic() - began
    for side in (agent, peer):
        side.memory_end = memory_kib(side.pid)
        if server is not None:
            side.server_cpu_s = server.cpu_seconds(side.name)
            side.server_backends = server.backends(side.name)
    return Window(elapsed, cycles_between(first_page, last_page, mode, elapsed), seconds)


# --- report --------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    # Nearest rank, no interpolation: with 60 samples p99 is the second slowest scrape.
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def figures(side: Side, per: int) -> dict[str, float]:
    latencies = side.scraper.latencies
    return {
        "cpu_ms": (side.cpu_end - side.cpu_start) * 1000 / per,
        "cpu_total_s": side.cpu_end - side.cpu_start,
        "rss_mib": side.memory_end.get("VmRSS", 0) / 1024,
        "rss_window_max_mib": side.rss_max_kib / 1024,
        "rss_peak_mib": side.memory_end.get("VmHWM", 0) / 1024,
        "rss_anon_mib": side.memory_end.get("RssAnon", 0) / 1024,
        "rss_file_mib": side.memory_end.get("RssFile", 0) / 1024,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "page_kib": side.scraper.page_bytes / 1024,
    } | server_figures(side, per)


def server_figures(side: Side, per: int) -> dict[str, float]:
    if side.server_cpu_s is None:
        return {}
    return {"server_cpu_ms": side.server_cpu_s * 1000 / per, "server_backends": side.server_backends}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(mode: Mode, window: Window, agent: dict[str, float], peer: dict[str, float]) -> str:
    rows = [
        ("CPU ms per agent cycle / peer scrape", "cpu_ms", "{:.2f}"),
        ("CPU s over the window", "cpu_total_s", "{:.2f}"),
        ("RSS at end, MiB", "rss_mib", "{:.1f}"),
        ("RSS max in window, MiB", "rss_window_max_mib", "{:.1f}"),
        ("RSS peak (VmHWM), MiB", "rss_peak_mib", "{:.1f}"),
        # The split shows how much is shared libraries (file-backed) rather than the process's own heap.
        ("  of the end RSS: anonymous, MiB", "rss_anon_mib", "{:.1f}"),
        ("  of the end RSS: file-backed, MiB", "rss_file_mib", "{:.1f}"),
        ("/metrics p50, ms", "p50_ms", "{:.2f}"),
        ("/metrics p99, ms", "p99_ms", "{:.2f}"),
        ("/metrics max, ms", "max_ms", "{:.2f}"),
        ("/metrics page size, KiB", "page_kib", "{:.1f}"),
        ("server CPU ms per cycle / scrape", "server_cpu_ms", "{:.2f}"),
        ("server backends seen", "server_backends", "{:.0f}"),
    ]
    deployed = " ".join(f"{key}={value}" for key, value in DEPLOYED_ENVIRONMENT.items())
    lines = [
        f"window {window.seconds:.1f} s after {WARM_UP_SECONDS:g} s warm-up; agent cycles "
        f"{window.agent_cycles}, {mode.peer_name} scrapes {window.peer_scrapes}",
        f"agent run as deployed: {deployed}, Python {agent_python_version()}",
        "",
        f"{'':40}{'tierwatch':>12}{mode.peer_name:>22}{'ratio':>9}",
    ]
    for label, key, fmt in rows:
        if key not in agent:
            continue  # a figure this mode does not measure
        ratio = agent[key] / peer[key] if peer[key] else float("nan")
        lines.append(f"{label:40}{fmt.format(agent[key]):>12}{fmt.format(peer[key]):>22}{ratio:>8.2f}x")
    lines += ["", f"targets (issue {mode.issue}):", *target_lines(agent, peer, mode)]
    return "\n".join(lines)


# A target's key -> what it bounds, the figure it reads, and whether that is taken against the peer's.
TARGET_FIGURES = {
    "cpu_ratio": ("CPU", "cpu_ms", True),
    "rss_ratio": ("RSS", "rss_mib", True),
    "agent_p99_ms": ("/metrics p99", "p99_ms", False),
    "server_cpu_ratio": ("server CPU", "server_cpu_ms", True),
}


def target_lines(agent: dict[str, float], peer: dict[str, float], mode: Mode) -> list[str]:
    lines = []
    for key in mode.targets:
        what, figure, relative = TARGET_FIGURES[key]
        bound = TARGETS[key]
        if relative:
            value = agent[figure] / peer[figure] if peer[figure] else float("inf")
            bounded, shown = f"{what} <= {bound:g}x {mode.peer_name}'s", f"{value:6.2f}x"
        else:
            value = agent[figure]
            bounded, shown = f"{what} <= {bound:g} ms", f"{value:6.2f} ms"
        lines.append(f"  {bounded:38}{shown:>10}  {verdict(value <= bound)}")
    return lines


# --- main ----------------------------------------------------------------------------------------


def agent_python_version() -> str:
    interpreter = AGENT.parent / "python"
    return subprocess.run(
        [str(interpreter), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def start_service(service: Service, log: IO[bytes]) -> subprocess.Popen[bytes]:
    process = start(list(service.command), log, f"install it: apt-get install -y {service.package}")
    try:
        wait_until_accepting(service, process)
    except BenchmarkError:
        stop(process)
        raise
    return process


def run(mode: Mode, seconds: int, workdir: Path) -> str:
    config = workdir / "agent.yaml"
    config.write_text(json.dumps(mode.agent_config))  # JSON is YAML; no YAML writer needed
    with (
        open(workdir / "agent.log", "wb") as agent_log,
        open(workdir / "peer.log", "wb") as peer_log,
        open(workdir / "service.log", "wb") as service_log,
    ):
        # The service holds its port before the sides' ports are picked, so none can be handed out twice.
        service = start_service(mode.service, service_log) if mode.service else None
        sides: list[Side] = []
        try:
            agent_port, peer_port = free_ports(2)
            agent_argv = [str(AGENT), "run", "--config", str(config), "--listen", f"127.0.0.1:{agent_port}"]
            agent_process = start(agent_argv, agent_log, "run `make bench` first", agent_environment())
            sides.append(Side("tierwatch", agent_process, Scraper(agent_port)))
            peer_hint = f"install it: apt-get install -y {mode.peer_package}"
            peer_process = start(mode.peer_command(peer_port), peer_log, peer_hint, mode.peer_env)
            sides.append(Side(mode.peer_name, peer_process, Scraper(peer_port)))
            agent, peer = sides
            for side in sides:
                wait_until_serving(side.scraper, side.process, side.name)
            window = measure(agent, peer, mode, seconds)
        finally:
            for side in sides:
                side.scraper.close()
                stop(side.process)
            if service is not None:
                stop(service)
    return report(mode, window, figures(agent, window.agent_cycles), figures(peer, window.peer_scrapes))


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--seconds", type=int, default=60, help="measured window (default 60)")
    args = parser.parse_args()
    if args.seconds < 2:
        parser.error("--seconds must be at least 2")
    with tempfile.TemporaryDirectory(prefix="tierwatch-bench-") as workdir:
        try:
            print(run(MODES[args.mode](), args.seconds, Path(workdir)))
        except (BenchmarkError, OSError, http.client.HTTPException) as error:
            print(f"overhead: could not run: {error}", file=sys.stderr)
            for name in ("agent.log", "peer.log", "service.log"):
                if text := tail(Path(workdir) / name):
                    print(f"--- {name} (tail) ---\n{text}", file=sys.stderr)
            return EXIT_CANNOT_RUN
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
