"""Live events and their fan-out: in-process by default, through Redis pub/sub when several
API processes and workers run.

A slow browser never slows ingest: publishing only ever appends to each subscriber's
bounded queue. A queue that overflows is compacted to the latest value per device and key
(a dashboard wants the newest reading, not every one it missed); a subscriber still
hopelessly behind is closed and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from sensorium.aio import cancel_and_wait
from sensorium.config import Settings
from sensorium.protocol import Reading, Readings

log = logging.getLogger(__name__)

EventKind = Literal["telemetry", "status", "state", "command", "alert", "ota"]


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    device_id: str
    data: dict[str, Any]
    # Server time (epoch ms) when the event was published: browsers measure latency by it.
    ts: int
    id: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "kind": self.kind, "device": self.device_id, "ts": self.ts, **self.data}
        )


def telemetry_event(device_id: str, readings: Sequence[Reading], *, now_ms: int) -> Event:
    """The newest reading of each key in one stored document."""
    if type(readings) is Readings:
        return Event("telemetry", device_id, {"values": readings.newest()}, now_ms)
    values: dict[str, list[float | int]] = {}
    for r in readings:
        current = values.get(r.key)
        if current is None or r.ts >= current[0]:
            values[r.key] = [r.ts, r.value]
    return Event("telemetry", device_id, {"values": values}, now_ms)


def status_event(
    device_id: str, *, online: bool, reason: str, now_ms: int, **details: Any
) -> Event:
    return Event(
        "status",
        device_id,
        {"status": "online" if online else "offline", "reason": reason, **details},
        now_ms,
    )


def _command_id(event: Event) -> str:
    command = event.data.get("command") if event.kind == "command" else None
    return str(command.get("id", "")) if isinstance(command, dict) else ""


class Subscription:
    """One client's view: the devices it follows and a bounded queue of their events."""

    def __init__(self, bus: LocalFanout, devices: Iterable[str], *, capacity: int) -> None:
        self._bus = bus
        self.devices: set[str] = set(devices)
        self._capacity = capacity
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.compactions = 0

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        self._queue.append(event)
        if len(self._queue) > self._capacity:
            self._compact()
        self._ready.set()

    def _compact(self) -> None:
        self.compactions += 1
        merged: dict[tuple[str, str, str], Event] = {}
        for event in self._queue:
            # Each command's events replace each other, not those of other commands.
            slot = (event.device_id, event.kind, _command_id(event))
            previous = merged.pop(slot, None)
            if previous is not None and event.kind == "telemetry":
                values = {**previous.data["values"], **event.data["values"]}
                event = Event(event.kind, event.device_id, {"values": values}, event.ts, event.id)
            merged[slot] = event  # re-inserted last: the order of latest arrivals is kept
        self._queue = deque(merged.values())
        if len(self._queue) > self._capacity:
            log.info("closing a live subscriber that cannot keep up")
            self.close()

    async def get(self) -> Event | None:
        """The next event; None once closed."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def pending(self) -> int:
        return len(self._queue)

    def follow(self, devices: Iterable[str]) -> None:
        self._bus.follow(self, devices)

    def unfollow(self, devices: Iterable[str]) -> None:
        self._bus.unfollow(self, devices)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.clear()
            self._bus.unsubscribe(self)
            self._ready.set()


class LocalFanout:
    """Delivers events to this process's subscribers."""

    def __init__(self, capacity: int = 1000) -> None:
        self._by_device: dict[str, set[Subscription]] = {}
        self._capacity = capacity
        self._ids = itertools.count(1)

    def subscribe(self, devices: Iterable[str] = ()) -> Subscription:
        subscription = Subscription(self, (), capacity=self._capacity)
        self.follow(subscription, devices)
        return subscription

    def follow(self, subscription: Subscription, devices: Iterable[str]) -> None:
        for device in devices:
            subscription.devices.add(device)
            self._by_device.setdefault(device, set()).add(subscription)

    def unfollow(self, subscription: Subscription, devices: Iterable[str]) -> None:
        for device in list(devices):
            subscription.devices.discard(device)
            followers = self._by_device.get(device)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._by_device[device]

    def unsubscribe(self, subscription: Subscription) -> None:
        self.unfollow(subscription, list(subscription.devices))

    def deliver(self, event: Event) -> None:
        followers = self._by_device.get(event.device_id)
        if not followers:
            return
        if not event.id:
            event = Event(event.kind, event.device_id, event.data, event.ts, next(self._ids))
        for subscription in list(followers):
            subscription.offer(event)

    def subscriber_count(self) -> int:
        return len({s for subs in self._by_device.values() for s in subs})


class LiveBus(Protocol):
    fanout: LocalFanout

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def publish(self, event: Event) -> None: ...
    def subscribe(self, devices: Iterable[str] = ()) -> Subscription: ...


class InProcessBus:
    """Everything in one process (`sensorium serve`)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.fanout = LocalFanout(capacity)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish(self, event: Event) -> None:
        self.fanout.deliver(event)

    def subscribe(self, devices: Iterable[str] = ()) -> Subscription:
        return self.fanout.subscribe(devices)


@dataclass
class RedisBus:
    """Events go through one Redis pub/sub channel; every process delivers what arrives
    to its own subscribers (including events it published itself)."""

    url: str
    capacity: int = 1000
    channel: str = "sensorium:live"
    fanout: LocalFanout = field(init=False)
    _outbox: asyncio.Queue[bytes] = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _redis: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.fanout = LocalFanout(self.capacity)
        self._outbox = asyncio.Queue(maxsize=100_000)

    async def start(self) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(self.url)
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self.channel)
        self._tasks = [
            asyncio.create_task(self._listen(pubsub), name="live-redis-listen"),
            asyncio.create_task(self._send(), name="live-redis-send"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        if self._redis is not None:
            await self._redis.aclose()

    def publish(self, event: Event) -> None:
        try:
            self._outbox.put_nowait(event.to_json())
        except asyncio.QueueFull:
            log.warning("live bus outbox full; dropping an event of %s", event.device_id)

    async def _send(self) -> None:
        while True:
            payload = await self._outbox.get()
            batch = [payload]
            while not self._outbox.empty() and len(batch) < 500:
                batch.append(self._outbox.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for item in batch:
                        pipe.publish(self.channel, item)
                    await pipe.execute()
            except Exception as exc:
                log.warning("live bus: Redis publish failed (%s)", exc)
                await asyncio.sleep(0.5)

    async def _listen(self, pubsub: Any) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    doc = orjson.loads(message["data"])
                    data = {k: v for k, v in doc.items() if k not in {"id", "kind", "device", "ts"}}
                    self.fanout.deliver(Event(doc["kind"], doc["device"], data, doc["ts"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live bus: Redis subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await pubsub.subscribe(self.channel)

    def subscribe(self, devices: Iterable[str] = ()) -> Subscription:
        return self.fanout.subscribe(devices)


def make_bus(settings: Settings) -> LiveBus:
    if settings.redis_url:
        return RedisBus(settings.redis_url, settings.live_queue_capacity, settings.live_channel)
    return InProcessBus(settings.live_queue_capacity)
