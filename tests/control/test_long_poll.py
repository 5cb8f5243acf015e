"""A device long-poll stops when it is cancelled (server shutdown, a client's link closed
in process), also when the cancellation lands just as an event for the device arrives."""

from __future__ import annotations

import asyncio

from sensorium.control.router import _next_event
from sensorium.live.bus import InProcessBus, status_event


async def test_a_long_poll_cancelled_as_an_event_arrives_ends() -> None:
    bus = InProcessBus()
    subscription = bus.subscribe(["aabbccddeeff"])
    loop = asyncio.get_running_loop()

    async def poll() -> None:
        # As the state and commands polls do: wait for a wanted event until the deadline.
        deadline = loop.time() + 30
        while loop.time() < deadline:
            await _next_event(subscription, deadline, lambda _event: False)

    task = asyncio.create_task(poll())
    await asyncio.sleep(0.05)
    # An event nobody waits for (the device's own offline report, as it drops its link) ...
    bus.publish(status_event("aabbccddeeff", online=False, reason="will", now_ms=0))
    task.cancel()  # ... and the cancellation, together
    await asyncio.sleep(0.1)
    # With Python 3.11's asyncio.wait_for the poll went on for its whole 30 s.
    assert task.done()
    assert task.cancelled()
    subscription.close()
