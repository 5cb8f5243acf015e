"""The per-month cache (`energy_months`): whole UTC months read from it give exactly what
the day-by-day path gives, in any time zone (local months need not be UTC months), and a
late or re-sent reading, or a deleted device, sends a month back to its days."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from sensorium.energy import meters, service
from sensorium.energy.models import EnergyDay, EnergyHour, EnergyMonth
from sensorium.protocol import Reading, mac_to_int
from sensorium.telemetry.models import Rollup
from tests.energy.conftest import HOUR, get, ms, store
from tests.helpers import Api, RegisteredDevice

DAY = 24 * HOUR
START = ms("2026-01-20T00:00:00+00:00")
END = ms("2026-04-12T00:00:00+00:00")
FEB, MAR = ms("2026-02-01T00:00:00+00:00"), ms("2026-03-01T00:00:00+00:00")
AT = "2026-04-11T12:34:56+00:00"
STEP = 300_000
# Power further apart than the site's gap limit (15 min) is not bridged: one gap across a
# midnight inside February, one across the end of February. The counter resets once.
GAPS = (
    (ms("2026-02-10T23:40:00+00:00"), ms("2026-02-11T00:40:00+00:00")),
    (ms("2026-02-28T23:30:00+00:00"), ms("2026-03-01T01:00:00+00:00")),
)
RESET = ms("2026-03-15T12:00:00+00:00")


async def _site(api: Api) -> tuple[Any, int, RegisteredDevice, RegisteredDevice]:
    owner = await api.account()
    mains, sub = await api.device(owner), await api.device(owner)
    rng = random.Random(17)
    power = [
        Reading(ts=t, key="power", value=rng.uniform(200.0, 4000.0))
        for t in range(START, END, STEP)
        if not any(a < t < b for a, b in GAPS)
    ]
    total, energy = 12.0, []
    for t in range(START, END, STEP):
        total = 0.001 if t == RESET else total + rng.uniform(0.0, 0.2)
        energy.append(Reading(ts=t, key="energy", value=total))
    await store(api, mains, power)
    await store(api, sub, energy)
    r = await api.client.post("/api/v1/energy/sites", headers=owner.headers,
                              json={"name": "Home", "mains": mains.id, "submeters": [sub.id]})  # fmt: skip
    assert r.status_code == 201, r.text
    site = int(r.json()["id"])
    tariff = {"currency": "EUR", "price_per_kwh": 0.30, "standing_charge_per_day": 0.2,
              "windows": [{"start": "23:00", "end": "07:00", "price_per_kwh": 0.10}]}  # fmt: skip
    r = await api.client.put(f"/api/v1/energy/sites/{site}/tariff", json=tariff,
                             headers=owner.headers)  # fmt: skip
    assert r.status_code == 200, r.text
    return owner, site, mains, sub


def _sessions(api: Api) -> Any:
    return api.client.app.state.ctx.sessions  # type: ignore[attr-defined]


async def _months(api: Api) -> list[tuple[int, int, int]]:
    async with _sessions(api)() as session:
        rows = await session.execute(
            select(EnergyMonth.device, EnergyMonth.month, EnergyMonth.n).order_by(
                EnergyMonth.device, EnergyMonth.month
            )
        )
        return [(int(d), int(m), int(n)) for d, m, n in rows]


async def _forget(api: Api, *models: Any) -> None:
    async with _sessions(api)() as session, session.begin():
        for model in models or (EnergyMonth, EnergyDay, EnergyHour):
            await session.execute(delete(model))


def _series_params(site: int, tz: str) -> dict[str, Any]:
    return {"site": site, "interval": "1d", "tz": tz, "from": str(START), "to": str(END)}


def _close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """The same figures: numbers to `rel` (relative, or absolute near zero), the rest equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    return bool(a == b)


