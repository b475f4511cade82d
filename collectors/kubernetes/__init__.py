"""Kubernetes autoscaling of the app tier: HPAs, their Deployments and those Deployments' pods.

Reads autoscaling/v2 HorizontalPodAutoscalers, apps/v1 Deployments and ReplicaSets, and v1 Pods of
one namespace through the official client (imported only when this section is enabled: it costs tens
of MiB). Needs get/list on those four resources; docs/kubernetes.md has the RBAC rules.
"""

from __future__ import annotations

from agent.config.model import Config, KubernetesSection
from collectors.kubernetes.api import KubeApi
from collectors.kubernetes.collector import KubernetesCollector

# The cycle reports its own timeout, naming the call that hung, before the scheduler gives up on it.
BUDGET_SHARE = 0.9


def build(config: Config, section: KubernetesSection) -> KubernetesCollector:
    source = f"kubeconfig {section.kubeconfig}" if section.kubeconfig else "in-cluster service account"
    api = KubeApi(section.kubeconfig, section.namespace)
    return KubernetesCollector(
        api, section.hpas, section.new_pod_window, BUDGET_SHARE * config.cycle_timeout, source
    )


__all__ = ["KubernetesCollector", "build"]
