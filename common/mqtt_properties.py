"""MQTT 5 PUBLISH properties for the edge's and the hub's messages, built once and packed once."""

from __future__ import annotations

import functools

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def publish_properties(
    content_type: str,
    user: list[tuple[str, str]] | None = None,
    expiry_s: int | None = None,
) -> Properties:
    """MQTT 5 PUBLISH properties: content type, UTF-8 payload flag, user properties, expiry."""
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    props.PayloadFormatIndicator = 1
    if user:
        props.UserProperty = user
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


class PackedProperties(Properties):
    """PUBLISH properties packed once by `packed_properties`.

    paho packs a message's properties on every publish (~30 us) and building a `Properties`
    costs ~40 us more: together more than paho's own cost per message, on the fan-out's hot
    path. paho only calls `pack()` on outgoing properties, so this subclass answers it from
    bytes computed once.
    """

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        digit, value = value % 128, value // 128
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


_PACKED_TEMPLATE = PackedProperties(PacketTypes.PUBLISH).__dict__


@functools.lru_cache(maxsize=64)
def _fixed_part(content_type: str, expiry_s: int | None) -> bytes:
    body = b"\x01\x01"
    if expiry_s is not None:
        body += b"\x02" + expiry_s.to_bytes(4, "big")
    return body + b"\x03" + _utf8(content_type)


@functools.lru_cache(maxsize=64)
def _user_key(key: str) -> bytes:
    return b"\x26" + _utf8(key)


def packed_properties(
    content_type: str,
    user: list[tuple[str, str]] | None = None,
    expiry_s: int | None = None,
) -> Properties:
    """The same properties as `publish_properties`, about ten times cheaper to make and send.

    Encoded in the order paho uses (by property identifier): Payload Format Indicator (1),
    Message Expiry Interval (2), Content Type (3), User Property (38).
    """
    body = _fixed_part(content_type, expiry_s)
    for key, value in user or ():
        body += _user_key(key) + _utf8(value)
    # A copy of a template's attributes, without running Properties.__init__ or copy.copy
    # (both show on the fan-out's profile); set through __dict__ because
    # Properties.__setattr__ validates names and would refuse `_packed`.
    props = PackedProperties.__new__(PackedProperties)
    props.__dict__.update(_PACKED_TEMPLATE, ContentType=content_type, PayloadFormatIndicator=1,
                          _packed=_varint(len(body)) + body)
    if user:
        props.__dict__["UserProperty"] = list(user)
    if expiry_s is not None:
        props.__dict__["MessageExpiryInterval"] = expiry_s
    return props
