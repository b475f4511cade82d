"""The Kubernetes collector: the real kubernetes client, pointed by a generated kubeconfig at the stand-in
API server of tests/fixtures/kube_api.py, which serves recorded objects of namespace "shop":

- HPA web: 2..6 replicas, at 6 with ScalingLimited True (TooManyReplicas); its Deployment is mid
  scale-up: 3 pods from hours ago are ready, 3 created 90 s ago are not. A terminating web pod and a
  canary pod that the selector app=web also matches (another Deployment's) must not count.
- HPA api: min == max == 3, ScalingLimited True (TooFewReplicas), a set-based selector.
- HPA worker: an External metric and no status.currentMetrics yet.
- HPA reports: ScalingActive False (metrics unavailable); an evicted pod must not count.

pods-unschedulable.json holds two of web's scale-up pods as they were while no node had room for them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import ConfigError
from agent.config.loader import validate_config
from alerts.classifier import classify
from alerts.table import RULES, SIGNALS
from collectors.base import CollectorError, Reason, Sample
from collectors.kubernetes import KubernetesCollector, build
from tests.fixtures.app_server import AppServer, LoadPlan, run_load
from tests.fixtures.kube_api import NAMESPACE, RECORDED_AT, TOKEN, KubeApiServer, load, shift_times
from tests.support import REPO, AgentProcess, free_port, value


def kube_collector(tmp_path: Path, server: KubeApiServer, **settings: Any) -> KubernetesCollector:
    timeout = settings.pop("timeout", 2.0)
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", settings.pop("token", TOKEN))
    section = {"enabled": True, "kubeconfig": str(kubeconfig), "namespace": NAMESPACE, **settings}
    config = validate_config({"timeout": timeout, "kubernetes": section})
    return build(config, config.kubernetes)


@pytest.fixture
def sample(tmp_path: Path, kube_api: KubeApiServer) -> Sample:
    return kube_collector(tmp_path, kube_api).collect()


def test_hpa_at_max_with_scaling_limited(sample: Sample) -> None:
    assert sample.target == NAMESPACE
    assert sample.get("kubernetes_hpas") == 4
    assert sample.get("kubernetes_hpa_current_replicas", "web") == 6
    assert sample.get("kubernetes_hpa_desired_replicas", "web") == 6
    assert sample.get("kubernetes_hpa_min_replicas", "web") == 2
    assert sample.get("kubernetes_hpa_max_replicas", "web") == 6
    assert sample.get("kubernetes_hpa_at_max_replicas", "web") == 1
    assert sample.get("kubernetes_hpa_scaling_limited", "web") == 1
    assert sample.get("kubernetes_hpa_scaling_active", "web") == 1
    assert sample.get("kubernetes_hpa_able_to_scale", "web") == 1
    # cpu: 92 % of requests against a 60 % target; memory: 310 MiB against 512 MiB, in bytes
    assert sample.get("kubernetes_hpa_metric_target_utilization_ratio", "web", "resource/cpu") == 0.6
    assert sample.get("kubernetes_hpa_metric_current_utilization_ratio", "web", "resource/cpu") == 0.92
    assert sample.get("kubernetes_hpa_metric_target_value", "web", "resource/memory") == 512 * 2**20
    assert sample.get("kubernetes_hpa_metric_current_value", "web", "resource/memory") == 310 * 2**20
    assert sample.get("kubernetes_hpa_usage_to_target_ratio", "web") == pytest.approx(0.92 / 0.6)
    # lastScaleTime was recorded 95 s before the recordings were taken, and is shifted to now
    last_scale = sample.get("kubernetes_hpa_last_scale_timestamp_seconds", "web")
    assert last_scale is not None
    assert 90 < time.time() - last_scale < 95 + 60
    limited = sample.details["hpa/web"]["conditions"]["ScalingLimited"]
    assert limited == {
        "status": "True",
        "reason": "TooManyReplicas",
        "message": "the desired replica count is more than the maximum replica count",
    }
    # reasons and messages are evidence only: no series carries one as a label value
    labels = {label for _, values in sample.values for label in values}
    conditions = [sample.details[f"hpa/{hpa}"]["conditions"] for hpa in ("web", "api", "worker", "reports")]
    evidence = {text for found in conditions for c in found.values() for text in (c["reason"], c["message"])}
    assert len(evidence) > 10
    assert not labels & evidence


def test_deployment_mid_scale_up_with_unready_new_pods(sample: Sample) -> None:
    web = ("web", "web")
    assert sample.get("kubernetes_deployment_desired_replicas", *web) == 6
    assert sample.get("kubernetes_deployment_updated_replicas", *web) == 6
    assert sample.get("kubernetes_deployment_ready_replicas", *web) == 3
    assert sample.get("kubernetes_deployment_available_replicas", *web) == 3
    assert sample.get("kubernetes_deployment_unavailable_replicas", *web) == 3
    assert sample.get("kubernetes_deployment_new_pods_ready", *web) == 0
    assert sample.get("kubernetes_deployment_new_pods_not_ready", *web) == 3
    assert sample.get("kubernetes_deployment_old_pods_ready", *web) == 3
    assert sample.get("kubernetes_deployment_old_pods_not_ready", *web) == 0
    assert sample.get("kubernetes_deployment_new_pods_not_ready_ratio", *web) == 1
    assert sample.get("kubernetes_deployment_pods_unscheduled", *web) == 0
    # 1 + 2 + 2 + 1; not the terminating pod's 4 nor the canary's 7
    assert sample.get("kubernetes_deployment_container_restarts", *web) == 6


def test_pods_split_by_the_configured_window(tmp_path: Path, kube_api: KubeApiServer) -> None:
    sample = kube_collector(tmp_path, kube_api, new_pod_window=30).collect()
    web = ("web", "web")
    assert sample.get("kubernetes_deployment_new_pods_not_ready", *web) == 0
    assert sample.get("kubernetes_deployment_old_pods_not_ready", *web) == 3
    assert sample.get("kubernetes_deployment_old_pods_ready", *web) == 3
    assert sample.get("kubernetes_deployment_new_pods_not_ready_ratio", *web) is None  # no new pod


def test_pods_waiting_for_a_node_are_unscheduled_not_unready(tmp_path: Path, kube_api: KubeApiServer) -> None:
    """Two of web's three scale-up pods as recorded while the cluster had no room for them (Pending,
    PodScheduled False, Unschedulable): their not being ready says nothing about the app, so they
    are not new unready pods, which NewInstancesUnhealthy would blame on the app's dependencies."""
    waiting = {pod["metadata"]["name"]: pod for pod in load("pods-unschedulable.json")["items"]}
    waiting = shift_times(waiting, datetime.now(UTC) - RECORDED_AT)
    served = kube_api.lists["pods"]["items"]
    served[:] = [waiting.get(pod["metadata"]["name"], pod) for pod in served]
    sample = kube_collector(tmp_path, kube_api).collect()
    web = ("web", "web")
    assert sample.get("kubernetes_deployment_pods_unscheduled", *web) == 2
    assert sample.get("kubernetes_deployment_new_pods_not_ready", *web) == 1  # w4jp8 is on a node
    assert sample.get("kubernetes_deployment_new_pods_ready", *web) == 0
    assert sample.get("kubernetes_deployment_old_pods_ready", *web) == 3
    assert sample.get("kubernetes_deployment_old_pods_not_ready", *web) == 0
    assert sample.get("kubernetes_deployment_new_pods_not_ready_ratio", *web) == 1
    assert sample.get("kubernetes_deployment_pods_unscheduled", "api", "api") == 0
    # The one placed pod that is not ready still holds the rule; the evidence shows the waiting two.
    verdicts = classify({("kubernetes", NAMESPACE): (sample,)}, RULES, SIGNALS)
    (unhealthy,) = [
        v for v in verdicts if v.rule.name == "NewInstancesUnhealthy" and v.target.endswith("/web")
    ]
    assert unhealthy.truth
    assert unhealthy.evidence["pods_unscheduled"] == 2
    # Still unscheduled past the new-pod window (no room at all): not old unready pods either.
    sample = kube_collector(tmp_path, kube_api, new_pod_window=30).collect()
    assert sample.get("kubernetes_deployment_pods_unscheduled", *web) == 2
    assert sample.get("kubernetes_deployment_old_pods_not_ready", *web) == 1
    # Just created, before the scheduler has tried them, pods have no conditions at all.
    for pod in waiting.values():
        del pod["status"]["conditions"]
    sample = kube_collector(tmp_path, kube_api).collect()
    assert sample.get("kubernetes_deployment_pods_unscheduled", *web) == 2
    assert sample.get("kubernetes_deployment_new_pods_not_ready", *web) == 1


