"""The energy issue's acceptance points 1-4: DST days, integration, resets, gaps, time of
use and standing charges, and the unmetered remainder of a site."""

from __future__ import annotations

import math
import random

import pytest

from sensorium.protocol import Reading
from tests.energy.conftest import (
    HOUR,
    MINUTE,
    constant,
    counter,
    daily,
    get,
    ms,
    readings,
    store,
    stored,
)
from tests.helpers import Api

BERLIN = "Europe/Berlin"


@pytest.mark.parametrize("source", ["power", "energy"])
@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # Spring forward on Sunday 29 March: a 23-hour day.
        (
            "2026-03-28T00:00:00+01:00",
            "2026-03-31T00:00:00+02:00",
            {"2026-03-28": 24.0, "2026-03-29": 23.0, "2026-03-30": 24.0},
        ),
        # Fall back on Sunday 25 October: a 25-hour day.
        (
            "2026-10-24T00:00:00+02:00",
            "2026-10-27T00:00:00+01:00",
            {"2026-10-24": 24.0, "2026-10-25": 25.0, "2026-10-26": 24.0},
        ),
    ],
)
async def test_constant_1kw_load_gives_local_day_totals_across_dst(
    api: Api, source: str, start: str, end: str, expected: dict[str, float]
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    first, last = ms(start) - HOUR, ms(end) + HOUR
    if source == "power":
        data = readings("power", first, last, MINUTE, constant(1000.0))
    else:
        data = counter(first, last, MINUTE, 1000.0, at=1234.5)
    await store(api, device, data)
    for _ in range(2):  # computed from the raw points, then from the cached hours
        days = await daily(api, device, start, end, BERLIN)
        assert {d: pytest.approx(r["kwh"], abs=1e-9) for d, r in days.items()} == expected
        assert all(r["missing_ms"] == 0 for r in days.values())
    assert (await stored(api))["energy_hours"] > 70


async def test_summary_compares_with_the_previous_day_at_the_same_local_time(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    data = readings(
        "power", ms("2026-03-28T00:00:00+01:00"), ms("2026-03-31T00:00:00+02:00"), MINUTE,
        constant(1000.0),
    )  # fmt: skip
    await store(api, device, data)
    body = await get(
        api, "/api/v1/energy/summary", owner.headers,
        device=device.id, period="day", at="2026-03-30T12:00:00", tz=BERLIN,
    )  # fmt: skip
    # 30 March 00:00-12:00 is 12 hours; 29 March 00:00-12:00 only 11 (02:00-03:00 skipped).
    assert body["current"]["kwh"] == pytest.approx(12.0)
    assert body["previous"]["kwh"] == pytest.approx(11.0)
    assert body["previous"]["start"] == "2026-03-29T00:00:00.000+01:00"
    assert body["previous"]["end"] == "2026-03-29T12:00:00.000+02:00"
    assert body["change_pct"] == pytest.approx(100.0 / 11.0)
    assert body["meters"][0]["source"] == "power"
    assert body["peak"]["w"] == 1000.0
    assert body["peak"]["at"] == "2026-03-30T00:00:00.000+02:00"
    assert body["base_load_w"] == pytest.approx(1000.0)
    assert body["hourly_profile"][:12] == [pytest.approx(1.0)] * 12
    assert body["hourly_profile"][12:] == [None] * 12
    assert body["current"]["cost"] is None  # no tariff


async def test_power_integration_is_within_one_percent_of_the_analytic_energy(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    start = ms("2026-06-10T06:00:00+00:00")
    span = 12 * HOUR
    rng = random.Random(7)

    def watts(t: int) -> float:  # half a sine wave on a 1 kW base
        return 1000.0 * (1.0 + math.sin(math.pi * (t - start) / span))

    # Irregular sampling, 5-55 s apart, as a real device on Wi-Fi.
    times, t = [], start
    while t <= start + span:
        times.append(t)
        t += rng.randint(5_000, 55_000)
    times.append(start + span)
    await store(api, device, [Reading(ts=x, key="power", value=watts(x)) for x in times])
    analytic_kwh = (span + 2 * span / math.pi) / 3_600_000  # ∫ 1000 (1 + sin) dt, in kWh
    body = await get(
        api, "/api/v1/energy/series", owner.headers,
        device=device.id, interval="1h", tz="UTC",
        **{"from": "2026-06-10T06:00:00+00:00", "to": "2026-06-10T18:00:00+00:00"},
    )  # fmt: skip
    got = sum(r["kwh"] for r in body["rows"])
    assert got == pytest.approx(analytic_kwh, rel=0.01)
    # Each hour, too (the sine's shape shows: the middle hours carry the most).
    for row in body["rows"]:
        a = ms(row["start"])
        hour_kwh = (HOUR + span / math.pi * (
            math.cos(math.pi * (a - start) / span) - math.cos(math.pi * (a + HOUR - start) / span)
        )) / 3_600_000  # fmt: skip
        assert row["kwh"] == pytest.approx(hour_kwh, rel=0.01)
    assert body["missing"] == []


async def test_a_late_reading_changes_a_cached_hour(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    start = ms("2026-06-10T00:00:00+00:00")
    # 1 kW, then from 10:30 a reading every 10 minutes... with one at 10:35 missing.
    data = readings("power", start, start + 3 * HOUR, 5 * MINUTE, constant(1000.0))
    data = [r for r in data if r.ts != start + HOUR + 35 * MINUTE]
    await store(api, device, data)
    params = {"device": device.id, "interval": "1h", "tz": "UTC",
              "from": str(start), "to": str(start + 3 * HOUR)}  # fmt: skip
    before = await get(api, "/api/v1/energy/series", owner.headers, **params)
    assert [r["kwh"] for r in before["rows"]] == pytest.approx([1.0, 1.0, 1.0])
    # The missing reading arrives late with 4 kW: 10:30-10:40 now averages 2.5 kW.
    await store(api, device, [Reading(ts=start + HOUR + 35 * MINUTE, key="power", value=4000.0)])
    after = await get(api, "/api/v1/energy/series", owner.headers, **params)
    extra = (4000.0 - 1000.0) / 2 * (10 * MINUTE) / 3_600_000 / 1000  # two 5-min trapezoids
    assert [r["kwh"] for r in after["rows"]] == pytest.approx([1.0, 1.0 + extra, 1.0])


async def test_a_counter_that_resets_mid_day_gives_the_right_daily_total(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    day = ms("2026-06-10T00:00:00+02:00")
    # 500 W on a counter at 812.3 kWh, read every 30 s; the device reboots right after its
    # 13:07 reading and counts from 0 again.
    reboot = day + 13 * HOUR + 7 * MINUTE
    before = counter(day - HOUR, reboot, 30_000, 500.0, at=812.3)
    after = counter(reboot, day + 25 * HOUR, 30_000, 500.0, at=0.0)
    # The first reading after the reboot already holds the 30 s of energy since it.
    after = [Reading(ts=r.ts + 30_000, key=r.key, value=r.value + 500 * 30 / 3600 / 1000)
             for r in after]  # fmt: skip
    await store(api, device, before + after)
    days = await daily(api, device, "2026-06-10", "2026-06-11", BERLIN)
    assert days["2026-06-10"]["kwh"] == pytest.approx(12.0, abs=1e-6)
    assert days["2026-06-10"]["missing_ms"] == 0
    body = await get(
        api, "/api/v1/energy/summary", owner.headers,
        device=device.id, period="day", at="2026-06-10T18:00:00", tz=BERLIN,
    )  # fmt: skip
    assert body["current"]["kwh"] == pytest.approx(9.0, abs=1e-6)
    assert body["meters"][0]["source"] == "energy"
    # No power readings: the peak is the highest hourly average.
    assert body["peak"]["kind"] == "slot_average"
    assert body["peak"]["w"] == pytest.approx(500.0)


async def test_a_two_hour_gap_is_reported_missing_not_filled(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    day = ms("2026-06-10T00:00:00+00:00")
    data = readings("power", day - HOUR, day + 25 * HOUR, MINUTE, constant(1000.0))
    gap_from, gap_to = day + 10 * HOUR, day + 12 * HOUR
    await store(api, device, [r for r in data if not gap_from < r.ts < gap_to])
    body = await get(
        api, "/api/v1/energy/series", owner.headers,
        device=device.id, interval="1h", tz="UTC", **{"from": str(day), "to": str(day + 86_400_000)},
    )  # fmt: skip
    rows = body["rows"]
    assert sum(r["kwh"] for r in rows) == pytest.approx(22.0)
    assert [r["kwh"] for r in rows[10:12]] == [0.0, 0.0]
    assert [r["missing_ms"] for r in rows[9:13]] == [0, HOUR, HOUR, 0]
    assert [(m["start_ms"], m["end_ms"]) for m in body["missing"]] == [(gap_from, gap_to)]
    summary = await get(
        api, "/api/v1/energy/summary", owner.headers,
        device=device.id, period="day", at=str(day + 86_400_000 - 1), tz="UTC",
    )  # fmt: skip
    assert summary["current"]["missing"][0]["start"] == "2026-06-10T10:00:00.000+00:00"
    assert summary["current"]["kwh"] == pytest.approx(22.0 - 1 / 60_000, abs=1e-3)
    # A longer gap limit on the site bridges it (the device is now a site's meter).
    r = await api.client.post(
        "/api/v1/energy/sites",
        json={"name": "lab", "mains": device.id, "max_gap_s": 3 * 3600},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    bridged = await daily(api, device, "2026-06-10T00:00:00Z", "2026-06-11T00:00:00Z", "UTC")
    assert bridged["2026-06-10"]["kwh"] == pytest.approx(24.0)
    assert bridged["2026-06-10"]["missing_ms"] == 0


async def test_time_of_use_prices_each_window_and_one_standing_charge_per_day(
    api: Api,
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    r = await api.client.post(
        "/api/v1/energy/sites", json={"name": "Home", "mains": device.id}, headers=owner.headers
    )
    site = r.json()["id"]
    tariff = {
        "currency": "EUR",
        "price_per_kwh": 0.30,
        "standing_charge_per_day": 0.50,
        "co2_g_per_kwh": 400,
        "windows": [
            {"name": "night", "start": "23:00", "end": "07:00", "days": "weekday",
             "price_per_kwh": 0.10},
            {"name": "weekend", "start": "07:00", "end": "23:00", "days": "weekend",
             "price_per_kwh": 0.20},
            {"name": "weekend night", "start": "23:00", "end": "07:00", "days": "weekend",
             "price_per_kwh": 0.05},
        ],
    }  # fmt: skip
    r = await api.client.put(
        f"/api/v1/energy/sites/{site}/tariff", json=tariff, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    # 2 kW on Wednesday 10 June 21:00 - Thursday 01:00, and Saturday 13 June 22:00-24:00.
    wed = readings("power", ms("2026-06-10T21:00:00+02:00"), ms("2026-06-11T01:00:00+02:00"),
                   MINUTE, constant(2000.0))  # fmt: skip
    sat = readings("power", ms("2026-06-13T22:00:00+02:00"), ms("2026-06-14T00:00:00+02:00"),
                   MINUTE, constant(2000.0))  # fmt: skip
    await store(api, device, wed + sat)
    body = await get(
        api, "/api/v1/energy/series", owner.headers,
        site=site, interval="1d", tz=BERLIN, **{"from": "2026-06-10", "to": "2026-06-15"},
    )  # fmt: skip
    assert body["currency"] == "EUR"
    days = {row["start"][:10]: row for row in body["rows"]}
    # Wednesday: 4 kWh at the day rate, 2 kWh after 23:00 at the night rate.
    assert days["2026-06-10"]["kwh"] == pytest.approx(6.0)
    assert days["2026-06-10"]["energy_cost"] == pytest.approx(4 * 0.30 + 2 * 0.10)
    assert days["2026-06-10"]["standing_charge"] == pytest.approx(0.50)
    assert days["2026-06-10"]["cost"] == pytest.approx(1.40 + 0.50)
    assert days["2026-06-10"]["co2_kg"] == pytest.approx(6 * 0.4)
    # Thursday 00:00-01:00: still Wednesday's night window.
    assert days["2026-06-11"]["energy_cost"] == pytest.approx(2 * 0.10)
    assert days["2026-06-12"]["kwh"] == 0.0
    assert days["2026-06-12"]["cost"] == pytest.approx(0.50)  # the standing charge alone
    # Saturday: 22:00-23:00 weekend day rate, 23:00-24:00 weekend night rate.
    assert days["2026-06-13"]["energy_cost"] == pytest.approx(2 * 0.20 + 2 * 0.05)
    assert sum(d["standing_charge"] for d in days.values()) == pytest.approx(5 * 0.50)
    # Hourly: the standing charge lands once per day, in the hour starting the day.
    hourly = await get(
        api, "/api/v1/energy/series", owner.headers,
        site=site, interval="1h", tz=BERLIN, **{"from": "2026-06-10T12:00", "to": "2026-06-11T12:00"},
    )  # fmt: skip
    charged = {r["start"]: r["standing_charge"] for r in hourly["rows"] if r["standing_charge"]}
    assert charged == {
        "2026-06-10T12:00:00.000+02:00": pytest.approx(0.50),
        "2026-06-11T00:00:00.000+02:00": pytest.approx(0.50),
    }
    costs = {r["start"][11:16]: r["energy_cost"] for r in hourly["rows"] if r["kwh"]}
    assert costs == {
        "21:00": pytest.approx(0.60),
        "22:00": pytest.approx(0.60),
        "23:00": pytest.approx(0.20),
        "00:00": pytest.approx(0.20),
    }
    # The summary of Thursday so far (01:00) against Wednesday by 01:00.
    summary = await get(
        api, "/api/v1/energy/summary", owner.headers,
        site=site, period="day", at="2026-06-11T01:00", tz=BERLIN,
    )  # fmt: skip
    assert summary["current"]["kwh"] == pytest.approx(2.0)
    assert summary["current"]["cost"] == pytest.approx(0.20 + 0.50)
    assert summary["previous"]["kwh"] == 0.0
    assert summary["previous"]["cost"] == pytest.approx(0.50)
    assert summary["change_pct"] is None


async def test_site_breakdown_gives_the_unmetered_remainder(api: Api) -> None:
    owner = await api.account()
    mains, oven, lights = [await api.device(owner, name=n) for n in ("mains", "oven", "lights")]
    day = ms("2026-06-10T00:00:00+02:00")
    for device, watts in ((mains, 3000.0), (oven, 1000.0), (lights, 500.0)):
        await store(
            api, device, readings("power", day - HOUR, day + 25 * HOUR, MINUTE, constant(watts))
        )  # fmt: skip
    r = await api.client.post(
        "/api/v1/energy/sites",
        json={"name": "Home", "mains": mains.id, "submeters": [oven.id, lights.id]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    site = r.json()
    assert site["mains"]["device_id"] == mains.id
    assert {m["device_id"] for m in site["submeters"]} == {oven.id, lights.id}
    body = await get(
        api, "/api/v1/energy/summary", owner.headers,
        site=site["id"], period="day", at="2026-06-10T12:00", tz=BERLIN,
    )  # fmt: skip
    assert body["current"]["kwh"] == pytest.approx(36.0)
    by_device = {m["device_id"]: m["kwh"] for m in body["meters"]}
    assert by_device == {
        mains.id: pytest.approx(36.0),
        oven.id: pytest.approx(12.0),
        lights.id: pytest.approx(6.0),
    }
    assert body["unmetered_kwh"] == pytest.approx(18.0)
    assert body["now"]["w"] == 3000.0
    assert body["peak"]["w"] == 3000.0
    hourly = await get(
        api, "/api/v1/energy/series", owner.headers,
        site=site["id"], interval="1h", tz=BERLIN, **{"from": "2026-06-10", "to": "2026-06-11"},
    )  # fmt: skip
    assert len(hourly["rows"]) == 24
    for row in hourly["rows"]:
        assert row["unmetered_kwh"] == pytest.approx(1.5)  # 3 - 1 - 0.5 kW for an hour
        assert row["meters"] == {
            mains.id: pytest.approx(3.0),
            oven.id: pytest.approx(1.0),
            lights.id: pytest.approx(0.5),
        }
    r = await api.client.get(
        "/api/v1/energy/series.csv",
        params={"site": site["id"], "interval": "1d", "tz": BERLIN,
                "from": "2026-06-10", "to": "2026-06-11"},
        headers=owner.headers,
    )  # fmt: skip
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    header, line = r.text.splitlines()
    # Mains first, then the sub-meters by name.
    assert header.split(",")[-4:] == [f"kwh_{mains.id}", f"kwh_{lights.id}", f"kwh_{oven.id}",
                                     "unmetered_kwh"]  # fmt: skip
    values = dict(zip(header.split(","), line.split(","), strict=True))
    assert float(values["kwh"]) == pytest.approx(72.0)
    assert float(values["unmetered_kwh"]) == pytest.approx(36.0)
    r = await api.client.get(
        "/api/v1/energy/summary.csv",
        params={"site": site["id"], "period": "day", "at": "2026-06-10T12:00", "tz": BERLIN},
        headers=owner.headers,
    )
    rows = [line.split(",") for line in r.text.splitlines()]
    assert [row[0] for row in rows] == ["row", "total", "mains", "sub", "sub", "unmetered"]
    assert float(rows[-1][5]) == pytest.approx(18.0)
