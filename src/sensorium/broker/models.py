"""Broker changes waiting to be applied (the transactional outbox of device credentials)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base, UTCDateTime, utcnow


class BrokerChange(Base):
    """One change to a device's broker account, written in the same transaction as the
    change to the device itself, and deleted once Mosquitto has confirmed it. So a broker
    that is down or restarting misses nothing: the change waits here."""

    __tablename__ = "broker_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign key: a "delete" must outlive the device row.
    device_id: Mapped[str] = mapped_column(String(12), index=True)
    action: Mapped[str] = mapped_column(String(16))
    # The new device token, encrypted with a key derived from the secret key; only held
    # until the broker has it (the broker needs the token itself, not its hash).
    secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
