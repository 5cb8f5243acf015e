"""JSON decoding shared by every device document: size limit first, then orjson."""

from __future__ import annotations

import orjson

from sensorium.protocol.errors import PayloadError

MAX_PAYLOAD_BYTES = 256 * 1024


def decode_document(raw: bytes) -> object:
    """Decode a device's JSON body, enforcing the size limit before any parsing."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            "payload_too_large",
            f"document is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (256 KiB)",
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError("invalid_json", f"document is not valid UTF-8 JSON: {exc}") from None


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__
