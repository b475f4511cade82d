"""The Grafana dashboards under helm/tierwatch/dashboards.

Each must import into Grafana 10/11 as is (no ``__inputs`` to fill in, the data source chosen through a
variable) and show only what the agent exports: every PromQL expression is parsed with promql-parser and
every metric it selects is looked up in the collectors' MetricSpec tables, the agent's self-metrics and,
for the tiers that need no server, the /metrics page of real agent runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from alerts.signal_table import SIGNALS
from collectors.app import AppCollector
from collectors.base import Collector
from collectors.host import HostCollector
from collectors.kubernetes.collector import KubernetesCollector
from collectors.pgbouncer import PgBouncerCollector
from collectors.postgres import PostgresCollector
from collectors.redis import RedisCollector
from tests.proc_trees import DATA
from tests.support import REPO, AgentProcess, require_tool
from tests.test_helm_chart import NAMESPACE, documents, template

DASHBOARDS = REPO / "helm" / "tierwatch" / "dashboards"
NAMES = ("overview", "host", "postgresql", "redis", "kubernetes")
PREFIX = "tierwatch_"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

COLLECTORS: tuple[type[Collector], ...] = (
    HostCollector,
    PostgresCollector,
    PgBouncerCollector,
    RedisCollector,
    KubernetesCollector,
    AppCollector,
)
COLLECTOR_NAMES = frozenset(collector.name for collector in COLLECTORS)
METRIC_COLLECTOR = {
    PREFIX + spec.name: collector.name for collector in COLLECTORS for spec in collector.metrics
}
# The exporter puts the target label first on every tier series (agent/exporter.py).
TIER_METRICS: dict[str, frozenset[str]] = {
    PREFIX + spec.name: frozenset({"target", *spec.labels})
    for collector in COLLECTORS
    for spec in collector.metrics
}
SELF_METRICS: dict[str, frozenset[str]] = {
    "tierwatch_collector_up": frozenset({"collector", "target"}),
    "tierwatch_collector_duration_seconds": frozenset({"collector", "target"}),
    "tierwatch_collector_errors_total": frozenset({"collector", "target", "reason"}),
    "tierwatch_collector_last_success_timestamp_seconds": frozenset({"collector", "target"}),
    "tierwatch_build_info": frozenset({"version"}),
    "tierwatch_alert": frozenset({"alertname", "alertstate", "severity", "tier", "target"}),
    "tierwatch_signal_value": frozenset({"signal", "target"}),
    "tierwatch_alertmanager_alerts_sent_total": frozenset({"alertmanager"}),
    "tierwatch_alertmanager_alerts_failed_total": frozenset({"alertmanager"}),
    "tierwatch_alertmanager_alerts_dropped_total": frozenset(),
}
EXPORTED = {**TIER_METRICS, **SELF_METRICS}
# Prometheus attaches these at scrape time.
SCRAPE_LABELS = frozenset({"instance", "job"})
EXPORTED_SIGNALS = frozenset(name for name, signal in SIGNALS.items() if signal.exported)
# The names a live agent with the host collector and an app process target must show.
LIVE_PREFIXES = ("tierwatch_host_", "tierwatch_app_process", "tierwatch_collector_", "tierwatch_build_info")

# Grafana replaces these before a query reaches Prometheus; the test does the same with concrete values,
# distinctive enough to recognise the filters afterwards.
VARIABLES = {
    "target": "tw-target-a|tw-target-b",
    "instance": "tw-agent-1:10090|tw-agent-2:10090",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# Grafana's label_values(<series selector>, <label>) template query.
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)$")

PER_SECOND_UNITS = frozenset({"reqps", "ops", "cps", "rps", "wps", "iops", "pps"})
# Grafana units by metric name suffix, first match wins.
UNITS: tuple[tuple[str, frozenset[str]], ...] = (
    ("_timestamp_seconds", frozenset({"s", "dateTimeAsIso", "dateTimeFromNow"})),
    ("_seconds", frozenset({"s"})),
    ("_bytes", frozenset({"bytes"})),
    ("_per_second", PER_SECOND_UNITS),
    ("_ratio", frozenset({"percentunit"})),
)
# The same for rate() of a counter.
RATE_UNITS: tuple[tuple[str, frozenset[str]], ...] = (
    # Seconds per second: a share of wall time, or cores for CPU time.
    ("_seconds_total", frozenset({"percentunit", "short"})),
    ("_bytes_total", frozenset({"Bps", "binBps"})),
    ("_total", PER_SECOND_UNITS),
)
# Named _ratio although not a 0..1 share: RSS / used memory, 1.5 reads better than 150%.
NOT_A_SHARE = frozenset({"tierwatch_redis_memory_fragmentation_ratio"})
TIERS = ("host", "database", "pooler", "cache", "app", "autoscaling")

Dashboard = dict[str, Any]
Panel = dict[str, Any]


def load(name: str) -> Dashboard:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def all_panels(dashboard: Dashboard) -> Iterator[Panel]:
    """Every panel, including those inside collapsed rows (Grafana nests them in the row)."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: Dashboard) -> Iterator[tuple[Panel, dict[str, Any]]]:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown variable ${name} in {expr!r}"
        return VARIABLES[name]

    return VARIABLE.sub(value, expr)


