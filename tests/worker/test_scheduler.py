"""The scheduler turns silent devices offline and records the transition."""

from __future__ import annotations

import time

from sqlalchemy import update

from sensorium.devices.models import Device
from sensorium.worker.scheduler import Scheduler
from tests.helpers import Api


async def test_silent_devices_go_offline_once(api: Api) -> None:
    owner = await api.account()
    talking = await api.device(owner)
    silent = await api.device(owner)
    for device in (talking, silent):
        assert (await api.send(device, {"t": 1})).status_code == 202
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session, session.begin():
        await session.execute(
            update(Device)
            .where(Device.id == silent.id)
            .values(offline_at_ms=int(time.time() * 1000) - 1)
        )
    scheduler = Scheduler(sessions)
    assert await scheduler.run_once() == [silent.id]
    assert await scheduler.run_once() == []
    r = await api.client.get(f"/api/v1/devices/{silent.id}/status/history", headers=owner.headers)
    assert [(e["online"], e["reason"]) for e in r.json()] == [(False, "timeout"), (True, "data")]
    r = await api.client.get("/api/v1/devices", params={"status": "offline"}, headers=owner.headers)
    assert [d["id"] for d in r.json()["items"]] == [silent.id]
    # Data brings it back.
    assert (await api.send(silent, {"t": 2})).status_code == 202
    r = await api.client.get(f"/api/v1/devices/{silent.id}/status/history", headers=owner.headers)
    newest = r.json()[0]
    assert (newest["online"], newest["reason"]) == (True, "data")
