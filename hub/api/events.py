"""GET /v1/events (the cursor feed), GET /v1/stream (server-sent events, live) and
GET /v1/alerts: all read the supplier's feed (hub/feed.py), and a cursor is a position in it
(1, 2, 3, ... per supplier, gap-free): the `n`-th event of a page after `after` is at
position `after + n`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from hub.api.auth import supplier
from hub.api.context import ApiContext
from hub.api.errors import invalid, responses
from hub.api.models import (
    CURSOR_MAX,
    CURSOR_PATTERN,
    AfterQuery,
    AlertPage,
    EventPage,
    LimitQuery,
)
from hub.api.orders import context_of, page_limit
from hub.badrows import reason
from hub.feed import FeedEntry
from hub.log_throttle import RepeatedWarnings

router = APIRouter(prefix="/v1", tags=["events"])

MAX_CURSOR = 2**62
# A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
# Events read per step of a stream: one step holds one API thread for about this many.
STREAM_PAGE = 100


def position(after: str | None, name: str = "query.after") -> int | None:
    """A feed cursor (`after`, `Last-Event-ID`) as the position it names; 422 when it is not
    one (a feed's cursor is a decimal position)."""
    if after is None:
        return None
    if not after.isdigit() or not after.isascii() or int(after) > MAX_CURSOR:
        raise invalid(name, "not a cursor of this feed (pass the `next` of a page, or an "
                      "SSE message's id)")
    return int(after)


@router.get("/events", operation_id="listEvents", response_model=EventPage,
            response_model_exclude_unset=True, responses=responses(),
            summary="your redacted events after a cursor")
async def list_events(
    request: Request,
    who: Annotated[str, Depends(supplier)],
    after: AfterQuery = None,
    limit: LimitQuery = None,
) -> dict[str, Any]:
    """Events in feed order. `next` is the position of the page's last event; an empty page
    with the same `next` means: nothing new yet."""
    context = context_of(request)
    found, following = await context.run(context.events_after, who,
                                         position(after) or 0, page_limit(request, limit))
    return {"events": _decoded(found), "next": str(following)}


_SSE_EXAMPLE = ('id: 42\nevent: keyop.operation.progress\ndata: {"specversion":"1.0",'
                '"id":"01JDA5Q1Y4S7M2R8K3VZC6TB9E","type":"keyop.operation.progress",...}\n\n')


@router.get(
    "/stream", operation_id="streamEvents", response_class=StreamingResponse,
    summary="live events (text/event-stream)",
    responses={**responses(400), 200: {
        "description": "Server-sent events: per event `id:` (its cursor), `event:` (its "
        "`type`) and one `data:` line holding the CloudEvent JSON object; `:` comment lines "
        "keep the connection alive.",
        "content": {"text/event-stream": {
            "schema": {"type": "string", "description": "SSE messages whose `data` is a "
                       "CloudEvent", "x-event-data": {"$ref": "#/components/schemas/CloudEvent"}},
            "example": _SSE_EXAMPLE}}}},
)
async def stream(
    request: Request,
    who: Annotated[str, Depends(supplier)],
    after: Annotated[str | None, Query(
        min_length=1, max_length=CURSOR_MAX, pattern=CURSOR_PATTERN,
        description="start after this cursor (default: now)")] = None,
    last_event_id: Annotated[str | None, Header(max_length=24, description=(
        "the `id` of the last message received: resume after it (what EventSource sends "
        "when it reconnects)"))] = None,
) -> StreamingResponse:
    """Each event is one SSE message whose `id` is its feed position: a client that
    reconnects with `Last-Event-ID` resumes exactly after it. `Last-Event-ID` and `after`
    together: 400."""
    context = context_of(request)
    if last_event_id is not None and after is not None:
        raise HTTPException(status_code=400, detail="give either the Last-Event-ID header or "
                            "the `after` parameter, not both (they would name two places to "
                            "resume from)")
    start = position(last_event_id, "header.last-event-id") if last_event_id is not None \
        else position(after)
    if start is None:
        start = await context.run(context.feed.head, who)
    return StreamingResponse(_events(request, context, who, start),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


def _decoded(entries: list[FeedEntry]) -> list[Any]:
    """The entries' events as JSON values; an entry whose body is not JSON (a row written by
    hand: the hub writes only events it encoded) is left out with a warning."""
    found = []
    for entry in entries:
        try:
            found.append(json.loads(entry.body))
        except ValueError as error:
            _warnings.warning(f"body:{entry.supplier}:{entry.position}", "feed entry %s/%d "
                              "left out of a page: %s", entry.supplier, entry.position,
                              reason(error), extra={"supplier": entry.supplier,
                                                    "position": entry.position})
    return found


_warnings = RepeatedWarnings(logging.getLogger(__name__), window_s=300)


def _catch_up(context: ApiContext, who: str, cursor: int) -> tuple[bytes, int]:
    """The next SSE messages (read on the API's threads, not the loop), each entry's body as
    it is, and the position after them; b"" when nothing new."""
    found, cursor = context.events_after(who, cursor, STREAM_PAGE)
    chunk = b"".join(b"id: %d\nevent: %s\ndata: %s\n\n" % (
        entry.position, entry.type.encode(), entry.body) for entry in found)
    return chunk, cursor


async def _events(request: Request, context: ApiContext, who: str, cursor: int
                  ) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    yield b": keyop stream\n\n"
    while not await request.is_disconnected():
        chunk, cursor = await context.run(_catch_up, context, who, cursor)
        if chunk:
            yield chunk
            quiet_since = loop.time()
            continue
        if loop.time() - quiet_since > KEEPALIVE_S:
            quiet_since = loop.time()
            yield b": keepalive\n\n"
        await context.feed.wait(context.config.api.stream_poll_s)


@router.get("/alerts", operation_id="listAlerts", response_model=AlertPage,
            response_model_exclude_unset=True, responses=responses(),
            summary="your delay alerts after a cursor")
async def list_alerts(
    request: Request,
    who: Annotated[str, Depends(supplier)],
    after: AfterQuery = None,
    limit: LimitQuery = None,
) -> dict[str, Any]:
    """The alerts of the supplier's feed (`keyop.alert.delay_risk` / `keyop.alert.stalled`,
    raised, cleared and missed), in order; `after` and `next` are feed positions, as in
    /v1/events (which carries them too)."""
    context = context_of(request)
    start = position(after) or 0
    found = await context.run(context.feed.read_types, who, start, page_limit(request, limit),
                              "keyop.alert.")
    return {"alerts": _decoded(found),
            "next": str(found[-1].position if found else start)}
