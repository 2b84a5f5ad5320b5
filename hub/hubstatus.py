"""The hub's own status, the same document at `GET /v1/hub/status` and on the retained
`keyop/v1/hub/status` topic (every supplier may read both): online, when it last stored an
event, and how far behind their event time events reach it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from common.mqtt_properties import publish_properties
from hub.badrows import printable_time, reason
from hub.mqtt import HubMqtt
from hub.order_sql import newest_packet
from hub.store import Store
from sync import topics
from sync.packet import format_time

log = logging.getLogger(__name__)

def status_document(hub_id: str, store: Store, online: bool, now: float) -> dict[str, Any]:
    """The status now (reads the newest stored packet)."""
    newest = newest_packet(store)
    last = newest.received_at if newest is not None else None
    lag = None
    if newest is not None and printable_time(last) and printable_time(newest.event_time):
        lag = max(0.0, newest.received_at - newest.event_time)
    return {
        "hub": hub_id,
        "online": online,
        "lastIngest": format_time(last) if printable_time(last) else None,
        "ingestLagSeconds": round(lag, 3) if lag is not None else None,
        "asOf": format_time(now),
    }


async def publish_status(mqtt: HubMqtt, store: Store, hub_id: str, stop: asyncio.Event,
                         every_s: float) -> None:
    """Republish the retained status while connected, every `every_s` seconds, until `stop`.
    The connection's will and a clean stop say offline (hub/mqtt.py)."""
    properties = publish_properties("application/json")
    while not stop.is_set():
        if mqtt.connection.is_connected():
            now = time.time()
            try:
                document = await asyncio.to_thread(status_document, hub_id, store, True, now)
            except SQLAlchemyError as error:
                log.warning("hub status not published: %s", reason(error))
            else:
                # `ts` as in the online/offline message, for readers that only know that one.
                payload = json.dumps({**document, "ts": now}).encode()
                mqtt.publish_nowait(topics.hub_status(), payload, retain=True,
                                    properties=properties)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
