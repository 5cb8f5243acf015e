"""MAC address handling: the accepted spellings of a device id and its canonical form."""

from __future__ import annotations

import re

from sensorium.protocol.errors import InvalidMac

# One separator style per address: a backreference rejects "a4:cf-12:…".
_SEPARATED = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_BARE = re.compile(r"[0-9A-Fa-f]{12}")
_CANONICAL = re.compile(r"[0-9a-f]{12}")
_MAX_MAC = (1 << 48) - 1


def normalize_mac(value: str) -> str:
    """Return the canonical device id (12 lowercase hex digits) for an accepted MAC spelling."""
    if not isinstance(value, str):
        raise InvalidMac(f"MAC address must be a string, got {type(value).__name__}")
    if _BARE.fullmatch(value):
        return value.lower()
    if _SEPARATED.fullmatch(value):
        return value.replace(value[2], "").lower()
    raise InvalidMac(
        "MAC address must be 12 hex digits, optionally in pairs separated by ':' or '-' "
        f"(like A4:CF:12:B3:C4:D5), got {value[:40]!r}"
    )


def is_canonical_mac(value: str) -> bool:
    """Whether `value` is already a canonical device id."""
    return isinstance(value, str) and _CANONICAL.fullmatch(value) is not None


def mac_to_int(mac: str) -> int:
    """The 48-bit integer of a canonical device id (the storage key for time series)."""
    if not is_canonical_mac(mac):
        raise InvalidMac(f"not a canonical device id (12 lowercase hex digits): {mac!r:.40}")
    return int(mac, 16)


def int_to_mac(value: int) -> str:
    """The canonical device id of a 48-bit integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_MAC:
        raise InvalidMac(f"not a 48-bit MAC integer: {value!r:.40}")
    return f"{value:012x}"
