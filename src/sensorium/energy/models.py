"""Sites (a mains meter and sub-meters), their tariffs, and the per-hour and per-day
energy caches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base, UTCDateTime, utcnow

MAINS = "mains"
SUB = "sub"


class Site(Base):
    """A user's group of meters, e.g. "Home": the mains meter plus sub-circuit meters."""

    __tablename__ = "energy_sites"
    __table_args__ = (Index("ix_energy_sites_owner_id_name", "owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    # Power readings further apart than this are not bridged: the time between them is
    # reported as missing rather than guessed.
    max_gap_s: Mapped[int] = mapped_column(Integer, default=900)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SiteMeter(Base):
    """A device's place in a site. A device meters one circuit, so it belongs to at most
    one site; deleting the device removes it from its site and leaves the site intact."""

    __tablename__ = "energy_site_meters"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    site_id: Mapped[int] = mapped_column(
        ForeignKey("energy_sites.id", ondelete="CASCADE"), index=True
    )
    # "mains" (at most one per site) or "sub".
    role: Mapped[str] = mapped_column(String(8))


class Tariff(Base):
    """A site's prices: a flat rate per kWh, time-of-use windows that override it, a daily
    standing charge, and an optional CO2 factor."""

    __tablename__ = "energy_tariffs"

    site_id: Mapped[int] = mapped_column(
        ForeignKey("energy_sites.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3))
    price_per_kwh: Mapped[float] = mapped_column(Float)
    standing_charge_per_day: Mapped[float] = mapped_column(Float, default=0.0)
    co2_g_per_kwh: Mapped[float | None] = mapped_column(Float)
    # [{"name", "start": "HH:MM", "end": "HH:MM", "days": "all|weekday|weekend",
    #   "price_per_kwh"}], validated not to overlap (energy.tariffs).
    windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class EnergyHour(Base):
    """The energy between the first and last reading of one UTC hour of one device's
    `power` or `energy` key, computed once from the raw points.

    The hour's rollup figures at the time (count, first/last, min/max, sum) are kept with
    it: when the hour's rollup no longer matches (a late or re-sent reading), the entry is
    recomputed. It outlives the raw points, so long ranges stay exact after retention.
    Keyed like the points (device MAC as an integer), so it needs no device foreign key;
    entries of a deleted device are never read (they are only used next to a rollup)."""

    __tablename__ = "energy_hours"

    device: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # The gap limit the figure was computed with (it decides what is bridged).
    max_gap_ms: Mapped[int] = mapped_column(BigInteger)
    n: Mapped[int] = mapped_column(BigInteger)
    vsum: Mapped[float] = mapped_column(Float)
    vmin: Mapped[float] = mapped_column(Float)
    vmax: Mapped[float] = mapped_column(Float)
    first_ts: Mapped[int] = mapped_column(BigInteger)
    first_value: Mapped[float] = mapped_column(Float)
    last_ts: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float] = mapped_column(Float)
    wh: Mapped[float] = mapped_column(Float)
    # Unbridged stretches inside the hour, [[start_ms, end_ms], ...].
    missing: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    # True when the raw points were already gone and the figure comes from the rollup.
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)


class EnergyDay(Base):
    """The energy of one UTC day of one device's `power` or `energy` key, per UTC hour:
    the day's cached hours and the stretches between its own readings, as the hourly path
    would add them up (what lies between the day's first reading and the reading before
    it belongs to whoever reads the day next to it).

    Built from `energy_hours` once every hour of the day is known, and kept with the day's
    rollup figures (count, first/last, min/max, sum): when the day's rollup no longer
    matches, the day is read hour by hour again. A year of a meter is 365 rows, not 8,760."""

    __tablename__ = "energy_days"

    device: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    day: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    max_gap_ms: Mapped[int] = mapped_column(BigInteger)
    n: Mapped[int] = mapped_column(BigInteger)
    vsum: Mapped[float] = mapped_column(Float)
    vmin: Mapped[float] = mapped_column(Float)
    vmax: Mapped[float] = mapped_column(Float)
    first_ts: Mapped[int] = mapped_column(BigInteger)
    first_value: Mapped[float] = mapped_column(Float)
    last_ts: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float] = mapped_column(Float)
    # 24 little-endian float64: Wh in each UTC hour of the day (integrate.pack_hours).
    hours: Mapped[bytes] = mapped_column(LargeBinary)
    missing: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)


class EnergyMonth(Base):
    """The energy of one UTC month of one device's `power` or `energy` key, per UTC hour:
    its days from `energy_days` and the stretches between its own readings across their
    midnights, exactly as the day-by-day path adds them up (what lies between the month's
    first reading and the reading before it belongs to whoever reads the month next to
    it).

    Built once every day of the month with readings is in `energy_days`, and kept with
    the aggregate of the month's day rollups (how many days, the count and sum, min and
    max): when that no longer matches (a late, re-sent or deleted reading), the month is
    read day by day again. A year of a meter is 12 rows, not 365."""

    __tablename__ = "energy_months"

    device: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # The first instant of the UTC month and of the next one (epoch ms).
    month: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    month_end: Mapped[int] = mapped_column(BigInteger)
    max_gap_ms: Mapped[int] = mapped_column(BigInteger)
    # The aggregate of the month's day rollups when the row was built.
    days: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(BigInteger)
    vsum: Mapped[float] = mapped_column(Float)
    vmin: Mapped[float] = mapped_column(Float)
    vmax: Mapped[float] = mapped_column(Float)
    # The month's first and last reading (its first and last day rollup's).
    first_ts: Mapped[int] = mapped_column(BigInteger)
    first_value: Mapped[float] = mapped_column(Float)
    last_ts: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float] = mapped_column(Float)
    # One little-endian float64 per UTC hour of the month: its Wh.
    hours: Mapped[bytes] = mapped_column(LargeBinary)
    missing: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
