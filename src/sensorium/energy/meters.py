"""One meter's energy over time slots, from its `energy` counter (kWh) when it has one in
the range, else from its `power` readings (W) integrated trapezoidally.

Each whole UTC hour is computed once from the raw points and kept in `energy_hours`,
checked against the hour's rollup on every use; only hours that changed, hours cut by a
slot edge (a bucket edge, a tariff window edge, the ends of the range) and the stretches
between hours are read from the raw points or from the rollups' first/last readings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.db import dialect_insert
from sensorium.energy.integrate import HOUR_MS, Integrator, Slots, Stretch, estimate_interior
from sensorium.energy.models import EnergyHour
from sensorium.protocol import mac_to_int
from sensorium.telemetry.models import Point, Rollup, TelemetryKey

ENERGY_KEY = "energy"
POWER_KEY = "power"
MINUTE_MS = 60_000


@dataclass(slots=True)
class MeterEnergy:
    device_id: str
    source: str | None  # "energy", "power", or None without data
    slots: Slots
    missing: list[Stretch]
    estimated: bool


@dataclass(slots=True)
class CacheEntries:
    """Hours computed during a request, to store afterwards (in their own transaction, so
    a read request never has to upgrade to a writer mid-way)."""

    rows: list[dict[str, Any]] = field(default_factory=list)


async def key_ids(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(TelemetryKey.name, TelemetryKey.id).where(
            TelemetryKey.name.in_([ENERGY_KEY, POWER_KEY])
        )
    )
    return dict(rows.all())


async def _has_data(session: AsyncSession, device: int, key_id: int, start: int, end: int) -> bool:
    found = await session.scalar(
        select(Rollup.bucket)
        .where(
            Rollup.device == device,
            Rollup.key_id == key_id,
            Rollup.grain == HOUR_MS,
            Rollup.bucket >= start - start % HOUR_MS,
            Rollup.bucket < end,
        )
        .limit(1)
    )
    return found is not None


async def _reading_before(
    session: AsyncSession, device: int, key_id: int, ts: int
) -> tuple[int, float] | None:
    """The last reading before `ts`: a raw point, or the last one a rollup remembers
    (after retention dropped the raw points)."""
    candidates: list[tuple[int, float]] = []
    for query in (
        select(Point.ts, Point.value)
        .where(Point.device == device, Point.key_id == key_id, Point.ts < ts)
        .order_by(Point.ts.desc())
        .limit(1),
        select(Rollup.last_ts, Rollup.last_value)
        .where(
            Rollup.device == device,
            Rollup.key_id == key_id,
            Rollup.grain == MINUTE_MS,
            Rollup.bucket < ts,
            Rollup.last_ts < ts,
        )
        .order_by(Rollup.bucket.desc())
        .limit(1),
    ):
        row = (await session.execute(query)).first()
        if row is not None:
            candidates.append((int(row[0]), float(row[1])))
    return max(candidates) if candidates else None


async def _reading_from(
    session: AsyncSession, device: int, key_id: int, ts: int
) -> tuple[int, float] | None:
    row = (
        await session.execute(
            select(Point.ts, Point.value)
            .where(Point.device == device, Point.key_id == key_id, Point.ts >= ts)
            .order_by(Point.ts)
            .limit(1)
        )
    ).first()
    if row is None:
        row = (
            await session.execute(
                select(Rollup.first_ts, Rollup.first_value)
                .where(
                    Rollup.device == device,
                    Rollup.key_id == key_id,
                    Rollup.grain == MINUTE_MS,
                    Rollup.bucket >= ts - ts % MINUTE_MS,
                    Rollup.first_ts >= ts,
                )
                .order_by(Rollup.bucket)
                .limit(1)
            )
        ).first()
    return (int(row[0]), float(row[1])) if row is not None else None


def _matches(entry: EnergyHour, rollup: Rollup, max_gap_ms: int) -> bool:
    """Whether a cached hour was computed from exactly the readings the rollup describes."""
    return (
        entry.max_gap_ms == max_gap_ms
        and entry.n == rollup.n
        and entry.first_ts == rollup.first_ts
        and entry.last_ts == rollup.last_ts
        and entry.first_value == rollup.first_value
        and entry.last_value == rollup.last_value
        and entry.vmin == rollup.vmin
        and entry.vmax == rollup.vmax
        and math.isclose(entry.vsum, rollup.vsum, rel_tol=1e-9, abs_tol=1e-9)
    )


def _cache_row(
    device: int,
    key_id: int,
    rollup: Rollup,
    max_gap_ms: int,
    wh: float,
    missing: Sequence[Stretch],
    estimated: bool,
) -> dict[str, Any]:
    return {
        "device": device,
        "key_id": key_id,
        "hour": rollup.bucket,
        "max_gap_ms": max_gap_ms,
        "n": rollup.n,
        "vsum": rollup.vsum,
        "vmin": rollup.vmin,
        "vmax": rollup.vmax,
        "first_ts": rollup.first_ts,
        "first_value": rollup.first_value,
        "last_ts": rollup.last_ts,
        "last_value": rollup.last_value,
        "wh": wh,
        "missing": [list(m) for m in missing],
        "estimated": estimated,
    }


async def meter_energy(
    session: AsyncSession,
    *,
    device_id: str,
    cuts: Sequence[int],
    max_gap_ms: int,
    now_ms: int,
    cache: CacheEntries | None = None,
) -> MeterEnergy:
    """The device's energy in each slot between consecutive `cuts` (epoch ms, sorted)."""
    slots = Slots.over(cuts)
    start, end = slots.start, slots.end
    device = mac_to_int(device_id)
    keys = await key_ids(session)
    source: str | None = None
    for name in (ENERGY_KEY, POWER_KEY):
        if name in keys and await _has_data(session, device, keys[name], start, end):
            source = name
            break
    integrator = Integrator(slots, counter=source == ENERGY_KEY, max_gap_ms=max_gap_ms)
    until = min(end, now_ms)
    if source is None:
        integrator.miss(start, until)
        return MeterEnergy(device_id, None, slots, integrator.missing, False)
    await _integrate(session, integrator, device, keys[source], until, cache)
    return MeterEnergy(device_id, source, slots, integrator.missing, integrator.estimated)


