"""`for` and keep-firing are timed on the monotonic clock, so a wall clock stepped forward or back
(an NTP step, a VM resumed from suspend or a snapshot) neither fires nor resolves an alert early nor
holds it back; the instants /api/v1/alerts shows and Alertmanager gets are the wall clock's readings
when each state began."""

from __future__ import annotations

from pathlib import Path

from agent.alerting import AlertingJob
from agent.store import Store
from alerts.classifier import Verdict
from alerts.lifecycle import AlertTracker, State
from alerts.present import alert_json, rfc3339
from alerts.table import RULES
from tests.proc_trees import cycles

HOUR = 3600.0
INTERVAL = 5.0


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 50.0
        self.wall = 1_795_000_000.0

    def tick(self) -> None:
        self.monotonic += INTERVAL
        self.wall += INTERVAL


def swapping_job(store: Store, clocks: Clocks, for_seconds: float) -> AlertingJob:
    rules = tuple(
        rule.with_overrides(True, for_seconds, {}) if rule.name == "MemorySwapping" else rule
        for rule in RULES
    )
    return AlertingJob(store, rules, clock=lambda: clocks.monotonic, wall_clock=lambda: clocks.wall)


def swapping_store(tmp_path: Path) -> Store:
    """A host whose window holds MemorySwapping on every alerting cycle."""
    store = Store()
    store.register("host", "node-a")
    for sample in cycles("swapping", tmp_path):
        store.record_success(sample, 0.01)
    return store


def swapping(store: Store) -> dict[str, object]:
    (alert,) = [a for a in store.alerts() if a.verdict.rule.name == "MemorySwapping"]
    return alert_json(alert, "https://runbooks/")


def test_a_wall_clock_stepped_forward_does_not_fire_a_pending_alert_early(tmp_path: Path) -> None:
    store, clocks = swapping_store(tmp_path), Clocks()
    job = swapping_job(store, clocks, for_seconds=60)
    job.run_cycle()
    began = clocks.wall
    clocks.wall += HOUR
    for _ in range(11):  # 55 s on the monotonic clock
        clocks.tick()
        job.run_cycle()
        assert swapping(store)["state"] == "pending"
    clocks.tick()  # 60 s
    job.run_cycle()
    shown = swapping(store)
    assert shown["state"] == "firing"
    assert shown["active_since"] == rfc3339(began)  # not moved by the step
    assert shown["fired_at"] == rfc3339(clocks.wall)  # the wall clock as it fired


def test_a_wall_clock_stepped_back_does_not_hold_a_pending_alert(tmp_path: Path) -> None:
    store, clocks = swapping_store(tmp_path), Clocks()
    job = swapping_job(store, clocks, for_seconds=20)
    job.run_cycle()
    began = clocks.wall
    clocks.wall -= HOUR
    for _ in range(3):
        clocks.tick()
        job.run_cycle()
        assert swapping(store)["state"] == "pending"
    clocks.tick()  # 20 s on the monotonic clock, an hour before `began` on the wall clock
    job.run_cycle()
    shown = swapping(store)
    assert shown["state"] == "firing"
    assert shown["active_since"] == rfc3339(began)
    assert shown["fired_at"] == rfc3339(clocks.wall)


def test_a_reload_keeps_for_progress_on_the_monotonic_clock(tmp_path: Path) -> None:
    store, clocks = swapping_store(tmp_path), Clocks()
    before = swapping_job(store, clocks, for_seconds=20)
    before.run_cycle()
    began = clocks.wall
    clocks.tick()
    before.run_cycle()  # pending for 5 s
    after = swapping_job(store, clocks, for_seconds=20)
    after.carry_over(before, {("host", "node-a")})
    clocks.wall += HOUR
    for _ in range(2):
        clocks.tick()
        after.run_cycle()
        assert swapping(store)["state"] == "pending"
    clocks.tick()  # 20 s since the condition first held, across the reload
    after.run_cycle()
    shown = swapping(store)
    assert shown["state"] == "firing"
    assert shown["active_since"] == rfc3339(began)


def test_keep_firing_is_not_cut_short_by_a_wall_clock_stepped_forward() -> None:
    rule = RULES[0].with_overrides(True, 0, {}, keep_firing_seconds=30)
    holds, stopped = (Verdict(rule, "host", "node-a", truth, {}, "s") for truth in (True, False))
    tracker, clocks = AlertTracker(), Clocks()
    (firing,), _ = tracker.update([holds], clocks.monotonic, clocks.wall)
    assert (firing.state, firing.active_since, firing.fired_at) == (State.FIRING, clocks.wall, clocks.wall)
    fired_at = clocks.wall
    clocks.wall += HOUR
    for _ in range(5):  # 25 s since it last held
        clocks.tick()
        active, resolved = tracker.update([stopped], clocks.monotonic, clocks.wall)
        assert ([a.state for a in active], resolved) == ([State.FIRING], [])
    clocks.tick()
    active, resolved = tracker.update([stopped], clocks.monotonic, clocks.wall)
    assert active == []
    assert [(a.state, a.fired_at, a.resolved_at) for a in resolved] == [
        (State.RESOLVED, fired_at, clocks.wall)
    ]
