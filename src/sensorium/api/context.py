"""The objects one running API process owns, created by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sensorium.config import Settings
from sensorium.devices.tokens import DeviceTokenCache
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
