"""The scheduler turns silent devices offline and records the transition."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from sensorium.devices.models import Device
from sensorium.protocol import Reading
from sensorium.telemetry.models import Point
from sensorium.telemetry.partitions import WEEK, existing, week_of
from sensorium.worker.scheduler import Scheduler
from tests.helpers import Api


async def test_silent_devices_go_offline_once(api: Api) -> None:
    owner = await api.account()
    talking = await api.device(owner)
    silent = await api.device(owner)
    for device in (talking, silent):
        assert (await api.send(device, {"t": 1})).status_code == 202
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session, session.begin():
        await session.execute(
            update(Device)
            .where(Device.id == silent.id)
            .values(offline_at_ms=int(time.time() * 1000) - 1)
        )
    scheduler = Scheduler(sessions)
    assert await scheduler.run_once() == [silent.id]
    assert await scheduler.run_once() == []
    r = await api.client.get(f"/api/v1/devices/{silent.id}/status/history", headers=owner.headers)
    assert [(e["online"], e["reason"]) for e in r.json()] == [(False, "timeout"), (True, "data")]
    r = await api.client.get("/api/v1/devices", params={"status": "offline"}, headers=owner.headers)
    assert [d["id"] for d in r.json()["items"]] == [silent.id]
    # Data brings it back.
    assert (await api.send(silent, {"t": 2})).status_code == 202
    r = await api.client.get(f"/api/v1/devices/{silent.id}/status/history", headers=owner.headers)
    newest = r.json()[0]
    assert (newest["online"], newest["reason"]) == (True, "data")


async def test_retention_deletes_only_raw_points_older_than_the_window(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    now = int(time.time() * 1000)
    day = 86_400_000
    writer = api.client.app.state.ctx.writer  # type: ignore[attr-defined]
    await writer.write(
        device.id, [Reading(ts=now - d * day, key="t", value=float(d)) for d in range(0, 100, 3)]
    )
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    scheduler = Scheduler(sessions, retention_days=30)
    await scheduler.apply_retention()
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry", params={"limit": 1000}, headers=owner.headers
    )
    assert sorted(p["value"] for p in r.json()["points"]) == [float(d) for d in range(0, 30, 3)]
    assert await scheduler.apply_retention() == 0


async def test_postgresql_points_are_partitioned_by_week_and_retention_drops_partitions(
    api: Api,
) -> None:
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session:
        conn = await session.connection()
        if conn.dialect.name != "postgresql":
            pytest.skip("partitions are a PostgreSQL feature; SQLite deletes by range")
    owner = await api.account()
    device = await api.device(owner)
    now = int(time.time() * 1000)
    day = 86_400_000
    writer = api.client.app.state.ctx.writer  # type: ignore[attr-defined]
    # A backfill reaching 60 days back: its weeks get partitions on demand.
    await writer.write(
        device.id, [Reading(ts=now - d * day, key="t", value=float(d)) for d in range(60)]
    )
    weeks = {week_of(now - d * day) for d in range(60)}
    async with sessions() as session:
        assert weeks <= await existing(await session.connection())
    scheduler = Scheduler(sessions, retention_days=30)
    await scheduler.apply_retention()
    cutoff = now - 30 * day
    async with sessions() as session:
        remaining = await existing(await session.connection())
        kept = sorted(await session.scalars(select(Point.ts).order_by(Point.ts)))
    assert all((w + 1) * WEEK > cutoff for w in remaining)
    assert {w for w in weeks if (w + 1) * WEEK <= cutoff}.isdisjoint(remaining)
    # Partitions for the coming weeks were made ahead.
    assert {week_of(now) + 1, week_of(now) + 2} <= remaining
    assert kept == sorted(now - d * day for d in range(30))  # day 30 is just past the cutoff
    # The daily rollups still cover the dropped days.
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry",
        params={"from": str(now - 60 * day), "to": str(now + 1), "interval": "1d",
                "agg": "count"},
        headers=owner.headers,
    )  # fmt: skip
    assert sum(row["count"] for row in r.json()["series"]["t"]) == 60
