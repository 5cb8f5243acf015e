"""The narrow time-series tables: points, latest values and the key dictionary."""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from sensorium.db import Base


class TelemetryKey(Base):
    """Key names stored once; points refer to them by a small integer."""

    __tablename__ = "telemetry_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class Series(Base):
    """One (device, key) time series; points carry its id.

    `device` is the device's MAC as a 48-bit integer (protocol.mac_to_int). Rows are never
    deleted, not even with their device: an id a writer has cached keeps meaning the same
    (device, key), and a re-registered MAC gets its old ids back (with no points left).
    """

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("device", "key_id", name="uq_series_device_key_id"),)

    # INTEGER PRIMARY KEY on SQLite (the rowid), bigint on PostgreSQL.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    device: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[int] = mapped_column(Integer)


class Point(Base):
    """One reading. The primary key makes a re-sent reading overwrite, never duplicate.

    (series, ts) is 16 bytes of key, which PostgreSQL packs: its B-tree splits a leaf right
    after the new item (filling leaves) only for keys up to 16 bytes. The earlier
    (device, key_id, ts), 24 bytes, left every leaf half empty (129 vs ~84 bytes a point).
    `ts` is epoch milliseconds, so SQLite and PostgreSQL store and compare it the same way.
    """

    __tablename__ = "points"
    # PostgreSQL: one partition per week (telemetry.partitions, migration 0005).
    __table_args__ = {"postgresql_partition_by": "RANGE (ts)"}

    series: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    value: Mapped[float] = mapped_column(Float)


class LatestValue(Base):
    __tablename__ = "latest_values"

    device: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)


class Rollup(Base):
    """Per (device, key) and time bucket of one grain (1 min, 1 h, 1 day, UTC-aligned):
    min, max, sum and count of the raw points (avg = sum / count), and the first and last
    point. Kept exact by the batch writer (telemetry.rollups); kept after retention drops
    the raw points, so long-range charts read these and not the points."""

    __tablename__ = "rollups"
    __table_args__ = (
        # Hour and day rollups (and any grain from 15 min up) read without the table: the
        # minute rows, 60 times as many, scatter them over the heap (a year of one key's
        # hours sat on 8,350 pages: 30-90 ms; index-only: 4 ms). A few MB.
        Index(
            "ix_rollups_coarse",
            "device",
            "key_id",
            "grain",
            "bucket",
            postgresql_include=["vmin", "vmax", "vsum", "n"],
            postgresql_where=text("grain >= 900000"),
            sqlite_where=text("grain >= 900000"),
        ),
    )

    device: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Bucket width in ms: 60_000, 3_600_000 or 86_400_000.
    grain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    vmin: Mapped[float] = mapped_column(Float)
    vmax: Mapped[float] = mapped_column(Float)
    vsum: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(BigInteger)
    first_ts: Mapped[int] = mapped_column(BigInteger)
    first_value: Mapped[float] = mapped_column(Float)
    last_ts: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float] = mapped_column(Float)
