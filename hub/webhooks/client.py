"""One webhook POST: allowed destinations only, bounded in time and in what is read back.

httpcore (httpx's transport layer) is used directly because it takes a network backend, which
is where the allow-list checks each address at connect time (hub/webhooks/allow.py), and it
never follows a redirect: a 3xx is an answer like any other non-2xx, so the delivery is retried
at the same URL and never sent where the Location header points.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httpcore

from hub.webhooks.allow import AllowList, CheckedBackend, DestinationRefused
from hub.webhooks.settings import WebhooksSection

# How much of a refusal's body is kept for the logs and the admin API.
_SHOWN_BYTES = 200


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one POST: a status, or the error that left none."""

    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx: the receiver has the batch."""
        return self.error is None and self.status is not None and 200 <= self.status < 300


class Poster:
    """POSTs of one endpoint, on one keep-alive connection (an endpoint sends one batch at a
    time). A pool per endpoint: httpcore looks at every connection of a pool on each request,
    so one pool shared by 50 endpoints cost more than the requests themselves."""

    def __init__(self, section: WebhooksSection) -> None:
        self.section = section
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=CheckedBackend(AllowList(section.allow)),
            max_connections=1, keepalive_expiry=30.0, retries=0)
        total = section.timeout_s
        self._timeouts = {"connect": min(section.connect_timeout_s, total), "read": total,
                          "write": total, "pool": total}

    async def post(self, url: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        """POST `body`; read at most `max_response_bytes` of the answer, then close."""
        total = self.section.timeout_s
        try:
            async with asyncio.timeout(total):
                return await self._post(url, headers, body)
        except TimeoutError:
            return Answer(None, f"no answer within {total:g}s (webhooks.timeout_s)")
        except DestinationRefused as error:
            return Answer(None, f"refused: {error}")
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, ssl.SSLError, OSError) as error:
            return Answer(None, f"{type(error).__name__}: {error}".rstrip(": "))

    async def _post(self, url: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        limit = self.section.max_response_bytes
        async with self._pool.stream("POST", url, headers=headers, content=body,
                                     extensions={"timeout": self._timeouts}) as response:
            read, shown = 0, b""
            async for chunk in response.aiter_stream():
                if len(shown) < _SHOWN_BYTES:
                    shown += chunk[:_SHOWN_BYTES - len(shown)]
                read += len(chunk)
                if read >= limit:
                    break  # the rest is not read: leaving unread closes the connection
            status = response.status
        if 200 <= status < 300:
            return Answer(status)
        text = shown.decode("utf-8", "replace").strip()
        if 300 <= status < 400:
            location = next((v.decode("latin-1") for k, v in response.headers
                             if k.lower() == b"location"), "")
            return Answer(status, f"HTTP {status}: redirect to {location!r} refused")
        return Answer(status, f"HTTP {status}" + (f": {text[:_SHOWN_BYTES]}" if text else ""))

    async def close(self) -> None:
        await self._pool.aclose()
