"""Board sessions in the hub's database: a random token in an HttpOnly cookie, its hash in
`board_sessions`, a CSRF token per session. They outlive a hub restart (the open page
reconnects with the same cookie); logout deletes the row."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from hub.schema import board_sessions
from hub.store import Store


@dataclass(frozen=True, slots=True)
class Session:
    """Who a board session is: a user, and the supplier it sees (None: the plant)."""

    user: str
    supplier: str | None
    csrf: str
    expires_at: float

    @property
    def plant(self) -> bool:
        return self.supplier is None

    def may_see(self, supplier: str) -> bool:
        """A supplier's user sees its own supplier only; the plant's coordinator every one."""
        return self.supplier is None or self.supplier == supplier


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Create, find and end sessions (blocking: called on the API's threads)."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def create(self, user: str, supplier: str | None) -> tuple[str, Session]:
        """A new session; returns the cookie's token and the session. Expired rows go."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(user, supplier, secrets.token_urlsafe(24), now + self.ttl_s)
        with self.store.engine.begin() as conn:
            conn.execute(board_sessions.delete().where(board_sessions.c.expires_at < now))
            conn.execute(board_sessions.insert().values(
                token_hash=_digest(token), user=user, supplier=supplier, csrf=session.csrf,
                created_at=now, expires_at=session.expires_at))
        return token, session

    def find(self, token: str) -> Session | None:
        """The live session of a cookie's token, or None."""
        if not token or len(token) > 128:
            return None
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(board_sessions).where(
                board_sessions.c.token_hash == _digest(token))).first()
        if row is None or row.expires_at < time.time():
            return None
        return Session(row.user, row.supplier, row.csrf, row.expires_at)

    def end(self, token: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(board_sessions.delete().where(
                board_sessions.c.token_hash == _digest(token)))
