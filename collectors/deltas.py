"""Per-cycle deltas of monotonic counters, computed by the collector itself.

psutil's cpu_percent and similar keep hidden per-call state that is unsafe under a thread pool; a
collector owns one ``Deltas`` and asks it for the change of each counter since its previous cycle.
"""

from __future__ import annotations

from collections.abc import Hashable

from collectors.base import as_finite


class Deltas:
    def __init__(self) -> None:
        self._previous: dict[Hashable, float] = {}
        self._current: dict[Hashable, float] = {}
        self._previous_time: float | None = None

    def begin(self, now: float) -> float | None:
        """Starts a cycle at monotonic time ``now``; returns the seconds since the previous cycle."""
        elapsed = None if self._previous_time is None else now - self._previous_time
        self._previous_time = now
        # Counters not seen this cycle (a vanished disk, an exited process) are forgotten.
        self._previous, self._current = self._current, {}
        return elapsed if elapsed is not None and elapsed > 0 else None

    def had(self, key: Hashable) -> bool:
        """Whether ``key`` had a value in the previous cycle."""
        return key in self._previous

    def delta(self, key: Hashable, value: float, *, steps_back: bool = False) -> float | None:
        """The increase since the previous cycle; None on first sight or after a counter reset.
        ``steps_back``: the counter may go down a little without a reset (iowait, see proc(5)); a
        decrease then counts as no increase rather than leaving the cycle without a value.

        A reading that is not a finite number (NaN, infinite, an integer beyond a float) is no counter
        value: it gives no increase and is not kept as the base of the next one, so that neither a
        NaN nor a huge difference reaches a rate or a ratio (``min(1.0, nan)`` is 1.0).
        """
        if as_finite(value) is None:
            return None
        self._current[key] = value
        previous = self._previous.get(key)
        if previous is None:
            return None
        if value < previous:
            return 0.0 if steps_back else None
        increase = value - previous
        return increase if as_finite(increase) is not None else None
