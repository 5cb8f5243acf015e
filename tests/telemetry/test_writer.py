"""The batching writer: group commit, all-or-nothing documents, isolation of failures."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from sensorium.config import Settings
from sensorium.db import create_engine, session_factory
from sensorium.devices.models import Device
from sensorium.errors import NotFound
from sensorium.protocol import Reading, mac_to_int
from sensorium.telemetry import rollups
from sensorium.telemetry import writer as writer_module
from sensorium.telemetry.models import LatestValue, Point, Rollup, Series
from sensorium.telemetry.writer import BatchWriter, Points, Unstorable
from sensorium.users.models import User


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Any]:
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        user = User(username="w", password_hash="x")
        session.add(user)
        await session.flush()
        for i in range(3):
            session.add(Device(id=f"02000000000{i}", owner_id=user.id, name=f"d{i}", info={}))
    yield sessions
    await engine.dispose()


def readings(n: int, *, key: str = "t", start: int | None = None) -> list[Reading]:
    start = start if start is not None else int(time.time() * 1000) - n
    return [Reading(ts=start + i, key=key, value=float(i)) for i in range(n)]


async def count(sessions: Any, model: type) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def count_writes(writer: BatchWriter) -> list[int]:
    """Counts the writer's transactions (calls of its `_write`) in the list's one item."""
    calls = [0]
    original = writer._write

    async def counting(jobs: Any) -> tuple[set[str], list[str], bool]:
        calls[0] += 1
        return await original(jobs)

    writer._write = counting  # type: ignore[method-assign]
    return calls


async def test_concurrent_documents_are_group_committed(env: Any) -> None:
    writer = BatchWriter(env, offline_after_s=60)
    flushes = count_writes(writer)
    await writer.start()
    results = await asyncio.gather(
        *(writer.write(f"02000000000{i % 3}", readings(10, key=f"k{i}")) for i in range(60))
    )
    await writer.stop()
    assert results == [10] * 60
    assert await count(env, Point) == 600
    # 60 documents queued at once need far fewer than 60 transactions.
    assert flushes[0] < 10


def _poison(writer: BatchWriter, device_id: str) -> None:
    """Make every batch holding `device_id`'s points fail to store."""
    original = writer._store

    async def poisoned(session: Any, points: Points) -> None:
        if any(points.owners[s][0] == mac_to_int(device_id) for s in points.series):
            raise RuntimeError("disk on fire")
        await original(session, points)

    writer._store = poisoned  # type: ignore[method-assign]


async def test_a_failing_document_does_not_take_others_down(env: Any) -> None:
    writer = BatchWriter(env, offline_after_s=60)
    _poison(writer, "020000000001")
    await writer.start()
    good = writer.submit("020000000000", readings(5))
    bad = writer.submit("020000000001", readings(5))
    also_good = writer.submit("020000000002", readings(5))
    assert await good == 5
    assert await also_good == 5
    with pytest.raises(RuntimeError, match="disk on fire"):
        await bad
    await writer.stop()
    async with env() as session:
        devices = set(
            await session.scalars(
                select(Series.device).join(Point, Point.series == Series.id).distinct()
            )
        )
    assert devices == {mac_to_int("020000000000"), mac_to_int("020000000002")}


async def test_enqueued_documents_are_answered_once_through_their_callbacks(env: Any) -> None:
    """MQTT ingest's way in: a callback per document instead of a future, called once with
    the count or the error, next to documents with futures, a failure isolated the same."""
    writer = BatchWriter(env, offline_after_s=60)
    _poison(writer, "020000000001")
    outcomes: dict[str, list[int | BaseException]] = {}

    told: list[tuple[str, int, Any]] = []

    def record(name: str) -> Any:
        def done(result: int | BaseException, device_id: str, docs: Any, tag: Any) -> None:
            outcomes.setdefault(name, []).append(result)
            told.append((device_id, len(docs), tag))

        return done

    def raising(_result: int | BaseException, *_: Any) -> None:
        raise ValueError("a broken callback")

    await writer.start()
    writer.enqueue("020000000000", readings(4), record("good"), "the tag")
    writer.enqueue("020000000001", readings(4), record("bad"))
    future = writer.submit("020000000002", readings(3))
    writer.enqueue("0200000000ff", readings(2), record("unknown"))
    writer.enqueue("020000000002", readings(2, key="h"), raising)  # the writer goes on
    writer.enqueue("020000000000", readings(1, key="h"), record("after"))
    assert await future == 3
    await writer.stop()
    assert outcomes["good"] == [4]
    assert told[0] == ("020000000000", 4, "the tag")
    assert outcomes["after"] == [1]
    [bad] = outcomes["bad"]
    assert isinstance(bad, RuntimeError)
    [unknown] = outcomes["unknown"]
    assert isinstance(unknown, NotFound)
    assert await count(env, Point) == 4 + 3 + 2 + 1


