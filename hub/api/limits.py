"""Per-key limits of the supplier API: a request rate (token bucket) and open SSE streams.

Used from the API's event loop only (no locks): each call runs to completion without awaiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Limits:
    """How many requests each key may make (`rate_per_s`, up to `burst` at once) and how many
    SSE streams it may hold open (`max_streams`)."""

    def __init__(self, rate_per_s: float, burst: int, max_streams: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_streams = max_streams
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def take(self, key: str) -> float:
        """Spend one request of `key`: 0 when allowed, else the seconds until it would be."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def open_stream(self, key: str) -> bool:
        """Take one of `key`'s stream slots; False when all are in use."""
        count = self._streams.get(key, 0)
        if count >= self.max_streams:
            return False
        self._streams[key] = count + 1
        return True

    def close_stream(self, key: str) -> None:
        count = self._streams.get(key, 0) - 1
        if count > 0:
            self._streams[key] = count
        else:
            self._streams.pop(key, None)

    def streams(self, key: str) -> int:
        """How many streams `key` holds open."""
        return self._streams.get(key, 0)


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
