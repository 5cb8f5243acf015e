"""OTA with MQTT devices on a real Mosquitto (acceptance 1 and 3 of the OTA issue): the
retained assignment carries what a device needs to verify the image, progress arrives on
devices/{id}/ota/progress, and only the new version in the status after the reboot makes
a device UPDATED; a device's FAILED is kept with its reason and its assignment cleared."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sensorium.protocol.ota import OtaAssignment, parse_assignment
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api, RegisteredDevice
from tests.system.conftest import Device, provisioned, registered, wait_for
from tests.system.test_mqtt import connect

pytestmark = pytest.mark.usefixtures("devices")

IMAGE = random.Random(11).randbytes(200_000)


def _assignments(device: Device) -> list[bytes]:
    topic = f"devices/{device.device_id}/ota"
    return [bytes(m.payload) for m in list(device.messages) if m.topic == topic]


async def _boot(
    api: Api, broker: EmbeddedBroker, devices: list[Device], reg: RegisteredDevice, fw: str
) -> Device:
    """Connect like the firmware: subscribe to the OTA topic, then announce the version."""
    device = connect(broker, devices, reg.id, reg.token)
    assert not device.subscribe(f"devices/{reg.id}/ota")[0].is_failure
    device.publish("status", f'{{"online": true, "fw": "{fw}"}}'.encode())

    async def reported() -> bool:
        r = await api.client.get(f"/api/v1/devices/{reg.id}", headers=reg.owner.headers)
        return bool(r.json()["firmware_version"] == fw and r.json()["status"] == "online")

    assert await wait_for(reported)
    return device


async def _received(device: Device) -> OtaAssignment:
    async def arrived() -> list[bytes]:
        return [p for p in _assignments(device) if p]

    payloads = await wait_for(arrived)
    assert payloads, "no assignment arrived"
    found = parse_assignment(payloads[-1])
    assert found is not None
    return found


async def _rollout(api: Api, owner_headers: dict[str, str], ids: list[str]) -> dict[str, Any]:
    r = await api.client.post(
        "/api/v1/firmware",
        data={"title": "Summer", "version": "1.3.0"},
        files={"file": ("fw.bin", IMAGE, "application/octet-stream")},
        headers=owner_headers,
    )
    assert r.status_code == 201, r.text
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": r.json()["id"], "devices": ids},
        headers=owner_headers,
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def _jobs(api: Api, headers: dict[str, str], rollout_id: int) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=headers)
    return {j["device_id"]: j for j in r.json()["jobs"]}


async def test_three_devices_download_verify_and_come_back_updated(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    regs = await registered(mqtt_api, 3)
    owner = regs[0].owner
    booted = [await _boot(mqtt_api, broker, devices, reg, "1.2.0") for reg in regs]
    key = (await mqtt_api.client.get("/api/v1/firmware/public-key", headers=owner.headers)).json()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    created = await _rollout(mqtt_api, owner.headers, [r.id for r in regs])

    for reg, device in zip(regs, booted, strict=True):
        assignment = await _received(device)
        assert assignment.version == "1.3.0"
        r = await mqtt_api.client.get(assignment.url, headers=reg.headers)
        assert r.status_code == 200
        # What the firmware checks before it flashes anything.
        assert len(r.content) == assignment.size
        assert hashlib.sha256(r.content).hexdigest() == assignment.sha256
        public.verify(base64.b64decode(assignment.signature), hashlib.sha256(r.content).digest())
        for state, extra in [
            ("DOWNLOADING", ', "progress": 0.5'),
            ("DOWNLOADED", ""),
            ("VERIFIED", ""),
            ("UPDATING", ""),
            ("UPDATED", ""),
        ]:
            message = f'{{"job": "{assignment.job}", "state": "{state}"{extra}}}'.encode()
            assert not device.publish("ota/progress", message).is_failure

    async def all_updating() -> bool:
        jobs = await _jobs(mqtt_api, owner.headers, created["id"])
        return all(j["state"] == "UPDATING" and j["progress"] == 1.0 for j in jobs.values())

    # The devices said UPDATED; until their status shows 1.3.0 that is not proof.
    assert await wait_for(all_updating)

    # Reboot into the new firmware: a new connection whose status carries the version.
    rebooted = []
    for reg, device in zip(regs, booted, strict=True):
        device.stop()
        rebooted.append(await _boot(mqtt_api, broker, devices, reg, "1.3.0"))

    async def all_updated() -> bool:
        jobs = await _jobs(mqtt_api, owner.headers, created["id"])
        return all(j["state"] == "UPDATED" for j in jobs.values())

    assert await wait_for(all_updated)
    jobs = await _jobs(mqtt_api, owner.headers, created["id"])
    for job in jobs.values():
        states = [h["state"] for h in job["history"]]
        assert states[:5] == ["ASSIGNED", "DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING"]
        assert states[-1] == "UPDATED"
    r = await mqtt_api.client.get(f"/api/v1/rollouts/{created['id']}", headers=owner.headers)
    assert r.json()["state"] == "completed"

    # The retained assignment is withdrawn: the rebooted device still found it when it
    # subscribed, then saw it cleared; the state poll has none either.
    for reg, device in zip(regs, rebooted, strict=True):

        async def cleared(device: Device = device) -> bool:
            payloads = _assignments(device)
            return len(payloads) >= 2 and payloads[0] != b"" and payloads[-1] == b""

        assert await wait_for(cleared)
        r = await mqtt_api.client.get(f"/api/v1/devices/{reg.id}/state", headers=reg.headers)
        assert r.json()["ota"] is None


async def test_failure_over_mqtt_is_recorded_with_its_reason_and_the_assignment_cleared(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = await _boot(mqtt_api, broker, devices, reg, "1.2.0")
    created = await _rollout(mqtt_api, reg.owner.headers, [reg.id])
    assignment = await _received(device)
    bad = f'{{"job": "{assignment.job}", "state": "FAILED", "error": "sha256 mismatch"}}'
    assert not device.publish("ota/progress", bad.encode()).is_failure

    async def failed() -> dict[str, Any] | None:
        job = (await _jobs(mqtt_api, reg.owner.headers, created["id"]))[reg.id]
        return job if job["state"] == "FAILED" else None

    job = await wait_for(failed)
    assert job is not None
    assert job["error"] == "sha256 mismatch"

    async def cleared() -> bool:
        return _assignments(device)[-1:] == [b""]

    assert await wait_for(cleared)


async def test_a_deleted_devices_assignment_is_not_left_for_its_mac(
    mqtt_api: Api, broker: EmbeddedBroker, devices: list[Device]
) -> None:
    [reg] = await registered(mqtt_api)
    device = await _boot(mqtt_api, broker, devices, reg, "1.2.0")
    await _rollout(mqtt_api, reg.owner.headers, [reg.id])
    await _received(device)
    device.stop()
    r = await mqtt_api.client.delete(f"/api/v1/devices/{reg.id}", headers=reg.owner.headers)
    assert r.status_code == 204
    again = await mqtt_api.device(reg.owner, mac=reg.id)
    await provisioned(mqtt_api)
    fresh = await _boot(mqtt_api, broker, devices, again, "1.2.0")
    assert [p for p in _assignments(fresh) if p] == []