class _Spy:
    """Counts the month rows each `_month_rows` call found; `off` makes it find none
    (the day-by-day path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.found: list[int] = []
        self.off = False
        original = meters._month_rows

        async def spy(*args: Any) -> dict[int, list[Any]]:
            out = {} if self.off else await original(*args)
            self.found.append(sum(len(rows) for rows in out.values()))
            return out

        monkeypatch.setattr(meters, "_month_rows", spy)


async def test_cached_months_give_the_day_by_day_figures_in_any_time_zone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, site, mains, sub = await _site(api)
    spy = _Spy(monkeypatch)
    url = "/api/v1/energy/series"
    cold = await get(api, url, owner.headers, **_series_params(site, "UTC"))
    # The first walk built the hours, the days and, from those, the two whole months.
    months = await _months(api)
    assert [(d, m) for d, m, _n in months] == sorted(
        (mac_to_int(device.id), month) for device in (mains, sub) for month in (FEB, MAR)
    )
    spy.found.clear()
    warm = await get(api, url, owner.headers, **_series_params(site, "UTC"))
    assert spy.found == [4]
    spy.off = True
    by_days = await get(api, url, owner.headers, **_series_params(site, "UTC"))
    # Read from the months, the figures are those of the days, to the last bit.
    assert warm == by_days
    assert _close(warm, cold)
    assert any(row["missing_ms"] for row in warm["rows"])
    spy.off = False

    # Summaries in local time: a Berlin month starts at 23:00 or 22:00 UTC, an Indian one
    # at 18:30 UTC (and its hours at :30), so some UTC months fit a period and some do not.
    for tz in ("Europe/Berlin", "Asia/Kolkata", "UTC"):
        for period in ("year", "month"):
            params = {"site": site, "period": period, "tz": tz, "at": AT}
            spy.found.clear()
            cached = await get(api, "/api/v1/energy/summary", owner.headers, **params)
            used = sum(spy.found)
            if period == "year" and tz != "Asia/Kolkata":
                assert used == 4  # February and March of both meters
            if tz == "Asia/Kolkata" or period == "month":
                assert used == 0
            spy.off = True
            days_only = await get(api, "/api/v1/energy/summary", owner.headers, **params)
            spy.off = False
            assert cached == days_only, (tz, period)
            await _forget(api)
            fresh = await get(api, "/api/v1/energy/summary", owner.headers, **params)
            assert _close(cached, fresh), (tz, period)
            # Built again by that request (a year's whole months) or by the series.
            await get(api, url, owner.headers, **_series_params(site, "UTC"))
    monthly = await get(api, url, owner.headers, **{**_series_params(site, "Europe/Berlin"),
                                                     "interval": "1mo"})  # fmt: skip
    await _forget(api)
    fresh_monthly = await get(api, url, owner.headers, **{
        **_series_params(site, "Europe/Berlin"), "interval": "1mo"})  # fmt: skip
    assert _close(monthly, fresh_monthly)


async def test_a_late_or_changed_reading_sends_its_month_back_to_its_days(api: Api) -> None:
    owner, site, mains, sub = await _site(api)
    url = "/api/v1/energy/series"
    first = await get(api, url, owner.headers, **_series_params(site, "UTC"))
    before = await _months(api)
    assert len(before) == 4
    late = ms("2026-02-17T10:02:30+00:00")  # between two readings of the mains
    await store(api, mains, [Reading(ts=late, key="power", value=25_000.0)])
    changed = ms("2026-03-20T07:05:00+00:00")  # an existing reading of the counter, re-sent
    await store(api, sub, [Reading(ts=changed, key="energy", value=1e6)])
    after = await get(api, url, owner.headers, **_series_params(site, "UTC"))
    await _forget(api)
    fresh = await get(api, url, owner.headers, **_series_params(site, "UTC"))
    assert _close(after, fresh)
    day = {row["start"][:10]: row["meters"] for row in after["rows"]}
    old = {row["start"][:10]: row["meters"] for row in first["rows"]}
    assert day["2026-02-17"][mains.id] > old["2026-02-17"][mains.id] + 0.01  # the 25 kW
    assert day["2026-03-20"][sub.id] > 900_000  # the counter's jump
    assert day["2026-02-18"] == old["2026-02-18"]
    # Rebuilt with the new readings: each month row still matches its day rollups.
    rebuilt = await _months(api)
    assert len(rebuilt) == 4
    async with _sessions(api)() as session:
        for device, month, n in rebuilt:
            end = ms("2026-03-01T00:00:00+00:00") if month == FEB else ms("2026-04-01T00:00:00Z")
            count = await session.scalar(
                select(func.sum(Rollup.n)).where(
                    Rollup.device == device,
                    Rollup.grain == DAY,
                    Rollup.bucket >= month,
                    Rollup.bucket < end,
                )
            )
            assert n == count
    assert (mac_to_int(mains.id), FEB) in {(d, m) for d, m, _n in rebuilt}
    grew = {(d, m): n for d, m, n in rebuilt}
    was = {(d, m): n for d, m, n in before}
    assert grew[(mac_to_int(mains.id), FEB)] == was[(mac_to_int(mains.id), FEB)] + 1


async def test_deleting_a_device_deletes_its_months(api: Api) -> None:
    owner, site, mains, sub = await _site(api)
    await get(api, "/api/v1/energy/series", owner.headers, **_series_params(site, "UTC"))
    assert {d for d, _m, _n in await _months(api)} == {mac_to_int(mains.id), mac_to_int(sub.id)}
    r = await api.client.delete(f"/api/v1/devices/{sub.id}", headers=owner.headers)
    assert r.status_code == 204, r.text
    assert {d for d, _m, _n in await _months(api)} == {mac_to_int(mains.id)}


async def test_the_summary_gives_the_same_figures_before_and_after_precompute(
    api: Api,
) -> None:
    owner, site, _mains, _sub = await _site(api)
    params = {"site": site, "period": "year", "tz": "Europe/Berlin", "at": AT}
    await _forget(api)
    before = await get(api, "/api/v1/energy/summary", owner.headers, **params)
    await _forget(api)
    stored = await service.precompute(_sessions(api), now_ms=END + HOUR, days=100)
    assert stored > 0
    # January is cut by the 100 days, so its days are stored but not its month.
    assert {m for _d, m, _n in await _months(api)} == {FEB, MAR}
    after = await get(api, "/api/v1/energy/summary", owner.headers, **params)
    assert _close(after, before, rel=1e-12)
    assert after["meters"][0]["kwh"] > 0
