"""Reading a device's request body within the protocol's limits."""

from __future__ import annotations

from fastapi import Request

from sensorium.errors import PayloadTooLarge, UnsupportedMediaType
from sensorium.protocol import MAX_PAYLOAD_BYTES


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_json_body(request: Request, *, limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The raw body of a JSON request; 415 for other types, 413 beyond `limit` bytes.

    The size is checked while streaming, so an oversized body is never held in memory.
    """
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("Content-Type must be application/json", field="content-type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)
