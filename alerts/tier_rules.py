"""The rules of the database, pooler, cache, app and autoscaling tiers, and the cross-tier ones."""

from __future__ import annotations

from alerts.conditions import Compare, NotTrue, WhenPresent, all_of, any_of
from alerts.rules import Rule, Severity, thresholds

# A shared resource every app replica leans on is saturated. Which one held is in the verdict's
# "because"; DownstreamSharedBottleneck and HorizontalScalingCeiling both ask.
SHARED_SATURATED = any_of(
    Compare("db_cpu_load_max_per_vcpu", ">=", "db_cpu_load_per_vcpu"),
    Compare("db_connections_max_ratio", ">=", "db_connections_used_ratio"),
    Compare("pool_clients_waiting_max", ">=", "pool_clients_waiting"),
    Compare("redis_cpu_max_ratio", ">=", "redis_cpu_ratio"),
    Compare("redis_clients_max_ratio", ">=", "redis_clients_used_ratio"),
)
SHARED_THRESHOLDS = {
    "db_cpu_load_per_vcpu": 0.9,
    "db_connections_used_ratio": 0.9,
    "pool_clients_waiting": 1.0,
    "redis_cpu_ratio": 0.9,
    "redis_clients_used_ratio": 0.9,
}
SHARED_FIGURES = (
    "DB on-CPU load {db_cpu_load_max_per_vcpu} of vCPUs, DB connections {db_connections_max_ratio}, "
    "pooler waiting {pool_clients_waiting_max}, Redis CPU {redis_cpu_max_ratio}, "
    "Redis clients {redis_clients_max_ratio}"
)

