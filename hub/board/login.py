"""Login (a board user's password, or a supplier's API key exchanged for a session) and
logout. Every attempt is in the audit log: a login with its user, a refusal with its reason
(hub/api/audit.py aggregates refusals per interval, with their count)."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from hub.api.auth import ADMIN
from hub.board.passwords import verify_password
from hub.board.sessions import Session
from hub.board.web import COOKIE, HEADERS, LOGIN_CSRF_COOKIE, board_of, current, page

router = APIRouter(prefix="/board", include_in_schema=False)
FIELD_MAX = 1024


async def form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (the guard bounds its size), first value
    of each field."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0][:FIELD_MAX] for k, v in parse_qs(body, max_num_fields=20).items()}


def check_csrf(expected: str, given: str | None) -> None:
    """403 unless the form carries the session's CSRF token."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(status_code=403, detail="form expired: reload the page",
                            headers=HEADERS)


def _next(target: str | None) -> str:
    """Where to go after login: a board path of this hub only."""
    if target and target.startswith("/board/") and "//" not in target and "\\" not in target:
        return target
    return "/board/"


def _login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", {"csrf": token, "error": error,
                                            "next": _next(request.query_params.get("next"))},
                    status)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True,
                        samesite="strict", path="/board/login",
                        secure=board_of(request).settings.secure_cookies)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request)


async def _who(request: Request, fields: dict[str, str]) -> tuple[str, str | None] | None:
    """(user, supplier or None for the plant) the fields prove, or None."""
    board = board_of(request)
    key = fields.get("key", "").strip()
    if key:
        principal = board.keys.principal(key)
        if principal is None:
            return None
        supplier = None if principal == ADMIN else principal
        return f"api-key:{supplier or 'admin'}", supplier
    name = fields.get("user", "").strip()
    user = board.settings.users.get(name)
    ok = await board.context.run(verify_password, fields.get("password", ""),
                                 None if user is None else user.password_hash)
    if not ok or user is None:
        return None
    return name, user.supplier


@router.post("/login")
async def login(request: Request) -> Response:
    board = board_of(request)
    fields = await form(request)
    name = fields.get("user", "").strip()[:64] or ("(api key)" if fields.get("key") else "")
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(),
                                               fields.get("csrf", "").encode()):
        request.state.refused = f"board login: no CSRF token ({name!r})"
        return _login_page(request, "login_failed", 403)
    client = (request.client.host if request.client else "")
    # Unknown names share one bucket: guessed names cannot grow the limiter without bound.
    known = name if name in board.settings.users else "?"
    if board.login_limits.take(f"client:{client}") or board.login_limits.take(f"user:{known}"):
        request.state.refused = f"board login: rate limit ({name!r})"
        return _login_page(request, "login_limited", 429)
    who = await _who(request, fields)
    if who is None:
        request.state.refused = f"board login: wrong credentials ({name!r})"
        return _login_page(request, "login_failed", 401)
    user, supplier = who
    token, _session = await board.context.run(board.sessions.create, user, supplier)
    request.state.principal = supplier or ADMIN
    request.state.note = f"board login {user}"
    response = RedirectResponse(_next(fields.get("next")), status_code=303, headers=HEADERS)
    response.set_cookie(COOKIE, token, max_age=int(board.settings.session_ttl_s), httponly=True,
                        samesite="strict", path="/board",
                        secure=board.settings.secure_cookies)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/board/login")
    return response


@router.post("/logout")
async def logout(request: Request, session: Annotated[Session, Depends(current)]) -> Response:
    board = board_of(request)
    check_csrf(session.csrf, (await form(request)).get("csrf"))
    await board.context.run(board.sessions.end, request.cookies.get(COOKIE, ""))
    request.state.note = f"board logout {session.user}"
    response = RedirectResponse("/board/login", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/board")
    return response
