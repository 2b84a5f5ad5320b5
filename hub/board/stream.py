"""GET /board/s/{supplier}/stream: the page's live feed, for a board session.

The supplier's feed (hub/feed.py) as /v1/stream sends it: its events, alerts and assignment
changes, each message's `id` its feed position, with no `event:` name (the page reads every
message through one handler; the event's `type` says what it is). The browser's EventSource
sends the id back as `Last-Event-ID` when it reconnects, and the stream resumes exactly
after it. The page passes the feed position of its first render as `after`, so nothing
appended between render and stream is missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from hub.api.context import ApiContext
from hub.board.pages import Current
from hub.board.web import COOKIE, HEADERS, board_of, visible

router = APIRouter(prefix="/board", include_in_schema=False)
CURSOR = r"^\d{1,18}$"
PAGE = 200
KEEPALIVE_S = 15.0
# How often an open stream checks that its session still lives (logout ends it).
RECHECK_S = 10.0


def _parse(text: str | None) -> int | None:
    if not text or len(text) > 18 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _step(context: ApiContext, supplier: str, cursor: int) -> tuple[bytes, int]:
    """The next messages after feed position `cursor` and the position after them (b""
    when none)."""
    entries, cursor = context.events_after(supplier, cursor, PAGE)
    return b"".join(b"id: %d\ndata: %s\n\n" % (e.position, e.body) for e in entries), cursor


class _HeldStream(StreamingResponse):
    """A stream that frees its slot when the response ends, however it ends (finished, the
    client gone, cancelled): in the ASGI call itself, never left to the collection of an
    abandoned generator, which the daemons' tuned collector may put off for long."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None],
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _messages(request: Request, supplier: str, cursor: int
                    ) -> AsyncIterator[bytes]:
    board = board_of(request)
    context = board.context
    token = request.cookies.get(COOKIE, "")
    loop = asyncio.get_running_loop()
    quiet_since = checked = loop.time()
    yield b"retry: 1000\n: keyop board stream\n\n"
    while not await request.is_disconnected():
        if loop.time() - checked > RECHECK_S:
            checked = loop.time()
            if await context.run(board.sessions.find, token) is None:
                return
        chunk, cursor = await context.run(_step, context, supplier, cursor)
        if chunk:
            yield chunk
            quiet_since = loop.time()
            continue
        if loop.time() - quiet_since > KEEPALIVE_S:
            quiet_since = loop.time()
            yield b": keepalive\n\n"
        await context.feed.wait(min(context.config.api.stream_poll_s, 0.5))


@router.get("/s/{supplier}/stream")
async def stream(request: Request, session: Current, supplier: str,
                 after: Annotated[str | None, Query(pattern=CURSOR)] = None,
                 last_event_id: Annotated[str | None, Header(max_length=40)] = None,
                 ) -> StreamingResponse:
    name = visible(session, supplier, request)
    context = board_of(request).context
    cursor = _parse(last_event_id)
    if cursor is None:
        cursor = _parse(after)
    if cursor is None:
        cursor = await context.run(context.feed.head, name)
    if not board_of(request).streams.open_stream(session.user):
        request.state.refused = "board: stream limit"
        raise HTTPException(status_code=429, detail="too many open boards for this user",
                            headers={**HEADERS, "Retry-After": "5"})
    user = session.user
    return _HeldStream(_messages(request, name, cursor),
                       lambda: board_of(request).streams.close_stream(user),
                       headers={**HEADERS, "X-Accel-Buffering": "no"})
