"""Reading stored telemetry: latest values and raw points with cursor pagination."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    SQLColumnExpression,
    delete,
    func,
    literal,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.errors import Invalid
from sensorium.protocol import mac_to_int
from sensorium.telemetry import buckets, rollups, series
from sensorium.telemetry.models import LatestValue, Point, Rollup, Series, TelemetryKey
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


async def latest_many(
    session: AsyncSession, *, device_ids: Sequence[str]
) -> dict[str, dict[str, list[float | int]]]:
    """`{device_id: {key: [ts, value]}}` for many devices in one query (fleet pages)."""
    by_number = {mac_to_int(d): d for d in device_ids}
    out: dict[str, dict[str, list[float | int]]] = {d: {} for d in device_ids}
    if not by_number:
        return out
    rows = await session.execute(
        select(LatestValue.device, TelemetryKey.name, LatestValue.ts, LatestValue.value)
        .join(TelemetryKey, TelemetryKey.id == LatestValue.key_id)
        .where(LatestValue.device.in_(by_number))
        .order_by(TelemetryKey.name)
    )
    for device, name, ts, value in rows:
        out[by_number[device]][name] = [ts, value]
    return out


def encode_cursor(ts: int, series_id: int) -> str:
    return base64.urlsafe_b64encode(f"{ts}:{series_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, series_id = raw.split(":")
        return int(ts), int(series_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Invalid("cursor is not valid", field="cursor", code="invalid_cursor") from None


async def raw_query(
    session: AsyncSession,
    *,
    device_id: str,
    keys: Sequence[str] | None,
    from_ms: int | None,
    to_ms: int | None,
) -> Select[int, int, str, float]:
    """Raw points of a device as (ts, series, key, value), `from_ms` inclusive."""
    found = await series.of_device(session, mac_to_int(device_id), keys)
    query = (
        select(Point.ts, Point.series, TelemetryKey.name, Point.value)
        .join(Series, Series.id == Point.series)
        .join(TelemetryKey, TelemetryKey.id == Series.key_id)
        # The series ids as literals: the primary key (series, ts) then seeks per series.
        .where(Point.series.in_(sorted(found)))
    )
    if from_ms is not None:
        query = query.where(Point.ts >= from_ms)
    if to_ms is not None:
        query = query.where(Point.ts < to_ms)
    return query


async def stream_points(
    session: AsyncSession,
    *,
    device_id: str,
    keys: Sequence[str] | None,
    from_ms: int | None,
    to_ms: int | None,
) -> AsyncIterator[list[tuple[int, str, float]]]:
    """Every raw point in time order, in chunks, through a server-side cursor: memory stays
    flat however long the range."""
    query = (
        await raw_query(session, device_id=device_id, keys=keys, from_ms=from_ms, to_ms=to_ms)
    ).order_by(Point.ts, Point.series)
    result = await session.stream(query.execution_options(yield_per=5000))
    async for chunk in result.partitions():
        yield [(ts, name, value) for ts, _series, name, value in chunk]


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
) -> tuple[list[dict[str, Any]], str | None]:
    """Raw points ordered by time, `from_ms` inclusive and `to_ms` exclusive, as
    PointPublic-shaped dicts, and the cursor of the next page."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be 1..{MAX_PAGE}", field="limit", code="invalid_limit")
    if from_ms is not None and to_ms is not None and from_ms > to_ms:
        raise Invalid("from must not be after to", field="from", code="invalid_range")
    query = await raw_query(session, device_id=device_id, keys=keys, from_ms=from_ms, to_ms=to_ms)
    position = tuple_(Point.ts, Point.series)
    if cursor:
        after = tuple_(*decode_cursor(cursor))
        query = query.where(position > after if order == "asc" else position < after)
    if order == "asc":
        query = query.order_by(Point.ts, Point.series)
    else:
        query = query.order_by(Point.ts.desc(), Point.series.desc())
    rows = (await session.execute(query.limit(limit + 1))).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][0], rows[-1][1])
    # Plain dicts shaped like PointPublic: a page is up to 10,000 of them.
    points: list[dict[str, Any]] = [
        {"key": name, "ts": ts, "value": value} for ts, _series, name, value in rows
    ]
    return points, next_cursor


AGGREGATES = ("avg", "min", "max", "sum", "count", "first", "last", "delta")


# Every UTC offset in use is a multiple of 15 minutes, so 15-minute sums combine exactly into
# local days, weeks and months, whatever the zone and its DST changes.
CALENDAR_GRAIN_MS = 15 * 60_000


