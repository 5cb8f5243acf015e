"""paho's thread hands messages to the event loop in bursts: every message arrives, in order,
with far fewer wake-ups than messages, and none is stranded by a wake-up race."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from sensorium.broker.endpoint import MqttEndpoint
from sensorium.worker.ingest import MqttIngest


def _ingest() -> MqttIngest:
    return MqttIngest(
        MqttEndpoint("127.0.0.1", 1, "worker", "x"),
        client_id="test",
        writer=None,  # type: ignore[arg-type]  # not reached: nothing is consumed here
        sessions=None,  # type: ignore[arg-type]
        retention_days=1,
        offline_after_s=60,
        session_expiry_s=60,
    )


async def test_every_message_arrives_in_order_with_a_wake_up_per_burst() -> None:
    ingest = _ingest()
    loop = asyncio.get_running_loop()
    ingest._loop = loop
    wakeups = 0
    original = ingest._take_arrived

    def counting() -> None:
        nonlocal wakeups
        wakeups += 1
        original()

    ingest._take_arrived = counting  # type: ignore[method-assign]
    total = 20_000

    def network_thread() -> None:
        # Bursts of varying size with pauses between them, the loop draining meanwhile: a
        # message appended while the loop takes the others must still get a wake-up.
        for i in range(total):
            ingest._on_message(None, None, mqtt.MQTTMessage(mid=i % 65535 + 1))  # type: ignore[arg-type]
            if i % 97 == 0:
                time.sleep(0.0005)

    thread = threading.Thread(target=network_thread)
    thread.start()
    received: list[int] = []
    deadline = loop.time() + 30
    while len(received) < total and loop.time() < deadline:
        try:
            item: Any = await asyncio.wait_for(ingest._inbox.get(), 5)
        except TimeoutError:
            break
        _generation, message = item
        received.append(message.mid)
        if len(received) % 500 == 0:
            await asyncio.sleep(0.001)  # the loop busy elsewhere while paho keeps going
    thread.join()
    assert received == [i % 65535 + 1 for i in range(total)]
    assert not ingest._arrived
    assert ingest._inbox.empty()
    assert 0 < wakeups < total / 5
