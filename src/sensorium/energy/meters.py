"""One meter's energy over time slots, from its `energy` counter (kWh) when it has one in
the range, else from its `power` readings (W) integrated trapezoidally.

Each whole UTC hour is computed once from the raw points and kept in `energy_hours`,
checked against the hour's rollup on every use; only hours that changed, hours cut by a
slot edge (a bucket edge, a tariff window edge, the ends of the range) and the stretches
between hours are read from the raw points or from the rollups' first/last readings.
Once every hour of a UTC day is known, the day's 24 hourly figures are kept in
`energy_days` (checked against the day's rollup), so a year is 365 rows per meter: whole
days whose slots are exactly their 24 hours are read from there.
"""

from __future__ import annotations

import functools
import itertools
import json
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.db import dialect_insert
from sensorium.energy.integrate import (
    HOUR_MS,
    W_MS_PER_WH,
    Integrator,
    Slots,
    Stretch,
    Wh,
    estimate_interior,
)
from sensorium.energy.models import EnergyDay, EnergyHour, EnergyMonth
from sensorium.protocol import mac_to_int
from sensorium.telemetry.models import Point, Rollup, Series, TelemetryKey
from sensorium.telemetry.series import of as series_of

ENERGY_KEY = "energy"
POWER_KEY = "power"
MINUTE_MS = 60_000
DAY_MS = 86_400_000
# The stored hourly Wh of `energy_days` (24) and `energy_months` (672-744).
HOUR_WH = np.dtype("<f8")
# Runs of at least this many whole hours are summed by the database, not read point by point.
BULK_HOURS = 3
# Hours cut by a slot edge are read point by point. Up to this many (meter x hour) are read
# for all meters in one statement, not one statement per meter: a summary's last, partial
# hour, for instance.
CUT_HOURS_AT_ONCE = 96


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
    days: list[dict[str, Any]] = field(default_factory=list)
    months: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows or self.days or self.months)


async def _rows(session: AsyncSession, statement: Any, params: Any = None) -> Any:
    """Run a statement of plain columns on the session's connection: Core rows, without
    the ORM's per-row loading (which cost more than the statement for a year of days)."""
    connection = await session.connection()
    return (await connection.execute(statement, params)).all()


# Statements run by `_driver_rows`: id -> (the statement, compiled).
_compiled: dict[int, tuple[Any, Any]] = {}


async def _driver_rows(session: AsyncSession, statement: Any, params: dict[str, Any]) -> Any:
    """PostgreSQL: `_rows` sent by asyncpg itself, as plain records (unpack them or index
    them; no attribute access). For statements of many rows: turning each into a
    SQLAlchemy Row cost more than the database took to find them (3,600 raw points of a
    month's cut hours). `statement` is compiled once: it must be one of the statements
    built once and kept, with no expanding parameters."""
    connection = await session.connection()
    known = _compiled.get(id(statement))
    if known is None or known[0] is not statement:
        known = (statement, statement.compile(dialect=connection.dialect))
        _compiled[id(statement)] = known
    compiled = known[1]
    values = compiled.construct_params(params)  # with the statement's own literals
    processors = compiled._bind_processors
    args = [
        processors[name](values[name]) if name in processors else values[name]
        for name in compiled.positiontup
    ]
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    return await driver.fetch(compiled.string, *args)


async def _is_pg(session: AsyncSession) -> bool:
    return (await session.connection()).dialect.name == "postgresql"


async def custom_plans(session: AsyncSession) -> None:
    """On PostgreSQL, plan this transaction's statements for their parameters every time.

    Statements are prepared once per connection; from the 6th execution on PostgreSQL
    considers a generic plan, and building one for a union of 40 look-ups on the
    partitioned `points` table (every partition, as nothing can be pruned without the
    values) took 75 ms, in the middle of some user's request. Custom plans prune to the
    partitions the values name. Once per transaction (`SET LOCAL` ends with it)."""
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        return
    transaction = session.get_transaction()
    if session.info.get("energy_custom_plans") is transaction:
        return
    await connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
    session.info["energy_custom_plans"] = transaction


async def key_ids(session: AsyncSession) -> dict[str, int]:
    """The ids of the `energy` and `power` keys (remembered for the session once both
    exist: a key's id never changes; while one is missing, for the transaction: a summary
    asks four times, and a site of power meters has no `energy` key at all)."""
    known = session.info.get("energy_key_ids")
    transaction = session.get_transaction()
    if isinstance(known, tuple) and (len(known[1]) == 2 or known[0] is transaction):
        return dict(known[1])
    rows = await session.execute(
        select(TelemetryKey.name, TelemetryKey.id).where(
            TelemetryKey.name.in_([ENERGY_KEY, POWER_KEY])
        )
    )
    found = dict(rows.all())
    remember_key_ids(session, found)
    return dict(found)


def remember_key_ids(session: AsyncSession, found: dict[str, int]) -> None:
    """`key_ids` answers `found` for the session's transaction (and for good once both
    keys exist)."""
    session.info["energy_key_ids"] = (session.get_transaction(), dict(found))


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
    (energy,) = await meters_energy(
        session, device_ids=[device_id], cuts=cuts, max_gap_ms=max_gap_ms, now_ms=now_ms,
        cache=cache,
    )  # fmt: skip
    return energy


