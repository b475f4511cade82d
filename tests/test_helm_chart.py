"""The Helm chart, rendered by the real helm binary.

Every rendered object is checked against the Kubernetes schemas of kubernetes-validate (strict: unknown
fields fail) except the two Prometheus Operator kinds, whose schemas it does not ship; those get a
structural check here. The config files the chart renders are loaded with the agent's own config model.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from agent.cli import resolve_config
from agent.config import Config
from agent.config.loader import load_config
from tests.support import DEPLOYED_ENVIRONMENT, REPO, require_tool

CHART = REPO / "helm" / "tierwatch"
CI_VALUES = {path.stem: path for path in sorted((CHART / "ci").glob("*.yaml"))}
CASES = ["default", *CI_VALUES]
NAMESPACE = "monitoring"
KUBE_VERSION = "1.30"
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
READ_VERBS = frozenset({"get", "list", "watch"})
WATCHED_RESOURCES = frozenset(
    {
        ("autoscaling", "horizontalpodautoscalers"),
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("", "pods"),
    }
)
SENTINEL = "s3ntinel-Pa55word-must-not-render"
# What the test pretends the downward API and the Secret hold when it loads a config.
NODE_NAME, POD_NAME = "node-1", "pod-1"
SECRET_DSN, SECRET_URL = "host=db.example port=5432 user=tierwatch", "redis://cache.example:6379/0"
SECRET_METRICS_URL = "http://scraper:stand-in@app.example:8000/metrics"
# By the last part of the variable's name (TIERWATCH_<SECTION>__<NAME>__<FIELD>).
SECRET_VALUES = {"DSN": SECRET_DSN, "URL": SECRET_URL, "METRICS_URL": SECRET_METRICS_URL}
# How every deployment starts the agent, but for the bytecode cache: the image keeps it where Python looks.
RUNTIME_ENV = {key: value for key, value in DEPLOYED_ENVIRONMENT.items() if key != "PYTHONPYCACHEPREFIX"}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    return require_tool("helm", str(REPO / ".tools" / "helm"))


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def template(helm: str, *args: str, chart: Path = CHART) -> str:
    result = run_helm(
        helm, "template", "tw", str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[Manifest]]:
    """Each case rendered once: the default values and every file under ci/."""
    cases = {"default": documents(template(helm))}
    for name, path in CI_VALUES.items():
        cases[name] = documents(template(helm, "--values", str(path)))
    return cases


def write_values(tmp_path: Path, values: Mapping[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return str(path)


def ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(CI_VALUES[name].read_text())


def of_kind(docs: list[Manifest], *kinds: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] in kinds]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert found, f"no {kind} named {name}"
    return found[0]


def pod_spec(workload: Manifest) -> Manifest:
    return workload["spec"]["template"]["spec"]


def containers(spec: Manifest) -> list[Manifest]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def agent_container(workload: Manifest) -> Manifest:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == "tierwatch")


# --- checks shared by the chart's pods and the sidecar -------------------------------------------


def assert_hardened(container: Manifest) -> None:
    context = container.get("securityContext", {})
    where = container["name"]
    assert context.get("runAsNonRoot") is True, where
    assert context.get("runAsUser") == 65534, where
    assert context.get("readOnlyRootFilesystem") is True, where
    assert context.get("allowPrivilegeEscalation") is False, where
    assert context.get("privileged", False) is False, where
    assert context.get("capabilities", {}).get("drop") == ["ALL"], where
    assert not context.get("capabilities", {}).get("add"), where
    assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
    for kind in ("requests", "limits"):
        assert set(container.get("resources", {}).get(kind, {})) >= {"cpu", "memory"}, f"{where}: {kind}"


def assert_probe(container: Manifest, probe: str, path: str) -> None:
    get = container.get(probe, {}).get("httpGet", {})
    assert get.get("path") == path, f"{container['name']}: {probe}"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert get["port"] in ports or get["port"] in ports.values(), f"{container['name']}: {probe} port"


def environment(container: Manifest) -> dict[str, str]:
    """The container's environment as the agent would see it, with stand-ins for references."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        source = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            env[variable["name"]] = {"spec.nodeName": NODE_NAME, "metadata.name": POD_NAME}[field]
        elif "secretKeyRef" in source:
            env[variable["name"]] = SECRET_VALUES[variable["name"].rsplit("__", 1)[-1]]
        else:
            raise AssertionError(f"unexpected env source {variable}")
    return env


