"""What the board's routes share: templates, sessions, the login limits, page answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from hub.api.auth import ADMIN, Keys
from hub.api.context import ApiContext
from hub.api.limits import Limits
from hub.board.i18n import Texts, choose
from hub.board.sessions import Session, Sessions

HERE = Path(__file__).parent
COOKIE = "keyop_board"
LANGUAGE_COOKIE = "keyop_board_lang"
LOGIN_CSRF_COOKIE = "keyop_board_login"
# Nothing the page loads may come from anywhere but the hub itself.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


class Board:
    """The board's parts, made once per app."""

    def __init__(self, context: ApiContext, keys: Keys) -> None:
        settings = context.config.board
        self.context = context
        self.keys = keys
        self.settings = settings
        self.sessions = Sessions(context.store, settings.session_ttl_s)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.login_limits = Limits(settings.login_rate_per_s, settings.login_burst, 1)
        # Open live streams per user, bounded like an API key's (api.max_streams_per_key).
        self.streams = Limits(1.0, 1, context.config.api.max_streams_per_key)


def board_of(request: Request) -> Board:
    board: Board = request.app.state.board
    return board


def texts(request: Request) -> Texts:
    board = board_of(request)
    language = choose(request.headers.get("accept-language"),
                      request.query_params.get("lang") or request.cookies.get(LANGUAGE_COOKIE))
    return Texts(language, board.settings.timezone)


class LoginRequired(HTTPException):
    """No live session: every board route answers with a redirect to the login."""

    def __init__(self, request: Request) -> None:
        target = request.url.path
        super().__init__(status_code=303, detail="login required",
                         headers={"Location": f"/board/login?next={quote(target, safe='/')}",
                                  **HEADERS})


async def current(request: Request) -> Session:
    """The request's session (dependency); the audit log records its supplier (or the
    admin for the plant) and user."""
    board = board_of(request)
    token = request.cookies.get(COOKIE, "")
    session = await board.context.run(board.sessions.find, token) if token else None
    if session is None:
        request.state.refused = "board: no session"
        raise LoginRequired(request)
    request.state.principal = session.supplier or ADMIN
    request.state.note = f"board user {session.user}"
    return session


def visible(session: Session, supplier: str, request: Request) -> str:
    """`supplier` when the session may see it; 404 otherwise (the same answer as for a
    supplier that does not exist)."""
    if supplier not in board_of(request).context.config.suppliers or not session.may_see(
            supplier):
        raise HTTPException(status_code=404, detail="no such board", headers=HEADERS)
    return supplier


def page(request: Request, name: str, values: dict[str, Any], status: int = 200
         ) -> HTMLResponse:
    """A rendered template with the board's headers (and the chosen language remembered)."""
    t = texts(request)
    response = board_of(request).templates.TemplateResponse(
        request, name, {"t": t, "lang": t.language, **values}, status_code=status,
        headers=HEADERS)
    chosen = request.query_params.get("lang")
    if chosen == t.language:
        # A display preference only (no server state): kept in a cookie like the session's.
        response.set_cookie(LANGUAGE_COOKIE, chosen, max_age=365 * 86400, httponly=True,
                            samesite="strict", secure=board_of(request).settings.secure_cookies)
    return response
