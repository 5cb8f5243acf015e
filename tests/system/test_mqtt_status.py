"""Status messages over MQTT from a fleet: heartbeats are stored together, each device's in
order, and only a (re)connection sends a device its desired state again."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api, RegisteredDevice
from tests.system.conftest import Device, registered, wait_for
from tests.system.test_control_mqtt import _messages, online
from tests.system.test_mqtt import connect

pytestmark = pytest.mark.usefixtures("devices")


async def _device(api: Api, reg: RegisteredDevice) -> Any:
    r = await api.client.get(f"/api/v1/devices/{reg.id}", headers=reg.owner.headers)
    assert r.status_code == 200, r.text
    return r.json()


def _status(**fields: Any) -> bytes:
    return orjson.dumps(fields)


async def test_heartbeats_of_a_fleet_are_stored_and_each_devices_transitions_in_order(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    regs = await registered(mqtt_api, 12)
    fleet = [connect(broker, devices, reg.id, reg.token) for reg in regs]
    flipper, flipper_reg = fleet[0], regs[0]
    # All published while the server's event loop is held (publish waits for the broker's
    # PUBACK synchronously), so they reach ingest together.
    for beat in range(3):
        for device in fleet:
            device.publish(
                "status", _status(online=True, uptime_s=10 * (beat + 1), rssi=-50 - beat)
            )
        if beat == 0:
            flipper.publish("status", _status(online=False))
            flipper.publish("status", _status(online=True, uptime_s=1, fw="1.0.1"))

    async def all_stored() -> bool:
        infos = [(await _device(mqtt_api, reg))["info"] for reg in regs]
        return all(info.get("uptime_s") == 30 and info.get("rssi") == -52 for info in infos)

    assert await wait_for(all_stored, timeout_s=10)
    r = await mqtt_api.client.get(
        f"/api/v1/devices/{flipper_reg.id}/status/history", headers=flipper_reg.owner.headers
    )
    assert [(e["online"], e["reason"]) for e in r.json()] == [
        (True, "status"),
        (False, "status"),
        (True, "status"),
    ]
    body = await _device(mqtt_api, flipper_reg)
    assert (body["status"], body["firmware_version"]) == ("online", "1.0.1")
    for reg in regs[1:]:
        r = await mqtt_api.client.get(
            f"/api/v1/devices/{reg.id}/status/history", headers=reg.owner.headers
        )
        assert [e["online"] for e in r.json()] == [True]


async def test_a_heartbeat_does_not_resend_the_desired_state_a_reconnect_or_reboot_does(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = online(connect(broker, devices, reg.id, reg.token))
    r = await mqtt_api.client.put(
        f"/api/v1/devices/{reg.id}/state/desired", json={"relay": True}, headers=reg.owner.headers
    )
    assert r.status_code in (200, 202), r.text

    async def desired_count(n: int) -> bool:
        return len(_messages(device, "state/desired")) >= n

    assert await wait_for(lambda: desired_count(1))
    # Whatever the first connection's delivery sends has arrived by now.
    await asyncio.sleep(0.5)
    received = len(_messages(device, "state/desired"))

    async def uptime(value: int) -> bool:
        return bool((await _device(mqtt_api, reg))["info"].get("uptime_s") == value)

    for beat in (100, 130, 160):
        device.publish("status", _status(online=True, uptime_s=beat))
    assert await wait_for(lambda: uptime(160))
    await asyncio.sleep(0.5)
    assert len(_messages(device, "state/desired")) == received
    # A reboot (its uptime went back) is a new connection: the desired state goes again.
    device.publish("status", _status(online=True, uptime_s=3))
    assert await wait_for(lambda: desired_count(received + 1))
    # Offline (its last will), then back: again.
    device.publish("status", _status(online=False))
    device.publish("status", _status(online=True, uptime_s=1))
    assert await wait_for(lambda: desired_count(received + 2))
