"""Sites and tariffs: CRUD, ownership, bad input (clear 4xx and nothing stored), and what
deleting a device does to its site."""

from __future__ import annotations

from typing import Any

import pytest

from tests.energy.conftest import HOUR, MINUTE, constant, get, ms, readings, store, stored
from tests.helpers import Account, Api

NIGHT = {"name": "night", "start": "23:00", "end": "07:00", "price_per_kwh": 0.1}


async def site(api: Api, owner: Account, **body: Any) -> dict[str, Any]:
    r = await api.client.post(
        "/api/v1/energy/sites", json={"name": "Home", **body}, headers=owner.headers
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def test_site_crud_and_tariff(api: Api) -> None:
    owner = await api.account()
    mains, sub = await api.device(owner, name="mains"), await api.device(owner, name="sub")
    created = await site(api, owner, mains=mains.id)
    assert created["submeters"] == []
    assert created["tariff"] is None
    url = f"/api/v1/energy/sites/{created['id']}"
    r = await api.client.patch(
        url, json={"name": "Cottage", "submeters": [sub.id]}, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Cottage"
    assert r.json()["mains"]["device_id"] == mains.id  # left as it was
    assert [m["device_id"] for m in r.json()["submeters"]] == [sub.id]
    tariff = {"currency": "GBP", "price_per_kwh": 0.25, "windows": [NIGHT]}
    r = await api.client.put(f"{url}/tariff", json=tariff, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert r.json()["windows"][0]["days"] == "all"
    assert (await get(api, url, owner.headers))["tariff"]["currency"] == "GBP"
    listed = await get(api, "/api/v1/energy/sites", owner.headers)
    assert [s["name"] for s in listed["items"]] == ["Cottage"]
    # Removing the mains meter.
    r = await api.client.patch(url, json={"mains": None}, headers=owner.headers)
    assert r.json()["mains"] is None
    assert len(r.json()["submeters"]) == 1
    assert (await api.client.delete(f"{url}/tariff", headers=owner.headers)).status_code == 204
    assert (await api.client.get(f"{url}/tariff", headers=owner.headers)).status_code == 404
    assert (await api.client.delete(url, headers=owner.headers)).status_code == 204
    assert (await api.client.get(url, headers=owner.headers)).status_code == 404
    assert await stored(api) == {
        "energy_sites": 0, "energy_site_meters": 0, "energy_tariffs": 0, "energy_hours": 0
    }  # fmt: skip
    # The devices themselves stay.
    assert (await api.client.get(f"/api/v1/devices/{sub.id}", headers=owner.headers)).is_success


async def test_deleting_a_device_removes_it_from_its_site_only(api: Api) -> None:
    owner = await api.account()
    mains, sub = await api.device(owner, name="mains"), await api.device(owner, name="sub")
    day = ms("2026-06-10T00:00:00+00:00")
    for device, watts in ((mains, 2000.0), (sub, 500.0)):
        await store(api, device, readings("power", day, day + 2 * HOUR, MINUTE, constant(watts)))
    home = await site(api, owner, mains=mains.id, submeters=[sub.id])
    r = await api.client.put(
        f"/api/v1/energy/sites/{home['id']}/tariff",
        json={"currency": "EUR", "price_per_kwh": 0.3},
        headers=owner.headers,
    )
    assert r.status_code == 200
    params = {"site": home["id"], "interval": "1h", "from": str(day), "to": str(day + 2 * HOUR)}
    before = await get(api, "/api/v1/energy/series", owner.headers, **params)
    assert before["rows"][0]["unmetered_kwh"] == pytest.approx(1.5)
    r = await api.client.delete(f"/api/v1/devices/{sub.id}", headers=owner.headers)
    assert r.status_code == 204
    after = await get(api, f"/api/v1/energy/sites/{home['id']}", owner.headers)
    assert after["submeters"] == []
    assert after["mains"]["device_id"] == mains.id
    assert after["tariff"]["price_per_kwh"] == 0.3
    series = await get(api, "/api/v1/energy/series", owner.headers, **params)
    assert series["rows"][0]["kwh"] == pytest.approx(2.0)
    assert series["rows"][0]["unmetered_kwh"] == pytest.approx(2.0)
    assert series["rows"][0]["meters"] == {mains.id: pytest.approx(2.0)}
    # Deleting the mains leaves a site without meters, still readable.
    await api.client.delete(f"/api/v1/devices/{mains.id}", headers=owner.headers)
    empty = await get(api, "/api/v1/energy/series", owner.headers, **params)
    assert [r["kwh"] for r in empty["rows"]] == [0.0, 0.0]


async def expect_error(
    api: Api,
    method: str,
    url: str,
    headers: dict[str, str],
    status: int,
    code: str,
    *,
    json: Any = None,
    params: dict[str, Any] | None = None,
    field: str | None = None,
) -> None:
    before = await stored(api)
    r = await api.client.request(method, url, json=json, params=params, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    assert await stored(api) == before, "a refused request stored something"


async def test_bad_input_is_a_clear_4xx_and_stores_nothing(api: Api) -> None:
    owner, other = await api.account(), await api.account()
    mine, theirs = await api.device(owner), await api.device(other)
    spare = await api.device(owner)
    home = await site(api, owner, mains=mine.id)
    foreign = await site(api, other, mains=theirs.id)
    h = owner.headers
    sites = "/api/v1/energy/sites"
    for url in (f"{sites}/999999", f"{sites}/{foreign['id']}"):
        # An unknown site and another user's site answer alike.
        for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
            await expect_error(api, method, url, h, 404, "site_not_found", json=body)
        await expect_error(api, "PUT", f"{url}/tariff", h, 404, "site_not_found",
                           json={"currency": "EUR", "price_per_kwh": 1})  # fmt: skip
        for path in ("summary", "series", "summary.csv", "series.csv"):
            await expect_error(
                api, "GET", f"/api/v1/energy/{path}", h, 404, "site_not_found",
                params={"site": url.rsplit("/", 1)[1]},
            )  # fmt: skip
    for path in ("summary", "series", "summary.csv", "series.csv"):
        for device_id in (theirs.id, "0200000000ff"):
            await expect_error(api, "GET", f"/api/v1/energy/{path}", h, 404, "device_not_found",
                               params={"device": device_id})  # fmt: skip
        await expect_error(api, "GET", f"/api/v1/energy/{path}", h, 422, "invalid_tz",
                           params={"device": mine.id, "tz": "Mars/Olympus"}, field="tz")  # fmt: skip
        await expect_error(api, "GET", f"/api/v1/energy/{path}", h, 422, "invalid_scope",
                           params={"device": mine.id, "site": home["id"]})  # fmt: skip
        await expect_error(api, "GET", f"/api/v1/energy/{path}", h, 422, "invalid_scope")
    await expect_error(api, "GET", "/api/v1/energy/summary", h, 422, "invalid",
                       params={"device": mine.id, "period": "decade"}, field="period")  # fmt: skip
    await expect_error(api, "GET", "/api/v1/energy/summary", h, 422, "invalid_time",
                       params={"device": mine.id, "at": "yesterday"}, field="at")  # fmt: skip
    series = "/api/v1/energy/series"
    await expect_error(api, "GET", series, h, 422, "invalid",
                       params={"device": mine.id, "interval": "15m"}, field="interval")  # fmt: skip
    await expect_error(api, "GET", series, h, 422, "invalid_range",
                       params={"device": mine.id, "from": "2026-06-02", "to": "2026-06-01"})  # fmt: skip
    await expect_error(api, "GET", series, h, 422, "range_too_long",
                       params={"device": mine.id, "interval": "1h", "from": "2026-01-01",
                               "to": "2026-06-01"})  # fmt: skip
    # Sites naming someone else's device, an unknown one, one already in a site, one twice.
    await expect_error(api, "POST", sites, h, 404, "device_not_found",
                       json={"name": "x", "mains": theirs.id})  # fmt: skip
    await expect_error(api, "POST", sites, h, 404, "device_not_found",
                       json={"name": "x", "submeters": [spare.id, "not-a-mac"]})  # fmt: skip
    await expect_error(api, "POST", sites, h, 409, "meter_in_other_site",
                       json={"name": "x", "submeters": [mine.id]})  # fmt: skip
    await expect_error(api, "PATCH", f"{sites}/{home['id']}", h, 422, "duplicate_meter",
                       json={"submeters": [spare.id, spare.id]}, field="submeters.1")  # fmt: skip
    await expect_error(api, "PATCH", f"{sites}/{home['id']}", h, 422, "duplicate_meter",
                       json={"submeters": [mine.id]}, field="submeters.0")  # fmt: skip
    await expect_error(api, "POST", sites, h, 422, "invalid", json={"name": ""}, field="name")
    # Overlapping or malformed tariff windows.
    tariff_url = f"{sites}/{home['id']}/tariff"
    good = {"currency": "EUR", "price_per_kwh": 0.3, "windows": [NIGHT]}
    assert (await api.client.put(tariff_url, json=good, headers=h)).status_code == 200
    for windows, field in [
        ([NIGHT, {"start": "06:00", "end": "08:00", "price_per_kwh": 0.2}], "windows.1"),
        # Weekend nights overlap a window covering whole Saturdays.
        ([{"start": "22:00", "end": "06:00", "days": "weekend", "price_per_kwh": 0.1},
          {"start": "00:00", "end": "00:00", "days": "weekend", "price_per_kwh": 0.2}],
         "windows.1"),
        # Sunday night runs into Monday morning.
        ([{"start": "23:00", "end": "07:00", "days": "weekend", "price_per_kwh": 0.1},
          {"start": "05:00", "end": "06:00", "days": "weekday", "price_per_kwh": 0.2}],
         "windows.1"),
    ]:  # fmt: skip
        await expect_error(api, "PUT", tariff_url, h, 422, "overlapping_windows",
                           json={**good, "windows": windows}, field=field)  # fmt: skip
    for bad, field in [
        ({**good, "currency": "euro"}, "currency"),
        ({**good, "price_per_kwh": -1}, "price_per_kwh"),
        ({**good, "windows": [{**NIGHT, "start": "24:00"}]}, "windows.0.start"),
        ({**good, "windows": [{**NIGHT, "days": "holidays"}]}, "windows.0.days"),
    ]:
        await expect_error(api, "PUT", tariff_url, h, 422, "invalid", json=bad, field=field)
    # The stored tariff is still the good one.
    assert (await get(api, tariff_url, h))["windows"] == [{**NIGHT, "days": "all"}]


async def test_windows_that_touch_do_not_overlap(api: Api) -> None:
    owner = await api.account()
    home = await site(api, owner)
    windows = [
        {"start": "23:00", "end": "07:00", "days": "weekday", "price_per_kwh": 0.1},
        {"start": "07:00", "end": "23:00", "days": "weekday", "price_per_kwh": 0.3},
        {"start": "00:00", "end": "00:00", "days": "weekend", "price_per_kwh": 0.2},
    ]
    r = await api.client.put(
        f"/api/v1/energy/sites/{home['id']}/tariff",
        json={"currency": "EUR", "price_per_kwh": 0.3, "windows": windows[:2]},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    # Friday's night window runs into Saturday: a whole-Saturday window would overlap it.
    r = await api.client.put(
        f"/api/v1/energy/sites/{home['id']}/tariff",
        json={"currency": "EUR", "price_per_kwh": 0.3, "windows": windows},
        headers=owner.headers,
    )
    assert r.status_code == 422
    assert "Sat at 00:00" in r.json()["error"]["message"]
