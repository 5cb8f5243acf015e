"""The dispatcher's flood guard and disabled channels with the clock passed in: the app's
own scheduler passes once at start and then not for a minute, so only these passes send."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select

from sensorium.alerts.models import Delivery, NotificationChannel
from sensorium.alerts.notify import Dispatcher
from sensorium.config import Settings
from tests.alerts.conftest import make_rule, sessions_of
from tests.alerts.receivers import webhook_receiver
from tests.helpers import Account, Api

WINDOW_MS = 10_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "alert_tick_s": 60.0,
            "alert_channel_max_per_window": 3,
            "alert_flood_window_s": WINDOW_MS / 1000,
        }
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def seven_alerts(api: Api, owner: Account, url: str) -> tuple[int, str]:
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "hook", "kind": "webhook", "url": url},
        headers=owner.headers,
    )
    channel: int = r.json()["id"]
    for threshold in range(7):
        await make_rule(api, owner, key="t", operator=">", threshold=threshold, channels=[channel])
    device = await api.device(owner)
    assert (await api.send(device, {"t": 10})).status_code == 202
    return channel, r.json()["secret"]


async def statuses(api: Api) -> dict[str, int]:
    async with sessions_of(api)() as session:
        rows = await session.execute(
            select(Delivery.status, func.count()).group_by(Delivery.status)
        )
        return {status: int(n) for status, n in rows}


async def test_the_digest_goes_once_the_oldest_held_has_waited_a_window(
    api: Api, settings: Settings, http: httpx.AsyncClient
) -> None:
    owner = await api.account()
    async with webhook_receiver() as receiver:
        _channel, receiver.secret = await seven_alerts(api, owner, receiver.url)
        async with sessions_of(api)() as session:
            newest = await session.scalar(select(func.max(Delivery.created_ms)))
        assert newest is not None
        dispatcher = Dispatcher(sessions_of(api), settings, http=http)
        assert await dispatcher.run_once(now_ms=newest) == 3
        assert await statuses(api) == {"succeeded": 3, "held": 4}
        async with sessions_of(api)() as session:
            held = await session.scalar(
                select(func.min(Delivery.created_ms)).where(Delivery.status == "held")
            )
        assert held is not None
        async with sessions_of(api)() as session:
            claimed = await session.scalar(select(NotificationChannel.dispatched_ms))
        assert claimed == newest
        # Within the window: the allowance is used, nothing more goes out, and the
        # channel is not even locked for it.
        assert await dispatcher.run_once(now_ms=held + WINDOW_MS - 1) == 0
        assert await statuses(api) == {"succeeded": 3, "held": 4}
        async with sessions_of(api)() as session:
            assert await session.scalar(select(NotificationChannel.dispatched_ms)) == claimed
        # A window after the first held one was made: one digest of the four.
        assert await dispatcher.run_once(now_ms=held + WINDOW_MS) == 1
        assert await statuses(api) == {"succeeded": 4, "digested": 4}
        assert [r.headers["x-sensorium-event"] for r in receiver.accepted()] == ["fired"] * 3 + [
            "digest"
        ]
        assert receiver.accepted()[-1].document["count"] == 4
        assert await dispatcher.run_once(now_ms=held + 2 * WINDOW_MS) == 0
        assert len(receiver.requests) == 4


async def test_a_disabled_channel_fails_what_it_held_and_is_left_alone(
    api: Api, settings: Settings, http: httpx.AsyncClient
) -> None:
    owner = await api.account()
    async with webhook_receiver() as receiver:
        channel, receiver.secret = await seven_alerts(api, owner, receiver.url)
        async with sessions_of(api)() as session:
            newest = await session.scalar(select(func.max(Delivery.created_ms)))
        assert newest is not None
        dispatcher = Dispatcher(sessions_of(api), settings, http=http)
        assert await dispatcher.run_once(now_ms=newest) == 3
        r = await api.client.patch(
            f"/api/v1/notification-channels/{channel}",
            json={"enabled": False},
            headers=owner.headers,
        )
        assert r.status_code == 200, r.text
        later = newest + WINDOW_MS
        assert await dispatcher.run_once(now_ms=later) == 0
        assert await statuses(api) == {"succeeded": 3, "failed": 4}
        async with sessions_of(api)() as session:
            errors = set(
                await session.scalars(
                    select(Delivery.last_error).where(Delivery.status == "failed")
                )
            )
            assert errors == {"channel disabled"}
            touched = await session.scalar(select(NotificationChannel.dispatched_ms))
        assert touched == later
        # Nothing is due on it any more: later passes do not even lock the channel.
        assert await dispatcher.run_once(now_ms=later + 5 * WINDOW_MS) == 0
        async with sessions_of(api)() as session:
            assert await session.scalar(select(NotificationChannel.dispatched_ms)) == later
        assert len(receiver.requests) == 3
