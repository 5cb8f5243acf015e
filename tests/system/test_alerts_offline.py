"""An offline rule fires on the device's last will and clears when it is back (issue 8,
acceptance 4), over real MQTT: the device connects with the will PROTOCOL.md gives it and
its connection is cut without DISCONNECT, so only the broker's keep-alive notices."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from sensorium.alerts import engine
from sensorium.config import Settings
from sensorium.worker.runtime import EmbeddedBroker
from tests.alerts.receivers import eventually, webhook_receiver
from tests.helpers import Account, Api, RegisteredDevice
from tests.system.conftest import Device, registered

WILL = b'{"online": false}'


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"alert_tick_s": 0.05, "alert_retry_base_s": 0.2})


def connect(broker: EmbeddedBroker, devices: list[Device], reg: RegisteredDevice) -> Device:
    assert broker.address is not None
    device = Device(broker.address, reg.id, reg.token, keepalive=1, will=WILL)
    devices.append(device)
    device.start()
    assert device.connected.is_set(), device.connack
    return device


def cut(device: Device) -> None:
    """Close the socket under the client: no DISCONNECT, so the broker sends the will."""
    assert device.client is not None
    sock = device.client.socket()
    assert isinstance(sock, socket.socket)
    device.client.loop_stop()
    sock.close()
    device.client = None


async def alerts(api: Api, owner: Account) -> list[dict[str, Any]]:
    r = await api.client.get("/api/v1/alerts", headers=owner.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def status_events(api: Api, reg: RegisteredDevice) -> list[dict[str, Any]]:
    r = await api.client.get(f"/api/v1/devices/{reg.id}/status/history", headers=reg.owner.headers)
    events: list[dict[str, Any]] = r.json()
    return events


async def test_last_will_fires_the_offline_rule_and_return_clears_it(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    api = mqtt_api
    [reg] = await registered(api)
    owner = reg.owner
    async with webhook_receiver() as receiver:
        r = await api.client.post(
            "/api/v1/notification-channels",
            json={"name": "hook", "kind": "webhook", "url": receiver.url},
            headers=owner.headers,
        )
        receiver.secret = r.json()["secret"]
        rule = {"name": "Gone", "kind": "offline", "scope": "device", "devices": [reg.id]}
        rule["channels"] = [r.json()["id"]]
        r = await api.client.post("/api/v1/alert-rules", json=rule, headers=owner.headers)
        assert r.status_code == 201, r.text

        device = connect(broker, devices, reg)
        device.publish("status", b'{"online": true, "fw": "1.0.0"}')

        async def online() -> bool:
            events = await status_events(api, reg)
            return bool(events) and events[0]["online"] is True

        assert await eventually(online)
        assert await alerts(api, owner) == []

        # Cut: the broker publishes the will, the offline rule fires.
        cut(device)

        async def open_alert() -> list[dict[str, Any]]:
            return [a for a in await alerts(api, owner) if a["state"] == "active"]

        [alert] = await eventually(open_alert)
        offline = (await status_events(api, reg))[0]
        assert (offline["online"], offline["reason"]) == (False, "status")
        assert alert["fired_at"] == engine.iso_ms(offline["ts"])
        assert (alert["device_id"], alert["value"], alert["rule_name"]) == (reg.id, None, "Gone")

        # Back with its online status: cleared at that moment.
        device = connect(broker, devices, reg)
        device.publish("status", b'{"online": true}')

        async def cleared() -> list[dict[str, Any]]:
            return [a for a in await alerts(api, owner) if a["state"] == "cleared"]

        [done] = await eventually(cleared)
        back = (await status_events(api, reg))[0]
        assert back["online"] is True
        assert (done["id"], done["cleared_at"]) == (alert["id"], engine.iso_ms(back["ts"]))

        # Cut again: a second alert; this time the device comes back by sending data.
        cut(device)
        [second] = await eventually(open_alert)
        assert second["id"] != alert["id"]
        device = connect(broker, devices, reg)
        device.publish("telemetry", b'{"values": {"t": 21.5}}')

        async def both_cleared() -> bool:
            return len(await cleared()) == 2

        assert await eventually(both_cleared)
        assert len(await alerts(api, owner)) == 2

        # Each transition notified once, signed.
        async def four() -> bool:
            return len(receiver.accepted()) == 4

        assert await eventually(four)
        assert [
            (r.headers["x-sensorium-event"], r.document["alert"]["id"]) for r in receiver.accepted()
        ] == [
            ("fired", alert["id"]),
            ("cleared", alert["id"]),
            ("fired", second["id"]),
            ("cleared", second["id"]),
        ]
        assert all(r.verified for r in receiver.requests)
        assert receiver.accepted()[0].document["condition"] == "offline"
