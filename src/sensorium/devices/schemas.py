"""Request and response shapes of the device registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DeviceStatus = Literal["new", "online", "offline"]


class DeviceBase(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["Living room"])
    location: str = Field("", max_length=200, examples=["Ground floor"])


class DeviceCreate(DeviceBase):
    mac: str = Field(
        examples=["A4:CF:12:B3:C4:D5"],
        description="Wi-Fi MAC: A4:CF:12:B3:C4:D5, a4-cf-12-b3-c4-d5 or a4cf12b3c4d5",
    )


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100)
    location: str | None = Field(None, max_length=200)


class DevicePublic(DeviceBase):
    id: str = Field(examples=["a4cf12b3c4d5"])
    status: DeviceStatus
    registered_at: datetime
    last_seen: datetime | None
    firmware_version: str | None
    info: dict[str, Any] = Field(
        description="Last reported status details: rssi, uptime_s, ip, free_heap"
    )


class DeviceWithToken(DevicePublic):
    token: str = Field(description="The device token. Shown once; store it in the firmware.")


class DeviceList(BaseModel):
    items: list[DevicePublic]
    total: int
    limit: int
    offset: int


class DeviceToken(BaseModel):
    device_id: str
    token: str = Field(description="The new device token. Shown once.")
    previous_valid_until: datetime | None = Field(
        description="Until when the previous token keeps working (the grace period)"
    )


class StatusAccepted(BaseModel):
    status: DeviceStatus


class LogLine(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    ts: int = Field(description="Epoch milliseconds (the device's clock, or arrival)")
    level: str = Field(examples=["warn"])
    message: str = Field(examples=["DHT22 read failed, retrying"])


class StatusEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    ts: int = Field(description="Epoch milliseconds")
    online: bool
    reason: str = Field(
        description="status (the device said so, or its last will), timeout (silence), "
        "data (data arrived from an offline device)"
    )