DATABASE_RULES = (
    Rule(
        name="DatabaseBound",
        tier="database",
        severity=Severity.CRITICAL,
        when={
            "postgres": all_of(
                any_of(
                    Compare("db_cpu_load_per_vcpu", ">=", "cpu_load_per_vcpu"),
                    # Known only for a server on the agent's own host; elsewhere the load decides.
                    WhenPresent(Compare("db_host_cpu_ratio", ">=", "host_cpu_ratio")),
                ),
                NotTrue(Compare("app_tier_cpu_max_ratio", ">=", "app_cpu_ratio")),
            )
        },
        thresholds=thresholds(cpu_load_per_vcpu=0.9, host_cpu_ratio=0.9, app_cpu_ratio=0.85),
        for_seconds=30,
        keep_firing_seconds=60,
        summary="{target} is CPU-bound: sessions on CPU are {db_cpu_load_per_vcpu} of its {db_vcpus} vCPUs "
        "(total load {db_load_per_vcpu}, host CPU {db_host_cpu_ratio}); "
        "app tier CPU {app_tier_cpu_max_ratio}",
        remediation=(
            "The database's CPUs are the bottleneck, so more app servers will not help: each one adds "
            "queries to the same saturated CPUs. Start with the top queries by total time "
            "(pg_stat_statements, listed in this alert's details): a missing index or a query that scans "
            "far more rows than it returns is the cheapest fix there is. Then move read traffic to read "
            "replicas, put PgBouncer in front to cut per-connection overhead, and cache hot reads in Redis. "
            "A bigger instance buys time but not much else; do it only once the queries are clean."
        ),
        context=("db_vcpus", "db_load_per_vcpu", "app_tier_cpu_max_ratio"),
        root_cause=True,
    ),
    Rule(
        name="ConnectionPoolExhaustion",
        tier="database",
        severity=Severity.CRITICAL,
        when={
            "postgres": Compare("db_connections_used_ratio", ">=", "connections_used_ratio"),
            "pgbouncer": all_of(
                Compare("pool_clients_waiting", ">=", "clients_waiting"),
                Compare("pool_longest_wait_seconds", ">=", "longest_wait_seconds"),
            ),
        },
        thresholds=thresholds(connections_used_ratio=0.9, clients_waiting=1, longest_wait_seconds=1),
        for_seconds=15,
        keep_firing_seconds=60,
        summary={
            "postgres": "{target} is running out of connections: {db_connections_used_ratio} of the usable "
            "connections are in use",
            "pgbouncer": "{target}: {pool_clients_waiting} clients wait for a pooled server connection "
            "(longest {pool_longest_wait_seconds})",
        },
        remediation=(
            "New connections are about to be refused (or clients already queue in the pooler), and "
            "requests will fail with 'too many clients' or time out. The fastest relief is PgBouncer in "
            "transaction pooling mode between the apps and the database: it lets hundreds of app "
            "connections share a few dozen server connections. Shrink the per-instance pool sizes, which "
            "are usually far larger than the app's real concurrency, and do the connection math: pool size "
            "x instances at maxReplicas + other clients must stay below max_connections minus reserved "
            "slots. Raising max_connections is a last resort: each connection costs memory and CPU."
        ),
        root_cause=True,
    ),
    Rule(
        name="ConnectionBudgetExceededAtMaxScale",
        tier="database",
        severity=Severity.WARNING,
        when={"postgres": Compare("db_projected_connections_ratio", ">", "projected_used_ratio")},
        thresholds=thresholds(projected_used_ratio=1.0),
        for_seconds=60,
        keep_firing_seconds=300,
        summary="{target}: at maxReplicas the apps would need {db_projected_connections_ratio} of the "
        "{db_usable_connections} usable connections ({db_connections} in use now)",
        remediation=(
            "Nothing has failed yet, but the next scale-out will exhaust the database's connections: "
            "connections per app instance x the HPA's maxReplicas plus the other clients exceed what the "
            "server accepts. Before that happens, put PgBouncer in transaction mode in front of the "
            "database or shrink the per-instance pool so the product fits. Lowering maxReplicas also fits "
            "the budget but caps capacity. Do not just raise max_connections: memory per backend grows "
            "with it, and a busy database with thousands of connections slows down for all of them."
        ),
        context=("db_usable_connections", "db_connections"),
    ),
    Rule(
        name="LockContention",
        tier="database",
        severity=Severity.WARNING,
        when={
            "postgres": any_of(
                all_of(
                    Compare("db_lock_load_sessions", ">=", "lock_load_sessions"),
                    Compare("db_lock_load_share", ">=", "lock_load_share"),
                ),
                Compare("db_blocked_sessions", ">=", "blocked_sessions"),
            )
        },
        thresholds=thresholds(lock_load_sessions=1, lock_load_share=0.5, blocked_sessions=5),
        for_seconds=30,
        keep_firing_seconds=60,
        summary="{target}: sessions wait on locks: {db_lock_load_sessions} sessions on average "
        "({db_lock_load_share} of the DB load), {db_blocked_sessions} blocked",
        remediation=(
            "Sessions are queuing behind locks held by others, so adding CPU, replicas or app servers "
            "will not help. Find the blocking session (pg_blocking_pids on the waiting sessions) and the "
            "transaction it belongs to: a transaction left idle in an application, a long migration, or "
            "a batch job updating hot rows. End or fix that transaction first, then shorten transactions "
            "in the code, take locks in a consistent order, and run DDL with a lock_timeout. Killing "
            "waiting sessions instead of the blocker only makes the clients retry into the same queue."
        ),
        root_cause=True,
    ),
    Rule(
        name="ReplicationLagHigh",
        tier="database",
        severity=Severity.WARNING,
        when={"postgres": Compare("db_replication_lag_seconds", ">=", "lag_seconds")},
        thresholds=thresholds(lag_seconds=30),
        for_seconds=60,
        keep_firing_seconds=120,
        summary="{target}: a replica is {db_replication_lag_seconds} behind the primary",
        remediation=(
            "Reads served by the lagging replica return stale data, and a failover to it would lose or "
            "delay recent writes. Check the replica first: a saturated disk or CPU on it, or long-running "
            "queries that conflict with replay (hot_standby_feedback and max_standby_streaming_delay "
            "decide who waits). On the primary, a burst of writes (bulk loads, index builds) can outrun "
            "the replica; spread them out. Route reads that must see their own writes to the primary "
            "until the lag is back under the bound."
        ),
    ),
)

