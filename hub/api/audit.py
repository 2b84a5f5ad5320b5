"""The API's audit log: one row per request (who, method, path, query, status, client),
buffered and written in batches off ingest's path.

A request's row is queued before its answer leaves; rows are written at most every
`api.audit_flush_s` seconds, on stop, and at once when `api.audit_buffer` rows wait (the
request that fills the buffer waits for that write: no answer leaves unrecorded). Refusals
before a route runs (no valid key, a limit reached) are aggregated: one row per (account,
client, path, status, reason) and interval, with `count`, and the reason in `query`
("refused: unknown API key"); a refused caller's query string is not kept. A route may put
a note before the query (`state["note"]`: the board's user).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api.context import ApiContext

log = logging.getLogger(__name__)


def _clean(text: str, size: int) -> str:
    """Text as the audit log can keep it: PostgreSQL refuses NUL, and lone surrogates are not
    UTF-8; both are written escaped."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:size]


class AuditBuffer:
    """Audit rows waiting to be written, and the task that writes them."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self._interval = context.config.api.audit_flush_s
        self._bound = context.config.api.audit_buffer
        self._rows: list[dict[str, Any]] = []
        self._refusals: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def __len__(self) -> int:
        return len(self._rows) + len(self._refusals)

    async def add(self, entry: dict[str, Any]) -> None:
        self._rows.append(entry)
        await self._room()

    async def add_refusal(self, entry: dict[str, Any], reason: str) -> None:
        """Count a refusal in its interval's row (the first one's time, method and client)."""
        key = (entry["supplier"], entry["client"], entry["path"], entry["status"], reason)
        found = self._refusals.get(key)
        if found is not None:
            found["count"] += 1
            return
        self._refusals[key] = {**entry, "query": _clean(f"refused: {reason}", 1024), "count": 1}
        await self._room()

    async def _room(self) -> None:
        if len(self) >= self._bound:
            await self.flush()

    async def flush(self) -> None:
        """Write what waits. On a database error the rows stay queued and the error is raised."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            rows = self._rows + list(self._refusals.values())
            self._rows, self._refusals = [], {}
            if not rows:
                return
            try:
                await self.context.run(self.context.store.audit, rows)
            except BaseException:
                self._rows[:0] = rows
                raise

    def start(self) -> None:
        """Start the periodic writer on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._every_interval(), name="hub-api-audit")

    async def close(self) -> None:
        """Stop the writer and write the rest (safe to call twice)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except SQLAlchemyError as error:
            log.error("API audit rows lost on stop: %s (%d rows)",
                      str(error).splitlines()[0], len(self))

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except SQLAlchemyError as error:
                if not self._failing:
                    log.error("API audit rows not written (kept, retried): %s",
                              str(error).splitlines()[0])
                self._failing = True
            else:
                if self._failing:
                    log.info("API audit rows written again")
                self._failing = False


class AuditMiddleware:
    """Queues the audit row of each HTTP request when its response starts (so a long SSE
    stream is recorded when it opens). The client is the socket peer, or what a trusted
    proxy said (hub/server.py)."""

    def __init__(self, app: ASGIApp, buffer: AuditBuffer) -> None:
        self.app = app
        self.buffer = buffer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        done = False

        async def record(status: int) -> None:
            nonlocal done
            if done:
                return
            done = True
            client = scope.get("client") or ("", 0)
            entry = {
                "at": time.time(),
                "supplier": state.get("principal"),
                "method": _clean(str(scope.get("method", "")), 8),
                "path": _clean(str(scope.get("path", "")), 1024),
                "query": _clean(" ".join(filter(None, (
                    state.get("note"), scope.get("query_string", b"").decode("latin-1")))), 1024),
                "status": status,
                "client": _clean(str(client[0]), 64),
                "count": 1,
            }
            refused = state.get("refused")
            if refused is not None:
                await self.buffer.add_refusal(entry, str(refused))
            else:
                await self.buffer.add(entry)

        async def audited_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            await record(500)
            raise
