"""The Kubernetes collector's series. Label values are bounded: HPA and Deployment names of one
namespace, and the metric names an HPA's spec lists."""

from collectors.base import Column, Kind, MetricSpec, Reading, Unit

G = Kind.GAUGE
H, HM, HD = ("hpa",), ("hpa", "metric"), ("hpa", "deployment")

KUBERNETES_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("kubernetes_hpas", G, "HorizontalPodAutoscalers collected in the namespace."),
    MetricSpec("kubernetes_hpas_missing", G, "HPAs named in the configuration that the namespace lacks."),
    MetricSpec("kubernetes_hpa_current_replicas", G, "Replicas the HPA last saw (status).", H),
    MetricSpec("kubernetes_hpa_desired_replicas", G, "Replicas the HPA last asked for (status).", H),
    MetricSpec("kubernetes_hpa_min_replicas", G, "Lower replica bound of the HPA.", H),
    MetricSpec("kubernetes_hpa_max_replicas", G, "Upper replica bound of the HPA.", H),
    MetricSpec(
        "kubernetes_hpa_at_max_replicas", G, "1 if the HPA could scale (max > min) but is at its maximum.", H
    ),
    MetricSpec("kubernetes_hpa_able_to_scale", G, "Condition AbleToScale: 1 True, 0 False.", H),
    MetricSpec("kubernetes_hpa_scaling_active", G, "Condition ScalingActive: 1 True, 0 False.", H),
    MetricSpec("kubernetes_hpa_scaling_limited", G, "Condition ScalingLimited: 1 True, 0 False.", H),
    MetricSpec(
        "kubernetes_hpa_last_scale_timestamp_seconds", G, "Unix time the HPA last changed the replicas.", H
    ),
    MetricSpec("kubernetes_hpa_metric_target_utilization_ratio", G, "Utilization target (of requests).", HM),
    MetricSpec("kubernetes_hpa_metric_current_utilization_ratio", G, "Utilization now (of requests).", HM),
    MetricSpec("kubernetes_hpa_metric_target_value", G, "Value or average-value target, base unit.", HM),
    MetricSpec("kubernetes_hpa_metric_current_value", G, "Current value of a value target, base unit.", HM),
    MetricSpec(
        "kubernetes_hpa_usage_to_target_ratio",
        G,
        "Highest current / target over the HPA's metrics; above 1 the HPA wants more replicas.",
        H,
    ),
    MetricSpec("kubernetes_deployment_desired_replicas", G, "Replicas in the scale target's spec.", HD),
    MetricSpec("kubernetes_deployment_updated_replicas", G, "Replicas at the current pod template.", HD),
    MetricSpec("kubernetes_deployment_ready_replicas", G, "Ready replicas.", HD),
    MetricSpec("kubernetes_deployment_available_replicas", G, "Replicas ready for minReadySeconds.", HD),
    MetricSpec("kubernetes_deployment_unavailable_replicas", G, "Replicas still missing or unready.", HD),
    MetricSpec(
        "kubernetes_deployment_pods_unscheduled",
        G,
        "Pods not yet placed on a node (PodScheduled not True), of any age; in no ready count.",
        HD,
    ),
    MetricSpec(
        "kubernetes_deployment_new_pods_ready", G, "Scheduled ready pods younger than new_pod_window.", HD
    ),
    MetricSpec(
        "kubernetes_deployment_new_pods_not_ready",
        G,
        "Scheduled unready pods younger than new_pod_window.",
        HD,
    ),
    MetricSpec(
        "kubernetes_deployment_old_pods_ready", G, "Scheduled ready pods older than new_pod_window.", HD
    ),
    MetricSpec(
        "kubernetes_deployment_old_pods_not_ready",
        G,
        "Scheduled unready pods older than new_pod_window.",
        HD,
    ),
    MetricSpec(
        "kubernetes_deployment_new_pods_not_ready_ratio",
        G,
        "Unready share of the scheduled pods younger than new_pod_window; absent without such pods.",
        HD,
    ),
    MetricSpec(
        "kubernetes_deployment_container_restarts", G, "Container restarts summed over current pods.", HD
    ),
)

U, S, E = Column.UTILIZATION, Column.SATURATION, Column.ERRORS
KUBERNETES_READINGS: tuple[Reading, ...] = (
    Reading(U, "usage/target", "kubernetes_hpa_usage_to_target_ratio", Unit.RATIO),
    Reading(S, "HPAs at max", "kubernetes_hpa_at_max_replicas", Unit.COUNT, "sum"),
    Reading(S, "new pods unready", "kubernetes_deployment_new_pods_not_ready", Unit.COUNT, "sum"),
    Reading(S, "pods unscheduled", "kubernetes_deployment_pods_unscheduled", Unit.COUNT, "sum"),
    Reading(E, "unavailable", "kubernetes_deployment_unavailable_replicas", Unit.COUNT, "sum"),
    Reading(E, "restarts", "kubernetes_deployment_container_restarts", Unit.COUNT, "sum"),
)
