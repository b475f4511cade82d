"""Shared pieces of the scenario tests: an agent with short `for` durations and alert polling."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alerts.names import ALERT_NAMES
from tests.proc_trees import DATA
from tests.support import AgentProcess, http_get

QUIET_HOST = DATA / "no-psi" / "t1"
LOAD_SECONDS = 25  # every load stops by itself after this, whatever the test does
BURN_SQL = "SELECT count(*) FROM generate_series(1, 2000000)"  # on CPU for a while, touches no table
# Scenario tests judge naming, not patience: every rule may fire after 1 s of holding.
FAST_RULES = {name: {"for": 1} for name in ALERT_NAMES}


def quiet_host() -> dict[str, Any]:
    """The host collector on a recorded idle host, so the machine running the tests cannot add alerts."""
    return {
        "name": "node-a",
        "procfs": str(QUIET_HOST / "proc"),
        "sysfs": str(QUIET_HOST / "sys"),
        "cgroupfs": str(QUIET_HOST / "cgroup"),
    }


def scenario_agent(tmp_path: Path, rules: dict[str, Any] | None = None, **sections: Any) -> AgentProcess:
    """An agent at a 0.5 s interval on a quiet recorded host; ``rules`` adds to FAST_RULES."""
    config = {"interval": 0.5, "host": quiet_host(), "rules": {**FAST_RULES, **(rules or {})}, **sections}
    return AgentProcess(tmp_path, config)


def active_alerts(agent: AgentProcess) -> list[dict[str, Any]]:
    return json.loads(http_get(f"{agent.url}/api/v1/alerts")[1])


def firing(agent: AgentProcess) -> dict[tuple[str, str], dict[str, Any]]:
    return {(a["name"], a["target"]): a for a in active_alerts(agent) if a["state"] == "firing"}


def wait_for_alerts(
    agent: AgentProcess, expected: set[tuple[str, str]], timeout: float = 20
) -> dict[str, Any]:
    """Waits until exactly ``expected`` fire (by name and target); returns them by name."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    while time.monotonic() < deadline:
        seen = firing(agent)
        if set(seen) == expected:
            return {name: alert for (name, _), alert in seen.items()}
        time.sleep(0.25)
    raise AssertionError(f"expected {sorted(expected)}, firing {sorted(seen)}\n{agent.log()[-3000:]}")


@contextmanager
def sessions_running(connect: Any, sql: str, count: int) -> Iterator[None]:
    """``count`` sessions running ``sql`` in a loop until the block ends (or LOAD_SECONDS pass)."""
    stop = threading.Event()
    deadline = time.monotonic() + LOAD_SECONDS

    def run() -> None:
        with connect() as connection:
            while not stop.is_set() and time.monotonic() < deadline:
                connection.execute(sql)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            # A statement blocked (on a lock the test still holds, say) ends no sooner than its cause:
            # the load's deadline bounds the wait, and the daemon thread is left to finish after it.
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
