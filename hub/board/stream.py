"""GET /board/s/{supplier}/stream: the page's live feed, for a board session.

The supplier's feed as /v1/stream sends it (the same `events_after` and redaction), plus its
alerts (GET /v1/alerts), in one stream. Each message's `id` is the cursor pair
`{feed cursor}-{alert cursor}`, with no `event:` name (the page reads every message through
one handler; the packet's `type` says what it is): the browser's EventSource sends it back
as `Last-Event-ID` when it reconnects, and the stream resumes exactly after it. The page
passes the cursor of its first render as `after`, so nothing stored between render and
stream is missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from hub.api.context import ApiContext
from hub.board import source
from hub.board.pages import Current
from hub.board.web import COOKIE, HEADERS, board_of, visible

router = APIRouter(prefix="/board", include_in_schema=False)
CURSOR = r"^\d{1,19}-\d{1,19}$"
PAGE = 200
KEEPALIVE_S = 15.0
# How often an open stream checks that its session still lives (logout ends it).
RECHECK_S = 10.0


def _parse(text: str | None) -> tuple[int, int] | None:
    if not text or len(text) > 40:
        return None
    head, dash, tail = text.partition("-")
    if not dash or not head.isdigit() or not tail.isdigit():
        return None
    return int(head), int(tail)


def _message(cursor: tuple[int, int], event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return (f"id: {cursor[0]}-{cursor[1]}\n"
            f"data: {data}\n\n").encode()


def _step(context: ApiContext, supplier: str, cursor: tuple[int, int]
          ) -> tuple[bytes, tuple[int, int]]:
    """The next messages after `cursor` and the cursor after them (b"" when none)."""
    events, feed = context.events_after(supplier, cursor[0], PAGE)
    chunks = []
    for pk, event in events:
        chunks.append(_message((pk, cursor[1]), event))
    alert_cursor = cursor[1]
    for pk, alert in source.alerts(context, supplier, cursor[1], PAGE):
        alert_cursor = pk
        chunks.append(_message((feed, pk), alert))
    if not chunks and feed != cursor[0]:
        # Rows passed that were not this supplier's: say where the feed is, as a comment.
        chunks.append(f": at {feed}-{alert_cursor}\n\n".encode())
    return b"".join(chunks), (feed, alert_cursor)


async def _follow(request: Request, supplier: str, cursor: tuple[int, int], user: str
                  ) -> AsyncIterator[bytes]:
    board = board_of(request)
    try:
        async for chunk in _messages(request, supplier, cursor):
            yield chunk
    finally:
        board.streams.close_stream(user)


async def _messages(request: Request, supplier: str, cursor: tuple[int, int]
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
        await context.pulse.wait(min(context.config.api.stream_poll_s, 0.5))


@router.get("/s/{supplier}/stream")
async def stream(request: Request, session: Current, supplier: str,
                 after: Annotated[str | None, Query(pattern=CURSOR)] = None,
                 last_event_id: Annotated[str | None, Header(max_length=40)] = None,
                 ) -> StreamingResponse:
    name = visible(session, supplier, request)
    context = board_of(request).context
    cursor = _parse(last_event_id) or _parse(after)
    if cursor is None:
        cursor = (await context.run(context.store.max_pk),
                  await context.run(source.alert_head, context, name))
    if not board_of(request).streams.open_stream(session.user):
        request.state.refused = "board: stream limit"
        raise HTTPException(status_code=429, detail="too many open boards for this user",
                            headers={**HEADERS, "Retry-After": "5"})
    return StreamingResponse(_follow(request, name, cursor, session.user),
                             media_type="text/event-stream",
                             headers={**HEADERS, "X-Accel-Buffering": "no"})
