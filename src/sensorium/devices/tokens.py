"""A short-lived in-process cache of device-token lookups, so ingest skips a query per request."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sensorium.devices.service import DeviceIdentity


@dataclass(slots=True)
class _Entry:
    device_id: str
    valid_until: float  # time.monotonic()


class DeviceTokenCache:
    """Maps token hashes to device ids for `ttl_s` seconds.

    Revocation in this process drops the device's entries at once; another process
    sharing the database sees a revocation within `ttl_s`.
    """

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 200_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}

    def get(self, token_hash: str) -> str | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry.valid_until <= time.monotonic():
            del self._entries[token_hash]
            return None
        return entry.device_id

    def put(self, token_hash: str, identity: DeviceIdentity) -> None:
        if self._ttl_s <= 0:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        valid_until = time.monotonic() + self._ttl_s
        if identity.expires_at is not None:
            remaining = identity.expires_at.timestamp() - time.time()
            valid_until = min(valid_until, time.monotonic() + remaining)
        self._entries[token_hash] = _Entry(identity.device_id, valid_until)

    def forget_device(self, device_id: str) -> None:
        for key in [k for k, e in self._entries.items() if e.device_id == device_id]:
            del self._entries[key]