def assert_runtime_env(container: Manifest) -> None:
    env = environment(container)
    assert {key: env.get(key) for key in RUNTIME_ENV} == RUNTIME_ENV, container["name"]


def assert_valid_schema(doc: Manifest) -> None:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {error.message}")


# --- lint and schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(helm: str, case: str) -> None:
    extra = ["--values", str(CI_VALUES[case])] if case in CI_VALUES else []
    result = run_helm(helm, "lint", "--strict", str(CHART), *extra)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_objects_match_kubernetes_schemas(rendered: dict[str, list[Manifest]], case: str) -> None:
    docs = rendered[case]
    assert of_kind(docs, "DaemonSet", "Deployment"), "no agent rendered"
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, of_kind(docs, "Service"))
        elif doc["kind"] == "PrometheusRule":
            own_file = ci_values(case).get("prometheusRule", {}).get("file") if case in CI_VALUES else None
            check_prometheus_rule(doc, own_file or (CHART / "files" / "prometheus-rules.yaml").read_text())
        else:
            assert_valid_schema(doc)


def check_service_monitor(monitor: Manifest, services: list[Manifest]) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    wanted = spec["selector"]["matchLabels"]
    selected = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
    assert selected, "the ServiceMonitor selects no Service"
    endpoint_keys = {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= endpoint_keys
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def check_prometheus_rule(rule: Manifest, rule_file: str) -> None:
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == (yaml.safe_load(rule_file)["groups"] or [])
    for group in rule["spec"]["groups"]:
        assert isinstance(group["name"], str)
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry)
            assert isinstance(entry["expr"], str)
            assert set(entry) <= {
                "alert",
                "record",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }


# --- pods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_pod_is_hardened_and_probed(rendered: dict[str, list[Manifest]], case: str) -> None:
    for workload in of_kind(rendered[case], "DaemonSet", "Deployment"):
        spec = pod_spec(workload)
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == 65534
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec.get("hostPID", False) is (workload["kind"] == "DaemonSet")
        assert not spec.get("hostIPC", False)
        for container in containers(spec):
            assert_hardened(container)
            assert_probe(container, "livenessProbe", "/healthz")
            assert_probe(container, "readinessProbe", "/readyz")
            port = container["ports"][0]["containerPort"]
            assert container["args"][-2:] == ["--listen", f"0.0.0.0:{port}"]


@pytest.mark.parametrize("case", CASES)
def test_every_agent_runs_with_the_runtime_env(rendered: dict[str, list[Manifest]], case: str) -> None:
    workloads = of_kind(rendered[case], "DaemonSet", "Deployment")
    assert workloads
    for workload in workloads:
        assert_runtime_env(agent_container(workload))


def dockerfile_env(path: Path) -> dict[str, str]:
    """The variables the Dockerfile's ENV instructions set (KEY=value form)."""
    env: dict[str, str] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        words = line.split()
        if words and words[0] == "ENV":
            env.update(word.split("=", 1) for word in words[1:])
    return env


def test_the_image_runs_with_the_runtime_env() -> None:
    env = dockerfile_env(REPO / "Dockerfile")
    assert {key: env.get(key) for key in RUNTIME_ENV} == RUNTIME_ENV


