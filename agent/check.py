"""``tierwatch check``: collect for a short window, print each tier's USE figures, exit with a verdict."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from agent import __version__
from agent.alerting import configured_rules
from agent.config import Config
from agent.scheduler import CollectorRunner
from agent.store import Store
from agent.wiring import build_collectors, register_secrets, use_procfs
from alerts.classifier import classify
from alerts.present import verdict_json
from alerts.table import SIGNALS
from collectors.base import Column, Reading, Unit

EXIT_OK, EXIT_FOUND, EXIT_CANNOT_RUN = 0, 1, 2
OVERDUE_POLL_SECONDS = 0.05


def _run_cycles(runners: list[CollectorRunner], duration: float, timeout: float) -> None:
    """Two cycles ``duration`` apart (rates need a pair), each across all targets at once. A cycle
    still running after ``timeout`` is reported as timed out and its thread left behind: a daemon, it
    cannot hold up the exit."""
    for cycle in range(2):
        if cycle:
            time.sleep(duration)
        threads = [threading.Thread(target=runner.run_cycle, daemon=True) for runner in runners]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for runner, thread in zip(runners, threads, strict=True):
            thread.join(max(0.0, deadline - time.monotonic()))
            while thread.is_alive() and not runner.overdue():
                thread.join(OVERDUE_POLL_SECONDS)


def collect_report(config: Config, duration: float) -> dict[str, Any]:
    register_secrets(config)
    rules = configured_rules(config)
    collectors = build_collectors(config)
    store = Store(window_seconds=config.window)
    runners = [CollectorRunner(collector, store, config.cycle_timeout) for collector in collectors]
    use_procfs(config)
    try:
        _run_cycles(runners, duration, config.cycle_timeout)
    finally:
        for runner in runners:
            runner.stop()
        for collector in collectors:
            collector.close()

    latest = {(sample.collector, sample.target): sample for sample in store.latest()}
    statuses = store.statuses()
    tiers = []
    for collector, runner in zip(collectors, runners, strict=True):
        status = statuses[runner.key]
        sample = latest.get(runner.key)
        row: dict[str, Any] = {
            "tier": collector.tier,
            "collector": collector.name,
            "target": collector.target,
            "up": status.up,
            "error": None,
        }
        if status.last_error is not None:
            row["error"] = {"reason": status.last_error[0].value, "detail": status.last_error[1]}
        for column in Column:
            row[column.value] = _readings(collector.readings, column, sample)
        tiers.append(row)
    # A one-shot diagnosis reports what holds now; the `for` durations are the running agent's business.
    verdicts = [verdict_json(v, config.runbook_base_url) for v in classify(store.windows(), rules, SIGNALS)]
    return {
        "version": __version__,
        "duration_seconds": duration,
        "tiers": tiers,
        "bottlenecks": [v for v in verdicts if v["verdict"] == "holds"],
        "unknown": [v for v in verdicts if v["verdict"] == "unknown"],
    }


def _readings(readings: tuple[Reading, ...], column: Column, sample: Any) -> dict[str, dict[str, Any]]:
    if sample is None:
        return {}
    shown = {}
    for reading in readings:
        if reading.column is column and (value := reading.value(sample)) is not None:
            shown[reading.label] = {"value": value, "unit": reading.unit.value}
    return shown


def render_table(report: dict[str, Any]) -> str:
    headers = ("TIER", "TARGET", "STATUS", "UTILIZATION", "SATURATION", "ERRORS")
    rows = []
    for tier in report["tiers"]:
        status = "up" if tier["up"] else f"down: {tier['error']['reason']}" if tier["error"] else "down"
        cells = [tier["tier"], f"{tier['collector']}/{tier['target']}", status]
        for column in Column:
            figures = tier[column.value]
            cells.append(
                "  ".join(f"{label} {Unit(f['unit']).format(f['value'])}" for label, f in figures.items())
                or "-"
            )
        rows.append(cells)
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    for tier in report["tiers"]:
        if tier["error"]:
            lines.append(f"{tier['collector']}/{tier['target']}: {tier['error']['detail']}")
    lines.append("")
    if report["bottlenecks"]:
        lines.append("Bottlenecks:")
        for verdict in report["bottlenecks"]:
            lines.append(f"  {verdict['name']} ({verdict['target']}): {verdict['summary']}")
            lines.append(f"    what to do: {verdict['remediation']}")
            lines.append(f"    runbook: {verdict['runbook_url']}")
    else:
        lines.append("Bottlenecks: none found")
    if report["unknown"]:
        lines.append("Not judged (a signal is missing):")
        lines.extend(
            f"  {verdict['name']} ({verdict['target']}): missing {', '.join(verdict['missing_signals'])}"
            for verdict in report["unknown"]
        )
    return "\n".join(lines)


def run_check(config: Config, duration: float, *, as_json: bool) -> int:
    report = collect_report(config, duration)
    print(json.dumps(report, indent=2, default=str) if as_json else render_table(report), file=sys.stdout)
    if report["bottlenecks"]:
        return EXIT_FOUND
    if not report["tiers"] or not all(tier["up"] for tier in report["tiers"]):
        return EXIT_CANNOT_RUN
    return EXIT_OK
