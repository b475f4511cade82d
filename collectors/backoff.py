"""When a collector may next try to reach a target it could not reach: ``first`` seconds after a
failure, doubling up to ``maximum``, back to none after a success."""

from __future__ import annotations

# 2**30 first delays is beyond any maximum; a larger exponent would overflow a float after weeks down.
MAX_DOUBLINGS = 30


class Backoff:
    def __init__(self, first: float, maximum: float) -> None:
        self._first = first
        self._maximum = maximum
        self._failures = 0
        self._next_attempt = 0.0

    def remaining(self, now: float) -> float:
        """Seconds until the next attempt is due; 0 when it may happen now."""
        remaining = self._next_attempt - now
        # Cycles start a little early or late: half a first delay of slack keeps an attempt due at the
        # next cycle from slipping to the one after.
        return remaining if remaining > self._first / 2 else 0.0

    def failed(self, now: float) -> float:
        """Records a failed attempt at ``now``; returns the delay before the next one."""
        self._failures += 1
        delay = min(self._maximum, self._first * 2 ** min(self._failures - 1, MAX_DOUBLINGS))
        self._next_attempt = now + delay
        return delay

    def succeeded(self) -> None:
        self._failures = 0
        self._next_attempt = 0.0