async def aggregate(
    session: AsyncSession,
    *,
    device_id: str,
    keys: Sequence[str] | None,
    from_ms: int,
    to_ms: int,
    interval: str,
    aggs: Sequence[str],
    tz: ZoneInfo,
) -> dict[str, list[dict[str, float | int]]]:
    """Per key, one row per non-empty bucket: {"bucket": start_ms, agg: value, ...}.
    Empty buckets are left out (a gap is a gap, not a zero).

    Read from the rollups (plan_sources), except `delta`, which needs every raw point."""
    plan = buckets.buckets(interval, from_ms, to_ms, tz)
    if not plan.starts:
        return {}
    device = mac_to_int(device_id)
    found = await series.of_device(session, device, keys)
    if not found:
        return {}
    if "delta" not in aggs:
        return await _aggregate_rollups(session, device, found, from_ms, to_ms, plan, aggs)
    calendar = interval not in buckets.FIXED_MS
    width = CALENDAR_GRAIN_MS if calendar else buckets.FIXED_MS[interval]
    origin = plan.starts[0]
    grain = _on_grid(Point.ts, origin, width)
    query = (
        select(
            Point.series,
            grain.label("grain"),
            func.min(Point.value),
            func.max(Point.value),
            func.sum(Point.value),
            func.count(),
            func.min(Point.ts),
            func.max(Point.ts),
        )
        .where(
            Point.series.in_(sorted(found)),
            Point.ts >= max(from_ms, origin),
            Point.ts < min(to_ms, plan.end),
        )
        .group_by(Point.series, grain)
        .order_by(Point.series, grain)
    )
    merged: dict[tuple[int, int], _Stats] = {}
    for sid, start, lo, hi, total, count, first_ts, last_ts in await session.execute(query):
        bucket = plan.starts[bisect_right(plan.starts, int(start)) - 1] if calendar else int(start)
        stats = merged.get((sid, bucket))
        if stats is None:
            merged[(sid, bucket)] = _Stats(lo, hi, total, count, first_ts, last_ts)
        else:
            stats.add(lo, hi, total, count, first_ts, last_ts)
    out: dict[str, list[dict[str, float | int]]] = {}
    by_key = sorted(merged.items(), key=lambda item: (found[item[0][0]][0], item[0][1]))
    for (sid, bucket), stats in by_key:
        row: dict[str, float | int] = {"bucket": bucket}
        values = stats.as_dict()
        row.update({a: values[a] for a in aggs if a in values})
        out.setdefault(found[sid][1], []).append(row)
    if {"first", "last"} & set(aggs) and merged:
        edges = {k: (s.first_ts, s.last_ts) for k, s in merged.items()}
        await _first_last(session, edges, found, out, aggs)
    if merged:
        await _deltas(session, plan, from_ms, to_ms, found, out)
    return out


async def _deltas(
    session: AsyncSession,
    plan: buckets.Buckets,
    from_ms: int,
    to_ms: int,
    found: dict[int, tuple[int, str]],
    out: dict[str, list[dict[str, float | int]]],
) -> None:
    """Consumption of a monotonically increasing counter (energy kWh) per bucket: the sum
    of its increases, each counted in the bucket of its later reading. A drop is a reset
    (the device rebooted): the new value is what accrued since. The reading just before
    the range anchors the first increase."""
    start = max(from_ms, plan.starts[0])
    end = min(to_ms, plan.end)
    by_name = {name: sid for sid, (_key_id, name) in found.items()}
    for name, rows in out.items():
        sid = by_name[name]
        previous = await session.scalar(
            select(Point.value)
            .where(Point.series == sid, Point.ts < start)
            .order_by(Point.ts.desc())
            .limit(1)
        )
        delta: dict[int, float] = {}
        result = await session.stream(
            select(Point.ts, Point.value)
            .where(Point.series == sid, Point.ts >= start, Point.ts < end)
            .order_by(Point.ts)
            .execution_options(yield_per=10_000)
        )
        async for ts, value in result:
            if previous is not None:
                bucket = plan.starts[bisect_right(plan.starts, ts) - 1]
                step = value - previous if value >= previous else value
                delta[bucket] = delta.get(bucket, 0.0) + step
            previous = value
        for row in rows:
            row["delta"] = delta.get(int(row["bucket"]), 0.0)


@dataclass(slots=True)
class _Stats:
    lo: float
    hi: float
    total: float
    count: int
    first_ts: int
    last_ts: int

    def add(self, lo: float, hi: float, total: float, count: int, first: int, last: int) -> None:
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.total += total
        self.count += count
        self.first_ts, self.last_ts = min(self.first_ts, first), max(self.last_ts, last)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "min": self.lo,
            "max": self.hi,
            "sum": self.total,
            "count": self.count,
            "avg": self.total / self.count,
        }


