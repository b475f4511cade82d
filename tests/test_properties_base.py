"""Properties of the pieces every collector shares, and the checks the other property tests apply.

Issue 9 "Bad input": parsers raise nothing but ``CollectorError`` and no collector emits a NaN or
infinite value, nor a ``_ratio`` outside [0, 1] where the metric is a share. Each
``tests/test_properties_<tier>.py`` states which of its ``_ratio`` series are shares and why the others
may exceed 1, and ``check_ratio_sets`` keeps that list complete when a metric is added.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from collectors.base import CollectorError, Kind, MetricSpec, Sample, SampleBuilder
from collectors.deltas import Deltas

# Examples per property: the whole set of property tests must stay well under 20 s in the suite;
# TIERWATCH_EXAMPLES=20 searches twenty times as long. No deadline: the first example of a test pays
# for imports and, for the host tests, for creating directories.
SCALE = float(os.environ.get("TIERWATCH_EXAMPLES", "1"))
FAST = settings(max_examples=int(60 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(
    max_examples=int(120 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Numbers a parser should meet only from a broken or hostile peer: beyond a float, not finite, negative.
ODD_INTS = st.sampled_from([10**400, -(10**400), 2**64 + 1, 2**63, -(2**63), 10**30, -1, 0])
NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    ODD_INTS,
)

T = TypeVar("T")


def mostly(usual: st.SearchStrategy[T], odd: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` nine times in ten: a cycle stopped by the first malformed field tests little else."""
    return st.integers(0, 9).flatmap(lambda roll: odd if roll == 0 else usual)


class Counters:
    """The named counters of one generated peer across its cycles: each starts at a value drawn from
    ``starts`` and grows by one drawn from ``steps`` each cycle (the generator sets ``cycle``); ``shown``
    turns the sum into what the peer reports, wrapped or capped at its integer width."""

    def __init__(
        self,
        draw: st.DrawFn,
        starts: st.SearchStrategy[int],
        steps: st.SearchStrategy[int],
        shown: Callable[[int], int],
    ) -> None:
        self._draw = draw
        self._starts, self._steps, self._shown = starts, steps, shown
        self._counters: dict[str, tuple[int, int]] = {}
        self.cycle = 0

    def __call__(self, name: str) -> int:
        if name not in self._counters:
            start = self._draw(self._starts, label=name)
            self._counters[name] = (start, self._draw(self._steps, label=name))
        start, step = self._counters[name]
        return self._shown(start + self.cycle * step)


def check_sample(sample: Sample, shares: Iterable[str]) -> None:
    """No NaN or infinite value anywhere, and every share within [0, 1]."""
    share_names = set(shares)
    for (name, labels), value in sample.values.items():
        assert isinstance(value, float), (name, labels, value)
        assert math.isfinite(value), (name, labels, value)
        if name in share_names:
            assert 0.0 <= value <= 1.0, (name, labels, value)


def check_cycle(
    collect: Callable[[], Sample], shares: Collection[str], error_chars: int = 30
) -> Sample | None:
    """One cycle of a collector under generated input: its sample passes ``check_sample`` and each share
    it holds is noted as a hypothesis event; a ``CollectorError`` is noted by the start of its detail and
    gives None (the next cycle still runs)."""
    try:
        sample = collect()
    except CollectorError as error:
        event(f"error {error.detail[:error_chars]}")
        return None
    for share in set(shares) & {name for name, _ in sample.values}:
        event(f"{share} emitted")
    check_sample(sample, shares)
    return sample


def check_ratio_sets(
    metrics: Iterable[MetricSpec], shares: Iterable[str], not_shares: Mapping[str, str]
) -> None:
    """Every ``_ratio`` series of a collector is decided: a share, or not one for a stated reason."""
    ratios = {spec.name for spec in metrics if "_ratio" in spec.name}
    assert ratios == set(shares) | set(not_shares), "decide for every _ratio series whether it is a share"
    assert not set(shares) & set(not_shares)


@THOROUGH
@given(value=st.one_of(NUMBERS, st.booleans()))
def test_sample_builder_keeps_only_finite_values(value: float) -> None:
    builder = SampleBuilder((MetricSpec("x", Kind.GAUGE, ""),))
    builder.set("x", value)
    stored = builder.build("c", "t", 0.0).get("x")
    assert stored is None or math.isfinite(stored)


@THOROUGH
@given(numerator=NUMBERS, denominator=NUMBERS)
def test_sample_builder_ratio_is_finite_or_absent(numerator: float, denominator: float) -> None:
    builder = SampleBuilder((MetricSpec("x_ratio", Kind.GAUGE, ""),))
    builder.ratio("x_ratio", numerator, denominator)
    stored = builder.build("c", "t", 0.0).get("x_ratio")
    assert stored is None or math.isfinite(stored)


@THOROUGH
@given(values=st.lists(NUMBERS, min_size=1, max_size=6))
def test_deltas_are_finite_increases_or_unknown(values: list[float]) -> None:
    deltas = Deltas()
    for now, value in enumerate(values):
        deltas.begin(float(now))
        delta = deltas.delta("counter", value)
        # A counter that went down, or that is not a finite number, gives no increase rather than a
        # negative or NaN one that a ratio or a rate would carry into a series.
        assert delta is None or (math.isfinite(delta) and delta >= 0), (values, delta)
