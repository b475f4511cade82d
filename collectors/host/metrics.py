"""The host collector's series: names without the ``tierwatch_`` prefix, base units."""

from collectors.base import Column, Kind, MetricSpec, Reading, Unit

G, C = Kind.GAUGE, Kind.COUNTER
PSI = ("resource", "kind")

HOST_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("host_cpus", G, "Logical CPUs of the host."),
    MetricSpec("host_cpu_utilization_ratio", G, "Share of CPU time busy (not idle, not iowait), all CPUs."),
    MetricSpec("host_cpu_iowait_ratio", G, "Share of CPU time idle while waiting for I/O, all CPUs."),
    MetricSpec("host_cpu_busiest_core_utilization_ratio", G, "Busy share of the busiest logical CPU."),
    MetricSpec("host_cpu_busiest_core_iowait_ratio", G, "Highest iowait share of any logical CPU."),
    MetricSpec("host_load1_per_cpu", G, "1-minute load average divided by the number of CPUs."),
    MetricSpec("host_load5_per_cpu", G, "5-minute load average divided by the number of CPUs."),
    MetricSpec("host_load15_per_cpu", G, "15-minute load average divided by the number of CPUs."),
    MetricSpec("host_procs_running", G, "Runnable tasks."),
    MetricSpec("host_procs_blocked", G, "Tasks blocked in uninterruptible sleep, mostly on I/O."),
    MetricSpec("host_memory_total_bytes", G, "Physical memory."),
    MetricSpec("host_memory_available_bytes", G, "Memory available to new work without swapping."),
    MetricSpec("host_memory_used_ratio", G, "1 - available / total memory."),
    MetricSpec("host_swap_total_bytes", G, "Configured swap space."),
    MetricSpec("host_swap_used_ratio", G, "Used share of swap space; absent without swap."),
    MetricSpec("host_swap_in_pages_per_second", G, "Pages swapped in per second over the last cycle."),
    MetricSpec("host_swap_out_pages_per_second", G, "Pages swapped out per second over the last cycle."),
    MetricSpec("host_major_page_faults_per_second", G, "Major page faults per second over the last cycle."),
    MetricSpec("host_disk_busy_ratio", G, "Share of time the device had I/O in flight.", ("device",)),
    MetricSpec(
        "host_disk_average_wait_seconds", G, "Mean time an I/O completed in the cycle took.", ("device",)
    ),
    MetricSpec("host_network_receive_errors_total", C, "Receive errors.", ("device",)),
    MetricSpec("host_network_receive_drops_total", C, "Received packets dropped.", ("device",)),
    MetricSpec("host_network_transmit_errors_total", C, "Transmit errors.", ("device",)),
    MetricSpec("host_network_transmit_drops_total", C, "Transmitted packets dropped.", ("device",)),
    MetricSpec("host_pressure_stall_avg10_ratio", G, "PSI share of time stalled, 10 s average.", PSI),
    MetricSpec("host_pressure_stalled_seconds_total", C, "PSI total time stalled.", PSI),
    MetricSpec("host_cgroup_cpu_usage_seconds_total", C, "CPU time used by the agent's cgroup."),
    MetricSpec("host_cgroup_cpu_limit_cores", G, "CPU quota of the agent's cgroup in cores; absent if none."),
    MetricSpec(
        "host_cgroup_cpu_limit_utilization_ratio", G, "CPU used by the cgroup over the last cycle / quota."
    ),
    MetricSpec("host_cgroup_cpu_periods_total", C, "CFS enforcement periods of the agent's cgroup."),
    MetricSpec("host_cgroup_cpu_throttled_periods_total", C, "Periods in which the cgroup was throttled."),
    MetricSpec("host_cgroup_cpu_throttled_seconds_total", C, "Time the cgroup spent throttled."),
    MetricSpec(
        "host_cgroup_cpu_throttled_periods_ratio", G, "Throttled share of the periods of the last cycle."
    ),
)

U, S, E = Column.UTILIZATION, Column.SATURATION, Column.ERRORS
HOST_READINGS: tuple[Reading, ...] = (
    Reading(U, "cpu", "host_cpu_utilization_ratio", Unit.RATIO),
    Reading(U, "memory", "host_memory_used_ratio", Unit.RATIO),
    Reading(U, "disk busy", "host_disk_busy_ratio", Unit.RATIO),
    Reading(S, "load/cpu", "host_load1_per_cpu", Unit.COUNT),
    Reading(S, "iowait", "host_cpu_iowait_ratio", Unit.RATIO),
    Reading(S, "swap-in", "host_swap_in_pages_per_second", Unit.PER_SECOND),
    Reading(S, "stall", "host_pressure_stall_avg10_ratio", Unit.RATIO),
    Reading(S, "throttled", "host_cgroup_cpu_throttled_periods_ratio", Unit.RATIO),
    Reading(E, "rx errors", "host_network_receive_errors_total", Unit.COUNT, "sum"),
    Reading(E, "tx errors", "host_network_transmit_errors_total", Unit.COUNT, "sum"),
)
