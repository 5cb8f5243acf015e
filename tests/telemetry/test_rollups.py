"""Rollups stay exactly the aggregation of the raw points, whatever arrives: new points,
out-of-order backfills, overwrites with other values, identical re-sends, small batches
(multi-row upsert) and large ones (PostgreSQL COPY path). A hypothesis property test,
run on SQLite and PostgreSQL (`--db=postgresql`)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sensorium.config import Settings
from sensorium.db import create_engine, session_factory
from sensorium.devices.models import Device
from sensorium.protocol import Reading, mac_to_int
from sensorium.telemetry import rollups
from sensorium.telemetry.models import LatestValue, Point, Rollup
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
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner


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
            (await session.execute(select(Point.device, Point.key_id, Point.ts, Point.value))).all()
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
    max_examples=200,
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


def test_the_postgresql_statement_lists_the_grains() -> None:
    listed = re.search(r"VALUES \(([0-9), (]+)\) AS g\(grain\)", rollups.PG_MERGE)
    assert listed is not None
    assert tuple(int(g) for g in re.findall(r"\d+", listed.group(1))) == rollups.GRAINS


def test_device_ids_are_distinct_integers() -> None:
    assert len({mac_to_int(d) for d in DEVICES}) == len(DEVICES)
