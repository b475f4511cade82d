"""Named signals: what rules compare, each computed from the store's windows and also written in PromQL.

A target signal is read from one target's window (its samples, oldest first); a global signal sums up
a tier across its targets (the state of "the other tiers" a rule looks at). Each signal's PromQL gives
the same value over tierwatch's own metrics, with exactly a ``target`` label (or none, when global),
so the rule table exports as Prometheus alerting rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from alerts.conditions import Scope
from collectors.base import Sample, Unit

Window = tuple[Sample, ...]
Windows = Mapping[tuple[str, str], Window]  # (collector, target) -> samples, oldest first
PREFIX = "tierwatch_"


# PromQL of a signal, given extra label matchers to add to every selector (such as target="x").
PromQL = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    scope: Scope
    subject: str  # the collector a target signal reads, or the tier a global signal sums up
    unit: Unit
    promql: PromQL
    compute_target: Callable[[Window], float | None] | None = None
    compute_global: Callable[[Windows], float | None] | None = None
    # A split signal has one value per value of this label (an HPA among a namespace's HPAs).
    split: str | None = None
    compute_split: Callable[[Window], Mapping[str, float]] | None = None

    def for_target(self, window: Window) -> float | None:
        return self.compute_target(window) if self.compute_target and window else None

    def for_split(self, window: Window) -> Mapping[str, float]:
        return self.compute_split(window) if self.compute_split and window else {}

    def for_all(self, windows: Windows) -> float | None:
        return self.compute_global(windows) if self.compute_global else None


def selector(metric: str, labels: Mapping[str, str] | None = None) -> PromQL:
    def render(extra: str) -> str:
        matchers = [f'{key}="{value}"' for key, value in (labels or {}).items()]
        matchers += [extra] if extra else []
        return f"{PREFIX}{metric}{{{','.join(matchers)}}}" if matchers else PREFIX + metric

    return render


def latest(
    name: str, subject: str, metric: str, unit: Unit, labels: Mapping[str, str] | None = None
) -> Signal:
    """The metric's value in the newest sample (one series: the given label values)."""
    wanted = tuple((labels or {}).values())
    series = selector(metric, labels)
    promql = (lambda extra: f"max by (target) ({series(extra)})") if labels else series
    return Signal(
        name,
        Scope.TARGET,
        subject,
        unit,
        promql,
        compute_target=lambda window: window[-1].get(metric, *wanted),
    )


def latest_max(name: str, subject: str, metric: str, unit: Unit) -> Signal:
    """The largest value of a labelled metric in the newest sample (the busiest disk, pool, ...)."""

    def compute(window: Window) -> float | None:
        values = window[-1].series(metric).values()
        return max(values) if values else None

    series = selector(metric)
    return Signal(
        name, Scope.TARGET, subject, unit, lambda extra: f"max by (target) ({series(extra)})", compute
    )


def worst_of(name: str, signal: Signal, collectors: tuple[str, ...] | None = None) -> Signal:
    """A global signal: the highest value of a target signal across all targets of its collector."""
    sources = collectors or (signal.subject,)

    def compute(windows: Windows) -> float | None:
        values = [
            value
            for (collector, _), window in windows.items()
            if collector in sources and (value := signal.for_target(window)) is not None
        ]
        return max(values) if values else None

    return Signal(
        name,
        Scope.GLOBAL,
        signal.subject,
        signal.unit,
        lambda extra: f"max({signal.promql(extra)})",
        compute_global=compute,
    )


Registry = dict[str, Signal]


def registry(*signals: Signal) -> Registry:
    table: Registry = {}
    for signal in signals:
        if signal.name in table:
            raise ValueError(f"signal {signal.name} defined twice")
        table[signal.name] = signal
    return table


def per_label(name: str, subject: str, metric: str, unit: Unit, label: str, *, position: int = 0) -> Signal:
    """A split signal: the metric's newest value for each value of ``label`` (at ``position`` among
    the series' labels); several series with one such value (metrics of one HPA) give their max."""

    def compute(window: Window) -> dict[str, float]:
        values: dict[str, float] = {}
        for labels, value in window[-1].series(metric).items():
            key = labels[position]
            values[key] = max(value, values.get(key, value))
        return values

    series = selector(metric)
    return Signal(
        name,
        Scope.TARGET,
        subject,
        unit,
        lambda extra: f"max by (target, {label}) ({series(extra)})",
        split=label,
        compute_split=compute,
    )


def per_label_rise(name: str, subject: str, metric: str, label: str, window_text: str) -> Signal:
    """A split signal: how far the metric rose within the window (newest minus lowest), per label value."""

    def compute(window: Window) -> dict[str, float]:
        lowest: dict[str, float] = {}
        for sample in window:
            for (key, *_), value in sample.series(metric).items():
                lowest[key] = min(value, lowest.get(key, value))
        return {
            key: value - lowest[key]
            for (key, *_), value in window[-1].series(metric).items()
            if key in lowest
        }

    series = selector(metric)
    return Signal(
        name,
        Scope.TARGET,
        subject,
        Unit.COUNT,
        lambda extra: (
            f"max by (target, {label}) ({series(extra)} - min_over_time({series(extra)}[{window_text}]))"
        ),
        split=label,
        compute_split=compute,
    )
