"""Soak: every collector at a 1 s interval for N minutes against 10 Redis and 5 PostgreSQL targets;
after a warm-up the agent's resources must stay flat.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--warm-up 60] [--every 30] [--window 30]

Starts 10 redis-server processes, one PostgreSQL 15 cluster with 5 databases (a target per database),
PgBouncer in front of it, the recorded Kubernetes API stand-in, an app serving its own /metrics under a
trickle of traffic, and Alertmanager; then `tierwatch run` with all of them plus the host collector
(this machine's /proc) at interval 1 s, for --minutes in all, in the environment its deployments give
it (tests/support.py's DEPLOYED_ENVIRONMENT, as the Dockerfile and the Helm chart set it; printed at
the start). After the
warm-up it samples every --every seconds: RSS, threads (/proc/PID/status), open files and the sockets
among them (/proc/PID/fd), the agent's connections as the servers count them (tierwatch sessions in
pg_stat_activity, CLIENT LIST name=tierwatch on every Redis), the series on /metrics, CPU, and how
many targets are up.

The rule window is --window (30 s), not the default 900 s: the store keeps up to 90 samples per target
over the window, so at the default its rings would still be filling, by design and bounded, for 15
minutes; a soak measures the steady state after they are full.

Target (issue 9): after the warm-up RSS grows <= 2 MiB, and threads, open files, connections and the
series count stay flat. Prints the table and PASS/FAIL, exits 0 either way; 2 when something could
not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from cpuclock import cpu_seconds
from detection_stack import alertmanager_server, run_benchmark
from fleet import (
    MONITOR_NAME,
    OBSERVER_NAME,
    Agent,
    app_with_traffic,
    database_names,
    database_trickle,
    mib,
    open_files,
    pgbouncer,
    postgres_cluster,
    postgres_targets,
    print_checks,
    print_fields,
    print_table,
    process_environment,
    redis_fleet,
    redis_targets,
    rss_bytes,
    running_agent,
    self_metrics,
    series_keys,
    thread_count,
)

from tests.fixtures.kube_api import KubeApiServer
from tests.fixtures.pgbouncer_server import STATS_USER
from tests.fixtures.postgres_server import PostgresServer, owned_temp_dir
from tests.support import DEPLOYED_ENVIRONMENT

REDIS_TARGETS = 5 * 2
POSTGRES_TARGETS = 5
INTERVAL = 1.0
RSS_GROWTH_LIMIT = 2 * 2**20
# An open file or two come and go within a cycle (the app's page is fetched over a fresh connection
# each cycle); more than that, or a count that ends higher than it started, is not flat.
FD_JITTER = 2
APP_REQUESTS_PER_SECOND = 10.0
DATABASE_READS_PER_SECOND = 4.0
ALERT_SERIES = ("tierwatch_alert{", "tierwatch_signal_value{")
# A few series are absent whenever their denominator is zero in a cycle, by design (the lock-wait share
# of DB load when no session was active at the sample); a label leak adds series every cycle and passes
# this within seconds at a 1 s interval.
SERIES_FLICKER = 10


@dataclass(frozen=True)
class Reading:
    elapsed: float  # seconds since the agent started
    rss: int
    threads: int
    fds: int
    sockets: int
    postgres_sessions: int
    redis_clients: int
    series: int  # tier and self series: what grows if labels leak
    new_series: int  # of those, label sets no earlier read had shown
    alert_series: int  # tierwatch_alert and tierwatch_signal_value: alert state, which may change
    cpu: float  # the agent's process CPU clock so far, seconds
    up: int
    targets: int


class Observer:
    """The benchmark's own connections, opened once, that count the agent's as each server sees them."""

    def __init__(self, postgres: PostgresServer, redis_servers: list[Any]) -> None:
        self._postgres = postgres.connect(application_name=OBSERVER_NAME)
        self._redis: list[redis.Redis] = [
            server.client(client_name=OBSERVER_NAME) for server in redis_servers
        ]

    def postgres_sessions(self) -> int:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        row = self._postgres.execute(sql, [MONITOR_NAME]).fetchone()
        return int(row[0]) if row else 0

    def redis_clients(self) -> int:
        return sum(
            1 for client in self._redis for entry in client.client_list() if entry.get("name") == MONITOR_NAME
        )

    def close(self) -> None:
        self._postgres.close()
        for client in self._redis:
            client.close()


def read(agent: Agent, observer: Observer, started: float, seen: set[str]) -> Reading:
    """One sample; ``seen`` collects every series label set read so far."""
    # /proc first: the agent serves each scrape on a thread of its own, with a socket of its own.
    elapsed = time.monotonic() - started
    rss, threads, cpu = rss_bytes(agent.pid), thread_count(agent.pid), cpu_seconds(agent.pid)
    fds, sockets = open_files(agent.pid)
    text = agent.metrics_text()
    statuses = self_metrics(text)
    series = series_keys(text, leave_out=ALERT_SERIES)
    new = series - seen
    seen |= series
    return Reading(
        elapsed=elapsed,
        rss=rss,
        threads=threads,
        fds=fds,
        sockets=sockets,
        postgres_sessions=observer.postgres_sessions(),
        redis_clients=observer.redis_clients(),
        series=len(series),
        new_series=len(new),
        alert_series=len(series_keys(text)) - len(series),
        cpu=cpu,
        up=sum(1 for status in statuses.values() if status.get("up") == 1),
        targets=len(statuses),
    )


def soak(args: argparse.Namespace) -> list[Reading]:
    workdir = owned_temp_dir("tierwatch-soak-")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        redis_servers = stack.enter_context(redis_fleet(workdir / "redis", REDIS_TARGETS))
        postgres = stack.enter_context(postgres_cluster(POSTGRES_TARGETS))
        names = database_names(POSTGRES_TARGETS)
        stack.enter_context(database_trickle(postgres, names, DATABASE_READS_PER_SECOND))
        pooler = stack.enter_context(pgbouncer(postgres))
        kube = KubeApiServer()
        stack.callback(kube.stop)
        app = stack.enter_context(app_with_traffic(APP_REQUESTS_PER_SECOND))
        am = stack.enter_context(alertmanager_server(workdir / "alertmanager"))
        pooler_password = workdir / "pgbouncer-password"
        pooler_password.write_text(pooler.passwords[STATS_USER])
        config = {
            "interval": INTERVAL,
            "window": args.window,
            "postgres": postgres_targets(workdir, postgres, POSTGRES_TARGETS),
            "pgbouncer": [{"name": "pool", "dsn": pooler.dsn(), "password_file": str(pooler_password)}],
            "redis": redis_targets(redis_servers),
            "kubernetes": kube.agent_section(workdir),
            "app": [app.agent_entry("web", pool_size=20, hpa="web")],
            "alertmanager": {"urls": [am.url]},
        }
        print(
            f"{REDIS_TARGETS} Redis, {POSTGRES_TARGETS} PostgreSQL databases, PgBouncer, Kubernetes "
            f"stand-in, app, Alertmanager, host; interval {INTERVAL:g} s, window {args.window:g} s; "
            f"{args.minutes:g} min in all, warm-up {args.warm_up:g} s, a sample every {args.every:g} s",
            flush=True,
        )
        agent = stack.enter_context(running_agent(workdir / "agent", config))
        # The setting decides how RSS grows (glibc's default: an arena per allocating thread, up to 8 per
        # CPU); the agent runs with it as the Dockerfile and the Helm chart set it. Read back from the
        # agent's own environment.
        environment = process_environment(agent.pid)
        deployed = " ".join(f"{key}={environment.get(key, 'unset')}" for key in DEPLOYED_ENVIRONMENT)
        print(f"tierwatch runs as deployed (Dockerfile ENV, Helm chart env): {deployed}", flush=True)
        started = time.monotonic()
        observer = Observer(postgres, redis_servers)
        stack.callback(observer.close)
        # Once during the warm-up: the observer's own commands (CLIENT LIST) add their series to every
        # Redis's command statistics, which must be there before the first sample, not after it.
        seen: set[str] = set()
        read(agent, observer, started, seen)
        readings = []
        next_at = started + args.warm_up
        end = started + args.minutes * 60
        while next_at <= end + 0.5:
            while time.monotonic() < next_at:
                agent.check_alive()
                time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
            reading = read(agent, observer, started, seen)
            readings.append(reading)
            show(reading, readings[-2] if len(readings) > 1 else None)
            next_at += args.every
        return readings


def cpu_share(reading: Reading, previous: Reading | None) -> str:
    if previous is None:
        return "-"
    return f"{(reading.cpu - previous.cpu) / (reading.elapsed - previous.elapsed):.1%}"


HEADER = (
    "t (s)",
    "RSS MiB",
    "threads",
    "fds",
    "sockets",
    "pg sessions",
    "redis clients",
    "series",
    "new",
    "alert series",
    "CPU",
    "up",
)


def row(reading: Reading, previous: Reading | None) -> list[str]:
    return [
        f"{reading.elapsed:.0f}",
        mib(reading.rss),
        str(reading.threads),
        str(reading.fds),
        str(reading.sockets),
        str(reading.postgres_sessions),
        str(reading.redis_clients),
        str(reading.series),
        str(reading.new_series),
        str(reading.alert_series),
        cpu_share(reading, previous),
        f"{reading.up}/{reading.targets}",
    ]


def show(reading: Reading, previous: Reading | None) -> None:
    print_fields(HEADER, row(reading, previous))


def flat(values: list[int], jitter: int = 0) -> bool:
    return max(values) - min(values) <= jitter and values[-1] <= values[0] + jitter


def report(readings: list[Reading]) -> None:
    print()
    print_table(HEADER, [row(r, readings[i - 1] if i else None) for i, r in enumerate(readings)])
    if len(readings) < 2:
        print("\nFAIL: fewer than two samples after the warm-up; run longer")
        return
    first, last = readings[0], readings[-1]
    growth = last.rss - first.rss
    new_series = sum(r.new_series for r in readings[1:])
    checks = [
        (
            f"RSS after warm-up {mib(first.rss)} -> {mib(last.rss)} MiB (growth {growth / 2**20:+.2f} MiB, "
            f"peak {mib(max(r.rss for r in readings))}), limit +2 MiB",
            growth <= RSS_GROWTH_LIMIT,
        ),
        (f"threads {sorted({r.threads for r in readings})} flat", flat([r.threads for r in readings])),
        (
            f"open files {min(r.fds for r in readings)}..{max(r.fds for r in readings)} flat (+-{FD_JITTER})",
            flat([r.fds for r in readings], FD_JITTER),
        ),
        (
            f"PostgreSQL sessions {sorted({r.postgres_sessions for r in readings})}, one per target "
            f"({POSTGRES_TARGETS})",
            all(r.postgres_sessions == POSTGRES_TARGETS for r in readings),
        ),
        (
            f"Redis clients {sorted({r.redis_clients for r in readings})}, one per target ({REDIS_TARGETS})",
            all(r.redis_clients == REDIS_TARGETS for r in readings),
        ),
        (
            f"series {min(r.series for r in readings)}..{max(r.series for r in readings)}, "
            f"{new_series} label sets new after the first sample, both within {SERIES_FLICKER}",
            flat([r.series for r in readings], SERIES_FLICKER) and new_series <= SERIES_FLICKER,
        ),
        ("every target up at every sample", all(r.up == r.targets for r in readings)),
    ]
    span = last.elapsed - first.elapsed
    print(
        f"\nover {span:.0f} s after a {first.elapsed:.0f} s warm-up; CPU {(last.cpu - first.cpu) / span:.1%}"
    )
    print_checks(checks)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="how long the agent runs, warm-up included"
    )
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds before the first sample")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--window", type=float, default=30.0, help="the agent's rule window (seconds)")
    args = parser.parse_args(argv)
    if args.warm_up <= args.window:
        parser.error("--warm-up must exceed --window: the store's rings fill over one window")
    if args.minutes * 60 < args.warm_up + args.every:
        parser.error("--minutes leaves no room for two samples after the warm-up")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(lambda: soak(args), report, (psycopg.Error, redis.RedisError))


if __name__ == "__main__":
    sys.exit(main())
