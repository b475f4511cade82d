"""The alert names of the contract; the rule table defines one rule for each."""

ALERT_NAMES: tuple[str, ...] = (
    "DatabaseBound",
    "AppComputeBound",
    "MemorySwapping",
    "DiskIOBound",
    "DownstreamSharedBottleneck",
    "ConnectionPoolExhaustion",
    "ConnectionBudgetExceededAtMaxScale",
    "NewInstancesUnhealthy",
    "HorizontalScalingCeiling",
    "LockContention",
    "ReplicationLagHigh",
    "CacheIneffective",
    "RedisConnectionsExhausted",
    "RedisMemoryPressure",
    "CPUThrottled",
)
