"""The webhook signature (docs/webhooks.md, "Verifying a delivery").

`keyop-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`, keyed with the
endpoint's secret. The timestamp is signed with the body so a receiver can refuse an old
delivery replayed at it; `v1` names the scheme so a second one can be added beside it.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "keyop-signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body,
                   hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"
