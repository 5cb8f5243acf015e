"""Registered devices and their (hashed) credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base, UTCDateTime, utcnow


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_owner_name", "owner_id", "name"),)

    # The canonical MAC (12 lowercase hex digits), as in PROTOCOL.md.
    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    location: Mapped[str] = mapped_column(String(200), default="")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # "new" until the first message, then "online"/"offline" (see service.effective_status).
    status: Mapped[str] = mapped_column(String(16), default="new")
    firmware_version: Mapped[str | None] = mapped_column(String(32))
    # Reporting interval the device announced in its status; drives offline detection.
    interval_s: Mapped[int | None] = mapped_column(Integer)
    # Epoch ms after which silence means offline: last message + 3 x interval. Kept as an
    # integer so "online now" is the same plain comparison in SQLite and PostgreSQL.
    offline_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    # How the device last reached us, "mqtt" or "http": where its commands are delivered.
    transport: Mapped[str | None] = mapped_column(String(8))
    # Last status document fields (rssi, uptime_s, ip, free_heap).
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DeviceCredential(Base):
    """A device token, stored as its SHA-256; several may be valid during a rotation."""

    __tablename__ = "device_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when a rotation retires this token: it keeps working until then.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeviceLog(Base):
    """A device's log lines, capped per device (devices.service.MAX_LOG_LINES)."""

    __tablename__ = "device_logs"
    __table_args__ = (Index("ix_device_logs_device_id_id", "device_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    ts: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)


class DeviceStatusEvent(Base):
    """An online/offline transition: the device's online history."""

    __tablename__ = "device_status_events"
    __table_args__ = (Index("ix_device_status_events_device_id_ts", "device_id", "ts"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    ts: Mapped[int] = mapped_column(BigInteger)
    online: Mapped[bool] = mapped_column(Boolean)
    # "status" (the device said so), "lwt" (its last will), "timeout" (silence), "data".
    reason: Mapped[str] = mapped_column(String(16))
