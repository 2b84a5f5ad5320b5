"""One reconnect backoff policy: exponential growth with full jitter.

Each wait is drawn uniformly between `min_s` and a cap that doubles with every consecutive
failure, up to `max_s` (full jitter: clients that lost the same broker at the same instant do
not come back in step). The first wait after `reset()` is `min_s` exactly.
"""

from __future__ import annotations

import random


class Backoff:
    """Waits between attempts: `next()` after each failure, `reset()` after a success."""

    __slots__ = ("_rng", "failures", "max_s", "min_s")

    def __init__(self, min_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff min_s ({min_s}) must be > 0 and <= max_s ({max_s})")
        self.min_s = min_s
        self.max_s = max_s
        self.failures = 0
        """Consecutive failures counted by `next()` since the last `reset()`."""
        self._rng = rng or random.Random()

    def next(self) -> float:
        """Count one more failure and return the wait before the next attempt (seconds)."""
        self.failures += 1
        cap = min(self.max_s, self.min_s * 2.0 ** min(self.failures - 1, 60))
        return self._rng.uniform(self.min_s, cap)

    def reset(self) -> None:
        """The last attempt succeeded: the next wait starts from `min_s` again."""
        self.failures = 0
