"""Per-endpoint webhook cursors and health in the hub database (`webhook_cursors`).

A cursor is the feed position of the last entry the endpoint has settled: delivered with a
2xx answer, or passed over by its type filter. It only moves forward (a save never lowers it,
so a hub process that lost the lease cannot move it back). The health columns are written by
the delivering process on each change, for every process's admin API and /metrics.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa

from hub.schema import webhook_cursors
from hub.store import Store

_ERROR_CHARS = 512


@dataclass(frozen=True, slots=True)
class Health:
    """An endpoint's delivery health as last saved."""

    failing_since: float | None = None
    failing: bool = False
    last_status: int | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    """One endpoint's saved row."""

    position: int
    health: Health


class Cursors:
    """The `webhook_cursors` table of one store. Thread-safe like the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, supplier: str, endpoint: str, position: int) -> int:
        """The endpoint's cursor, created at `position` if it has none yet."""
        with self.store.writing(), self.store.engine.begin() as conn:
            found = conn.execute(sa.select(webhook_cursors.c.position).where(
                *self._key(supplier, endpoint))).scalar_one_or_none()
            if found is not None:
                return int(found)
            conn.execute(webhook_cursors.insert().values(
                supplier=supplier, endpoint=endpoint, position=position, updated_at=time.time()))
        return position

    def save(self, moves: dict[tuple[str, str], int]) -> None:
        """Move endpoints' cursors forward (never back), by (supplier, endpoint), in one
        transaction: one durable commit for all the endpoints that settled a batch meanwhile."""
        if not moves:
            return
        c = webhook_cursors.c
        stmt = webhook_cursors.update().where(
            c.supplier == sa.bindparam("k_supplier"), c.endpoint == sa.bindparam("k_endpoint"),
            c.position < sa.bindparam("k_position"),
        ).values(position=sa.bindparam("k_position"), updated_at=sa.bindparam("k_at"))
        now = time.time()
        rows = [{"k_supplier": s, "k_endpoint": e, "k_position": p, "k_at": now}
                for (s, e), p in sorted(moves.items())]
        with self.store.writing(), self.store.engine.begin() as conn:
            conn.execute(stmt, rows)

    def save_health(self, supplier: str, endpoint: str, health: Health) -> None:
        """Record the endpoint's health (a change of it)."""
        error = health.last_error
        with self.store.writing(), self.store.engine.begin() as conn:
            conn.execute(webhook_cursors.update().where(*self._key(supplier, endpoint)).values(
                failing_since=health.failing_since, failing=health.failing,
                last_status=health.last_status,
                last_error=None if error is None else error[:_ERROR_CHARS]))

    def all(self) -> dict[tuple[str, str], Saved]:
        """Every saved endpoint, by (supplier, endpoint)."""
        c = webhook_cursors.c
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(c.supplier, c.endpoint, c.position, c.failing_since,
                                          c.failing, c.last_status, c.last_error)).all()
        return {(r.supplier, r.endpoint): Saved(int(r.position), Health(
            r.failing_since, bool(r.failing), r.last_status, r.last_error)) for r in rows}

    @staticmethod
    def _key(supplier: str, endpoint: str) -> tuple[sa.ColumnElement[bool], ...]:
        return (webhook_cursors.c.supplier == supplier, webhook_cursors.c.endpoint == endpoint)


class CursorSaver:
    """Group commit of cursor moves: `save` returns once the move is durable, and the moves
    of every endpoint that settled a batch while a commit ran go in the next one (with
    `synchronous=FULL`, one fsync each, a commit per endpoint and batch slowed ingest)."""

    def __init__(self, cursors: Cursors, offload: Callable[[Callable[[], None]], Awaitable[None]]
                 ) -> None:
        self.cursors = cursors
        self._offload = offload
        self._moves: dict[tuple[str, str], int] = {}
        self._waiters: list[asyncio.Future[bool]] = []
        self._lock = asyncio.Lock()

    async def save(self, supplier: str, endpoint: str, position: int) -> None:
        """Persist the endpoint's cursor at `position` (with whatever else is waiting)."""
        key = (supplier, endpoint)
        while True:
            self._moves[key] = max(position, self._moves.get(key, position))
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters.append(done)
            async with self._lock:  # one commit at a time; its holder commits all waiting
                if not done.done():
                    await self._commit()
            if done.result():
                return
            # The commit that took ours failed (its holder raised): try again ourselves.

    async def _commit(self) -> None:
        moves, waiters = self._moves, self._waiters
        self._moves, self._waiters = {}, []
        saved = False
        try:
            await self._offload(functools.partial(self.cursors.save, moves))
            saved = True
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(saved)
