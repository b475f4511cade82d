"""Time to detection: how long after a database condition starts the page reaches Alertmanager.

    .venv/bin/python benchmarks/detection.py [--scenario db-bound|connections|both] [--timeout SECONDS]

Each scenario starts a fresh PostgreSQL 15 (max_connections 100), a private Alertmanager with a
webhook receiver per monitoring setup, and the setups themselves, then causes the condition and
measures with time.monotonic from the moment the load is in place to the moment the webhook receives
the firing alert:

- tierwatch with default settings (interval 5 s, the rules' default `for`), configured with nothing
  but the database's DSN and the Alertmanager;
- the common setup users run today: Prometheus scraping postgres_exporter every 15 s, evaluating every
  15 s, with the community rule PostgresqlTooManyConnections (`for: 2m`).

Scenarios: `connections` holds 92 idle connections of 100; `db-bound` runs CPU-heavy queries from
2 x CPU-count sessions. Target from issue 7: tierwatch pages within 60 s and names the cause. The
script prints PASS/FAIL but exits 0 either way; 2 when something could not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from detection_stack import (
    TARGET,
    Arrival,
    BenchmarkError,
    Service,
    StampedNotifications,
    alertmanager,
    common_setup,
    run_benchmark,
    tierwatch,
)

from tests.fixtures.postgres_server import (
    APP_ROLE,
    MAX_CONNECTIONS,
    MONITOR_ROLE,
    PG_BIN,
    PostgresServer,
    owned_temp_dir,
)
from tests.support import free_port

TARGET_SECONDS = 60.0
DEFAULT_TIMEOUT = 240.0  # Prometheus needs its 2 min `for` plus up to a scrape and an evaluation
SETTLE_SECONDS = 10.0
HELD_CONNECTIONS = 92
BURN_SQL = "SELECT count(*) FROM generate_series(1, 3000000)"
MAX_BURN_SESSIONS = 32  # 2 x CPU count, but never near max_connections on a big machine
NO_RULE = (
    "The common setup has no rule for a CPU-bound database: postgres_exporter exports no CPU figure "
    "of the database server, and none of the community's PostgreSQL rules looks at one. The community "
    "high-CPU rule (HostHighCpuLoad) reads node_exporter, which this setup does not run, and even there "
    "it would say 'host CPU high', not which tier is the bottleneck. Reported as 'no rule'."
)

Load = Callable[[PostgresServer], AbstractContextManager[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    condition: str
    load: Load
    tierwatch_alert: str
    cause_word: str  # the summary must say this for the alert to name the cause
    common_alert: str | None  # None: the common setup has no rule that could page


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    timeout: float
    start: float  # time.monotonic() when the condition was in place
    tierwatch: Arrival | None
    common: Arrival | None
    tierwatch_others: frozenset[str]  # other alert names tierwatch sent after the condition began

    @property
    def tierwatch_seconds(self) -> float | None:
        return None if self.tierwatch is None else self.tierwatch.at - self.start

    @property
    def common_seconds(self) -> float | None:
        return None if self.common is None else self.common.at - self.start

    def names_cause(self) -> bool:
        if self.tierwatch is None:
            return False
        annotations = self.tierwatch.alert["annotations"]
        summary = annotations.get("summary", "")
        # A competing root cause named at the same time would leave the on-call engineer guessing.
        wrong = self.tierwatch_others & {scenario.tierwatch_alert for scenario in SCENARIOS.values()}
        return (
            self.scenario.cause_word.lower() in summary.lower()
            and TARGET in summary
            and bool(annotations.get("remediation"))
            and not wrong
        )

    def passed(self) -> bool:
        return (
            self.tierwatch_seconds is not None
            and self.tierwatch_seconds <= TARGET_SECONDS
            and self.names_cause()
        )


def log(scenario: str, message: str) -> None:
    print(f"[{scenario}] {message}", flush=True)


@contextmanager
def postgres(workdir: Path) -> Iterator[PostgresServer]:
    """The fixture's cluster (roles tierwatch with pg_monitor, app for the load), in ``workdir``."""
    if not (PG_BIN / "postgres").exists():
        raise BenchmarkError(f"{PG_BIN / 'postgres'} is missing (Debian package postgresql-15)")
    server = PostgresServer(workdir, free_port())
    try:
        server.initialize()
        server.start()
        server.create_roles()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            try:
                server.stop("immediate")
            except RuntimeError as error:  # Ctrl-C may have stopped it already
                print(f"stopping PostgreSQL: {error}", file=sys.stderr)


