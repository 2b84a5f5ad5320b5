"""API credentials: per-supplier API keys (Bearer), stored as hashes; an admin key for the
hub's own operations. Every request is audited, refused ones included."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.api.context import ApiContext
from hub.config import HubConfig, hash_key, read_secret

log = logging.getLogger(__name__)

ADMIN = "*admin*"  # never a supplier id (ids match ^[a-z0-9][a-z0-9-]*$)

_bearer = HTTPBearer(auto_error=False, description="the supplier's API key")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Keys:
    """Key hash -> principal (a supplier id, or ADMIN)."""

    def __init__(self, config: HubConfig) -> None:
        self._by_hash: dict[str, str] = {}
        for name, supplier in config.suppliers.items():
            for digest in supplier.key_hashes():
                self._by_hash[digest] = name
        admin = [config.api.admin_key_hash] if config.api.admin_key_hash else []
        if config.api.admin_key_file:
            admin.append(hash_key(read_secret(config.api.admin_key_file)))
        for digest in admin:
            self._by_hash[digest] = ADMIN

    def principal(self, key: str) -> str | None:
        digest = hash_key(key)
        found = self._by_hash.get(digest)
        # The dict lookup is on a hash of the key; compare again in constant time anyway.
        if found is not None and any(hmac.compare_digest(digest, d) for d in self._by_hash):
            return found
        return None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> str:
    """Who is calling: 401 without a known key."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("credentials required (Authorization: Bearer <API key>)")
    keys: Keys = request.app.state.keys
    found = keys.principal(credentials.credentials)
    if found is None:
        raise _unauthorized("unknown API key")
    request.state.principal = found
    return found


def supplier(who: Annotated[str, Depends(principal)]) -> str:
    """The calling supplier; the admin key is not a supplier (403)."""
    if who == ADMIN:
        raise HTTPException(status_code=403, detail="the admin key reads no supplier data")
    return who


def admin(who: Annotated[str, Depends(principal)]) -> str:
    if who != ADMIN:
        raise HTTPException(status_code=403, detail="admin key required")
    return who


def _clean(text: str, size: int) -> str:
    """Text as the audit log can keep it: PostgreSQL refuses NUL, and lone surrogates are not
    UTF-8; both are written escaped."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:size]


class AuditMiddleware:
    """Writes one audit row per HTTP request when its response starts (so a long SSE stream
    is recorded when it opens): who, method, path, query, status, client."""

    def __init__(self, app: ASGIApp, context: ApiContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        done = False

        async def record(status: int) -> None:
            nonlocal done
            if done:
                return
            done = True
            client = scope.get("client") or ("", 0)
            entry = {
                "at": time.time(),
                "supplier": state.get("principal"),
                "method": _clean(str(scope.get("method", "")), 8),
                "path": _clean(str(scope.get("path", "")), 1024),
                "query": _clean(scope.get("query_string", b"").decode("latin-1"), 1024),
                "status": status,
                "client": _clean(str(client[0]), 64),
            }
            # The audit row is written before the answer leaves: no read goes unrecorded.
            await asyncio.to_thread(self.context.store.audit, [entry])

        async def audited_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            await record(500)
            raise
