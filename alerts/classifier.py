"""The classifier: a pure function of (windows, rules, signals) -> verdicts, one per rule and target.

A verdict is true, false or unknown (a signal it needs is missing, or a ratio had no denominator).
When a root-cause rule holds somewhere (DatabaseBound, say), every other tier's verdict that holds
names it in its evidence, so the symptom points at the cause.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from alerts.conditions import Scope, Truth
from alerts.rules import Rule
from alerts.signals import Registry, Signal, Window, Windows

UNKNOWN_TEXT = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    rule: Rule
    collector: str
    target: str
    truth: Truth
    evidence: Mapping[str, float]
    summary: str
    remediation: str = ""
    details: Mapping[str, object] = field(default_factory=dict)  # the target's evidence beyond numbers
    missing: tuple[str, ...] = ()
    target_down: bool = False  # judged on an empty window: stands for the target's split subjects too
    because: tuple[str, ...] = ()  # the signals whose comparisons held
    root_causes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.remediation:
            object.__setattr__(self, "remediation", self.rule.remediation)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule.name, self.collector, self.target)


class _Formatted(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return UNKNOWN_TEXT


def _summary(
    rule: Rule, collector: str, target: str, evidence: Mapping[str, float], signals: Registry
) -> str:
    values = _Formatted({name: signals[name].unit.format(value) for name, value in evidence.items()})
    values["target"] = target
    return rule.summary_for(collector).format_map(values)


def classify(windows: Windows, rules: Iterable[Rule], signals: Registry) -> list[Verdict]:
    """Judges every enabled rule for every target of its subjects. Targets that are down are passed
    with an empty window: their signals are missing and their verdicts unknown."""
    global_values = {
        name: value
        for name, signal in signals.items()
        if signal.scope is Scope.GLOBAL and (value := signal.for_all(windows)) is not None
    }
    _add_derived(global_values, [s for s in signals.values() if s.scope is Scope.GLOBAL])

    by_collector: dict[str, list[tuple[str, Window]]] = {}
    for (source, target), window in sorted(windows.items()):
        by_collector.setdefault(source, []).append((target, window))
    verdicts = []
    for rule in rules:
        if not rule.enabled:
            continue
        needed, judged_on = _plan(rule, signals)
        for collector, condition in rule.when.items():
            for target, window in by_collector.get(collector, ()):
                for subject, values in _subjects(target, window, collector, needed, global_values):
                    evidence = {s.name: values[s.name] for s in needed if s.name in values}
                    truth = condition.evaluate(values, rule.thresholds)
                    remediation, advised_by = _remediation(rule, values)
                    verdicts.append(
                        Verdict(
                            rule=rule,
                            collector=collector,
                            target=subject,
                            truth=truth,
                            evidence=MappingProxyType(evidence),
                            summary=_summary(rule, collector, subject, evidence, signals),
                            remediation=remediation,
                            details=window[-1].details if window else {},
                            target_down=not window,
                            missing=tuple(name for name in judged_on[collector] if name not in values),
                            because=_because(condition.held(values, rule.thresholds), advised_by)
                            if truth
                            else (),
                        )
                    )

    return _name_root_causes(verdicts)


def _subjects(
    target: str, window: Window, collector: str, needed: list[Signal], global_values: dict[str, float]
) -> Iterator[tuple[str, dict[str, float]]]:
    """What one rule is judged on within a target: the target itself, or each value of its split
    label (each HPA of a namespace, named ``namespace/hpa``)."""
    values = dict(global_values)
    own = [s for s in needed if s.scope is Scope.TARGET and s.subject == collector]
    for signal in own:
        if signal.split is None and not signal.derived:
            value = signal.for_target(window)
            if value is not None:
                values[signal.name] = value
    _add_derived(values, own)
    splits = {s.name: s.for_split(window) for s in needed if s.subject == collector and s.split is not None}
    keys = sorted({key for per_key in splits.values() for key in per_key})
    if not keys:
        yield target, values  # no split values seen (or no split at all): one subject
        return
    for key in keys:
        yield f"{target}/{key}", {**values, **{name: v[key] for name, v in splits.items() if key in v}}


def belongs_to(subject: str, target: str) -> bool:
    """Whether a verdict's subject is ``target`` itself or one of its split subjects."""
    return subject == target or subject.startswith(f"{target}/")


def _remediation(rule: Rule, values: Mapping[str, float]) -> tuple[str, tuple[str, ...]]:
    """The advice for these values, and the signals that chose an alternative to the rule's own."""
    for condition, text in rule.remediation_if:
        if condition.evaluate(values, rule.thresholds):
            return text, tuple(condition.held(values, rule.thresholds))
    return rule.remediation, ()


def _because(held: Iterable[str], advised_by: tuple[str, ...]) -> tuple[str, ...]:
    # The advice may point at "because": it must name the signals that chose it too.
    return tuple(dict.fromkeys([*held, *advised_by]))


# What classify works out once per rule object: the rule table is fixed until a reload builds new
# rule objects, and walking the condition trees anew on every cycle costs more than judging them.
# Entries hold the rule and registry they were made for, so a recycled id() never matches.
_PLANS: dict[tuple[int, int], tuple[Rule, Registry, list[Signal], dict[str, tuple[str, ...]]]] = {}
MAX_PLANS = 512


def _plan(rule: Rule, signals: Registry) -> tuple[list[Signal], dict[str, tuple[str, ...]]]:
    """The signals a rule needs (inputs first) and, per collector, the signals its condition reads."""
    key = (id(rule), id(signals))
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is rule and cached[1] is signals:
        return cached[2], cached[3]
    if len(_PLANS) >= MAX_PLANS:  # reloads leave old rule objects behind
        _PLANS.clear()
    needed = _with_inputs(rule.signal_names(), signals)
    judged_on = {collector: tuple(condition.signals()) for collector, condition in rule.when.items()}
    _PLANS[key] = (rule, signals, needed, judged_on)
    return needed, judged_on


def _with_inputs(names: list[str], signals: Registry) -> list[Signal]:
    """The signals a rule names plus, before each derived one, the signals it is computed from."""
    ordered: dict[str, Signal] = {}

    def visit(name: str) -> None:
        signal = signals[name]
        for source in signal.inputs:
            visit(source)
        ordered.setdefault(name, signal)

    for name in names:
        visit(name)
    return list(ordered.values())


def _add_derived(values: dict[str, float], signals: list[Signal]) -> None:
    for signal in signals:
        if signal.derived and (value := signal.from_values(values)) is not None:
            values[signal.name] = value


def _name_root_causes(verdicts: list[Verdict]) -> list[Verdict]:
    causes = [v for v in verdicts if v.truth and v.rule.root_cause]
    if not causes:
        return verdicts
    return [replace(verdict, root_causes=_causes_elsewhere(verdict, causes)) for verdict in verdicts]


def _causes_elsewhere(verdict: Verdict, causes: list[Verdict]) -> tuple[str, ...]:
    if not verdict.truth:
        return ()
    return tuple(
        f"{cause.rule.name} on {cause.collector}/{cause.target}"
        for cause in causes
        if cause.rule.tier != verdict.rule.tier
    )
