"""Request and response shapes of device control."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sensorium.protocol import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, MIN_TIMEOUT_S

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MAX_CONTROLS = 32

CommandStatus = Literal["queued", "sent", "succeeded", "failed", "expired"]


class Control(BaseModel):
    """One control on the device page: switch/slider/select set the desired-state key
    `key`; a button sends the command `command` (default: `key`) with `params`."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=NAME_PATTERN, examples=["relay"])
    kind: Literal["switch", "slider", "select", "button"]
    label: str = Field("", max_length=64, examples=["Relay"])
    min: float | None = None
    max: float | None = None
    step: float | None = Field(None, gt=0)
    options: list[str] | None = Field(None, min_length=1, max_length=50)
    command: str | None = Field(None, pattern=NAME_PATTERN)
    params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> Self:
        if self.kind == "slider":
            low = 0.0 if self.min is None else self.min
            high = 100.0 if self.max is None else self.max
            if low >= high:
                raise ValueError("a slider needs min < max")
            self.min, self.max = low, high
        elif self.min is not None or self.max is not None or self.step is not None:
            raise ValueError("min, max and step belong to sliders")
        if self.kind == "select":
            if not self.options:
                raise ValueError("a select needs options")
            if any(not o or len(o) > 64 for o in self.options):
                raise ValueError("options must be 1-64 characters")
        elif self.options is not None:
            raise ValueError("options belong to selects")
        if self.kind != "button" and (self.command is not None or self.params is not None):
            raise ValueError("command and params belong to buttons")
        return self


class StatePublic(BaseModel):
    device_id: str
    desired: dict[str, Any]
    desired_version: int
    desired_at: datetime | None
    reported: dict[str, Any]
    reported_version: int = Field(description="The desired version the device last applied")
    reported_at: datetime | None
    pending: list[str] = Field(description="Desired keys whose reported value differs")
    controls: list[dict[str, Any]] = Field(description="The declared controls (see Control)")
    ota: dict[str, Any] | None = Field(
        None, description="The firmware update assignment in force (PROTOCOL.md OTA), or null"
    )


class CommandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, examples=["ping"])
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: int = Field(
        DEFAULT_TIMEOUT_S,
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        description="Time for delivery and result together; then the command expires",
    )


class CommandPublic(BaseModel):
    id: str = Field(examples=["c_01kaq3v5m8k2x9d1b7c6e4f0ah"])
    device_id: str
    name: str
    params: dict[str, Any]
    status: CommandStatus
    created_at: datetime
    sent_at: datetime | None
    done_at: datetime | None
    expires_at: datetime
    result: dict[str, Any] | None
    error: str | None


class CommandMessagePublic(BaseModel):
    """A command as a long-polling device receives it."""

    id: str
    name: str
    params: dict[str, Any]
    expires_at: int = Field(description="Epoch milliseconds")
