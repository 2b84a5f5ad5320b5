"""The FastAPI application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from hub.api import admin, docs, errors, events, health, metrics, orders, status
from hub.api.audit import AuditBuffer, AuditMiddleware
from hub.api.auth import Keys
from hub.api.context import ApiContext
from hub.api.guard import GuardMiddleware
from hub.api.limits import Limits


def create_app(context: ApiContext) -> FastAPI:
    """The supplier API over one hub's store. Raises HubConfigError when a key file is unreadable
    or two accounts share a key."""
    # The board reads through hub/alerts.py, which imports this package: imported here.
    from hub.board.app import PREFIX as BOARD
    from hub.board.app import install as install_board

    keys = Keys(context.config)
    audit = AuditBuffer(context)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        audit.start()
        try:
            yield
        finally:
            await audit.close()

    app = FastAPI(
        title="keyop hub supplier API",
        version="1",
        description=(
            "Each supplier sees the work orders and events that concern it, redacted exactly "
            "as on MQTT. Authenticate with `Authorization: Bearer <API key>`. Every error "
            "answers an `ApiError`; pages go on with `after` = the previous page's `next`. "
            "The reference is docs/api.md."
        ),
        lifespan=lifespan,
        # The specs and Swagger UI are hub/api/docs.py's: two documents, no CDN.
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    app.state.context = context
    app.state.keys = keys
    app.state.audit = audit
    api = context.config.api
    app.state.limits = limits = Limits(api.rate_per_s, api.burst, api.max_streams_per_key)
    app.include_router(orders.router)
    app.include_router(events.router)
    app.include_router(status.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.include_router(health.router)
    errors.install(app)
    docs.install(app, api.public_url)
    if context.config.board.enabled:
        install_board(app, context, keys)
    # Starlette runs the middleware added last first: audit, then the guard, then the routes.
    app.add_middleware(GuardMiddleware, keys=keys, limits=limits,
                       max_body_bytes=api.max_body_bytes, public=docs.PUBLIC | health.PATHS,
                       streams=frozenset({"/v1/stream"}),
                       own_sessions=BOARD if context.config.board.enabled else None)
    app.add_middleware(AuditMiddleware, buffer=audit)
    return app