def test_hpa_with_min_equal_to_max(sample: Sample) -> None:
    assert sample.get("kubernetes_hpa_min_replicas", "api") == 3
    assert sample.get("kubernetes_hpa_max_replicas", "api") == 3
    # at its maximum, but it could not scale anyway: not a scaling ceiling
    assert sample.get("kubernetes_hpa_at_max_replicas", "api") == 0
    assert sample.get("kubernetes_hpa_scaling_limited", "api") == 1
    assert sample.details["hpa/api"]["conditions"]["ScalingLimited"]["reason"] == "TooFewReplicas"
    metric = ("api", "pods/http_requests_per_second")
    assert sample.get("kubernetes_hpa_metric_target_value", *metric) == 100
    assert sample.get("kubernetes_hpa_metric_current_value", *metric) == 42
    assert sample.get("kubernetes_hpa_usage_to_target_ratio", "api") == 0.42
    # selector app=api,tier in (backend): the tier=debug pod is left out
    assert sample.get("kubernetes_deployment_old_pods_ready", "api", "api") == 3


def test_hpa_without_current_metrics(sample: Sample) -> None:
    assert sample.get("kubernetes_hpa_current_replicas", "worker") == 2
    assert sample.get("kubernetes_hpa_metric_target_value", "worker", "external/queue_messages_ready") == 30
    assert (
        sample.series("kubernetes_hpa_metric_current_value").get(("worker", "external/queue_messages_ready"))
        is None
    )
    assert sample.get("kubernetes_hpa_usage_to_target_ratio", "worker") is None
    # only AbleToScale is set: the other conditions are unknown, so absent rather than 0
    assert sample.get("kubernetes_hpa_able_to_scale", "worker") == 1
    assert sample.get("kubernetes_hpa_scaling_active", "worker") is None
    assert sample.get("kubernetes_hpa_scaling_limited", "worker") is None
    assert sample.details["hpa/worker"]["notes"] == [
        "status.currentMetrics is empty: the HPA has no current value of any metric"
    ]
    assert sample.get("kubernetes_deployment_old_pods_ready", "worker", "worker") == 2


