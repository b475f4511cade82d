"""The shape of a rule: data only. The table itself lives in ``alerts.table``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from alerts.conditions import Condition

RUNBOOK_PATH = "docs/alerts/{name}.md"


def thresholds(**values: float) -> MappingProxyType[str, float]:
    return MappingProxyType(values)


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    tier: str
    severity: Severity
    # The collector whose targets the rule is judged for, and the condition per such collector
    # (ConnectionPoolExhaustion is judged on PostgreSQL targets and on PgBouncer targets).
    when: Mapping[str, Condition]
    thresholds: Mapping[str, float]
    for_seconds: float
    keep_firing_seconds: float
    # str.format template over {target} and the signal names, values already formatted; a rule
    # judged on several collectors may give one per collector.
    summary: str | Mapping[str, str]
    remediation: str
    # Signals of other tiers shown as evidence: the state of the rest of the system.
    context: tuple[str, ...] = ()
    # A root cause is named in the evidence of other tiers' alerts that hold at the same time.
    root_cause: bool = False
    # Remediation that replaces the default when its condition holds (first match wins): a scaling
    # ceiling with a saturated database behind it needs the opposite advice.
    remediation_if: tuple[tuple[Condition, str], ...] = ()
    enabled: bool = True
    runbook: str = field(default="")

    def __post_init__(self) -> None:
        if not self.runbook:
            object.__setattr__(self, "runbook", RUNBOOK_PATH.format(name=self.name))

    def summary_for(self, collector: str) -> str:
        return self.summary if isinstance(self.summary, str) else self.summary[collector]

    def conditions(self) -> list[Condition]:
        return [*self.when.values(), *(condition for condition, _ in self.remediation_if)]

    def signal_names(self) -> list[str]:
        names = [name for condition in self.conditions() for name in condition.signals()]
        return list(dict.fromkeys([*names, *self.context]))

    def with_overrides(
        self,
        enabled: bool,
        for_seconds: float | None,
        thresholds: Mapping[str, float],
        keep_firing_seconds: float | None = None,
    ) -> Rule:

        unknown = sorted(set(thresholds) - set(self.thresholds))
        if unknown:
            known = ", ".join(sorted(self.thresholds)) or "none"
            raise ValueError(f"rule {self.name}: unknown threshold {', '.join(unknown)} (known: {known})")
        return replace(
            self,
            enabled=enabled,
            for_seconds=self.for_seconds if for_seconds is None else for_seconds,
            keep_firing_seconds=self.keep_firing_seconds
            if keep_firing_seconds is None
            else keep_firing_seconds,
            thresholds=MappingProxyType({**self.thresholds, **thresholds}),
        )
