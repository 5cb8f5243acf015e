"""The objects one running API process owns, created by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sensorium.broker.provisioner import BrokerProvisioner
from sensorium.broker.service import Outbox
from sensorium.config import Settings
from sensorium.control.delivery import ControlPlane
from sensorium.devices.tokens import DeviceTokenCache
from sensorium.live.bus import LiveBus
from sensorium.ota.signing import OtaKeys
from sensorium.ratelimit import RateLimiter
from sensorium.telemetry.writer import BatchWriter
from sensorium.users.security import Auth


@dataclass(slots=True)
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    auth: Auth
    writer: BatchWriter
    device_tokens: DeviceTokenCache
    login_user_limiter: RateLimiter
    login_ip_limiter: RateLimiter
    device_limiter: RateLimiter
    command_limiter: RateLimiter
    bus: LiveBus
    control: ControlPlane
    # What firmware images are signed with and checked against (never in the database).
    ota_keys: OtaKeys
    # Set when devices also get MQTT accounts: device changes enqueue broker changes.
    broker: Outbox | None = None
    provisioner: BrokerProvisioner | None = None
    # The MQTT port devices use (shown in the add-device wizard); None without MQTT.
    mqtt_port: int | None = None

    def broker_changed(self) -> None:
        """Call after committing a change that enqueued broker changes: apply them now."""
        if self.provisioner is not None:
            self.provisioner.poke()
