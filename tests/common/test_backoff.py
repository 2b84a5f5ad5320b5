"""The reconnect backoff: full jitter between the minimum and a cap doubling per failure."""

from __future__ import annotations

import random

import pytest

from common.backoff import Backoff


def test_waits_grow_with_full_jitter_up_to_the_maximum() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    waits = [backoff.next() for _ in caps]
    assert waits[0] == 0.5
    assert all(0.5 <= wait <= cap for wait, cap in zip(waits, caps, strict=True))
    assert backoff.failures == len(caps)


def test_waits_are_spread_over_the_whole_range() -> None:
    backoff = Backoff(1.0, 30.0, rng=random.Random(1))
    for _ in range(10):
        backoff.next()
    waits = [backoff.next() for _ in range(500)]
    assert min(waits) < 5.0 and max(waits) > 25.0


def test_reset_starts_again_from_the_minimum() -> None:
    backoff = Backoff(1.0, 30.0)
    for _ in range(8):
        backoff.next()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next() == 1.0


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_bounds_are_checked(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="min_s"):
        Backoff(low, high)
