"""Backtest: how often a threshold rule, saved or not, would have fired over the last 24 h
or 7 d, replaying stored history through the same state machine the live engine runs
(`conditions.step`, plus the scheduler's timer: a pending window with no contrary point
by its due mark fires at that mark).

What is read. A rollup bucket keeps min/max and its first and last point. When every
value of a bucket is in one zone of the rule (all hold; with hysteresis all clear, or all
between the clear threshold and the threshold; for ranges and ==/!= all on one side of
each bound), the state machine does the same at every point of the bucket, so the bucket
replays exactly as its first and last point: a window starts at the first point of the
first bucket that holds and ends at the first point of the next one that does not, and
those are exactly the stored first points. That holds for any duration, so the duration
need not be a whole number of buckets. Whole day buckets inside the period are read
first (7 d), then hours, then minutes for the buckets that were mixed and the ragged ends
of the period; what is still mixed, and the part of the period's ends not covering a
whole minute, is read as raw points. The answer says how many buckets of each grain and
raw points were used. It is exact unless raw points of a mixed minute were dropped by
retention (`exact` is false then).

Each (rule, device) starts idle at the start of the period: a condition already true
then counts from its first point in the period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.alerts import service
from sensorium.alerts.conditions import ABOVE, BELOW, Condition, Phase, step
from sensorium.alerts.engine import iso_ms
from sensorium.alerts.models import FIRING, OFFLINE, PENDING, SCOPE_ALL
from sensorium.devices.models import Device
from sensorium.errors import Invalid
from sensorium.protocol import mac_to_int
from sensorium.telemetry.models import Point, Rollup, Series, TelemetryKey
from sensorium.telemetry.rollups import DAY, HOUR, MINUTE
from sensorium.users.models import User

PERIODS: dict[str, int] = {"24h": DAY, "7d": 7 * DAY}
# Fires listed in the answer (the count covers all of them).
MAX_FIRES = 50
# Devices replayed for a rule on many (scope "all"); the answer says how many there were.
MAX_DEVICES = 100
# Ranges per statement (each one is an OR'ed index range).
_CHUNK = 200

Range = tuple[int, int]


@dataclass(slots=True)
class Fire:
    device_id: str
    at_ms: int
    cleared_ms: int | None = None


@dataclass(slots=True)
class Sources:
    day_buckets: int = 0
    hour_buckets: int = 0
    minute_buckets: int = 0
    raw_points: int = 0
    exact: bool = True

    def add(self, other: Sources) -> None:
        self.day_buckets += other.day_buckets
        self.hour_buckets += other.hour_buckets
        self.minute_buckets += other.minute_buckets
        self.raw_points += other.raw_points
        self.exact = self.exact and other.exact

    @property
    def source(self) -> str:
        buckets = self.day_buckets + self.hour_buckets + self.minute_buckets
        if buckets and self.raw_points:
            return "mixed"
        if buckets:
            return "rollups"
        return "raw" if self.raw_points else "none"


@dataclass(slots=True)
class Result:
    period: str
    start_ms: int
    end_ms: int
    fires: list[Fire] = field(default_factory=list)
    device_names: dict[str, str] = field(default_factory=dict)
    devices_total: int = 0
    sources: Sources = field(default_factory=Sources)


def zone(condition: Condition, value: float) -> int:
    """Which side of the rule's bounds a value is on. Equal zones mean the state machine
    treats the values alike; for > >= < <= the zones are ordered along the value axis (so a
    bucket whose min and max share one is all in it)."""
    op = condition.operator
    if op in ABOVE or op in BELOW:
        if condition.holds(value):
            return 1
        return 2 if condition.clears(value) else 0
    if op in ("==", "!="):
        low = high = condition.threshold
    else:
        low, high = condition.low, condition.high
    assert low is not None
    assert high is not None
    if value < low:
        return 0
    return 1 if value <= high else 2


def uniform(condition: Condition, vmin: float, vmax: float) -> bool:
    """Whether every value between vmin and vmax is in one zone."""
    return zone(condition, vmin) == zone(condition, vmax)


def replay(
    condition: Condition,
    duration_ms: int,
    points: Iterable[tuple[int, float]],
    *,
    end_ms: int,
    device_id: str = "",
) -> list[Fire]:
    """The fires (and clears) of one device's points, in time order, from idle."""
    state = Phase()
    fires: list[Fire] = []
    for ts, value in points:
        if state.phase == PENDING and state.due_ms is not None and ts > state.due_ms:
            # The scheduler's timer: nothing contrary came by the due mark.
            state.phase = FIRING
            fires.append(Fire(device_id, state.due_ms))
        transition = step(condition, duration_ms, state, ts, value)
        if transition is None:
            continue
        if transition.kind == "fire":
            fires.append(Fire(device_id, transition.at_ms))
        else:
            fires[-1].cleared_ms = transition.at_ms
    if state.phase == PENDING and state.due_ms is not None and state.due_ms <= end_ms:
        fires.append(Fire(device_id, state.due_ms))
    return fires


