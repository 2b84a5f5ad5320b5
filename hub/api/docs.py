"""The API's OpenAPI documents and Swagger UI, served with no internet (docs/api.md).

The supplier spec (`/v1/openapi.json`, Swagger UI at `/docs`) and the operator's
(`/admin/openapi.json`, `/admin/docs`) are separate documents: a supplier's spec names no
admin route. Swagger UI's script and style come from the `fastapi-offline` package (Swagger UI
5, which renders the OpenAPI 3.1 that FastAPI writes), served from `/docs/assets/`: no page
links to a CDN, so the docs work at a site without internet.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response

SUPPLIER_SPEC = "/v1/openapi.json"
ADMIN_SPEC = "/admin/openapi.json"
SUPPLIER_DOCS = "/docs"
ADMIN_DOCS = "/admin/docs"
ASSETS = {
    "/docs/assets/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "/docs/assets/swagger-ui.css": ("swagger-ui.css", "text/css"),
    "/docs/assets/favicon.png": ("favicon.png", "image/png"),
}
# Tags of the operator's routes; every other route is the supplier's.
ADMIN_TAGS = frozenset({"admin", "operations"})
PUBLIC = frozenset({SUPPLIER_SPEC, ADMIN_SPEC, SUPPLIER_DOCS, ADMIN_DOCS, *ASSETS})


def _refs(node: Any) -> set[str]:
    """The component schema names `node` refers to."""
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def split(full: dict[str, Any], admin: bool) -> dict[str, Any]:
    """The part of the whole API's document that is the operator's (`admin`) or the
    supplier's: its paths, and only the schemas those reach."""
    paths: dict[str, Any] = {}
    for path, operations in full.get("paths", {}).items():
        for method, operation in operations.items():
            if bool(ADMIN_TAGS & set(operation.get("tags", ()))) == admin:
                paths.setdefault(path, {})[method] = operation
    schemas = full.get("components", {}).get("schemas", {})
    wanted, todo = set(), _refs(paths)
    while todo:
        name = todo.pop()
        if name not in wanted and name in schemas:
            wanted.add(name)
            todo |= _refs(schemas[name])
    components = {**full.get("components", {}),
                  "schemas": {n: schemas[n] for n in sorted(wanted)}}
    return {**full, "paths": paths, "components": components}


def _asset(name: str) -> bytes:
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def install(app: FastAPI, public_url: str | None) -> None:
    """Add the two specs, their Swagger UI pages and the UI's assets to `app` (built with
    `openapi_url=None`, so FastAPI adds none of its own)."""
    servers = [{"url": public_url or "/", "description": "this hub's API"}]
    specs: dict[bool, dict[str, Any]] = {}

    def spec(admin: bool) -> dict[str, Any]:
        if admin not in specs:
            full = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes,
                               servers=servers)
            specs[admin] = split(full, admin)
            if admin:
                specs[admin]["info"] = {**full["info"], "title": f"{app.title} (operator)",
                                        "description": "The hub operator's routes (admin key)."}
        return specs[admin]

    def page(url: str, title: str) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url, title=title,
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
            # No call to the public validator badge service.
            swagger_ui_parameters={"validatorUrl": None})

    async def supplier_spec(_request: Request) -> JSONResponse:
        return JSONResponse(spec(False))

    async def admin_spec(_request: Request) -> JSONResponse:
        return JSONResponse(spec(True))

    async def supplier_docs(_request: Request) -> HTMLResponse:
        return page(SUPPLIER_SPEC, app.title)

    async def admin_docs(_request: Request) -> HTMLResponse:
        return page(ADMIN_SPEC, f"{app.title} (operator)")

    for path, endpoint in ((SUPPLIER_SPEC, supplier_spec), (ADMIN_SPEC, admin_spec),
                           (SUPPLIER_DOCS, supplier_docs), (ADMIN_DOCS, admin_docs)):
        app.add_route(path, endpoint, include_in_schema=False)
    for path, (name, media) in ASSETS.items():
        body = _asset(name)

        async def asset(_request: Request, body: bytes = body, media: str = media) -> Response:
            return Response(body, media_type=media,
                            headers={"Cache-Control": "public, max-age=86400"})

        app.add_route(path, asset, include_in_schema=False)