def parse(expr: str) -> promql_parser.Expr:
    try:
        return promql_parser.parse(substitute(expr))
    except ValueError as error:
        raise AssertionError(f"PromQL does not parse: {expr!r}: {error}") from None


def selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    """Every series selector; a range selector's inner selector is visited as a node of its own."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    return found


def grouping_labels(expr: promql_parser.Expr) -> set[str] | None:
    """The labels the outermost aggregation keeps (its by clause); None when nothing aggregates."""
    if isinstance(expr, promql_parser.ParenExpr):
        return grouping_labels(expr.expr)
    if not isinstance(expr, promql_parser.AggregateExpr):
        return None
    modifier = expr.modifier
    assert modifier is not None, expr
    assert modifier.type == promql_parser.AggModifierType.By, expr
    return set(modifier.labels)


def calls(expr: promql_parser.Expr) -> set[str]:
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.Call):
            found.add(node.func.name)

    promql_parser.walk(expr, visit)
    return found


@dataclass(frozen=True)
class Match:
    label: str
    op: promql_parser.MatchOp
    value: str


def matchers(selector: promql_parser.VectorSelector) -> list[Match]:
    return [Match(m.name, m.op, m.value) for m in selector.matchers.matchers]


def metric_names(expr: str) -> set[str]:
    return {selector.name for selector in selectors(parse(expr))}


def panel_metrics(panel: Panel) -> set[str]:
    return {name for target in panel.get("targets", []) for name in metric_names(target["expr"])}


def variable(dashboard: Dashboard, name: str) -> dict[str, Any]:
    found = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"{dashboard['uid']}: variable {name} defined {len(found)} times"
    return found[0]


def variable_query(var: dict[str, Any]) -> str:
    query = var["query"]
    return query["query"] if isinstance(query, dict) else query


def unit_of(panel: Panel, ref_id: str) -> str | None:
    """The unit Grafana shows a query's series in: an override by the query's refId, else the default."""
    unit = panel["fieldConfig"]["defaults"].get("unit")
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref_id}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    unit = prop["value"]
    return unit


def expected_units(expr: str) -> frozenset[str] | None:
    """The units a single-metric query must be shown in, from the metric's name; None when free."""
    parsed = parse(expr)
    names = {selector.name for selector in selectors(parsed)}
    if len(names) != 1 or names & NOT_A_SHARE:
        return None  # arithmetic over several metrics: the panel's author decides
    (name,) = names
    table = RATE_UNITS if calls(parsed) & {"rate", "irate"} else UNITS
    return next((units for suffix, units in table if name.endswith(suffix)), None)


@pytest.fixture(scope="module", params=NAMES)
def dashboard(request: pytest.FixtureRequest) -> Dashboard:
    return load(request.param)


def test_the_chart_ships_exactly_these_dashboards() -> None:
    assert sorted(path.stem for path in DASHBOARDS.glob("*.json")) == sorted(NAMES)


def test_model_imports_without_inputs(dashboard: Dashboard) -> None:
    # __inputs would make Grafana ask for a data source on import and break the sidecar's provisioning.
    assert "__inputs" not in dashboard
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None
    assert dashboard["title"].startswith("tierwatch / ")
    assert re.fullmatch(r"tierwatch-[a-z]+", dashboard["uid"])
    assert "tierwatch" in dashboard["tags"]


def test_uids_and_titles_are_stable_and_unique() -> None:
    dashboards = {name: load(name) for name in NAMES}
    # Links and bookmarks use the uid, so it follows the file name and never changes.
    assert {name: d["uid"] for name, d in dashboards.items()} == {name: f"tierwatch-{name}" for name in NAMES}
    assert dashboards["overview"]["title"] == "tierwatch / Overview"
    assert len({d["title"] for d in dashboards.values()}) == len(NAMES)