def test_hpa_with_scaling_inactive(sample: Sample) -> None:
    assert sample.get("kubernetes_hpa_scaling_active", "reports") == 0
    assert sample.get("kubernetes_hpa_scaling_limited", "reports") == 0
    assert sample.get("kubernetes_hpa_desired_replicas", "reports") == 0
    assert sample.get("kubernetes_hpa_metric_target_utilization_ratio", "reports", "resource/cpu") == 0.7
    assert sample.get("kubernetes_hpa_metric_current_utilization_ratio", "reports", "resource/cpu") is None
    evidence = sample.details["hpa/reports"]
    assert evidence["conditions"]["ScalingActive"]["reason"] == "FailedGetResourceMetric"
    assert (
        "unable to fetch metrics from resource metrics API"
        in evidence["conditions"]["ScalingActive"]["message"]
    )
    assert evidence["notes"] == ["status.currentMetrics is empty: the HPA has no current value of any metric"]
    # the evicted (Failed) pod is not an instance
    assert sample.get("kubernetes_deployment_old_pods_ready", "reports", "reports") == 1
    assert sample.get("kubernetes_deployment_old_pods_not_ready", "reports", "reports") == 0


def test_named_hpas_and_a_missing_one(tmp_path: Path, kube_api: KubeApiServer) -> None:
    sample = kube_collector(tmp_path, kube_api, hpas=["web", "ghost"]).collect()
    assert sample.get("kubernetes_hpas") == 1
    assert sample.get("kubernetes_hpas_missing") == 1
    assert sample.details["missing_hpas"] == ["ghost"]
    assert set(sample.series("kubernetes_hpa_current_replicas")) == {("web",)}


def test_scale_targets_that_cannot_be_followed(tmp_path: Path, kube_api: KubeApiServer) -> None:
    hpas = kube_api.lists["horizontalpodautoscalers"]["items"]
    hpas[0]["spec"]["scaleTargetRef"]["name"] = "api-v2"  # api's Deployment was renamed
    hpas[3]["spec"]["scaleTargetRef"] = {"kind": "StatefulSet", "name": "worker", "apiVersion": "apps/v1"}
    sample = kube_collector(tmp_path, kube_api).collect()
    assert sample.details["hpa/api"]["notes"] == ["scale target Deployment api-v2 does not exist"]
    assert sample.details["hpa/worker"]["notes"][-1] == (
        "scale target StatefulSet/worker is not followed (only Deployments are)"
    )
    assert sample.get("kubernetes_hpa_current_replicas", "api") == 3  # the HPA itself still counts
    assert set(sample.series("kubernetes_deployment_desired_replicas")) == {
        ("web", "web"),
        ("reports", "reports"),
    }


