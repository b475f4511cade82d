"""The PostgreSQL collector's series (no ``tierwatch_`` prefix) and its ``tierwatch check`` figures."""

from collectors.base import Column, Kind, MetricSpec, Reading, Unit

G, C = Kind.GAUGE, Kind.COUNTER
DATABASE = ("database",)

POSTGRES_METRICS: tuple[MetricSpec, ...] = (
    # connections: client backends only; walsenders and background workers have slots of their own
    MetricSpec(
        "postgres_connections",
        G,
        "Client connections by state; 'unknown' counts other roles' sessions hidden without "
        "pg_read_all_stats.",
        ("state",),
    ),
    MetricSpec("postgres_max_connections", G, "The max_connections setting."),
    MetricSpec("postgres_superuser_reserved_connections", G, "Slots reserved for superusers."),
    MetricSpec("postgres_reserved_connections", G, "Slots reserved for pg_use_reserved_connections (16+)."),
    MetricSpec("postgres_usable_connections", G, "max_connections minus the reserved slots."),
    MetricSpec("postgres_connections_used_ratio", G, "Client connections / usable connections."),
    MetricSpec(
        "postgres_connections_by_application",
        G,
        "Client connections per application_name: the 10 largest, the rest as 'other'.",
        ("application",),
    ),
    MetricSpec(
        "postgres_connections_by_client_address",
        G,
        "Client connections per client address ('local' for the socket): the 10 largest, the rest "
        "as 'other'.",
        ("address",),
    ),
    MetricSpec("postgres_client_addresses", G, "Distinct client addresses with connections."),
    MetricSpec("postgres_connections_per_client_address_median", G, "Median connections per client address."),
    MetricSpec("postgres_connections_per_client_address_max", G, "Most connections from one address."),
    # DB load
    MetricSpec(
        "postgres_load_average_active_sessions",
        G,
        "Active sessions by wait class ('cpu': no wait event), averaged over the samples of the cycle.",
        ("wait_class",),
    ),
    MetricSpec("postgres_host_vcpus", G, "vCPUs of the database host: configured, or local."),
    MetricSpec("postgres_load_on_cpu_per_vcpu", G, "On-CPU average active sessions per vCPU."),
    MetricSpec(
        "postgres_host_cpu_utilization_ratio",
        G,
        "CPU use of the DB host over the cycle, every process counted; only for a server on the "
        "agent's own host.",
    ),
    MetricSpec("postgres_load_lock_wait_ratio", G, "Share of the DB load waiting on heavyweight locks."),
    # waits
    MetricSpec("postgres_blocked_sessions", G, "Sessions waiting for a lock another session holds."),
    MetricSpec("postgres_longest_query_seconds", G, "Age of the longest running active query."),
    MetricSpec("postgres_longest_transaction_seconds", G, "Age of the oldest open transaction."),
    MetricSpec(
        "postgres_longest_idle_in_transaction_seconds", G, "Longest time a session sat idle in a transaction."
    ),
    # per database
    MetricSpec("postgres_commits_total", C, "Committed transactions.", DATABASE),
    MetricSpec("postgres_rollbacks_total", C, "Rolled back transactions.", DATABASE),
    MetricSpec("postgres_deadlocks_total", C, "Deadlocks detected.", DATABASE),
    MetricSpec("postgres_temp_bytes_total", C, "Bytes written to temporary files by queries.", DATABASE),
    MetricSpec(
        "postgres_buffer_cache_hit_ratio", G, "Block reads served from shared buffers, last cycle.", DATABASE
    ),
    MetricSpec(
        "postgres_sequential_scan_ratio",
        G,
        "Sequential / all scans of user tables in the connected database, last cycle.",
        DATABASE,
    ),
    # replication
    MetricSpec("postgres_in_recovery", G, "1 on a standby, 0 on a primary."),
    MetricSpec("postgres_replicas", G, "Replicas streaming from this primary."),
    MetricSpec(
        "postgres_replica_replay_lag_seconds",
        G,
        "Replay lag of each replica (by application_name; 10 largest, the rest as 'other').",
        ("replica",),
    ),
    MetricSpec(
        "postgres_replica_replay_lag_bytes", G, "WAL bytes a replica has yet to replay.", ("replica",)
    ),
    MetricSpec("postgres_replay_delay_seconds", G, "On a standby: how far replay is behind the primary."),
)

U, S, E = Column.UTILIZATION, Column.SATURATION, Column.ERRORS
POSTGRES_READINGS: tuple[Reading, ...] = (
    Reading(U, "connections", "postgres_connections_used_ratio", Unit.RATIO),
    Reading(U, "on-CPU/vCPU", "postgres_load_on_cpu_per_vcpu", Unit.COUNT),
    Reading(U, "host CPU", "postgres_host_cpu_utilization_ratio", Unit.RATIO),
    Reading(S, "blocked", "postgres_blocked_sessions", Unit.COUNT),
    Reading(S, "lock waits", "postgres_load_lock_wait_ratio", Unit.RATIO),
    Reading(S, "idle in xact", "postgres_longest_idle_in_transaction_seconds", Unit.SECONDS),
    Reading(E, "deadlocks", "postgres_deadlocks_total", Unit.COUNT, "sum"),
    Reading(E, "rollbacks", "postgres_rollbacks_total", Unit.COUNT, "sum"),
)
