"""Series ids: one bigint per (device, key), which points are keyed by (models.Series)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from sqlalchemy import ScalarSelect, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.db import dialect_insert
from sensorium.telemetry.models import LatestValue, Series, TelemetryKey

# (device as int, key id)
Pair = tuple[int, int]


async def ensure(session: AsyncSession, pairs: Collection[Pair]) -> dict[Pair, int]:
    """The ids of these series, creating the missing ones."""
    if not pairs:
        return {}
    rows = [{"device": d, "key_id": k} for d, k in sorted(pairs)]
    await session.execute(
        dialect_insert(session, Series).on_conflict_do_nothing(index_elements=["device", "key_id"]),
        rows,
    )
    return await find(session, pairs)


async def find(session: AsyncSession, pairs: Iterable[Pair]) -> dict[Pair, int]:
    """The ids of those of these series that exist."""
    wanted = sorted(set(pairs))
    out: dict[Pair, int] = {}
    for i in range(0, len(wanted), 500):
        found = await session.execute(
            select(Series.device, Series.key_id, Series.id).where(
                tuple_(Series.device, Series.key_id).in_(wanted[i : i + 500])
            )
        )
        out.update({(d, k): s for d, k, s in found})
    return out


async def of_device(
    session: AsyncSession, device: int, keys: Sequence[str] | None = None
) -> dict[int, tuple[int, str]]:
    """`{series id: (key id, key name)}` of every key the device has sent (each has a
    latest value, which retention keeps), or of those of `keys`."""
    query = (
        select(Series.id, Series.key_id, TelemetryKey.name)
        .join(
            LatestValue,
            (LatestValue.device == Series.device) & (LatestValue.key_id == Series.key_id),
        )
        .join(TelemetryKey, TelemetryKey.id == Series.key_id)
        .where(Series.device == device)
    )
    if keys:
        query = query.where(TelemetryKey.name.in_(keys))
    return {s: (k, name) for s, k, name in await session.execute(query)}


def of(device: int, key_id: int) -> ScalarSelect[int]:
    """The series id as a scalar subquery, for `Point.series == of(device, key_id)`."""
    return (
        select(Series.id).where(Series.device == device, Series.key_id == key_id).scalar_subquery()
    )