async def _integrate(
    session: AsyncSession,
    integrator: Integrator,
    device: int,
    key_id: int,
    until: int,
    cache: CacheEntries | None,
) -> None:
    slots, max_gap = integrator.slots, integrator.max_gap_ms
    start, end = slots.start, slots.end
    first_hour = start - start % HOUR_MS
    hours = list(
        await session.scalars(
            select(Rollup)
            .where(
                Rollup.device == device,
                Rollup.key_id == key_id,
                Rollup.grain == HOUR_MS,
                Rollup.bucket >= first_hour,
                Rollup.bucket < end,
            )
            .order_by(Rollup.bucket)
        )
    )
    cached = {
        e.hour: e
        for e in await session.scalars(
            select(EnergyHour).where(
                EnergyHour.device == device,
                EnergyHour.key_id == key_id,
                EnergyHour.hour >= first_hour,
                EnergyHour.hour < end,
            )
        )
    }
    prev = await _reading_before(session, device, key_id, start)
    state = _Walk(integrator, prev, start)

    def whole(r: Rollup) -> bool:
        return r.bucket >= start and slots.inside(r.bucket, r.bucket + HOUR_MS)

    i = 0
    while i < len(hours):
        r = hours[i]
        entry = cached.get(r.bucket)
        if whole(r) and entry is not None and _matches(entry, r, max_gap):
            state.block(
                (r.first_ts, r.first_value),
                (r.last_ts, r.last_value),
                entry.wh,
                [(a, b) for a, b in entry.missing],
                entry.estimated,
            )
            i += 1
            continue
        # A run of hours that need their raw points, read in one query.
        j = i
        while j < len(hours):
            e = cached.get(hours[j].bucket)
            if whole(hours[j]) and e is not None and _matches(e, hours[j], max_gap):
                break
            j += 1
        run = hours[i:j]
        by_hour = {h.bucket: h for h in run}
        result = await session.stream(
            select(Point.ts, Point.value)
            .where(
                Point.device == device,
                Point.key_id == key_id,
                Point.ts >= run[0].bucket,
                Point.ts < run[-1].bucket + HOUR_MS,
            )
            .order_by(Point.ts)
            .execution_options(yield_per=10_000)
        )
        current: int | None = None
        points: list[tuple[int, float]] = []
        async for ts, value in result:
            hour = ts - ts % HOUR_MS
            if hour != current:
                if current is not None and current in by_hour:
                    state.hour(
                        by_hour[current], points, whole(by_hour[current]), device, key_id, cache
                    )
                current, points = hour, []
            points.append((ts, value))
        if current is not None and current in by_hour:
            state.hour(by_hour[current], points, whole(by_hour[current]), device, key_id, cache)
        # Hours whose raw points are all gone (retention): their rollups stand in.
        for h in run:
            if h.bucket not in state.seen:
                state.hour(h, [], whole(h), device, key_id, cache)
        state.seen.clear()
        i = j
    following = await _reading_from(session, device, key_id, end)
    state.finish(following, until)


