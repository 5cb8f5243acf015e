"""Request and response shapes of the firmware and rollout endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["all", "gradual"]
RolloutState = Literal["running", "paused", "completed", "cancelled"]
JobState = Literal[
    "PENDING",
    "ASSIGNED",
    "DOWNLOADING",
    "DOWNLOADED",
    "VERIFIED",
    "UPDATING",
    "UPDATED",
    "FAILED",
    "CANCELLED",
]


class FirmwarePublic(BaseModel):
    id: int
    title: str
    version: str = Field(examples=["1.3.0"])
    notes: str
    size: int = Field(description="Bytes")
    sha256: str = Field(description="Hex SHA-256 of the image")
    signature: str = Field(description="Base64 Ed25519 signature over the SHA-256 digest")
    signed_by: Literal["server", "uploaded"]
    created_at: str


class FirmwareList(BaseModel):
    items: list[FirmwarePublic]


class PublicKey(BaseModel):
    """What devices verify images with: flash `public_key` (raw 32 bytes, base64)."""

    public_key: str
    pem: str
    can_sign: bool = Field(description="Whether uploads without a signature are signed here")


class DeviceFilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_contains: str | None = Field(None, min_length=1, max_length=100)
    location: str | None = Field(None, max_length=200)
    firmware_version: str | None = Field(None, min_length=1, max_length=64)


class RolloutCreate(BaseModel):
    """An image to a list of devices (in that order) or to every device of yours matching
    a filter (now). `all`: every device at once; `gradual`: batches of `batch_size`
    devices or `batch_percent` % of them, each started `batch_wait_s` after the previous
    one finished. A failure rate above `abort_failure_percent` pauses the rollout."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    firmware_id: int
    devices: list[str] | None = Field(None, min_length=1, max_length=10_000)
    filter: DeviceFilterIn | None = None
    strategy: Strategy = "all"
    batch_size: int | None = Field(None, ge=1, le=100_000)
    batch_percent: float | None = Field(None, gt=0, le=100)
    batch_wait_s: int = Field(0, ge=0, le=30 * 86_400)
    abort_failure_percent: float = Field(20.0, ge=0, le=100)
    device_timeout_s: int | None = Field(
        None, ge=10, le=30 * 86_400, description="Default: SENSORIUM_OTA_DEVICE_TIMEOUT_S"
    )


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    state: JobState
    at: str | None


class JobPublic(BaseModel):
    device_id: str
    rollout_id: int
    batch: int
    job: str | None = Field(description="The current attempt's job id (in the assignment)")
    state: JobState
    progress: float | None
    error: str | None
    from_version: str | None
    attempts: int
    assigned_at: str | None
    updated_at: str | None
    finished_at: str | None
    deadline_at: str | None
    history: list[HistoryEntry]


class DeviceJob(JobPublic):
    """One update of a device, in its firmware history."""

    version: str = Field(description="The version the rollout installs")
    rollout_state: RolloutState


class DeviceJobList(BaseModel):
    items: list[DeviceJob]


class RolloutPublic(BaseModel):
    id: int
    firmware_id: int | None
    version: str
    target: dict[str, Any]
    strategy: Strategy
    batch_size: int
    batch_wait_s: int
    abort_failure_percent: float
    device_timeout_s: int
    state: RolloutState
    pause_reason: str | None
    current_batch: int
    next_batch_at: str | None
    failure_percent: float | None
    counts: dict[str, int] = Field(description="Jobs per state")
    created_at: str | None
    updated_at: str | None
    finished_at: str | None


class RolloutDetail(RolloutPublic):
    jobs: list[JobPublic]


class RolloutList(BaseModel):
    items: list[RolloutPublic]


class ProgressAccepted(BaseModel):
    state: JobState
