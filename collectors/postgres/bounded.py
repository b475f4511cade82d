"""Label sets of bounded size: the largest N keys keep their own series, the rest share "other".

Client addresses, application names, replicas and pools grow with the fleet; a fixed number of series
per target keeps /metrics and Prometheus's index from growing with it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

TOP_N = 10
OTHER = "other"
Key = TypeVar("Key", str, tuple[str, ...])
Combine = Callable[[Iterable[float]], float]


def largest(weights: Mapping[Key, float], n: int = TOP_N) -> set[Key]:
    """The ``n`` keys with the largest weights; ties go to the smaller key, so the choice is stable."""
    ranked = sorted(weights.items(), key=lambda item: (-item[1], item[0]))
    return {key for key, _ in ranked[:n]}


def fold(
    values: Mapping[Key, float], kept: Collection[Key], other: Key, combine: Combine = sum
) -> dict[Key, float]:
    """``values`` of the kept keys, plus ``other`` combining the rest (sum for counts, max for lags)."""
    folded = {key: value for key, value in values.items() if key in kept}
    rest = [value for key, value in values.items() if key not in kept]
    if rest:
        if other in folded:  # a real key spelled like the catch-all joins it
            rest.append(folded.pop(other))
        folded[other] = combine(rest)
    return folded


def top_n(values: Mapping[str, float], combine: Combine = sum, n: int = TOP_N) -> dict[str, float]:
    return fold(values, largest(values, n), OTHER, combine)
