"""Devices on a real Mosquitto: credentials, ACLs enforced by the broker, ingest, status,
logs, and what bad input does (nothing, but a counter)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable

import orjson
import pytest

from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api, RegisteredDevice
from tests.system.conftest import Device, point_values, provisioned, registered, wait_for

pytestmark = pytest.mark.usefixtures("devices")


def connect(
    broker: EmbeddedBroker, devices: list[Device], device_id: str, password: str, **kw: object
) -> Device:
    assert broker.address is not None
    device = Device(broker.address, device_id, password, **kw)  # type: ignore[arg-type]
    devices.append(device)
    return device.start()


async def history(api: Api, device: RegisteredDevice) -> list[float]:
    r = await api.client.get(f"/api/v1/devices/{device.id}/telemetry", headers=device.owner.headers)
    return point_values(r)


async def test_registered_device_connects_and_its_points_arrive(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = connect(broker, devices, reg.id, reg.token)
    assert device.connack is not None
    assert not device.connack.is_failure
    ts = int(time.time() * 1000) - 1000
    batch = [{"ts": ts + i, "values": {"t": float(i)}} for i in range(50)]
    assert not device.publish("telemetry", orjson.dumps({"t": 100.0})).is_failure
    assert not device.publish("telemetry", orjson.dumps(batch)).is_failure
    values = await wait_for(lambda: _count(mqtt_api, reg, 51))
    assert values
    assert sorted(await history(mqtt_api, reg)) == sorted([*map(float, range(50)), 100.0])


async def _count(api: Api, reg: RegisteredDevice, n: int) -> bool:
    return len(await history(api, reg)) >= n


async def test_wrong_password_is_refused(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = connect(broker, devices, reg.id, reg.token + "x")
    assert device.connack is not None
    assert device.connack.value in (0x86, 0x87)  # bad user name or password / not authorized
    stranger = connect(broker, devices, "0200000000ee", "anything")
    assert stranger.connack is not None
    assert stranger.connack.is_failure


async def test_revoked_device_is_disconnected_and_refused(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    device = connect(broker, devices, reg.id, reg.token)
    assert device.connected.is_set()
    r = await mqtt_api.client.post(f"/api/v1/devices/{reg.id}/token/revoke", headers=owner.headers)
    assert r.status_code == 204
    await provisioned(mqtt_api)
    assert await wait_for(lambda: _flag(not device.connected.is_set()))
    again = connect(broker, devices, reg.id, reg.token)
    assert again.connack is not None
    assert again.connack.is_failure


async def _flag(value: bool) -> bool:
    return value


async def test_rotation_kicks_the_old_token_and_the_new_one_works(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    old = connect(broker, devices, reg.id, reg.token)
    assert old.connected.is_set()
    r = await mqtt_api.client.post(f"/api/v1/devices/{reg.id}/token/rotate", headers=owner.headers)
    new_token = r.json()["token"]
    await provisioned(mqtt_api)
    assert await wait_for(lambda: _flag(bool(old.disconnects)))
    old.stop()
    new = connect(broker, devices, reg.id, new_token)
    assert new.connected.is_set()


async def test_the_broker_stops_cross_device_publishes(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    a, b = await registered(mqtt_api, 2)
    device_a = connect(broker, devices, a.id, a.token)
    reason = device_a.publish("telemetry", b'{"t": 1}', device_id=b.id)
    assert reason.value == 0x87  # not authorized (MQTT 5 PUBACK)
    # A publishes to its own topic afterwards: that arrives, B's data stays empty.
    device_a.publish("telemetry", b'{"t": 2}')
    assert await wait_for(lambda: _count(mqtt_api, a, 1))
    assert await history(mqtt_api, b) == []
    # Nor may a device write its own downlink (it could forge desired state or OTA).
    assert device_a.publish("ota", b"{}").value == 0x87


async def test_a_device_cannot_subscribe_to_another_devices_downlink(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    a, b = await registered(mqtt_api, 2)
    device_a = connect(broker, devices, a.id, a.token)
    for topic in (f"devices/{b.id}/commands", f"devices/{b.id}/#", "devices/+/commands", "#"):
        assert all(r.is_failure for r in device_a.subscribe(topic)), topic
    assert not any(r.is_failure for r in device_a.subscribe(f"devices/{a.id}/commands"))


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("telemetry", b"not json", "invalid_json"),
        ("telemetry", b'{"t": "hot"}', "invalid_value"),
        ("telemetry", b'[{"values": {"t": 1}}, {"values": {"bad key": 1}}]', "invalid_key"),
        ("telemetry", orjson.dumps({"t": 1, "pad": "x" * 270_000}), "payload_too_large"),
        ("status", b'{"rssi": "strong"}', "invalid_value"),
        ("logs", b'{"msg": 5}', "invalid_value"),
    ],
)
async def test_bad_messages_are_dropped_counted_and_the_next_good_one_arrives(
    mqtt_api: Api,
    broker: EmbeddedBroker,
    devices: list[Device],
    kind: str,
    payload: bytes,
    reason: str,
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    device = connect(broker, devices, reg.id, reg.token)
    before = await _rejected(mqtt_api, reason)
    device.publish(kind, payload)
    device.publish("telemetry", b'{"good": 1}')
    assert await wait_for(lambda: _count(mqtt_api, reg, 1))
    assert await history(mqtt_api, reg) == [1.0]
    assert await wait_for(lambda: _more_rejected(mqtt_api, reason, before))
    body = (await mqtt_api.client.get(f"/api/v1/devices/{reg.id}", headers=owner.headers)).json()
    assert body["info"] == {}
    logs = await mqtt_api.client.get(f"/api/v1/devices/{reg.id}/logs", headers=owner.headers)
    assert logs.json() == []


async def _rejected(api: Api, reason: str) -> float:
    text = (await api.client.get("/metrics")).text
    prefix = f'sensorium_ingest_rejected_total{{reason="{reason}",transport="mqtt"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def _more_rejected(api: Api, reason: str, before: float) -> bool:
    return await _rejected(api, reason) > before


async def test_status_and_logs_are_stored(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    device = connect(broker, devices, reg.id, reg.token)
    device.publish("status", b'{"online": true, "fw": "1.3.0", "rssi": -58, "uptime_s": 12}')
    device.publish("logs", b'{"level": "warn", "msg": "DHT22 read failed"}')

    async def stored() -> bool:
        body = (
            await mqtt_api.client.get(f"/api/v1/devices/{reg.id}", headers=owner.headers)
        ).json()
        logs = await mqtt_api.client.get(f"/api/v1/devices/{reg.id}/logs", headers=owner.headers)
        return body["firmware_version"] == "1.3.0" and len(logs.json()) == 1

    assert await wait_for(stored)
    body = (await mqtt_api.client.get(f"/api/v1/devices/{reg.id}", headers=owner.headers)).json()
    assert body["status"] == "online"
    assert body["info"] == {"rssi": -58, "uptime_s": 12}
    logs = await mqtt_api.client.get(f"/api/v1/devices/{reg.id}/logs", headers=owner.headers)
    assert logs.json()[0]["level"] == "warn"
    assert logs.json()[0]["message"] == "DHT22 read failed"


async def test_last_will_turns_a_dropped_device_offline(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    device = connect(broker, devices, reg.id, reg.token, keepalive=1, will=b'{"online": false}')
    device.publish("status", b'{"online": true}')

    async def status() -> str:
        r = await mqtt_api.client.get(f"/api/v1/devices/{reg.id}", headers=owner.headers)
        return str(r.json()["status"])

    assert await wait_for(lambda: _equals(status(), "online"))
    live = mqtt_api.client.app.state.ctx.bus.subscribe([reg.id])  # type: ignore[attr-defined]
    # Kill the connection without DISCONNECT: only keep-alive expiry reveals it.
    assert device.client is not None
    sock = device.client.socket()
    assert isinstance(sock, socket.socket)
    device.client.loop_stop()
    sock.close()
    dropped_at = time.monotonic()
    assert await wait_for(lambda: _equals(status(), "offline"), timeout_s=6)
    # Keep-alive 1 s: the broker gives up after 1.5 s; the API must show it within 2 s more.
    assert time.monotonic() - dropped_at < 1.5 + 2 + 0.5
    # ... and so must the live bus (what browsers see).
    event = await asyncio.wait_for(live.get(), 1)
    assert event is not None
    assert (event.kind, event.data["status"]) == ("status", "offline")
    live.close()
    history = await mqtt_api.client.get(
        f"/api/v1/devices/{reg.id}/status/history", headers=owner.headers
    )
    assert [e["online"] for e in history.json()][:2] == [False, True]
    device.client = None
    again = connect(broker, devices, reg.id, reg.token)
    again.publish("status", b'{"online": true}')
    assert await wait_for(lambda: _equals(status(), "online"))


async def _equals(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def test_deleting_a_device_deletes_its_broker_account(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    owner = reg.owner
    device = connect(broker, devices, reg.id, reg.token)
    assert device.connected.is_set()
    assert (
        await mqtt_api.client.delete(f"/api/v1/devices/{reg.id}", headers=owner.headers)
    ).status_code == 204
    await provisioned(mqtt_api)
    assert await wait_for(lambda: _flag(not device.connected.is_set()))
    again = connect(broker, devices, reg.id, reg.token)
    assert again.connack is not None
    assert again.connack.is_failure


async def test_the_supervisor_restarts_a_killed_broker(broker: EmbeddedBroker) -> None:
    supervisor = broker.supervisor
    assert supervisor is not None
    assert supervisor.pid is not None
    old_pid = supervisor.pid
    import os
    import signal

    os.kill(old_pid, signal.SIGKILL)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if supervisor.pid not in (None, old_pid):
            break
    assert supervisor.pid not in (None, old_pid)
    await supervisor.wait_ready()
    assert supervisor.restarts == 1
