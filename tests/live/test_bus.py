"""The in-process fan-out: order, isolation of slow subscribers, compaction, closing."""

from __future__ import annotations

import asyncio

from sensorium.live.bus import Event, InProcessBus, telemetry_event
from sensorium.protocol import Reading


def reading_event(device: str, i: int) -> Event:
    return telemetry_event(device, [Reading(ts=i, key="t", value=float(i))], now_ms=i)


async def test_events_arrive_in_order_only_for_followed_devices() -> None:
    bus = InProcessBus(capacity=100)
    mine = bus.subscribe(["aa"])
    other = bus.subscribe(["bb"])
    for i in range(50):
        bus.publish(reading_event("aa", i))
    bus.publish(reading_event("cc", 0))
    got = [await mine.get() for _ in range(50)]
    assert [e.data["values"]["t"][1] for e in got if e is not None] == [float(i) for i in range(50)]
    assert mine.pending() == 0
    assert other.pending() == 0


async def test_a_slow_subscriber_is_compacted_to_the_latest_values_then_closed() -> None:
    bus = InProcessBus(capacity=10)
    slow = bus.subscribe(["aa", "bb"])
    fast = bus.subscribe(["aa"])
    for i in range(100):
        bus.publish(reading_event("aa", i))
        bus.publish(telemetry_event("bb", [Reading(ts=i, key=f"k{i % 3}", value=i)], now_ms=i))
        event = await fast.get()
        assert event is not None
        assert event.data["values"]["t"][1] == float(i)  # the fast one misses nothing
    assert slow.compactions > 0
    assert not slow.closed
    latest = [await slow.get() for _ in range(slow.pending())]
    by_device = {e.device_id: e.data["values"] for e in latest if e is not None}
    assert by_device["aa"]["t"] == [99, 99.0]
    assert by_device["bb"] == {"k0": [99, 99.0], "k1": [97, 97.0], "k2": [98, 98.0]}

    # With more distinct devices than the queue holds, compaction cannot help: closed.
    hopeless = bus.subscribe([f"d{i}" for i in range(20)])
    for i in range(20):
        bus.publish(reading_event(f"d{i}", i))
    assert hopeless.closed
    assert await hopeless.get() is None
    assert bus.fanout.subscriber_count() == 2


async def test_get_waits_for_the_next_event() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(["aa"])
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    bus.publish(reading_event("aa", 1))
    event = await asyncio.wait_for(waiter, 1)
    assert event is not None
    assert event.id > 0
    sub.close()
    assert await sub.get() is None
