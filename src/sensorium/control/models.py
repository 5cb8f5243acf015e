"""Per-device state documents and the command log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base

# Command lifecycle (PROTOCOL.md): queued → sent → succeeded | failed | expired.
QUEUED = "queued"
SENT = "sent"
SUCCEEDED = "succeeded"
FAILED = "failed"
EXPIRED = "expired"
OPEN_STATUSES = (QUEUED, SENT)
FINAL_STATUSES = (SUCCEEDED, FAILED, EXPIRED)


class DeviceState(Base):
    """What the owner wants the device to be, what it says it is, and its declared controls.

    A row exists once anything was set; a missing row reads as empty documents, version 0.
    """

    __tablename__ = "device_states"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    desired: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    desired_version: Mapped[int] = mapped_column(BigInteger, default=0)
    desired_ms: Mapped[int | None] = mapped_column(BigInteger)
    reported: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The desired version the device said it had applied with its last report.
    reported_version: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_ms: Mapped[int | None] = mapped_column(BigInteger)
    controls: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Bumped on every change of any of the above: the ETag of GET …/state.
    revision: Mapped[int] = mapped_column(Integer, default=0)


class Command(Base):
    __tablename__ = "commands"
    __table_args__ = (
        Index("ix_commands_device_id_id", "device_id", "id"),
        Index("ix_commands_status_expires_ms", "status", "expires_ms"),
    )

    # "c_" + a ULID: unique, and sorts by creation time.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    # Epoch milliseconds, as everywhere the protocol carries time.
    created_ms: Mapped[int] = mapped_column(BigInteger)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger)
    done_ms: Mapped[int | None] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
