"""Realistic packets for tests: one place that knows what a valid v1 progress packet holds."""

from __future__ import annotations

from typing import Any

from ulid import ULID

from edge_store import Entry
from sync import packet as pk
from sync import packet_codec as codec

SOURCE = "plant1/edge-07"
EPOCH = "01JCZ0K3M9B4X2W7Q5N8D1F6HA"
PACKET_ID = "01JDA5Q1Y4S7M2R8K3VZC6TB9E"
BASE_TIME = 1_795_000_000.12


def progress_draft(
    *,
    work_order: str = "WO-42",
    operation: str = "OP30",
    good: int = 209,
    scrap: int = 5,
    planned: int | None = 500,
    state: str = "Running",
    path: str = "plant1/body/line-3/welder-2",
    customer_orders: list[str] | None = None,
    params: dict[str, Any] | None = None,
    time: float = BASE_TIME,
    **extra: Any,
) -> pk.Draft:
    """An `operation.progress` draft; `extra` adds or replaces data fields."""
    quantities: dict[str, Any] = {"uom": "C62"}
    if planned is not None:
        quantities["planned"] = planned
    quantities.update(produced=good + scrap, good=good, scrap=scrap, rework=0)
    data: dict[str, Any] = {
        "kopVersion": "1.0",
        "workOrder": {"id": work_order, "customerOrders": customer_orders or ["PO-7781"]},
        "operation": {"id": operation, "name": "welding"},
        "runId": f"{work_order}.{operation}.welder-2.1",
        "equipment": {"path": path, "level": "WorkUnit"},
        "state": {"value": state},
        "quantities": quantities,
        "tzOffset": "+08:00",
        "timeQuality": "synced",
    }
    if params is not None:
        data["params"] = params
    data.update(extra)
    return pk.Draft("keyop.operation.progress", f"{work_order}/{operation}", time, data)


def render_event(
    draft: pk.Draft,
    *,
    seq: int = 1,
    source: str = SOURCE,
    epoch: str = EPOCH,
    id: str = PACKET_ID,
    recorded: float | None = None,
) -> bytes:
    return codec.render(draft, id=id, source=source, sequence=seq, epoch=epoch,
                     recorded=draft.time + 0.044 if recorded is None else recorded)


def outbox_entry(draft: pk.Draft | None = None, *, source: str = SOURCE, good: int = 209) -> Entry:
    """An outbox entry that renders a real v1 packet once the outbox gives it seq and epoch."""
    chosen = draft or progress_draft(good=good)
    event_id = str(ULID())

    def render(seq: int, epoch: str) -> bytes:
        return render_event(chosen, seq=seq, source=source, epoch=epoch, id=event_id)

    return Entry(id=event_id, render=render, priority=chosen.priority)


def operation_event(seq: int, *, type: str = "progress", work_order: str = "WO-1001",
                    operation: str = "OP10", good: int = 0, scrap: int = 0,
                    planned: int | None = 100, state: str = "Running",
                    reason: dict[str, str] | None = None, time: float = BASE_TIME,
                    source: str = SOURCE, epoch: str = EPOCH) -> bytes:
    """A `keyop.operation.{type}` packet as the edge renders it (id unique per source, epoch
    and seq); `reason` goes into `state` (a pause's)."""
    draft = progress_draft(work_order=work_order, operation=operation, good=good, scrap=scrap,
                           planned=planned, state=state, time=time)
    if reason is not None:
        draft.data["state"]["reason"] = reason
    draft = pk.Draft(f"keyop.operation.{type}", draft.subject, draft.time, draft.data)
    salt = sum(f"{source}{epoch}".encode()) % 1000
    return render_event(draft, seq=seq, source=source, epoch=epoch,
                        id=f"01JDA5Q1Y4S7M{salt:03d}{seq:010d}", recorded=time + 0.05)