def test_an_empty_namespace_says_so(tmp_path: Path, kube_api: KubeApiServer) -> None:
    kube_api.lists["horizontalpodautoscalers"]["items"] = []
    sample = kube_collector(tmp_path, kube_api).collect()
    assert sample.get("kubernetes_hpas") == 0
    assert sample.details["note"] == "no HorizontalPodAutoscaler to collect in namespace shop"


def test_one_client_and_one_connection_for_all_calls(tmp_path: Path, kube_api: KubeApiServer) -> None:
    collector = kube_collector(tmp_path, kube_api)
    collector.collect()
    collector.collect()
    # per cycle: the HPA list, then per HPA its Deployment, ReplicaSets and pods
    assert len(kube_api.requests) == 2 * (1 + 4 * 3)
    assert len({port for port, _ in kube_api.requests}) == 1
    api_pods = "/api/v1/namespaces/shop/pods?labelSelector=app%3Dapi%2Ctier%20in%20%28backend%29&"
    assert any(path.startswith(api_pods) for _, path in kube_api.requests)
    collector.close()


@pytest.mark.parametrize(
    ("failing", "reason", "text"),
    [
        (
            ("forbidden", "horizontalpodautoscalers"),
            Reason.PERMISSION,
            'list resource "horizontalpodautoscalers"',
        ),
        (("forbidden", "pods"), Reason.PERMISSION, 'cannot list resource "pods" in API group ""'),
        (("not-served", "horizontalpodautoscalers"), Reason.OTHER, "does not serve autoscaling/v2"),
        (
            ("internal-error", "horizontalpodautoscalers"),
            Reason.OTHER,
            "HTTP 500: Internal error occurred: etcd",
        ),
        (
            ("internal-error", "deployments"),
            Reason.OTHER,
            "reading deployment api in namespace shop: HTTP 500",
        ),
        (("unauthorized", "replicasets"), Reason.AUTH, "HTTP 401: Unauthorized"),
    ],
)
def test_api_failures_have_reasons(
    tmp_path: Path, kube_api: KubeApiServer, failing: tuple[str, str], reason: Reason, text: str
) -> None:
    kube_api.fail(*failing)
    with pytest.raises(CollectorError) as error:
        kube_collector(tmp_path, kube_api).collect()
    assert error.value.reason is reason
    assert text in error.value.detail


def test_a_hang_times_out_within_the_budget(tmp_path: Path, kube_api: KubeApiServer) -> None:
    collector = kube_collector(tmp_path, kube_api, timeout=0.5)  # budget 0.9 x 0.5 s
    kube_api.fail("hang", "pods")
    started = time.monotonic()
    with pytest.raises(CollectorError) as error:
        collector.collect()
    assert time.monotonic() - started < 0.45 + 0.1
    assert error.value.reason is Reason.TIMEOUT
    assert error.value.detail.startswith(
        "listing pods 'app=api,tier in (backend)' in namespace shop: no answer"
    )


