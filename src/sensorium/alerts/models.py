"""Alert rules, the alerts they open, their per-(rule, device) evaluation state, and the
notification channels with their delivery log.

Times are epoch milliseconds (as commands and points): a threshold alert fires at the
time its condition had held for the rule's duration, in the devices' own clock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base

# Rule kinds, scopes, severities.
THRESHOLD = "threshold"
OFFLINE = "offline"
SCOPE_DEVICE = "device"
SCOPE_LIST = "list"
SCOPE_ALL = "all"

# Alert lifecycle: active → acknowledged → cleared (or active → cleared).
ACTIVE = "active"
ACKNOWLEDGED = "acknowledged"
CLEARED = "cleared"
OPEN_STATES = (ACTIVE, ACKNOWLEDGED)

# Evaluation phases of a (rule, device): nothing, condition true but not for long enough
# yet, an open alert.
IDLE = "idle"
PENDING = "pending"
FIRING = "firing"

# Delivery lifecycle: pending → sending → succeeded | pending (retry) | failed; a
# delivery beyond a channel's per-minute limit is held, then summarised in a digest.
D_PENDING = "pending"
D_SENDING = "sending"
D_SUCCEEDED = "succeeded"
D_FAILED = "failed"
D_HELD = "held"
D_DIGESTED = "digested"


class AlertRule(Base):
    __tablename__ = "alert_rules"
    __table_args__ = (Index("ix_alert_rules_owner_id_kind", "owner_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    # "device" / "list": the devices in alert_rule_devices; "all": every device of the
    # owner, including ones registered later.
    scope: Mapped[str] = mapped_column(String(8))
    # Threshold rules: the key, `operator` (> >= < <= == != outside inside) and its
    # threshold(s); `low`..`high` for the range operators.
    key: Mapped[str | None] = mapped_column(String(64))
    operator: Mapped[str | None] = mapped_column(String(8))
    threshold: Mapped[float | None] = mapped_column(Float)
    low: Mapped[float | None] = mapped_column(Float)
    high: Mapped[float | None] = mapped_column(Float)
    # Hysteresis: an open alert of a > / >= rule clears below this (< / <=: above it).
    # Without it the alert clears as soon as the condition is false.
    clear_threshold: Mapped[float | None] = mapped_column(Float)
    # Threshold: how long the condition must hold. Offline: silence that counts as
    # offline (0: only the device's last will, offline status or the server's timeout).
    duration_s: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[str] = mapped_column(String(8))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class AlertRuleDevice(Base):
    __tablename__ = "alert_rule_devices"

    rule_id: Mapped[int] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AlertRuleChannel(Base):
    __tablename__ = "alert_rule_channels"

    rule_id: Mapped[int] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True
    )
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AlertState(Base):
    """Where the evaluation of one rule on one device stands. Every change is a
    conditional UPDATE on `version`, so two workers (or a worker and the scheduler) never
    both act on the same state."""

    __tablename__ = "alert_states"
    __table_args__ = (Index("ix_alert_states_phase_wake_ms", "phase", "wake_ms"),)

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    rule_id: Mapped[int] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    phase: Mapped[str] = mapped_column(String(8), default=IDLE)
    # Pending: since when the condition holds, and when the alert is due (device time,
    # like the points). Firing: due_ms is when it fired.
    since_ms: Mapped[int | None] = mapped_column(BigInteger)
    due_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Pending: when the scheduler fires it if no contrary point came (server time): as
    # long after the last point arrived as the due mark is after that point. For a live
    # device that is the due mark itself; a backfill gets time for the rest of its data.
    wake_ms: Mapped[int | None] = mapped_column(BigInteger)
    # The newest point evaluated.
    last_ts: Mapped[int | None] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Float)
    # The newest point at which the condition was false (conditions.Phase.false_ts).
    false_ts: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        # At most one open alert per (rule, device), whoever tries to open a second.
        Index(
            "uq_alerts_open_rule_device",
            "rule_id",
            "device_id",
            unique=True,
            sqlite_where=text("state != 'cleared'"),
            postgresql_where=text("state != 'cleared'"),
        ),
        Index("ix_alerts_owner_id_id", "owner_id", "id"),
        Index(
            "ix_alerts_live_pending",
            "live_pending",
            sqlite_where=text("live_pending"),
            postgresql_where=text("live_pending"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # As the rule said when the alert fired.
    severity: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    fired_ms: Mapped[int] = mapped_column(BigInteger)
    # The triggering value (none for offline alerts).
    value: Mapped[float | None] = mapped_column(Float)
    acked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    acked_ms: Mapped[int | None] = mapped_column(BigInteger)
    ack_note: Mapped[str | None] = mapped_column(Text)
    cleared_ms: Mapped[int | None] = mapped_column(BigInteger)
    clear_value: Mapped[float | None] = mapped_column(Float)
    # Set by every transition; the scheduler publishes the alert on the live bus and
    # resets it (one conditional UPDATE, so one process publishes each transition).
    live_pending: Mapped[bool] = mapped_column(Boolean, default=True)


class NotificationChannel(Base):
    __tablename__ = "notification_channels"
    __table_args__ = (Index("ix_notification_channels_owner_id_name", "owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    # "webhook" (url, secret) or "email" (email).
    kind: Mapped[str] = mapped_column(String(8))
    url: Mapped[str | None] = mapped_column(String(2000))
    email: Mapped[str | None] = mapped_column(String(320))
    # The webhook's signing secret, encrypted with a key derived from SECRET_KEY.
    secret_enc: Mapped[str | None] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    # Touched by the dispatcher at the start of each pass over the channel: the row lock
    # that keeps two dispatchers from both spending the channel's per-minute allowance.
    dispatched_ms: Mapped[int | None] = mapped_column(BigInteger)


class Delivery(Base):
    """One message to one channel and its attempts: the retry log."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("alert_id", "channel_id", "event"),
        Index("ix_deliveries_status_next_ms", "status", "next_ms"),
        Index("ix_deliveries_channel_id_id", "channel_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE")
    )
    # None for a digest.
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    # "fired", "cleared" or "digest".
    event: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(12), default=D_PENDING)
    # What is sent, fixed when the delivery is made so every attempt sends the same.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    next_ms: Mapped[int] = mapped_column(BigInteger)
    first_try_ms: Mapped[int | None] = mapped_column(BigInteger)
    done_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The digest that summarised this held delivery.
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
