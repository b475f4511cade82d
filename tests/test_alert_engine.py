"""The rule engine: three-valued conditions, the classifier on recorded hosts, the lifecycle, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.alerting import configured_rules
from agent.config import ConfigError
from agent.config.loader import load_config
from alerts.classifier import Verdict, classify
from alerts.conditions import Compare, NotTrue, WhenPresent, all_of, any_of
from alerts.lifecycle import AlertTracker, State
from alerts.table import RULES, SIGNALS
from collectors.base import Sample
from tests.proc_trees import cycles

LIMITS = {"high": 0.9}
HIGH = Compare("x", ">=", "high")


@pytest.mark.parametrize(
    ("condition", "signals", "truth"),
    [
        (HIGH, {"x": 0.95}, True),
        (HIGH, {"x": 0.5}, False),
        (HIGH, {}, None),
        (all_of(HIGH, Compare("y", ">=", "high")), {"x": 1.0}, None),
        (all_of(HIGH, Compare("y", ">=", "high")), {"x": 0.1}, False),  # one false decides
        (any_of(HIGH, Compare("y", ">=", "high")), {"y": 1.0}, True),  # one true decides
        (any_of(HIGH, Compare("y", ">=", "high")), {"y": 0.1}, None),
        (NotTrue(HIGH), {}, True),  # "not saturated, or unknown"
        (NotTrue(HIGH), {"x": 1.0}, False),
        (any_of(HIGH, WhenPresent(Compare("psi", ">=", "high"))), {"x": 0.1}, False),  # PSI absent: judged
        (any_of(HIGH, WhenPresent(Compare("psi", ">=", "high"))), {"x": 0.1, "psi": 0.95}, True),
    ],
)
def test_three_valued_conditions(condition: object, signals: dict[str, float], truth: bool | None) -> None:
    assert condition.evaluate(signals, LIMITS) is truth  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("signals", "truth"),
    [
        ({"used": 1.02, "evicted": 0, "oom": 40}, True),  # noeviction: full and refusing writes
        ({"used": 0.95, "evicted": 12, "oom": 0}, True),
        ({"used": 0.95, "evicted": 12}, True),  # Redis before 6.2: no errorstats, evictions decide
        ({"used": 0.95, "evicted": 0}, False),  # ... and are judged, not left unknown
        ({"used": 0.95, "evicted": 0, "oom": 0}, False),
        ({"used": 0.5, "evicted": 0, "oom": 40}, False),
        ({"used": 0.95}, None),  # the first cycle: no rates yet
    ],
)
def test_redis_memory_pressure_on_evictions_or_refused_writes(
    signals: dict[str, float], truth: bool | None
) -> None:
    rule = next(rule for rule in RULES if rule.name == "RedisMemoryPressure")
    names = {
        "used": "redis_memory_used_ratio",
        "evicted": "redis_evicted_per_second",
        "oom": "redis_oom_rejected_per_second",
    }
    values = {names[key]: value for key, value in signals.items()}
    assert rule.when["redis"].evaluate(values, rule.thresholds) is truth


def verdicts_for(tree: str, tmp_path: Path) -> dict[str, Verdict]:
    first, second = cycles(tree, tmp_path)
    verdicts = classify({("host", "node-a"): (first, second)}, RULES, SIGNALS)
    return {verdict.rule.name: verdict for verdict in verdicts}


def test_swapping_host_is_named_memory_swapping_not_disk(tmp_path: Path) -> None:
    verdicts = verdicts_for("swapping", tmp_path)
    swapping = verdicts["MemorySwapping"]
    assert swapping.truth is True
    assert swapping.evidence["host_memory_used_ratio"] == pytest.approx(0.95)
    assert swapping.evidence["host_swap_in_per_second"] == pytest.approx(500)
    assert swapping.summary == (
        "node-a is swapping: memory 95% used, 500/s pages swapped in, memory stall 42%"
    )
    # the disk is busy with swap traffic: the cause is memory, so DiskIOBound stays clear
    assert verdicts["DiskIOBound"].truth is False
    # no cgroup quota on this host: throttling is unknown, never assumed
    assert verdicts["CPUThrottled"].truth is None
    assert verdicts["CPUThrottled"].missing == ("host_cpu_throttled_ratio",)


def test_quiet_host_has_nothing(tmp_path: Path) -> None:
    verdicts = verdicts_for("no-psi", tmp_path)
    assert verdicts["MemorySwapping"].truth is False
    assert verdicts["DiskIOBound"].truth is False


def test_throttled_container(tmp_path: Path) -> None:
    verdicts = verdicts_for("throttled", tmp_path)
    throttled = verdicts["CPUThrottled"]
    assert throttled.truth is True
    assert throttled.evidence == pytest.approx(
        {"host_cpu_throttled_ratio": 0.6, "host_cgroup_cpu_limit_ratio": 0.8}
    )


def test_down_target_is_unknown() -> None:
    verdicts = classify({("host", "node-a"): ()}, RULES, SIGNALS)
    assert {v.truth for v in verdicts} == {None}
    assert {v.target_down for v in verdicts} == {True}


def lifecycle_run(truths: list[bool], for_seconds: float = 20, keep: float = 10) -> list[list[State]]:
    return lifecycle_run_with(list(truths), for_seconds, keep)


def lifecycle_run_with(truths: list[bool | None], for_seconds: float, keep: float) -> list[list[State]]:
    """Feeds one verdict every 5 s; returns the active and just-resolved states after each."""
    rule = RULES[0].with_overrides(True, for_seconds, {}, keep_firing_seconds=keep)

    tracker = AlertTracker()
    states = []
    for step, truth in enumerate(truths):
        verdict = Verdict(rule, "host", "node-a", truth, {}, "summary")
        active, resolved = tracker.update([verdict], now=step * 5.0)
        states.append([a.state for a in active] + [a.state for a in resolved])
    return states


def test_lifecycle_pending_firing_keep_firing_resolved() -> None:
    # cycles every 5 s; for 20 s; keep firing 10 s
    states = lifecycle_run([True, True, True, True, True, False, False, False, False])
    assert states == [
        [State.PENDING],
        [State.PENDING],
        [State.PENDING],
        [State.PENDING],
        [State.FIRING],  # held for 20 s
        [State.FIRING],  # kept firing 5 s after the condition ended
        [State.RESOLVED],  # 10 s after: resolved
        [],
        [],
    ]


def test_pending_that_stops_holding_disappears_without_resolution() -> None:
    assert lifecycle_run([True, True, False, False]) == [[State.PENDING], [State.PENDING], [], []]


def test_for_zero_fires_at_once() -> None:
    assert lifecycle_run([True], for_seconds=0) == [[State.FIRING]]


def test_rule_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "rules:\n  MemorySwapping: {for: 5, memory_used_ratio: 0.8}\n  DiskIOBound: {enabled: false}\n"
    )
    rules = {rule.name: rule for rule in configured_rules(load_config(path, environ={}))}
    assert rules["MemorySwapping"].for_seconds == 5
    assert rules["MemorySwapping"].thresholds["memory_used_ratio"] == 0.8
    assert rules["MemorySwapping"].thresholds["swap_in_pages_per_second"] == 10
    assert not rules["DiskIOBound"].enabled
    path.write_text("rules:\n  MemorySwapping: {memory_ratio: 0.8}\n")
    with pytest.raises(
        ConfigError, match=r"MemorySwapping: unknown threshold memory_ratio \(known: memory_stall"
    ):
        configured_rules(load_config(path, environ={}))


def test_table_is_consistent() -> None:
    for rule in RULES:
        used = {name for condition in rule.conditions() for name in condition.thresholds()}
        assert used == set(rule.thresholds), rule.name  # no threshold is dead or undefined
        for name in rule.signal_names():
            assert name in SIGNALS, f"{rule.name} reads unknown signal {name}"
        assert len(rule.remediation.split(". ")) >= 3, f"{rule.name}: remediation too thin"
        assert (Path(__file__).parent.parent / rule.runbook).is_file(), f"{rule.name}: no runbook page"


def test_firing_alert_is_held_while_its_target_is_unknown() -> None:
    # the keep-firing window (10 s) counts from the last unknown cycle, not from the last true one
    states = lifecycle_run_with([True, None, None, False, False, False], for_seconds=0, keep=10)
    assert states == [[State.FIRING], [State.FIRING], [State.FIRING], [State.FIRING], [State.RESOLVED], []]

    assert lifecycle_run_with([True, None], for_seconds=20, keep=5) == [[State.PENDING], []]


def test_a_cycle_landing_just_short_of_for_still_fires() -> None:
    rule = RULES[0].with_overrides(True, 10, {})
    tracker = AlertTracker()
    verdict = Verdict(rule, "host", "node-a", True, {}, "summary")
    tracker.update([verdict], now=100.0)
    active, _ = tracker.update([verdict], now=109.995)  # two 5 s cycles, the second 5 ms early
    assert [alert.state for alert in active] == [State.FIRING]


def test_split_alerts_are_held_while_their_target_is_down() -> None:
    """Each HPA of a namespace is its own alert; while the namespace cannot be read there are no HPA
    names to judge, and the one unknown verdict on the namespace holds them all, but only them."""
    rule = RULES[0].with_overrides(True, 0, {}, keep_firing_seconds=5)
    tracker = AlertTracker()
    firing = [Verdict(rule, "kubernetes", f"shop/{hpa}", True, {}, "s") for hpa in ("web", "api")]
    elsewhere = Verdict(rule, "kubernetes", "shop/admin", True, {}, "s")  # a target of its own
    tracker.update([*firing, elsewhere], now=0.0)
    down = Verdict(rule, "kubernetes", "shop", None, {}, "s", target_down=True)
    quiet = Verdict(rule, "kubernetes", "shop/admin", False, {}, "s")
    for now in (5.0, 10.0, 15.0):
        active, resolved = tracker.update([down, quiet], now=now)
    assert [alert.key[2] for alert in active] == ["shop/api", "shop/web"]
    assert [alert.key[2] for alert in resolved] == []
    # the namespace read again without the "api" HPA: keep_firing (5 s) counts from its last hold
    back = Verdict(rule, "kubernetes", "shop/web", True, {}, "s")
    active, resolved = tracker.update([back, quiet], now=20.0)
    assert [alert.key[2] for alert in active] == ["shop/web"]
    assert [alert.key[2] for alert in resolved] == ["shop/api"]


def test_advice_chosen_by_a_saturated_tier_names_it_in_because() -> None:
    """The ceiling's advice with a saturated shared tier points at 'because': it must name that tier."""
    hpa = ("web",)
    cluster = Sample(
        "kubernetes",
        "shop",
        1.0,
        {
            ("kubernetes_hpa_at_max_replicas", hpa): 1.0,
            ("kubernetes_hpa_usage_to_target_ratio", hpa): 1.5,
            ("kubernetes_hpa_max_replicas", hpa): 6.0,
        },
    )
    database = Sample("postgres", "main", 1.0, {("postgres_load_on_cpu_per_vcpu", ()): 1.2})
    windows = {("kubernetes", "shop"): (cluster,), ("postgres", "main"): (database,)}
    ceiling = next(rule for rule in RULES if rule.name == "HorizontalScalingCeiling")
    (verdict,) = [v for v in classify(windows, (ceiling,), SIGNALS) if v.target == "shop/web"]
    assert verdict.truth
    assert verdict.remediation == ceiling.remediation_if[0][1]
    assert verdict.because == ("hpa_at_max", "hpa_usage_to_target", "db_cpu_load_max_per_vcpu")


