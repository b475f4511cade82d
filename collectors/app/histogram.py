"""Quantiles of a classic Prometheus histogram, computed as PromQL's histogram_quantile does."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile (0 < q < 1) of cumulative buckets given as (upper bound, count) pairs.

    Assumes observations spread evenly within a bucket and interpolates linearly; the lowest bucket
    starts at 0. A rank that falls in the +Inf bucket yields the highest finite bound. None when
    there is no +Inf bucket, no finite bucket, or no observation.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Counts summed from deltas can dip when a series appears mid-cycle; PromQL evens them out too.
    counts = list(accumulate((count for _, count in ordered), max))
    if counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    index = bisect_left(counts, rank)
    if index == len(ordered) - 1:
        return ordered[-2][0]
    upper = ordered[index][0]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = ordered[index - 1][0], counts[index - 1]
    return lower + (upper - lower) * (rank - below) / (counts[index] - below)
