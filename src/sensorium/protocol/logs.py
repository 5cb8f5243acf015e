"""Device log lines (PROTOCOL.md `devices/{id}/logs`)."""

from __future__ import annotations

from dataclasses import dataclass

from sensorium.protocol._json import decode_document, json_type
from sensorium.protocol.errors import PayloadError
from sensorium.protocol.telemetry import _timestamp

LOG_LEVELS = ("debug", "info", "warn", "error")
MAX_LOG_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class LogRecord:
    ts: int
    level: str
    msg: str


def parse_log(raw: bytes, *, now_ms: int) -> LogRecord:
    """`{"level": "info|warn|error", "msg": "...", "ts": ...}`; ts defaults to now."""
    doc = decode_document(raw)
    if not isinstance(doc, dict):
        raise PayloadError(
            "invalid_shape", f"a log line must be a JSON object, got {json_type(doc)}"
        )
    level = doc.get("level", "info")
    if level not in LOG_LEVELS:
        raise PayloadError(
            "invalid_value", f"'level' must be one of {', '.join(LOG_LEVELS)}", "level"
        )
    msg = doc.get("msg")
    if not isinstance(msg, str) or not msg:
        raise PayloadError("invalid_value", "'msg' must be a non-empty string", "msg")
    ts = doc.get("ts")
    return LogRecord(
        ts=now_ms if ts is None else _timestamp(ts, None, now_ms, None),
        level=level,
        # Long messages are kept, shortened: a log line is better cut than lost.
        msg=msg[:MAX_LOG_MESSAGE],
    )
