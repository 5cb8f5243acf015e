"""The messages of each read are handled at once while the writer has room; when it is
full the rest wait, in order, and are handled as room comes; acks go out in arrival order
only after their writes; nothing is taken once the worker is stopping."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from sensorium.broker.endpoint import MqttEndpoint
from sensorium.protocol import Reading
from sensorium.telemetry.writer import Done
from sensorium.worker.ingest import MqttIngest
from sensorium.worker.paho_loop import Message

DEVICE = "02000000000a"


class FakeWriter:
    """Holds at most `room` documents until `commit()`."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.jobs: list[tuple[str, Sequence[Reading], Done, Any]] = []
        self._freed = asyncio.Event()

    def full(self) -> bool:
        return len(self.jobs) >= self.room

    async def wait_for_room(self) -> None:
        while self.full():
            self._freed.clear()
            await self._freed.wait()

    def enqueue(
        self, device_id: str, readings: Sequence[Reading], done: Done, tag: Any = None
    ) -> None:
        self.jobs.append((device_id, readings, done, tag))

    def commit(self) -> list[float]:
        values = [r.value for _d, readings, _f, _t in self.jobs for r in readings]
        jobs, self.jobs = self.jobs, []
        for device_id, readings, done, tag in jobs:
            done(len(readings), device_id, readings, tag)
        self._freed.set()
        return values


class Driver:
    """Records what the ingest asks of the connection."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int) -> None:
        self.acked.append(mid)


def _ingest(writer: FakeWriter) -> MqttIngest:
    """An ingest over `writer`, with no broker connection and no database."""
    return MqttIngest(
        MqttEndpoint("127.0.0.1", 1, "worker", "x"),
        client_id="test",
        writer=writer,  # type: ignore[arg-type]
        sessions=None,  # type: ignore[arg-type]
        retention_days=100_000,
        offline_after_s=60,
        session_expiry_s=60,
    )


def _message(mid: int) -> Message:
    payload = orjson.dumps({"ts": 1_700_000_000_000 + mid, "values": {"t": float(mid)}})
    return Message(f"devices/{DEVICE}/telemetry", payload, mid, 1, False)


async def test_a_full_writer_holds_the_rest_in_order_and_acks_follow_the_commits() -> None:
    writer = FakeWriter(room=10)
    ingest = _ingest(writer)
    acked: list[int] = []
    ingest._acks._send = lambda mid, _qos, _gen: acked.append(mid)
    ingest._consumer = asyncio.create_task(ingest._drain_held())
    stored: list[float] = []

    ingest._received([_message(mid) for mid in range(1, 26)])
    # Ten taken at once, fifteen held; none acknowledged before its write commits.
    assert len(writer.jobs) == 10
    assert len(ingest._held) == 15
    assert acked == []
    ingest._received([_message(mid) for mid in range(26, 31)])  # behind the held ones
    assert len(ingest._held) == 20
    while len(stored) < 30:
        stored += writer.commit()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert stored == [float(mid) for mid in range(1, 31)]
    assert acked == list(range(1, 31))
    assert not ingest._held

    ingest._closing = True
    ingest._wake.set()
    await asyncio.wait_for(ingest._consumer, 1)
    ingest._received([_message(31)])
    assert writer.jobs == []
    assert not ingest._held
    assert len(ingest._acks) == 0


async def test_acks_of_a_closed_connection_are_never_sent() -> None:
    writer = FakeWriter(room=100)
    ingest = _ingest(writer)
    driver = Driver()
    ingest._driver = driver  # type: ignore[assignment]
    ingest._received([_message(1), _message(2)])
    ingest._connection_closed()  # before the commit
    ingest._received([_message(1)])  # the broker redelivers, reusing the id
    writer.commit()
    await asyncio.sleep(0)
    assert driver.acked == [1]  # the redelivered one's, once
