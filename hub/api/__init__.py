"""The supplier REST API (FastAPI): one router per resource, every read audited.

`create_app(context)` builds the app; the hub process serves it with uvicorn on its own event
loop (hub/service.py). OpenAPI docs at `/docs`.
"""

from hub.api.app import create_app
from hub.api.context import ApiContext

__all__ = ["ApiContext", "create_app"]