def _split(ranges: Iterable[Range], grain: int) -> tuple[list[Range], list[Range]]:
    """The whole buckets of `grain` inside each range, and the ragged rest."""
    whole: list[Range] = []
    rest: list[Range] = []
    for start, end in ranges:
        first = -(-start // grain) * grain
        last = end // grain * grain
        if first >= last:
            rest.append((start, end))
            continue
        whole.append((first, last))
        if start < first:
            rest.append((start, first))
        if last < end:
            rest.append((last, end))
    return whole, rest


def _merge(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _chunks(ranges: Sequence[Range]) -> Iterable[Sequence[Range]]:
    """Consecutive runs of the (sorted) ranges, one statement each."""
    for i in range(0, len(ranges), _CHUNK):
        yield ranges[i : i + _CHUNK]


async def history(
    session: AsyncSession,
    condition: Condition,
    *,
    device: int,
    key_id: int,
    series_id: int | None,
    start_ms: int,
    end_ms: int,
) -> tuple[list[tuple[int, float]], Sources]:
    """Points that replay like the stored ones over [start_ms, end_ms): the first and last
    point of each bucket that is all in one zone, raw points elsewhere; time-ordered."""
    sources = Sources()
    points: list[tuple[int, float]] = []
    todo: list[Range] = [(start_ms, end_ms)]
    mixed_minutes: dict[int, int] = {}
    grains = (DAY, HOUR, MINUTE) if end_ms - start_ms > DAY else (HOUR, MINUTE)
    for grain in grains:
        whole, rest = _split(todo, grain)
        for chunk in _chunks(whole):
            rows = await session.execute(
                select(
                    Rollup.bucket, Rollup.vmin, Rollup.vmax, Rollup.n,
                    Rollup.first_ts, Rollup.first_value, Rollup.last_ts, Rollup.last_value,
                ).where(
                    Rollup.device == device,
                    Rollup.key_id == key_id,
                    Rollup.grain == grain,
                    # The overall bounds keep the index range to the chunk's span when the
                    # planner does not seek each range (SQLite reads the whole series'
                    # buckets of the grain otherwise: a year is 525,600 minutes).
                    Rollup.bucket >= chunk[0][0],
                    Rollup.bucket < chunk[-1][1],
                    or_(*(and_(Rollup.bucket >= a, Rollup.bucket < b) for a, b in chunk)),
                )
            )  # fmt: skip
            for bucket, vmin, vmax, n, first_ts, first_value, last_ts, last_value in rows:
                if not uniform(condition, vmin, vmax):
                    rest.append((bucket, bucket + grain))
                    if grain == MINUTE:
                        mixed_minutes[bucket] = n
                    continue
                points.append((first_ts, first_value))
                if last_ts != first_ts:
                    points.append((last_ts, last_value))
                if grain == DAY:
                    sources.day_buckets += 1
                elif grain == HOUR:
                    sources.hour_buckets += 1
                else:
                    sources.minute_buckets += 1
        todo = _merge(rest)
    if series_id is not None:
        seen: dict[int, int] = {}
        for chunk in _chunks(todo):
            raw = await session.execute(
                select(Point.ts, Point.value).where(
                    Point.series == series_id,
                    Point.ts >= chunk[0][0],
                    Point.ts < chunk[-1][1],
                    or_(*(and_(Point.ts >= a, Point.ts < b) for a, b in chunk)),
                )
            )
            for ts, value in raw:
                points.append((ts, value))
                sources.raw_points += 1
                minute = ts // MINUTE * MINUTE
                if minute in mixed_minutes:
                    seen[minute] = seen.get(minute, 0) + 1
        # Retention dropped raw points the rollups still count: the replay is not exact.
        sources.exact = all(seen.get(m, 0) >= n for m, n in mixed_minutes.items())
    elif mixed_minutes:
        sources.exact = False
    points.sort()
    return points, sources


async def backtest(
    session: AsyncSession,
    *,
    owner: User,
    spec: Mapping[str, Any],
    period: str,
    now_ms: int,
) -> Result:
    """Replay the rule `spec` (the fields of schemas.RuleCreate; validated as when a rule is
    created) over the owner's devices in its scope for the `period` before `now_ms`."""
    # The same checks (and 4xx errors) as creating the rule.
    service._check_rule(spec)
    if spec["kind"] == OFFLINE:
        raise Invalid(
            "only threshold rules can be backtested (device status history is not kept)",
            field="kind",
            code="backtest_unsupported",
        )
    if period not in PERIODS:
        raise Invalid(
            f"period must be one of {', '.join(PERIODS)}", field="period", code="invalid_period"
        )
    listed = await service._owned_devices(session, owner, spec.get("devices") or [])
    await service._owned_channels(session, owner, spec.get("channels") or [])
    query = select(Device.id, Device.name).where(Device.owner_id == owner.id)
    if spec["scope"] != SCOPE_ALL:
        query = query.where(Device.id.in_(listed))
    devices = list(await session.execute(query.order_by(Device.id)))
    result = Result(period, now_ms - PERIODS[period], now_ms, devices_total=len(devices))
    key_id = await session.scalar(select(TelemetryKey.id).where(TelemetryKey.name == spec["key"]))
    condition = Condition(
        spec["operator"], spec.get("threshold"), spec.get("low"), spec.get("high"),
        spec.get("clear_threshold"),
    )  # fmt: skip
    duration_ms = int(spec.get("duration_s") or 0) * 1000
    fires: list[Fire] = []
    for device_id, name in devices[:MAX_DEVICES]:
        result.device_names[device_id] = name
        if key_id is None:
            continue
        number = mac_to_int(device_id)
        series_id = await session.scalar(
            select(Series.id).where(Series.device == number, Series.key_id == key_id)
        )
        points, sources = await history(
            session, condition, device=number, key_id=key_id, series_id=series_id,
            start_ms=result.start_ms, end_ms=result.end_ms,
        )  # fmt: skip
        result.sources.add(sources)
        fires += replay(condition, duration_ms, points, end_ms=result.end_ms, device_id=device_id)
    result.fires = sorted(fires, key=lambda f: (f.at_ms, f.device_id))
    return result


def document(result: Result) -> dict[str, Any]:
    """The answer of the backtest endpoint (schemas.BacktestPublic)."""
    s = result.sources
    return {
        "period": result.period,
        "start": iso_ms(result.start_ms),
        "end": iso_ms(result.end_ms),
        "count": len(result.fires),
        "fires": [
            {
                "device_id": f.device_id,
                "device_name": result.device_names.get(f.device_id, ""),
                "at": iso_ms(f.at_ms),
                "cleared_at": iso_ms(f.cleared_ms),
            }
            for f in result.fires[:MAX_FIRES]
        ],
        "devices": min(result.devices_total, MAX_DEVICES),
        "devices_total": result.devices_total,
        "source": s.source,
        "sources": {
            "day_buckets": s.day_buckets,
            "hour_buckets": s.hour_buckets,
            "minute_buckets": s.minute_buckets,
            "raw_points": s.raw_points,
        },
        "exact": s.exact,
    }
