"""Points committed out of order (two workers on the shared subscription): an alert that
fired before the points extending its window back were stored moves back to the
in-order mark, and its notification not yet sent says so too."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sensorium.alerts import engine
from sensorium.alerts.models import Alert, Delivery
from sensorium.config import Settings
from sensorium.db import epoch_ms
from tests.alerts.conftest import alerts_of, make_rule, sessions_of
from tests.helpers import Api


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The app's scheduler passes once at start, then not for a minute: the deliveries
    # queued here stay unsent while the test looks at them.
    return settings.model_copy(update={"alert_tick_s": 60.0})


def points(t0: int, seconds: range) -> list[dict[str, Any]]:
    return [{"ts": t0 + s * 1000, "values": {"co2": 1300 if s >= 5 else 900}} for s in seconds]


async def test_an_alert_fired_on_later_points_moves_back_when_earlier_ones_arrive(
    api: Api,
) -> None:
    owner = await api.account()
    device = await api.device(owner, name="Office")
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/hook"},
        headers=owner.headers,
    )
    channel = r.json()["id"]
    await make_rule(
        api,
        owner,
        scope="device",
        devices=[device.id],
        key="co2",
        operator=">",
        threshold=1200,
        duration_s=10,
        channels=[channel],
    )
    t0 = epoch_ms() - 600_000
    # One worker commits seconds 0-2 and 7-20; the other's 3-6 come after.
    assert (await api.send(device, points(t0, range(3)))).status_code == 202
    assert (await api.send(device, points(t0, range(7, 21)))).status_code == 202
    [alert] = await alerts_of(api, owner)
    assert alert["fired_at"] == engine.iso_ms(t0 + 17_000)  # all it could know then
    assert (await api.send(device, points(t0, range(3, 7)))).status_code == 202
    [moved] = await alerts_of(api, owner)
    assert (moved["id"], moved["state"]) == (alert["id"], "active")
    assert moved["fired_at"] == engine.iso_ms(t0 + 15_000)
    async with sessions_of(api)() as session:
        [delivery] = (await session.scalars(select(Delivery))).all()
        stored = await session.get(Alert, alert["id"])
    assert stored is not None
    assert stored.live_pending is True
    assert (delivery.event, delivery.status, delivery.attempts) == ("fired", "pending", 0)
    assert delivery.payload["alert"]["fired_at"] == engine.iso_ms(t0 + 15_000)
    assert delivery.payload["alert"]["value"] == alert["value"]
    # Seen again, or older still: nothing moves.
    assert (await api.send(device, points(t0, range(21)))).status_code == 202
    [same] = await alerts_of(api, owner)
    assert same == moved
