"""Where a broker is and who Sensorium is there."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORT = 1883


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    username: str
    password: str


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` → (host, port)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"SENSORIUM_MQTT_URL must look like mqtt://host:1883, got {url!r}")
    return parts.hostname, parts.port or DEFAULT_PORT
