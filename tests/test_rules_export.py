"""`tierwatch rules` emits valid Prometheus alerting rules that fire like the classifier does, and
`tierwatch check` turns a verdict into its exit status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.proc_trees import DATA
from tests.support import REPO, require_tool


def tierwatch(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent.cli", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def exported_rules(tmp_path: Path) -> Path:
    result = tierwatch("rules")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "tierwatch-rules.yaml"
    path.write_text(result.stdout)
    return path


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "/usr/bin/promtool")
    path = exported_rules(tmp_path)
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = [rule["alert"] for rule in yaml.safe_load(path.read_text())["groups"][0]["rules"]]
    assert "MemorySwapping" in names


def test_fractional_and_large_durations_are_written_as_prometheus_reads_them(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "/usr/bin/promtool")
    config = tmp_path / "tierwatch.yaml"
    overrides = {"DatabaseBound": {"for": 2.5}, "CacheIneffective": {"keep_firing_for": 1000000}}
    config.write_text(yaml.safe_dump({"rules": overrides}))
    result = tierwatch("rules", config=config)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "rules.yaml"
    path.write_text(result.stdout)
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = {rule["alert"]: rule for rule in yaml.safe_load(result.stdout)["groups"][0]["rules"]}
    assert rules["DatabaseBound"]["for"] == "2500ms"
    assert rules["CacheIneffective"]["keep_firing_for"] == "1000000s"


def promtool_test(tmp_path: Path, cases: list[dict[str, Any]]) -> None:
    promtool = require_tool("promtool", "/usr/bin/promtool")
    rules = exported_rules(tmp_path)
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "15s", "tests": cases})
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def expect_alerts(tmp_path: Path, series: list[dict[str, str]], checks: list[dict[str, Any]]) -> None:
    """promtool's alerts from the exported rules over ``series`` (15 s apart) at each check's eval_time."""
    promtool_test(tmp_path, [{"interval": "15s", "input_series": series, "alert_rule_test": checks}])


def test_memory_rule_fires_after_its_for_and_names_the_figures(tmp_path: Path) -> None:
    series = [
        {"series": 'tierwatch_host_memory_used_ratio{target="node-a"}', "values": "0.95x10"},
        {"series": 'tierwatch_host_swap_in_pages_per_second{target="node-a"}', "values": "500x10"},
        {"series": 'tierwatch_host_memory_used_ratio{target="node-b"}', "values": "0.5x10"},
        {"series": 'tierwatch_host_swap_in_pages_per_second{target="node-b"}', "values": "500x10"},
    ]
    firing = {
        "exp_labels": {"severity": "critical", "tier": "host", "target": "node-a"},
        "exp_annotations": {
            "summary": "node-a is swapping: memory 95% used, 500/s pages swapped in, memory stall unknown",
            "remediation": _remediation("MemorySwapping"),
            "runbook_url": "docs/alerts/MemorySwapping.md",
        },
    }
    expect_alerts(
        tmp_path,
        series,
        [
            {"eval_time": "45s", "alertname": "MemorySwapping", "exp_alerts": []},  # still pending
            {"eval_time": "75s", "alertname": "MemorySwapping", "exp_alerts": [firing]},
            # the swap traffic explains the disk: no DiskIOBound for either host
            {"eval_time": "75s", "alertname": "DiskIOBound", "exp_alerts": []},
        ],
    )


def _remediation(name: str) -> str:
    from alerts.table import RULES

    return next(rule.remediation for rule in RULES if rule.name == name)


def check_with_tree(tmp_path: Path, tree: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``tierwatch check`` of a recorded host; JSON unless ``options`` are given."""
    root = DATA / tree / "t1"
    config = tmp_path / "check.yaml"
    host = {
        "name": "node-a",
        "procfs": str(root / "proc"),
        "sysfs": str(root / "sys"),
        "cgroupfs": str(root / "cgroup"),
    }
    config.write_text(yaml.safe_dump({"host": host}))
    return tierwatch("check", *(options or ("--duration", "0.2", "--json")), config=config)


