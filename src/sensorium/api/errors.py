"""The one place where exceptions become HTTP responses of the shape
`{"error": {"code", "message", "field"}}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sensorium import errors
from sensorium.protocol import ProtocolError
from sensorium.telemetry.writer import WriterOverloaded


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code", examples=["invalid_value"])
    message: str = Field(examples=["entry 3: value of 'temp' must be a number or boolean"])
    field: str | None = Field(
        description="The offending field, if one", examples=["[3].values.temp"]
    )


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the error shape for these statuses."""
    return {
        status: {
            "model": ErrorBody,
            "description": HTTP_CODES.get(status, "error").replace("_", " "),
        }
        for status in statuses
    }


STATUS_BY_ERROR: dict[type[errors.SensoriumError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Invalid: 422,
    errors.NotAuthenticated: 401,
    errors.Forbidden: 403,
    errors.PreconditionFailed: 412,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.RateLimited: 429,
    WriterOverloaded: 503,
}

HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message, "field": field}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def domain_error_response(exc: errors.SensoriumError) -> Response:
    status = next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 400)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, WriterOverloaded):
        headers["Retry-After"] = "1"
    elif isinstance(exc, errors.NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, exc.code, exc.message, exc.field, headers)


def protocol_error_response(exc: ProtocolError) -> Response:
    status = 413 if exc.code == "payload_too_large" else 422
    return error_response(status, exc.code, exc.message, exc.field)


def _field_of(loc: Sequence[Any]) -> str | None:
    # ("body", "mac") -> "mac"; ("query", "limit") -> "limit"; nested -> "a.b"
    if loc and loc[0] in {"body", "query", "path", "header", "cookie"}:
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or None


async def _validation_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = _field_of(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return error_response(422, "invalid_json", "request body is not valid JSON", None)
    if first.get("type") == "missing" and field is None:
        return error_response(422, "missing_body", "a JSON request body is required", None)
    return error_response(422, "invalid", f"{field}: {message}" if field else message, field)


async def _http_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, dict(exc.headers or {}))


async def _domain_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.SensoriumError)
    return domain_error_response(exc)


async def _protocol_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return protocol_error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(errors.SensoriumError, _domain_handler)
    app.add_exception_handler(ProtocolError, _protocol_handler)
