"""The fan-out's pre-packed PUBLISH properties encode exactly what paho would pack."""

from __future__ import annotations

from typing import Any

import pytest

from common.mqtt_properties import packed_properties, publish_properties
from sync.packet import BATCH_CONTENT_TYPE, CONTENT_TYPE


@pytest.mark.parametrize("args", [
    (CONTENT_TYPE, [("id", "01JDA5Q1Y4S7M2030000000001"), ("type", "keyop.operation.progress"),
                    ("sequence", "00000000000000000001")]),
    (BATCH_CONTENT_TYPE, [("sequence", "1"), ("sequence", "50")]),
    ("application/json", None, 30 * 86_400),
    ("application/json", [("naïve-key", "välue ✓")], 1),
    ("text/plain", None, None),
])
def test_packed_properties_equal_pahos_own_packing(args: tuple[Any, ...]) -> None:
    packed = packed_properties(*args)
    reference = publish_properties(*args)
    assert packed.pack() == reference.pack()
    assert getattr(packed, "ContentType") == getattr(reference, "ContentType")  # noqa: B009
    assert getattr(packed, "UserProperty", None) == getattr(reference, "UserProperty", None)
    # Each call is its own object: a caller's later change never leaks into another message.
    assert packed_properties(*args) is not packed