async def meters_energy(
    session: AsyncSession,
    *,
    device_ids: Sequence[str],
    cuts: Sequence[int],
    max_gap_ms: int,
    now_ms: int,
    cache: CacheEntries | None = None,
) -> list[MeterEnergy]:
    """Each device's energy in each slot between consecutive `cuts`: what every meter
    needs is read for all of them at once (a handful of statements, not a dozen per
    meter); only hours that need their raw points are read per meter."""
    template = Slots.over(cuts)
    start, end = template.start, template.end
    until = min(end, now_ms)
    await custom_plans(session)
    keys = await key_ids(session)
    devices = [mac_to_int(d) for d in device_ids]
    sources = await _sources(session, devices, keys, start, end)
    active = [(d, keys[name]) for d in devices if (name := sources.get(d)) is not None]
    aligned = _aligned_days(template)
    month_spans = _aligned_months(aligned)
    months = await _month_rows(session, active, month_spans, max_gap_ms)
    day_range = [(aligned[0], aligned[-1] + DAY_MS)] if aligned else []
    day_spans = {
        d: _spans(day_range, [(r.bucket, r.month_end) for r in months.get(d, [])])
        for d, _k in active
    }
    days = await _day_rows(session, active, day_spans, max_gap_ms)
    wanted = set(aligned)
    covered = {
        d: [r for r in days.get(d, []) if r.hours is not None and r.bucket in wanted]
        for d, _k in active
    }
    first_hour = start - start % HOUR_MS
    spans = {
        d: _spans(
            [(first_hour, end)],
            sorted(
                [(r.bucket, r.bucket + DAY_MS) for r in covered[d]]
                + [(r.bucket, r.month_end) for r in months.get(d, [])]
            ),
        )
        for d, _k in active
    }
    hours, cached = await _hour_rows(session, active, spans, max_gap_ms)
    cut_points = await _cut_hour_points(session, active, hours, template)
    before = await _readings_before(session, active, start)
    after = await _readings_from(session, active, end)
    out: list[MeterEnergy] = []
    lengths = template.slot_lengths()
    for device_id, device in zip(device_ids, devices, strict=True):
        slots = Slots(template.cuts, np.zeros(len(template.wh)), [0] * len(template.wh), lengths)
        source = sources.get(device)
        integrator = Integrator(slots, counter=source == ENERGY_KEY, max_gap_ms=max_gap_ms)
        if source is None:
            integrator.miss(start, until)
            out.append(MeterEnergy(device_id, None, slots, integrator.missing, False))
            continue
        state = _Walk(integrator, before.get(device), start)
        await _integrate(
            session, state, device, keys[source], hours.get(device, []),
            cached.get(device, {}), covered[device], cache, cut_points.get(device),
            months.get(device, []),
        )  # fmt: skip
        state.finish(after.get(device), until)
        if cache is not None:
            _new_days(state, hours.get(device, []), days.get(device, []), aligned, device,
                      keys[source], cache)  # fmt: skip
            _new_months(state.integrator, days.get(device, []), months.get(device, []),
                        month_spans, device, keys[source], cache)  # fmt: skip
        out.append(MeterEnergy(device_id, source, slots, integrator.missing, integrator.estimated))
    return out


def _sources_queries(device: Any, key_id: Any) -> list[Any]:
    # Whether the key has an hour rollup in [lo, hi).
    return [
        select(Rollup.bucket).where(
            Rollup.device == device,
            Rollup.key_id == key_id,
            Rollup.grain == HOUR_MS,
            Rollup.bucket >= bindparam("lo", type_=BigInteger),
            Rollup.bucket < bindparam("hi", type_=BigInteger),
        )
    ]


def _before_queries(device: Any, key_id: Any) -> list[Any]:
    # The last reading of the last minute rollup before ts (the raw points of the minute of
    # ts are read for all meters at once: `_edge_points`).
    ts = bindparam("ts", type_=BigInteger)
    return [
        select(Rollup.last_ts, Rollup.last_value)
        .where(
            Rollup.device == device,
            Rollup.key_id == key_id,
            Rollup.grain == MINUTE_MS,
            Rollup.bucket < ts,
            Rollup.last_ts < ts,
        )
        .order_by(Rollup.bucket.desc()),
    ]


def _from_queries(device: Any, key_id: Any) -> list[Any]:
    # The first reading at or after ts of the first minute rollup from the minute of ts.
    ts, minute = bindparam("ts", type_=BigInteger), bindparam("minute", type_=BigInteger)
    return [
        select(Rollup.first_ts, Rollup.first_value)
        .where(
            Rollup.device == device,
            Rollup.key_id == key_id,
            Rollup.grain == MINUTE_MS,
            Rollup.bucket >= minute,
            Rollup.first_ts >= ts,
        )
        .order_by(Rollup.bucket),
    ]


@functools.lru_cache(maxsize=64)
def _edge_points_statement(branches: int, last: bool, pg: bool) -> Any:
    """Per device, its first (or `last`) raw point in a range of less than a minute, for
    all meters in one statement: it plans on the one partition the range falls in. (As
    one look-up per meter in a union of 20, PostgreSQL took 2-7 ms to plan them, every
    time: each look-up had every partition to prune.)"""
    order = Point.ts.desc() if last else Point.ts
    inner = (
        select(
            Series.device.label("device"),
            Point.ts.label("ts"),
            Point.value.label("value"),
            func.row_number().over(partition_by=Series.device, order_by=order).label("k"),
        )
        .join(Series, Series.id == Point.series)
        .where(_within(branches, Series.device, Series.key_id, Point.ts, pg))
        .subquery()
    )
    return select(inner.c.device, inner.c.ts, inner.c.value).where(inner.c.k == 1)


async def _edge_points(
    session: AsyncSession, active: Sequence[tuple[int, int]], a: int, b: int, *, last: bool
) -> dict[int, tuple[int, float]]:
    """Per device, its first (`last`: last) raw point in [a, b)."""
    if a >= b or not active:
        return {}
    params = _branches([(active, [(a, b)])])
    statement = _edge_points_statement(_branch_count(params), last, await _is_pg(session))
    rows = await _rows(session, statement, params)
    return {int(d): (int(t), float(v)) for d, t, v in rows}


_PAIR_QUERIES: dict[str, Callable[[Any, Any], list[Any]]] = {
    "sources": _sources_queries,
    "before": _before_queries,
    "from": _from_queries,
}


@functools.lru_cache(maxsize=8)
def _queries_per_pair(kind: str) -> int:
    return len(_PAIR_QUERIES[kind](0, 0))


@functools.lru_cache(maxsize=256)
def _firsts_statement(kind: str, pairs: int) -> Any:
    """The first row of each of `kind`'s queries for `pairs` (device, key) pairs, in one
    statement with bound parameters d0, k0, d1, ...: built once per kind and count, since
    building 40 subqueries took longer than the database took to run them."""
    parts: list[Any] = []
    for i in range(pairs):
        device, key_id = bindparam(f"d{i}", type_=BigInteger), bindparam(f"k{i}", type_=Integer)
        for query in _PAIR_QUERIES[kind](device, key_id):
            sub = query.limit(1).subquery()
            parts.append(select(literal(len(parts)).label("q"), *sub.c))
    return union_all(*parts)


