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
    # A derived signal is arithmetic over other signals' values (global ones and its target's).
    inputs: tuple[str, ...] = ()
    compute_derived: Callable[[Mapping[str, float]], float | None] | None = None
    # The agent exports this signal's value (tierwatch_signal_value) because PromQL cannot compute it.
    exported: bool = False

    @property
    def derived(self) -> bool:
        return self.compute_derived is not None

    def from_values(self, values: Mapping[str, float]) -> float | None:
        """The derived value; the computation itself returns None when an input it needs is missing
        (some inputs are alternatives: an app's pool size, else the observed connections per client)."""
        return self.compute_derived(values) if self.compute_derived else None

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
    # Aggregated even for one series: the labels a scrape adds (job, instance, pod) must not reach a
    # rule's result, or two parts of an "any of" that both hold would give two alerts for one target.
    return Signal(
        name,
        Scope.TARGET,
        subject,
        unit,
        lambda extra: f"max by (target) ({series(extra)})",
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


DERIVED_METRIC = "signal_value"


def derived(
    name: str,
    scope: Scope,
    subject: str,
    unit: Unit,
    *,
    inputs: tuple[str, ...],
    compute: Callable[[Mapping[str, float]], float | None],
) -> Signal:
    """Arithmetic over other signals. PromQL cannot join what it needs (an app's pool size with its
    HPA's maxReplicas, say), so the agent exports the value it computed as
    ``tierwatch_signal_value{signal, target}`` and the exported rule reads that."""
    return Signal(
        name,
        scope,
        subject,
        unit,
        exported_promql(name, scope),
        inputs=inputs,
        compute_derived=compute,
        exported=True,
    )


def exported_promql(name: str, scope: Scope) -> PromQL:
    series = selector(DERIVED_METRIC, {"signal": name})
    if scope is Scope.TARGET:
        return lambda extra: f"max by (target) ({series(extra)})"
    return lambda extra: f"max({series(extra)})"


def from_windows(name: str, subject: str, unit: Unit, compute: Callable[[Windows], float | None]) -> Signal:
    """A global signal computed from the windows in a way PromQL cannot follow; exported like a
    derived one."""
    return Signal(
        name,
        Scope.GLOBAL,
        subject,
        unit,
        exported_promql(name, Scope.GLOBAL),
        compute_global=compute,
        exported=True,
    )


def latest_sum(name: str, subject: str, metric: str, unit: Unit) -> Signal:
    """The sum of a labelled metric's newest values (clients waiting in all pools, sessions of all states)."""

    def compute(window: Window) -> float | None:
        values = window[-1].series(metric).values()
        return sum(values) if values else None

    series = selector(metric)
    return Signal(
        name, Scope.TARGET, subject, unit, lambda extra: f"sum by (target) ({series(extra)})", compute
    )


def latest_max_of(name: str, subject: str, unit: Unit, metrics: tuple[str, ...]) -> Signal:
    """The largest newest value among several metrics (a primary's replica lags, a standby's delay)."""

    def compute(window: Window) -> float | None:
        values = [value for metric in metrics for value in window[-1].series(metric).values()]
        return max(values) if values else None

    selectors = [selector(metric) for metric in metrics]
    return Signal(
        name,
        Scope.TARGET,
        subject,
        unit,
        lambda extra: f"max by (target) ({' or '.join(s(extra) for s in selectors)})",
        compute,
    )


def quotient(name: str, unit: Unit, numerator: Signal, denominator: Signal) -> Signal:
    """numerator / denominator of one target; absent when the denominator is zero."""

    def compute(window: Window) -> float | None:
        top, bottom = numerator.for_target(window), denominator.for_target(window)
        return top / bottom if top is not None and bottom else None

    return Signal(
        name,
        Scope.TARGET,
        numerator.subject,
        unit,
        lambda extra: f"({numerator.promql(extra)}) / on(target) ({denominator.promql(extra)} > 0)",
        compute,
    )


def counter_rate(name: str, subject: str, metric: str) -> Signal:
    """Per-second increase of a counter's sum over its labels between the two newest samples."""

    def compute(window: Window) -> float | None:
        if len(window) < 2:
            return None
        before, after = window[-2], window[-1]
        elapsed = after.timestamp - before.timestamp
        now, then = sum(after.series(metric).values()), sum(before.series(metric).values())
        return (now - then) / elapsed if elapsed > 0 and now >= then else None

    series = selector(metric)
    return Signal(
        name,
        Scope.TARGET,
        subject,
        Unit.PER_SECOND,
        lambda extra: f"sum by (target) (rate({series(extra)}[1m]))",
        compute,
    )
