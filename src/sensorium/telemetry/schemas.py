"""Response shapes of the telemetry endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Order = Literal["asc", "desc"]


class PointPublic(BaseModel):
    key: str = Field(examples=["temperature"])
    ts: int = Field(description="Epoch milliseconds", examples=[1763900000000])
    value: float = Field(examples=[21.5])


class LatestPublic(BaseModel):
    device_id: str
    values: dict[str, PointPublic] = Field(description="The newest reading of every key")


class PointPage(BaseModel):
    device_id: str
    order: Order
    points: list[PointPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page"
    )


class Accepted(BaseModel):
    accepted: int = Field(description="Readings stored", examples=[3])


class BucketRow(BaseModel):
    """One bucket of one key; only the requested aggregates are present."""

    model_config = ConfigDict(extra="allow")

    bucket: int = Field(description="Bucket start, epoch milliseconds")
    start: str = Field(description="Bucket start in the requested time zone (ISO-8601)")


class SeriesPage(BaseModel):
    device_id: str
    interval: str = Field(description="The interval used (what `auto` resolved to)")
    tz: str
    aggs: list[str]
    series: dict[str, list[BucketRow]] = Field(
        description="Per key, its non-empty buckets in time order: gaps are left out"
    )
