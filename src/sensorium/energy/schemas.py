"""Request and response shapes of the energy endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
Days = Literal["all", "weekday", "weekend"]
Period = Literal["day", "week", "month", "year"]
Interval = Literal["1h", "1d", "1mo"]
Role = Literal["mains", "sub", "device"]


class WindowIn(BaseModel):
    """A time-of-use window: local times, may cross midnight (23:00-07:00); `days` are
    the days it starts on."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=40, examples=["night"])
    start: str = Field(pattern=HHMM, examples=["23:00"])
    end: str = Field(pattern=HHMM, examples=["07:00"])
    days: Days = "all"
    price_per_kwh: float = Field(ge=0, examples=[0.18])


class TariffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])
    price_per_kwh: float = Field(ge=0, description="Outside every window", examples=[0.32])
    standing_charge_per_day: float = Field(0.0, ge=0, examples=[0.45])
    co2_g_per_kwh: float | None = Field(None, ge=0, examples=[380])
    windows: list[WindowIn] = Field(default_factory=list, max_length=48)


class TariffPublic(TariffIn):
    site_id: int


class SiteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["Home"])
    mains: str | None = Field(None, description="Device id of the mains meter")
    submeters: list[str] = Field(default_factory=list, max_length=100)
    max_gap_s: int = Field(
        900,
        ge=1,
        le=86_400,
        description="Power readings further apart are not bridged (reported as missing)",
    )


class SiteUpdate(BaseModel):
    """Fields left out stay as they are; `mains: null` removes the mains meter."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100)
    mains: str | None = None
    submeters: list[str] | None = Field(None, max_length=100)
    max_gap_s: int | None = Field(None, ge=1, le=86_400)


class MeterPublic(BaseModel):
    device_id: str
    name: str
    role: Role


class SitePublic(BaseModel):
    id: int
    name: str
    max_gap_s: int
    mains: MeterPublic | None
    submeters: list[MeterPublic]
    tariff: TariffPublic | None
    created_at: datetime


class SiteList(BaseModel):
    items: list[SitePublic]


class StretchPublic(BaseModel):
    start: str = Field(description="ISO-8601 in the requested time zone")
    end: str
    start_ms: int
    end_ms: int


class Figures(BaseModel):
    """Energy and its cost over [start, end)."""

    start: str
    end: str
    start_ms: int
    end_ms: int
    kwh: float
    energy_cost: float | None = Field(description="kWh x the price in force; null without tariff")
    standing_charge: float | None = Field(description="Once per local day touched")
    cost: float | None = Field(description="energy_cost + standing_charge")
    co2_kg: float | None
    missing: list[StretchPublic] = Field(description="Stretches without data: not counted")
    estimated: bool = Field(
        description="Part of it comes from rollups because the raw readings were gone"
    )


class MeterFigures(BaseModel):
    device_id: str
    name: str
    role: Role
    source: Literal["energy", "power"] | None = Field(
        description="The energy counter (kWh) or integrated power (W); null without data"
    )
    kwh: float
    energy_cost: float | None
    previous_kwh: float
    missing: list[StretchPublic]


class PeakPublic(BaseModel):
    w: float
    at: str
    at_ms: int
    kind: Literal["reading", "slot_average"] = Field(
        description="A power reading, or (counter-only meters) the highest hourly average"
    )


class NowPublic(BaseModel):
    w: float
    ts: int = Field(description="Epoch ms of the (oldest) reading it is made of")


class SummaryPublic(BaseModel):
    site_id: int | None
    device_id: str | None
    name: str
    period: Period
    tz: str
    at: str
    currency: str | None
    now: NowPublic | None
    current: Figures = Field(description="From the start of the period to `at`")
    previous: Figures = Field(description="The previous period up to the same point")
    change_pct: float | None = Field(description="current vs previous kWh, in %")
    peak: PeakPublic | None
    base_load_w: float | None = Field(
        description="Typical night minimum: median over nights of the lowest hourly average "
        "between 00:00 and 06:00"
    )
    hourly_profile: list[float | None] = Field(
        description="Average kWh in each local hour of the day (0-23) over the period"
    )
    meters: list[MeterFigures]
    unmetered_kwh: float | None = Field(description="Sites with a mains meter: mains - subs")
    unmetered_cost: float | None


class SeriesRow(BaseModel):
    start: str
    bucket: int = Field(description="Bucket start, epoch ms")
    kwh: float
    energy_cost: float | None
    standing_charge: float | None
    cost: float | None
    co2_kg: float | None
    missing_ms: int
    meters: dict[str, float] = Field(description="Sites: kWh per meter device id")
    unmetered_kwh: float | None


class SeriesPublic(BaseModel):
    site_id: int | None
    device_id: str | None
    interval: Interval
    tz: str
    currency: str | None
    start: str
    end: str
    rows: list[SeriesRow]
    missing: list[StretchPublic]
