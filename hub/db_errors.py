"""Which database errors mean "away or busy, try again" and which mean "never this data".

The hub retries a batch only while the database is unreachable, overloaded or locked; any
other refusal is the data's, and hub/service.py isolates the one event it concerns into the
dead letters instead of retrying the batch for ever.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

# PostgreSQL error classes that say the server or the connection is the problem, not the
# data: connection (08), resources (53), operator intervention (57), transaction rollback (40:
# deadlock, serialization), lock not available (55), system error (58), internal (XX).
_TRANSIENT_SQLSTATES = frozenset({"08", "53", "57", "40", "55", "58", "XX"})


def transient(error: BaseException) -> bool:
    """Whether a store error means "the database is away or busy, try again" rather than
    "the database will never take this data"."""
    if not isinstance(error, SQLAlchemyError):
        return False
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        state = getattr(error.orig, "sqlstate", None)
        if isinstance(state, str) and state:
            return state[:2] in _TRANSIENT_SQLSTATES
        if isinstance(error, sa.exc.OperationalError):
            # SQLite: locked, busy, disk I/O or full are transient; "too big" is the data.
            text = str(error.orig).lower()
            return not ("too big" in text or "too many" in text)
        return isinstance(error, sa.exc.InterfaceError)
    return isinstance(error, (sa.exc.TimeoutError, sa.exc.DisconnectionError))