@functools.lru_cache(maxsize=16)
def _lateral_firsts_statement(kind: str) -> Any:
    """PostgreSQL: the first row of `kind`'s query for each (device, key) pair of the
    arrays `devices` and `keys`, as a LATERAL look-up per pair (q: the pair's place, from
    1). One statement for any number of pairs: the union of 40 look-ups took 1.5-2 ms to
    plan on every execution (custom plans), this one 0.2 ms."""
    pairs = (
        func.unnest(
            bindparam("devices", type_=ARRAY(BigInteger)), bindparam("keys", type_=ARRAY(Integer))
        )
        .table_valued("device", "key_id", with_ordinality="q")
        .render_derived(name="pairs")
    )
    (query,) = _PAIR_QUERIES[kind](pairs.c.device, pairs.c.key_id)
    found = query.limit(1).lateral("found")
    return select(pairs.c.q, *found.c).select_from(pairs).join(found, true())


async def _first_of_each(
    session: AsyncSession, kind: str, pairs: Sequence[tuple[int, int]], **shared: int
) -> list[Any]:
    """The first row of each of `kind`'s queries for each (device, key) pair, in order
    (None when a query has none), in one statement."""
    if not pairs:
        return []
    found: list[Any] = [None] * (len(pairs) * _queries_per_pair(kind))
    if await _is_pg(session):
        params: dict[str, Any] = {
            **shared, "devices": [d for d, _k in pairs], "keys": [k for _d, k in pairs]
        }  # fmt: skip
        for row in await _rows(session, _lateral_firsts_statement(kind), params):
            found[row[0] - 1] = row[1:]
        return found
    params = dict(shared)
    for i, (device, key_id) in enumerate(pairs):
        params[f"d{i}"], params[f"k{i}"] = device, key_id
    for row in await _rows(session, _firsts_statement(kind, len(pairs)), params):
        found[row[0]] = row[1:]
    return found


async def _sources(
    session: AsyncSession, devices: Sequence[int], keys: dict[str, int], start: int, end: int
) -> dict[int, str | None]:
    """Per device, its energy counter when that has readings in [start, end), else its
    power when that has, else None."""
    asks = [
        (device, name) for device in devices for name in (ENERGY_KEY, POWER_KEY) if name in keys
    ]
    found = await _first_of_each(
        session, "sources", [(d, keys[name]) for d, name in asks],
        lo=start - start % HOUR_MS, hi=end,
    )  # fmt: skip
    out: dict[int, str | None] = {}
    for (device, name), row in zip(asks, found, strict=True):
        if row is not None and out.get(device) is None:
            out[device] = name
    return out


def _branches(
    groups: Sequence[tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]]],
) -> dict[str, Any]:
    """The bound values of `_within(len(...))` for these (pairs, ranges) groups: per
    branch the devices (w<i>d), the key (w<i>k) and the range [w<i>a, w<i>b)."""
    params: dict[str, Any] = {}
    i = 0
    for pairs, ranges in groups:
        by_key: dict[int, list[int]] = {}
        for d, k in pairs:
            by_key.setdefault(k, []).append(d)
        for k, devices in sorted(by_key.items()):
            for a, b in ranges:
                params.update({f"w{i}d": devices, f"w{i}k": k, f"w{i}a": a, f"w{i}b": b})
                i += 1
    return params


def _within(branches: int, device: Any, key_id: Any, ts: Any, pg: bool) -> Any:
    """Rows of some (device, key id) pairs with `ts` in some [a, b) ranges, in `branches`
    branches bound by `_branches`. Each branch is `device IN (...) AND key_id = k AND a <=
    ts < b`, one range scan of a (device, key_id, ..., ts) index: written as (device = d
    AND key_id = k) OR ..., the planner scanned every device's rows of the key instead.
    Statements are built once per shape (building them cost more than running them).
    `pg`: the devices as one array parameter (`= ANY($1)`, what PostgreSQL makes of IN):
    an expanding IN list has the statement's text rewritten on every execution."""

    def devices(i: int) -> Any:
        if pg:
            return device == any_(bindparam(f"w{i}d", type_=ARRAY(BigInteger)))
        return device.in_(bindparam(f"w{i}d", expanding=True))

    return or_(
        *(
            and_(
                devices(i),
                key_id == bindparam(f"w{i}k", type_=Integer),
                ts >= bindparam(f"w{i}a", type_=BigInteger),
                ts < bindparam(f"w{i}b", type_=BigInteger),
            )
            for i in range(branches)
        )
    )


def _branch_count(params: dict[str, Any]) -> int:
    return len(params) // 4


def _groups(
    active: Sequence[tuple[int, int]], spans: dict[int, list[tuple[int, int]]]
) -> list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """The (device, key) pairs grouped by their spans: (pairs, spans) for `_within`."""
    by_spans: dict[tuple[tuple[int, int], ...], list[tuple[int, int]]] = {}
    for device, key_id in active:
        if spans.get(device):
            by_spans.setdefault(tuple(spans[device]), []).append((device, key_id))
    return [(group, list(ranges)) for ranges, group in by_spans.items()]


