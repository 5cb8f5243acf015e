"""Request and response shapes of the alert endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["threshold", "offline"]
Scope = Literal["device", "list", "all"]
Operator = Literal[">", ">=", "<", "<=", "==", "!=", "outside", "inside"]
Severity = Literal["info", "warning", "critical"]
AlertState = Literal["active", "acknowledged", "cleared"]
StateFilter = Literal["active", "acknowledged", "cleared", "open"]
ChannelKind = Literal["webhook", "email"]

MAX_DURATION_S = 7 * 86_400


class RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RuleCreate(RuleBase):
    """A threshold rule (`key` `operator` `threshold`, for `duration_s`) or an offline
    rule (the device's last will, an offline status or the server's timeout; with
    `duration_s`, also that long without data)."""

    name: str = Field(min_length=1, max_length=100, examples=["CO2 too high"])
    kind: Kind = "threshold"
    scope: Scope = Field(
        description="device: one device; list: the devices listed; all: every device "
        "of yours, including ones added later",
        examples=["device"],
    )
    devices: list[str] = Field(default_factory=list, max_length=1000, examples=[["a4cf12b3c4d5"]])
    key: str | None = Field(None, min_length=1, max_length=64, examples=["co2"])
    operator: Operator | None = Field(None, examples=[">"])
    threshold: float | None = Field(None, examples=[1200])
    low: float | None = Field(None, description="For inside/outside: the range's low end")
    high: float | None = Field(None, description="For inside/outside: the range's high end")
    clear_threshold: float | None = Field(
        None,
        description="Hysteresis: an alert of a > or >= rule clears below this, of a < or "
        "<= rule above it; without it the alert clears when the condition is false",
        examples=[1000],
    )
    duration_s: int = Field(0, ge=0, le=MAX_DURATION_S, examples=[300])
    severity: Severity = "warning"
    enabled: bool = True
    channels: list[int] = Field(default_factory=list, max_length=20)


class RuleUpdate(RuleBase):
    """Fields left out stay as they are; the rule as a whole must still be valid. Any
    change clears the rule's open alerts and restarts its evaluation."""

    name: str | None = Field(None, min_length=1, max_length=100)
    kind: Kind | None = None
    scope: Scope | None = None
    devices: list[str] | None = Field(None, max_length=1000)
    key: str | None = Field(None, min_length=1, max_length=64)
    operator: Operator | None = None
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    clear_threshold: float | None = None
    duration_s: int | None = Field(None, ge=0, le=MAX_DURATION_S)
    severity: Severity | None = None
    enabled: bool | None = None
    channels: list[int] | None = Field(None, max_length=20)


class RulePublic(BaseModel):
    id: int
    name: str
    kind: Kind
    scope: Scope
    devices: list[str]
    key: str | None
    operator: Operator | None
    threshold: float | None
    low: float | None
    high: float | None
    clear_threshold: float | None
    duration_s: int
    severity: Severity
    enabled: bool
    channels: list[int]
    created_at: str
    updated_at: str


class RuleList(BaseModel):
    items: list[RulePublic]


class AlertPublic(BaseModel):
    id: int
    rule_id: int
    rule_name: str
    device_id: str
    device_name: str
    severity: Severity
    state: AlertState
    fired_at: str
    value: float | None = Field(description="The triggering value (none for offline)")
    acked_by: int | None
    acked_at: str | None
    ack_note: str | None
    cleared_at: str | None
    clear_value: float | None


class AlertList(BaseModel):
    items: list[AlertPublic]
    next_before: int | None = Field(description="Pass as ?before= for the next page")


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field("", max_length=1000, examples=["window opened"])


class ChannelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["ops webhook"])
    kind: ChannelKind
    url: str | None = Field(None, max_length=2000, examples=["https://example.com/hook"])
    email: str | None = Field(None, max_length=320, examples=["ops@example.com"])
    enabled: bool = True


class ChannelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100)
    url: str | None = Field(None, max_length=2000)
    email: str | None = Field(None, max_length=320)
    enabled: bool | None = None


class ChannelPublic(BaseModel):
    id: int
    name: str
    kind: ChannelKind
    url: str | None
    email: str | None
    enabled: bool
    created_at: str


class ChannelWithSecret(ChannelPublic):
    secret: str | None = Field(
        description="Webhooks: the signing secret, shown only now (and when rotated)"
    )


class ChannelList(BaseModel):
    items: list[ChannelPublic]


class DeliveryPublic(BaseModel):
    id: int
    channel_id: int
    alert_id: int | None
    event: Literal["fired", "cleared", "digest"]
    status: Literal["pending", "sending", "succeeded", "failed", "held", "digested"]
    attempts: int
    created_at: str
    next_attempt_at: str | None
    first_try_at: str | None
    done_at: str | None
    last_error: str | None
    digest_id: int | None


class DeliveryList(BaseModel):
    items: list[DeliveryPublic]
    next_before: int | None


BacktestPeriod = Literal["24h", "7d"]


class BacktestIn(RuleCreate):
    """A rule as it would be created (saved or not), and the period to replay it over."""

    name: str = Field("backtest", max_length=100)
    period: BacktestPeriod = "24h"


class BacktestFire(BaseModel):
    device_id: str
    device_name: str
    at: str = Field(description="When the alert would have fired")
    cleared_at: str | None = Field(description="When it would have cleared (none: still open)")


class BacktestSources(BaseModel):
    day_buckets: int
    hour_buckets: int
    minute_buckets: int
    raw_points: int


class BacktestPublic(BaseModel):
    period: BacktestPeriod
    start: str
    end: str
    count: int = Field(description="How many times the rule would have fired")
    fires: list[BacktestFire] = Field(description="The first 50 of them, oldest first")
    devices: int = Field(description="Devices replayed (at most 100)")
    devices_total: int = Field(description="Devices in the rule's scope")
    source: Literal["rollups", "raw", "mixed", "none"]
    sources: BacktestSources = Field(
        description="Rollup buckets that decided their whole span, and raw points read"
    )
    exact: bool = Field(
        description="False when raw points the rollups still count were dropped by retention"
    )
