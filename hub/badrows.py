"""Stored rows the hub cannot use: which errors say so, and a one-line reason for the log.

A row written by an older version, by hand or by a bug can hold anything its column type
allows (a body that is not JSON, a time beyond year 9999, a planned quantity of 2^63-1).
The periodic work that reads such rows (alerts, fan-out) skips the one row with a warning that
names it (rate-limited: hub/log_throttle.py) and goes on: one row never stops the work.
"""

from __future__ import annotations

from typing import TypeGuard

# What parsing, routing or formatting one stored row can raise: bad JSON and out-of-range
# values (ValueError, OverflowError), a JSON value of the wrong shape (TypeError, KeyError,
# AttributeError). Database errors are not here: they concern every row, not one.
BAD_ROW: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, AttributeError,
                                        ArithmeticError)

# The latest time the hub prints (RFC 3339 has four year digits): 9999-12-31T23:59:59Z.
MAX_TIME = 253_402_300_799.0


def printable_time(value: object) -> TypeGuard[float]:
    """Whether `value` is an epoch time that `sync.packet.format_time` prints correctly."""
    return isinstance(value, int | float) and 0.0 <= value < MAX_TIME


def reason(error: BaseException) -> str:
    """A one-line reason for a log line: the error's type and its first line."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
