"""Alert lifecycle as in Prometheus: pending while the condition has held for less than ``for``,
firing after, kept firing for the keep-firing window once the condition stops, then resolved.
Evidence and summary are refreshed on every cycle in which the condition holds; while its verdict
is unknown a firing alert keeps its last evidence.

Unlike Prometheus, which measures `for` and keep-firing between wall-clock evaluation timestamps, the
durations here are measured on a monotonic clock: a wall clock stepped forward (an NTP step, a VM
resumed from suspend or a snapshot) would otherwise fire a pending alert before its `for` had passed,
and one stepped back would hold it for the size of the step. The instants shown and sent to
Alertmanager are wall-clock readings taken as each state begins, so they stay put across a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from alerts.classifier import Verdict, belongs_to

AlertKey = tuple[str, str, str]  # (rule, collector, target)
# Cycles start a few milliseconds late now and then; without slack, an alert whose `for` is a
# multiple of the interval would wait one whole extra cycle whenever its check lands just short.
SCHEDULING_SLACK_SECONDS = 0.25


class State(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Alert:
    verdict: Verdict  # the latest verdict that held: its evidence and summary
    state: State
    active_since: float  # wall clock: when the condition first held
    last_held: float  # monotonic: the last cycle it held (or, firing, was held while unknown)
    fired_at: float | None = None  # wall clock
    resolved_at: float | None = None  # wall clock
    held_since: float = 0.0  # monotonic: when the condition first held, which `for` counts from

    @property
    def key(self) -> AlertKey:
        return self.verdict.key


class AlertTracker:
    def __init__(self) -> None:
        self._active: dict[AlertKey, Alert] = {}

    def carry_over(self, previous: AlertTracker, keep: Callable[[Alert], bool], wall: float) -> list[Alert]:
        """Continues the lifecycle of ``previous``'s alerts that ``keep`` accepts (after a reload: the
        rule and the target are still configured). The others end now; returns those that fired, as
        resolved at ``wall`` (the wall clock now)."""
        self._active = {key: alert for key, alert in previous._active.items() if keep(alert)}
        return [
            replace(alert, state=State.RESOLVED, resolved_at=wall)
            for key, alert in previous._active.items()
            if key not in self._active and alert.state is State.FIRING
        ]

    def update(
        self, verdicts: list[Verdict], now: float, wall: float | None = None
    ) -> tuple[list[Alert], list[Alert]]:
        """Applies one cycle's verdicts; returns (active alerts, alerts resolved in this cycle). ``now``
        is the monotonic clock, ``wall`` the wall clock read with it (``now`` if they are one)."""
        wall = now if wall is None else wall
        holding = {verdict.key: verdict for verdict in verdicts if verdict.truth}
        # A firing alert whose signals went missing (the target stopped answering, perhaps because of
        # the very condition) is held, not resolved: losing sight of a problem does not end it.
        unknown = {verdict.key for verdict in verdicts if verdict.truth is None}
        # A target that is down has no split label values, so it is judged once as a whole; that
        # unknown verdict stands for each of its subjects (each HPA of a namespace, say).
        down = {v.key for v in verdicts if v.truth is None and v.target_down}
        judged = {verdict.key for verdict in verdicts}
        resolved = []
        for key, alert in list(self._active.items()):
            if key in holding:
                continue
            lost_sight = key in unknown or (key not in judged and _within_down_target(key, down))
            if lost_sight and alert.state is State.FIRING:
                self._active[key] = replace(alert, last_held=now)
                continue

            keep_firing = alert.verdict.rule.keep_firing_seconds
            if alert.state is State.FIRING and now - alert.last_held < keep_firing:
                continue
            del self._active[key]
            if alert.state is State.FIRING:
                resolved.append(replace(alert, state=State.RESOLVED, resolved_at=wall))
        for key, verdict in holding.items():
            alert = self._active.get(key) or Alert(
                verdict, State.PENDING, active_since=wall, last_held=now, held_since=now
            )
            alert = replace(alert, verdict=verdict, last_held=now)
            held_for = now - alert.held_since + SCHEDULING_SLACK_SECONDS
            if alert.state is State.PENDING and held_for >= verdict.rule.for_seconds:
                alert = replace(alert, state=State.FIRING, fired_at=wall)
            self._active[key] = alert
        return sorted(self._active.values(), key=lambda a: a.key), resolved


def _within_down_target(key: AlertKey, down: set[AlertKey]) -> bool:
    rule, collector, subject = key
    return any(
        rule == down_rule and collector == down_collector and belongs_to(subject, target)
        for down_rule, down_collector, target in down
    )
