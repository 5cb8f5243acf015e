"""MQTT ingest when storing goes wrong: a writer that cannot keep up holds messages back
(nothing dropped), and a document the database refuses for its content is dropped and
counted without holding back the acknowledgements of everything after it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from sensorium.config import Settings
from sensorium.protocol import telemetry as protocol_telemetry
from sensorium.telemetry.writer import BatchWriter
from sensorium.worker.ingest import MqttIngest
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api, RegisteredDevice, running_client
from tests.system.conftest import Device, point_values, registered, wait_for

pytestmark = pytest.mark.usefixtures("devices")


def _connect(broker: EmbeddedBroker, devices: list[Device], reg: RegisteredDevice) -> Device:
    assert broker.address is not None
    device = Device(broker.address, reg.id, reg.token)
    devices.append(device)
    device.start()
    assert device.connected.is_set()
    return device


async def _values(api: Api, reg: RegisteredDevice, key: str) -> list[float]:
    r = await api.client.get(
        f"/api/v1/devices/{reg.id}/telemetry",
        params={"keys": key, "interval": "raw", "limit": 1000},
        headers=reg.owner.headers,
    )
    assert r.status_code == 200, r.text
    return point_values(r)


async def _rejected(api: Api, reason: str) -> float:
    text = (await api.client.get("/metrics")).text
    prefix = f'sensorium_ingest_rejected_total{{reason="{reason}",transport="mqtt"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _ingest(api: Api) -> MqttIngest:
    ingest = api.client.app.state.mqtt.ingest  # type: ignore[attr-defined]
    assert isinstance(ingest, MqttIngest)
    return ingest


async def test_a_full_writer_queue_holds_messages_back_and_drops_none(
    settings: Settings,
    broker: EmbeddedBroker,
    devices: list[Device],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A writer that takes 20 ms a batch and queues 2 documents: 60 messages arrive at once.
    original = BatchWriter._write

    async def slow(self: BatchWriter, jobs: Any) -> Any:
        await asyncio.sleep(0.02)
        return await original(self, jobs)

    monkeypatch.setattr(BatchWriter, "_write", slow)
    assert broker.address is not None
    tight = settings.model_copy(update={"writer_queue_size": 2})
    async with running_client(tight, broker=broker.address) as client:
        api = Api(client)
        [reg] = await registered(api)
        device = _connect(broker, devices, reg)
        overloaded_before = await _rejected(api, "overloaded")
        start = int(time.time() * 1000) - 60_000
        for i in range(60):
            payload = orjson.dumps({"ts": start + i, "values": {"n": i}})
            assert not device.publish("telemetry", payload).is_failure

        async def all_stored() -> bool:
            return len(await _values(api, reg, "n")) == 60

        assert await wait_for(all_stored, timeout_s=20)
        assert sorted(await _values(api, reg, "n")) == [float(i) for i in range(60)]
        assert await _rejected(api, "overloaded") == overloaded_before
        assert await wait_for(lambda: _acked(_ingest(api)))


async def _acked(ingest: MqttIngest) -> bool:
    return len(ingest._acks) == 0


async def test_a_document_the_database_refuses_is_dropped_and_later_ones_are_acknowledged(
    settings: Settings,
    broker: EmbeddedBroker,
    devices: list[Device],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite stores a float overflow as infinity: it refuses no value")
    # Without the protocol's ±1e18 limit, two readings near the largest double in one
    # minute overflow the minute rollup's sum: PostgreSQL refuses the second for good.
    monkeypatch.setattr(protocol_telemetry, "MAX_ABS_VALUE", float("inf"))
    assert broker.address is not None
    async with running_client(settings, broker=broker.address) as client:
        api = Api(client)
        [reg] = await registered(api)
        device = _connect(broker, devices, reg)
        before = await _rejected(api, "unstorable")
        ts = int(time.time() * 1000) - 10_000
        device.publish("telemetry", orjson.dumps({"ts": ts, "values": {"v": 1.7e308}}))

        async def first_stored() -> bool:
            return await _values(api, reg, "v") == [1.7e308]

        assert await wait_for(first_stored)
        # In a transaction of its own (one batch would add the two up in Python, to inf).
        device.publish("telemetry", orjson.dumps({"ts": ts + 1, "values": {"v": 1.7e308}}))
        for i in range(20):
            device.publish("telemetry", orjson.dumps({"ts": ts + 10 + i, "values": {"ok": i}}))

        async def refused() -> bool:
            return await _rejected(api, "unstorable") == before + 1

        assert await wait_for(refused, timeout_s=10)

        async def good_stored() -> bool:
            return len(await _values(api, reg, "ok")) == 20

        assert await wait_for(good_stored)
        assert await _values(api, reg, "v") == [1.7e308]
        # Nothing waits behind the refused message: every ack went out.
        assert await wait_for(lambda: _acked(_ingest(api)))
