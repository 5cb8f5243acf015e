"""Imports every model so Base.metadata is complete (for Alembic and tests)."""

from sensorium.alerts.models import (
    Alert,
    AlertRule,
    AlertRuleChannel,
    AlertRuleDevice,
    AlertState,
    Delivery,
    NotificationChannel,
)
from sensorium.broker.models import BrokerChange
from sensorium.control.models import Command, DeviceState
from sensorium.db import Base
from sensorium.devices.models import Device, DeviceCredential, DeviceLog, DeviceStatusEvent
from sensorium.energy.models import EnergyHour, Site, SiteMeter, Tariff
from sensorium.ota.models import Firmware, OtaJob, Rollout
from sensorium.telemetry.models import LatestValue, Point, Rollup, Series, TelemetryKey
from sensorium.users.models import RefreshToken, User

__all__ = [
    "Alert",
    "AlertRule",
    "AlertRuleChannel",
    "AlertRuleDevice",
    "AlertState",
    "Base",
    "BrokerChange",
    "Command",
    "Delivery",
    "Device",
    "DeviceCredential",
    "DeviceLog",
    "DeviceState",
    "DeviceStatusEvent",
    "EnergyHour",
    "Firmware",
    "LatestValue",
    "NotificationChannel",
    "OtaJob",
    "Point",
    "RefreshToken",
    "Rollout",
    "Rollup",
    "Series",
    "Site",
    "SiteMeter",
    "Tariff",
    "TelemetryKey",
    "User",
]
