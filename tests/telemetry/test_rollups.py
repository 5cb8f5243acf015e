"""Rollups stay exactly the aggregation of the raw points, whatever arrives: new points,
out-of-order backfills, overwrites with other values, identical re-sends, small batches
(multi-row upsert) and large ones (PostgreSQL COPY path). A hypothesis property test,
run on SQLite and PostgreSQL (`--db=postgresql`)."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sensorium.config import Settings
from sensorium.db import create_engine, session_factory
from sensorium.devices.models import Device
from sensorium.protocol import Reading, mac_to_int
from sensorium.telemetry import buckets, rollups, service
from sensorium.telemetry.models import LatestValue, Point, Rollup, Series, TelemetryKey
from sensorium.telemetry.writer import COPY_THRESHOLD, BatchWriter
from sensorium.users.models import User

DEVICES = ("020000000a01", "020000000a02")
KEYS = ("power", "temp")
BASE = 1_763_900_000_000 - 1_763_900_000_000 % rollups.DAY + 23 * rollups.HOUR  # near midnight

# Timestamps from two pools: dense ones (many points per minute, collisions likely) and
# ones spread over ~3.5 days (hour and day buckets, backfills far apart).
dense = st.integers(0, 90).map(lambda i: BASE + i * 997)
spread = st.integers(0, 3000).map(lambda i: BASE - rollups.DAY + i * 100_003)
values = st.one_of(
    st.integers(-50, 50).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32),
)
entry = st.tuples(st.integers(0, 1), st.sampled_from(KEYS), st.one_of(dense, spread), values)
batch = st.one_of(
    st.lists(entry, min_size=1, max_size=40),
    # Large enough for the COPY path on PostgreSQL.
    st.lists(entry, min_size=COPY_THRESHOLD, max_size=COPY_THRESHOLD + 60),
)
# A re-send: an earlier batch again, each value kept or changed.
history = st.lists(
    st.one_of(batch, st.tuples(st.just("resend"), st.integers(0, 5), st.booleans())),
    min_size=1,
    max_size=5,
)


@dataclass
class Env:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    writer: BatchWriter


@pytest.fixture
def env(settings: Settings, runner: asyncio.Runner) -> Iterator[Env]:
    async def setup() -> Env:
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            user = User(username="rollups", password_hash="x")
            session.add(user)
            await session.flush()
            for device_id in DEVICES:
                session.add(Device(id=device_id, owner_id=user.id, name=device_id, info={}))
        writer = BatchWriter(sessions, offline_after_s=60)
        await writer.start()
        return Env(engine, sessions, writer)

    environment = runner.run(setup())
    yield environment

    async def teardown() -> None:
        await environment.writer.stop()
        await environment.engine.dispose()

    runner.run(teardown())


async def _reset(env: Env) -> None:
    async with env.sessions() as session, session.begin():
        for model in (Point, Rollup, LatestValue):
            await session.execute(delete(model))


async def _write(env: Env, entries: list[tuple[int, str, int, float]]) -> None:
    """One batch: a document per device, submitted together (the writer may commit them
    in one transaction or several)."""
    per_device: dict[int, list[Reading]] = {}
    for device, key, ts, value in entries:
        per_device.setdefault(device, []).append(Reading(ts=ts, key=key, value=value))
    await asyncio.gather(
        *(env.writer.write(DEVICES[d], readings) for d, readings in per_device.items())
    )


def _expected(points: list[tuple[int, int, int, float]]) -> dict[rollups.BucketKey, Any]:
    return rollups.increments(((d, k, t), v) for d, k, t, v in points)


async def _check(env: Env) -> int:
    async with env.sessions() as session:
        points = list(
            await session.execute(
                select(Series.device, Series.key_id, Point.ts, Point.value).join(
                    Series, Series.id == Point.series
                )
            )
        )
        stored = {
            (r.device, r.key_id, r.grain, r.bucket): r
            for r in (await session.scalars(select(Rollup))).all()
        }
    expected = _expected([tuple(p) for p in points])  # type: ignore[misc]
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        assert (got.vmin, got.vmax, got.n) == (want.vmin, want.vmax, want.n), key
        assert (got.first_ts, got.first_value) == (want.first_ts, want.first_value), key
        assert (got.last_ts, got.last_value) == (want.last_ts, want.last_value), key
        # Sums are float additions in another order: equal up to rounding.
        assert math.isclose(got.vsum, want.vsum, rel_tol=1e-9, abs_tol=1e-3), key
    return len(points)


@settings(
    # Hypothesis's default. Each example writes several batches through the real writer:
    # 200 took 140-150 s per backend, the slowest test of `make test` by far.
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=history)
def test_rollups_equal_the_aggregation_of_the_raw_points(
    env: Env, runner: asyncio.Runner, steps: list[Any]
) -> None:
    async def scenario() -> None:
        await _reset(env)
        done: list[list[tuple[int, str, int, float]]] = []
        for step in steps:
            if isinstance(step, tuple) and step and step[0] == "resend":
                if not done:
                    continue
                _, index, change = step
                again = done[index % len(done)]
                entries = [(d, k, t, v + 1.5 if change else v) for d, k, t, v in again]
            else:
                entries = step
            await _write(env, entries)
            done.append(entries)
        await _check(env)

    runner.run(scenario())


@pytest.mark.parametrize("statement", [rollups.PG_MERGE, rollups.PG_STORE_NEW])
def test_the_postgresql_statements_list_the_grains(statement: str) -> None:
    """Minute buckets from the points, the coarser ones from the minutes."""
    minute = re.search(r"i\.ts - i\.ts % (\d+) AS bucket", statement)
    assert minute is not None
    assert re.findall(r"SELECT series, (\d+) AS grain", statement) == [minute.group(1)]
    listed = re.search(r"VALUES \(([0-9), (]+)\) AS g\(grain\)", statement)
    assert listed is not None
    coarser = tuple(int(g) for g in re.findall(r"\d+", listed.group(1)))
    assert (int(minute.group(1)), *coarser) == rollups.GRAINS


def test_device_ids_are_distinct_integers() -> None:
    assert len({mac_to_int(d) for d in DEVICES}) == len(DEVICES)


TZS = ("UTC", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns")
WINDOW = (BASE - 3 * rollups.DAY, BASE + 3 * rollups.DAY)


@pytest.fixture
def loaded(env: Env, runner: asyncio.Runner) -> Env:
    """~1,700 points of two keys at irregular times over six days."""
    import random

    rng = random.Random(7)
    entries: list[tuple[int, str, int, float]] = []
    ts = WINDOW[0] + 12_345
    while ts < WINDOW[1]:
        entries.append((0, rng.choice(KEYS), ts, round(rng.uniform(-10, 40), 3)))
        ts += rng.choices((997, 30_011, 61_003, 3_600_017), weights=(6, 3, 3, 1))[0]
    runner.run(_reset(env))
    for i in range(0, len(entries), 500):
        runner.run(_write(env, entries[i : i + 500]))
    return env


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.integers(*WINDOW),
    span=st.integers(1, 4 * rollups.DAY),
    interval=st.sampled_from(sorted(buckets.FIXED_MS) + list(buckets.CALENDAR)),
    tz=st.sampled_from(TZS),
)
def test_aggregates_from_rollups_equal_those_of_the_raw_points(
    loaded: Env, runner: asyncio.Runner, start: int, span: int, interval: str, tz: str
) -> None:
    end = start + span
    zone = buckets.zone(tz)
    plan = buckets.buckets(interval, start, end, zone)

    async def compare() -> None:
        async with loaded.sessions() as session:
            got = await service.aggregate(
                session, device_id=DEVICES[0], keys=None, from_ms=start, to_ms=end,
                interval=interval, aggs=AGGS, tz=zone,
            )  # fmt: skip
            points = (
                await session.execute(
                    select(TelemetryKey.name, Point.ts, Point.value)
                    .join(Series, Series.id == Point.series)
                    .join(TelemetryKey, TelemetryKey.id == Series.key_id)
                    .where(Point.ts >= max(start, plan.starts[0]), Point.ts < min(end, plan.end))
                    .order_by(Point.ts)
                )
            ).all()
        expected: dict[str, dict[int, list[tuple[int, float]]]] = {}
        for name, ts, value in points:
            bucket = max(b for b in plan.starts if b <= ts)
            expected.setdefault(name, {}).setdefault(bucket, []).append((ts, value))
        assert sorted(got) == sorted(expected)
        for name, rows in got.items():
            assert [r["bucket"] for r in rows] == sorted(expected[name])
            for row in rows:
                series = expected[name][int(row["bucket"])]
                vals = [v for _, v in series]
                assert row["count"] == len(vals)
                assert (row["min"], row["max"]) == (min(vals), max(vals))
                assert (row["first"], row["last"]) == (vals[0], vals[-1])
                assert math.isclose(row["sum"], sum(vals), rel_tol=1e-9, abs_tol=1e-6)

    if plan.starts:
        runner.run(compare())


AGGS = ("avg", "min", "max", "sum", "count", "first", "last")


def test_sources_cover_the_range_once_coarsest_inside() -> None:
    # Berlin days (boundaries at 23:00 UTC): hours inside, minutes and raw at the edges.
    day = 86_400_000
    boundaries = [day - 3_600_000, 2 * day - 3_600_000]
    start, end = boundaries[0] - 0 + 61_500, boundaries[1]
    sources = service.plan_sources(start, end, boundaries)
    assert [s[0] for s in sources] == [None, rollups.MINUTE, rollups.HOUR]
    assert sources[0][1] == start
    assert all(a[2] == b[1] for a, b in itertools.pairwise(sources))
    assert sources[-1][2] == end
    # Kolkata (+05:30): no hour divides its midnights; minutes do.
    kolkata = [day - 19_800_000, 2 * day - 19_800_000]
    assert {s[0] for s in service.plan_sources(kolkata[0], kolkata[1], kolkata)} == {rollups.MINUTE}


def test_raw_points_gone_after_retention_the_rollups_still_answer(
    loaded: Env, runner: asyncio.Runner
) -> None:
    zone = buckets.zone("UTC")
    start, end = WINDOW[0] - WINDOW[0] % rollups.DAY, WINDOW[1] - WINDOW[1] % rollups.DAY

    async def daily() -> dict[str, list[dict[str, float | int]]]:
        async with loaded.sessions() as session:
            return await service.aggregate(
                session, device_id=DEVICES[0], keys=None, from_ms=start, to_ms=end,
                interval="1d", aggs=AGGS, tz=zone,
            )  # fmt: skip

    before = runner.run(daily())
    assert sum(int(r["count"]) for rows in before.values() for r in rows) > 1000
    deleted = runner.run(service.apply_retention(loaded.sessions, older_than_ms=end))
    assert deleted > 1000
    assert runner.run(daily()) == before


def test_the_migration_builds_rollups_for_points_stored_before_it(
    db_backend: str, tmp_path: Any, runner: asyncio.Runner
) -> None:
    import secrets

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from sensorium import migrate
    from tests.conftest import POSTGRES_ADMIN_URL, _admin_execute

    if db_backend == "sqlite":
        url, name = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", ""
    else:
        name = f"sensorium_mig_{secrets.token_hex(4)}"
        runner.run(_admin_execute(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    points = [(7, 1, BASE + i * 20_011, float(i % 13) - 3.5) for i in range(400)]
    points += [(8, 2, BASE + i * 3_600_001, float(i)) for i in range(60)]

    async def stored() -> dict[rollups.BucketKey, tuple[Any, ...]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(text("SELECT * FROM rollups"))
                return {
                    (r.device, r.key_id, r.grain, r.bucket): (
                        r.vmin, r.vmax, round(r.vsum, 6), r.n,
                        r.first_ts, r.first_value, r.last_ts, r.last_value,
                    )
                    for r in rows
                }  # fmt: skip
        finally:
            await engine.dispose()

    async def point_count() -> int:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return int(await conn.scalar(text("SELECT count(*) FROM points")) or 0)
        finally:
            await engine.dispose()

    async def insert_old_points() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO points (device, key_id, ts, value) VALUES (:d, :k, :t, :v)"),
                    [{"d": d, "k": k, "t": t, "v": v} for d, k, t, v in points],
                )
        finally:
            await engine.dispose()

    try:
        migrate.upgrade(url, "0003")
        runner.run(insert_old_points())
        migrate.upgrade(url)
        expected = {
            key: (
                s.vmin, s.vmax, round(s.vsum, 6), s.n,
                s.first_ts, s.first_value, s.last_ts, s.last_value,
            )
            for key, s in rollups.increments(((d, k, t), v) for d, k, t, v in points).items()
        }  # fmt: skip
        assert runner.run(stored()) == expected
        assert runner.run(point_count()) == len(points)  # kept through 0005 (partitions)
    finally:
        if name:
            runner.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
