"""Reads the fields the collector needs from API objects decoded as plain JSON.

The objects stay plain dicts (camelCase, as the API server sends them) rather than the client's typed
models: those models refuse objects with a missing "required" field, while a monitor must still read
what is there. The API omits zero and false fields (``readyReplicas`` of a Deployment with no ready
pod is absent), so absent counts read as 0; a field of the wrong type is an ``ObjectError`` naming it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import InvalidOperation
from typing import Any

from kubernetes.utils import parse_quantity

from collectors.base import as_finite

# HPA metric source type -> the key of its source object, in spec.metrics and status.currentMetrics.
METRIC_SOURCES = {
    "Resource": "resource",
    "ContainerResource": "containerResource",
    "Pods": "pods",
    "Object": "object",
    "External": "external",
}
TARGET_FIELDS = {"Utilization": "averageUtilization", "AverageValue": "averageValue", "Value": "value"}


class ObjectError(ValueError):
    """An API object lacks a field the collector needs, or holds one of the wrong type."""


def get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _optional_count(obj: Any, *path: str) -> int | None:
    value = get(obj, *path)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ObjectError(f"{'.'.join(path)} is not an integer: {value!r}")
    return value


def _count(obj: Any, *path: str, default: int = 0) -> int:
    value = _optional_count(obj, *path)
    return default if value is None else value


def _list(obj: Any, *path: str) -> list[Any]:
    """A list field; absent reads as empty, as the API omits empty lists."""
    value = get(obj, *path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ObjectError(f"{'.'.join(path)} is not a list: {value!r}")
    return value


def _str(obj: Any, *path: str) -> str:
    value = get(obj, *path)
    if not isinstance(value, str) or not value:
        raise ObjectError(f"{'.'.join(path)} is missing")
    return value


def timestamp(value: Any, where: str) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise ObjectError(f"{where} is not an RFC 3339 time: {value!r}") from None


def quantity(value: Any, where: str) -> float:
    """A Kubernetes quantity ("250m", "512Mi", "3") as a float in base units (cores, bytes)."""
    try:
        number = as_finite(parse_quantity(value))
    except (ValueError, TypeError, InvalidOperation):
        number = None
    if number is None:  # NaN or beyond a float would hide the HPA's other metrics in max(usage)
        raise ObjectError(f"{where} is not a quantity: {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Condition:
    status: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class HpaMetric:
    """One entry of spec.metrics with its current value from status.currentMetrics, when known.

    Utilization targets are ratios of the pods' requests (averageUtilization / 100); the other
    target types are values in the metric's base unit.
    """

    label: str
    target_type: str
    target: float | None
    current: float | None


@dataclass(frozen=True, slots=True)
class Hpa:
    name: str
    target_kind: str
    target_name: str
    min_replicas: int
    max_replicas: int
    current_replicas: int | None
    desired_replicas: int | None
    last_scale_time: float | None
    conditions: dict[str, Condition]
    metrics: tuple[HpaMetric, ...]
    # Whether status.currentMetrics holds at least one usable entry.
    has_current_metrics: bool


def metric_label(entry: Any) -> str | None:
    """A short, bounded name for an HPA metric entry: "resource/cpu", "pods/<metric>", ..."""
    kind = get(entry, "type")
    source = get(entry, METRIC_SOURCES.get(kind, "")) if isinstance(kind, str) else None
    if not isinstance(source, dict):
        return None  # status.currentMetrics holds {"type": ""} while metrics are unavailable
    if kind == "Resource":
        name = source.get("name")
    elif kind == "ContainerResource":
        name = f"{source.get('container')}/{source.get('name')}"
    else:
        name = get(source, "metric", "name")
    return f"{kind.lower()}/{name}" if name else None


def _metric_value(values: Any, value_type: str, where: str) -> float | None:
    field = TARGET_FIELDS.get(value_type)
    value = None if field is None else get(values, field)
    if field is None or value is None:
        return None
    if value_type == "Utilization":
        if isinstance(value, bool) or not isinstance(value, int | float) or as_finite(value) is None:
            raise ObjectError(f"{where}.averageUtilization is not a number: {value!r}")
        return value / 100
    return quantity(value, f"{where}.{field}")


def _source_identity(entry: Any, *, with_object: bool = True) -> str:
    """What tells an HPA's metrics apart: the whole source but its target or current value. Two
    External metrics of one name that select different queues share a label, not an identity."""
    left_out = ("target", "current") if with_object else ("target", "current", "describedObject")
    named = {key: value for key, value in _source(entry).items() if key not in left_out}
    return entry["type"] + json.dumps(named, sort_keys=True, default=str)


def _source(entry: Any) -> Any:
    """The part of a metric entry named by its type (``object`` for an Object metric)."""
    return get(entry, METRIC_SOURCES[entry["type"]])


def _hpa_metrics(spec_metrics: Any, current_metrics: Any) -> tuple[HpaMetric, ...]:
    currents = {}
    for entry in current_metrics if isinstance(current_metrics, list) else []:
        if metric_label(entry) is not None:
            current = get(_source(entry), "current")
            currents[_source_identity(entry)] = current
            # The HPA controller names the described object in the status only for a Value target; for
            # an AverageValue one it leaves it empty, so such an entry is found without it.
            if not any((get(_source(entry), "describedObject") or {}).values()):
                currents.setdefault(_source_identity(entry, with_object=False), current)
    metrics: list[HpaMetric] = []
    seen: Counter[str] = Counter()
    for index, entry in enumerate(spec_metrics if isinstance(spec_metrics, list) else []):
        label = metric_label(entry)
        if label is None:
            continue  # a source type newer than this collector
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"  # one series each, in the order the HPA lists them
        target = get(_source(entry), "target")
        target_type = str(get(target, "type"))
        where = f"spec.metrics[{index}]"
        metrics.append(
            HpaMetric(
                label,
                target_type,
                _metric_value(target, target_type, f"{where}.target"),
                _metric_value(
                    currents.get(_source_identity(entry))
                    or currents.get(_source_identity(entry, with_object=False)),
                    target_type,
                    f"status.currentMetrics of {label}",
                ),
            )
        )
    return tuple(metrics)


def parse_hpa(obj: Any) -> Hpa:
    name = _str(obj, "metadata", "name")
    try:
        conditions = {}
        for entry in _list(obj, "status", "conditions"):
            conditions[_str(entry, "type")] = Condition(
                str(get(entry, "status")), str(get(entry, "reason") or ""), str(get(entry, "message") or "")
            )
        current_metrics = get(obj, "status", "currentMetrics")
        last_scale = get(obj, "status", "lastScaleTime")
        if _count(obj, "spec", "maxReplicas") < 1:
            raise ObjectError("spec.maxReplicas is missing")
        return Hpa(
            name=name,
            target_kind=_str(obj, "spec", "scaleTargetRef", "kind"),
            target_name=_str(obj, "spec", "scaleTargetRef", "name"),
            # The API server defaults minReplicas to 1 and requires maxReplicas >= 1.
            min_replicas=_count(obj, "spec", "minReplicas", default=1),
            max_replicas=_count(obj, "spec", "maxReplicas"),
            current_replicas=_optional_count(obj, "status", "currentReplicas"),
            desired_replicas=_optional_count(obj, "status", "desiredReplicas"),
            last_scale_time=None if last_scale is None else timestamp(last_scale, "status.lastScaleTime"),
            conditions=conditions,
            metrics=_hpa_metrics(get(obj, "spec", "metrics"), current_metrics),
            has_current_metrics=any(
                metric_label(entry) is not None
                for entry in (current_metrics if isinstance(current_metrics, list) else [])
            ),
        )
    except ObjectError as error:
        raise ObjectError(f"HorizontalPodAutoscaler {name}: {error}") from None


def label_selector(selector: Any) -> str:
    """A LabelSelector object in the query syntax of the labelSelector parameter."""
    match_labels = get(selector, "matchLabels") or {}
    if not isinstance(match_labels, dict) or not all(isinstance(v, str) for v in match_labels.values()):
        raise ObjectError(f"spec.selector.matchLabels is not a map of strings: {match_labels!r}")
    parts = [f"{key}={value}" for key, value in sorted(match_labels.items())]
    for expression in _list(selector, "matchExpressions"):
        key, operator = _str(expression, "key"), get(expression, "operator")
        listed = _list(expression, "values")
        if not all(isinstance(value, str) for value in listed):
            raise ObjectError(f"selector values of {key} are not strings: {listed!r}")
        values = ",".join(listed)
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(key)
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ObjectError(f"selector operator {operator!r} is not one of In, NotIn, Exists, DoesNotExist")
    if not parts:
        # An empty selector selects every pod of the namespace: never what a Deployment means.
        raise ObjectError("spec.selector is empty")
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    uid: str
    selector: str
    desired: int
    updated: int
    ready: int
    available: int
    unavailable: int


def parse_deployment(obj: Any) -> Deployment:
    name = _str(obj, "metadata", "name")
    try:
        return Deployment(
            name=name,
            uid=_str(obj, "metadata", "uid"),
            selector=label_selector(get(obj, "spec", "selector")),
            desired=_count(obj, "spec", "replicas", default=1),
            updated=_count(obj, "status", "updatedReplicas"),
            ready=_count(obj, "status", "readyReplicas"),
            available=_count(obj, "status", "availableReplicas"),
            unavailable=_count(obj, "status", "unavailableReplicas"),
        )
    except ObjectError as error:
        raise ObjectError(f"Deployment {name}: {error}") from None


def controller_uid(obj: Any) -> str | None:
    """The uid of the object's managing controller (the ownerReference with controller: true)."""
    name = get(obj, "metadata", "name")
    try:
        owners = _list(obj, "metadata", "ownerReferences")
    except ObjectError as error:
        raise ObjectError(f"{name}: {error}") from None
    for owner in owners:
        if get(owner, "controller") is True:
            owner_uid = get(owner, "uid")
            if not isinstance(owner_uid, str) or not owner_uid:
                raise ObjectError(f"{name}: the controller in metadata.ownerReferences has no uid")
            return owner_uid
    return None