CACHE_RULES = (
    Rule(
        name="CacheIneffective",
        tier="cache",
        severity=Severity.WARNING,
        when={
            "redis": all_of(
                Compare("redis_hit_ratio", "<", "hit_ratio"),
                Compare("db_load_max_per_vcpu", ">=", "db_load_per_vcpu"),
            )
        },
        thresholds=thresholds(hit_ratio=0.8, db_load_per_vcpu=0.7),
        for_seconds=300,
        keep_firing_seconds=120,
        summary="{target}: only {redis_hit_ratio} of cache lookups hit while the database runs at "
        "{db_load_max_per_vcpu} of its vCPUs",
        remediation=(
            "Most reads miss the cache and go to a database that is already busy. Find the hot reads "
            "that are not cached (the top queries of the database) and cache them with a TTL that fits "
            "how stale they may be; check that keys are not built with per-request parts (timestamps, "
            "session ids) that make every lookup a miss, and that TTLs are not so short that entries "
            "expire before reuse. This is cheaper than read replicas or sharding, which should come after."
        ),
    ),
    Rule(
        name="RedisConnectionsExhausted",
        tier="cache",
        severity=Severity.CRITICAL,
        when={
            "redis": any_of(
                Compare("redis_clients_used_ratio", ">=", "clients_used_ratio"),
                Compare("redis_rejected_per_second", ">", "rejected_per_second"),
            )
        },
        thresholds=thresholds(clients_used_ratio=0.9, rejected_per_second=0),
        for_seconds=15,
        keep_firing_seconds=60,
        summary="{target}: {redis_clients_used_ratio} of maxclients connected, "
        "{redis_rejected_per_second} connections rejected",
        remediation=(
            "Redis is at its client limit and refuses new connections, which apps usually surface as "
            "cache errors or slow fallbacks to the database. Pool Redis connections in the apps (one "
            "small pool per process, not a connection per request or per thread) and look for a client "
            "that leaks connections (CLIENT LIST, grouped by address and idle time). Raise maxclients "
            "only with the file descriptor limit to match, and only once the clients are pooled."
        ),
        root_cause=True,
    ),
    Rule(
        name="RedisMemoryPressure",
        tier="cache",
        severity=Severity.WARNING,
        when={
            "redis": all_of(
                Compare("redis_memory_used_ratio", ">=", "memory_used_ratio"),
                any_of(
                    Compare("redis_evicted_per_second", ">", "evicted_per_second"),
                    # Under noeviction a full Redis refuses writes instead. Absent before Redis 6.2
                    # (no INFO errorstats): evictions alone decide there.
                    WhenPresent(Compare("redis_oom_rejected_per_second", ">", "oom_rejected_per_second")),
                ),
            )
        },
        thresholds=thresholds(memory_used_ratio=0.9, evicted_per_second=0, oom_rejected_per_second=0),
        for_seconds=60,
        keep_firing_seconds=120,
        summary="{target}: memory at {redis_memory_used_ratio} of maxmemory, evicting "
        "{redis_evicted_per_second} keys, refusing {redis_oom_rejected_per_second} commands (OOM)",
        remediation=(
            "Redis is full. Under an eviction policy it evicts keys to take new writes, so useful "
            "entries disappear and the hit ratio (and the database behind it) suffers; under "
            "maxmemory-policy noeviction (the default), or a volatile-* policy with nothing left to "
            "evict, it refuses writes with an OOM error, which the apps see as failed requests. First "
            "check what fills memory: keys without a TTL, large values, or a dataset that outgrew the "
            "instance (MEMORY STATS, --bigkeys). For a pure cache, set TTLs on its keys and pick an "
            "eviction policy that fits (allkeys-lru; volatile-* when some keys must never go); data that "
            "must not be evicted (sessions, queues) keeps noeviction and needs TTLs, smaller values or "
            "more memory. If the working set is legitimately larger, raise maxmemory with the host's "
            "RAM in mind, or shard."
        ),
        root_cause=True,
    ),
)

APP_RULES = (
    Rule(
        name="AppComputeBound",
        tier="app",
        severity=Severity.WARNING,
        when={
            "app": all_of(
                Compare("app_cpu_ratio", ">=", "app_cpu_ratio"),
                NotTrue(Compare("db_cpu_load_max_per_vcpu", ">=", "db_cpu_load_per_vcpu")),
                NotTrue(Compare("redis_cpu_max_ratio", ">=", "redis_cpu_ratio")),
            )
        },
        thresholds=thresholds(app_cpu_ratio=0.85, db_cpu_load_per_vcpu=0.9, redis_cpu_ratio=0.9),
        for_seconds=120,
        keep_firing_seconds=60,
        summary="{target} is CPU-bound: {app_cpu_ratio} of the host's CPU, while the database runs at "
        "{db_cpu_load_max_per_vcpu} of its vCPUs and Redis at {redis_cpu_max_ratio} CPU",
        remediation=(
            "The app servers' CPUs are the bottleneck and the shared tiers behind them have room, so "
            "scaling the app out is the right move: add instances behind the load balancer. That only "
            "works if the app is stateless — keep sessions and caches in Redis and files in object "
            "storage, not on the instance. Before buying capacity, profile one instance: serialization, "
            "regexes and logging often burn more CPU than the business logic."
        ),
        context=("app_latency_p99",),
    ),
)

