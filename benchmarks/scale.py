"""Scale: cycle time and CPU of the agent against the number of targets it collects.

    .venv/bin/python benchmarks/scale.py [--cycles 6] [--interval 5]

Steps: 1, 10 and 50 Redis targets (50 redis-server processes, started once; each step watches the
first N), then 1, 10 and 25 PostgreSQL targets (one PostgreSQL 15 cluster with 25 databases, a target
per database). Each step runs a fresh `tierwatch run` with only those targets (no host collector) at
the default 5 s interval; after one cycle to warm up, it watches --cycles cycles and reports:

- tierwatch_collector_duration_seconds of the targets (mean and max over targets and cycles);
- the wall time of each cycle, from the first target's start to the last target's end. A target's
  last-success timestamp is stamped when its sample is built, at the end of its cycle, so a cycle
  spans from min(last_success - duration) to max(last_success) over its targets;
- the agent's CPU (its process CPU clock, every thread) per cycle, and per target per cycle, including the
  benchmark's own scrapes of /metrics (every 0.5 s);
- the series on /metrics at the end: what a Prometheus stores for the step. PostgreSQL targets of one
  server share its per-database series out (each database once), so they do not grow as targets x
  databases.

Target (issue 9): the cost grows about linearly with the number of targets (the CPU each added target
costs stays within a factor of 2 from one step to the next), and a cycle of 50 targets finishes within
the 5 s interval (targets are collected concurrently, each on a thread of its own). Prints the table
and PASS/FAIL, exits 0 either way; 2 when something could not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from cpuclock import cpu_seconds
from detection_stack import BenchmarkError, run_benchmark
from fleet import (
    mib,
    postgres_cluster,
    postgres_targets,
    print_checks,
    print_fields,
    print_table,
    redis_fleet,
    redis_targets,
    rss_bytes,
    running_agent,
    self_metrics,
    series_keys,
    thread_count,
)

from tests.fixtures.postgres_server import owned_temp_dir

REDIS_STEPS = (1, 10, 50)
POSTGRES_STEPS = (1, 10, 25)
# Often enough to see every cycle of every target (the agent answers between cycles from its render
# cache); the CPU figures include these ten-or-so scrapes per 5 s cycle, as they would a Prometheus's.
POLL_SECONDS = 0.5
LINEAR_FACTOR = 2.0
TargetKey = tuple[str, str]


@dataclass(frozen=True)
class Step:
    collector: str
    targets: int
    cycles: int  # complete cycles seen (every target reported)
    duration_mean: float
    duration_max: float
    wall_mean: float
    wall_max: float
    cpu_per_cycle: float
    rss: int
    threads: int
    series: int

    @property
    def cpu_per_target(self) -> float:
        return self.cpu_per_cycle / self.targets


@dataclass(frozen=True)
class Success:
    end: float  # last_success: when the cycle's sample was built
    duration: float

    @property
    def start(self) -> float:
        return self.end - self.duration


def watch(
    read: Callable[[], dict[TargetKey, dict[str, float]]], seconds: float
) -> dict[TargetKey, list[Success]]:
    """Every distinct success of every target seen while polling /metrics for ``seconds``."""
    seen: dict[TargetKey, list[Success]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, status in read().items():
            end = status.get("last_success")
            if end is None:
                continue
            history = seen.setdefault(key, [])
            if not history or history[-1].end != end:
                history.append(Success(end, status.get("duration", 0.0)))
        time.sleep(POLL_SECONDS)
    return seen


def cycles_of(seen: dict[TargetKey, list[Success]], interval: float) -> list[list[Success]]:
    """Successes grouped by cycle. Every target's job is scheduled at the same instants, one interval
    apart, so a success belongs to the cycle whose scheduled start is nearest before its own start;
    only cycles every target reported in are kept."""
    first_start = min(success.start for history in seen.values() for success in history)
    by_cycle: dict[int, list[Success]] = {}
    for history in seen.values():
        for success in history:
            by_cycle.setdefault(round((success.start - first_start) / interval), []).append(success)
    return [cycle for _, cycle in sorted(by_cycle.items()) if len(cycle) == len(seen)]


def measure(collector: str, targets: list[dict[str, str]], workdir: Path, args: argparse.Namespace) -> Step:
    config: dict[str, Any] = {"interval": args.interval, "host": {"enabled": False}, collector: targets}
    with running_agent(workdir, config) as agent:

        def read() -> dict[TargetKey, dict[str, float]]:
            return {
                key: status
                for key, status in self_metrics(agent.metrics_text()).items()
                if key[0] == collector
            }

        deadline = time.monotonic() + 3 * args.interval
        while not (len(read()) == len(targets) and all(s.get("up") == 1 for s in read().values())):
            agent.check_alive()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{collector}: not every target up\n{agent.log_tail()}")
            time.sleep(POLL_SECONDS)
        time.sleep(args.interval)  # a cycle to warm up: connections open, first deltas taken
        cpu_before, began = cpu_seconds(agent.pid), time.monotonic()
        seen = watch(read, args.cycles * args.interval)
        cpu = cpu_seconds(agent.pid) - cpu_before
        elapsed = time.monotonic() - began
        rss, threads = rss_bytes(agent.pid), thread_count(agent.pid)
        series = len(series_keys(agent.metrics_text()))
        agent.check_alive()
    if len(seen) != len(targets):
        raise BenchmarkError(f"{collector}: {len(seen)} of {len(targets)} targets reported")
    cycles = cycles_of(seen, args.interval)
    if not cycles:
        raise BenchmarkError(f"{collector}: no cycle in which every target reported")
    durations = [success.duration for cycle in cycles for success in cycle]
    walls = [max(s.end for s in cycle) - min(s.start for s in cycle) for cycle in cycles]
    return Step(
        collector=collector,
        targets=len(targets),
        cycles=len(cycles),
        duration_mean=statistics.fmean(durations),
        duration_max=max(durations),
        wall_mean=statistics.fmean(walls),
        wall_max=max(walls),
        cpu_per_cycle=cpu / (elapsed / args.interval),
        rss=rss,
        threads=threads,
        series=series,
    )


def run(args: argparse.Namespace) -> list[Step]:
    workdir = owned_temp_dir("tierwatch-scale-")
    steps = []
    try:
        # The Redis servers go before the PostgreSQL cluster comes: one fleet at a time on the machine.
        with redis_fleet(workdir / "redis", max(REDIS_STEPS)) as servers:
            print(f"{len(servers)} redis-server processes up", flush=True)
            for count in REDIS_STEPS:
                steps.append(
                    measure("redis", redis_targets(servers[:count]), workdir / f"redis-{count}", args)
                )
                show(steps[-1])
        with postgres_cluster(max(POSTGRES_STEPS)) as postgres:
            print(f"PostgreSQL 15 with {max(POSTGRES_STEPS)} databases up", flush=True)
            for count in POSTGRES_STEPS:
                targets = postgres_targets(workdir, postgres, count)
                steps.append(measure("postgres", targets, workdir / f"postgres-{count}", args))
                show(steps[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return steps


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


HEADER = (
    "collector",
    "targets",
    "cycles",
    "duration mean ms",
    "duration max ms",
    "cycle wall mean ms",
    "cycle wall max ms",
    "CPU/cycle ms",
    "CPU/target/cycle ms",
    "RSS MiB",
    "threads",
    "series",
)


def row(step: Step) -> list[str]:
    return [
        step.collector,
        str(step.targets),
        str(step.cycles),
        ms(step.duration_mean),
        ms(step.duration_max),
        ms(step.wall_mean),
        ms(step.wall_max),
        ms(step.cpu_per_cycle),
        ms(step.cpu_per_target),
        mib(step.rss),
        str(step.threads),
        str(step.series),
    ]


def show(step: Step) -> None:
    print_fields(HEADER, row(step))


def linearity(steps: list[Step]) -> tuple[str, bool]:
    """The CPU each added target costs, step by step: (N1 -> N2: x ms per added target, ...)."""
    marginal = [
        (low, high, (high.cpu_per_cycle - low.cpu_per_cycle) / (high.targets - low.targets))
        for low, high in itertools.pairwise(steps)
    ]
    text = ", ".join(f"{low.targets}->{high.targets}: {ms(cost)} ms" for low, high, cost in marginal)
    costs = [cost for _, _, cost in marginal]
    ratio = costs[-1] / costs[0] if costs[0] > 0 else float("inf")
    return (
        f"CPU per added target per cycle {text} (ratio {ratio:.2f})",
        1 / LINEAR_FACTOR <= ratio <= LINEAR_FACTOR,
    )


def report(steps: list[Step], interval: float) -> None:
    print()
    print_table(HEADER, [row(step) for step in steps])
    checks = []
    for collector in ("redis", "postgres"):
        series = [step for step in steps if step.collector == collector]
        text, passed = linearity(series)
        checks.append((f"{collector}: {text}, about linear", passed))
    largest = max((step for step in steps if step.collector == "redis"), key=lambda step: step.targets)
    checks.append(
        (
            f"a cycle of {largest.targets} Redis targets took at most {ms(largest.wall_max)} ms "
            f"(longest target {ms(largest.duration_max)} ms), within the {interval:g} s interval",
            largest.wall_max < interval,
        )
    )
    print()
    print_checks(checks)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=6, help="cycles watched per step")
    parser.add_argument("--interval", type=float, default=5.0, help="the agent's interval (seconds)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(
        lambda: run(args), lambda steps: report(steps, args.interval), (psycopg.Error, redis.RedisError)
    )


if __name__ == "__main__":
    sys.exit(main())
