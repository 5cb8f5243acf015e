"""After a committed OTA change: announce the jobs on the live bus and bring the devices'
retained `devices/{id}/ota` assignments up to date (ControlPlane.publish_ota). HTTP devices
read their assignment in the state poll instead."""

from __future__ import annotations

from sensorium.control.delivery import ControlPlane
from sensorium.db import epoch_ms
from sensorium.live.bus import LiveBus
from sensorium.ota import service
from sensorium.ota.service import Changed


async def deliver(control: ControlPlane | None, bus: LiveBus | None, changed: Changed) -> None:
    if bus is not None:
        now_ms = epoch_ms()
        for job in changed.jobs:
            bus.publish(service.job_event(job, now_ms=now_ms))
    if control is not None:
        for device_id in sorted(changed.devices):
            await control.update_ota(device_id)