AUTOSCALING_RULES = (
    Rule(
        name="HorizontalScalingCeiling",
        tier="app",
        severity=Severity.WARNING,
        when={
            "kubernetes": all_of(
                Compare("hpa_at_max", ">=", "at_max"),
                Compare("hpa_usage_to_target", ">=", "usage_to_target_ratio"),
            )
        },
        # The HPA itself ignores the first 10% over target (its tolerance), and so does this rule.
        thresholds=thresholds(at_max=1, usage_to_target_ratio=1.1, **SHARED_THRESHOLDS),
        for_seconds=120,
        keep_firing_seconds=120,
        summary="HPA {target} is at its maximum of {hpa_max_replicas} replicas and still at "
        "{hpa_usage_to_target} of its target",
        remediation=(
            "The autoscaler wants more replicas than maxReplicas allows, so the app tier runs above its "
            "target and latency grows with load. No shared tier tierwatch watches is saturated, so "
            "raising maxReplicas (after checking the cluster has room and the connection budget holds) "
            "or giving each pod more CPU is the fix; a tier it does not watch, or cannot read now "
            "(see the evidence), check by hand first. Check the HPA's target too: a target set too low "
            "reaches the ceiling early."
        ),
        remediation_if=(
            (
                SHARED_SATURATED,
                "The autoscaler is at maxReplicas, but do NOT raise maxReplicas: a shared tier behind the "
                "app is saturated (see 'because' in the evidence), and more replicas would only add load "
                "to it. Fix that tier first — the database's top queries or a pooler, the cache — and the "
                "app's usage will fall back under target.",
            ),
        ),
        context=("hpa_max_replicas",),
    ),
    Rule(
        name="NewInstancesUnhealthy",
        tier="app",
        severity=Severity.WARNING,
        when={
            "kubernetes": all_of(
                Compare("new_pods_not_ready", ">=", "new_pods_not_ready"),
                Compare("old_pods_ready", ">=", "old_pods_ready"),
            )
        },
        thresholds=thresholds(new_pods_not_ready=1, old_pods_ready=1),
        context=("pods_unscheduled",),
        for_seconds=120,
        keep_firing_seconds=60,
        summary="{target}: {new_pods_not_ready} pods from the recent scale-up are not ready while "
        "{old_pods_ready} older pods are",
        remediation=(
            "Pods added by the scale-up never became ready although the older ones serve fine, so the "
            "extra capacity is not there. The usual cause is a dependency the new pods cannot reach: "
            "database connection limits (new pods cannot get a connection), network policies or security "
            "groups, DNS, or credentials. Read the new pods' logs and readiness probe failures "
            "(kubectl describe pod) before scaling further; more replicas would fail the same way."
        ),
    ),
    Rule(
        name="DownstreamSharedBottleneck",
        tier="shared",
        severity=Severity.WARNING,
        when={
            "kubernetes": all_of(
                Compare("hpa_replica_rise", ">=", "replica_increase"),
                Compare("throughput_gain_ratio", "<", "throughput_gain_ratio"),
                SHARED_SATURATED,
            )
        },
        thresholds=thresholds(replica_increase=1, throughput_gain_ratio=1.1, **SHARED_THRESHOLDS),
        for_seconds=60,
        keep_firing_seconds=120,
        summary="HPA {target} added {hpa_replica_rise} replicas but throughput changed only x"
        "{throughput_gain_ratio}; shared tiers: " + SHARED_FIGURES,
        remediation=(
            "Replicas were added but throughput did not follow, because every replica waits on the "
            "same saturated shared resource (named under 'because' in the evidence). Stop adding app "
            "instances: each one adds load to that resource and can make it worse. Fix the named "
            "resource — the database's top queries, a pooler in front of it, more Redis capacity — "
            "and consider lowering the HPA's maxReplicas until it is fixed."
        ),
    ),
)

TIER_RULES: tuple[Rule, ...] = (*DATABASE_RULES, *CACHE_RULES, *APP_RULES, *AUTOSCALING_RULES)
