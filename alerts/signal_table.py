"""Every signal the rules read, by tier, and the cross-tier ones that sum up "the other tiers"."""

from __future__ import annotations

from collections.abc import Mapping

from alerts.conditions import Scope
from alerts.signals import (
    Registry,
    Window,
    Windows,
    counter_rate,
    derived,
    from_windows,
    latest,
    latest_max,
    latest_max_of,
    latest_sum,
    per_label,
    per_label_rise,
    quotient,
    registry,
    worst_of,
)
from collectors.base import Unit

R, PS, S, C = Unit.RATIO, Unit.PER_SECOND, Unit.SECONDS, Unit.COUNT
WINDOW = "15m"  # the store keeps 15 minutes per target: "rose within the window" means within this

HOST = (
    latest("host_cpu_ratio", "host", "host_cpu_utilization_ratio", R),
    latest("host_iowait_ratio", "host", "host_cpu_iowait_ratio", R),
    latest("host_memory_used_ratio", "host", "host_memory_used_ratio", R),
    latest("host_swap_in_per_second", "host", "host_swap_in_pages_per_second", PS),
    latest(
        "host_memory_stall_ratio",
        "host",
        "host_pressure_stall_avg10_ratio",
        R,
        {"resource": "memory", "kind": "some"},
    ),
    latest(
        "host_io_stall_ratio",
        "host",
        "host_pressure_stall_avg10_ratio",
        R,
        {"resource": "io", "kind": "some"},
    ),
    latest_max("host_disk_busy_max_ratio", "host", "host_disk_busy_ratio", R),
    latest("host_cpu_throttled_ratio", "host", "host_cgroup_cpu_throttled_periods_ratio", R),
    latest("host_cgroup_cpu_limit_ratio", "host", "host_cgroup_cpu_limit_utilization_ratio", R),
)

APP = (
    latest("app_cpu_ratio", "app", "app_process_cpu_ratio", R),
    latest("app_request_rate", "app", "app_requests_per_second", PS),
    latest("app_latency_p99", "app", "app_request_latency_p99_seconds", S),
)

_DB_LOAD = latest_sum("db_load_sessions", "postgres", "postgres_load_average_active_sessions", C)
_DB_VCPUS = latest("db_vcpus", "postgres", "postgres_host_vcpus", C)
DATABASE = (
    latest("db_cpu_load_per_vcpu", "postgres", "postgres_load_on_cpu_per_vcpu", R),
    latest("db_host_cpu_ratio", "postgres", "postgres_host_cpu_utilization_ratio", R),
    _DB_LOAD,
    _DB_VCPUS,
    quotient("db_load_per_vcpu", R, _DB_LOAD, _DB_VCPUS),
    latest(
        "db_lock_load_sessions",
        "postgres",
        "postgres_load_average_active_sessions",
        C,
        {"wait_class": "lock"},
    ),
    latest("db_lock_load_share", "postgres", "postgres_load_lock_wait_ratio", R),
    latest("db_blocked_sessions", "postgres", "postgres_blocked_sessions", C),
    latest("db_connections_used_ratio", "postgres", "postgres_connections_used_ratio", R),
    latest_sum("db_connections", "postgres", "postgres_connections", C),
    latest("db_usable_connections", "postgres", "postgres_usable_connections", C),
    latest("db_connections_per_client", "postgres", "postgres_connections_per_client_address_median", C),
    latest_max_of(
        "db_replication_lag_seconds",
        "postgres",
        S,
        ("postgres_replica_replay_lag_seconds", "postgres_replay_delay_seconds"),
    ),
    counter_rate("db_commit_rate", "postgres", "postgres_commits_total"),
)

POOLER = (
    latest_sum("pool_clients_waiting", "pgbouncer", "pgbouncer_clients_waiting", C),
    latest_max("pool_longest_wait_seconds", "pgbouncer", "pgbouncer_longest_client_wait_seconds", S),
)

CACHE = (
    latest("redis_clients_used_ratio", "redis", "redis_clients_used_ratio", R),
    latest("redis_rejected_per_second", "redis", "redis_rejected_connections_per_second", PS),
    latest("redis_memory_used_ratio", "redis", "redis_memory_used_ratio", R),
    latest("redis_evicted_per_second", "redis", "redis_evicted_keys_per_second", PS),
    latest("redis_oom_rejected_per_second", "redis", "redis_oom_rejected_commands_per_second", PS),
    latest("redis_hit_ratio", "redis", "redis_keyspace_hit_ratio", R),
    latest("redis_cpu_ratio", "redis", "redis_main_thread_cpu_utilization_ratio", R),
)