def test_datasource_target_and_instance_variables(dashboard: Dashboard) -> None:
    names = [v["name"] for v in dashboard["templating"]["list"]]
    # A variable can only use variables defined before it: target's query filters by $instance.
    assert names[:3] == ["datasource", "instance", "target"]
    datasource = variable(dashboard, "datasource")
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for name, metric in (("instance", "tierwatch_build_info"), ("target", "tierwatch_collector_up")):
        var = variable(dashboard, name)
        assert var["type"] == "query"
        assert var["multi"] is True
        assert var["includeAll"] is True
        assert var["datasource"] == DATASOURCE
        match = LABEL_VALUES.match(variable_query(var))
        assert match, variable_query(var)
        assert match["label"] == name
        (selector,) = selectors(parse(match["selector"]))
        assert selector.name == metric
        if name == "target":  # chained: choosing agents narrows the targets offered
            assert Match("instance", promql_parser.MatchOp.Re, VARIABLES["instance"]) in matchers(selector)
        for matcher in matchers(selector):
            assert matcher.label in EXPORTED[metric] | SCRAPE_LABELS
            if matcher.label == "collector":
                assert set(matcher.value.split("|")) <= COLLECTOR_NAMES, matcher


def test_detail_dashboards_list_only_their_collectors_targets() -> None:
    expected = {
        "host": {"host"},
        "postgresql": {"postgres", "pgbouncer"},
        "redis": {"redis"},
        "kubernetes": {"kubernetes", "app"},
    }
    for name, collectors in expected.items():
        query = variable_query(variable(load(name), "target"))
        match = LABEL_VALUES.match(query)
        assert match, query
        (selector,) = selectors(parse(match["selector"]))
        values = [m.value for m in matchers(selector) if m.label == "collector"]
        assert [set(v.split("|")) for v in values] == [collectors], query


def series_collectors(selector: promql_parser.VectorSelector) -> set[str]:
    """The collectors whose targets a selector's series carry in their target label."""
    if selector.name in METRIC_COLLECTOR:
        return {METRIC_COLLECTOR[selector.name]}
    found = matchers(selector)
    if selector.name == "tierwatch_signal_value":
        return {SIGNALS[m.value].subject for m in found if m.label == "signal"}
    return {c for m in found if m.label == "collector" for c in m.value.split("|")}


def test_detail_dashboards_query_only_the_targets_they_offer() -> None:
    # Choosing targets sends their names, not "All" (.*): a series of a collector the variable does
    # not list has no target among them and vanishes from its panel.
    for name in NAMES:
        if name == "overview":
            continue  # its variable lists every collector's targets
        dashboard = load(name)
        (offered,) = selectors(
            parse(LABEL_VALUES.match(variable_query(variable(dashboard, "target")))["selector"])
        )
        listed = {c for m in matchers(offered) if m.label == "collector" for c in m.value.split("|")}
        assert listed, name
        for panel, target in expressions(dashboard):
            for selector in selectors(parse(target["expr"])):
                if "target" in EXPORTED[selector.name]:
                    collectors = series_collectors(selector)
                    assert collectors, f"{name} / {panel['title']}: {selector.name}: whose targets?"
                    assert collectors <= listed, f"{name} / {panel['title']}: {target['expr']}"


def test_panel_ids_are_unique_and_panels_fit_the_grid(dashboard: Dashboard) -> None:
    panels = list(all_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), sorted(ids)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["title"], panel["id"]
    # Nested panels only belong in collapsed rows; an open row's panels follow it at the top level.
    for row in dashboard["panels"]:
        if row["type"] == "row" and not row["collapsed"]:
            assert row["panels"] == [], row["title"]


def test_every_query_uses_the_datasource_variable(dashboard: Dashboard) -> None:
    for panel in all_panels(dashboard):
        if panel.get("targets"):
            assert panel["datasource"] == DATASOURCE, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, panel["title"]
                assert target["expr"].strip(), panel["title"]
    assert any(panel.get("targets") for panel in all_panels(dashboard))


def test_every_expression_parses_and_selects_exported_series(dashboard: Dashboard) -> None:
    for panel, target in expressions(dashboard):
        where = f"{dashboard['uid']} / {panel['title']}: {target['expr']}"
        for selector in selectors(parse(target["expr"])):
            # A name regex ({__name__=~...}) could match anything; every selector names its metric.
            assert selector.name, where
            assert selector.name in EXPORTED, f"{where}: {selector.name} is not exported"
            for matcher in matchers(selector):
                assert matcher.label in EXPORTED[selector.name] | SCRAPE_LABELS, f"{where}: {matcher}"
                if matcher.label == "collector":
                    assert set(matcher.value.split("|")) <= COLLECTOR_NAMES, f"{where}: {matcher}"
                if matcher.label == "signal":
                    assert matcher.value in EXPORTED_SIGNALS, f"{where}: {matcher}"


