"""What every API request passes before a route runs: a known key (401), the key's request
rate and open streams (429 with Retry-After), the body size (413).

The key is checked from the headers alone, before anything reads the body; the body is
counted as it arrives (chunked bodies have no Content-Length to trust).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api.auth import Keys
from hub.api.errors import error_body
from hub.api.limits import Limits, retry_after

NO_CREDENTIALS = "credentials required (Authorization: Bearer <API key>)"
UNKNOWN_KEY = "unknown API key"
# A stream slot frees when another stream of the key ends: no time to promise; ask for a pause.
STREAM_RETRY_S = 5.0


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit; rendered as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body: at most {limit} bytes")


class GuardMiddleware:
    """Authenticates, applies the per-key limits and bounds request bodies.

    Sets `state["principal"]` (the supplier id, or ADMIN) for the routes, and
    `state["refused"]` (the reason) on a refusal, which the audit log aggregates.
    """

    def __init__(self, app: ASGIApp, keys: Keys, limits: Limits, max_body_bytes: int,
                 public: frozenset[str], streams: frozenset[str],
                 own_sessions: str | None = None) -> None:
        self.app = app
        self.keys = keys
        self.limits = limits
        self.max_body = max_body_bytes
        self.public = public
        self.streams = streams
        # A path prefix whose routes check their own sessions (the board, hub/board):
        # no API key there, but the same bound on bodies.
        self.own_sessions = own_sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        if self.own_sessions and scope["path"].startswith(self.own_sessions):
            await self._bounded(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        headers = Headers(scope=scope)
        who = self._principal(headers.get("authorization"))
        if who is None:
            reason = UNKNOWN_KEY if headers.get("authorization") else NO_CREDENTIALS
            state["refused"] = reason
            await _answer(scope, receive, send, 401, reason, {"WWW-Authenticate": "Bearer"})
            return
        state["principal"] = who
        wait = self.limits.take(who)
        if wait:
            state["refused"] = "rate limit"
            await _answer(scope, receive, send, 429, "too many requests for this key",
                          {"Retry-After": retry_after(wait)})
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _answer(scope, receive, send, 413, BodyTooLarge(self.max_body).detail)
            return
        stream = scope["path"] in self.streams
        if stream and not self.limits.open_stream(who):
            state["refused"] = "stream limit"
            await _answer(scope, receive, send, 429,
                          f"at most {self.limits.max_streams} open streams per key",
                          {"Retry-After": retry_after(STREAM_RETRY_S)})
            return
        try:
            await self._bounded(scope, receive, send)
        finally:
            if stream:
                self.limits.close_stream(who)

    def _principal(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self.keys.principal(key.strip())

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as error:
            # Routes render it themselves (FastAPI re-raises HTTPException from body reads);
            # this answers for a reader that let it through.
            if started:
                raise
            await _answer(scope, receive, send, 413, error.detail)


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    await JSONResponse(error_body(status, detail), status_code=status, headers=headers)(
        scope, receive, send)
