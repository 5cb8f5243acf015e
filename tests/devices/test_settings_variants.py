"""Settings-dependent device behaviour: token rotation grace, per-device rate limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from sensorium.config import Settings
from sensorium.devices.models import DeviceCredential
from tests.helpers import Api, running_client


@pytest.fixture
async def grace_api(settings: Settings) -> AsyncIterator[Api]:
    async with running_client(settings.model_copy(update={"device_token_grace_s": 3600})) as client:
        yield Api(client)


async def test_old_token_works_during_grace_then_stops(grace_api: Api) -> None:
    api = grace_api
    owner = await api.account()
    device = await api.device(owner)
    r = await api.client.post(f"/api/v1/devices/{device.id}/token/rotate", headers=owner.headers)
    assert r.status_code == 200
    until = datetime.fromisoformat(r.json()["previous_valid_until"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
    new_token = r.json()["token"]
    assert (await api.send(device, {"a": 1})).status_code == 202
    # The grace period ends.
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        await session.execute(
            update(DeviceCredential)
            .where(DeviceCredential.expires_at.is_not(None))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    api.client.app.state.ctx.device_tokens.forget_device(device.id)  # type: ignore[attr-defined]
    assert (await api.send(device, {"a": 2})).status_code == 401
    device.token = new_token
    assert (await api.send(device, {"a": 3})).status_code == 202


@pytest.fixture
async def limited_api(settings: Settings) -> AsyncIterator[Api]:
    async with running_client(
        settings.model_copy(update={"device_rate_limit": "3/minute"})
    ) as client:
        yield Api(client)


async def test_device_rate_limit_is_429_with_retry_after(limited_api: Api) -> None:
    api = limited_api
    owner = await api.account()
    device = await api.device(owner)
    other = await api.device(owner)
    for i in range(3):
        assert (await api.send(device, {"n": i})).status_code == 202
    r = await api.send(device, {"n": 99})
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= 60
    assert r.json()["error"]["code"] == "rate_limited"
    latest = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry/latest", headers=owner.headers
    )
    assert latest.json()["values"]["n"]["value"] == 2
    # The limit is per device.
    assert (await api.send(other, {"n": 1})).status_code == 202
