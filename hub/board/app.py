"""Mount the board on the supplier API's app: its routes, and its static assets (served by
the hub: nothing is loaded from elsewhere)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hub.api.auth import Keys
from hub.api.context import ApiContext
from hub.board import login, pages, stream
from hub.board.web import HERE, Board

PREFIX = "/board"


def install(app: FastAPI, context: ApiContext, keys: Keys) -> None:
    app.state.board = Board(context, keys)
    app.include_router(login.router)
    app.include_router(stream.router)
    app.include_router(pages.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="board-static")
