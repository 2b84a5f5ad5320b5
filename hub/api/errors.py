"""One error body for every error the API gives (docs/api.md, "Errors"): `ApiError`, from
the routes' HTTPExceptions, request validation and the guard (hub/api/guard.py) alike, and
the `responses` each route documents in OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

# What each status means on this API (the text of its OpenAPI response).
MEANINGS: dict[int, str] = {
    400: "the request contradicts itself (e.g. `Last-Event-ID` and `after` together)",
    401: "no API key, or one the hub does not know (`WWW-Authenticate: Bearer`)",
    403: "the key may not use this route (a supplier key on an admin route, or the reverse)",
    404: "no such resource for this key (the same answer whether it does not exist or "
         "concerns someone else)",
    409: "the request conflicts with the hub's state",
    413: "the request body is larger than `api.max_body_bytes`",
    422: "a parameter or the body is not valid (`errors` names each one)",
    429: "too many requests or open streams for this key (`Retry-After` says when to retry)",
    503: "the hub cannot answer this yet",
}
# Every route documents these: any request can be refused before the route runs.
GUARDED = (401, 403, 413, 422, 429)


class FieldProblem(BaseModel):
    """One invalid parameter or body field."""

    location: str = Field(description="where: `query.limit`, `path.order`, `header."
                          "last-event-id`, `body.suppliers.0`")
    message: str


class ApiError(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(json_schema_extra={
        "example": {"status": 404, "detail": "no such work order", "errors": []}})

    status: int = Field(description="the HTTP status, repeated")
    detail: str = Field(description="what went wrong, for a person")
    errors: list[FieldProblem] = Field(default_factory=list,
                                       description="each invalid field (422 only)")


def error_body(status: int, detail: str, errors: list[FieldProblem] | None = None
               ) -> dict[str, Any]:
    return ApiError(status=status, detail=detail, errors=errors or []).model_dump()


def invalid(location: str, message: str) -> RequestValidationError:
    """A 422 for one parameter a route checks itself (`query.limit`, `body.due`), answered
    as request validation's are: `errors` names it."""
    return RequestValidationError([{"loc": tuple(location.split(".")), "msg": message,
                                    "type": "value_error"}])


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI error responses of a route: the guard's and `statuses`."""
    headers = {
        401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
        429: {"Retry-After": {"schema": {"type": "integer"},
                              "description": "seconds to wait"}},
    }
    found: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*GUARDED, *statuses}):
        found[status] = {"model": ApiError, "description": MEANINGS[status]}
        if status in headers:
            found[status]["headers"] = headers[status]
    return found


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse(error_body(error.status_code, str(error.detail)),
                        status_code=error.status_code, headers=error.headers)


async def _invalid(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [FieldProblem(location=_location(tuple(item.get("loc", ()))),
                             message=str(item.get("msg", "invalid")))
                for item in error.errors()]
    detail = "; ".join(f"{p.location}: {p.message}" for p in problems[:5]) or "invalid request"
    return JSONResponse(error_body(422, detail, problems), status_code=422)


def install(app: FastAPI) -> None:
    """Answer every error of `app` with an ApiError body."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
