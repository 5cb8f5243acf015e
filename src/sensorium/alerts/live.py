"""The dashboard's alert stream: each alert transition of the user's devices as it is
published on the live bus (runner.alert_event), with the count of unacknowledged alerts
that the navigation badge shows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import wait_for
from sensorium.alerts.models import ACTIVE, Alert
from sensorium.devices.models import Device
from sensorium.live.bus import LiveBus

HEARTBEAT_S = 15.0


async def active_count(session: AsyncSession, *, owner_id: int) -> int:
    """Alerts of the owner that are active (open and not acknowledged)."""
    found = await session.scalar(
        select(func.count())
        .select_from(Alert)
        .where(Alert.owner_id == owner_id, Alert.state == ACTIVE)
    )
    return int(found or 0)


async def owned_devices(session: AsyncSession, *, owner_id: int) -> list[str]:
    return list(await session.scalars(select(Device.id).where(Device.owner_id == owner_id)))


def _sse(kind: str, data: dict[str, object]) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def stream(
    sessions: async_sessionmaker[AsyncSession], bus: LiveBus, *, owner_id: int, devices: list[str]
) -> AsyncIterator[bytes]:
    """`count` first (so a reconnecting page is right again), then `alert` events. Only the
    devices the user had when the stream opened are followed; pages reconnect as they load."""
    subscription = bus.subscribe(devices)
    try:
        yield b"retry: 2000\n\n"
        async with sessions() as session:
            yield _sse("count", {"active": await active_count(session, owner_id=owner_id)})
        while True:
            try:
                event = await wait_for(subscription.get(), HEARTBEAT_S)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            if event is None:
                return
            if event.kind != "alert":
                continue
            async with sessions() as session:
                active = await active_count(session, owner_id=owner_id)
            yield _sse("alert", {**event.data, "active": active, "ts": event.ts})
    finally:
        subscription.close()