@pytest.mark.parametrize("case", [case for case in CASES if case != "cluster-only"])
def test_node_agent_reads_the_host_read_only(rendered: dict[str, list[Manifest]], case: str) -> None:
    daemonset = one(rendered[case], "DaemonSet")
    spec = pod_spec(daemonset)
    assert spec["hostPID"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert {"operator": "Exists"} in spec["tolerations"], "must tolerate every taint"
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert sorted(host_paths.values()) == ["/proc", "/sys"]
    mounts = {m["name"]: m for m in agent_container(daemonset)["volumeMounts"]}
    mounted_at = {host_paths[name]: mounts[name] for name in host_paths}
    assert mounted_at["/proc"]["mountPath"] == "/host/proc"
    assert mounted_at["/sys"]["mountPath"] == "/host/sys"
    assert all(mount["readOnly"] is True for mount in mounted_at.values())
    assert not [v for v in spec["volumes"] if "secret" in v or "projected" in v]
    node_name = next(e for e in agent_container(daemonset)["env"] if e["name"] == "TIERWATCH_HOST__NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("case", [case for case in CASES if case != "daemonset-only"])
def test_cluster_agent_is_a_single_poller(rendered: dict[str, list[Manifest]], case: str) -> None:
    deployment = one(rendered[case], "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(deployment)
    assert not spec.get("hostPID")
    assert not spec.get("hostNetwork")
    assert not [v for v in spec["volumes"] if "hostPath" in v]
    uses_api = bool(of_kind(rendered[case], "Role", "ClusterRole"))
    assert spec["automountServiceAccountToken"] is uses_api
    assert spec["enableServiceLinks"] is False


# --- RBAC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_rbac_only_reads_the_four_resources(rendered: dict[str, list[Manifest]], case: str) -> None:
    docs = rendered[case]
    roles = of_kind(docs, "Role", "ClusterRole")
    if case == "daemonset-only":
        assert not roles
        assert not of_kind(docs, "RoleBinding", "ClusterRoleBinding")
        return
    # A Role in the one namespace the collector reads, unless a values file asks for cluster-wide.
    cluster_wide = case in CI_VALUES and ci_values(case).get("rbac", {}).get("clusterWide") is True
    expected_kind = "ClusterRole" if cluster_wide else "Role"
    role = one(docs, expected_kind)
    assert len(roles) == 1
    granted = set()
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= READ_VERBS, rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert "secrets" not in rule["resources"], rule
        assert not rule.get("nonResourceURLs"), rule
        granted |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == WATCHED_RESOURCES
    binding = one(docs, f"{expected_kind}Binding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": expected_kind,
        "name": role["metadata"]["name"],
    }
    account = pod_spec(one(docs, "Deployment"))["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    if expected_kind == "Role":
        values = ci_values(case) if case in CI_VALUES else {}
        watched = values.get("clusterAgent", {}).get("kubernetes", {}).get("namespace") or NAMESPACE
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == watched


# --- configs ------------------------------------------------------------------------------------


def load_agent_config(docs: list[Manifest], workload: Manifest, tmp_path: Path) -> Config:
    """The workload's config file from its ConfigMap, with password files pointed at stand-ins."""
    container = agent_container(workload)
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    config_volume = next(name for name, path in mounts.items() if path == str(config_path.parent))
    config_map = named(docs, "ConfigMap", volumes[config_volume]["configMap"]["name"])
    raw = yaml.safe_load(config_map["data"][config_path.name])
    mounted_keys = {
        f"{mounts[name]}/{item['path']}"
        for name, volume in volumes.items()
        if "secret" in volume
        for item in volume["secret"]["items"]
    }
    for section in ("postgres", "pgbouncer", "redis"):
        for entry in raw.get(section, []):
            assert "password" not in entry, f"{section} {entry['name']}: inline password"
            if "password_file" in entry:
                assert entry["password_file"] in mounted_keys, f"{section} {entry['name']}: not mounted"
                stand_in = tmp_path / f"{section}-{entry['name']}"
                stand_in.write_text("stand-in\n")
                entry["password_file"] = str(stand_in)
    path = tmp_path / f"{workload['kind']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, environment(container))


@pytest.mark.parametrize("case", CASES)
def test_rendered_configs_load_in_the_agent(
    rendered: dict[str, list[Manifest]], case: str, tmp_path: Path
) -> None:
    docs = rendered[case]
    for daemonset in of_kind(docs, "DaemonSet"):
        config = load_agent_config(docs, daemonset, tmp_path)
        assert config.host.enabled
        assert config.host.name == NODE_NAME
        assert (config.host.procfs, config.host.sysfs, config.host.cgroupfs) == (
            Path("/host/proc"),
            Path("/host/sys"),
            Path("/sys/fs/cgroup"),
        )
        assert (config.postgres, config.pgbouncer, config.redis, config.app) == ((), (), (), ())
        assert not config.kubernetes.enabled
    for deployment in of_kind(docs, "Deployment"):
        config = load_agent_config(docs, deployment, tmp_path)
        assert not config.host.enabled
        assert all(entry.dsn.get_secret_value() for entry in (*config.postgres, *config.pgbouncer))
        for entry in (*config.postgres, *config.pgbouncer, *config.redis):
            # A password reaches the agent only as a file mounted from the Secret.
            if entry.password is not None:
                assert entry.password_file is not None
                assert entry.password.get_secret_value() == "stand-in"


def test_ci_values_reach_the_agent(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    docs = rendered["everything-on"]
    config = load_agent_config(docs, one(docs, "Deployment"), tmp_path)
    assert [entry.name for entry in config.postgres] == ["orders", "billing-db"]
    # The DSN with a password arrives through the environment, from the Secret.
    assert config.postgres[1].dsn.get_secret_value() == SECRET_DSN
    assert config.redis[1].url.get_secret_value() == SECRET_URL
    assert [(entry.name, entry.metrics_url) for entry in config.app] == [
        ("api", "http://api-0.api-headless.shop.svc:8000/metrics"),
        ("worker", SECRET_METRICS_URL),
    ]
    assert config.postgres[0].vcpus == 8
    assert config.kubernetes.namespace == "shop"
    assert config.kubernetes.hpas == ("api", "worker")
    assert config.interval == 10
    assert set(config.rules) == {"DatabaseBound", "CPUThrottled", "ConnectionPoolExhaustion"}
    assert config.alertmanager.labels == {"cluster": "ci"}


# --- secrets ------------------------------------------------------------------------------------


def with_sentinel_passwords(values: dict[str, Any]) -> dict[str, Any]:
    """Every target gets an inline password, and secret.data a key: all set to the sentinel."""
    for section in ("postgres", "pgbouncer", "redis"):
        for entry in values["clusterAgent"].get(section, []):
            entry["password"] = SENTINEL
    values.setdefault("secret", {})["data"] = {"extra-password": SENTINEL}
    return values


def assert_sentinel_absent(text: str) -> None:
    assert SENTINEL not in text
    assert base64.b64encode(SENTINEL.encode()).decode() not in text


def test_existing_secret_keeps_every_password_out(helm: str, tmp_path: Path) -> None:
    values = with_sentinel_passwords(ci_values("existing-secret"))
    text = template(helm, "--values", write_values(tmp_path, values))
    assert_sentinel_absent(text)
    docs = documents(text)
    assert not of_kind(docs, "Secret")
    spec = pod_spec(one(docs, "Deployment"))
    secret_volumes = [v["secret"] for v in spec["volumes"] if "secret" in v]
    assert [v["secretName"] for v in secret_volumes] == ["tierwatch-credentials"]
    # An inline password with an existing Secret means: that Secret holds "<section>-<name>-password".
    assert {item["key"] for item in secret_volumes[0]["items"]} == {
        "orders-password",
        "postgres-billing-password",
        "pgbouncer-password",
        "redis-password",
    }
    env = agent_container(one(docs, "Deployment"))["env"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs == [{"name": "tierwatch-credentials", "key": "billing-dsn"}]


def test_chart_secret_is_the_only_place_of_a_password(helm: str, tmp_path: Path) -> None:
    values = with_sentinel_passwords(ci_values("cluster-only"))
    docs = documents(template(helm, "--values", write_values(tmp_path, values)))
    secret = one(docs, "Secret")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {
        "postgres-orders-password": SENTINEL,
        "pgbouncer-orders-pool-password": SENTINEL,
        "redis-sessions-password": SENTINEL,
        "extra-password": SENTINEL,
    }
    for doc in docs:
        if doc is not secret:
            assert_sentinel_absent(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"postgres": [{"name": "a", "dsn": f"postgresql://u:{SENTINEL}@db/a"}]}, "holds a password"),
        ({"postgres": [{"name": "a", "dsn": f"host=db user=u password={SENTINEL}"}]}, "holds a password"),
        ({"postgres": [{"name": "a", "dsn": f"postgresql://db/a?password={SENTINEL}"}]}, "holds a password"),
        ({"redis": [{"name": "a", "url": f"redis://:{SENTINEL}@cache:6379/0"}]}, "holds a password"),
        # a "/" left unencoded in the password ends the URL's host part before its "@"
        ({"postgres": [{"name": "a", "dsn": f"postgresql://u:x/{SENTINEL}@db/a"}]}, "holds a password"),
        (
            {"app": [{"name": "a", "metrics_url": f"http://u:8081/{SENTINEL}@app/metrics"}]},
            "holds a password",
        ),
        (
            {"app": [{"name": "a", "metrics_url": f"http://u:{SENTINEL}@app:8000/metrics"}]},
            "holds a password",
        ),
        ({"app": [{"name": "a", "metricsUrlKey": "missing"}]}, "not a key of secret.data"),
        ({"postgres": [{"name": "a", "dsnKey": "missing"}]}, "not a key of secret.data"),
        ({"postgres": [{"name": "a", "dsn": "host=db", "dsnKey": "a-dsn"}]}, "not both"),
        ({"postgres": [{"name": "a:b", "dsn": "host=db", "password": SENTINEL}]}, "may only hold"),
        ({"pgbouncer": [{"name": "a"}]}, "set dsn, or dsnKey"),
        ({"config": {"postgres": []}}, "clusterAgent.config.postgres: not allowed"),
    ],
)
def test_unsafe_or_broken_values_are_refused(
    helm: str, tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    values = write_values(tmp_path, {"clusterAgent": entry})
    result = run_helm(helm, "template", "tw", str(CHART), "--values", values)
    assert result.returncode != 0
    assert message in result.stderr
    assert SENTINEL not in result.stderr


def test_alertmanager_credentials_never_reach_a_config_map(helm: str, tmp_path: Path) -> None:
    for url in (f"http://admin:{SENTINEL}@alertmanager:9093", f"http://admin:x/{SENTINEL}@alertmanager:9093"):
        check_alertmanager_url_refused(helm, tmp_path, url)


def check_alertmanager_url_refused(helm: str, tmp_path: Path, url: str) -> None:
    for values in (
        {"config": {"alertmanager": {"urls": [url]}}},
        {"nodeAgent": {"config": {"alertmanager": {"urls": [url]}}}},
    ):
        result = run_helm(helm, "template", "tw", str(CHART), "--values", write_values(tmp_path, values))
        assert result.returncode != 0
        assert "alertmanager.urls: a URL holds a password" in result.stderr
        assert SENTINEL not in result.stdout + result.stderr


def test_prometheus_rules_carry_the_configured_overrides(helm: str, tmp_path: Path) -> None:
    overrides = {"CacheIneffective": {"enabled": False}, "DatabaseBound": {"cpu_load_per_vcpu": 0.5}}
    values = write_values(tmp_path, {"prometheusRule": {"enabled": True}, "config": {"rules": overrides}})
    refused = run_helm(helm, "template", "tw", str(CHART), "--values", values)
    assert refused.returncode != 0
    assert "prometheusRule.file" in refused.stderr  # the chart's own file would ignore the overrides
    config = tmp_path / "tierwatch.yaml"
    config.write_text(yaml.safe_dump({"rules": overrides}))
    printed = subprocess.run(
        [str(REPO / ".venv" / "bin" / "tierwatch"), "rules", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(printed.stdout)
    docs = documents(template(helm, "--values", values, "--set-file", f"prometheusRule.file={rules_file}"))
    rules = {rule["alert"]: rule for rule in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert "CacheIneffective" not in rules
    assert "(tierwatch_postgres_load_on_cpu_per_vcpu) >= 0.5" in rules["DatabaseBound"]["expr"]


# --- sidecar ------------------------------------------------------------------------------------

PARENT_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
        - name: api
          image: registry.example.com/api:1.0
        {{- include "tierwatch.sidecar" (dict
              "image" "registry.example.com/tierwatch:0.1.0"
              "port" 10095
              "readiness" .Values.readiness
              "app" (list (dict "name" "api" "metrics_url" "http://127.0.0.1:8000/metrics" "pool_size" 20))
              "config" (dict "interval" 10
                             "alertmanager" (dict "urls" (list "http://am-0:9093" "http://am-1:9093"))
                             "rules" (dict "CPUThrottled" (dict "for" 120)))) | nindent 8 }}
"""


def sidecar_config(container: Manifest) -> Config:
    """The config as `tierwatch run --config /dev/null` reads it in the container; it must not
    auto-detect local servers (an empty file is still a file)."""
    assert container["args"][:3] == ["run", "--config", "/dev/null"]
    detect = mock.patch("agent.detect.detect_local", side_effect=AssertionError("auto-detection ran"))
    with mock.patch.dict(os.environ, environment(container), clear=True), detect:
        return resolve_config(Path("/dev/null"))


@pytest.mark.parametrize("readiness", [False, True])
def test_sidecar_template_renders_a_working_container(helm: str, tmp_path: Path, readiness: bool) -> None:
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    (parent / "Chart.yaml").write_text("apiVersion: v2\nname: shop\nversion: 1.0.0\n")
    (parent / "values.yaml").write_text(f"readiness: {str(readiness).lower()}\n")
    (parent / "templates" / "deployment.yaml").write_text(PARENT_DEPLOYMENT)
    shutil.copytree(CHART, parent / "charts" / "tierwatch", ignore=shutil.ignore_patterns("ci"))
    off = ["--set", "tierwatch.nodeAgent.enabled=false", "--set", "tierwatch.clusterAgent.enabled=false"]
    docs = documents(template(helm, *off, chart=parent))
    deployment = one(docs, "Deployment")
    assert_valid_schema(deployment)
    sidecar = agent_container(deployment)
    assert_hardened(sidecar)
    assert_probe(sidecar, "livenessProbe", "/healthz")
    if readiness:
        assert_probe(sidecar, "readinessProbe", "/readyz")
    else:
        assert "readinessProbe" not in sidecar
    assert sidecar["args"][-2:] == ["--listen", "0.0.0.0:10095"]
    assert_runtime_env(sidecar)
    config = sidecar_config(sidecar)
    assert config.host.name == POD_NAME
    assert [(a.name, a.metrics_url, a.pool_size) for a in config.app] == [
        ("api", "http://127.0.0.1:8000/metrics", 20)
    ]
    assert config.interval == 10
    assert config.alertmanager.urls == ("http://am-0:9093", "http://am-1:9093")
    assert config.rules["CPUThrottled"].for_ == 120
    assert (config.postgres, config.redis) == ((), ())


def test_sidecar_snippet_in_the_docs_works() -> None:
    text = (CHART / "SIDECAR.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block, "SIDECAR.md has no yaml example"
    deployment = yaml.safe_load(block.group(1))
    assert_valid_schema(deployment)
    sidecar = agent_container(deployment)
    assert_hardened(sidecar)
    assert_probe(sidecar, "livenessProbe", "/healthz")
    assert_runtime_env(sidecar)
    config = sidecar_config(sidecar)
    assert config.host.name == POD_NAME
    assert config.app[0].metrics_url == "http://127.0.0.1:8000/metrics"
    assert config.app[0].hpa == "api"
