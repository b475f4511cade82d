"""Renders /metrics from the store: one custom collector, fresh metric families when data changed.

Rendering happens only when the store changed since the last render; scrapes in between are served
the same bytes, which keeps /metrics cheap however often it is scraped. Within a render, only the
families whose data changed are built again and formatted again: a cycle usually moves a few series
(counters, durations), and building and formatting the rest is most of what a render would cost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from agent import __version__
from agent.store import Store
from alerts.alertmanager import Deliveries
from collectors.base import Kind, MetricSpec, Reason

log = logging.getLogger("tierwatch.exporter")
PREFIX = "tierwatch_"
AS_OF = " Value as of the last collection cycle."
SELF_LABELS = ["collector", "target"]
ALERT_LABELS = ["alertname", "alertstate", "severity", "tier", "target"]
REASONS = tuple(Reason)
_Series = tuple[str, tuple[str, ...], float]  # (target, label values, value)
Specs = Mapping[str, Iterable[MetricSpec]]  # collector name -> the metrics it declares
CountDeliveries = Callable[[], Deliveries]  # the Alertmanager sender's counts, when one is configured


class StoreCollector:
    """prometheus_client custom collector over the store; ``collect`` never raises.

    A family is built afresh when its data differs from the last collect's, else the last one is
    yielded again (families are never changed once yielded). Not for concurrent collects: MetricsPage
    calls it under its lock.
    """

    def __init__(self, store: Store, specs: Specs, deliveries: CountDeliveries | None = None) -> None:
        self._store = store
        self._deliveries = deliveries
        self._specs = {
            collector: {spec.name: spec for spec in collector_specs}
            for collector, collector_specs in specs.items()
        }
        self._build_info = GaugeMetricFamily(
            f"{PREFIX}build_info", "tierwatch build; always 1.", labels=["version"]
        )
        self._build_info.add_metric([__version__], 1)
        # family name -> (the data it was built from, the family), as of the last collect
        self._built: dict[str, tuple[object, Metric]] = {}
        self._next: dict[str, tuple[object, Metric]] = {}

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: families depend on what the targets report.
        return []

    def collect(self) -> Iterator[Metric]:
        self._next = {}
        try:
            yield self._build_info
            yield from self._self_metrics()
            yield from self._tier_metrics()
            yield self._alert_series()
            yield self._signal_series()
            if self._deliveries is not None:
                yield from self._delivery_series(self._deliveries())
        except Exception:  # a bug here must cost a scrape its tier series, never the endpoint
            log.exception("rendering /metrics failed")
        finally:
            self._built = self._next

    def _family(self, name: str, data: Any, build: Callable[[Any], Metric]) -> Metric:
        last = self._built.get(name)
        family = last[1] if last is not None and last[0] == data else build(data)
        self._next[name] = (data, family)
        return family

    def _self_metrics(self) -> Iterator[Metric]:
        statuses = sorted(self._store.statuses().items())
        yield self._family("collector_up", [(key, status.up) for key, status in statuses], _up_family)
        yield self._family(
            "collector_duration_seconds",
            [(key, status.duration_seconds) for key, status in statuses],
            _duration_family,
        )
        yield self._family(
            "collector_errors_total",
            [(key, status.errors_total) for key, status in statuses],
            _errors_family,
        )
        yield self._family(
            "collector_last_success_timestamp_seconds",
            [(key, status.last_success_timestamp) for key, status in statuses],
            _last_success_family,
        )

    def _alert_series(self) -> Metric:
        return self._family("alert", self._store.alerts(), _alert_family)

    def _signal_series(self) -> Metric:
        return self._family("signal_value", sorted(self._store.signals().items()), _signal_family)

    def _delivery_series(self, deliveries: Deliveries) -> Iterator[Metric]:
        yield self._family("alertmanager_alerts_sent_total", deliveries.sent, _sent_family)
        yield self._family("alertmanager_alerts_failed_total", deliveries.failed, _failed_family)
        yield self._family("alertmanager_alerts_dropped_total", deliveries.dropped, _dropped_family)

    def _tier_metrics(self) -> Iterator[Metric]:
        # Each family's series in page order, (target, label values, value), grouped first so
        # that an unchanged family is found by comparing plain tuples.
        series: dict[str, list[_Series]] = {}
        declared: dict[str, MetricSpec] = {}
        for sample in sorted(self._store.latest(), key=lambda s: (s.collector, s.target)):
            specs = self._specs.get(sample.collector, {})
            target = sample.target
            for (name, labels), value in sample.values.items():
                entries = series.get(name)
                if entries is None:
                    spec = specs.get(name)
                    if spec is None:
                        continue
                    entries = series[name] = []
                    declared[name] = spec
                entries.append((target, labels, value))
        for name, entries in series.items():
            # Keyed apart from the self-metrics: a collector's series names are its own to choose.
            yield self._family(f"tier:{name}", (declared[name], entries), _tier_family)


def _up_family(data: list[tuple[tuple[str, str], bool]]) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}collector_up", "1 if the last cycle succeeded.", labels=SELF_LABELS)
    for key, up in data:
        family.add_metric(key, 1 if up else 0)
    return family


def _duration_family(data: list[tuple[tuple[str, str], float | None]]) -> Metric:
    family = GaugeMetricFamily(
        f"{PREFIX}collector_duration_seconds", "Duration of the last cycle.", labels=SELF_LABELS
    )
    for key, duration in data:
        if duration is not None:
            family.add_metric(key, duration)
    return family


def _errors_family(data: list[tuple[tuple[str, str], Mapping[Reason, int]]]) -> Metric:
    family = CounterMetricFamily(
        f"{PREFIX}collector_errors_total", "Failed cycles by reason.", labels=[*SELF_LABELS, "reason"]
    )
    for (collector, target), errors_total in data:
        for reason in REASONS:
            family.add_metric([collector, target, reason.value], errors_total[reason])
    return family


def _last_success_family(data: list[tuple[tuple[str, str], float | None]]) -> Metric:
    family = GaugeMetricFamily(
        f"{PREFIX}collector_last_success_timestamp_seconds",
        "Unix time of the last successful cycle.",
        labels=SELF_LABELS,
    )
    for key, timestamp in data:
        if timestamp is not None:
            family.add_metric(key, timestamp)
    return family


def _alert_family(alerts: Iterable[Any]) -> Metric:
    family = GaugeMetricFamily(
        f"{PREFIX}alert", "Active bottleneck alerts, like Prometheus's ALERTS series.", labels=ALERT_LABELS
    )
    for alert in alerts:
        rule = alert.verdict.rule
        family.add_metric(
            [rule.name, alert.state.value, rule.severity.value, rule.tier, alert.verdict.target], 1
        )
    return family


def _signal_family(signals: list[tuple[tuple[str, str], float]]) -> Metric:
    family = GaugeMetricFamily(
        f"{PREFIX}signal_value",
        "Bottleneck signals the classifier derives across tiers (read by `tierwatch rules`).",
        labels=["signal", "target"],
    )
    for key, value in signals:
        family.add_metric(key, value)
    return family


def _per_alertmanager(name: str, help_text: str, counts: tuple[tuple[str, int], ...]) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}{name}", help_text, labels=["alertmanager"])
    for alertmanager, count in counts:
        family.add_metric([alertmanager], count)
    return family


def _sent_family(counts: tuple[tuple[str, int], ...]) -> Metric:
    return _per_alertmanager(
        "alertmanager_alerts_sent_total", "Alerts in posts this Alertmanager accepted.", counts
    )


def _failed_family(counts: tuple[tuple[str, int], ...]) -> Metric:
    return _per_alertmanager(
        "alertmanager_alerts_failed_total",
        "Alerts in failed posts to this Alertmanager (refused, timed out, HTTP error); they are retried.",
        counts,
    )


def _dropped_family(dropped: int) -> Metric:
    return CounterMetricFamily(
        f"{PREFIX}alertmanager_alerts_dropped_total",
        "Resolutions never sent because the send queue was full.",
        value=dropped,
    )


def _tier_family(data: tuple[MetricSpec, list[_Series]]) -> Metric:
    spec, entries = data
    labels = ["target", *spec.labels]
    kind = CounterMetricFamily if spec.kind is Kind.COUNTER else GaugeMetricFamily
    family = kind(PREFIX + spec.name, spec.help + AS_OF, labels=labels)
    for target, label_values, value in entries:
        family.add_metric([target, *label_values], value)
    return family


class MetricsPage:
    def __init__(self, store: Store, specs: Specs, deliveries: CountDeliveries | None = None) -> None:
        self._store = store
        self._collector = StoreCollector(store, specs, deliveries)
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] = (-1, b"")
        # family name -> (family, its text) as of the last render; the collector yields the same
        # family object again when its data did not change, so its text is the same too.
        self._texts: dict[str, tuple[Metric, bytes]] = {}

    def render(self) -> bytes:
        with self._lock:
            version = self._store.version
            if self._cached[0] != version:
                self._cached = (version, self._render())
            return self._cached[1]

    def _render(self) -> bytes:
        texts, parts = {}, []
        for family in self._collector.collect():
            last = self._texts.get(family.name)
            text = last[1] if last is not None and last[0] is family else family_text(family)
            texts[family.name] = (family, text)
            parts.append(text)
        self._texts = texts
        return b"".join(parts)


def family_text(family: Metric) -> bytes:
    """The family in the text exposition format, byte for byte what prometheus_client's
    generate_latest writes for a gauge or counter family. Formatted here because generate_latest
    checks every label name against a regular expression on every line, the larger part of a
    render; the names here were fixed when the metrics were declared.

    Unlike generate_latest, it never raises on a label value that is no valid Unicode text: a name
    read from the environment keeps an undecodable byte as a lone surrogate, and one such value
    would otherwise cost every scrape the whole page. It becomes "?"."""
    name = f"{family.name}_total" if family.type == "counter" else family.name
    lines = [f"# HELP {name} {_escape_help(family.documentation)}\n# TYPE {name} {family.type}\n"]
    for sample in family.samples:
        value = floatToGoString(sample.value)
        if sample.labels:
            labels = ",".join(
                f'{key}="{_escape_label_value(text)}"' for key, text in sorted(sample.labels.items())
            )
            lines.append(f"{sample.name}{{{labels}}} {value}\n")
        else:
            lines.append(f"{sample.name} {value}\n")
    return "".join(lines).encode(errors="replace")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return _escape_help(text).replace('"', '\\"')