async def test_lanes_write_disjoint_devices_at_once_each_device_in_order(env: Any) -> None:
    """Two lanes: two transactions at a time, never one device in both, and each device's
    documents committed in the order they were queued."""
    writer = BatchWriter(env, offline_after_s=60, lanes=2, max_batch=20)
    original = writer._write
    running: list[set[str]] = []
    overlapped = 0
    committed: dict[str, list[int]] = {}

    async def slow(jobs: Any) -> tuple[set[str], list[str], bool]:
        nonlocal overlapped
        devices = {job.device_id for job in jobs}
        for other in running:
            assert not devices & other, "a device in two transactions at once"
            overlapped += 1
        running.append(devices)
        try:
            await asyncio.sleep(0.02)
            result = await original(jobs)
        finally:
            running.remove(devices)
        for job in jobs:
            committed.setdefault(job.device_id, []).append(job.readings[0].ts)
        return result

    writer._write = slow  # type: ignore[method-assign]
    await writer.start()
    start = int(time.time() * 1000) - 10_000
    futures = [
        writer.submit(f"02000000000{i % 3}", readings(5, start=start + 10 * i)) for i in range(60)
    ]
    await writer.stop()
    assert [f.result() for f in futures] == [5] * 60
    assert await count(env, Point) == 300
    assert overlapped > 0
    for i in range(3):
        assert committed[f"02000000000{i}"] == [start + 10 * n for n in range(i, 60, 3)]


async def test_readings_of_a_deleted_device_are_dropped(env: Any) -> None:
    writer = BatchWriter(env, offline_after_s=60)
    await writer.start()
    with pytest.raises(NotFound):
        await writer.write("0200000000ff", readings(3))
    await writer.stop()
    assert await count(env, Point) == 0
    assert await count(env, LatestValue) == 0


async def test_stop_drains_the_queue(env: Any) -> None:
    writer = BatchWriter(env, offline_after_s=60, max_batch=7)
    await writer.start()
    futures = [writer.submit("020000000000", readings(5, key=f"k{i}")) for i in range(20)]
    await writer.stop()
    assert all(f.done() and f.result() == 5 for f in futures)
    assert await count(env, Point) == 100


async def test_a_document_is_never_split_across_transactions(env: Any) -> None:
    batches: list[int] = []
    writer = BatchWriter(env, offline_after_s=60, max_batch=10)
    original = writer._store

    async def recording(session: Any, points: Points) -> None:
        batches.append(len(points))
        await original(session, points)

    writer._store = recording  # type: ignore[method-assign]
    await writer.start()
    await asyncio.gather(
        *(writer.write("020000000000", readings(25, key=f"k{i}")) for i in range(3))
    )
    await writer.stop()
    assert all(size % 25 == 0 for size in batches)
    assert sum(batches) == 75


async def test_latest_tracks_the_newest_timestamp_and_marks_online(env: Any) -> None:
    writer = BatchWriter(env, offline_after_s=60)
    await writer.start()
    now = int(time.time() * 1000)
    await writer.write("020000000000", [Reading(ts=now, key="t", value=5.0)])
    await writer.write("020000000000", [Reading(ts=now - 1000, key="t", value=1.0)])
    await writer.write("020000000000", [Reading(ts=now, key="t", value=6.0)])
    await writer.stop()
    async with env() as session:
        latest = await session.scalar(select(LatestValue))
        device = await session.get(Device, "020000000000")
    assert latest is not None
    assert (latest.ts, latest.value) == (now, 6.0)
    assert device is not None
    assert device.status == "online"
    assert device.offline_at_ms is not None
    assert device.offline_at_ms >= now + 59_000