def uid(obj: Any) -> str:
    """The object's own uid, which the owner references of its dependents hold."""
    try:
        return _str(obj, "metadata", "uid")
    except ObjectError as error:
        raise ObjectError(f"{get(obj, 'metadata', 'name')}: {error}") from None


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    created: float
    # Placed on a node: until then a pod waits for room (a node the cluster autoscaler adds, or
    # none), and its not being ready says nothing about the app.
    scheduled: bool
    ready: bool
    restarts: int
    owner_uid: str | None


def _condition_true(conditions: list[Any], condition_type: str) -> bool:
    return any(
        get(condition, "type") == condition_type and get(condition, "status") == "True"
        for condition in conditions
    )


def parse_pod(obj: Any) -> Pod | None:
    """The pod, or None when it no longer counts as an instance: terminating, Succeeded or Failed
    (evicted pods of a Deployment stay listed as Failed until they are garbage collected)."""
    name = _str(obj, "metadata", "name")
    if get(obj, "metadata", "deletionTimestamp") or get(obj, "status", "phase") in ("Succeeded", "Failed"):
        return None
    try:
        created = timestamp(_str(obj, "metadata", "creationTimestamp"), "metadata.creationTimestamp")
        conditions = _list(obj, "status", "conditions")
        restarts = sum(_count(status, "restartCount") for status in _list(obj, "status", "containerStatuses"))
    except ObjectError as error:
        raise ObjectError(f"Pod {name}: {error}") from None
    return Pod(
        name,
        created,
        # A pod just created has no conditions until the scheduler has tried it: not yet scheduled.
        _condition_true(conditions, "PodScheduled"),
        _condition_true(conditions, "Ready"),
        restarts,
        controller_uid(obj),
    )
