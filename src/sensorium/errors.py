"""Domain exceptions raised by services; api/errors.py turns them into HTTP responses."""

from __future__ import annotations


class SensoriumError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class NotFound(SensoriumError):
    code = "not_found"


class Conflict(SensoriumError):
    code = "conflict"


class Invalid(SensoriumError):
    """Input that is well-formed but breaks a rule (weak password, bad MAC, bad query)."""

    code = "invalid"


class NotAuthenticated(SensoriumError):
    code = "not_authenticated"


class Forbidden(SensoriumError):
    code = "forbidden"


class PreconditionFailed(SensoriumError):
    """An `If-Match` that no longer holds: someone else changed the resource first."""

    code = "precondition_failed"


class PayloadTooLarge(SensoriumError):
    code = "payload_too_large"


class UnsupportedMediaType(SensoriumError):
    code = "unsupported_media_type"


class RateLimited(SensoriumError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = max(1, retry_after)
