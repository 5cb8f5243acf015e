"""Status documents (PROTOCOL.md "Status"): what a device says about itself."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from sensorium.protocol._json import decode_document, json_type
from sensorium.protocol.errors import PayloadError

MAX_FW_LENGTH = 32
MIN_RSSI = -150
MAX_RSSI = 0
MAX_INTERVAL_S = 86400
# Counters beyond a signed 64-bit column cannot be stored; nothing real gets near it.
_MAX_COUNTER = 2**63 - 1
# Longest IPv6 text (45) plus a generous zone id; spares ipaddress the junk.
_MAX_IP_LENGTH = 80


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The members a device reported; None where it said nothing."""

    online: bool | None = None
    fw: str | None = None
    uptime_s: int | None = None
    rssi: int | None = None
    ip: str | None = None
    free_heap: int | None = None
    interval_s: int | None = None


def parse_status(raw: bytes) -> StatusReport:
    """Decode and validate a status body; raises PayloadError on the first problem."""
    return validate_status(decode_document(raw))


def validate_status(doc: object) -> StatusReport:
    """Validate an already-decoded status document; unknown members are ignored."""
    if not isinstance(doc, dict):
        raise PayloadError("invalid_shape", f"status must be a JSON object, got {json_type(doc)}")
    return StatusReport(
        online=_online(doc.get("online")),
        fw=_fw(doc.get("fw")),
        uptime_s=_integer(doc, "uptime_s", 0, _MAX_COUNTER),
        rssi=_integer(doc, "rssi", MIN_RSSI, MAX_RSSI),
        ip=_ip(doc.get("ip")),
        free_heap=_integer(doc, "free_heap", 0, _MAX_COUNTER),
        interval_s=_integer(doc, "interval_s", 1, MAX_INTERVAL_S),
    )


# JSON null is read as "not reported", the same as leaving the member out.


def _online(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _invalid("online", f"'online' must be true or false, got {json_type(value)}")


def _fw(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("fw", f"'fw' must be a string, got {json_type(value)}")
    if not 0 < len(value) <= MAX_FW_LENGTH or not value.isprintable():
        raise _invalid(
            "fw", f"'fw' must be 1-{MAX_FW_LENGTH} printable characters, got {value!r:.60}"
        )
    return value


def _integer(doc: dict[Any, Any], name: str, low: int, high: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    # JSON does not tell 30 from 30.0 and some encoders write the latter.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        shown = repr(value) if isinstance(value, float) else json_type(value)
        raise _invalid(name, f"'{name}' must be an integer, got {shown}")
    if not low <= value <= high:
        raise _invalid(name, f"'{name}' must be between {low} and {high}, got {value}")
    return int(value)


def _ip(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("ip", f"'ip' must be a string, got {json_type(value)}")
    if len(value) <= _MAX_IP_LENGTH:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise _invalid("ip", f"'ip' must be an IPv4 or IPv6 address, got {value!r:.60}")


def _invalid(name: str, message: str) -> PayloadError:
    return PayloadError("invalid_value", message, name)