def test_every_selector_follows_the_target_and_instance_variables(dashboard: Dashboard) -> None:
    for panel, target in expressions(dashboard):
        for selector in selectors(parse(target["expr"])):
            found = matchers(selector)
            where = f"{dashboard['uid']} / {panel['title']}: {target['expr']}"
            assert Match("instance", promql_parser.MatchOp.Re, VARIABLES["instance"]) in found, where
            # build_info and the Alertmanager delivery counters have no target label.
            if "target" in EXPORTED[selector.name]:
                assert Match("target", promql_parser.MatchOp.Re, VARIABLES["target"]) in found, where


def test_units_follow_the_metric_names(dashboard: Dashboard) -> None:
    for panel, target in expressions(dashboard):
        if panel["type"] not in {"timeseries", "stat"}:
            continue
        expected = expected_units(target["expr"])
        if expected is not None:
            unit = unit_of(panel, target["refId"])
            assert unit in expected, f"{panel['title']} {target['refId']}: {unit} not in {sorted(expected)}"


def sections(dashboard: Dashboard) -> dict[str, list[Panel]]:
    """Row title -> its panels, whether the row is open (panels follow it) or collapsed (nested)."""
    rows: dict[str, list[Panel]] = {}
    current: list[Panel] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows[panel["title"]] = list(panel["panels"])
        else:
            current.append(panel)
    return rows


def test_overview_has_a_use_row_per_tier() -> None:
    rows = sections(load("overview"))
    for tier in TIERS:
        matching = [title for title in rows if title.lower().startswith(tier)]
        assert len(matching) == 1, (tier, list(rows))
        titles = [panel["title"].lower() for panel in rows[matching[0]]]
        for column in ("utilization", "saturation", "errors"):
            assert any(column in title for title in titles), (tier, column, titles)
        assert any(panel["type"] == "stat" for panel in rows[matching[0]]), tier


def test_overview_shows_the_bottlenecks_and_the_scaling_views() -> None:
    overview = load("overview")
    panels = list(all_panels(overview))
    tables = [
        panel for panel in panels if panel["type"] == "table" and "tierwatch_alert" in panel_metrics(panel)
    ]
    assert tables, "no table of tierwatch_alert"
    (alerts,) = tables
    # Whatever the table aggregates away, it keeps the labels on-call needs to act on.
    for target in alerts["targets"]:
        kept = grouping_labels(parse(target["expr"]))
        assert kept is None or {"alertname", "alertstate", "severity", "tier", "target"} <= kept
    texts = [panel["options"]["content"] for panel in panels if panel["type"] == "text"]
    assert any("/api/v1/alerts" in text and "docs/alerts/<AlertName>.md" in text for text in texts)
    assert any("remediation" in text and "Alertmanager" in text for text in texts)
    views = {
        "DB load by wait class vs vCPUs": {
            "tierwatch_postgres_load_average_active_sessions",
            "tierwatch_postgres_host_vcpus",
        },
        "connections vs usable maximum and projection": {
            "tierwatch_postgres_connections",
            "tierwatch_postgres_usable_connections",
            "tierwatch_signal_value",
        },
        "replicas vs throughput": {
            "tierwatch_kubernetes_hpa_current_replicas",
            "tierwatch_kubernetes_hpa_max_replicas",
            "tierwatch_app_requests_per_second",
            "tierwatch_postgres_commits_total",
        },
    }
    for view, metrics in views.items():
        assert any(metrics <= panel_metrics(panel) for panel in panels), view
    projection = [
        t["expr"] for _, t in expressions(overview) if 'signal="db_projected_connections_ratio"' in t["expr"]
    ]
    assert projection
    assert all("tierwatch_postgres_usable_connections" in expr for expr in projection)


