"""Imports every model so Base.metadata is complete (for Alembic and tests)."""

from sensorium.db import Base
from sensorium.devices.models import Device, DeviceCredential
from sensorium.telemetry.models import LatestValue, Point, TelemetryKey
from sensorium.users.models import RefreshToken, User

__all__ = [
    "Base",
    "Device",
    "DeviceCredential",
    "LatestValue",
    "Point",
    "RefreshToken",
    "TelemetryKey",
    "User",
]