@contextmanager
def held_connections(server: PostgresServer) -> Iterator[None]:
    with server.held(HELD_CONNECTIONS, "bench-held"):
        yield


def burn_sessions() -> int:
    return min(2 * (os.cpu_count() or 1), MAX_BURN_SESSIONS)


@contextmanager
def cpu_heavy_queries(server: PostgresServer) -> Iterator[None]:
    """Sessions running BURN_SQL back to back; yields once every one is about to run its first query."""
    count = burn_sessions()
    stop = threading.Event()
    started = threading.Barrier(count + 1, timeout=30)
    with ExitStack() as connections:
        sessions = [
            connections.enter_context(server.connect(APP_ROLE, application_name="bench-cpu-load"))
            for _ in range(count)
        ]
        threads = [threading.Thread(target=_burn, args=(s, started, stop), daemon=True) for s in sessions]
        for thread in threads:
            thread.start()
        try:
            started.wait()
            yield
        finally:
            stop.set()
            for session in sessions:
                session.cancel()  # the query under way would otherwise run to its end
            for thread in threads:
                thread.join(15)


def _burn(session: psycopg.Connection, started: threading.Barrier, stop: threading.Event) -> None:
    try:
        started.wait()
        while not stop.is_set():
            session.execute(BURN_SQL)
    except (psycopg.Error, threading.BrokenBarrierError):
        pass  # cancelled at the end, or the benchmark gave up starting


SCENARIOS = {
    "connections": Scenario(
        name="connections",
        condition=f"{HELD_CONNECTIONS} idle connections held of max_connections={MAX_CONNECTIONS}",
        load=held_connections,
        tierwatch_alert="ConnectionPoolExhaustion",
        cause_word="connections",
        common_alert="PostgresqlTooManyConnections",
    ),
    "db-bound": Scenario(
        name="db-bound",
        condition=f"{burn_sessions()} sessions running `{BURN_SQL}` in a loop on {os.cpu_count()} vCPUs",
        load=cpu_heavy_queries,
        tierwatch_alert="DatabaseBound",
        cause_word="CPU-bound",
        common_alert=None,
    ),
}


def exporter_dsn(server: PostgresServer) -> str:
    password = server.passwords[MONITOR_ROLE]  # URL-safe: token_urlsafe
    return f"postgresql://{MONITOR_ROLE}:{password}@127.0.0.1:{server.port}/postgres?sslmode=disable"


