"""Conditions over named signals, in three-valued logic: a missing signal makes a comparison unknown.

The same condition tree renders to PromQL for ``tierwatch rules``: per-target signals carry exactly a
``target`` label and global signals none, so ``and``/``unless`` match on ``target`` or on nothing.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

Truth = bool | None  # None: unknown
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


class Scope(Enum):
    TARGET = "target"  # a value per target of the rule's subject
    GLOBAL = "global"  # one value for the whole agent (another tier's state)


@dataclass(frozen=True, slots=True)
class Compare:
    signal: str
    op: str
    threshold: str  # a key of the rule's thresholds, so every number is overridable

    def evaluate(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Truth:
        value = signals.get(self.signal)
        if value is None:
            return None
        return _OPERATORS[self.op](value, thresholds[self.threshold])

    def signals(self) -> Iterator[str]:
        yield self.signal

    def held(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Iterator[str]:
        """The signals whose comparisons hold: what made the verdict true."""
        if self.evaluate(signals, thresholds):
            yield self.signal

    def thresholds(self) -> Iterator[str]:
        yield self.threshold


@dataclass(frozen=True, slots=True)
class _Group:
    parts: tuple[Condition, ...]

    def signals(self) -> Iterator[str]:
        for part in self.parts:
            yield from part.signals()

    def held(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Iterator[str]:
        for part in self.parts:
            yield from part.held(signals, thresholds)

    def thresholds(self) -> Iterator[str]:
        for part in self.parts:
            yield from part.thresholds()


@dataclass(frozen=True, slots=True)
class AllOf(_Group):
    def evaluate(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Truth:
        results = [part.evaluate(signals, thresholds) for part in self.parts]
        if False in results:
            return False
        return None if None in results else True


@dataclass(frozen=True, slots=True)
class AnyOf(_Group):
    def evaluate(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Truth:
        results = [part.evaluate(signals, thresholds) for part in self.parts]
        if True in results:
            return True
        return None if None in results else False


@dataclass(frozen=True, slots=True)
class NotTrue:
    """True when the part is false or unknown: "while the app tier is not saturated (or unknown)"."""

    part: Condition

    def evaluate(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Truth:
        return self.part.evaluate(signals, thresholds) is not True

    def held(self, _signals: Mapping[str, float], _thresholds: Mapping[str, float]) -> Iterator[str]:
        yield from ()  # an absence holds; no signal made it

    def signals(self) -> Iterator[str]:
        yield from self.part.signals()

    def thresholds(self) -> Iterator[str]:
        yield from self.part.thresholds()


@dataclass(frozen=True, slots=True)
class WhenPresent:
    """Supplementary evidence: a missing signal counts as false rather than unknown (PSI, absent on
    older kernels, must not leave a verdict unknown when the main signals were judged)."""

    part: Condition

    def evaluate(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Truth:
        return self.part.evaluate(signals, thresholds) is True

    def held(self, signals: Mapping[str, float], thresholds: Mapping[str, float]) -> Iterator[str]:
        yield from self.part.held(signals, thresholds)

    def signals(self) -> Iterator[str]:
        yield from self.part.signals()

    def thresholds(self) -> Iterator[str]:
        yield from self.part.thresholds()


Condition = Compare | AllOf | AnyOf | NotTrue | WhenPresent


def all_of(*parts: Condition) -> AllOf:
    return AllOf(parts)


def any_of(*parts: Condition) -> AnyOf:
    return AnyOf(parts)
