"""Packet ids: ULIDs minted in bulk, cheaply.

python-ulid costs ~6 µs per id (object, timestamp and randomness encoded separately), a tenth of
the gateway's whole per-packet budget. A ULID is 48 bits of milliseconds and 80 random bits in
Crockford base32; 80 bits are exactly 16 base32 characters, so the random part is one
`b32encode` of 10 random bytes translated to Crockford's alphabet, and the time part is encoded
once per millisecond.
"""

from __future__ import annotations

import base64
import os
import time

_RFC4648 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TABLE = bytes.maketrans(_RFC4648.encode(), _CROCKFORD.encode())


def _time_part(ms: int) -> str:
    chars = []
    for _ in range(10):
        chars.append(_CROCKFORD[ms & 31])
        ms >>= 5
    return "".join(reversed(chars))


def new_ids(count: int) -> list[str]:
    """`count` ULIDs of the current millisecond (uniqueness from 80 random bits each)."""
    prefix = _time_part(time.time_ns() // 1_000_000)
    raw = base64.b32encode(os.urandom(10 * count)).translate(_TABLE).decode()
    return [prefix + raw[i * 16:(i + 1) * 16] for i in range(count)]
