"""The alerting cycle: store windows -> classifier -> lifecycle -> store (for /metrics and the API)
and the Alertmanager sender. Runs after each round of collector cycles, on the thread that ended it."""

from __future__ import annotations

import time
from collections.abc import Callable, Set

from agent.config import Config, ConfigError
from agent.store import Store
from alerts.classifier import Verdict, belongs_to, classify
from alerts.conditions import Scope
from alerts.lifecycle import Alert, AlertTracker
from alerts.rules import Rule
from alerts.table import RULES, SIGNALS

Notify = Callable[[list[Alert], list[Alert]], None]


def configured_rules(config: Config) -> tuple[Rule, ...]:
    """The rule table with the config's overrides applied; an unknown threshold is a config error."""
    rules = []
    for rule in RULES:
        override = config.rules.get(rule.name)
        if override is None:
            rules.append(rule)
            continue
        try:
            rules.append(
                rule.with_overrides(
                    override.enabled, override.for_, override.thresholds, override.keep_firing_for
                )
            )
        except ValueError as error:
            raise ConfigError(f"rules.{rule.name}: {error}") from None
    return tuple(rules)


def exported_signals(verdicts: list[Verdict]) -> dict[tuple[str, str], float]:
    """Values of the signals PromQL cannot compute, by (signal, target; "" for a global one), for
    ``tierwatch_signal_value``: the exported Prometheus rules read them."""
    values = {}
    for verdict in verdicts:
        for name, value in verdict.evidence.items():
            signal = SIGNALS[name]
            if signal.exported:
                values[(name, verdict.target if signal.scope is Scope.TARGET else "")] = value
    return values


class AlertingJob:
    def __init__(
        self,
        store: Store,
        rules: tuple[Rule, ...],
        notify: Notify | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` times `for` and keep-firing; ``wall_clock`` dates the states it shows and sends."""
        self._store = store
        self._rules = rules
        self._notify = notify
        self._clock = clock
        self._wall_clock = wall_clock
        self._tracker = AlertTracker()

    def carry_over(self, previous: AlertingJob, targets: Set[tuple[str, str]]) -> None:
        """Continues ``previous``'s alerts on ``targets`` (collector, target); those of a rule this
        configuration disables or of another target resolve now (and the resolution is sent), without a
        keep-firing wait."""
        enabled = {rule.name for rule in self._rules if rule.enabled}

        def still_judged(alert: Alert) -> bool:
            verdict = alert.verdict
            return verdict.rule.name in enabled and any(
                collector == verdict.collector and belongs_to(verdict.target, target)
                for collector, target in targets
            )

        resolved = self._tracker.carry_over(previous._tracker, still_judged, self._wall_clock())
        active = tuple(alert for alert in self._store.alerts() if still_judged(alert))
        self._store.set_alerts(active, self._store.signals())
        if resolved and self._notify is not None:
            self._notify(list(active), resolved)

    def run_cycle(self) -> None:
        verdicts = classify(self._store.windows(), self._rules, SIGNALS)
        active, resolved = self._tracker.update(verdicts, self._clock(), self._wall_clock())
        self._store.set_alerts(tuple(active), exported_signals(verdicts))
        if self._notify is not None:
            self._notify(active, resolved)