def test_dashboards_render_into_labelled_config_maps() -> None:
    helm = require_tool("helm", str(REPO / ".tools" / "helm"))
    rendered = documents(template(helm, "--set", "dashboards.enabled=true"))
    maps = {
        key: json.loads(text)
        for doc in rendered
        if doc["kind"] == "ConfigMap" and doc["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key, text in doc["data"].items()
    }
    assert maps == {f"{name}.json": load(name) for name in NAMES}
    assert all(doc["metadata"]["namespace"] == NAMESPACE for doc in rendered if doc["kind"] == "ConfigMap")


# ------------------------------------------------------------------------------------- live agent runs

# Long enough that the polls below see every cycle's page before the next cycle replaces it.
INTERVAL = 0.5


@dataclass
class RecordedTree:
    """A recorded /proc tree behind a symlink, switched from snapshot t0 to t1 while an agent reads it.

    Rates and shares of periods need two different snapshots; replacing a symlink is atomic, so the
    agent never reads half a tree.
    """

    name: str
    root: Path

    def __post_init__(self) -> None:
        self.link.symlink_to(DATA / self.name / "t0")

    @property
    def link(self) -> Path:
        return self.root / "live"

    def switch(self) -> None:
        staged = self.root / "live.next"
        staged.symlink_to(DATA / self.name / "t1")
        os.replace(staged, self.link)

    def host_section(self) -> dict[str, str]:
        return {
            "name": f"recorded-{self.name}",
            "procfs": str(self.link / "proc"),
            "sysfs": str(self.link / "sys"),
            "cgroupfs": str(self.link / "cgroup"),
        }


@dataclass
class Observed:
    """An agent whose /metrics is polled, keeping every metric name any page showed.

    Some series exist for one cycle only: the throttled share of CFS periods is absent once a cycle
    sees no new periods, which happens as soon as the recorded tree stops changing.
    """

    agent: AgentProcess
    names: set[str]

    def cycle_started_after(self, moment: float) -> None:
        """Waits until every collector has succeeded in a cycle that started after ``moment``."""

        def done() -> bool:
            series = self.agent.metrics()
            self.names.update(name for name, _ in series)
            ends = {
                labels: v
                for (name, labels), v in series.items()
                if name == "tierwatch_collector_last_success_timestamp_seconds"
            }
            durations = {
                labels: v
                for (name, labels), v in series.items()
                if name == "tierwatch_collector_duration_seconds"
            }
            # The duration runs from before collect() to after the timestamp: end - duration <= start.
            return bool(ends) and all(end - durations.get(key, end) > moment for key, end in ends.items())

        self.agent.wait_for(done, f"a cycle started after {moment}")


@pytest.fixture(scope="module")
def live_metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Metric names on /metrics of real agents with the host collector and an app process target.

    This machine's /proc decides what the host collector can see (no CPU quota, maybe no swap or PSI),
    so two more agents read recorded trees of a throttled container and a swapping host.
    """
    tag = "tierwatch-dashboard-test-app"
    # A sleeping stand-in for the app: the process metrics need a match, not load.
    app = subprocess.Popen([sys.executable, "-c", f"import time\ntime.sleep(60)  # {tag}\n"])
    base = {"interval": INTERVAL}
    trees = {name: RecordedTree(name, tmp_path_factory.mktemp(name)) for name in ("throttled", "swapping")}
    configs = {
        "local": {**base, "host": {"name": "local"}, "app": [{"name": "api", "process": tag}]},
        **{name: {**base, "host": tree.host_section()} for name, tree in trees.items()},
    }
    names: set[str] = set()
    agents = [
        Observed(AgentProcess(tmp_path_factory.mktemp(f"agent-{name}"), config), names)
        for name, config in configs.items()
    ]
    try:
        for observed in agents:  # start all before waiting on any: they boot in parallel
            observed.agent.start(wait_ready=False)
        moment = time.time()
        for observed in agents:
            observed.cycle_started_after(moment)
        # A second cycle: rates need a previous one, and the recorded trees move on to t1 for it.
        moment = time.time()
        for tree in trees.values():
            tree.switch()
        for observed in agents:
            observed.cycle_started_after(moment)
        return names
    finally:
        for observed in agents:
            if observed.agent.process is not None and observed.agent.process.poll() is None:
                observed.agent.stop()
        app.kill()
        app.wait()


def test_dashboards_use_only_series_a_live_agent_exports(live_metric_names: set[str]) -> None:
    used = {
        name
        for dashboard_name in NAMES
        for _, target in expressions(load(dashboard_name))
        for name in metric_names(target["expr"])
    }
    checked = {name for name in used if name.startswith(LIVE_PREFIXES)}
    # Guard against the check passing vacuously when the dashboards stop using these tiers.
    assert {"tierwatch_host_cpu_utilization_ratio", "tierwatch_app_process_cpu_ratio"} <= checked
    assert "tierwatch_build_info" in checked
    assert sorted(checked - live_metric_names) == []
    # The other tiers' names are checked against their MetricSpec tables (the live check needs servers).
    assert used <= set(EXPORTED)


def test_metric_spec_tables_are_the_exporters(live_metric_names: set[str]) -> None:
    # The static table this file trusts for the other tiers is the one the exporter renders from.
    live_tier_names = {
        name for name in live_metric_names if name.startswith(("tierwatch_host_", "tierwatch_app_"))
    }
    assert live_tier_names <= set(TIER_METRICS)
