"""The per-day cache (`energy_days`): whole UTC days read from it give exactly what the
hour-by-hour path gives, and a changed reading sends its day back to the hours."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from sensorium.energy import meters, service
from sensorium.energy.models import EnergyDay, EnergyHour
from sensorium.protocol import Reading
from sensorium.telemetry.models import Point
from tests.energy.conftest import HOUR, get, ms, store
from tests.helpers import Api

DAY = 24 * HOUR


async def _count_days(api: Api) -> int:
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(EnergyDay)) or 0)


async def _forget(api: Api) -> None:
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session, session.begin():
        await session.execute(delete(EnergyDay))
        await session.execute(delete(EnergyHour))


def _figures(body: dict[str, Any]) -> list[tuple[float, int]]:
    return [(row["kwh"], row["missing_ms"]) for row in body["rows"]]


async def test_cached_days_give_the_hourly_figures_and_follow_changes(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    rng = random.Random(7)
    start = ms("2026-06-09T22:00:00+00:00")
    gap = (ms("2026-06-11T09:03:00+00:00"), ms("2026-06-11T09:40:00+00:00"))
    data = [
        Reading(ts=t, key="power", value=rng.uniform(100.0, 3000.0))
        for t in range(start, start + 3 * DAY + 4 * HOUR, 30_000)
        if not gap[0] <= t < gap[1]
    ]
    await store(api, device, data)
    day0 = ms("2026-06-10T00:00:00+00:00")
    series = {"device": device.id, "interval": "1h", "tz": "UTC",
              "from": str(day0), "to": str(day0 + 3 * DAY)}  # fmt: skip
    summary = {"device": device.id, "period": "week", "tz": "Europe/Berlin",
               "at": "2026-06-13T01:30:00+00:00"}  # fmt: skip

    cold = await get(api, "/api/v1/energy/series", owner.headers, **series)
    assert await _count_days(api) == 3
    warm = await get(api, "/api/v1/energy/series", owner.headers, **series)
    assert _figures(warm) == [pytest.approx(f) for f in _figures(cold)]
    assert cold["missing"]
    assert warm["missing"] == cold["missing"]
    week = await get(api, "/api/v1/energy/summary", owner.headers, **summary)
    week_again = await get(api, "/api/v1/energy/summary", owner.headers, **summary)
    assert week_again["current"]["kwh"] == pytest.approx(week["current"]["kwh"], rel=1e-12)
    assert week_again["hourly_profile"] == pytest.approx(week["hourly_profile"], rel=1e-12)

    # A reading of the second day changes: that day is read hour by hour again.
    changed = ms("2026-06-11T15:20:00+00:00")
    await store(api, device, [Reading(ts=changed, key="power", value=9000.0)])
    after = await get(api, "/api/v1/energy/series", owner.headers, **series)
    index = (changed - day0) // HOUR
    assert after["rows"][index]["kwh"] > cold["rows"][index]["kwh"]
    await _forget(api)
    fresh = await get(api, "/api/v1/energy/series", owner.headers, **series)
    assert _figures(after) == [pytest.approx(f) for f in _figures(fresh)]
    week_fresh = await get(api, "/api/v1/energy/summary", owner.headers, **summary)
    again = await get(api, "/api/v1/energy/summary", owner.headers, **summary)
    assert again["current"]["kwh"] == pytest.approx(week_fresh["current"]["kwh"], rel=1e-12)
    assert again["meters"] == week_fresh["meters"]


@pytest.mark.parametrize("key", ["power", "energy"])
async def test_hours_summed_by_the_database_equal_the_point_by_point_walk(
    api: Api, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    rng = random.Random(11)
    start = ms("2026-06-10T00:00:00+00:00")
    value, data = 50.0, []
    for t in range(start, start + 30 * HOUR, 20_000):
        if rng.random() < 0.002:
            t += 40 * 60_000  # now and then a gap longer than the limit
        value = rng.uniform(0.0, 4000.0) if key == "power" else value + rng.uniform(0.0, 0.02)
        if key == "energy" and rng.random() < 0.001:
            value = 0.01  # a reboot resets the counter
        data.append(Reading(ts=t, key=key, value=value))
    await store(api, device, data)
    params = {"device": device.id, "interval": "1h", "tz": "UTC",
              "from": str(start), "to": str(start + 30 * HOUR)}  # fmt: skip
    bulk = await get(api, "/api/v1/energy/series", owner.headers, **params)
    await _forget(api)
    monkeypatch.setattr("sensorium.energy.meters.BULK_HOURS", 10**9)
    walked = await get(api, "/api/v1/energy/series", owner.headers, **params)
    assert _figures(bulk) == [pytest.approx(f, rel=1e-9) for f in _figures(walked)]
    assert bulk["missing"] == walked["missing"]


async def test_precompute_fills_the_caches_for_every_site(api: Api) -> None:
    owner = await api.account()
    mains, sub = await api.device(owner), await api.device(owner)
    start = ms("2026-06-10T00:00:00+00:00")
    for device, watts in ((mains, 2000.0), (sub, 500.0)):
        await store(api, device, [Reading(ts=t, key="power", value=watts)
                                  for t in range(start, start + 3 * DAY, 60_000)])  # fmt: skip
    r = await api.client.post("/api/v1/energy/sites", headers=owner.headers,
                              json={"name": "Home", "mains": mains.id, "submeters": [sub.id]})  # fmt: skip
    assert r.status_code == 201, r.text
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    stored = await service.precompute(sessions, now_ms=start + 3 * DAY + HOUR, days=5)
    assert stored > 0
    assert await _count_days(api) == 3 * 2
    body = await get(api, "/api/v1/energy/summary", owner.headers, site=r.json()["id"],
                     period="week", at=str(start + 2 * DAY), tz="UTC")  # fmt: skip
    assert body["current"]["kwh"] == pytest.approx(2.0 * 24 * 2)
    assert body["unmetered_kwh"] == pytest.approx(1.5 * 24 * 2)


async def test_hours_cut_by_slot_edges_read_for_all_meters_at_once_or_one_by_one(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tariff window off the hour cuts two hours a day; the summary ends mid-hour. Their
    # raw points are read for all meters in one statement, or per meter when there are many:
    # the figures are the same, each meter's own.
    owner = await api.account()
    devices = [await api.device(owner) for _ in range(3)]
    rng = random.Random(5)
    start = ms("2026-06-08T00:00:00+00:00")
    gap = (ms("2026-06-09T06:40:00+00:00"), ms("2026-06-09T07:20:00+00:00"))
    for index, device in enumerate(devices):
        data = []
        for t in range(start, start + 3 * DAY, 30_000):
            if index == 1 and gap[0] <= t < gap[1]:
                continue  # a gap across the window's end
            data.append(Reading(ts=t, key="power", value=100.0 * (index + 1) + rng.uniform(0, 50)))
        await store(api, device, data)
    r = await api.client.post("/api/v1/energy/sites", headers=owner.headers, json={
        "name": "Home", "mains": devices[0].id, "submeters": [d.id for d in devices[1:]]})  # fmt: skip
    assert r.status_code == 201, r.text
    site = r.json()["id"]
    tariff = {"currency": "EUR", "price_per_kwh": 0.30, "standing_charge_per_day": 0.0,
              "windows": [{"start": "06:30", "end": "07:15", "price_per_kwh": 0.10}]}  # fmt: skip
    r = await api.client.put(f"/api/v1/energy/sites/{site}/tariff", json=tariff,
                             headers=owner.headers)  # fmt: skip
    assert r.status_code == 200, r.text
    params = {"site": site, "period": "week", "tz": "UTC", "at": "2026-06-10T17:42:10+00:00"}
    read_together: list[int] = []
    cut_hour_points = meters._cut_hour_points

    async def spy(*args: Any) -> dict[int, Any]:
        out = await cut_hour_points(*args)
        read_together.append(len(out))
        return out

    monkeypatch.setattr(meters, "_cut_hour_points", spy)
    together = await get(api, "/api/v1/energy/summary", owner.headers, **params)
    # The current week's: every meter's (on PostgreSQL the previous week, without cut
    # hours, is read at the same time and may finish first).
    assert sorted(read_together)[-1:] == [3]
    await _forget(api)
    monkeypatch.setattr(meters, "CUT_HOURS_AT_ONCE", 0)
    read_together.clear()
    apart = await get(api, "/api/v1/energy/summary", owner.headers, **params)
    assert read_together
    assert not any(read_together)
    assert [m["kwh"] for m in together["meters"]] == [m["kwh"] for m in apart["meters"]]
    assert len({m["kwh"] for m in together["meters"]}) == 3
    assert together["current"] == apart["current"]
    assert together["unmetered_kwh"] == apart["unmetered_kwh"]
    assert [m["missing"] for m in together["meters"]] == [m["missing"] for m in apart["meters"]]
    assert together["meters"][1]["missing"]  # the gap


async def test_a_range_ending_mid_hour_reads_no_points_past_its_end_yet_tells_gone_points(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hour holding the range's end: its points past the end are not read (all meters
    # at once), yet the hour's count still tells when its raw points are no longer all
    # there; meter by meter (every point read) gives the same figures.
    owner = await api.account()
    device = await api.device(owner)
    rng = random.Random(23)
    start = ms("2026-06-08T00:00:00+00:00")
    data = [Reading(ts=t, key="power", value=rng.uniform(100.0, 900.0))
            for t in range(start, start + 3 * DAY, 20_000)]  # fmt: skip
    await store(api, device, data)
    end = ms("2026-06-10T13:37:10+00:00")
    params = {"device": device.id, "interval": "1h", "tz": "UTC",
              "from": str(start), "to": str(end)}  # fmt: skip
    read: list[dict[int, Any]] = []
    cut_hour_points = meters._cut_hour_points

    async def spy(*args: Any) -> dict[int, Any]:
        out = await cut_hour_points(*args)
        read.append(out)
        return out

    monkeypatch.setattr(meters, "_cut_hour_points", spy)

    async def both() -> tuple[Any, Any]:
        await _forget(api)
        monkeypatch.setattr(meters, "CUT_HOURS_AT_ONCE", 96)
        together = await get(api, "/api/v1/energy/series", owner.headers, **params)
        await _forget(api)
        monkeypatch.setattr(meters, "CUT_HOURS_AT_ONCE", 0)
        apart = await get(api, "/api/v1/energy/series", owner.headers, **params)
        return together, apart

    together, apart = await both()
    (points,) = read[0].values()
    assert max(ts for ts, _v in points.points) < end
    assert list(points.counts.values()) == [180]  # 13:00-14:00 every 20 s
    assert together == apart
    assert together["rows"][-1]["kwh"] > 0
    # The hour's points past the end go (as retention would take them): its rollup
    # stands in, whichever way its points are read.
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session, session.begin():
        await session.execute(delete(Point).where(Point.ts >= end + 60_000))
    exact = together["rows"][-1]["kwh"]
    together, apart = await both()
    assert together == apart
    assert together["rows"][:-1] == apart["rows"][:-1]
    assert together["rows"][-1]["kwh"] != exact
    assert together["rows"][-1]["kwh"] == pytest.approx(exact, rel=0.2)


async def test_previous_period_read_alongside_with_the_same_figures_and_cache(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a summary reads the previous period on a second session while the
    # current one is read; on SQLite both on the request's session. Either way the figures
    # and the hours stored afterwards are those of reading one period after the other.
    owner = await api.account()
    devices = [await api.device(owner) for _ in range(2)]
    rng = random.Random(11)
    start = ms("2026-06-01T00:00:00+00:00")
    for index, device in enumerate(devices):
        data = [
            Reading(ts=t, key="power", value=200.0 * (index + 1) + rng.uniform(0, 80))
            for t in range(start, start + 12 * DAY, 60_000)
        ]
        await store(api, device, data)
    r = await api.client.post("/api/v1/energy/sites", headers=owner.headers, json={
        "name": "Home", "mains": devices[0].id, "submeters": [devices[1].id]})  # fmt: skip
    assert r.status_code == 201, r.text
    params = {"site": r.json()["id"], "period": "week", "tz": "Europe/Berlin",
              "at": "2026-06-11T17:42:10+00:00"}  # fmt: skip
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session:
        pg = (await session.connection()).dialect.name == "postgresql"
        this_week = ms("2026-06-07T22:00:00+00:00")  # Monday 00:00 in Berlin

    async def stored_hours() -> list[tuple[int, int, int]]:
        async with sessions() as session:
            rows = await session.execute(
                select(EnergyHour.device, EnergyHour.key_id, EnergyHour.hour).order_by(
                    EnergyHour.device, EnergyHour.key_id, EnergyHour.hour
                )
            )
            return [tuple(row) for row in rows]

    used: list[tuple[int, int]] = []  # (session, first cut) per period read
    scope_energy = service.scope_energy

    async def spy(session: Any, **kwargs: Any) -> service.ScopeEnergy:
        used.append((id(session), kwargs["cuts"][0]))
        return await scope_energy(session, **kwargs)

    monkeypatch.setattr(service, "scope_energy", spy)
    alongside = await get(api, "/api/v1/energy/summary", owner.headers, **params)
    assert sorted(cut for _s, cut in used) == [this_week - 7 * DAY, this_week]
    assert (used[0][0] != used[1][0]) is pg
    hours = await stored_hours()
    assert any(hour < this_week for _d, _k, hour in hours)
    assert any(hour >= this_week for _d, _k, hour in hours)

    async def one_after_the_other(session: Any, first: Any, second: Any) -> tuple[Any, Any]:
        one = await first()
        return one, await second(session)

    await _forget(api)
    monkeypatch.setattr(service, "_alongside", one_after_the_other)
    used.clear()
    apart = await get(api, "/api/v1/energy/summary", owner.headers, **params)
    assert used[0][0] == used[1][0]
    assert await stored_hours() == hours
    alongside.pop("now")
    apart.pop("now")
    assert alongside == apart
    assert alongside["previous"]["kwh"] > 0
    assert alongside["peak"] is not None


async def test_alongside_stops_the_other_read_when_one_fails(api: Api) -> None:
    # When one of the two reads fails, the other is not left running on its connection
    # (PostgreSQL), and the error reaches the caller on either database.
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    events: list[str] = []

    async def slow() -> int:
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            events.append("first cancelled")
            raise
        events.append("first done")
        return 1

    async def failing(session: Any) -> int:
        await session.execute(select(func.count()).select_from(EnergyDay))
        raise ValueError("no")

    async with sessions() as session:
        pg = (await session.connection()).dialect.name == "postgresql"
        with pytest.raises(ValueError, match="no"):
            await service._alongside(session, slow, failing)
        assert events == (["first cancelled"] if pg else ["first done"])
        assert await session.scalar(select(func.count()).select_from(EnergyDay)) == 0
