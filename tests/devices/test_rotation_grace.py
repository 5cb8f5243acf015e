"""Token rotation with a grace period: the old token keeps working until it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from sensorium.api.app import create_app
from sensorium.config import Settings
from sensorium.devices.models import DeviceCredential
from tests.helpers import Api


@pytest.fixture
async def grace_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings.model_copy(update={"device_token_grace_s": 3600}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
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