@functools.lru_cache(maxsize=64)
def _month_statement(branches: int, lateral: bool) -> Any:
    """The cached months in the branches' ranges that still match their day rollups.

    `lateral` (PostgreSQL): each month's day rollups are added up in a LATERAL subquery
    (an index-only scan of ~30 rows per month). Joined and grouped, PostgreSQL sorted the
    6,700 day rollups of a year with the months' columns: 10-13 ms of a 13 ms statement,
    and worse without statistics on `energy_months` (30 ms)."""
    m, r = EnergyMonth, Rollup
    columns = (
        m.device,
        m.month.label("bucket"),
        m.month_end,
        m.first_ts,
        m.first_value,
        m.last_ts,
        m.last_value,
        m.hours,
        cast(m.missing, String).label("missing"),
        m.estimated,
    )
    ours = (
        _within(branches, m.device, m.key_id, m.month, lateral),
        m.max_gap_ms == bindparam("gap", type_=BigInteger),
    )
    days = and_(
        r.device == m.device,
        r.key_id == m.key_id,
        r.grain == DAY_MS,
        r.bucket >= m.month,
        r.bucket < m.month_end,
    )
    if lateral:
        a = (
            select(
                func.count().label("days"),
                func.sum(r.n).label("n"),
                func.min(r.vmin).label("vmin"),
                func.max(r.vmax).label("vmax"),
                func.sum(r.vsum).label("vsum"),
            )
            .where(days)
            .lateral("days")
        )
        return (
            select(*columns)
            .select_from(m)
            .join(a, true())
            .where(
                *ours,
                a.c.days == m.days,
                a.c.n == m.n,
                a.c.vmin == m.vmin,
                a.c.vmax == m.vmax,
                func.abs(a.c.vsum - m.vsum) <= 1e-12 * (func.abs(m.vsum) + 1.0),
            )
            .order_by(m.device, m.month)
        )
    return (
        select(*columns)
        .join(r, days)
        .where(*ours)
        .group_by(m.device, m.key_id, m.month)
        .having(
            and_(
                func.count() == m.days,
                func.sum(r.n) == m.n,
                func.min(r.vmin) == m.vmin,
                func.max(r.vmax) == m.vmax,
                func.abs(func.sum(r.vsum) - m.vsum) <= 1e-12 * (func.abs(m.vsum) + 1.0),
            )
        )
        .order_by(m.device, m.month)
    )


async def _month_rows(
    session: AsyncSession,
    active: Sequence[tuple[int, int]],
    months: Sequence[tuple[int, int]],
    gap: int,
) -> dict[int, list[Any]]:
    """Per device, its `energy_months` rows of these UTC months that still match the
    aggregate of the month's day rollups (how many, their count and sum, min and max),
    in time order. A month whose readings changed is not returned: it is read day by
    day (and hour by hour where its days changed) and built again."""
    if not active or not months:
        return {}
    ranges: list[tuple[int, int]] = []
    for a, b in months:
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    starts = {a for a, _b in months}
    params = _branches([(active, ranges)])
    statement = _month_statement(_branch_count(params), await _is_pg(session))
    rows = await _rows(session, statement, {**params, "gap": gap})
    out: dict[int, list[Any]] = {}
    for row in rows:
        if row.bucket in starts:
            out.setdefault(row.device, []).append(row)
    return out


@functools.lru_cache(maxsize=128)
def _cached_rollups_statement(grain: int, branches: int, lateral: bool) -> Any:
    """The hour or day rollups (`grain`) in the branches' ranges, each joined with its
    cached figures (`energy_hours.wh` / `energy_days.hours`, with `missing` and
    `estimated`) only when they were computed from exactly the readings the rollup now
    describes.

    `lateral` (PostgreSQL): the cached row is looked up per rollup by its primary key (a
    LATERAL subquery; LIMIT 1 keeps the planner from flattening it into a join). As a
    join, PostgreSQL scanned the whole cache table: 4-14 ms for 120 day rollups of a
    month, with or without statistics, against 0.5 ms. SQLite looks it up per row anyway
    (and has no LATERAL)."""
    r = Rollup
    e: Any
    e, bucket, figures = (
        (EnergyDay, EnergyDay.day, EnergyDay.hours)
        if grain == DAY_MS
        else (EnergyHour, EnergyHour.hour, EnergyHour.wh)
    )
    valid = and_(
        e.device == r.device,
        e.key_id == r.key_id,
        bucket == r.bucket,
        e.max_gap_ms == bindparam("gap", type_=BigInteger),
        e.n == r.n,
        e.first_ts == r.first_ts,
        e.last_ts == r.last_ts,
        e.first_value == r.first_value,
        e.last_value == r.last_value,
        e.vmin == r.vmin,
        e.vmax == r.vmax,
        func.abs(e.vsum - r.vsum) <= 1e-9 * (func.abs(r.vsum) + 1.0),
    )
    # `missing` as text: nearly every hour's and day's is "[]", which needs no decoding.
    cached: Any = (figures, cast(e.missing, String).label("missing"), e.estimated)
    rollups = (r.device, r.bucket, r.n, r.vsum, r.vmin, r.vmax, r.first_ts, r.first_value,
               r.last_ts, r.last_value)  # fmt: skip
    where = (r.grain == grain, _within(branches, r.device, r.key_id, r.bucket, lateral))
    if lateral:
        found = select(*cached).where(valid).limit(1).lateral("cached")
        return (
            select(*rollups, *found.c)
            .select_from(r)
            .outerjoin(found, true())
            .where(*where)
            .order_by(r.device, r.bucket)
        )
    return select(*rollups, *cached).outerjoin(e, valid).where(*where).order_by(r.device, r.bucket)


async def _day_rows(
    session: AsyncSession,
    active: Sequence[tuple[int, int]],
    spans: dict[int, list[tuple[int, int]]],
    gap: int,
) -> dict[int, list[Any]]:
    """Per device, its day rollups in its spans (aligned days outside its cached months),
    each with its `energy_days` figures when they were computed from exactly these
    readings (else `hours` is None)."""
    groups = _groups(active, spans)
    if not groups:
        return {}
    params = _branches(groups)
    statement = _cached_rollups_statement(DAY_MS, _branch_count(params), await _is_pg(session))
    rows = await _rows(session, statement, {**params, "gap": gap})
    out: dict[int, list[Any]] = {}
    for row in rows:
        out.setdefault(row.device, []).append(row)
    return out


async def _hour_rows(
    session: AsyncSession,
    active: Sequence[tuple[int, int]],
    spans: dict[int, list[tuple[int, int]]],
    gap: int,
) -> tuple[dict[int, list[Any]], dict[int, dict[int, Any]]]:
    """Per device, its hour rollups in its spans (in time order), and those of its hours
    whose `energy_hours` figures still hold (the same rows, with `wh`, `missing` and
    `estimated`)."""
    groups = _groups(active, spans)
    if not groups:
        return {}, {}

    params = _branches(groups)
    hours: dict[int, list[Any]] = {}
    cached: dict[int, dict[int, Any]] = {}
    statement = _cached_rollups_statement(HOUR_MS, _branch_count(params), await _is_pg(session))
    for row in await _rows(session, statement, {**params, "gap": gap}):
        hours.setdefault(row.device, []).append(row)
        if row.wh is not None:
            cached.setdefault(row.device, {})[row.bucket] = row
    return hours, cached


