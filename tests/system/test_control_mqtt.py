"""Desired state and commands with MQTT devices on a real Mosquitto (acceptance 1 of the
device-control issue): retained desired state, reconnects, offline delivery, expiry,
ACLs, and bad messages dropped and counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api, RegisteredDevice
from tests.system.conftest import Device, provisioned, registered, wait_for
from tests.system.test_mqtt import _more_rejected, _rejected, connect

pytestmark = pytest.mark.usefixtures("devices")


def _messages(device: Device, suffix: str) -> list[Any]:
    return [
        orjson.loads(m.payload)
        for m in list(device.messages)
        if m.topic == f"devices/{device.device_id}/{suffix}" and m.payload
    ]


def online(device: Device) -> Device:
    """Subscribe like the firmware does, then announce itself (which triggers delivery)."""
    for suffix in ("state/desired", "commands"):
        assert not device.subscribe(f"devices/{device.device_id}/{suffix}")[0].is_failure
    device.publish("status", b'{"online": true, "fw": "1.0.0"}')
    return device


async def _get(api: Api, reg: RegisteredDevice, suffix: str) -> Any:
    r = await api.client.get(f"/api/v1/devices/{reg.id}{suffix}", headers=reg.owner.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def _device_online(api: Api, reg: RegisteredDevice) -> bool:
    return bool((await _get(api, reg, ""))["status"] == "online")


async def test_desired_state_reaches_the_device_retained_and_reports_confirm_it(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = online(connect(broker, devices, reg.id, reg.token))
    assert await wait_for(lambda: _device_online(mqtt_api, reg))
    r = await mqtt_api.client.put(
        f"/api/v1/devices/{reg.id}/state/desired", json={"relay": True}, headers=reg.owner.headers
    )
    assert r.status_code == 200
    assert r.json()["pending"] == ["relay"]

    async def received() -> list[Any]:
        return _messages(device, "state/desired")

    assert await wait_for(received) == [{"version": 1, "state": {"relay": True}}]
    assert [m.retain for m in device.messages] == [False]  # live delivery, not a replay
    device.publish("state/reported", b'{"version": 1, "state": {"relay": true}}')

    async def confirmed() -> bool:
        return bool((await _get(mqtt_api, reg, "/state"))["pending"] == [])

    assert await wait_for(confirmed)
    state = await _get(mqtt_api, reg, "/state")
    assert (state["reported"], state["reported_version"]) == ({"relay": True}, 1)

    # After a reconnect the device finds the current desired state waiting (retained).
    device.stop()
    again = connect(broker, devices, reg.id, reg.token)
    again.subscribe(f"devices/{reg.id}/state/desired")

    async def replayed() -> list[Any]:
        return [m for m in again.messages if m.topic.endswith("/state/desired")]

    [message] = await wait_for(replayed)
    assert message.retain
    assert orjson.loads(message.payload) == {"version": 1, "state": {"relay": True}}


async def test_desired_state_changed_while_offline_arrives_on_reconnect(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    r = await mqtt_api.client.put(
        f"/api/v1/devices/{reg.id}/state/desired",
        json={"interval_s": 60},
        headers=reg.owner.headers,
    )
    assert r.status_code == 200
    device = online(connect(broker, devices, reg.id, reg.token))

    async def received() -> list[Any]:
        return _messages(device, "state/desired")

    got = await wait_for(received)
    assert got
    assert got[-1] == {"version": 1, "state": {"interval_s": 60}}


async def test_ping_round_trip(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = online(connect(broker, devices, reg.id, reg.token))
    assert await wait_for(lambda: _device_online(mqtt_api, reg))

    async def answer() -> None:
        async def command() -> list[Any]:
            return _messages(device, "commands")

        [message] = await wait_for(command)
        assert set(message) == {"id", "name", "params", "expires_at"}
        assert message["expires_at"] > time.time() * 1000
        payload = orjson.dumps({"status": "ok", "result": {"pong": True}})
        await asyncio.to_thread(device.publish, f"commands/{message['id']}/result", payload)

    answering = asyncio.create_task(answer())
    r = await mqtt_api.client.post(
        f"/api/v1/devices/{reg.id}/commands?wait=10",
        json={"name": "ping"},
        headers=reg.owner.headers,
    )
    await answering
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["result"]) == ("succeeded", {"pong": True})
    assert body["sent_at"] is not None


async def test_a_command_waits_for_an_offline_device_and_is_delivered_when_it_returns(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = online(connect(broker, devices, reg.id, reg.token))
    assert await wait_for(lambda: _device_online(mqtt_api, reg))
    device.publish("status", b'{"online": false}')  # what its last will says

    async def offline() -> bool:
        return not await _device_online(mqtt_api, reg)

    assert await wait_for(offline)
    device.stop()
    r = await mqtt_api.client.post(
        f"/api/v1/devices/{reg.id}/commands", json={"name": "blink"}, headers=reg.owner.headers
    )
    command = r.json()
    await asyncio.sleep(0.5)
    assert (await _get(mqtt_api, reg, f"/commands/{command['id']}"))["status"] == "queued"

    back = online(connect(broker, devices, reg.id, reg.token))

    async def delivered() -> list[Any]:
        return _messages(back, "commands")

    [message] = await wait_for(delivered)
    assert message["id"] == command["id"]
    assert (await _get(mqtt_api, reg, f"/commands/{command['id']}"))["status"] == "sent"
    back.publish(f"commands/{command['id']}/result", b'{"status": "ok"}')

    async def succeeded() -> bool:
        return bool(
            (await _get(mqtt_api, reg, f"/commands/{command['id']}"))["status"] == "succeeded"
        )

    assert await wait_for(succeeded)


async def test_a_command_nobody_answers_expires(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = online(connect(broker, devices, reg.id, reg.token))
    assert await wait_for(lambda: _device_online(mqtt_api, reg))
    r = await mqtt_api.client.post(
        f"/api/v1/devices/{reg.id}/commands",
        json={"name": "reboot", "timeout_s": 1},
        headers=reg.owner.headers,
    )
    command = r.json()

    async def expired() -> bool:
        return bool(
            (await _get(mqtt_api, reg, f"/commands/{command['id']}"))["status"] == "expired"
        )

    assert await wait_for(expired, timeout_s=4)
    assert _messages(device, "commands")  # it was sent; the device never answered
    # A late answer is dropped and counted; the command stays expired.
    before = await _rejected(mqtt_api, "command_finished")
    device.publish(f"commands/{command['id']}/result", b'{"status": "ok"}')
    assert await wait_for(lambda: _more_rejected(mqtt_api, "command_finished", before))
    assert await expired()


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("state/reported", b'{"state": {"relay": true}}', "invalid_value"),
        ("state/reported", b"[]", "invalid_shape"),
        ("commands/c_00000000000000000000000000/result", b'{"status": "ok"}', "command_not_found"),
        ("commands/c_x/result", b'{"status": "perhaps"}', "invalid_value"),
    ],
)
async def test_bad_state_and_result_messages_are_dropped_and_counted(
    mqtt_api: Api,
    broker: EmbeddedBroker,
    devices: list[Device],
    kind: str,
    payload: bytes,
    reason: str,
) -> None:
    [reg] = await registered(mqtt_api)
    device = connect(broker, devices, reg.id, reg.token)
    before = await _rejected(mqtt_api, reason)
    device.publish(kind, payload)
    device.publish("state/reported", b'{"version": 0, "state": {"ok": 1}}')
    assert await wait_for(lambda: _more_rejected(mqtt_api, reason, before))

    async def good_one_stored() -> bool:
        return bool((await _get(mqtt_api, reg, "/state"))["reported"] == {"ok": 1})

    assert await wait_for(good_one_stored)
    assert await _get(mqtt_api, reg, "/commands") == []


async def test_a_device_cannot_answer_or_report_for_another(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg, victim] = await registered(mqtt_api, 2)
    r = await mqtt_api.client.post(
        f"/api/v1/devices/{victim.id}/commands", json={"name": "ping"}, headers=victim.owner.headers
    )
    command = r.json()
    device = connect(broker, devices, reg.id, reg.token)
    # It may not read the victim's commands or desired state ...
    assert device.subscribe(f"devices/{victim.id}/commands")[0].is_failure
    assert device.subscribe(f"devices/{victim.id}/state/desired")[0].is_failure
    # ... nor answer or report for it: the broker refuses (and then drops the client).
    refused = device.publish(
        f"commands/{command['id']}/result", b'{"status": "ok"}', device_id=victim.id
    )
    assert refused.is_failure
    again = connect(broker, devices, reg.id, reg.token)
    report = b'{"version": 0, "state": {"x": 1}}'
    assert again.publish("state/reported", report, device_id=victim.id).is_failure
    await asyncio.sleep(0.3)
    assert (await _get(mqtt_api, victim, f"/commands/{command['id']}"))["status"] == "queued"
    assert (await _get(mqtt_api, victim, "/state"))["reported"] == {}


async def test_a_re_registered_device_does_not_inherit_the_old_desired_state(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    r = await mqtt_api.client.put(
        f"/api/v1/devices/{reg.id}/state/desired", json={"relay": True}, headers=owner.headers
    )
    assert r.status_code == 200
    assert (
        await mqtt_api.client.delete(f"/api/v1/devices/{reg.id}", headers=owner.headers)
    ).status_code == 204
    again = await mqtt_api.device(owner, mac=reg.id)
    await provisioned(mqtt_api)
    device = connect(broker, devices, again.id, again.token)
    assert not device.subscribe(f"devices/{again.id}/state/desired")[0].is_failure
    await asyncio.sleep(0.5)
    assert _messages(device, "state/desired") == []


async def test_a_command_sent_as_the_device_comes_online_is_delivered(
    mqtt_api: Api, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device is read offline, then comes online, and its online round (which delivers
    queued commands) runs, all before the new command is committed: the request must
    see that and deliver it, or it waits for the device's next reconnect."""
    from sqlalchemy import update

    from sensorium.devices import service as devices_service
    from sensorium.devices.models import Device as DeviceRow

    [reg] = await registered(mqtt_api)
    ctx = mqtt_api.client.app.state.ctx  # type: ignore[attr-defined]
    get_device = devices_service.get_device

    async def read_as_it_comes_online(session: Any, **kwargs: Any) -> Any:
        device = await get_device(session, **kwargs)  # read while it is offline
        async with ctx.sessions() as other, other.begin():
            await other.execute(
                update(DeviceRow)
                .where(DeviceRow.id == reg.id)
                .values(
                    status="online",
                    transport="mqtt",
                    offline_at_ms=int(time.time() * 1000) + 600_000,
                )
            )
        await ctx.control.device_online(reg.id)  # finds nothing queued yet
        return device

    # The command endpoint reads the device through this module.
    monkeypatch.setattr(devices_service, "get_device", read_as_it_comes_online)
    r = await mqtt_api.client.post(
        f"/api/v1/devices/{reg.id}/commands",
        json={"name": "ping", "params": {}},
        headers=reg.owner.headers,
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "sent"  # published to the device, not left queued