@dataclass(slots=True)
class _Walk:
    """Walks a meter's readings in time order, bridging each to the next."""

    integrator: Integrator
    prev: tuple[int, float] | None
    start: int
    seen: set[int] = field(default_factory=set)

    def to(self, ts: int, value: float) -> None:
        if self.prev is None:
            if ts - self.start > self.integrator.max_gap_ms:
                self.integrator.miss(self.start, ts)
        elif ts > self.prev[0]:
            self.integrator.bridge(self.prev[0], self.prev[1], ts, value)
        if self.prev is None or ts > self.prev[0]:
            self.prev = (ts, value)

    def block(
        self,
        first: tuple[int, float],
        last: tuple[int, float],
        wh: float,
        missing: Sequence[Stretch],
        estimated: bool,
    ) -> None:
        """An hour known as a total between its first and last reading."""
        self.to(*first)
        self.integrator.block(first[0], last[0], wh, missing)
        self.integrator.estimated |= estimated
        self.prev = last

    def hour(
        self,
        r: Rollup,
        points: list[tuple[int, float]],
        whole: bool,
        device: int,
        key_id: int,
        cache: CacheEntries | None,
    ) -> None:
        """One hour from its raw points, or from its rollup when they are gone."""
        self.seen.add(r.bucket)
        integrator = self.integrator
        if len(points) < r.n:
            wh, missing = estimate_interior(
                counter=integrator.counter,
                max_gap_ms=integrator.max_gap_ms,
                n=r.n,
                vsum=r.vsum,
                vmin=r.vmin,
                vmax=r.vmax,
                first=(r.first_ts, r.first_value),
                last=(r.last_ts, r.last_value),
            )
            self.block((r.first_ts, r.first_value), (r.last_ts, r.last_value), wh, missing, True)
            if whole and cache is not None:
                cache.rows.append(
                    _cache_row(device, key_id, r, integrator.max_gap_ms, wh, missing, True)
                )
            return
        if not whole:
            for ts, value in points:
                self.to(ts, value)
            return
        wh, missing = 0.0, []
        for (t1, v1), (t2, v2) in itertools.pairwise(points):
            step, gap = integrator.pair(t1, v1, t2, v2)
            wh += step
            if gap is not None:
                missing.append(gap)
        self.block(points[0], points[-1], wh, missing, False)
        if cache is not None and len(points) == r.n:
            cache.rows.append(
                _cache_row(device, key_id, r, integrator.max_gap_ms, wh, missing, False)
            )

    def finish(self, following: tuple[int, float] | None, until: int) -> None:
        if self.prev is None:
            self.integrator.miss(self.start, until)
            return
        if following is not None:
            self.to(*following)
        elif until - self.prev[0] > self.integrator.max_gap_ms:
            self.integrator.miss(self.prev[0], until)


async def save_cache(session: AsyncSession, entries: CacheEntries) -> None:
    """Store the hours computed by a request (upserts: a concurrent request may have
    computed the same hour)."""
    if not entries.rows:
        return
    stmt = dialect_insert(session, EnergyHour)
    keys = {"device", "key_id", "hour"}
    columns = [c for c in entries.rows[0] if c not in keys]
    upsert = stmt.on_conflict_do_update(
        index_elements=sorted(keys), set_={c: stmt.excluded[c] for c in columns}
    )
    unique = {(r["device"], r["key_id"], r["hour"]): r for r in entries.rows}
    rows = [unique[k] for k in sorted(unique)]
    for i in range(0, len(rows), 500):
        await session.execute(upsert, rows[i : i + 500])