def test_wrong_token_and_unreachable_server(tmp_path: Path, kube_api: KubeApiServer) -> None:
    with pytest.raises(CollectorError) as error:
        kube_collector(tmp_path, kube_api, token="expired").collect()
    assert error.value.reason is Reason.AUTH
    (tmp_path / "closed").mkdir()
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "closed" / "kubeconfig")
    kubeconfig.write_text(kubeconfig.read_text().replace(kube_api.url, f"http://127.0.0.1:{free_port()}"))
    config = validate_config({"kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig)}})
    with pytest.raises(CollectorError) as error:
        build(config, config.kubernetes).collect()
    assert error.value.reason is Reason.UNREACHABLE


PLUGIN = (
    "import json, pathlib, sys\n"
    "status = {'token': pathlib.Path(sys.argv[1]).read_text()}\n"
    "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
    " 'status': status}))\n"
)


@pytest.mark.parametrize("credential", ["tokenFile", "exec"])
def test_a_rotated_token_is_used_at_the_first_401(
    tmp_path: Path, kube_api: KubeApiServer, credential: str
) -> None:
    """A kubeconfig's tokenFile (a projected service-account token, rewritten before it expires) and an
    exec plugin's token without an expirationTimestamp: the client reads either once, so the collector
    stayed down with reason auth until the agent restarted. The call that meets the 401 now loads
    the credentials anew and asks again."""
    token_file = tmp_path / "token"
    token_file.write_text("expired")
    users = {
        "tokenFile": {"tokenFile": str(token_file)},
        "exec": {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": ["-c", PLUGIN, str(token_file)],
                "interactiveMode": "Never",
            }
        },
    }
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    document = yaml.safe_load(kubeconfig.read_text())
    document["users"][0]["user"] = users[credential]
    kubeconfig.write_text(yaml.safe_dump(document))
    section = {"enabled": True, "kubeconfig": str(kubeconfig), "namespace": NAMESPACE}
    config = validate_config({"kubernetes": section})
    collector = build(config, config.kubernetes)
    with pytest.raises(CollectorError) as error:
        collector.collect()
    assert error.value.reason is Reason.AUTH
    token_file.write_text(TOKEN)  # rotated
    assert collector.collect().get("kubernetes_hpas") == 4
    # Refused again, and the credentials cannot be loaded any more: still auth, saying why.
    kubeconfig.unlink()
    kube_api.fail("unauthorized")
    with pytest.raises(CollectorError) as error:
        collector.collect()
    assert error.value.reason is Reason.AUTH
    assert error.value.detail.startswith(
        f"listing autoscaling/v2 horizontalpodautoscalers in namespace {NAMESPACE}: HTTP 401, then "
        f"kubernetes: cannot use the kubeconfig {kubeconfig}"
    )
    collector.close()


def test_metrics_of_one_name_are_told_apart_by_what_they_select(
    tmp_path: Path, kube_api: KubeApiServer
) -> None:
    """Two External metrics of one name for two queues: each is paired with its own current value (the
    status lists them in another order) and exported as a series of its own."""
    (worker,) = [
        h for h in kube_api.lists["horizontalpodautoscalers"]["items"] if h["metadata"]["name"] == "worker"
    ]

    def external(queue: str, value: dict[str, str], key: str) -> dict[str, Any]:
        metric = {"name": "queue_messages_ready", "selector": {"matchLabels": {"queue": queue}}}
        return {"type": "External", "external": {"metric": metric, key: value}}

    worker["spec"]["metrics"] = [
        external("orders", {"type": "AverageValue", "averageValue": "30"}, "target"),
        external("emails", {"type": "AverageValue", "averageValue": "1000"}, "target"),
    ]
    worker["status"]["currentMetrics"] = [
        external("emails", {"averageValue": "10"}, "current"),
        external("orders", {"averageValue": "90"}, "current"),
    ]
    sample = kube_collector(tmp_path, kube_api).collect()
    targets = sample.series("kubernetes_hpa_metric_target_value")
    currents = sample.series("kubernetes_hpa_metric_current_value")
    label = "external/queue_messages_ready"
    assert (targets[("worker", label)], currents[("worker", label)]) == (30, 90)
    assert (targets[("worker", f"{label}#2")], currents[("worker", f"{label}#2")]) == (1000, 10)


def test_an_object_metric_averaged_per_pod_finds_its_current_value(
    tmp_path: Path, kube_api: KubeApiServer
) -> None:
    """For an AverageValue target the HPA controller leaves the described object out of the status
    (its kind and name empty): the current value is still this metric's."""
    (worker,) = [
        h for h in kube_api.lists["horizontalpodautoscalers"]["items"] if h["metadata"]["name"] == "worker"
    ]
    metric = {"name": "requests_per_second"}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "main"}
    target = {"type": "AverageValue", "averageValue": "100"}
    worker["spec"]["metrics"] = [
        {"type": "Object", "object": {"metric": metric, "describedObject": ingress, "target": target}}
    ]
    empty = {"kind": "", "name": ""}
    current = {"averageValue": "150"}
    worker["status"]["currentMetrics"] = [
        {"type": "Object", "object": {"metric": metric, "describedObject": empty, "current": current}}
    ]
    sample = kube_collector(tmp_path, kube_api).collect()
    label = ("worker", "object/requests_per_second")
    assert sample.series("kubernetes_hpa_metric_current_value")[label] == 150
    assert sample.get("kubernetes_hpa_usage_to_target_ratio", "worker") == 1.5


