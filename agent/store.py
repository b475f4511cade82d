"""A short window of samples per target, plus each target's collection status.

The exporter reads the latest sample of every target that is up; the classifier reads windows. The
window spans ``window_seconds`` with at most ``capacity`` samples: older samples are kept at least
``window_seconds / capacity`` apart, so memory stays bounded at a 1 s interval as at a 60 s one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType

from alerts.lifecycle import Alert
from collectors.base import Reason, Sample

TargetKey = tuple[str, str]  # (collector, target)


@dataclass(frozen=True, slots=True)
class TargetStatus:
    up: bool = False
    cycles: int = 0
    duration_seconds: float | None = None
    last_success_timestamp: float | None = None
    errors_total: Mapping[Reason, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(Reason, 0))
    )
    last_error: tuple[Reason, str] | None = None


class Ring:
    def __init__(self, window_seconds: float, capacity: int) -> None:
        self._spacing = window_seconds / capacity
        self._window_seconds = window_seconds
        self._samples: deque[Sample] = deque(maxlen=capacity)

    def add(self, sample: Sample) -> None:
        samples = self._samples
        if samples and sample.timestamp < samples[-1].timestamp:
            # The wall clock was set back (an NTP step): the history is on another time axis, and
            # every rate across the step would have a negative elapsed time, so none could be
            # computed until the clock caught up. The window starts again from this sample.
            samples.clear()
        # The newest sample is always kept; it replaces its predecessor when that one is too close to
        # the sample before it to be worth keeping as history.
        if len(samples) >= 2 and samples[-1].timestamp - samples[-2].timestamp < self._spacing:
            samples[-1] = sample
        else:
            samples.append(sample)
        while samples and sample.timestamp - samples[0].timestamp > self._window_seconds:
            samples.popleft()

    def snapshot(self) -> tuple[Sample, ...]:
        return tuple(self._samples)


class Store:
    def __init__(self, window_seconds: float = 900.0, capacity: int = 90) -> None:
        self._window_seconds = window_seconds
        self._capacity = capacity
        self._lock = threading.Lock()
        self._rings: dict[TargetKey, Ring] = {}
        self._latest: dict[TargetKey, Sample] = {}
        self._status: dict[TargetKey, TargetStatus] = {}
        self._alerts: tuple[Alert, ...] = ()
        self._signals: dict[tuple[str, str], float] = {}
        self.version = 0

    def register(self, collector: str, target: str) -> None:
        with self._lock:
            self._status.setdefault((collector, target), TargetStatus())
            self.version += 1

    def record_success(self, sample: Sample, duration: float) -> None:
        key = (sample.collector, sample.target)
        with self._lock:
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = Ring(self._window_seconds, self._capacity)
            ring.add(sample)
            self._latest[key] = sample
            status = self._status.get(key) or TargetStatus()
            # Built directly: dataclasses.replace() walks the fields by name on every cycle.
            self._status[key] = TargetStatus(
                up=True,
                cycles=status.cycles + 1,
                duration_seconds=duration,
                last_success_timestamp=sample.timestamp,
                errors_total=status.errors_total,
                last_error=None,
            )
            self.version += 1

    def carry_over(self, previous: Store, targets: Set[TargetKey]) -> None:
        """Takes from ``previous``, a reloaded configuration's store, the windows and statuses of
        ``targets`` (those registered here too), and its alerts until the next alerting cycle: a
        reload restarts no window, no `for` timer, no error count, and /readyz stays ready."""
        with previous._lock:
            rings = {key: ring.snapshot() for key, ring in previous._rings.items() if key in targets}
            latest, statuses = dict(previous._latest), dict(previous._status)
            alerts, signals = previous._alerts, dict(previous._signals)
        with self._lock:
            for key in self._status.keys() & statuses.keys() & targets:
                self._status[key] = statuses[key]
                if key in latest:
                    self._latest[key] = latest[key]
                ring = self._rings[key] = Ring(self._window_seconds, self._capacity)
                for sample in rings.get(key, ()):
                    ring.add(sample)
            self._alerts, self._signals = alerts, signals
            self.version += 1

    def record_failure(self, key: TargetKey, reason: Reason, detail: str, duration: float) -> None:
        with self._lock:
            # A target that is down exports no tier series: stale values would read as current.
            self._latest.pop(key, None)
            status = self._status.get(key) or TargetStatus()
            errors = dict(status.errors_total)
            errors[reason] += 1
            self._status[key] = TargetStatus(
                up=False,
                cycles=status.cycles + 1,
                duration_seconds=duration,
                last_success_timestamp=status.last_success_timestamp,
                errors_total=MappingProxyType(errors),
                last_error=(reason, detail),
            )
            self.version += 1

    def latest(self) -> list[Sample]:
        with self._lock:
            return list(self._latest.values())

    def window(self, collector: str, target: str) -> tuple[Sample, ...]:
        with self._lock:
            ring = self._rings.get((collector, target))
            return ring.snapshot() if ring else ()

    def windows(self) -> dict[TargetKey, tuple[Sample, ...]]:
        """Every registered target's window; empty for a target that is down, so rules see it unknown."""
        with self._lock:
            return {key: self._rings[key].snapshot() if key in self._latest else () for key in self._status}

    def set_alerts(self, alerts: tuple[Alert, ...], signals: dict[tuple[str, str], float]) -> None:
        """The active alerts, as the alert lifecycle last computed them, and the derived signal
        values the exported Prometheus rules need."""
        with self._lock:
            if alerts != self._alerts or signals != self._signals:
                self._alerts, self._signals = alerts, signals
                self.version += 1

    def signals(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return dict(self._signals)

    def alerts(self) -> tuple[Alert, ...]:
        with self._lock:
            return self._alerts

    def statuses(self) -> dict[TargetKey, TargetStatus]:
        with self._lock:
            return dict(self._status)

    def ready(self) -> bool:
        """True once every registered target has finished at least one cycle."""
        with self._lock:
            return bool(self._status) and all(status.cycles > 0 for status in self._status.values())
