"""Renders /metrics from the store: one custom collector, fresh metric families per render.

Rendering happens only when the store changed since the last render; scrapes in between are served
the same bytes, which keeps /metrics cheap however often it is scraped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent import __version__
from agent.store import Store
from collectors.base import Kind, MetricSpec, Reason

log = logging.getLogger("tierwatch.exporter")
PREFIX = "tierwatch_"
AS_OF = " Value as of the last collection cycle."
SELF_LABELS = ["collector", "target"]


class StoreCollector:
    """prometheus_client custom collector over the store; ``collect`` never raises."""

    def __init__(self, store: Store, specs: Mapping[str, Iterable[MetricSpec]]) -> None:
        self._store = store
        self._specs = {
            collector: {spec.name: spec for spec in collector_specs}
            for collector, collector_specs in specs.items()
        }

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: families depend on what the targets report.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._self_metrics()
            yield from self._tier_metrics()
            yield self._alert_series()
            yield self._signal_series()
        except Exception:  # a bug here must cost a scrape its tier series, never the endpoint
            log.exception("rendering /metrics failed")

    def _self_metrics(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(f"{PREFIX}build_info", "tierwatch build; always 1.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        up = GaugeMetricFamily(f"{PREFIX}collector_up", "1 if the last cycle succeeded.", labels=SELF_LABELS)
        duration = GaugeMetricFamily(
            f"{PREFIX}collector_duration_seconds", "Duration of the last cycle.", labels=SELF_LABELS
        )
        errors = CounterMetricFamily(
            f"{PREFIX}collector_errors_total", "Failed cycles by reason.", labels=[*SELF_LABELS, "reason"]
        )
        last_success = GaugeMetricFamily(
            f"{PREFIX}collector_last_success_timestamp_seconds",
            "Unix time of the last successful cycle.",
            labels=SELF_LABELS,
        )
        for (collector, target), status in sorted(self._store.statuses().items()):
            labels = [collector, target]
            up.add_metric(labels, 1 if status.up else 0)
            if status.duration_seconds is not None:
                duration.add_metric(labels, status.duration_seconds)
            for reason in Reason:
                errors.add_metric([*labels, reason.value], status.errors_total[reason])
            if status.last_success_timestamp is not None:
                last_success.add_metric(labels, status.last_success_timestamp)
        yield from (up, duration, errors, last_success)

    def _alert_series(self) -> Metric:
        family = GaugeMetricFamily(
            f"{PREFIX}alert",
            "Active bottleneck alerts, like Prometheus's ALERTS series.",
            labels=["alertname", "alertstate", "severity", "tier", "target"],
        )
        for alert in self._store.alerts():
            rule = alert.verdict.rule
            family.add_metric(
                [rule.name, alert.state.value, rule.severity.value, rule.tier, alert.verdict.target], 1
            )
        return family

    def _signal_series(self) -> Metric:
        family = GaugeMetricFamily(
            f"{PREFIX}signal_value",
            "Bottleneck signals the classifier derives across tiers (read by `tierwatch rules`).",
            labels=["signal", "target"],
        )
        for (name, target), value in sorted(self._store.signals().items()):
            family.add_metric([name, target], value)
        return family

    def _tier_metrics(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for sample in sorted(self._store.latest(), key=lambda s: (s.collector, s.target)):
            specs = self._specs.get(sample.collector, {})
            for (name, labels), value in sample.values.items():
                family = families.get(name)
                if family is None:
                    spec = specs.get(name)
                    if spec is None:
                        continue
                    family = families[name] = _family(spec)
                family.add_metric([sample.target, *labels], value)
        yield from families.values()


def _family(spec: MetricSpec) -> Metric:
    labels = ["target", *spec.labels]
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(PREFIX + spec.name, spec.help + AS_OF, labels=labels)
    return GaugeMetricFamily(PREFIX + spec.name, spec.help + AS_OF, labels=labels)


class MetricsPage:
    def __init__(self, store: Store, specs: Mapping[str, Iterable[MetricSpec]]) -> None:
        self._store = store
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(StoreCollector(store, specs))
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] = (-1, b"")

    def render(self) -> bytes:
        with self._lock:
            version = self._store.version
            if self._cached[0] != version:
                self._cached = (version, generate_latest(self._registry))
            return self._cached[1]
