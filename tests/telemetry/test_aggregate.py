"""Aggregated history: fixed and calendar buckets, DST days, non-hour offsets, gaps."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from sensorium.protocol import Reading
from sensorium.telemetry import buckets
from tests.helpers import Api, RegisteredDevice

HALF_HOUR = 1_800_000


async def store(api: Api, device: RegisteredDevice, readings: list[Reading]) -> None:
    """Old readings go straight to the writer (the HTTP API refuses beyond retention)."""
    writer = api.client.app.state.ctx.writer  # type: ignore[attr-defined]
    for i in range(0, len(readings), 1000):
        await writer.write(device.id, readings[i : i + 1000])


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def daily(
    api: Api, device: RegisteredDevice, start: str, end: str, tz: str
) -> dict[str, dict[str, float]]:
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry",
        params={
            "from": start,
            "to": end,
            "interval": "1d",
            "tz": tz,
            "agg": "sum,count,min,max,avg,first,last",
        },
        headers=device.owner.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["interval"] == "1d"
    return {row["start"][:10]: row for row in body["series"]["e"]}


@pytest.mark.parametrize(
    ("tz", "start", "end", "lengths"),
    [
        # Spring forward on 29 March: a 23-hour day.
        ("Europe/Berlin", "2026-03-28T00:00:00+01:00", "2026-03-31T00:00:00+02:00", [24, 23, 24]),
        # Fall back on 25 October: a 25-hour day.
        ("Europe/Berlin", "2026-10-24T00:00:00+02:00", "2026-10-27T00:00:00+01:00", [24, 25, 24]),
        # +05:30, no DST.
        ("Asia/Kolkata", "2026-06-01T00:00:00+05:30", "2026-06-04T00:00:00+05:30", [24, 24, 24]),
    ],
)
async def test_daily_sums_follow_local_days(
    api: Api, tz: str, start: str, end: str, lengths: list[int]
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    zone = ZoneInfo(tz)
    first, last = ms(start), ms(end)
    readings = [
        Reading(ts=t, key="e", value=float(i % 7) + 0.25)
        for i, t in enumerate(range(first - 6 * HALF_HOUR, last + 6 * HALF_HOUR, HALF_HOUR))
    ]
    await store(api, device, readings)
    # Hand computation, independent of the bucket code: group by the local calendar date.
    expected: dict[str, list[float]] = defaultdict(list)
    for r in readings:
        if first <= r.ts < last:
            expected[
                datetime.fromtimestamp(r.ts / 1000, UTC).astimezone(zone).date().isoformat()
            ].append(r.value)
    got = await daily(api, device, start, end, tz)
    assert sorted(got) == sorted(expected)
    assert [int(got[d]["count"]) for d in sorted(got)] == [h * 2 for h in lengths]
    for day, values in expected.items():
        assert got[day]["sum"] == pytest.approx(sum(values))
        assert got[day]["min"] == min(values)
        assert got[day]["max"] == max(values)
        assert got[day]["avg"] == pytest.approx(sum(values) / len(values))
        assert got[day]["first"] == values[0]
        assert got[day]["last"] == values[-1]
        # Buckets start at local midnight.
        local = datetime.fromtimestamp(got[day]["bucket"] / 1000, UTC).astimezone(zone)
        assert (local.hour, local.minute) == (0, 0)


async def test_fixed_buckets_leave_gaps_and_align_to_the_zone(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    base = ms("2026-11-20T10:00:00+05:30")
    # 10:00-10:59 every minute, nothing 11:00-11:59, then 12:00-12:29.
    readings = [Reading(ts=base + m * 60_000, key="e", value=float(m)) for m in range(60)]
    readings += [Reading(ts=base + (120 + m) * 60_000, key="e", value=1.0) for m in range(30)]
    await store(api, device, readings)
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry",
        params={"from": str(base), "to": str(base + 3 * 3_600_000), "interval": "15m",
                "tz": "Asia/Kolkata", "agg": "count,avg"},
        headers=owner.headers,
    )  # fmt: skip
    rows = r.json()["series"]["e"]
    assert [row["start"][11:16] for row in rows] == [
        "10:00",
        "10:15",
        "10:30",
        "10:45",
        "12:00",
        "12:15",
    ]
    assert [row["count"] for row in rows] == [15, 15, 15, 15, 15, 15]
    assert rows[0]["avg"] == pytest.approx(7.0)
    assert set(rows[0]) == {"bucket", "start", "count", "avg"}


def test_auto_picks_the_coarsest_interval_with_enough_buckets() -> None:
    hour = 3_600_000
    assert buckets.pick_auto(0, hour) == "raw"
    assert buckets.pick_auto(0, 24 * hour) == "1m"
    assert buckets.pick_auto(0, 7 * 24 * hour) == "15m"
    assert buckets.pick_auto(0, 30 * 24 * hour) == "1h"
    assert buckets.pick_auto(0, 365 * 24 * hour) == "6h"
    assert buckets.pick_auto(0, 3 * 365 * 24 * hour) == "1d"


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    tz = ZoneInfo("Europe/Berlin")
    weeks = buckets.calendar_buckets(
        "1w", ms("2026-03-25T12:00:00+01:00"), ms("2026-04-10T00:00:00+02:00"), tz
    )
    assert [datetime.fromtimestamp(s / 1000, tz).strftime("%a %d") for s in weeks.starts] == [
        "Mon 23",
        "Mon 30",
        "Mon 06",
    ]
    months = buckets.calendar_buckets(
        "1mo", ms("2026-01-15T00:00:00+01:00"), ms("2026-04-02T00:00:00+02:00"), tz
    )
    assert [datetime.fromtimestamp(s / 1000, tz).strftime("%m-%d %H") for s in months.starts] == [
        "01-01 00",
        "02-01 00",
        "03-01 00",
        "04-01 00",
    ]


async def test_bad_interval_agg_and_tz_are_422(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    for params, field in [
        ({"interval": "2d"}, "interval"),
        ({"interval": "1h", "agg": "median"}, "agg"),
        ({"interval": "1d", "tz": "Mars/Olympus"}, "tz"),
    ]:
        r = await api.client.get(
            f"/api/v1/devices/{device.id}/telemetry", params=params, headers=owner.headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


async def test_csv_export_raw_and_aggregated(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    base = ms("2026-11-20T10:00:00+01:00")
    await store(
        api, device, [Reading(ts=base + m * 60_000, key="e", value=float(m)) for m in range(30)]
    )
    url = f"/api/v1/devices/{device.id}/telemetry.csv"
    window = {"from": str(base), "to": str(base + 3_600_000), "tz": "Europe/Berlin"}
    r = await api.client.get(url, params=window, headers=owner.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == "ts,key,value"
    assert lines[1] == "2026-11-20T10:00:00.000+01:00,e,0.0"
    assert len(lines) == 31
    r = await api.client.get(url, params={**window, "interval": "15m"}, headers=owner.headers)
    lines = r.text.splitlines()
    assert lines[0] == "bucket,key,min,avg,max,count"
    assert lines[1:] == [
        "2026-11-20T10:00:00.000+01:00,e,0.0,7.0,14.0,15",
        "2026-11-20T10:15:00.000+01:00,e,15.0,22.0,29.0,15",
    ]


async def test_delta_sums_counter_increases_across_resets_per_local_day(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    hour = 3_600_000
    start = ms("2026-10-24T00:00:00+02:00")
    # kWh counter: +0.5 per hour, reset to 0 at 2026-10-25 12:00 local (a reboot).
    readings: list[Reading] = []
    value = 100.0
    t = start - hour  # the reading before the range anchors the first increase
    while t < ms("2026-10-27T00:00:00+01:00"):
        readings.append(Reading(ts=t, key="energy", value=value))
        t += hour
        value = 0.5 if t == ms("2026-10-25T12:00:00+01:00") else value + 0.5
    await store(api, device, readings)
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry",
        params={"from": str(start), "to": str(ms("2026-10-27T00:00:00+01:00")), "interval": "1d",
                "tz": "Europe/Berlin", "agg": "delta"},
        headers=owner.headers,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    days = {row["start"][:10]: row["delta"] for row in r.json()["series"]["energy"]}
    # 24 hourly increases, 25 on the long day, each 0.5 kWh (the reset hour included).
    assert days == {"2026-10-24": 12.0, "2026-10-25": 12.5, "2026-10-26": 12.0}


async def test_fleet_csv_export_covers_several_devices_and_only_yours(api: Api) -> None:
    owner, other = await api.account(), await api.account()
    first, second = await api.device(owner, name="a"), await api.device(owner, name="b")
    foreign = await api.device(other)
    base = ms("2026-11-20T10:00:00+00:00")
    for n, device in enumerate((first, second, foreign)):
        await store(
            api, device, [Reading(ts=base + m * 60_000, key="p", value=float(n)) for m in range(3)]
        )
    window = {"from": str(base), "to": str(base + 3_600_000)}
    r = await api.client.get(
        "/api/v1/telemetry.csv",
        params={**window, "devices": f"{first.id},{second.id}"},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    assert lines[0] == "device,ts,key,value"
    assert lines[1] == f"{first.id},2026-11-20T10:00:00.000+00:00,p,0.0"
    assert sorted({line.split(",")[0] for line in lines[1:]}) == sorted([first.id, second.id])
    assert len(lines) == 7
    # All of the owner's devices when none are named; never someone else's.
    r = await api.client.get(
        "/api/v1/telemetry.csv", params={**window, "interval": "1h"}, headers=owner.headers
    )
    lines = r.text.splitlines()
    assert lines[0] == "device,bucket,key,min,avg,max,count"
    assert sorted(lines[1:]) == sorted(
        [
            f"{first.id},2026-11-20T10:00:00.000+00:00,p,0.0,0.0,0.0,3",
            f"{second.id},2026-11-20T10:00:00.000+00:00,p,1.0,1.0,1.0,3",
        ]
    )
    r = await api.client.get(
        "/api/v1/telemetry.csv",
        params={**window, "devices": f"{first.id},{foreign.id}"},
        headers=owner.headers,
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "device_not_found"
    many = ",".join(f"0200000{i:05x}" for i in range(101))
    r = await api.client.get(
        "/api/v1/telemetry.csv", params={"devices": many}, headers=owner.headers
    )
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "devices"


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns"]
)
def test_iso_gives_milliseconds_and_the_offset_at_that_instant(zone: str) -> None:
    tz = ZoneInfo(zone)
    # Both sides of the 2026 DST changes, before 1970, and odd milliseconds.
    stamps = [-1, -86_399_999, 0, 1_774_746_000_000, 1_774_749_599_999, 1_792_886_399_123]
    stamps += [1_792_890_000_000 + k * 937_123 for k in range(-8, 8)]
    for ts in stamps:
        reference = (
            datetime.fromtimestamp(ts / 1000, UTC).astimezone(tz).isoformat(timespec="milliseconds")
        )
        assert buckets.iso(ts, tz) == reference
        assert datetime.fromisoformat(buckets.iso(ts, tz)).timestamp() * 1000 == ts
