"""The rule table: every alert of the symptom table, as data. Host-tier rules are here; the rules of
the other tiers are in ``alerts.tier_rules``; the signals they read in ``alerts.signal_table``."""

from __future__ import annotations

from alerts.conditions import Compare, NotTrue, WhenPresent, all_of, any_of
from alerts.rules import Rule, Severity, thresholds
from alerts.signal_table import SIGNALS
from alerts.tier_rules import TIER_RULES

__all__ = ["RULES", "SIGNALS"]

# A host that is swapping: memory nearly full and pages coming back from swap (or tasks stalled on
# memory). Shared by MemorySwapping and by DiskIOBound, which leaves swap traffic to it.
SWAPPING = all_of(
    Compare("host_memory_used_ratio", ">=", "memory_used_ratio"),
    any_of(
        Compare("host_swap_in_per_second", ">=", "swap_in_pages_per_second"),
        WhenPresent(Compare("host_memory_stall_ratio", ">=", "memory_stall_ratio")),
    ),
)
SWAPPING_THRESHOLDS = {"memory_used_ratio": 0.9, "swap_in_pages_per_second": 10.0, "memory_stall_ratio": 0.1}


HOST_RULES: tuple[Rule, ...] = (
    Rule(
        name="MemorySwapping",
        tier="host",
        severity=Severity.CRITICAL,
        when={"host": SWAPPING},
        thresholds=thresholds(**SWAPPING_THRESHOLDS),
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
        # What swapping costs the users: the slowest app's p99 latency, when an app target reports it.
        context=("app_tier_latency_p99_max",),
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
                NotTrue(SWAPPING),
            )
        },
        thresholds=thresholds(
            iowait_ratio=0.2, disk_busy_ratio=0.9, io_stall_ratio=0.3, **SWAPPING_THRESHOLDS
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


RULES: tuple[Rule, ...] = (*HOST_RULES, *TIER_RULES)
