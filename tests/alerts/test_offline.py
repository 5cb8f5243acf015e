"""Offline rules over HTTP (issue 8, acceptance 4): "no data for N seconds" fires at the
moment the silence reached N and clears when data comes back; a device that goes quiet
for three reporting intervals fires a plain offline rule. (The last-will case, with real
MQTT, is tests/system/test_alerts_offline.py.)"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sensorium.alerts import engine
from sensorium.alerts.models import Alert
from sensorium.db import epoch_ms
from sensorium.devices.models import Device
from tests.alerts.conftest import alerts_of, make_rule, sessions_of
from tests.alerts.receivers import eventually
from tests.helpers import Account, Api, RegisteredDevice


async def last_seen_ms(api: Api, device: RegisteredDevice) -> int:
    async with sessions_of(api)() as session:
        seen = await session.scalar(select(Device.last_seen).where(Device.id == device.id))
    assert seen is not None
    return int(seen.timestamp() * 1000)


async def one_alert(api: Api, owner: Account, **params: Any) -> dict[str, Any]:
    async def found() -> list[dict[str, Any]]:
        return await alerts_of(api, owner, **params)

    alerts: list[dict[str, Any]] = await eventually(found)
    assert len(alerts) == 1, alerts
    return alerts[0]


async def test_silence_fires_at_the_limit_and_clears_when_data_returns(api: Api) -> None:
    """The scheduler's clock is passed in: just before the limit nothing, at it the alert,
    with the moment the silence reached the limit (the app's own scheduler, on the real
    clock, is ten minutes away from it)."""
    owner = await api.account()
    device = await api.device(owner, name="Cellar")
    quiet = await api.device(owner, name="Never sent anything")
    rule = await make_rule(api, owner, name="Cellar silent", kind="offline", duration_s=600)
    assert (await api.send(device, {"t": 11.5})).status_code == 202
    seen = await last_seen_ms(api, device)
    sessions = sessions_of(api)
    limit = seen + 600_000

    assert not await engine.fire_silent(sessions, now_ms=limit - 1)
    assert await alerts_of(api, owner) == []
    # (last_seen has sub-millisecond digits: a millisecond past its whole milliseconds.)
    assert (await engine.fire_silent(sessions, now_ms=limit + 1)).fired == 1
    [alert] = await alerts_of(api, owner)
    assert (alert["rule_id"], alert["device_id"], alert["device_name"]) == (
        rule["id"],
        device.id,
        "Cellar",
    )
    assert (alert["state"], alert["value"], alert["fired_at"]) == (
        "active",
        None,
        engine.iso_ms(limit),
    )
    # Still silent later: still one alert; the device that never sent data has none.
    assert not await engine.fire_silent(sessions, now_ms=limit + 3_600_000)
    assert [a["device_id"] for a in await alerts_of(api, owner)] == [device.id]
    assert quiet.id not in {a["device_id"] for a in await alerts_of(api, owner)}

    # Data again: cleared when it arrived.
    before = epoch_ms()
    assert (await api.send(device, {"t": 11.7})).status_code == 202
    after = epoch_ms()
    [cleared] = await alerts_of(api, owner)
    assert cleared["state"] == "cleared"
    assert str(engine.iso_ms(before)) <= cleared["cleared_at"] <= str(engine.iso_ms(after))
    # A new silence is a new alert.
    again = await last_seen_ms(api, device) + 600_000
    assert (await engine.fire_silent(sessions, now_ms=again + 1)).fired == 1
    newest, first = await alerts_of(api, owner)
    assert (newest["state"], newest["fired_at"]) == ("active", engine.iso_ms(again))
    assert (first["id"], first["state"]) == (alert["id"], "cleared")


async def test_silence_on_the_real_clock(api: Api) -> None:
    """The app's own scheduler (every 50 ms) fires a 2 s silence by itself."""
    owner = await api.account()
    device = await api.device(owner)
    busy = await api.device(owner)
    await make_rule(api, owner, kind="offline", scope="device", devices=[device.id], duration_s=2)
    assert (await api.send(device, {"t": 1})).status_code == 202
    assert (await api.send(busy, {"t": 1})).status_code == 202
    seen = await last_seen_ms(api, device)
    alert = await one_alert(api, owner)
    assert (alert["device_id"], alert["fired_at"]) == (device.id, engine.iso_ms(seen + 2000))
    assert (await api.send(device, {"t": 2})).status_code == 202
    [cleared] = await alerts_of(api, owner)
    assert cleared["state"] == "cleared"


async def test_a_device_quiet_for_three_intervals_fires_the_offline_rule(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    await make_rule(api, owner, kind="offline")
    # An HTTP device reporting every second: offline after 3 s without data.
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/status",
        json={"online": True, "interval_s": 1},
        headers=device.headers,
    )
    assert r.status_code in (200, 202, 204), r.text
    alert = await one_alert(api, owner)
    history = await api.client.get(
        f"/api/v1/devices/{device.id}/status/history", headers=owner.headers
    )
    offline = history.json()[0]
    assert (offline["online"], offline["reason"]) == (False, "timeout")
    assert alert["fired_at"] == engine.iso_ms(offline["ts"])
    # It says it is back: cleared.
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/status", json={"online": True}, headers=device.headers
    )
    assert r.status_code in (200, 202, 204), r.text
    [cleared] = await alerts_of(api, owner)
    assert cleared["state"] == "cleared"
    async with sessions_of(api)() as session:
        assert len((await session.scalars(select(Alert))).all()) == 1
