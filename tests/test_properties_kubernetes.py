"""Bad input for the Kubernetes collector: the recorded API objects of tests/data/kubernetes with fields
removed or replaced by values of another type, of odd size or no meaning.

The API server validates what it stores, so such objects come only from a broken or foreign server,
a proxy in between, or a future API version; the collector is driven through a stand-in for its four
API reads (the HTTP layer has tests of its own in test_kubernetes_collector.py).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from collectors.kubernetes.api import KubeApi, ObjectNotFound
from collectors.kubernetes.collector import KubernetesCollector
from collectors.kubernetes.metrics import KUBERNETES_METRICS
from collectors.kubernetes.objects import ObjectError, get, parse_deployment, parse_hpa, parse_pod
from tests.fixtures.kube_api import RECORDED_AT, RESOURCES, load, selects, shift_times
from tests.test_properties_base import THOROUGH, check_cycle, check_ratio_sets

SHARES = {"kubernetes_deployment_new_pods_not_ready_ratio"}
NOT_SHARES = {
    # Utilization is of the pods' requests: a pod may use more than it requested, up to its limit.
    "kubernetes_hpa_metric_target_utilization_ratio": "a target of 150% of requests is valid",
    "kubernetes_hpa_metric_current_utilization_ratio": "pods can use more than they request",
    "kubernetes_hpa_usage_to_target_ratio": "above 1 is the HPA wanting more replicas",
}
# As recorded: what a generated namespace serves is shifted when it is drawn (see namespaces).
RECORDED = {resource: load(f"{resource}.json")["items"] for resource in RESOURCES}
# The keys the collector reads, at any depth; mutating only paths made of them (and list indexes)
# keeps the search on what matters rather than on image names and tolerations.
READ = frozenset(
    """metadata name uid ownerReferences controller creationTimestamp deletionTimestamp labels app tier
    spec scaleTargetRef kind minReplicas maxReplicas metrics type resource pods object external
    containerResource container metric target current averageUtilization averageValue value status
    currentReplicas desiredReplicas lastScaleTime conditions reason message currentMetrics selector
    matchLabels matchExpressions key operator values replicas updatedReplicas readyReplicas
    availableReplicas unavailableReplicas phase containerStatuses restartCount""".split()  # noqa: SIM905 - six lines, not fifty
)

Path = tuple[str | int, ...]
odd_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([-1, 0, 2**31, 2**63, 10**400, -(10**400)]),
        st.floats(),  # json.loads reads NaN and Infinity
        st.sampled_from(["", "0", "-5", "1e400", "NaN", "250m", "1Ki", "+Inf", "True", "In", "Deployment"]),
        st.sampled_from(["2024-05-14T10:00:00Z", "0001-01-01T00:00:00", "9999-12-31T23:59:59", "not a time"]),
        st.text(max_size=6),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=5,
)


def paths(obj: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path under ``obj`` made of list indexes and keys the collector reads."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        if isinstance(key, str) and key not in READ:
            continue
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, obj: Any) -> Any:
    """``obj`` with up to three fields removed or replaced by an odd value."""
    obj = copy.deepcopy(obj)
    for _ in range(draw(st.integers(0, 3))):
        candidates = list(paths(obj))
        if not candidates:
            break
        *parent_path, key = draw(st.sampled_from(candidates))
        parent = obj
        for step in parent_path:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = draw(odd_values)
    return obj


@st.composite
def namespaces(draw: st.DrawFn) -> dict[str, list[Any]]:
    """What the API serves: the recorded objects, each one mutated now and then, and now and then a
    list item that is not an object at all.

    The times are shifted as the stand-in API server shifts them, at each draw rather than once: web's
    scale-up pods were 90 s old when recorded, inside the collector's 120 s new-pod window for only
    30 s after a shift, and the unready share exists only for new pods. One draw in two mutates the
    pods alone: any broken object before them ends the cycle, so the share would rarely be reached."""
    recorded = shift_times(RECORDED, datetime.now(UTC) - RECORDED_AT)
    pods_only = draw(st.booleans())
    served = {}
    for resource, items in recorded.items():
        if pods_only and resource != "pods":
            served[resource] = items
            continue
        chosen = [draw(st.one_of(st.just(item), mutated(item))) for item in items]
        if draw(st.integers(0, 29)) == 0:
            chosen.insert(draw(st.integers(0, len(chosen))), draw(odd_values))
        served[resource] = chosen
    return served


class StandInApi:
    """The collector's four reads over the generated objects, selecting by label as the server does."""

    namespace = "shop"

    def __init__(self, served: dict[str, list[Any]]) -> None:
        self._served = served

    def close(self) -> None:
        pass

    def list_hpas(self, deadline: float) -> list[Any]:  # noqa: ARG002 - answers at once
        return self._served["horizontalpodautoscalers"]

    def get_deployment(self, name: str, deadline: float) -> Any:  # noqa: ARG002
        for item in self._served["deployments"]:
            if get(item, "metadata", "name") == name:
                return item
        raise ObjectNotFound(name)

    def list_replicasets(self, selector: str, deadline: float) -> list[Any]:  # noqa: ARG002
        return self._selected("replicasets", selector)

    def list_pods(self, selector: str, deadline: float) -> list[Any]:  # noqa: ARG002
        return self._selected("pods", selector)

    def _selected(self, resource: str, selector: str) -> list[Any]:
        def labels(item: Any) -> dict[str, str]:
            # A label that is not a string matches no selector (the real server stores none such).
            found = get(item, "metadata", "labels")
            return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}

        return [item for item in self._served[resource] if selects(selector, labels(item))]


def test_every_ratio_series_is_decided() -> None:
    check_ratio_sets(KUBERNETES_METRICS, SHARES, NOT_SHARES)


@THOROUGH
@given(
    kind=st.sampled_from(["horizontalpodautoscalers", "deployments", "pods"]),
    data=st.data(),
)
def test_object_parsers_raise_only_object_error(kind: str, data: st.DataObject) -> None:
    parse = {"horizontalpodautoscalers": parse_hpa, "deployments": parse_deployment, "pods": parse_pod}[kind]
    obj = data.draw(mutated(data.draw(st.sampled_from(RECORDED[kind]))) | odd_values)
    with contextlib.suppress(ObjectError):
        parse(obj)


@THOROUGH
@given(served=namespaces(), names=st.sampled_from([(), ("web",), ("web", "missing")]))
def test_collector_emits_finite_values_and_shares_within_0_and_1(
    served: dict[str, list[Any]], names: tuple[str, ...]
) -> None:
    collector = KubernetesCollector(cast(KubeApi, StandInApi(served)), names, 120.0, 5.0, "stand-in")
    check_cycle(collector.collect, SHARES)