def _whole_hour(slots: Slots, hour: int) -> bool:
    """Whether the UTC hour starting at `hour` lies inside the slots and inside one slot."""
    return hour >= slots.start and slots.inside(hour, hour + HOUR_MS)


@dataclass(slots=True)
class _CutPoints:
    """A meter's raw points (ts, value) of its hours cut by a slot edge, in time order,
    without those past the slots' end but the first of each hour; and how many points
    each of those hours has (to tell an hour whose raw points are gone)."""

    points: list[tuple[int, float]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)


@functools.lru_cache(maxsize=64)
def _cut_statement(branches: int, pg: bool) -> Any:
    # Each point with its hour's count and first time (window aggregates over one read of
    # the points); then the points before the end or first in their hour.
    # (A CTE joined with its own per-hour aggregate was planned as a nested loop over an
    # estimated one row: 10-14 ms for 1,700-7,200 points, against ~2 ms this way.)
    hour = Point.ts - Point.ts % literal(HOUR_MS, BigInteger)
    per_hour = (Series.device, hour)
    pts = (
        select(
            Series.device.label("device"),
            Point.ts.label("ts"),
            Point.value.label("value"),
            func.count().over(partition_by=per_hour).label("n"),
            func.min(Point.ts).over(partition_by=per_hour).label("first"),
        )
        .join(Series, Series.id == Point.series)
        .where(_within(branches, Series.device, Series.key_id, Point.ts, pg))
        .subquery()
    )
    return (
        select(pts.c.device, pts.c.ts, pts.c.value, case((pts.c.ts == pts.c.first, pts.c.n)))
        .where(or_(pts.c.ts < bindparam("end", type_=BigInteger), pts.c.ts == pts.c.first))
        .order_by(pts.c.device, pts.c.ts)
    )


async def _cut_hour_points(
    session: AsyncSession,
    active: Sequence[tuple[int, int]],
    hours: dict[int, list[Any]],
    slots: Slots,
) -> dict[int, _CutPoints]:
    """Per device, the raw points of its hours that a slot edge cuts, read for all meters
    in one statement; {} when there are more than CUT_HOURS_AT_ONCE such hours in all
    (then `_integrate` reads them meter by meter). Points past the slots' end are left
    out but the first of an hour: they add nothing (the walk bridges to the first reading
    after the end, which it reads anyway), and a summary's previous period ends mid-hour
    with most of that hour's points after it."""
    runs: dict[tuple[int, int], list[int]] = {}  # [a, b) -> the devices whose hours these are
    count = 0
    for device, _k in active:
        mine: list[list[int]] = []
        for h in hours.get(device, []):
            if _whole_hour(slots, h.bucket):
                continue
            count += 1
            if mine and mine[-1][1] == h.bucket:
                mine[-1][1] = h.bucket + HOUR_MS
            else:
                mine.append([h.bucket, h.bucket + HOUR_MS])
        for a, b in mine:
            runs.setdefault((a, b), []).append(device)
    if not runs or count > CUT_HOURS_AT_ONCE:
        return {}
    key_of = dict(active)
    params = _branches(
        [([(d, key_of[d]) for d in devices], [run]) for run, devices in runs.items()]
    )
    out = {d: _CutPoints() for devices in runs.values() for d in devices}
    pg = await _is_pg(session)
    statement = _cut_statement(_branch_count(params), pg)
    rows = await (_driver_rows if pg else _rows)(session, statement, {**params, "end": slots.end})
    for device, ts, value, n in rows:
        cut = out[device]
        cut.points.append((ts, value))
        if n is not None:
            cut.counts[ts - ts % HOUR_MS] = n
    return out


async def _readings_before(
    session: AsyncSession, active: Sequence[tuple[int, int]], ts: int
) -> dict[int, tuple[int, float]]:
    """Per device, the last reading before `ts`: a raw point, or the last one a rollup
    remembers (after retention dropped the raw points). Raw points only in the minute of
    `ts` (none when `ts` starts a minute): the minute rollups know the last reading of
    every earlier minute."""
    found = await _first_of_each(session, "before", active, ts=ts)
    raw = await _edge_points(session, active, ts - ts % MINUTE_MS, ts, last=True)
    out: dict[int, tuple[int, float]] = {}
    for (device, _k), row in zip(active, found, strict=True):
        candidates = [(int(row[0]), float(row[1]))] if row is not None else []
        if device in raw:
            candidates.append(raw[device])
        if candidates:
            out[device] = max(candidates)
    return out


async def _readings_from(
    session: AsyncSession, active: Sequence[tuple[int, int]], ts: int
) -> dict[int, tuple[int, float]]:
    """Per device, the first reading at or after `ts`: a raw point in the minute of `ts`,
    else the first reading of the next minute that has one (its rollup)."""
    minute = ts - ts % MINUTE_MS
    found = await _first_of_each(session, "from", active, ts=ts, minute=minute)
    raw = await _edge_points(session, active, ts, minute + MINUTE_MS, last=False)
    out: dict[int, tuple[int, float]] = {}
    for (device, _k), row in zip(active, found, strict=True):
        if device in raw:
            out[device] = raw[device]
        elif row is not None:
            out[device] = (int(row[0]), float(row[1]))
    return out


