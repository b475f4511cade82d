"""The collector contract: one method, ``collect() -> Sample``, plain values in base units.

Prometheus types appear only in the exporter; a collector declares its series as ``MetricSpec`` data
and fills a ``Sample`` through ``SampleBuilder``, which refuses NaN and infinite values so that no
ratio with a zero denominator ever leaves a collector.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar


class Reason(StrEnum):
    """Why a cycle failed; the fixed value set of ``tierwatch_collector_errors_total{reason}``."""

    TIMEOUT = "timeout"
    AUTH = "auth"
    UNREACHABLE = "unreachable"
    PERMISSION = "permission"
    PARSE = "parse"
    OTHER = "other"


class CollectorError(Exception):
    """A failed cycle. ``detail`` is for logs only and must already be free of secrets."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported series family, without the ``tierwatch_`` prefix and without the target label."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


LabelValues = tuple[str, ...]
SeriesKey = tuple[str, LabelValues]
_EMPTY: Mapping[str, object] = MappingProxyType({})


def as_finite(value: float) -> float | None:
    """The value as a float; None when it is NaN, infinite or an integer beyond a float's range."""
    try:
        number = float(value)
    except OverflowError:  # float(10**400): a peer's digits can outgrow any float
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class Sample:
    """What one cycle of one collector saw of one target."""

    collector: str
    target: str
    timestamp: float
    values: Mapping[SeriesKey, float]
    details: Mapping[str, object] = field(default_factory=lambda: _EMPTY)

    def get(self, name: str, *labels: str) -> float | None:
        return self.values.get((name, labels))

    def series(self, name: str) -> dict[LabelValues, float]:
        return {labels: value for (metric, labels), value in self.values.items() if metric == name}


class SampleBuilder:
    def __init__(self, specs: tuple[MetricSpec, ...]) -> None:
        self._label_counts = {spec.name: len(spec.labels) for spec in specs}
        self._values: dict[SeriesKey, float] = {}
        self._details: dict[str, object] = {}

    def set(self, name: str, value: float, *labels: str) -> None:
        expected = self._label_counts.get(name)
        if expected is None:
            raise KeyError(f"series {name!r} is not declared by this collector")
        if len(labels) != expected:
            raise ValueError(f"series {name!r} takes {expected} label values, got {len(labels)}")
        number = as_finite(value)
        if number is not None:
            self._values[(name, labels)] = number

    def ratio(self, name: str, numerator: float, denominator: float, *labels: str) -> None:
        """Sets numerator/denominator, or nothing when the denominator is zero: unknown, not 0 or Inf."""
        if denominator > 0:
            try:
                quotient = numerator / denominator
            except OverflowError:  # an integer operand or the quotient beyond a float: unknown too
                return
            self.set(name, quotient, *labels)

    def detail(self, key: str, value: object) -> None:
        self._details[key] = value

    def build(self, collector: str, target: str, timestamp: float) -> Sample:
        return Sample(
            collector, target, timestamp, MappingProxyType(self._values), MappingProxyType(self._details)
        )


class Column(StrEnum):
    """The USE-method columns of ``tierwatch check``."""

    UTILIZATION = "utilization"
    SATURATION = "saturation"
    ERRORS = "errors"


class Unit(StrEnum):
    RATIO = "ratio"
    BYTES = "bytes"
    PER_SECOND = "per_second"
    SECONDS = "seconds"
    COUNT = "count"

    def format(self, value: float) -> str:
        """Short human form: 57%, 12.5/s, 8 ms, 1.2 GiB."""
        if self is Unit.RATIO:
            return f"{value:.0%}"
        if self is Unit.PER_SECOND:
            return f"{value:.3g}/s"
        if self is Unit.SECONDS:
            return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"
        if self is Unit.BYTES:
            for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
                if value >= scale:
                    return f"{value / scale:.1f} {suffix}"
            return f"{value:.0f} B"
        return f"{value:.3g}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One figure of ``tierwatch check``: a series, aggregated over its label values by max or sum."""

    column: Column
    label: str
    metric: str
    unit: Unit
    aggregate: str = "max"

    def value(self, sample: Sample) -> float | None:
        values = sample.series(self.metric).values()
        if not values:
            return None
        return max(values) if self.aggregate == "max" else sum(values)


class Collector(ABC):
    """A tier collector for one target. Subclasses declare ``name``, ``tier``, ``metrics`` and the
    ``readings`` that ``tierwatch check`` shows for it."""

    name: ClassVar[str]
    tier: ClassVar[str]
    metrics: ClassVar[tuple[MetricSpec, ...]]
    readings: ClassVar[tuple[Reading, ...]] = ()

    def __init__(self, target: str) -> None:
        self.target = target

    @abstractmethod
    def collect(self) -> Sample:
        """One cycle. Raises only ``CollectorError`` for failures it can name."""

    def describe(self) -> str:
        """What this collector monitors, for the start-up log line; never contains a secret."""
        return self.target

    def close(self) -> None:  # noqa: B027 - most collectors hold nothing
        """Releases held connections; the default holds none."""

    def builder(self) -> SampleBuilder:
        return SampleBuilder(self.metrics)
