"""The app collector's series: names without the ``tierwatch_`` prefix, base units."""

from collectors.base import Column, Kind, MetricSpec, Reading, Unit

G = Kind.GAUGE
APP_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("app_processes", G, "Processes matching the app's process pattern."),
    MetricSpec("app_process_cpu_cores", G, "CPU cores used by the matched processes over the last cycle."),
    MetricSpec("app_process_cpu_ratio", G, "CPU used by the matched processes / the host's CPU capacity."),
    MetricSpec("app_process_resident_memory_bytes", G, "Resident memory of the matched processes."),
    MetricSpec("app_requests_per_second", G, "Requests the app counted per second over the last cycle."),
    MetricSpec(
        "app_request_error_ratio",
        G,
        "Share of the last cycle's requests answered with a 5xx status; absent without requests.",
    ),
    MetricSpec("app_request_latency_p50_seconds", G, "Median request latency over the last cycle."),
    MetricSpec("app_request_latency_p99_seconds", G, "99th percentile request latency over the last cycle."),
    MetricSpec("app_pool_size", G, "Database connections each app instance's pool may open (configured)."),
)

U, S, E = Column.UTILIZATION, Column.SATURATION, Column.ERRORS
APP_READINGS: tuple[Reading, ...] = (
    Reading(U, "cpu", "app_process_cpu_ratio", Unit.RATIO),
    Reading(U, "rss", "app_process_resident_memory_bytes", Unit.BYTES),
    Reading(U, "requests", "app_requests_per_second", Unit.PER_SECOND),
    Reading(S, "p99", "app_request_latency_p99_seconds", Unit.SECONDS),
    Reading(E, "5xx", "app_request_error_ratio", Unit.RATIO),
)