def _aligned_days(slots: Slots) -> list[int]:
    """The UTC days inside the slots whose slots are exactly their 24 hours."""
    cuts = slots.cuts
    out: list[int] = []
    day = -(-slots.start // DAY_MS) * DAY_MS
    while day + DAY_MS <= slots.end:
        i = slots.index(day)
        if cuts[i] == day and i + 24 < len(cuts) and cuts[i + 24] == day + DAY_MS:
            out.append(day)
        day += DAY_MS
    return out


def _aligned_months(aligned: Sequence[int]) -> list[tuple[int, int]]:
    """The UTC months [start, end) whose every day is among the aligned days."""
    out: list[tuple[int, int]] = []
    if not aligned:
        return out
    have = set(aligned)
    first, after = month_bounds(aligned[0])
    while first <= aligned[-1]:  # month by month (not a datetime per day)
        if all(d in have for d in range(first, after, DAY_MS)):
            out.append((first, after))
        first, after = after, month_bounds(after)[1]
    return out


def month_bounds(ts: int) -> tuple[int, int]:
    """The first instant of the UTC month holding `ts`, and of the next month."""
    t = datetime.fromtimestamp(ts // 1000, UTC)
    first = datetime(t.year, t.month, 1, tzinfo=UTC)
    after = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    return int(first.timestamp()) * 1000, int(after.timestamp()) * 1000


def _spans(
    ranges: Sequence[tuple[int, int]], skip: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The sorted, disjoint `ranges` without the sorted, disjoint stretches in `skip`."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        at = start
        for a, b in skip:
            if b <= at or a >= end:
                continue
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < end:
            out.append((at, end))
    return out


async def _integrate(
    session: AsyncSession,
    state: _Walk,
    device: int,
    key_id: int,
    hours: Sequence[Any],
    cached: dict[int, Any],
    covered: Sequence[Any],
    cache: CacheEntries | None,
    cut_points: _CutPoints | None = None,
    months: Sequence[Any] = (),
) -> None:
    """Walk the meter's cached months and days and its hours in time order: cached hours
    as blocks, the others from their raw points (or their rollups once those are gone).
    `cut_points`: the raw points of all its hours cut by a slot edge, when already read."""
    slots, max_gap = state.integrator.slots, state.integrator.max_gap_ms

    def whole(r: Any) -> bool:
        return _whole_hour(slots, r.bucket)

    def known(r: Any) -> bool:
        return r.bucket in cached and whole(r)

    # (start, 0 an hour / 1 a day / 2 a month, row): a month, the days outside it and the
    # hours outside those never share a start.
    items = sorted(
        [(h.bucket, 0, h) for h in hours]
        + [(d.bucket, 1, d) for d in covered]
        + [(m.bucket, 2, m) for m in months],
        key=lambda item: item[0],
    )
    i = 0
    while i < len(items):
        _at, kind_of, it = items[i]
        if kind_of:
            # The run of consecutive cached months and days from here, added in one go.
            j, after = i + 1, _end_of(it, kind_of)
            while j < len(items) and items[j][1] and items[j][0] == after:
                after = _end_of(items[j][2], items[j][1])
                j += 1
            state.days([entry for _a, _k, entry in items[i:j]])
            i = j
            continue
        if known(it):
            entry = cached[it.bucket]
            state.block(
                (it.first_ts, it.first_value),
                (it.last_ts, it.last_value),
                entry.wh,
                json.loads(entry.missing) if entry.missing != "[]" else [],
                entry.estimated,
                it.bucket,
                it.n,
            )
            i += 1
            continue
        # A run of hours that need their raw points, read in one query.
        # Whole hours and hours cut by a slot edge go in separate runs: a run of whole
        # hours is summed by the database.
        j, kind = i, whole(it)
        while (
            j < len(items)
            and items[j][1] == 0
            and not known(items[j][2])
            and whole(items[j][2]) == kind
        ):
            j += 1
        run = [h for _a, _d, h in items[i:j]]
        i = j
        if len(run) >= BULK_HOURS and all(whole(h) for h in run):
            sums = await _hour_sums(session, state.integrator, device, key_id, run)
            if sums is not None:
                for h in run:
                    n, wh, gaps = sums.get(h.bucket, (0, 0.0, []))
                    if n < h.n:  # some raw points are gone: the rollup stands in
                        state.hour(h, [], True, device, key_id, cache)
                        continue
                    first, last = (h.first_ts, h.first_value), (h.last_ts, h.last_value)
                    state.block(first, last, wh, gaps, False, h.bucket, n)
                    if cache is not None:
                        cache.rows.append(_cache_row(device, key_id, h, max_gap, wh, gaps, False))
                state.seen.clear()
                continue
        by_hour = {h.bucket: h for h in run}
        current: int | None = None
        points: list[tuple[int, float]] = []
        # How many points each hour has, when not all of them were read.
        counts = cut_points.counts if cut_points is not None and not kind else {}
        async for batch in _run_points(session, device, key_id, run, kind, cut_points):
            for ts, value in batch:
                hour = ts - ts % HOUR_MS
                if hour != current:
                    if current is not None and current in by_hour:
                        state.hour(
                            by_hour[current], points, whole(by_hour[current]), device, key_id,
                            cache, counts.get(current),
                        )  # fmt: skip
                    current, points = hour, []
                points.append((ts, value))
        if current is not None and current in by_hour:
            state.hour(
                by_hour[current], points, whole(by_hour[current]), device, key_id, cache,
                counts.get(current),
            )  # fmt: skip
        # Hours whose raw points are all gone (retention): their rollups stand in.
        for h in run:
            if h.bucket not in state.seen:
                state.hour(h, [], whole(h), device, key_id, cache)
        state.seen.clear()


def _end_of(entry: Any, kind_of: int) -> int:
    """Where a cached day (kind 1) or month (kind 2) ends."""
    return int(entry.month_end) if kind_of == 2 else int(entry.bucket) + DAY_MS


async def _run_points(
    session: AsyncSession,
    device: int,
    key_id: int,
    run: Sequence[Any],
    whole: bool,
    cut: _CutPoints | None,
) -> AsyncIterator[Sequence[tuple[int, float]]]:
    """The raw points of a run of hours, in time order, in batches: from `cut_points` for
    hours cut by a slot edge when those were read already, else from the database (a
    batch at a time: a row at a time costs a greenlet switch each)."""
    a, b = run[0].bucket, run[-1].bucket + HOUR_MS
    if not whole and cut is not None:
        i = bisect_left(cut.points, (a,))
        yield cut.points[i : bisect_left(cut.points, (b,), lo=i)]
        return
    result = await session.stream(
        select(Point.ts, Point.value)
        .where(Point.series == series_of(device, key_id), Point.ts >= a, Point.ts < b)
        .order_by(Point.ts)
        .execution_options(yield_per=10_000)
    )
    async for batch in result.partitions():
        yield batch


async def _hour_sums(
    session: AsyncSession, integrator: Integrator, device: int, key_id: int, run: Sequence[Any]
) -> dict[int, tuple[int, float, list[Stretch]]] | None:
    """Per hour of a run of whole hours, from the raw points in the database: how many,
    the energy between consecutive ones (the same step as `Integrator.pair`, summed by the
    database) and the unbridged stretches. None when an hour has more points than its
    rollup counts (a write in between): the caller reads the points instead."""
    hour = Point.ts - Point.ts % HOUR_MS
    inner = (
        select(
            hour.label("h"),
            Point.ts.label("ts"),
            Point.value.label("v"),
            func.lag(Point.ts).over(partition_by=hour, order_by=Point.ts).label("pt"),
            func.lag(Point.value).over(partition_by=hour, order_by=Point.ts).label("pv"),
        )
        .where(
            Point.series == series_of(device, key_id),
            Point.ts >= run[0].bucket,
            Point.ts < run[-1].bucket + HOUR_MS,
        )
        .subquery()
    )
    c, gap = inner.c, integrator.max_gap_ms
    if integrator.counter:
        step = case((c.pt.is_(None), 0.0), (c.v >= c.pv, (c.v - c.pv) * 1000.0), else_=c.v * 1000.0)
        unbridged = and_(c.pt.is_not(None), c.v < c.pv, c.ts - c.pt > gap)
    else:
        step = case(
            (c.pt.is_(None), 0.0),
            (c.ts - c.pt > gap, 0.0),
            else_=(c.pv + c.v) / 2.0 * (c.ts - c.pt) / W_MS_PER_WH,
        )
        unbridged = and_(c.pt.is_not(None), c.ts - c.pt > gap)
    counts = {h.bucket: h.n for h in run}
    out: dict[int, tuple[int, float, list[Stretch]]] = {}
    for h, n, wh in await session.execute(select(c.h, func.count(), func.sum(step)).group_by(c.h)):
        if n > counts.get(h, 0):
            return None
        out[int(h)] = (int(n), float(wh or 0.0), [])
    for h, a, b in await session.execute(select(c.h, c.pt, c.ts).where(unbridged).order_by(c.ts)):
        out[int(h)][2].append((int(a), int(b)))
    return out


def _new_days(
    state: _Walk,
    hours: Sequence[Any],
    days: Sequence[Any],
    aligned: Sequence[int],
    device: int,
    key_id: int,
    cache: CacheEntries,
) -> None:
    """Days read hour by hour whose every hour was a whole block: their hourly figures,
    to store in `energy_days`."""
    per_day: dict[int, list[int]] = {}
    for h in hours:
        per_day.setdefault(h.bucket - h.bucket % DAY_MS, []).append(h.bucket)
    wanted = set(aligned)
    integrator = state.integrator
    for r in days:
        day = r.bucket
        buckets = per_day.get(day)
        if r.hours is not None or day not in wanted or not buckets:
            continue
        if any(b not in state.blocks for b in buckets):
            continue
        blocks = [state.blocks[b] for b in buckets]
        if sum(block[5] for block in blocks) != r.n:
            continue  # the hours and the day disagree (a write in between): next time
        day_slots = Slots.over(range(day, day + DAY_MS + 1, HOUR_MS))
        walk = _Walk(
            Integrator(day_slots, counter=integrator.counter, max_gap_ms=integrator.max_gap_ms),
            None,
            blocks[0][0][0],
        )
        estimated = False
        for first, last, wh, missing, est, _n in blocks:
            walk.block(first, last, wh, missing, est, None)
            estimated |= est
        cache.days.append(
            {
                "device": device,
                "key_id": key_id,
                "day": day,
                "max_gap_ms": integrator.max_gap_ms,
                "n": r.n,
                "vsum": r.vsum,
                "vmin": r.vmin,
                "vmax": r.vmax,
                "first_ts": r.first_ts,
                "first_value": r.first_value,
                "last_ts": r.last_ts,
                "last_value": r.last_value,
                "hours": _packed(day_slots.wh),
                "missing": [list(m) for m in walk.integrator.missing],
                "estimated": estimated,
            }
        )


def _packed(wh: Wh) -> bytes:
    """Hourly Wh as stored in `energy_days` / `energy_months`."""
    return np.asarray(wh, dtype=HOUR_WH).tobytes()


class _DayRecord(NamedTuple):
    """A day as `_Walk.days` reads it: its hours and first and last reading."""

    bucket: int
    hours: bytes
    first_ts: int
    first_value: float
    last_ts: int
    last_value: float
    missing: str  # JSON text
    estimated: bool


def _new_months(
    integrator: Integrator,
    days: Sequence[Any],
    months: Sequence[Any],
    spans: Sequence[tuple[int, int]],
    device: int,
    key_id: int,
    cache: CacheEntries,
) -> None:
    """UTC months the slots cover day by day that have no valid `energy_months` row yet,
    whose every day with readings is in `energy_days` (or was built by this walk): their
    hourly figures, added up from those days exactly as the day-by-day walk adds them, to
    store in `energy_months`. `days`: the meter's day rollups with their cached days."""
    have = {m.bucket for m in months}
    built = {d["day"]: d for d in cache.days if d["device"] == device and d["key_id"] == key_id}
    for first, after in spans:
        if first in have:
            continue
        rollups = [r for r in days if first <= r.bucket < after]
        records: list[_DayRecord] = []
        for r in rollups:
            if r.hours is not None:
                hours, missing, estimated = r.hours, r.missing, bool(r.estimated)
            elif (new := built.get(r.bucket)) is not None:
                hours, missing = new["hours"], json.dumps(new["missing"])
                estimated = bool(new["estimated"])
            else:
                break  # a day not known yet: the month waits for it
            records.append(
                _DayRecord(r.bucket, hours, r.first_ts, r.first_value, r.last_ts,
                           r.last_value, missing, estimated)
            )  # fmt: skip
        if not records or len(records) != len(rollups):
            continue
        walk = _Walk(
            Integrator(
                Slots.over(range(first, after + 1, HOUR_MS)),
                counter=integrator.counter,
                max_gap_ms=integrator.max_gap_ms,
            ),
            None,
            records[0].first_ts,
        )
        run = [records[0]]
        for record in records[1:]:
            if record.bucket != run[-1].bucket + DAY_MS:
                walk.days(run)
                run = []
            run.append(record)
        walk.days(run)
        wh = walk.integrator.slots.wh
        cache.months.append(
            {
                "device": device,
                "key_id": key_id,
                "month": first,
                "month_end": after,
                "max_gap_ms": integrator.max_gap_ms,
                "days": len(rollups),
                "n": sum(int(r.n) for r in rollups),
                "vsum": sum(float(r.vsum) for r in rollups),
                "vmin": min(float(r.vmin) for r in rollups),
                "vmax": max(float(r.vmax) for r in rollups),
                "first_ts": records[0].first_ts,
                "first_value": records[0].first_value,
                "last_ts": records[-1].last_ts,
                "last_value": records[-1].last_value,
                "hours": _packed(wh),
                "missing": [list(m) for m in walk.integrator.missing],
                "estimated": walk.integrator.estimated,
            }
        )


def _between(
    integrator: Integrator, points: Sequence[tuple[int, float]]
) -> tuple[float, list[Stretch]]:
    """The energy between the first and the last of these readings (in time order), and
    the stretches between them that are not bridged."""
    wh, missing = 0.0, []
    pair = integrator.pair
    for (t1, v1), (t2, v2) in itertools.pairwise(points):
        step, gap = pair(t1, v1, t2, v2)
        wh += step
        if gap is not None:
            missing.append(gap)
    return wh, missing


_Block = tuple[tuple[int, float], tuple[int, float], float, Sequence[Stretch], bool, int]


@dataclass(slots=True)
class _Walk:
    """Walks a meter's readings in time order, bridging each to the next."""

    integrator: Integrator
    prev: tuple[int, float] | None
    start: int
    seen: set[int] = field(default_factory=set)
    # Whole hours added as one block: (first, last, Wh, missing, estimated, readings).
    blocks: dict[int, _Block] = field(default_factory=dict)

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
        hour: int | None,
        n: int = 0,
    ) -> None:
        """An hour known as a total between its first and last reading (`hour`: a whole
        UTC hour, remembered for `energy_days`)."""
        self.to(*first)
        self.integrator.block(first[0], last[0], wh, missing)
        self.integrator.estimated |= estimated
        self.prev = last
        if hour is not None:
            self.blocks[hour] = (first, last, wh, missing, estimated, n)

    def days(self, entries: Sequence[Any]) -> None:
        """Consecutive whole UTC days from `energy_days`, or a month from `energy_months`
        (with their first and last readings; `missing` as JSON text): each one's slots are
        its hours, so their slots follow one another and their hours are added in one go."""
        integrator = self.integrator
        hours = np.frombuffer(b"".join(entry.hours for entry in entries), dtype=HOUR_WH)
        i = integrator.slots.index(entries[0].bucket)
        integrator.slots.wh[i : i + len(hours)] += hours
        for entry in entries:
            self.to(entry.first_ts, entry.first_value)
            if entry.missing != "[]":
                for a, b in json.loads(entry.missing):
                    integrator.miss(a, b)
            integrator.estimated |= entry.estimated
            self.prev = (entry.last_ts, entry.last_value)

    def hour(
        self,
        r: Rollup,
        points: list[tuple[int, float]],
        whole: bool,
        device: int,
        key_id: int,
        cache: CacheEntries | None,
        available: int | None = None,
    ) -> None:
        """One hour from its raw points, or from its rollup when they are gone.
        `available`: how many raw points the hour has when `points` leaves some out (those
        past the slots' end)."""
        self.seen.add(r.bucket)
        integrator = self.integrator
        if (len(points) if available is None else available) < r.n:
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
            first, last = (r.first_ts, r.first_value), (r.last_ts, r.last_value)
            self.block(first, last, wh, missing, True, r.bucket if whole else None, r.n)
            if whole and cache is not None:
                cache.rows.append(
                    _cache_row(device, key_id, r, integrator.max_gap_ms, wh, missing, True)
                )
            return
        if not whole:
            self.cut(points)
            return
        wh, missing = _between(integrator, points)
        self.block(points[0], points[-1], wh, missing, False, r.bucket, len(points))
        if cache is not None and len(points) == r.n:
            cache.rows.append(
                _cache_row(device, key_id, r, integrator.max_gap_ms, wh, missing, False)
            )

    def cut(self, points: Sequence[tuple[int, float]]) -> None:
        """The points of an hour that slot edges cut (in time order): the stretches between
        consecutive points in one slot are summed and added as one block; only those that
        cross an edge (or lie outside the slots) are bridged one by one."""
        slots = self.integrator.slots
        cuts, inner = slots.cuts, range(len(slots.wh))
        i = 0
        while i < len(points):
            k = slots.index(points[i][0])
            if k not in inner:
                self.to(*points[i])
                i += 1
                continue
            j = bisect_left(points, (cuts[k + 1],), lo=i)  # the first point past the slot
            if j - i < 2:
                self.to(*points[i])
                i += 1
                continue
            wh, missing = _between(self.integrator, points[i:j])
            self.block(points[i], points[j - 1], wh, missing, False, None)
            i = j

    def finish(self, following: tuple[int, float] | None, until: int) -> None:
        if self.prev is None:
            self.integrator.miss(self.start, until)
            return
        if following is not None:
            self.to(*following)
        elif until - self.prev[0] > self.integrator.max_gap_ms:
            self.integrator.miss(self.prev[0], until)


async def save_cache(session: AsyncSession, entries: CacheEntries) -> None:
    """Store the hours and days computed by a request (upserts: a concurrent request may
    have computed the same ones)."""
    for model, key, rows in (
        (EnergyHour, "hour", entries.rows),
        (EnergyDay, "day", entries.days),
        (EnergyMonth, "month", entries.months),
    ):
        if not rows:
            continue
        stmt = dialect_insert(session, model)
        keys = {"device", "key_id", key}
        columns = [c for c in rows[0] if c not in keys]
        upsert = stmt.on_conflict_do_update(
            index_elements=sorted(keys), set_={c: stmt.excluded[c] for c in columns}
        )
        unique = {(r["device"], r["key_id"], r[key]): r for r in rows}
        ordered = [unique[k] for k in sorted(unique)]
        for i in range(0, len(ordered), 500):
            await session.execute(upsert, ordered[i : i + 500])
