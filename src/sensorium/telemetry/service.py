"""Reading stored telemetry: latest values and raw points with cursor pagination."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.errors import Invalid
from sensorium.protocol import mac_to_int
from sensorium.telemetry.models import LatestValue, Point, TelemetryKey
from sensorium.telemetry.schemas import Order, PointPublic

MAX_PAGE = 10_000


async def latest(session: AsyncSession, *, device_id: str) -> dict[str, PointPublic]:
    rows = await session.execute(
        select(TelemetryKey.name, LatestValue.ts, LatestValue.value)
        .join(TelemetryKey, TelemetryKey.id == LatestValue.key_id)
        .where(LatestValue.device == mac_to_int(device_id))
        .order_by(TelemetryKey.name)
    )
    return {name: PointPublic(key=name, ts=ts, value=value) for name, ts, value in rows}


def encode_cursor(ts: int, key_id: int) -> str:
    return base64.urlsafe_b64encode(f"{ts}:{key_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, key_id = raw.split(":")
        return int(ts), int(key_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Invalid("cursor is not valid", field="cursor", code="invalid_cursor") from None


async def query_points(
    session: AsyncSession,
    *,
    device_id: str,
    keys: Sequence[str] | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    limit: int = 1000,
    order: Order = "asc",
    cursor: str | None = None,
) -> tuple[list[PointPublic], str | None]:
    """Raw points ordered by (ts, key), `from_ms` inclusive and `to_ms` exclusive."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1..{MAX_PAGE}", field="limit", code="invalid_limit")
    if from_ms is not None and to_ms is not None and from_ms > to_ms:
        raise Invalid("from must not be after to", field="from", code="invalid_range")
    query = (
        select(Point.ts, Point.key_id, TelemetryKey.name, Point.value)
        .join(TelemetryKey, TelemetryKey.id == Point.key_id)
        .where(Point.device == mac_to_int(device_id))
    )
    if keys:
        query = query.where(TelemetryKey.name.in_(keys))
    if from_ms is not None:
        query = query.where(Point.ts >= from_ms)
    if to_ms is not None:
        query = query.where(Point.ts < to_ms)
    position = tuple_(Point.ts, Point.key_id)
    if cursor:
        after = tuple_(*decode_cursor(cursor))
        query = query.where(position > after if order == "asc" else position < after)
    if order == "asc":
        query = query.order_by(Point.ts, Point.key_id)
    else:
        query = query.order_by(Point.ts.desc(), Point.key_id.desc())
    rows = list(await session.execute(query.limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][0], rows[-1][1])
    points = [PointPublic(key=name, ts=ts, value=value) for ts, _key_id, name, value in rows]
    return points, next_cursor
