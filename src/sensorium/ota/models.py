"""Firmware images, rollouts of an image to devices, and each device's update job."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base

# Rollout states.
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
CANCELLED = "cancelled"
ACTIVE_ROLLOUT_STATES = (RUNNING, PAUSED)

# Per-device job states: PROTOCOL.md's (what the device reports) plus the server's own
# PENDING (its batch has not started), ASSIGNED (the assignment is out, nothing heard yet)
# and CANCELLED.
PENDING = "PENDING"
ASSIGNED = "ASSIGNED"
DOWNLOADING = "DOWNLOADING"
DOWNLOADED = "DOWNLOADED"
VERIFIED = "VERIFIED"
UPDATING = "UPDATING"
UPDATED = "UPDATED"
FAILED = "FAILED"
JOB_CANCELLED = "CANCELLED"
# The assignment is out and the device is working on it.
IN_FLIGHT = (ASSIGNED, DOWNLOADING, DOWNLOADED, VERIFIED, UPDATING)
FINISHED = (UPDATED, FAILED, JOB_CANCELLED)


class Firmware(Base):
    """An uploaded image; the bytes are a file in the data directory (`blob`)."""

    __tablename__ = "firmware"
    __table_args__ = (UniqueConstraint("owner_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Base64 Ed25519 signature over the 32 bytes of the SHA-256 digest.
    signature: Mapped[str] = mapped_column(String(100))
    # "server" (signed here with the configured key) or "uploaded" (verified here).
    signed_by: Mapped[str] = mapped_column(String(8))
    # File name under <data_dir>/firmware/.
    blob: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class Rollout(Base):
    __tablename__ = "ota_rollouts"
    __table_args__ = (Index("ix_ota_rollouts_owner_id_state", "owner_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Kept when the image is deleted after the rollout finished (the history stays).
    firmware_id: Mapped[int | None] = mapped_column(
        ForeignKey("firmware.id", ondelete="SET NULL"), index=True
    )
    version: Mapped[str] = mapped_column(String(64))
    # What was asked for: {"devices": [...]} or {"filter": {...}}; the devices themselves
    # are resolved once, at creation, into jobs.
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    strategy: Mapped[str] = mapped_column(String(8))
    batch_size: Mapped[int] = mapped_column(Integer)
    batch_wait_s: Mapped[int] = mapped_column(Integer)
    abort_failure_percent: Mapped[float] = mapped_column(Float)
    device_timeout_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=RUNNING)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    # The last batch started; the next may start once it is finished and this time passed.
    current_batch: Mapped[int] = mapped_column(Integer, default=0)
    next_batch_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Finished and failed jobs when last resumed: the failure rate counts what came after.
    baseline_finished: Mapped[int] = mapped_column(Integer, default=0)
    baseline_failed: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger)


class OtaJob(Base):
    """One device's update within a rollout."""

    __tablename__ = "ota_jobs"
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id"),
        Index("ix_ota_jobs_device_id_state", "device_id", "state"),
        Index("ix_ota_jobs_state_deadline_ms", "state", "deadline_ms"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("ota_rollouts.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    batch: Mapped[int] = mapped_column(Integer)
    # The "job" of the assignment ("j_" + random); a new one for every attempt, so a late
    # report of an earlier attempt cannot move this one.
    token: Mapped[str | None] = mapped_column(String(40), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    progress: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # The firmware the device reported when the assignment went out.
    from_version: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    assigned_ms: Mapped[int | None] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Not UPDATED by then: FAILED (timed out).
    deadline_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Every transition of the current attempt: [{"state", "at_ms", "progress"?, "error"?}].
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
