"""The rule table as Prometheus alerting rules over tierwatch's own metrics (``tierwatch rules``).

Conditions translate one to one: a comparison filters its signal's series, ``and``/``or`` join parts
on ``target`` (or on nothing when a part is global), "not true" becomes ``unless``. A missing series
is simply no result in PromQL, which matches the classifier: a rule never fires on a missing signal.
Summaries keep their figures through ``query`` template calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from alerts.conditions import AllOf, AnyOf, Compare, Condition, NotTrue, Scope, WhenPresent
from alerts.rules import Rule
from alerts.signals import Registry
from collectors.base import Unit

GROUP = "tierwatch"
_HUMANIZE = {
    Unit.RATIO: "humanizePercentage",
    Unit.PER_SECOND: 'printf "%.3g/s"',
    Unit.SECONDS: "humanizeDuration",
    Unit.BYTES: "humanize1024",
    Unit.COUNT: 'printf "%.3g"',
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class Translator:
    def __init__(self, rule: Rule, signals: Registry) -> None:
        self._rule = rule
        self._signals = signals

    def scope(self, condition: Condition) -> Scope:
        targeted = any(self._signals[name].scope is Scope.TARGET for name in condition.signals())
        return Scope.TARGET if targeted else Scope.GLOBAL

    def split(self, condition: Condition) -> str | None:
        """The split label of a condition's signals (``hpa``), or None."""
        return next((s for name in condition.signals() if (s := self._signals[name].split)), None)

    def expression(self, condition: Condition) -> str:
        if isinstance(condition, Compare):
            threshold = self._rule.thresholds[condition.threshold]
            return f"{self._signals[condition.signal].promql('')} {condition.op} {threshold:g}"
        if isinstance(condition, WhenPresent):
            return self.expression(condition.part)
        if isinstance(condition, AnyOf):
            if len({self.scope(part) for part in condition.parts}) > 1:
                raise ValueError(f"{self._rule.name}: 'any of' mixes target and global parts")
            return " or ".join(f"({self.expression(part)})" for part in condition.parts)
        if isinstance(condition, AllOf):
            return self._all_of(condition)
        raise ValueError(f"{self._rule.name}: a 'not true' part needs an 'all of' around it")

    def _all_of(self, condition: AllOf) -> str:
        positives = [part for part in condition.parts if not isinstance(part, NotTrue)]
        negatives = [part.part for part in condition.parts if isinstance(part, NotTrue)]
        # The first part decides the labels of the result: a per-target part when there is one.
        positives.sort(key=lambda part: self.scope(part) is not Scope.TARGET)
        if not positives:
            raise ValueError(f"{self._rule.name}: 'all of' needs a part that is not 'not true'")
        text = f"({self.expression(positives[0])})"
        for part in positives[1:]:
            text += f" and {self._on(positives[0], part)} ({self.expression(part)})"
        for part in negatives:
            text += f" unless {self._on(positives[0], part)} ({self.expression(part)})"
        return text

    def _on(self, left: Condition, right: Condition) -> str:
        if self.scope(left) is not Scope.TARGET or self.scope(right) is not Scope.TARGET:
            return "on()"
        split = self.split(left)
        return f"on(target, {split})" if split and split == self.split(right) else "on(target)"

    def rule_expression(self) -> str:
        parts = []
        for collector, condition in self._rule.when.items():
            text = self.expression(condition)
            if not isinstance(self._rule.summary, str):
                # The summary differs by collector: the alert carries which one it came from.
                text = f'label_replace({text}, "collector", "{collector}", "", "")'
            split = self.split(condition)
            if split:
                # Judged per split value, named "<target>/<value>" as the agent names it; the
                # original target stays as label "namespace" for the summary's queries.
                text = (
                    f'label_join(label_replace({text}, "namespace", "$1", "target", "(.*)"), '
                    f'"target", "/", "target", "{split}")'
                )
            parts.append(f"({text})")
        return " or ".join(parts)

    def remediation(self) -> str:
        text = self._rule.remediation
        for condition, alternative in reversed(self._rule.remediation_if):
            query = f"query `{self.expression(condition)}`"
            text = f"{{{{ with {query} }}}}{alternative}{{{{ else }}}}{text}{{{{ end }}}}"
        return text

    def summary(self) -> str:
        summary = self._rule.summary
        if isinstance(summary, str):
            return self._with_figures(summary)
        *choices, (_, last) = summary.items()
        text = self._with_figures(last)
        for collector, template in reversed(choices):
            chosen = f'{{{{ if eq $labels.collector "{collector}" }}}}{self._with_figures(template)}'
            text = f"{chosen}{{{{ else }}}}{text}{{{{ end }}}}"
        return text

    def _with_figures(self, template: str) -> str:
        return _PLACEHOLDER.sub(lambda match: self._figure(match.group(1)), template)

    def _figure(self, name: str) -> str:
        if name == "target":
            return "{{ $labels.target }}"
        signal = self._signals[name]
        # Indexed verbs: a signal's PromQL may name its series more than once (a quotient, say), and
        # each mention takes the same label values.
        if signal.split:
            matchers = f"target=%[1]q,{signal.split}=%[2]q"
            query = f"printf `{signal.promql(matchers)}` $labels.namespace $labels.{signal.split} | query"
        elif signal.scope is Scope.TARGET:
            query = f"printf `{signal.promql('target=%[1]q')}` $labels.target | query"
        else:
            query = f"query `{signal.promql('')}`"
        value = f"{{{{ . | first | value | {_HUMANIZE[signal.unit]} }}}}"
        return f"{{{{ with {query} }}}}{value}{{{{ else }}}}unknown{{{{ end }}}}"


def prometheus_rule(rule: Rule, signals: Registry, runbook_base_url: str) -> dict[str, Any]:
    translator = Translator(rule, signals)
    return {
        "alert": rule.name,
        "expr": translator.rule_expression(),
        "for": _duration(rule.for_seconds),
        "keep_firing_for": _duration(rule.keep_firing_seconds),
        "labels": {"severity": rule.severity.value, "tier": rule.tier},
        "annotations": {
            "summary": translator.summary(),
            "remediation": translator.remediation(),
            "runbook_url": runbook_base_url + rule.runbook,
        },
    }


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole units only ("2.5s" and "1e+06s" are refused)."""
    milliseconds = round(seconds * 1000)
    whole, rest = divmod(milliseconds, 1000)
    return f"{whole}s" if not rest else f"{milliseconds}ms"


def prometheus_rules(rules: Iterable[Rule], signals: Registry, runbook_base_url: str = "") -> str:
    group = {
        "name": GROUP,
        "rules": [prometheus_rule(rule, signals, runbook_base_url) for rule in rules if rule.enabled],
    }
    return yaml.safe_dump({"groups": [group]}, sort_keys=False, width=1000, allow_unicode=True)
