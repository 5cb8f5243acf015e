"""Errors raised when a device document or identifier breaks PROTOCOL.md."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A document or identifier that breaks PROTOCOL.md."""

    code: str
    message: str
    field: str | None

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        # Default exception pickling replays only `args` into __init__, which does not match the
        # subclasses' signatures; errors do cross process boundaries (worker pools).
        return (_restore, (type(self), self.code, self.message, self.field))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"field={self.field!r})"
        )


class InvalidMac(ProtocolError):
    """A MAC address / device id that is not one of the accepted spellings."""

    def __init__(self, message: str, field: str | None = "mac") -> None:
        super().__init__("invalid_mac", message, field)


class PayloadError(ProtocolError):
    """A telemetry or status document that cannot be accepted; `code` says why."""


def _restore(cls: type[ProtocolError], code: str, message: str, field: str | None) -> ProtocolError:
    error = cls.__new__(cls)
    ProtocolError.__init__(error, code, message, field)
    return error