def test_swapping_evidence_carries_the_apps_latency() -> None:
    host = Sample(
        "host",
        "node-a",
        1.0,
        {("host_memory_used_ratio", ()): 0.95, ("host_swap_in_pages_per_second", ()): 50.0},
    )
    app = Sample("app", "api", 1.0, {("app_request_latency_p99_seconds", ()): 0.8})
    windows = {("host", "node-a"): (host,), ("app", "api"): (app,)}
    swapping = next(rule for rule in RULES if rule.name == "MemorySwapping")
    (verdict,) = classify(windows, (swapping,), SIGNALS)
    assert verdict.truth
    assert verdict.evidence["app_tier_latency_p99_max"] == 0.8


@pytest.mark.parametrize(
    ("per_instance_rates", "fires"),
    [
        ((10.0, 10.0, 10.0, 10.0, 10.0), False),  # each of 2 -> 5 replicas kept its rate: x2.5 in all
        ((10.0, 10.0, 4.0, 4.0, 4.0), True),  # 5 replicas serve what 2 served: nothing gained
    ],
)
def test_throughput_is_one_instances_rate_times_its_hpas_replicas(
    per_instance_rates: tuple[float, ...], fires: bool
) -> None:
    """An app's metrics_url reaches one instance: after a scale-out its flat rate is a rise in all."""
    hpa = ("web",)
    times = [float(second) for second in range(0, 50, 10)]
    cluster = tuple(
        Sample("kubernetes", "shop", at, {("kubernetes_hpa_current_replicas", hpa): 2.0 if at < 20 else 5.0})
        for at in times
    )
    app = tuple(
        Sample("app", "web", at, {("app_requests_per_second", ()): rate}, {"hpa": "web"})
        for at, rate in zip(times, per_instance_rates, strict=True)
    )
    database = (Sample("postgres", "main", times[-1], {("postgres_connections_used_ratio", ()): 0.95}),)
    windows = {("kubernetes", "shop"): cluster, ("app", "web"): app, ("postgres", "main"): database}
    shared = next(rule for rule in RULES if rule.name == "DownstreamSharedBottleneck")
    (verdict,) = [v for v in classify(windows, (shared,), SIGNALS) if v.target == "shop/web"]
    assert verdict.evidence["throughput_gain_ratio"] == pytest.approx(2.5 if not fires else 1.0)
    assert verdict.truth is fires
