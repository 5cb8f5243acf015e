"""The firmware's MQTT 5 client (firmware/lib/sensorium_fw/mqtt5.py) under CPython on a
real socket, against the real Mosquitto with Dynamic Security and the served app: what
the broker answers by reason code, the will, downlink messages, and PUBACK 0x10 when no
ingest is subscribed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sensorium.config import Settings
from sensorium.worker.runtime import EmbeddedBroker
from tests.firmware import host
from tests.firmware.conftest import Served, device_nobody_hears
from tests.firmware.test_system import get, points, register
from tests.helpers import RegisteredDevice
from tests.system.conftest import wait_for


def client(port: int, device: RegisteredDevice, token: str | None = None) -> Any:
    mqtt5 = host.firmware("mqtt5")
    made = mqtt5.Client(
        device.id, "127.0.0.1", port, user=device.id, password=token or device.token, keepalive=5
    )
    made.set_last_will(f"devices/{device.id}/status", b'{"online": false}', True, 1)
    return made


def received(device: Any, until: float = 5.0) -> list[tuple[bytes, bytes]]:
    """What arrives within `until` seconds (stops at the first message)."""
    got: list[tuple[bytes, bytes]] = []
    device.set_callback(lambda topic, payload: got.append((topic, payload)))
    deadline = time.monotonic() + until
    while not got and time.monotonic() < deadline:
        device.check_msg()
        time.sleep(0.02)
    return got


async def test_a_device_connects_subscribes_publishes_and_leaves_its_will(
    served: Served, board: host.World
) -> None:
    mqtt5 = host.firmware("mqtt5")
    device = await register(served)
    other = await served.api.device(device.owner)
    r = await served.api.client.put(
        f"/api/v1/devices/{device.id}/state/desired",
        json={"relay": True},
        headers=device.owner.headers,
    )
    assert r.status_code == 200, r.text

    wrong = client(served.mqtt_port, device, token="not-the-token")
    refused = await asyncio.to_thread(_raises, mqtt5.Refused, wrong.connect)
    assert refused.code == 0x87, refused  # Mosquitto's answer to a wrong password
    assert str(refused) == "connect refused: 0x87 not authorized"
    assert wrong.sock is None

    ok = client(served.mqtt_port, device)
    await asyncio.to_thread(ok.connect)
    topics = [f"devices/{device.id}/{kind}" for kind in ("state/desired", "commands", "ota")]
    await asyncio.to_thread(ok.subscribe, topics, 1)
    # The retained desired state arrives once subscribed.
    ((topic, payload),) = await asyncio.to_thread(received, ok)
    assert topic == f"devices/{device.id}/state/desired".encode()
    assert json.loads(payload)["state"] == {"relay": True}
    # Another device's topics are refused by the broker's ACL, by reason code.
    refused = await asyncio.to_thread(
        _raises, mqtt5.Refused, ok.subscribe, [f"devices/{other.id}/commands"], 1
    )
    assert refused.code == 0x87, refused

    reading = {"ts": int(time.time() * 1000), "values": {"co2": 612}}
    code = await asyncio.to_thread(
        ok.publish, f"devices/{device.id}/telemetry", json.dumps(reading).encode()
    )
    assert code == 0  # the ingest is subscribed
    status = b'{"online": true, "fw": "1.0.0"}'
    assert await asyncio.to_thread(ok.publish, f"devices/{device.id}/status", status, True) == 0

    async def stored() -> list[tuple[int, float]]:
        return await points(served, device, "co2")

    assert await wait_for(stored, timeout_s=10) == [(reading["ts"], 612.0)]
    assert await asyncio.to_thread(_pinged, ok)
    info = await get(served, device.owner, f"/api/v1/devices/{device.id}")
    assert info["status"] == "online"

    # Gone without a DISCONNECT (power cut): the broker publishes the will.
    assert ok.sock is not None
    ok.sock.close()

    async def offline() -> bool:
        body = await get(served, device.owner, f"/api/v1/devices/{device.id}")
        return bool(body["status"] == "offline")

    assert await wait_for(offline, timeout_s=15)

    # Publishing to another device's topic: PUBACK 0x87 (Mosquitto 2.0 then closes the
    # connection; the firmware reconnects).
    again = client(served.mqtt_port, device)
    await asyncio.to_thread(again.connect)
    refused = await asyncio.to_thread(
        _raises, mqtt5.Refused, again.publish, f"devices/{other.id}/telemetry", b'{"co2": 1}'
    )
    assert refused.code == 0x87, refused
    assert str(refused) == f"publish to devices/{other.id}/telemetry refused: 0x87 not authorized"
    again.close()


async def test_no_ingest_means_puback_0x10(
    settings: Settings, broker: EmbeddedBroker, board: host.World
) -> None:
    """Nobody subscribed: a non-retained publish raises NoSubscribers, a retained one
    (kept by the broker for later subscribers) returns 0x10."""
    mqtt5 = host.firmware("mqtt5")
    device = await device_nobody_hears(settings, broker)
    assert broker.address is not None
    made = client(broker.address.port, device)
    await asyncio.to_thread(made.connect)
    telemetry = f"devices/{device.id}/telemetry"
    lost = await asyncio.to_thread(_raises, mqtt5.NoSubscribers, made.publish, telemetry, b"{}")
    assert isinstance(lost, OSError)
    assert str(lost) == f"{telemetry}: 0x10 no matching subscribers"
    status = f"devices/{device.id}/status"
    assert await asyncio.to_thread(made.publish, status, b'{"online": true}', True) == 0x10
    await asyncio.to_thread(made.disconnect)


def _raises(kind: type[BaseException], fn: Any, *args: Any) -> Any:
    try:
        fn(*args)
    except kind as exc:
        return exc
    raise AssertionError(f"{fn} did not raise {kind.__name__}")


def _pinged(device: Any) -> bool:
    """PINGREQ, and the PINGRESP read back within 5 s."""
    device.ping()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        device.check_msg()
        if not device._pinged:
            return True
        time.sleep(0.02)
    return False
