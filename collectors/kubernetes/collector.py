"""One cycle: the namespace's HPAs, then each one's Deployment, ReplicaSets and pods.

Per-HPA problems that leave the rest readable (no current metrics yet, a scale target that is missing
or not a Deployment) go into the HPA's evidence; problems with the API itself fail the cycle with a
reason. Replica history needs nothing extra here: the store keeps a window of these samples, and
lastScaleTime says when the HPA last acted even across agent restarts.
"""

from __future__ import annotations

import time
from typing import Any

from collectors.base import Collector, CollectorError, Reason, Sample, SampleBuilder
from collectors.kubernetes.api import KubeApi, ObjectNotFound
from collectors.kubernetes.metrics import KUBERNETES_METRICS, KUBERNETES_READINGS
from collectors.kubernetes.objects import (
    Hpa,
    ObjectError,
    controller_uid,
    parse_deployment,
    parse_hpa,
    parse_pod,
    uid,
)

CONDITION_METRICS = {
    "AbleToScale": "kubernetes_hpa_able_to_scale",
    "ScalingActive": "kubernetes_hpa_scaling_active",
    "ScalingLimited": "kubernetes_hpa_scaling_limited",
}


class KubernetesCollector(Collector):
    name = "kubernetes"
    tier = "app"
    metrics = KUBERNETES_METRICS
    readings = KUBERNETES_READINGS

    def __init__(
        self, api: KubeApi, hpas: tuple[str, ...], new_pod_window: float, budget: float, source: str
    ) -> None:
        super().__init__(api.namespace)
        self._api = api
        self._names = hpas
        self._new_pod_window = new_pod_window
        self._budget = budget
        self._source = source

    def describe(self) -> str:
        which = ", ".join(self._names) if self._names else "all"
        return f"kubernetes namespace {self.target} (HPAs: {which}; {self._source})"

    def close(self) -> None:
        self._api.close()

    def collect(self) -> Sample:
        deadline = time.monotonic() + self._budget
        now = time.time()
        out = self.builder()
        try:
            hpas = [parse_hpa(item) for item in self._api.list_hpas(deadline)]
            if self._names:
                missing = sorted(set(self._names) - {hpa.name for hpa in hpas})
                hpas = [hpa for hpa in hpas if hpa.name in self._names]
                out.set("kubernetes_hpas_missing", len(missing))
                if missing:
                    out.detail("missing_hpas", missing)
            out.set("kubernetes_hpas", len(hpas))
            if not hpas:
                out.detail("note", f"no HorizontalPodAutoscaler to collect in namespace {self.target}")
            for hpa in hpas:
                evidence = self._hpa(out, hpa)
                problem = self._scale_target(out, hpa, deadline, now)
                if problem:
                    evidence["notes"].append(problem)
                out.detail(f"hpa/{hpa.name}", evidence)
        except ObjectError as error:
            raise CollectorError(Reason.PARSE, str(error)) from None
        return out.build(self.name, self.target, now)

    def _hpa(self, out: SampleBuilder, hpa: Hpa) -> dict[str, Any]:
        name = hpa.name
        out.set("kubernetes_hpa_min_replicas", hpa.min_replicas, name)
        out.set("kubernetes_hpa_max_replicas", hpa.max_replicas, name)
        if hpa.desired_replicas is not None:
            out.set("kubernetes_hpa_desired_replicas", hpa.desired_replicas, name)
        if hpa.current_replicas is not None:
            out.set("kubernetes_hpa_current_replicas", hpa.current_replicas, name)
            at_max = hpa.current_replicas >= hpa.max_replicas > hpa.min_replicas
            out.set("kubernetes_hpa_at_max_replicas", at_max, name)
        if hpa.last_scale_time is not None:
            out.set("kubernetes_hpa_last_scale_timestamp_seconds", hpa.last_scale_time, name)
        for condition_type, metric in CONDITION_METRICS.items():
            condition = hpa.conditions.get(condition_type)
            if condition is not None and condition.status in ("True", "False"):
                out.set(metric, condition.status == "True", name)
        notes = []
        if not hpa.has_current_metrics:
            notes.append("status.currentMetrics is empty: the HPA has no current value of any metric")
        usage = []
        for metric in hpa.metrics:
            kind = "utilization_ratio" if metric.target_type == "Utilization" else "value"
            if metric.target is not None:
                out.set(f"kubernetes_hpa_metric_target_{kind}", metric.target, name, metric.label)
            if metric.current is None:
                if hpa.has_current_metrics:
                    notes.append(f"no current value for metric {metric.label}")
                continue
            out.set(f"kubernetes_hpa_metric_current_{kind}", metric.current, name, metric.label)
            if metric.target:
                usage.append(metric.current / metric.target)
        if usage:
            out.set("kubernetes_hpa_usage_to_target_ratio", max(usage), name)
        return {
            "scale_target": f"{hpa.target_kind}/{hpa.target_name}",
            "conditions": {
                condition_type: {"status": c.status, "reason": c.reason, "message": c.message}
                for condition_type, c in hpa.conditions.items()
            },
            "notes": notes,
        }

    def _scale_target(self, out: SampleBuilder, hpa: Hpa, deadline: float, now: float) -> str | None:
        """Collects the HPA's Deployment and its pods; returns why it could not, if it could not."""
        if hpa.target_kind != "Deployment":
            return f"scale target {hpa.target_kind}/{hpa.target_name} is not followed (only Deployments are)"
        try:
            deployment = parse_deployment(self._api.get_deployment(hpa.target_name, deadline))
        except ObjectNotFound:
            return f"scale target Deployment {hpa.target_name} does not exist"
        labels = (hpa.name, deployment.name)
        out.set("kubernetes_deployment_desired_replicas", deployment.desired, *labels)
        out.set("kubernetes_deployment_updated_replicas", deployment.updated, *labels)
        out.set("kubernetes_deployment_ready_replicas", deployment.ready, *labels)
        out.set("kubernetes_deployment_available_replicas", deployment.available, *labels)
        out.set("kubernetes_deployment_unavailable_replicas", deployment.unavailable, *labels)
        # The selector may also match pods of another workload; the Deployment's pods are those of
        # the ReplicaSets it controls, as the Deployment controller itself counts them.
        replica_sets = {
            uid(item)
            for item in self._api.list_replicasets(deployment.selector, deadline)
            if controller_uid(item) == deployment.uid
        }
        pods = [
            pod
            for item in self._api.list_pods(deployment.selector, deadline)
            if (pod := parse_pod(item)) is not None and pod.owner_uid in replica_sets
        ]
        # Pods waiting for a node are counted apart: ready or not is a question for scheduled pods.
        scheduled = [pod for pod in pods if pod.scheduled]
        out.set("kubernetes_deployment_pods_unscheduled", len(pods) - len(scheduled), *labels)
        new = [pod for pod in scheduled if now - pod.created < self._new_pod_window]
        old = [pod for pod in scheduled if now - pod.created >= self._new_pod_window]
        new_unready = sum(not pod.ready for pod in new)
        out.set("kubernetes_deployment_new_pods_ready", len(new) - new_unready, *labels)
        out.set("kubernetes_deployment_new_pods_not_ready", new_unready, *labels)
        out.set("kubernetes_deployment_old_pods_ready", sum(pod.ready for pod in old), *labels)
        out.set("kubernetes_deployment_old_pods_not_ready", sum(not pod.ready for pod in old), *labels)
        out.ratio("kubernetes_deployment_new_pods_not_ready_ratio", new_unready, len(new), *labels)
        out.set("kubernetes_deployment_container_restarts", sum(pod.restarts for pod in pods), *labels)
        return None
