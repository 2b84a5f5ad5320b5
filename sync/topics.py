"""The MQTT topic namespace of docs/packet.md, in one place."""

from __future__ import annotations

import re

from sync.packet import ID_PATTERN

PREFIX = "keyop/v1"
HUB_SHARE_GROUP = "keyop-hub"

_ID = re.compile(ID_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class TopicError(ValueError):
    """An id that may not appear in a topic (it could widen a subscription or an ACL)."""


def check_id(kind: str, value: str) -> str:
    if not _ID.match(value):
        raise TopicError(
            f"{kind} id {value!r}: expected lowercase letters, digits and '-' "
            "(1-64 characters, starting with a letter or digit)"
        )
    return value


def topic_safe(value: str) -> str:
    """Work order and operation ids in topics: characters outside [A-Za-z0-9._-] become '_'."""
    return _UNSAFE.sub("_", value) or "_"


def gateway_of(source: str) -> str:
    """The gateway id of a packet source `{site}/{gateway}`."""
    return source.rsplit("/", 1)[-1]


def up_events(gateway: str) -> str:
    return f"{PREFIX}/up/{check_id('gateway', gateway)}/events"


def up_status(gateway: str) -> str:
    return f"{PREFIX}/up/{check_id('gateway', gateway)}/status"


def down_ack(gateway: str) -> str:
    return f"{PREFIX}/down/{check_id('gateway', gateway)}/ack"


def hub_status() -> str:
    return f"{PREFIX}/hub/status"


def hub_ingest_subscription(group: str | None = HUB_SHARE_GROUP) -> str:
    """The hub's ingest filter: shared by `group`, or plain (one hub process) for None."""
    return f"$share/{group}/{PREFIX}/up/+/events" if group else f"{PREFIX}/up/+/events"


def hub_status_subscription() -> str:
    return f"{PREFIX}/up/+/status"


def gateway_from_up_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) >= 4 and parts[0] == "keyop" and parts[1] == "v1" and parts[2] == "up":
        return parts[3]
    return None


def sup_events(supplier: str, work_order: str) -> str:
    return f"{PREFIX}/sup/{check_id('supplier', supplier)}/events/{topic_safe(work_order)}"


def sup_state(supplier: str, work_order: str, operation: str) -> str:
    return (
        f"{PREFIX}/sup/{check_id('supplier', supplier)}/state/"
        f"{topic_safe(work_order)}/{topic_safe(operation)}"
    )


def sup_order_state(supplier: str, work_order: str) -> str:
    """The retained order object (hub/orders.py) beside its operations' states."""
    return f"{PREFIX}/sup/{check_id('supplier', supplier)}/state/{topic_safe(work_order)}"


def sup_alerts(supplier: str) -> str:
    return f"{PREFIX}/sup/{check_id('supplier', supplier)}/alerts"


def sup_all(supplier: str) -> str:
    return f"{PREFIX}/sup/{check_id('supplier', supplier)}/#"