def test_check_exits_1_and_explains_a_bottleneck(tmp_path: Path) -> None:
    result = check_with_tree(tmp_path, "swapping")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    found = {(b["name"], b["target"]) for b in report["bottlenecks"]}
    assert ("MemorySwapping", "node-a") in found
    swapping = next(b for b in report["bottlenecks"] if b["name"] == "MemorySwapping")
    assert swapping["evidence"]["host_memory_used_ratio"] == 0.95
    assert swapping["remediation"] == _remediation("MemorySwapping")
    unknown = {u["name"]: u["missing_signals"] for u in report["unknown"]}
    assert unknown["CPUThrottled"] == ["host_cpu_throttled_ratio"]
    table = check_with_tree(tmp_path, "swapping", "--duration", "0.2").stdout.splitlines()
    at = table.index("  MemorySwapping (node-a): " + swapping["summary"])
    assert table[at + 1 : at + 3] == [
        f"    what to do: {swapping['remediation']}",
        "    runbook: docs/alerts/MemorySwapping.md",
    ]
    assert "  CPUThrottled (node-a): missing host_cpu_throttled_ratio" in table


def test_check_exits_0_on_a_quiet_host(tmp_path: Path) -> None:
    result = check_with_tree(tmp_path, "no-psi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["bottlenecks"] == []


def test_helm_chart_ships_the_same_rules() -> None:
    """The chart's PrometheusRule renders helm/tierwatch/files/prometheus-rules.yaml: it must be exactly
    what `tierwatch rules` prints (regenerate it with `tierwatch rules > ...` after changing the table)."""
    shipped = (REPO / "helm" / "tierwatch" / "files" / "prometheus-rules.yaml").read_text()
    assert shipped == tierwatch("rules").stdout


def _rule(name: str) -> Any:
    from alerts.table import RULES

    return next(rule for rule in RULES if rule.name == name)


def fired(name: str, target: str, summary: str, **labels: str) -> dict[str, Any]:
    """What promtool sees of the exported rule ``name`` firing for ``target`` (its default advice)."""
    rule = _rule(name)
    return {
        "exp_labels": {"severity": rule.severity.value, "tier": rule.tier, "target": target, **labels},
        "exp_annotations": {
            "summary": summary,
            "remediation": rule.remediation,
            "runbook_url": f"docs/alerts/{name}.md",
        },
    }


POOL_LABELS = '{target="pool",database="app",user="app"}'


def test_connection_rule_fires_for_the_server_and_for_the_pooler(tmp_path: Path) -> None:
    series = [
        {"series": 'tierwatch_postgres_connections_used_ratio{target="main"}', "values": "0.95x10"},
        {"series": 'tierwatch_postgres_connections_used_ratio{target="replica"}', "values": "0.5x10"},
        {
            "series": 'tierwatch_pgbouncer_clients_waiting{target="pool",database="app",user="app"}',
            "values": "3x10",
        },
        {"series": "tierwatch_pgbouncer_longest_client_wait_seconds" + POOL_LABELS, "values": "2x10"},
    ]

    expect_alerts(
        tmp_path,
        series,
        [
            {
                "eval_time": "0s",
                "alertname": "ConnectionPoolExhaustion",
                "exp_alerts": [],
            },  # for 15 s
            {
                "eval_time": "30s",
                "alertname": "ConnectionPoolExhaustion",
                "exp_alerts": [
                    fired(
                        "ConnectionPoolExhaustion",
                        "main",
                        "main is running out of connections: 95% of the usable connections are in use",
                        collector="postgres",
                    ),
                    fired(
                        "ConnectionPoolExhaustion",
                        "pool",
                        "pool: 3 clients wait for a pooled server connection (longest 2s)",
                        collector="pgbouncer",
                    ),
                ],
            },
        ],
    )


def test_redis_memory_rule_fires_on_refused_writes_and_on_evictions_without_errorstats(
    tmp_path: Path,
) -> None:
    # "sessions": noeviction, full, refusing writes; "legacy": Redis before 6.2, no OOM series at all,
    # evicting; "roomy": full but neither evicting nor refusing.
    used, evicted, refused = (
        "tierwatch_redis_memory_used_ratio",
        "tierwatch_redis_evicted_keys_per_second",
        "tierwatch_redis_oom_rejected_commands_per_second",
    )
    figures = {
        "sessions": {used: 1.02, evicted: 0, refused: 50},
        "legacy": {used: 0.95, evicted: 10},
        "roomy": {used: 0.95, evicted: 0, refused: 0},
    }
    series = [
        {"series": f'{metric}{{target="{target}"}}', "values": f"{number}x10"}
        for target, values in figures.items()
        for metric, number in values.items()
    ]

    expect_alerts(
        tmp_path,
        series,
        [
            {
                "eval_time": "75s",
                "alertname": "RedisMemoryPressure",
                "exp_alerts": [
                    fired(
                        "RedisMemoryPressure",
                        "legacy",
                        "legacy: memory at 95% of maxmemory, evicting 10/s keys, refusing unknown "
                        "commands (OOM)",
                    ),
                    fired(
                        "RedisMemoryPressure",
                        "sessions",
                        "sessions: memory at 102% of maxmemory, evicting 0/s keys, refusing 50/s "
                        "commands (OOM)",
                    ),
                ],
            },
        ],
    )


def test_ceiling_rule_per_hpa_and_its_advice_with_a_saturated_database(tmp_path: Path) -> None:
    ceiling = _rule("HorizontalScalingCeiling")
    hpa_series = [
        {"series": 'tierwatch_kubernetes_hpa_at_max_replicas{target="shop",hpa="web"}', "values": "1x20"},
        {
            "series": 'tierwatch_kubernetes_hpa_usage_to_target_ratio{target="shop",hpa="web"}',
            "values": "1.5x20",
        },
        {"series": 'tierwatch_kubernetes_hpa_max_replicas{target="shop",hpa="web"}', "values": "6x20"},
        # at its maximum too, but within the HPA's 10% tolerance of target: no ceiling
        {"series": 'tierwatch_kubernetes_hpa_at_max_replicas{target="shop",hpa="api"}', "values": "1x20"},
        {
            "series": 'tierwatch_kubernetes_hpa_usage_to_target_ratio{target="shop",hpa="api"}',
            "values": "1.05x20",
        },
    ]
    saturated_db = [{"series": 'tierwatch_postgres_load_on_cpu_per_vcpu{target="main"}', "values": "1.2x20"}]

    def case(extra: list[dict[str, str]], remediation: str) -> dict[str, Any]:
        fired = {
            "exp_labels": {
                "severity": "warning",
                "tier": "app",
                "target": "shop/web",
                "hpa": "web",
                "namespace": "shop",
            },
            "exp_annotations": {
                "summary": "HPA shop/web is at its maximum of 6 replicas and still at 150% of its target",
                "remediation": remediation,
                "runbook_url": "docs/alerts/HorizontalScalingCeiling.md",
            },
        }
        return {
            "interval": "15s",
            "input_series": hpa_series + extra,
            "alert_rule_test": [
                {"eval_time": "90s", "alertname": "HorizontalScalingCeiling", "exp_alerts": []},  # for 120 s
                {"eval_time": "150s", "alertname": "HorizontalScalingCeiling", "exp_alerts": [fired]},
            ],
        }

    (saturated_advice,) = (text for _, text in ceiling.remediation_if)
    promtool_test(tmp_path, [case([], ceiling.remediation), case(saturated_db, saturated_advice)])


PRINTF = re.compile(r"printf `([^`]*)`((?: \$labels\.\w+)*) \| query")


def test_every_figure_query_gets_a_label_value_for_each_verb(tmp_path: Path) -> None:
    # A signal's PromQL may name its series twice (a quotient); each mention needs the label values.
    rules = yaml.safe_load(exported_rules(tmp_path).read_text())["groups"][0]["rules"]
    checked = 0
    for rule in rules:
        for text in rule["annotations"].values():
            for query, arguments in PRINTF.findall(text):
                verbs = re.findall(r"%(?:\[(\d+)\])?q", query)
                assert verbs, (rule["alert"], query)
                assert all(index for index in verbs), (rule["alert"], query)  # no bare %q
                assert max(int(index) for index in verbs) == len(arguments.split()), (rule["alert"], query)
                checked += 1
    assert checked >= len(rules)


def test_figures_of_quotients_and_maxima_are_filled_in(tmp_path: Path) -> None:
    db = '{target="db"}'
    series = [
        {"series": f"tierwatch_postgres_load_on_cpu_per_vcpu{db}", "values": "1.2x10"},
        {"series": f"tierwatch_postgres_host_vcpus{db}", "values": "2x10"},
        {
            "series": 'tierwatch_postgres_load_average_active_sessions{target="db",wait_class="cpu"}',
            "values": "2.4x10",
        },
        {
            "series": 'tierwatch_postgres_load_average_active_sessions{target="db",wait_class="lock"}',
            "values": "3x10",
        },
        {
            "series": 'tierwatch_postgres_replica_replay_lag_seconds{target="db",replica="r1"}',
            "values": "40x10",
        },
        {
            "series": 'tierwatch_postgres_replica_replay_lag_seconds{target="db",replica="r2"}',
            "values": "5x10",
        },
    ]

    cpu_bound = (
        "db is CPU-bound: sessions on CPU are 120% of its 2 vCPUs (total load 270%, host CPU unknown); "
        "app tier CPU unknown"
    )
    expect_alerts(
        tmp_path,
        series,
        [
            {
                "eval_time": "75s",
                "alertname": "DatabaseBound",
                "exp_alerts": [fired("DatabaseBound", "db", cpu_bound)],
            },
            {
                "eval_time": "75s",
                "alertname": "ReplicationLagHigh",
                "exp_alerts": [fired("ReplicationLagHigh", "db", "db: a replica is 40s behind the primary")],
            },
        ],
    )


def test_check_refuses_a_duration_it_cannot_wait_for() -> None:
    for duration in ("nan", "-1", "inf"):
        result = tierwatch("check", "--duration", duration)
        assert result.returncode == 2, (duration, result.stderr)  # never 1, "bottleneck found"
        assert "argument --duration" in result.stderr


def test_one_alert_per_target_whatever_labels_the_scrape_adds(tmp_path: Path) -> None:
    """Prometheus adds job, instance, pod ... to each scraped series. An alert is still one per target,
    labelled as the agent labels it: when iowait and the disk both hold, and when two agent pods (a
    rolling update) export the same database."""

    def scraped(pod: str) -> str:
        return f'job="tierwatch",instance="{pod}:10090",pod="{pod}"'

    def point(metric: str, labels: str, values: str) -> dict[str, str]:
        return {"series": f"tierwatch_{metric}{{{labels}}}", "values": values}

    old, new = scraped("tierwatch-old"), scraped("tierwatch-new")
    series = [
        point("host_cpu_iowait_ratio", f'target="node-a",{old}', "0.3x20"),
        point("host_disk_busy_ratio", f'target="node-a",device="sda",{old}', "0.95x20"),
    ]
    for pod in (old, new):
        series += [
            point("postgres_load_average_active_sessions", f'target="db",wait_class="lock",{pod}', "3x20"),
            point("postgres_load_lock_wait_ratio", f'target="db",{pod}', "0.9x20"),
            point("postgres_blocked_sessions", f'target="db",{pod}', "9x20"),
        ]

    disk = "node-a waits on disk: iowait 30%, busiest disk 95% busy, io stall unknown"
    locks = "db: sessions wait on locks: 3 sessions on average (90% of the DB load), 9 blocked"
    expect_alerts(
        tmp_path,
        series,
        [
            {
                "eval_time": "150s",
                "alertname": "DiskIOBound",
                "exp_alerts": [fired("DiskIOBound", "node-a", disk)],
            },
            {
                "eval_time": "150s",
                "alertname": "LockContention",
                "exp_alerts": [fired("LockContention", "db", locks)],
            },
        ],
    )
