"""The rule table: every alert of the symptom table, as data, with the signals it reads."""

from __future__ import annotations

from types import MappingProxyType

from alerts.conditions import Compare, NotTrue, WhenPresent, all_of, any_of
from alerts.rules import Rule, Severity
from alerts.signals import Registry, latest, latest_max, registry, worst_of
from collectors.base import Unit

R, PS, S = Unit.RATIO, Unit.PER_SECOND, Unit.SECONDS

# Host tier (the host collector: VM, node, or the pod's cgroup in a sidecar).
HOST_SIGNALS = (
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
# App tier: matched processes on a shared host.
APP_SIGNALS = (latest("app_cpu_ratio", "app", "app_process_cpu_ratio", R),)
GLOBAL_SIGNALS = (worst_of("app_tier_cpu_max_ratio", APP_SIGNALS[0]),)

SIGNALS: Registry = registry(*HOST_SIGNALS, *APP_SIGNALS, *GLOBAL_SIGNALS)


def thresholds(**values: float) -> MappingProxyType[str, float]:
    return MappingProxyType(values)


RULES: tuple[Rule, ...] = (
    Rule(
        name="MemorySwapping",
        tier="host",
        severity=Severity.CRITICAL,
        when={
            "host": all_of(
                Compare("host_memory_used_ratio", ">=", "memory_used_ratio"),
                any_of(
                    Compare("host_swap_in_per_second", ">=", "swap_in_pages_per_second"),
                    WhenPresent(Compare("host_memory_stall_ratio", ">=", "memory_stall_ratio")),
                ),
            )
        },
        thresholds=thresholds(memory_used_ratio=0.9, swap_in_pages_per_second=10, memory_stall_ratio=0.1),
        for_seconds=60,
        keep_firing_seconds=120,
        summary="{target} is swapping: memory {host_memory_used_ratio} used, {host_swap_in_per_second} pages "
        "swapped in, memory stall {host_memory_stall_ratio}",
        remediation=(
            "The working set no longer fits in RAM, so every request that touches a swapped-out page waits "
            "for the disk. First check whether memory grows without bound (a leak: compare RSS of the app "
            "processes over hours) — buying RAM only postpones a leak. Then shrink what is sized too big for "
            "this host: connection pools, worker counts, JVM/Node heaps, in-process caches, PostgreSQL "
            "shared_buffers/work_mem. If the working set is legitimately larger, move to a memory-optimized "
            "instance. Do not add swap: it turns an out-of-memory crash into a slow, silent outage."
        ),
        context=("app_tier_cpu_max_ratio",),
        root_cause=True,
    ),
    Rule(
        name="DiskIOBound",
        tier="host",
        severity=Severity.WARNING,
        when={
            "host": all_of(
                any_of(
                    Compare("host_iowait_ratio", ">=", "iowait_ratio"),
                    Compare("host_disk_busy_max_ratio", ">=", "disk_busy_ratio"),
                    WhenPresent(Compare("host_io_stall_ratio", ">=", "io_stall_ratio")),
                ),
                # Swap traffic is disk I/O too; then the cause is memory and MemorySwapping names it.
                NotTrue(Compare("host_swap_in_per_second", ">=", "swap_in_pages_per_second")),
            )
        },
        thresholds=thresholds(
            iowait_ratio=0.2, disk_busy_ratio=0.9, io_stall_ratio=0.3, swap_in_pages_per_second=10
        ),
        for_seconds=120,
        keep_firing_seconds=120,
        summary="{target} waits on disk: iowait {host_iowait_ratio}, busiest disk "
        "{host_disk_busy_max_ratio} busy, io stall {host_io_stall_ratio}",
        remediation=(
            "Work on this host is queuing behind its storage. On a database host, look for the cause before "
            "buying hardware: a low buffer cache hit ratio means the working set does not fit in "
            "shared_buffers/page cache, and sequential scans on large tables usually mean a missing index — "
            "both multiply disk reads. Check for swapping too (MemorySwapping), which shows up as disk I/O. "
            "If the I/O is legitimate, move to faster storage or provision more IOPS/throughput; on cloud "
            "volumes check whether a burst-credit balance ran out."
        ),
        root_cause=True,
    ),
    Rule(
        name="CPUThrottled",
        tier="app",
        severity=Severity.WARNING,
        when={"host": Compare("host_cpu_throttled_ratio", ">=", "throttled_periods_ratio")},
        thresholds=thresholds(throttled_periods_ratio=0.25),
        for_seconds=120,
        keep_firing_seconds=120,
        summary="{target} is throttled by its CPU quota in {host_cpu_throttled_ratio} of periods "
        "(using {host_cgroup_cpu_limit_ratio} of its limit)",
        remediation=(
            "The container hits its CPU limit and the kernel pauses it until the next period, which shows up "
            "as latency spikes even when the node has idle CPUs. Raise the CPU limit, or remove it and keep "
            "only the request (many teams run without CPU limits for latency-sensitive services). The host "
            "is not the constraint: adding nodes or replicas will not remove the throttling of each pod. "
            "For multi-threaded runtimes, also cap their thread pools to the limit so bursts do not exhaust "
            "the quota early in each period."
        ),
        context=("host_cgroup_cpu_limit_ratio",),
    ),
)