# Split per HPA: each HPA of the namespace is judged on its own.
AUTOSCALING = (
    per_label("hpa_at_max", "kubernetes", "kubernetes_hpa_at_max_replicas", C, "hpa"),
    per_label("hpa_usage_to_target", "kubernetes", "kubernetes_hpa_usage_to_target_ratio", R, "hpa"),
    per_label("hpa_current_replicas", "kubernetes", "kubernetes_hpa_current_replicas", C, "hpa"),
    per_label("hpa_max_replicas", "kubernetes", "kubernetes_hpa_max_replicas", C, "hpa"),
    per_label_rise("hpa_replica_rise", "kubernetes", "kubernetes_hpa_current_replicas", "hpa", WINDOW),
    per_label("new_pods_not_ready", "kubernetes", "kubernetes_deployment_new_pods_not_ready", C, "hpa"),
    per_label("pods_unscheduled", "kubernetes", "kubernetes_deployment_pods_unscheduled", C, "hpa"),
    per_label("old_pods_ready", "kubernetes", "kubernetes_deployment_old_pods_ready", C, "hpa"),
)


def _throughput_gain(windows: Windows) -> float | None:
    """Throughput now / at the start of the window: the request rate of the apps an HPA scales, else
    the DB commit rate."""
    pairs = _scaled_app_throughput(windows)
    if not pairs:
        commits = (
            _start_and_end(w, "postgres_commits_total") for (c, _), w in windows.items() if c == "postgres"
        )
        pairs = [pair for pair in commits if pair is not None]
    if not pairs:
        return None
    start = sum(first for first, _ in pairs)
    return sum(last for _, last in pairs) / start if start > 0 else None


def _scaled_app_throughput(windows: Windows) -> list[tuple[float, float]]:
    """Each app's request rate times the replicas of the HPA its entry names, at both ends of the
    window. An app's metrics_url reaches one instance, whose rate stays flat while added replicas
    add throughput: unscaled, it would read as "throughput did not rise" after every scale-out. An
    app no HPA is named for says nothing of the total, and is left out."""
    replicas = _replica_history(windows)
    pairs = []
    for (collector, _), window in windows.items():
        if collector != "app" or not window:
            continue
        hpa = window[-1].details.get("hpa")
        history = replicas.get(hpa) if isinstance(hpa, str) else None
        rates = _start_and_end(window, "app_requests_per_second")
        if history and rates is not None:
            ends = (_replicas_at(history, window[0].timestamp), _replicas_at(history, window[-1].timestamp))
            pairs.append((rates[0] * ends[0], rates[1] * ends[1]))
    return pairs


def _replica_history(windows: Windows) -> dict[str, list[tuple[float, float]]]:
    """(timestamp, current replicas) of every HPA seen, oldest first, by name."""
    history: dict[str, list[tuple[float, float]]] = {}
    for (collector, _), window in windows.items():
        if collector == "kubernetes":
            for sample in window:
                for (hpa,), current in sample.series("kubernetes_hpa_current_replicas").items():
                    history.setdefault(hpa, []).append((sample.timestamp, current))
    return history


def _replicas_at(history: list[tuple[float, float]], timestamp: float) -> float:
    """The replicas last seen at or before ``timestamp``; the first seen, if none was before it."""
    seen = [replicas for at, replicas in history if at <= timestamp]
    return seen[-1] if seen else history[0][1]


def _start_and_end(window: Window, metric: str) -> tuple[float, float] | None:
    """The metric's rate at the oldest and the newest end of the window: a gauge's value, or for a
    counter the increase per second over the first and over the last quarter of the window. Not over
    one cycle: PostgreSQL publishes a session's counters at most once a second, so a single short
    cycle can see no commit at all on a server that commits steadily."""
    if len(window) < 4:
        return None
    if not metric.endswith("_total"):
        first, last = window[0].series(metric).values(), window[-1].series(metric).values()
        return (sum(first), sum(last)) if first and last else None
    oldest, newest = window[0], window[-1]
    quarter = (newest.timestamp - oldest.timestamp) / 4
    # The window's own ends always qualify, so both searches find a sample.
    first_quarter = next(s for s in window[1:] if s.timestamp - oldest.timestamp >= quarter)
    last_quarter = next(s for s in reversed(window[:-1]) if newest.timestamp - s.timestamp >= quarter)
    rates = []
    for before, after in ((oldest, first_quarter), (last_quarter, newest)):
        elapsed = after.timestamp - before.timestamp
        grown = sum(after.series(metric).values()) - sum(before.series(metric).values())
        if elapsed <= 0 or grown < 0:
            return None
        rates.append(grown / elapsed)
    return rates[0], rates[1]


