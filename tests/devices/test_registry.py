"""Registering devices by MAC, listing and filtering, editing, deleting, token rotation."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from sensorium.devices.models import Device, DeviceCredential
from sensorium.telemetry.models import LatestValue, Point, Rollup
from tests.helpers import Api

DEVICES = "/api/v1/devices"


async def count(api: Api, model: type) -> int:
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize(
    "mac", ["A4:CF:12:B3:C4:D5", "a4-cf-12-b3-c4-d5", "a4cf12b3c4d5", "A4CF12B3C4D5"]
)
async def test_mac_forms_are_normalised(api: Api, mac: str) -> None:
    owner = await api.account()
    r = await api.client.post(
        DEVICES,
        json={"mac": mac, "name": "Kitchen", "location": "Ground floor"},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "a4cf12b3c4d5"
    assert body["status"] == "new"
    assert body["token"].startswith("sdt_")
    assert len(body["token"]) >= 40


async def test_token_is_stored_only_as_a_hash(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        hashes = list(await session.scalars(select(DeviceCredential.token_hash)))
    assert len(hashes) == 1
    assert device.token not in hashes[0]
    assert len(hashes[0]) == 64
    r = await api.client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert "token" not in r.json()


@pytest.mark.parametrize(
    "mac", ["A4:CF:12:B3:C4", "A4:CF:12:B3:C4:ZZ", "A4:CF-12:B3:C4:D5", "", "a4cf12b3c4d5ff"]
)
async def test_malformed_mac_is_422_and_nothing_stored(api: Api, mac: str) -> None:
    owner = await api.account()
    r = await api.client.post(DEVICES, json={"mac": mac, "name": "x"}, headers=owner.headers)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "mac"
    assert await count(api, Device) == 0
    assert await count(api, DeviceCredential) == 0


async def test_duplicate_mac_is_409_even_across_users(api: Api) -> None:
    alice = await api.account()
    bob = await api.account()
    await api.device(alice, mac="A4:CF:12:B3:C4:D5")
    for owner in (alice, bob):
        r = await api.client.post(
            DEVICES, json={"mac": "a4-cf-12-b3-c4-d5", "name": "again"}, headers=owner.headers
        )
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "device_exists"
        assert r.json()["error"]["field"] == "mac"
    assert await count(api, Device) == 1
    assert await count(api, DeviceCredential) == 1


async def test_list_paginates_and_filters(api: Api) -> None:
    owner = await api.account()
    other = await api.account()
    for name in ["Kitchen", "kitchen 2", "Garage", "Attic", "Basement"]:
        await api.device(owner, name=name)
    await api.device(other, name="Kitchen of someone else")
    r = await api.client.get(DEVICES, params={"limit": 2}, headers=owner.headers)
    body = r.json()
    assert body["total"] == 5
    assert [d["name"] for d in body["items"]] == ["Attic", "Basement"]
    r = await api.client.get(DEVICES, params={"limit": 2, "offset": 4}, headers=owner.headers)
    assert [d["name"] for d in r.json()["items"]] == ["kitchen 2"]
    r = await api.client.get(DEVICES, params={"name": "KITCH"}, headers=owner.headers)
    assert sorted(d["name"] for d in r.json()["items"]) == ["Kitchen", "kitchen 2"]
    r = await api.client.get(DEVICES, params={"name": "%"}, headers=owner.headers)
    assert r.json()["total"] == 0


async def test_status_filter_follows_data(api: Api) -> None:
    owner = await api.account()
    quiet = await api.device(owner, name="quiet")
    talking = await api.device(owner, name="talking")
    gone = await api.device(owner, name="gone")
    assert (await api.send(talking, {"t": 1})).status_code == 202
    r = await api.client.post(
        f"{DEVICES}/{gone.id}/status", json={"online": False}, headers=gone.headers
    )
    assert r.status_code == 200
    assert r.json() == {"status": "offline"}

    async def names(status: str) -> list[str]:
        r = await api.client.get(DEVICES, params={"status": status}, headers=owner.headers)
        return [d["name"] for d in r.json()["items"]]

    assert await names("online") == ["talking"]
    assert await names("new") == ["quiet"]
    assert await names("offline") == ["gone"]
    assert quiet.id


async def test_silence_turns_a_device_offline(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    await api.send(device, {"t": 1})
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        row = await session.get(Device, device.id)
        assert row is not None
        row.offline_at_ms = int(time.time() * 1000) - 1
        await session.commit()
    r = await api.client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert r.json()["status"] == "offline"
    assert r.json()["last_seen"] is not None


async def test_http_status_report_is_stored(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    report = {
        "online": True,
        "fw": "1.2.0",
        "uptime_s": 3600,
        "rssi": -61,
        "ip": "192.168.1.23",
        "free_heap": 81234,
    }
    r = await api.client.post(f"{DEVICES}/{device.id}/status", json=report, headers=device.headers)
    assert r.status_code == 200
    body = (await api.client.get(f"{DEVICES}/{device.id}", headers=owner.headers)).json()
    assert body["status"] == "online"
    assert body["firmware_version"] == "1.2.0"
    assert body["info"] == {"rssi": -61, "uptime_s": 3600, "ip": "192.168.1.23", "free_heap": 81234}


async def test_bad_status_report_changes_nothing(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    r = await api.client.post(
        f"{DEVICES}/{device.id}/status",
        json={"online": True, "rssi": "strong"},
        headers=device.headers,
    )
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "rssi"
    body = (await api.client.get(f"{DEVICES}/{device.id}", headers=owner.headers)).json()
    assert body["status"] == "new"
    assert body["info"] == {}


async def test_patch_updates_name_and_location(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner, name="old")
    r = await api.client.patch(
        f"{DEVICES}/{device.id}", json={"name": "new", "location": "Shed"}, headers=owner.headers
    )
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["location"]) == ("new", "Shed")
    r = await api.client.patch(f"{DEVICES}/{device.id}", json={"name": ""}, headers=owner.headers)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "name"
    r = await api.client.patch(f"{DEVICES}/{device.id}", json={"mac": "x"}, headers=owner.headers)
    assert r.status_code == 422
    r = await api.client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert r.json()["name"] == "new"


async def test_delete_removes_the_device_and_its_data(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    keep = await api.device(owner)
    await api.send(
        device, [{"ts": int(time.time() * 1000) - i, "values": {"a": i}} for i in range(10)]
    )
    await api.send(keep, {"a": 1})
    r = await api.client.delete(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert r.status_code == 204
    assert (
        await api.client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    ).status_code == 404
    assert await count(api, Point) == 1
    assert await count(api, LatestValue) == 1
    assert await count(api, Rollup) == 3  # the kept device's minute, hour and day
    assert await count(api, DeviceCredential) == 1
    # Its token is dead and the MAC can be registered again.
    assert (await api.send(device, {"a": 1})).status_code == 401
    again = await api.device(owner, mac=device.id)
    assert again.id == device.id
    r = await api.client.get(f"/api/v1/devices/{device.id}/telemetry", headers=owner.headers)
    assert r.json()["points"] == []


async def test_rotate_without_grace_stops_the_old_token(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    assert (await api.send(device, {"a": 1})).status_code == 202
    r = await api.client.post(f"{DEVICES}/{device.id}/token/rotate", headers=owner.headers)
    assert r.status_code == 200
    new_token = r.json()["token"]
    assert r.json()["previous_valid_until"] is None
    assert (await api.send(device, {"a": 2})).status_code == 401
    device.token = new_token
    assert (await api.send(device, {"a": 3})).status_code == 202


async def test_revoke_stops_every_token(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    r = await api.client.post(f"{DEVICES}/{device.id}/token/revoke", headers=owner.headers)
    assert r.status_code == 204
    assert (await api.send(device, {"a": 1})).status_code == 401
    r = await api.client.post(f"{DEVICES}/{device.id}/token/rotate", headers=owner.headers)
    device.token = r.json()["token"]
    assert (await api.send(device, {"a": 1})).status_code == 202