async def test_large_batches_overwrite_and_keep_latest_newest(env: Any) -> None:
    """Batches past COPY_THRESHOLD take the bulk path on PostgreSQL; same semantics."""
    writer = BatchWriter(env, offline_after_s=60)
    await writer.start()
    start = int(time.time() * 1000) - 10_000
    first = [Reading(ts=start + i, key="p", value=1.0) for i in range(500)]
    # Half the same timestamps again with new values, plus older backfill.
    second = [Reading(ts=start + i, key="p", value=2.0) for i in range(250, 500)]
    second += [Reading(ts=start - 1000 - i, key="p", value=3.0) for i in range(250)]
    assert await writer.write("020000000000", first) == 500
    assert await writer.write("020000000000", second) == 500
    await writer.stop()
    async with env() as session:
        values = dict((await session.execute(select(Point.ts, Point.value))).all())
        latest = await session.scalar(select(LatestValue))
    assert len(values) == 750
    assert values[start + 10] == 1.0
    assert values[start + 400] == 2.0
    assert values[start - 1000] == 3.0
    assert latest is not None
    assert (latest.ts, latest.value) == (start + 499, 2.0)


async def test_a_document_the_database_refuses_for_its_data_fails_as_unstorable(
    env: Any, settings: Settings
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite stores a float overflow as infinity: it refuses no value")
    writer = BatchWriter(env, offline_after_s=60)
    await writer.start()
    ts = int(time.time() * 1000) - 1000
    # Past the protocol's limit (the writer does not check it): the second one overflows
    # the minute rollup's sum, which PostgreSQL refuses ("value out of range").
    assert await writer.write("020000000000", [Reading(ts, "v", 1.7e308)]) == 1
    with pytest.raises(Unstorable, match="value out of range") as caught:
        await writer.write("020000000000", [Reading(ts + 1, "v", 1.7e308)])
    assert caught.value.code == "unstorable"
    # Other documents are stored as before.
    assert await writer.write("020000000001", readings(3)) == 3
    await writer.stop()
    assert await count(env, Point) == 4


async def test_a_redelivered_batch_falls_back_to_the_merge_and_the_later_value_wins(
    env: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's COPY path copies straight into `points` and falls back to the staged
    merge only when a point is already stored (a redelivery); both keep the points free of
    duplicates, the rollups exact and latest_values the newest."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("the COPY path is PostgreSQL's")
    fallbacks: list[int] = []
    original = writer_module._staged_store

    async def counting(session: Any, driver: Any, count: int) -> None:
        fallbacks.append(count)
        await original(session, driver, count)

    monkeypatch.setattr(writer_module, "_staged_store", counting)
    writer = BatchWriter(env, offline_after_s=60)
    await writer.start()
    start = int(time.time() * 1000) - 100_000
    device = "020000000000"

    def entries(first: int, last: int, value: float) -> list[Reading]:
        return [Reading(start + i * 97, k, value + i) for i in range(first, last) for k in "pq"]

    assert await writer.write(device, entries(0, 300, 1.0)) == 600
    assert fallbacks == []  # all new: straight into points
    # Redelivered with later values for a third of them, plus new ones.
    assert await writer.write(device, entries(200, 400, 5.0)) == 400
    assert fallbacks == [400]
    # The connection is fine after the rolled-back COPY: the next new batch copies again.
    assert await writer.write(device, entries(400, 500, 9.0)) == 200
    assert fallbacks == [400]
    await writer.stop()

    want = {start + i * 97: (1.0 if i < 200 else 5.0 if i < 400 else 9.0) + i for i in range(500)}
    async with env() as session:
        stored = list(
            await session.execute(
                select(Series.device, Series.key_id, Point.ts, Point.value).join(
                    Series, Series.id == Point.series
                )
            )
        )
        latest = list(await session.execute(select(LatestValue.ts, LatestValue.value)))
        rows = {
            (r.device, r.key_id, r.grain, r.bucket): r
            for r in (await session.scalars(select(Rollup))).all()
        }
    assert len(stored) == 1000  # no duplicates
    for key_id in {row.key_id for row in stored}:
        assert {row.ts: row.value for row in stored if row.key_id == key_id} == want
    last = start + 499 * 97
    assert sorted(latest) == [(last, want[last])] * 2
    # The rollups are the aggregation of what is stored (the overwritten buckets recomputed).
    expected = rollups.increments(((d, k, t), v) for d, k, t, v in stored)
    assert rows.keys() == expected.keys()
    for key, stats in expected.items():
        got = rows[key]
        assert (got.vmin, got.vmax, got.n) == (stats.vmin, stats.vmax, stats.n), key
        assert (got.first_ts, got.first_value, got.last_ts, got.last_value) == (
            stats.first_ts,
            stats.first_value,
            stats.last_ts,
            stats.last_value,
        ), key
        assert math.isclose(got.vsum, stats.vsum, rel_tol=1e-12), key


@pytest.mark.parametrize("size", [20, writer_module.COPY_THRESHOLD])
async def test_documents_of_a_device_sharing_points_in_one_batch_the_later_wins(
    env: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Documents of one device in one batch are checked for shared points by their spans of
    ts: disjoint ones (in order or not) are stored as they are, overlapping ones keep the
    later document's value of a shared point. On PostgreSQL's COPY path the batch is free
    of duplicates before it is staged: it needs no fallback to the merge."""
    fallbacks: list[int] = []
    original_fallback = writer_module._staged_store

    async def counting(session: Any, driver: Any, count: int) -> None:
        fallbacks.append(count)
        await original_fallback(session, driver, count)

    monkeypatch.setattr(writer_module, "_staged_store", counting)
    writer = BatchWriter(env, offline_after_s=60)
    start = int(time.time() * 1000) - 1_000_000
    device = "020000000000"

    def doc(first: int, value: float) -> list[Reading]:
        return [Reading(start + first + i, k, value) for i in range(size // 2) for k in "pq"]

    flushes = count_writes(writer)
    await writer.start()
    # Queued before the writer's task runs: one batch.
    futures = [
        writer.submit(device, doc(1000, 1.0)),
        writer.submit(device, doc(0, 2.0)),  # earlier, disjoint
        writer.submit(device, doc(1000 + size // 4, 3.0)),  # overlaps the first
        writer.submit("020000000001", doc(1000, 4.0)),  # same ts, another device
    ]
    await writer.stop()
    assert [f.result() for f in futures] == [size] * 4
    assert flushes[0] == 1
    want = {start + i: 2.0 for i in range(size // 2)}
    want |= {start + 1000 + i: 1.0 for i in range(size // 4)}
    want |= {start + 1000 + size // 4 + i: 3.0 for i in range(size // 2)}
    async with env() as session:
        stored = list(
            await session.execute(
                select(Series.device, Series.key_id, Point.ts, Point.value).join(
                    Series, Series.id == Point.series
                )
            )
        )
        latest = list(await session.execute(select(LatestValue.ts, LatestValue.value)))
        minutes = {
            (r.device, r.key_id, r.bucket): r.n
            for r in await session.scalars(select(Rollup).where(Rollup.grain == rollups.MINUTE))
        }
    mine = [row for row in stored if row.device == mac_to_int(device)]
    for key_id in {row.key_id for row in mine}:
        assert {row.ts: row.value for row in mine if row.key_id == key_id} == want
    assert len(stored) == 2 * len(want) + size
    last = max(want)
    assert sorted(latest) == sorted([(last, 3.0)] * 2 + [(start + 1000 + size // 2 - 1, 4.0)] * 2)
    # Each point counted once in its bucket.
    assert sum(minutes.values()) == len(stored)
    assert fallbacks == []


async def test_a_full_series_cache_is_emptied_and_writing_goes_on(env: Any) -> None:
    """A batch with cached and new series past the bound: the cache is emptied and
    everything the batch needs looked up again (not failed and retried document by
    document)."""
    writer = BatchWriter(env, offline_after_s=60, series_limit=4)
    writes = count_writes(writer)
    await writer.start()
    now = int(time.time() * 1000) - 10_000
    for round_, devices in enumerate([2, 3]):
        results = await asyncio.gather(
            *(
                writer.write(f"02000000000{d}", [Reading(now + round_, k, 1.0) for k in "abc"])
                for d in range(devices)
            )
        )
        assert results == [3] * devices
    await writer.stop()
    assert writes[0] == 2
    assert await count(env, Point) == 15
    assert await count(env, Series) == 9
