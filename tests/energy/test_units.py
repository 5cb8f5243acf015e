"""The arithmetic under the energy figures: tariff windows, slots, integration, rollup
estimates, and figures that survive the raw points' retention."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete

from sensorium.energy import meters, service, tariffs
from sensorium.energy.integrate import Integrator, Slots, estimate_interior
from sensorium.telemetry.models import Point
from tests.energy.conftest import HOUR, MINUTE, constant, get, ms, readings, store
from tests.helpers import Api


def window(start: str, end: str, days: str = "all", price: float = 0.1) -> tariffs.Window:
    return tariffs.Window(tariffs.parse_hhmm(start), tariffs.parse_hhmm(end), days, price)


def test_windows_cross_midnight_and_the_week_end() -> None:
    night = window("23:00", "07:00", "weekend")
    # Saturday 23:00 - Sunday 07:00, and Sunday 23:00 - Monday 07:00 (wrapping the week).
    assert night.minutes_of_week() == [
        (5 * 1440 + 23 * 60, 6 * 1440 + 7 * 60),
        (6 * 1440 + 23 * 60, 7 * 1440),
        (0, 7 * 60),
    ]
    assert tariffs.find_overlap([night, window("06:00", "08:00", "weekday")]) == (0, 1, 6 * 60)
    assert tariffs.find_overlap([night, window("07:00", "23:00")]) is None
    assert tariffs.find_overlap([window("00:00", "00:00", "weekday")]) is None


def test_price_changes_follow_local_time_across_dst() -> None:
    tz = ZoneInfo("Europe/Berlin")
    table = tariffs.PriceTable(0.3, [window("23:00", "07:00")])
    start, end = ms("2026-03-28T12:00:00+01:00"), ms("2026-03-30T12:00:00+02:00")
    changes = table.changes(start, end, tz)
    assert changes == [
        ms("2026-03-28T23:00:00+01:00"),
        ms("2026-03-29T07:00:00+02:00"),
        ms("2026-03-29T23:00:00+02:00"),
        ms("2026-03-30T07:00:00+02:00"),
    ]


def test_bridging_splits_a_trapezoid_at_slot_edges() -> None:
    slots = Slots.over([0, 30 * MINUTE, HOUR])
    integrator = Integrator(slots, counter=False, max_gap_ms=HOUR)
    # 0 W rising to 1000 W over the hour: 500 Wh, 125 in the first half, 375 in the second.
    integrator.bridge(0, 0.0, HOUR, 1000.0)
    assert slots.wh.tolist() == [pytest.approx(125.0), pytest.approx(375.0)]
    assert integrator.missing == []


def test_a_counter_reset_counts_the_new_value_and_a_long_gap_past_it_is_missing() -> None:
    slots = Slots.over([0, HOUR, 2 * HOUR, 5 * HOUR])
    integrator = Integrator(slots, counter=True, max_gap_ms=15 * MINUTE)
    integrator.bridge(0, 10.0, HOUR, 11.0)  # +1 kWh
    integrator.bridge(HOUR, 11.0, HOUR + MINUTE, 0.25)  # reset: 0.25 kWh since
    integrator.bridge(2 * HOUR, 3.0, 5 * HOUR, 0.5)  # reset during a 3-hour gap
    assert slots.wh.tolist() == [pytest.approx(1000.0), pytest.approx(250.0), pytest.approx(500.0)]
    assert integrator.missing == [(2 * HOUR, 5 * HOUR)]
    assert slots.missing_ms == [0, 0, 3 * HOUR]


def test_a_missing_stretch_adds_to_every_slot_it_overlaps() -> None:
    # Long stretches (a year with no data) are added slice-wise: the same as slot by slot.
    rng = random.Random(3)
    cuts = sorted(set(rng.sample(range(0, 50 * HOUR, MINUTE), 400)))
    slots = Slots.over(cuts)
    integrator = Integrator(slots, counter=False, max_gap_ms=MINUTE)
    expected = [0] * (len(cuts) - 1)
    for _ in range(300):
        a = rng.randrange(cuts[0] - HOUR, cuts[-1] + HOUR)
        b = a + rng.choice([1, rng.randrange(1, HOUR), rng.randrange(1, 60 * HOUR)])
        integrator.miss(a, b)
        for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
            expected[i] += max(0, min(b, hi) - max(a, lo))
        assert slots.missing_ms == expected


@pytest.mark.parametrize("counter", [False, True])
def test_points_cut_by_slot_edges_add_up_as_when_bridged_one_by_one(counter: bool) -> None:
    # An hour cut by slot edges (tariff edges at :20 and :45, the range ending at :50):
    # the stretches inside one slot are summed as a block, the rest bridged one by one.
    rng = random.Random(9)
    cuts = [0, 20 * MINUTE, 45 * MINUTE, 50 * MINUTE]
    points, value, t, step = [], 1.0, -3 * MINUTE, 10_000
    while t < HOUR:
        value = value + rng.uniform(0, 0.01) if counter else rng.uniform(0, 3000)
        if counter and step > 15 * MINUTE:
            value = 0.001  # reset during a long gap: the gap is missing
        points.append((t, value))
        step = rng.choice([10_000, 20_000, 17 * MINUTE])  # now and then past the gap limit
        t += step
    walks = []
    for by_block in (True, False):
        slots = Slots.over(cuts)
        walk = meters._Walk(Integrator(slots, counter=counter, max_gap_ms=15 * MINUTE), None, 0)
        if by_block:
            walk.cut(points)
        else:
            for ts, v in points:
                walk.to(ts, v)
        walks.append(walk)
    blocked, one_by_one = walks
    assert blocked.integrator.slots.wh == pytest.approx(one_by_one.integrator.slots.wh, rel=1e-12)
    assert blocked.integrator.missing == one_by_one.integrator.missing
    assert blocked.integrator.missing
    assert blocked.integrator.slots.missing_ms == one_by_one.integrator.slots.missing_ms
    assert blocked.prev == one_by_one.prev == points[-1]


def test_rollup_estimates() -> None:
    # Ten readings a minute apart of a constant 600 W: 9 minutes at 600 W = 90 Wh.
    wh, missing = estimate_interior(
        counter=False, max_gap_ms=HOUR, n=10, vsum=6000.0, vmin=600.0, vmax=600.0,
        first=(0, 600.0), last=(9 * MINUTE, 600.0),
    )  # fmt: skip
    assert wh == pytest.approx(90.0)
    assert missing == []
    # Too sparse to bridge.
    _wh, missing = estimate_interior(
        counter=False, max_gap_ms=MINUTE, n=2, vsum=2.0, vmin=1.0, vmax=1.0,
        first=(0, 1.0), last=(HOUR, 1.0),
    )  # fmt: skip
    assert missing == [(0, HOUR)]
    # A counter whose minimum is below its first value was reset inside.
    wh, _m = estimate_interior(
        counter=True, max_gap_ms=HOUR, n=5, vsum=0.0, vmin=0.0, vmax=12.0,
        first=(0, 10.0), last=(HOUR, 1.5),
    )  # fmt: skip
    assert wh == pytest.approx((2.0 + 1.5) * 1000)


async def test_figures_survive_the_raw_points_retention(api: Api) -> None:
    owner = await api.account()
    seen, unseen = await api.device(owner), await api.device(owner)
    day = ms("2026-06-10T00:00:00+00:00")
    for device in (seen, unseen):
        await store(api, device, readings("power", day - HOUR, day + 25 * HOUR, MINUTE,
                                          constant(800.0)))  # fmt: skip
    url = "/api/v1/energy/summary"
    # Monday 8 June to Thursday 11 June 00:00: the data's hours all lie whole inside.
    params = {"period": "week", "at": "2026-06-11T00:00:00+00:00"}
    first = await get(api, url, owner.headers, device=seen.id, **params)
    assert first["current"]["kwh"] == pytest.approx(19.2 + 0.8)
    assert first["current"]["estimated"] is False
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session, session.begin():
        await session.execute(delete(Point))
    # The hours computed before are kept: the same figures, still exact.
    again = await get(api, url, owner.headers, device=seen.id, **params)
    assert again["current"] == first["current"]
    # Never computed before: the hourly rollups stand in, and say so.
    other = await get(api, url, owner.headers, device=unseen.id, **params)
    assert other["current"]["estimated"] is True
    assert other["current"]["kwh"] == pytest.approx(20.0, rel=1e-3)


@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham", "UTC"]
)
def test_local_minutes_and_prices_per_minute_agree_with_datetimes(zone: str) -> None:
    # Hourly cuts over DST changes (Lord Howe moves by 30 minutes, Chatham lives at :45),
    # plus instants at odd seconds just around them.
    tz = ZoneInfo(zone)
    rng = random.Random(zone)
    start = ms("2026-01-01T00:00:00+00:00")
    instants = list(range(start, start + 366 * 24 * HOUR, HOUR))
    instants += [t + rng.choice([-1, 0, 1]) * rng.randrange(1, HOUR) for t in instants[::97]]
    table = tariffs.PriceTable(
        0.3, [window("23:00", "07:00", price=0.1), window("12:15", "13:45", "weekend", 0.2)]
    )
    for t, minute in zip(instants, service.local_minutes(instants, tz), strict=True):
        at = datetime.fromtimestamp(t / 1000, UTC).astimezone(tz)
        assert minute // 1440 == (at.date() - datetime(1970, 1, 1).date()).days
        assert minute % 1440 == at.hour * 60 + at.minute
        assert table.at_minute(minute) == table.at(at)


@pytest.mark.parametrize(
    ("spikes", "expected"),
    [
        # The same maximum on two whole days: the first day's first hour with it.
        ({"2026-06-02T05:30": 1500.0, "2026-06-03T10:17": 2000.0, "2026-06-04T08:05": 2000.0},
         "2026-06-03T10:17"),
        # In the first, partial day (the period starts at local midnight, 22:00 UTC)...
        ({"2026-05-31T23:40": 2500.0, "2026-06-03T10:17": 2500.0}, "2026-05-31T23:40"),
        # ... and in the last one's hours.
        ({"2026-06-03T10:17": 2000.0, "2026-06-05T03:12": 2600.0}, "2026-06-05T03:12"),
    ],
)  # fmt: skip
async def test_the_peak_is_the_first_highest_reading_across_days(
    api: Api, spikes: dict[str, float], expected: str
) -> None:
    # The month's whole UTC days are looked up by their day rollups, the hours around
    # them by their hour rollups.
    owner = await api.account()
    device = await api.device(owner)
    at = {ms(f"{t}:00+00:00"): w for t, w in spikes.items()}
    start, end = ms("2026-05-31T20:00:00+00:00"), ms("2026-06-05T12:00:00+00:00")
    await store(api, device, readings("power", start, end, MINUTE, lambda t: at.get(t, 500.0)))
    body = await get(
        api, "/api/v1/energy/summary", owner.headers,
        device=device.id, period="month", at="2026-06-05T12:00:00+00:00", tz="Europe/Berlin",
    )  # fmt: skip
    assert body["peak"]["w"] == max(spikes.values())
    assert body["peak"]["at_ms"] == ms(f"{expected}:00+00:00")