def _hpa_replicas(windows: Windows) -> dict[str, tuple[float, float]]:
    """(current, max) replicas of every HPA seen, by name."""
    replicas = {}
    for (collector, _), window in windows.items():
        if collector == "kubernetes" and window:
            newest = window[-1]
            maxima = newest.series("kubernetes_hpa_max_replicas")
            for (hpa,), current in newest.series("kubernetes_hpa_current_replicas").items():
                if (hpa,) in maxima:
                    replicas[hpa] = (current, maxima[(hpa,)])
    return replicas


def _app_connections(windows: Windows, at_max: bool) -> float | None:
    """Connections the apps with a pool size and an HPA hold now, or would at maxReplicas."""
    replicas = _hpa_replicas(windows)
    total, linked = 0.0, False
    for (collector, _), window in windows.items():
        if collector != "app" or not window:
            continue
        pool, hpa = window[-1].get("app_pool_size"), window[-1].details.get("hpa")
        if pool is not None and isinstance(hpa, str) and hpa in replicas:
            current, maximum = replicas[hpa]
            total += pool * (maximum if at_max else current)
            linked = True
    return total if linked else None


def _single_hpa(windows: Windows, position: int) -> float | None:
    """With exactly one HPA in sight, the app it scales is the one connecting: its (current, max)."""
    replicas = list(_hpa_replicas(windows).values())
    return replicas[0][position] if len(replicas) == 1 else None


def _projected_ratio(values: Mapping[str, float]) -> float | None:
    """(connections per app instance x maxReplicas + other clients) / usable connections."""
    connections, usable = values.get("db_connections"), values.get("db_usable_connections")
    if connections is None or not usable:
        return None
    if "app_connections_at_max_scale" in values and "app_connections_now" in values:
        others = max(connections - values["app_connections_now"], 0.0)
        return (others + values["app_connections_at_max_scale"]) / usable
    per_instance = values.get("db_connections_per_client")
    current, maximum = values.get("hpa_single_current_replicas"), values.get("hpa_single_max_replicas")
    if per_instance is None or current is None or maximum is None:
        return None
    others = max(connections - per_instance * current, 0.0)
    return (others + per_instance * maximum) / usable


TIERS: Registry = registry(*HOST, *APP, *DATABASE, *POOLER, *CACHE, *AUTOSCALING)
OTHER_TIERS = (
    worst_of("app_tier_cpu_max_ratio", TIERS["app_cpu_ratio"]),
    worst_of("app_tier_latency_p99_max", TIERS["app_latency_p99"]),
    worst_of("db_cpu_load_max_per_vcpu", TIERS["db_cpu_load_per_vcpu"]),
    worst_of("db_load_max_per_vcpu", TIERS["db_load_per_vcpu"]),
    worst_of("db_connections_max_ratio", TIERS["db_connections_used_ratio"]),
    worst_of("pool_clients_waiting_max", TIERS["pool_clients_waiting"]),
    worst_of("redis_cpu_max_ratio", TIERS["redis_cpu_ratio"]),
    worst_of("redis_clients_max_ratio", TIERS["redis_clients_used_ratio"]),
    from_windows("throughput_gain_ratio", "app", R, _throughput_gain),
    from_windows("app_connections_at_max_scale", "app", C, lambda w: _app_connections(w, at_max=True)),
    from_windows("app_connections_now", "app", C, lambda w: _app_connections(w, at_max=False)),
    from_windows("hpa_single_current_replicas", "kubernetes", C, lambda w: _single_hpa(w, 0)),
    from_windows("hpa_single_max_replicas", "kubernetes", C, lambda w: _single_hpa(w, 1)),
)

PROJECTED = derived(
    "db_projected_connections_ratio",
    Scope.TARGET,
    "postgres",
    R,
    inputs=(
        "db_connections",
        "db_usable_connections",
        "db_connections_per_client",
        "app_connections_at_max_scale",
        "app_connections_now",
        "hpa_single_current_replicas",
        "hpa_single_max_replicas",
    ),
    compute=_projected_ratio,
)

SIGNALS: Registry = registry(*TIERS.values(), *OTHER_TIERS, PROJECTED)