def test_malformed_objects_are_parse_errors(tmp_path: Path, kube_api: KubeApiServer) -> None:
    kube_api.lists["horizontalpodautoscalers"]["items"][2]["spec"]["maxReplicas"] = "six"
    with pytest.raises(CollectorError) as error:
        kube_collector(tmp_path, kube_api).collect()
    assert error.value.reason is Reason.PARSE
    assert error.value.detail == "HorizontalPodAutoscaler web: spec.maxReplicas is not an integer: 'six'"


def test_unusable_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    malformed = tmp_path / "malformed"  # a context that is a number trips the client deep inside
    malformed.write_text("contexts: [{name: c, context: 7}]\ncurrent-context: c\nusers: []\nclusters: []\n")
    for kubeconfig in (tmp_path / "none", malformed):
        config = validate_config({"kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig)}})
        with pytest.raises(ConfigError, match=f"kubernetes: cannot use the kubeconfig {kubeconfig}"):
            build(config, config.kubernetes)


def test_the_agent_does_not_import_kubernetes_unless_enabled() -> None:
    code = (
        "import sys, agent.cli, agent.run, agent.wiring, collectors.app\n"
        "sys.exit('kubernetes imported' if 'kubernetes' in sys.modules else 0)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_a_missing_client_library_is_a_config_error() -> None:
    """Installed without the kubernetes extra: the section is refused with what to install, so that a
    reload keeps the running configuration and a start exits 2."""
    code = (
        "import sys\n"
        "sys.modules['kubernetes'] = None  # what an install without the extra finds\n"
        "from agent.config import ConfigError\n"
        "from agent.config.loader import validate_config\n"
        "from agent.wiring import build_collectors\n"
        "try:\n"
        "    build_collectors(validate_config({'kubernetes': {'enabled': True}}))\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("kubernetes: cannot load its client library: ")
    assert result.stdout.rstrip().endswith("; install tierwatch[kubernetes]")


def test_agent_end_to_end(tmp_path: Path, kube_api: KubeApiServer, app_server: AppServer) -> None:
    config = {
        "interval": 0.5,
        "host": {"enabled": False},
        "kubernetes": {
            "enabled": True,
            "kubeconfig": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
            "namespace": NAMESPACE,
            "hpas": ["web"],
        },
        "app": [
            {
                "name": "web",
                "metrics_url": f"{app_server.url}/metrics",
                "requests_metric": "http_requests_total",
                "latency_metric": "http_request_duration_seconds",
                "pool_size": 20,
                "hpa": "web",
            }
        ],
    }
    with AgentProcess(tmp_path, config) as agent:
        # About 1 s of load, so that several cycles see requests.
        load = threading.Thread(target=run_load, args=(app_server, LoadPlan(total=600, fast_delay=0.02)))
        load.start()
        agent.wait_for(
            lambda: value(agent.metrics(), "tierwatch_app_requests_per_second", target="web"), "rate"
        )
        load.join()
        series = agent.metrics()
        kube = {"target": NAMESPACE, "hpa": "web"}
        assert value(series, "tierwatch_collector_up", collector="kubernetes", target=NAMESPACE) == 1
        assert value(series, "tierwatch_collector_up", collector="app", target="web") == 1
        assert value(series, "tierwatch_kubernetes_hpa_current_replicas", **kube) == 6
        assert value(series, "tierwatch_kubernetes_hpa_scaling_limited", **kube) == 1
        new_unready = value(
            series, "tierwatch_kubernetes_deployment_new_pods_not_ready", **kube, deployment="web"
        )
        assert new_unready == 3
        assert value(series, "tierwatch_app_pool_size", target="web") == 20
        assert (
            "collector kubernetes: monitoring kubernetes namespace shop (HPAs: web; kubeconfig" in agent.log()
        )

        # A cluster that starts refusing: the Kubernetes target goes down with its reason, the app stays up.
        kube_api.fail("forbidden")
        agent.wait_for(
            lambda: (
                value(agent.metrics(), "tierwatch_collector_up", collector="kubernetes", target=NAMESPACE)
                == 0
            ),
            "kubernetes down",
        )
        series = agent.metrics()
        errors = {"collector": "kubernetes", "target": NAMESPACE, "reason": "permission"}
        permission_errors = value(series, "tierwatch_collector_errors_total", **errors)
        assert permission_errors is not None
        assert permission_errors >= 1
        assert value(series, "tierwatch_collector_up", collector="app", target="web") == 1
        assert value(series, "tierwatch_kubernetes_hpa_current_replicas", **kube) is None
