"""The API's response models: what each route answers, and what its OpenAPI document shows
(docs/api.md). Times are RFC 3339 text as the packets carry them (`2026-11-21T08:14:03.120Z`),
passed through unchanged."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from hub.risk import Risk

# A page cursor: the same type on every route that pages (`after`, `next`). What is in it
# depends on the route (a feed position, a work order id); a client passes `next` back as is.
CURSOR_PATTERN = r"^[^\x00-\x1f\x7f]+$"
CURSOR_MAX = 128
Cursor = Annotated[str, Field(min_length=1, max_length=CURSOR_MAX, pattern=CURSOR_PATTERN,
                              description="opaque: the `next` of a page, passed back as is")]
AfterQuery = Annotated[str | None, Query(
    min_length=1, max_length=CURSOR_MAX, pattern=CURSOR_PATTERN,
    description="the `next` of the previous page (absent: from the start)")]
LimitQuery = Annotated[int | None, Query(ge=1, description="page size (default 100, at most "
                                                           "`api.max_limit`)")]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                            description="RFC 3339, UTC")]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quantities(_Out):
    uom: str = Field(description="UN/ECE Rec 20 unit code (`C62`: pieces)")
    produced: int
    good: int
    scrap: int
    rework: int
    planned: int | None = None


class OperationState(_Out):
    """One operation of a work order, as its newest event left it (the retained
    `state/{workOrder}/{operation}` document is this without `risk` and
    `estimatedCompletion`)."""

    workOrder: str
    operation: str
    state: str = Field(description="`Ready`, `Running`, `Paused`, `Completed` or `Aborted`")
    type: str = Field(description="the event type that set this state")
    quantities: Quantities
    station: str = Field(description="the station under the name you are given")
    startedAt: Time | None
    completedAt: Time | None
    lastEventTime: Time | None
    lastEventId: str
    closed: bool
    estimatedCompletion: Time | None = Field(
        default=None, description="from the progress rate; null: unknown or never at the "
        "current rate")
    risk: Risk = Field(default="unknown", description="delay-risk status (docs/api.md)")


class Order(_Out):
    """A work order that concerns you: assigned ones before their first event too."""

    workOrder: str
    due: Time | None
    planned: int | None = Field(description="the order's planned quantity, when known")
    closed: bool = Field(description="every operation seen is completed or aborted")
    risk: Risk = Field(description="`on_track`, `at_risk`, `late`, `missed` or `unknown`")
    estimatedCompletion: Time | None
    updatedAt: Time | None = Field(description="hub time of the last change you can see")
    asOf: Time = Field(description="when the hub computed `risk` and the estimates")
    operations: list[OperationState]


class TimelineEvent(_Out):
    type: Literal["keyop.operation.started", "keyop.operation.paused",
                  "keyop.operation.resumed", "keyop.operation.completed",
                  "keyop.operation.aborted"]
    time: Time
    id: str = Field(description="the event's id (as in the feed)")


class RunInterval(_Out):
    start: Time
    end: Time | None = Field(description="null while it still runs")


class OperationTimeline(_Out):
    operation: str
    events: list[TimelineEvent]
    running: list[RunInterval] = Field(description="when it ran: a Gantt chart's bars")


class OrderDetail(Order):
    timeline: list[OperationTimeline]


class OrderPage(_Out):
    orders: list[Order]
    next: Cursor | None = Field(description="the `after` of the next page; null: the end")


class OperationList(_Out):
    operations: list[OperationState]


class CloudEvent(BaseModel):
    """One event as you receive it on every channel: a CloudEvents 1.0 JSON object whose
    `data` docs/packet.md defines (redacted for you)."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(description="ULID; the dedupe key")
    source: str
    type: str = Field(description="`keyop.operation.started`, `keyop.alert.delay_risk`, ...")
    subject: str | None = None
    time: Time
    recordedtime: Time | None = None
    sequence: str | None = Field(default=None, description="per-source order (20 digits)")
    sourceepoch: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: dict[str, Any]


class EventPage(_Out):
    events: list[CloudEvent]
    next: Cursor = Field(description="the `after` of the next page (the same when nothing "
                         "new yet)")


class AlertPage(_Out):
    alerts: list[CloudEvent]
    next: Cursor


class HubStatus(_Out):
    """The hub's own status (also the retained `keyop/v1/hub/status`)."""

    hub: str = Field(description="the hub's id")
    online: bool = Field(description="the hub is connected to its broker")
    lastIngest: Time | None = Field(description="when the hub last stored an event")
    ingestLagSeconds: float | None = Field(
        description="how long after its event time the newest stored event reached the hub")
    asOf: Time


class AssignmentResult(_Out):
    workOrder: str
    suppliers: list[str]
    due: str | None
