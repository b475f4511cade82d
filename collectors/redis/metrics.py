"""The Redis collector's series: names without the ``tierwatch_`` prefix, base units."""

from collectors.base import Column, Kind, MetricSpec, Reading, Unit

G, C = Kind.GAUGE, Kind.COUNTER

REDIS_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("redis_connected_clients", G, "Client connections, the agent's own included."),
    MetricSpec("redis_blocked_clients", G, "Clients waiting in a blocking command (BLPOP, XREAD, WAIT...)."),
    MetricSpec("redis_maxclients", G, "The maxclients limit."),
    MetricSpec("redis_clients_used_ratio", G, "Connected clients / maxclients."),
    MetricSpec("redis_rejected_connections_total", C, "Connections refused because maxclients was reached."),
    MetricSpec(
        "redis_rejected_connections_per_second", G, "Connections refused per second over the last cycle."
    ),
    MetricSpec("redis_memory_used_bytes", G, "Memory allocated by Redis for data and overhead."),
    MetricSpec("redis_memory_max_bytes", G, "The maxmemory limit; 0 means unlimited."),
    MetricSpec("redis_memory_used_ratio", G, "Used memory / maxmemory; absent when maxmemory is 0."),
    MetricSpec("redis_memory_fragmentation_ratio", G, "Resident set size / used memory."),
    MetricSpec("redis_evicted_keys_total", C, "Keys evicted to stay within maxmemory."),
    MetricSpec("redis_evicted_keys_per_second", G, "Keys evicted per second over the last cycle."),
    MetricSpec(
        "redis_oom_rejected_commands_total",
        C,
        "Commands refused with an OOM error because used memory exceeded maxmemory (INFO errorstats, "
        "Redis 6.2 and later).",
    ),
    MetricSpec(
        "redis_oom_rejected_commands_per_second",
        G,
        "Commands refused with an OOM error per second over the last cycle (Redis 6.2 and later).",
    ),
    MetricSpec("redis_expired_keys_total", C, "Keys removed because their TTL passed."),
    MetricSpec("redis_commands_processed_total", C, "Commands executed by the server."),
    MetricSpec("redis_keyspace_hits_total", C, "Key lookups that found the key."),
    MetricSpec("redis_keyspace_misses_total", C, "Key lookups that did not find the key."),
    MetricSpec(
        "redis_keyspace_hit_ratio",
        G,
        "Hits / lookups over the last cycle; absent when nothing was looked up.",
    ),
    MetricSpec("redis_main_thread_cpu_seconds_total", C, "CPU time of the thread that executes commands."),
    MetricSpec(
        "redis_main_thread_cpu_utilization_ratio", G, "Share of the last cycle the main thread was on CPU."
    ),
    MetricSpec("redis_slowlog_length", G, "Entries in the slow log."),
    MetricSpec(
        "redis_command_latency_seconds",
        G,
        "Latency percentiles since start of the most called commands (INFO latencystats); the percentile "
        "label is Redis's own (50, 99, 99.9), not 'quantile', which Prometheus keeps for summaries.",
        ("command", "percentile"),
    ),
    MetricSpec("redis_replication_is_master", G, "1 if the server is a master, 0 if a replica."),
    MetricSpec("redis_connected_replicas", G, "Replicas connected to this server."),
    MetricSpec(
        "redis_replication_master_link_up", G, "1 if the replica's link to its master is up (replicas)."
    ),
    MetricSpec(
        "redis_replication_master_last_io_age_seconds",
        G,
        "Seconds since the replica last heard from its master.",
    ),
    MetricSpec("redis_rdb_bgsave_in_progress", G, "1 while an RDB snapshot is being written."),
    MetricSpec("redis_aof_rewrite_in_progress", G, "1 while the append-only file is being rewritten."),
    MetricSpec("redis_rdb_last_bgsave_ok", G, "1 if the last RDB snapshot succeeded."),
    MetricSpec("redis_pubsub_channels", G, "Channels with at least one subscriber."),
    MetricSpec("redis_pubsub_patterns", G, "Patterns with at least one subscriber."),
    MetricSpec(
        "redis_pubsub_clients",
        G,
        "Clients subscribed to a channel, pattern or shard channel; before Redis 7.4 counted with CLIENT "
        "LIST, asked again after one cycle per 100 subscribers it found.",
    ),
    MetricSpec(
        "redis_client_max_output_buffer_bytes", G, "Largest client output buffer in the last seconds."
    ),
)

U, S, E = Column.UTILIZATION, Column.SATURATION, Column.ERRORS
REDIS_READINGS: tuple[Reading, ...] = (
    Reading(U, "memory", "redis_memory_used_ratio", Unit.RATIO),
    Reading(U, "clients", "redis_clients_used_ratio", Unit.RATIO),
    Reading(U, "cpu", "redis_main_thread_cpu_utilization_ratio", Unit.RATIO),
    Reading(S, "blocked", "redis_blocked_clients", Unit.COUNT),
    Reading(S, "evictions", "redis_evicted_keys_per_second", Unit.PER_SECOND),
    Reading(E, "rejected", "redis_rejected_connections_per_second", Unit.PER_SECOND),
    Reading(E, "oom", "redis_oom_rejected_commands_per_second", Unit.PER_SECOND),
)