def run_scenario(scenario: Scenario, timeout: float) -> Result:
    workdir = owned_temp_dir(f"tierwatch-detection-{scenario.name}-")
    try:
        with ExitStack() as stack:
            return _measure(stack, scenario, workdir, timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(stack: ExitStack, scenario: Scenario, workdir: Path, timeout: float) -> Result:
    server = stack.enter_context(postgres(workdir))
    log(scenario.name, f"PostgreSQL 15 on 127.0.0.1:{server.port}, max_connections={MAX_CONNECTIONS}")
    tw_inbox, common_inbox, watched = _start_monitors(stack, scenario, workdir, server)
    stack.enter_context(scenario.load(server))
    start = time.monotonic()
    log(scenario.name, f"condition in place: {scenario.condition}; waiting up to {timeout:.0f} s")
    tw_arrival = wait_for_firing(tw_inbox, scenario.tierwatch_alert, start, timeout, watched)
    log(scenario.name, f"tierwatch: {describe(tw_arrival, scenario.tierwatch_alert, start, timeout)}")
    common_arrival = None
    if scenario.common_alert is not None and common_inbox is not None:
        common_arrival = wait_for_firing(common_inbox, scenario.common_alert, start, timeout, watched)
        log(scenario.name, f"common setup: {describe(common_arrival, scenario.common_alert, start, timeout)}")
    others = frozenset(tw_inbox.names_firing(start) - {scenario.tierwatch_alert})
    return Result(scenario, timeout, start, tw_arrival, common_arrival, others)


def _start_monitors(
    stack: ExitStack, scenario: Scenario, workdir: Path, server: PostgresServer
) -> tuple[StampedNotifications, StampedNotifications | None, list[Service]]:
    """tierwatch, and the common setup where it has a rule for the scenario, each with its own
    Alertmanager; both are warm before the condition starts, so neither is charged its start-up."""
    tw_am, tw_inbox = stack.enter_context(alertmanager(workdir / "am-tierwatch"))
    dsn = f"{server.dsn()} password={server.passwords[MONITOR_ROLE]}"
    watched = [stack.enter_context(tierwatch(workdir / "tierwatch", dsn, tw_am.url))]
    log(scenario.name, f"tierwatch running (defaults), sending to Alertmanager {tw_am.url}")
    if scenario.common_alert is None:
        return tw_inbox, None, watched
    common_am, common_inbox = stack.enter_context(alertmanager(workdir / "am-common"))
    watched += stack.enter_context(common_setup(workdir / "common", exporter_dsn(server), common_am.port))
    log(scenario.name, f"Prometheus scraping postgres_exporter, sending to Alertmanager {common_am.url}")
    return tw_inbox, common_inbox, watched


def wait_for_firing(
    inbox: StampedNotifications, alertname: str, start: float, timeout: float, watched: list[Service]
) -> Arrival | None:
    """The first firing ``alertname`` the webhook received after ``start``; arrival times are stamped
    by the webhook itself, so the polling period does not blur them."""
    while (arrival := inbox.first_firing(alertname, start)) is None:
        if time.monotonic() - start > timeout:
            return None
        for service in watched:
            service.check_alive()  # a crashed monitor is a failure to run, not a slow detection
        time.sleep(0.2)
    return arrival


def describe(arrival: Arrival | None, alertname: str, start: float, timeout: float) -> str:
    if arrival is None:
        return f"no {alertname} within {timeout:.0f} s"
    summary = arrival.alert["annotations"].get("summary", "(no summary)")
    return f"{alertname} firing after {arrival.at - start:.1f} s: {summary}"


def report(results: list[Result]) -> None:
    print()
    header = (
        "scenario",
        "tierwatch",
        "common setup",
        "ratio",
        f"target (<= {TARGET_SECONDS:.0f} s, names cause)",
    )
    rows = [header, *(_row(result) for result in results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("ratio = common setup seconds / tierwatch seconds (seconds from the condition to the webhook)")
    for result in results:
        _details(result)


def _row(result: Result) -> tuple[str, str, str, str, str]:
    tw, common = result.tierwatch_seconds, result.common_seconds
    never = f"none in {result.timeout:.0f} s"
    tw_text = f"{tw:.1f} s" if tw is not None else never
    if result.scenario.common_alert is None:
        common_text = "no rule"
    else:
        common_text = f"{common:.1f} s" if common is not None else never
    ratio = f"{common / tw:.1f}x" if tw and common is not None else "n/a"
    return result.scenario.name, tw_text, common_text, ratio, "PASS" if result.passed() else "FAIL"


def _details(result: Result) -> None:
    scenario = result.scenario
    print(f"\n{scenario.name}: {scenario.condition}")
    if result.tierwatch is not None:
        labels, annotations = result.tierwatch.alert["labels"], result.tierwatch.alert["annotations"]
        remediation = annotations.get("remediation", "")
        shown = ", ".join(f"{key}={labels.get(key)}" for key in ("severity", "tier", "target"))
        print(f"  tierwatch alert: {labels['alertname']} ({shown})")
        print(f"  summary: {annotations.get('summary')}")
        print(f"  remediation: {remediation.split('. ')[0]}.")
        print(f"  runbook: {annotations.get('runbook_url')}")
    print(f"  names the cause: {'yes' if result.names_cause() else 'no'}")
    if result.tierwatch_others:
        print(f"  other alerts tierwatch sent meanwhile: {', '.join(sorted(result.tierwatch_others))}")
    if scenario.common_alert is None:
        print(f"  common setup: {NO_RULE}")
    elif result.common is not None:
        print(
            f"  common setup alert: {scenario.common_alert}: {result.common.alert['annotations']['summary']}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["db-bound", "connections", "both"], default="both")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="cap on each wait for an alert (seconds)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "both" else [args.scenario]

    def run() -> list[Result]:
        results = []
        for index, name in enumerate(names):
            if index:
                time.sleep(SETTLE_SECONDS)  # the previous scenario's processes just exited
            results.append(run_scenario(SCENARIOS[name], args.timeout))
        return results

    return run_benchmark(run, report, (psycopg.Error,))


if __name__ == "__main__":
    sys.exit(main())