async def _first_last(
    session: AsyncSession,
    edges: dict[tuple[int, int], tuple[int, int]],
    found: dict[int, tuple[int, str]],
    out: dict[str, list[dict[str, float | int]]],
    aggs: Sequence[str],
) -> None:
    """The values at each bucket's first and last timestamp (primary-key lookups)."""
    wanted = {(sid, t) for (sid, _b), pair in edges.items() for t in pair}
    values: dict[tuple[int, int], float] = {}
    pairs = sorted(wanted)
    for i in range(0, len(pairs), 500):
        chunk = pairs[i : i + 500]
        result = await session.execute(
            select(Point.series, Point.ts, Point.value).where(
                tuple_(Point.series, Point.ts).in_(chunk)
            )
        )
        values.update({(s, t): v for s, t, v in result})
    by_name = {name: sid for sid, (_key_id, name) in found.items()}
    for name, rows in out.items():
        sid = by_name[name]
        for row in rows:
            first_ts, last_ts = edges[(sid, int(row["bucket"]))]
            if "first" in aggs:
                row["first"] = values[(sid, first_ts)]
            if "last" in aggs:
                row["last"] = values[(sid, last_ts)]


Source = tuple[int | None, int, int]  # (rollup grain, or None for raw points; from; to)


def plan_sources(start: int, end: int, boundaries: Sequence[int]) -> list[Source]:
    """Cover [start, end) with the coarsest rollups whose buckets each fall inside one of
    the output buckets (their grain divides every boundary), finer ones towards the
    edges, and raw points for what is left (under a minute at either end)."""
    usable = [g for g in reversed(rollups.GRAINS) if all(b % g == 0 for b in boundaries)]

    def cover(a: int, b: int, grains: Sequence[int]) -> list[Source]:
        if a >= b:
            return []
        if not grains:
            return [(None, a, b)]
        g = grains[0]
        inner_a, inner_b = -(-a // g) * g, b // g * g
        if inner_a >= inner_b:
            return cover(a, b, grains[1:])
        return [
            *cover(a, inner_a, grains[1:]),
            (g, inner_a, inner_b),
            *cover(inner_b, b, grains[1:]),
        ]

    return cover(start, end, usable)


async def _aggregate_rollups(
    session: AsyncSession,
    device: int,
    found: dict[int, tuple[int, str]],
    from_ms: int,
    to_ms: int,
    plan: buckets.Buckets,
    aggs: Sequence[str],
) -> dict[str, list[dict[str, float | int]]]:
    """`found` is the wanted series ({series id: (key id, name)}); rollups are keyed by
    device and key id."""
    names = dict(found.values())
    start, end = max(from_ms, plan.starts[0]), min(to_ms, plan.end)
    sources = plan_sources(start, end, [*plan.starts, plan.end])
    if plan.width is not None and not {"first", "last"} & set(aggs):
        summaries = await _merged_in_sql(session, device, found, sources, plan)
    else:
        summaries = await _merged_here(session, device, found, sources, plan)
    # Where each aggregate is in a Summary (avg: None, computed).
    pick = [(a, _SUMMARY_INDEX[a]) for a in aggs if a in _SUMMARY_INDEX]
    out: dict[str, list[dict[str, float | int]]] = {}
    for summary in summaries:
        row: dict[str, float | int] = {"bucket": summary[1]}
        for a, i in pick:
            row[a] = summary[4] / summary[5] if i is None else summary[i]
        out.setdefault(names[summary[0]], []).append(row)
    return out


# (key id, bucket start, min, max, sum, count, first value, last value), by key then bucket
Summary = tuple[int, int, float, float, float, int, float, float]
_SUMMARY_INDEX = {"min": 2, "max": 3, "sum": 4, "count": 5, "avg": None, "first": 6, "last": 7}


def _on_grid(at: SQLColumnExpression[int], origin: int, width: int) -> ColumnElement[int]:
    """The start of the `width`-wide bucket of a grid from `origin` that holds `at`
    (integer arithmetic, so SQLite and PostgreSQL bucket identically)."""
    start, step = literal(origin, BigInteger), literal(width, BigInteger)
    return start + (at - start) // step * step


def _rollups_in(
    device: int, found: dict[int, tuple[int, str]], grain: int, a: int, b: int
) -> tuple[ColumnElement[bool], ...]:
    """The rollups of these series of the device, of one grain, with buckets in [a, b)."""
    return (
        Rollup.device == device,
        Rollup.key_id.in_(sorted({key_id for key_id, _name in found.values()})),
        Rollup.grain == grain,
        Rollup.bucket >= a,
        Rollup.bucket < b,
    )


async def _merged_in_sql(
    session: AsyncSession,
    device: int,
    found: dict[int, tuple[int, str]],
    sources: list[Source],
    plan: buckets.Buckets,
) -> list[Summary]:
    """Fixed-width buckets (a regular grid from plan.starts[0]): every source in one
    statement, merged into the output buckets by the database. A year of 6 h buckets
    reads 8,760 hourly rollups (an index-only scan) and returns 1,461 rows. first/last
    are not asked for on this path: zeros."""
    assert plan.width is not None
    origin, width = plan.starts[0], plan.width
    parts: list[Select[int, int, float, float, float, int]] = []
    for grain, a, b in sources:
        if grain is None:
            parts.append(
                select(
                    Series.key_id.label("key_id"),
                    _on_grid(Point.ts, origin, width).label("slot"),
                    Point.value.label("lo"),
                    Point.value.label("hi"),
                    Point.value.label("total"),
                    literal(1, BigInteger).label("n"),
                )
                .join(Series, Series.id == Point.series)
                .where(Point.series.in_(sorted(found)), Point.ts >= a, Point.ts < b)
            )
        else:
            parts.append(
                select(
                    Rollup.key_id, _on_grid(Rollup.bucket, origin, width),
                    Rollup.vmin, Rollup.vmax, Rollup.vsum, Rollup.n,
                ).where(*_rollups_in(device, found, grain, a, b))
            )  # fmt: skip
    if not parts:
        return []
    u = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery()
    c = list(u.c)
    query = (
        select(c[0], c[1], func.min(c[2]), func.max(c[3]), func.sum(c[4]), func.sum(c[5]))
        .group_by(c[0], c[1])
        .order_by(c[0], c[1])
    )
    # Core, not the ORM: its per-row loading costs more than the query on a year of data.
    connection = await session.connection()
    return [
        (key_id, int(slot), lo, hi, total, int(n), 0.0, 0.0)
        for key_id, slot, lo, hi, total, n in await connection.execute(query)
    ]


async def _merged_here(
    session: AsyncSession,
    device: int,
    found: dict[int, tuple[int, str]],
    sources: list[Source],
    plan: buckets.Buckets,
) -> list[Summary]:
    """Calendar buckets, or first/last asked for: each source read, merged here."""
    merged: dict[tuple[int, int], rollups.Stats] = {}

    def merge(key_id: int, at: int, stats: rollups.Stats) -> None:
        slot = (key_id, plan.starts[bisect_right(plan.starts, at) - 1])
        current = merged.get(slot)
        if current is None:
            merged[slot] = stats
        else:
            current.add(stats)

    connection = await session.connection()
    for grain, a, b in sources:
        if grain is None:
            raw = select(Point.series, Point.ts, Point.value).where(
                Point.series.in_(sorted(found)), Point.ts >= a, Point.ts < b
            )
            for sid, ts, value in await connection.execute(raw):
                merge(found[sid][0], ts, rollups.Stats.of(ts, value))
            continue
        query = select(
            Rollup.key_id, Rollup.bucket, Rollup.vmin, Rollup.vmax, Rollup.vsum, Rollup.n,
            Rollup.first_ts, Rollup.first_value, Rollup.last_ts, Rollup.last_value,
        ).where(*_rollups_in(device, found, grain, a, b))  # fmt: skip
        for key_id, bucket, *summary in await connection.execute(query):
            merge(key_id, bucket, rollups.Stats(*summary))
    return [
        (key_id, bucket, st.vmin, st.vmax, st.vsum, st.n, st.first_value, st.last_value)
        for (key_id, bucket), st in sorted(merged.items())
    ]


async def apply_rollup_retention(
    sessions: async_sessionmaker[AsyncSession], *, older_than_ms: int
) -> int:
    """Delete rollup buckets that ended before the cutoff."""
    async with sessions() as session, session.begin():
        result = await session.execute(
            delete(Rollup).where(Rollup.bucket + Rollup.grain <= older_than_ms)
        )
        return int(getattr(result, "rowcount", 0) or 0)


RETENTION_SLICE_MS = 6 * 3_600_000


async def apply_retention(sessions: async_sessionmaker[AsyncSession], *, older_than_ms: int) -> int:
    """Delete raw points older than the cutoff, a time slice per transaction so no single
    transaction grows with the backlog; returns how many were deleted."""
    async with sessions() as session:
        oldest = await session.scalar(select(func.min(Point.ts)))
    deleted = 0
    start = oldest
    while start is not None and start < older_than_ms:
        end = min(start + RETENTION_SLICE_MS, older_than_ms)
        async with sessions() as session, session.begin():
            result = await session.execute(delete(Point).where(Point.ts < end))
            deleted += int(getattr(result, "rowcount", 0) or 0)
        start = end
    return deleted
