"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from hub.api import admin, events, metrics, orders
from hub.api.auth import AuditMiddleware, Keys
from hub.api.context import ApiContext


def create_app(context: ApiContext) -> FastAPI:
    """The supplier API over one hub's store. Raises ConfigError when a key file is unreadable."""
    app = FastAPI(
        title="keyop hub supplier API",
        version="1",
        description=(
            "Each supplier sees the work orders and events that concern it, redacted exactly "
            "as on MQTT. Authenticate with `Authorization: Bearer <API key>`."
        ),
    )
    app.state.context = context
    app.state.keys = Keys(context.config)
    app.include_router(orders.router)
    app.include_router(events.router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.add_middleware(AuditMiddleware, context=context)
    return app
