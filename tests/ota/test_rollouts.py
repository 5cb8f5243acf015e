"""Rollouts with HTTP devices: assignments in the state poll, the per-device state machine
(UPDATED only when the status proves it, rolled back otherwise), timeouts, gradual batches
started by the scheduler's pass with the abort threshold, pause/resume/cancel, retry; bad
rollouts store nothing."""

from __future__ import annotations

from typing import Any

from sensorium.db import epoch_ms
from sensorium.ota import service as ota_service
from sensorium.ota.models import OtaJob, Rollout
from sensorium.ota.runner import OtaRunner
from tests.helpers import Account, Api, RegisteredDevice
from tests.ota.conftest import (
    assignment,
    count,
    ctx_of,
    get_rollout,
    image,
    jobs_by_device,
    progress,
    rollout,
    status,
    uploaded,
)


def runner(api: Api) -> OtaRunner:
    """The scheduler's OTA pass on this app's database, with the clock passed in."""
    ctx = ctx_of(api)
    return OtaRunner(ctx.sessions, ctx.settings, bus=ctx.bus, control=ctx.control)


async def fleet(api: Api, n: int, fw: str = "1.2.0") -> tuple[Account, list[RegisteredDevice]]:
    owner = await api.account()
    devices = [await api.device(owner) for _ in range(n)]
    for device in devices:
        await status(api, device, fw)
    return owner, devices


async def update(api: Api, device: RegisteredDevice, version: str = "1.3.0") -> None:
    """A device doing what PROTOCOL.md says, up to its reboot into the new version."""
    found = await assignment(api, device)
    assert found is not None
    job = found["job"]
    for state, extra in [
        ("DOWNLOADING", {"progress": 0.0}),
        ("DOWNLOADING", {"progress": 0.5}),
        ("DOWNLOADED", {}),
        ("VERIFIED", {}),
        ("UPDATING", {}),
        ("UPDATED", {}),
    ]:
        r = await progress(api, device, job, state, **extra)
        assert r.status_code == 200, r.text
    await status(api, device, version)


async def fail(api: Api, device: RegisteredDevice, reason: str = "flash write error") -> None:
    found = await assignment(api, device)
    assert found is not None
    r = await progress(api, device, found["job"], "FAILED", error=reason)
    assert r.status_code == 200, r.text


async def test_all_at_once_to_three_devices_ends_updated_with_the_new_version(api: Api) -> None:
    owner, devices = await fleet(api, 3)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[d.id for d in devices])
    assert created["state"] == "running"
    assert {j["state"] for j in created["jobs"]} == {"ASSIGNED"}

    for device in devices:
        found = await assignment(api, device)
        assert found is not None
        assert (found["version"], found["size"], found["sha256"], found["signature"]) == (
            "1.3.0",
            fw["size"],
            fw["sha256"],
            fw["signature"],
        )
        assert found["url"] == f"/api/v1/firmware/jobs/{found['job']}/image"
        r = await api.client.get(found["url"], headers=device.headers)
        assert r.content == image()

    first = devices[0]
    job = await assignment(api, first)
    assert job is not None
    assert (await progress(api, first, job["job"], "DOWNLOADING", progress=0.42)).status_code == 200
    detail = await get_rollout(api, owner, created["id"])
    assert jobs_by_device(detail)[first.id]["progress"] == 0.42
    assert jobs_by_device(detail)[first.id]["state"] == "DOWNLOADING"

    for device in devices:
        await update(api, device)
    detail = await get_rollout(api, owner, created["id"])
    assert detail["state"] == "completed"
    assert detail["counts"] == {"UPDATED": 3}
    for job_doc in detail["jobs"]:
        states = [h["state"] for h in job_doc["history"]]
        assert states == [
            "ASSIGNED",
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATING",
            "UPDATED",
        ]
        assert all(h["at"] for h in job_doc["history"])
        assert job_doc["from_version"] == "1.2.0"
    for device in devices:
        r = await api.client.get(f"/api/v1/devices/{device.id}", headers=owner.headers)
        assert r.json()["firmware_version"] == "1.3.0"
        assert await assignment(api, device) is None


async def test_device_saying_updated_is_not_enough(api: Api) -> None:
    owner, [device] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    found = await assignment(api, device)
    assert found is not None
    for state in ("DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED"):
        assert (await progress(api, device, found["job"], state)).status_code == 200
    [job] = (await get_rollout(api, owner, created["id"]))["jobs"]
    assert job["state"] == "UPDATING"
    assert job["history"][-1]["reported"] == "UPDATED"
    # A status without a version, or with the version of a replay, proves nothing.
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/status", json={"online": True}, headers=device.headers
    )
    assert r.status_code == 200
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "UPDATING"
    await status(api, device, "1.3.0")
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "UPDATED"


async def test_coming_back_with_the_old_version_is_failed_rolled_back(api: Api) -> None:
    owner, [device] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    found = await assignment(api, device)
    assert found is not None
    # Rebooting during the download (old version) is not a rollback: it carries on.
    assert (
        await progress(api, device, found["job"], "DOWNLOADING", progress=0.3)
    ).status_code == 200
    await status(api, device, "1.2.0")
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "DOWNLOADING"
    for state in ("DOWNLOADED", "VERIFIED", "UPDATING"):
        assert (await progress(api, device, found["job"], state)).status_code == 200
    await status(api, device, "1.2.0")
    detail = await get_rollout(api, owner, created["id"])
    [job] = detail["jobs"]
    assert job["state"] == "FAILED"
    assert job["error"] == "rolled back: the device came back with 1.2.0, not 1.3.0"
    assert detail["state"] == "completed"
    assert await assignment(api, device) is None


async def test_failure_reported_by_the_device_is_recorded_with_its_reason(api: Api) -> None:
    owner, [device] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    found = await assignment(api, device)
    assert found is not None
    r = await progress(api, device, found["job"], "FAILED", error="signature mismatch")
    assert (r.status_code, r.json()["state"]) == (200, "FAILED")
    [job] = (await get_rollout(api, owner, created["id"]))["jobs"]
    assert (job["state"], job["error"]) == ("FAILED", "signature mismatch")
    assert job["history"][-1]["error"] == "signature mismatch"
    # A late report of the finished job changes nothing.
    r = await progress(api, device, found["job"], "DOWNLOADING")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "ota_job_finished")
    # Nor does a report of a job the device never had.
    r = await progress(api, device, "j_unknown", "DOWNLOADING")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "ota_job_not_found")
    r = await progress(api, device, found["job"], "REBOOTING")
    assert (r.status_code, r.json()["error"]["field"]) == (422, "state")


async def test_moving_backwards_is_refused(api: Api) -> None:
    owner, [device] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    found = await assignment(api, device)
    assert found is not None
    assert (await progress(api, device, found["job"], "VERIFIED")).status_code == 200
    r = await progress(api, device, found["job"], "DOWNLOADED")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_transition")
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "VERIFIED"


async def test_a_device_that_stays_silent_times_out(api: Api) -> None:
    owner, [device] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    created = await rollout(
        api, owner, firmware_id=fw["id"], devices=[device.id], device_timeout_s=600
    )
    found = await assignment(api, device)
    assert found is not None
    assert (await progress(api, device, found["job"], "DOWNLOADING")).status_code == 200
    now = epoch_ms()
    await runner(api).run_once(now_ms=now + 599_000)
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "DOWNLOADING"
    await runner(api).run_once(now_ms=now + 601_000)
    [job] = (await get_rollout(api, owner, created["id"]))["jobs"]
    assert (job["state"], job["error"]) == ("FAILED", "timed out in state DOWNLOADING")
    assert await assignment(api, device) is None


def _states(detail: dict[str, Any], devices: list[RegisteredDevice]) -> list[str]:
    jobs = jobs_by_device(detail)
    return [jobs[d.id]["state"] for d in devices]


async def test_gradual_rollout_pauses_above_the_abort_threshold_and_resumes(api: Api) -> None:
    """Acceptance 4: 10 devices in 20 % batches, abort threshold 30 %; the first batch
    updates, both devices of the second fail (2 of the first 4): the rollout pauses before
    the third batch, and resuming continues it."""
    owner, devices = await fleet(api, 10)
    fw = await uploaded(api, owner, image())
    created = await rollout(
        api,
        owner,
        firmware_id=fw["id"],
        devices=[d.id for d in devices],
        strategy="gradual",
        batch_percent=20,
        batch_wait_s=60,
        abort_failure_percent=30,
    )
    assert created["batch_size"] == 2
    assert [j["batch"] for j in created["jobs"]] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert _states(created, devices) == ["ASSIGNED"] * 2 + ["PENDING"] * 8
    for device in devices[2:]:
        assert await assignment(api, device) is None

    for device in devices[:2]:
        await update(api, device)
    t0 = epoch_ms()
    ota = runner(api)
    # The batch is done; the next waits batch_wait_s.
    await ota.run_once(now_ms=t0 + 1_000)
    detail = await get_rollout(api, owner, created["id"])
    assert _states(detail, devices)[2:4] == ["PENDING", "PENDING"]
    assert detail["next_batch_at"] is not None
    await ota.run_once(now_ms=t0 + 61_000)
    detail = await get_rollout(api, owner, created["id"])
    assert _states(detail, devices)[:4] == ["UPDATED", "UPDATED", "ASSIGNED", "ASSIGNED"]
    assert detail["current_batch"] == 2

    await fail(api, devices[2])
    detail = await get_rollout(api, owner, created["id"])
    assert detail["state"] == "paused"
    assert "above the abort threshold 30 %" in detail["pause_reason"]
    await fail(api, devices[3])
    # However long it waits, no third batch while paused.
    await ota.run_once(now_ms=t0 + 3_600_000)
    detail = await get_rollout(api, owner, created["id"])
    assert detail["state"] == "paused"
    assert detail["failure_percent"] == 50.0
    assert _states(detail, devices)[4:] == ["PENDING"] * 6
    for device in devices[4:]:
        assert await assignment(api, device) is None

    r = await api.client.post(f"/api/v1/rollouts/{created['id']}/resume", headers=owner.headers)
    assert (r.status_code, r.json()["state"]) == (200, "running")
    assert r.json()["failure_percent"] is None  # counted afresh from here
    await ota.run_once(now_ms=t0 + 3_700_000)
    detail = await get_rollout(api, owner, created["id"])
    assert detail["state"] == "running"
    assert _states(detail, devices)[4:6] == ["ASSIGNED", "ASSIGNED"]
    assert _states(detail, devices)[6:] == ["PENDING"] * 4
    for device in devices[4:6]:
        assert await assignment(api, device) is not None


async def test_gradual_batches_of_n_devices_run_to_completion(api: Api) -> None:
    owner, devices = await fleet(api, 3)
    fw = await uploaded(api, owner, image())
    created = await rollout(
        api,
        owner,
        firmware_id=fw["id"],
        devices=[d.id for d in devices],
        strategy="gradual",
        batch_size=2,
        batch_wait_s=0,
    )
    ota = runner(api)
    for device in devices[:2]:
        await update(api, device)
    await ota.run_once()
    detail = await get_rollout(api, owner, created["id"])
    assert _states(detail, devices) == ["UPDATED", "UPDATED", "ASSIGNED"]
    await update(api, devices[2])
    detail = await get_rollout(api, owner, created["id"])
    assert (detail["state"], detail["counts"]) == ("completed", {"UPDATED": 3})
    assert detail["finished_at"] is not None


async def test_pause_resume_and_cancel(api: Api) -> None:
    owner, devices = await fleet(api, 4)
    fw = await uploaded(api, owner, image())
    created = await rollout(
        api,
        owner,
        firmware_id=fw["id"],
        devices=[d.id for d in devices],
        strategy="gradual",
        batch_size=2,
    )
    base = f"/api/v1/rollouts/{created['id']}"
    r = await api.client.post(f"{base}/resume", headers=owner.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "rollout_not_paused")
    r = await api.client.post(f"{base}/pause", headers=owner.headers)
    assert (r.status_code, r.json()["state"], r.json()["pause_reason"]) == (
        200,
        "paused",
        "paused by the user",
    )
    # Paused: the devices already at work carry on and finish.
    for device in devices[:2]:
        await update(api, device)
    await runner(api).run_once(now_ms=epoch_ms() + 10_000)
    detail = await get_rollout(api, owner, created["id"])
    assert _states(detail, devices) == ["UPDATED", "UPDATED", "PENDING", "PENDING"]
    r = await api.client.post(f"{base}/resume", headers=owner.headers)
    assert r.status_code == 200
    await runner(api).run_once(now_ms=epoch_ms() + 10_000)
    assert await assignment(api, devices[2]) is not None

    r = await api.client.post(f"{base}/cancel", headers=owner.headers)
    assert (r.status_code, r.json()["state"]) == (200, "cancelled")
    detail = await get_rollout(api, owner, created["id"])
    assert _states(detail, devices) == ["UPDATED", "UPDATED", "CANCELLED", "CANCELLED"]
    assert await assignment(api, devices[2]) is None
    # A cancelled assignment's image is no longer handed out.
    cancelled_job = jobs_by_device(detail)[devices[2].id]["job"]
    r = await api.client.get(
        f"/api/v1/firmware/jobs/{cancelled_job}/image", headers=devices[2].headers
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "ota_job_not_found")
    for action in ("pause", "resume", "cancel"):
        r = await api.client.post(f"{base}/{action}", headers=owner.headers)
        assert r.status_code == 409, action
    listed = await api.client.get("/api/v1/rollouts?state=cancelled", headers=owner.headers)
    assert [x["id"] for x in listed.json()["items"]] == [created["id"]]


async def test_retry_assigns_a_failed_device_again_with_a_new_job(api: Api) -> None:
    owner, [device, other] = await fleet(api, 2)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[device.id, other.id])
    retry = f"/api/v1/rollouts/{created['id']}/devices/{device.id}/retry"
    r = await api.client.post(retry, headers=owner.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_not_failed")
    old = await assignment(api, device)
    assert old is not None
    await fail(api, device)
    await update(api, other)
    assert (await get_rollout(api, owner, created["id"]))["state"] == "completed"

    r = await api.client.post(retry, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["attempts"]) == ("ASSIGNED", 2)
    new = await assignment(api, device)
    assert new is not None
    assert new["job"] != old["job"]
    assert (await get_rollout(api, owner, created["id"]))["state"] == "running"
    r = await progress(api, device, old["job"], "DOWNLOADING")
    assert r.status_code == 404
    await update(api, device)
    detail = await get_rollout(api, owner, created["id"])
    assert (detail["state"], detail["counts"]) == ("completed", {"UPDATED": 2})


async def test_filter_targets_matching_devices_and_skips_those_up_to_date(api: Api) -> None:
    owner = await api.account()
    kitchen = [await api.device(owner, name="kitchen", location="home") for _ in range(2)]
    office = await api.device(owner, name="office", location="work")
    current = await api.device(owner, name="kitchen 3", location="home")
    for device in (*kitchen, office):
        await status(api, device, "1.2.0")
    await status(api, current, "1.3.0")
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], filter={"location": "home"})
    assert sorted(j["device_id"] for j in created["jobs"]) == sorted(d.id for d in kitchen)
    assert created["target"] == {"filter": {"location": "home"}}
    created = await rollout(api, owner, firmware_id=fw["id"], filter={"name_contains": "OFF"})
    assert [j["device_id"] for j in created["jobs"]] == [office.id]


async def test_bad_rollouts_are_4xx_and_store_nothing(api: Api) -> None:
    owner, [device] = await fleet(api, 1)
    intruder, [theirs] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    their_fw = await uploaded(api, intruder, image(seed=3))
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"firmware_id": fw["id"], "devices": [theirs.id]}, 404, "device_not_found"),
        ({"firmware_id": their_fw["id"], "devices": [device.id]}, 404, "firmware_not_found"),
        ({"firmware_id": fw["id"], "devices": [device.id, theirs.id]}, 404, "device_not_found"),
        ({"firmware_id": fw["id"], "devices": ["not-a-mac"]}, 422, None),
        ({"firmware_id": fw["id"], "devices": [device.id, device.id]}, 422, None),
        ({"firmware_id": fw["id"]}, 422, None),
        ({"firmware_id": fw["id"], "devices": [device.id], "filter": {}}, 422, None),
        ({"firmware_id": fw["id"], "filter": {"location": "nowhere"}}, 422, "no_devices"),
        ({"firmware_id": fw["id"], "devices": [device.id], "strategy": "gradual"}, 422, None),
        (
            {"firmware_id": fw["id"], "devices": [device.id], "abort_failure_percent": 101},
            422,
            None,
        ),
        ({"firmware_id": fw["id"], "devices": [device.id], "strategy": "sideways"}, 422, None),
    ]
    for body, expected, code in cases:
        r = await api.client.post("/api/v1/rollouts", json=body, headers=owner.headers)
        assert r.status_code == expected, (body, r.text)
        assert set(r.json()["error"]) == {"code", "message", "field"}
        if code is not None:
            assert r.json()["error"]["code"] == code, body
    assert await count(api, Rollout) == 0
    assert await count(api, OtaJob) == 0
    # The other user's device was not given anything.
    assert await assignment(api, theirs) is None

    # A device already being updated cannot be in a second rollout.
    await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    fw2 = await uploaded(api, owner, image(seed=4), version="1.4.0")
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": fw2["id"], "devices": [device.id]},
        headers=owner.headers,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "device_busy")
    assert await count(api, Rollout) == 1
    # Devices already running the version are left out.
    await update(api, device)
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": fw["id"], "devices": [device.id]},
        headers=owner.headers,
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "no_devices")
    assert await count(api, Rollout) == 1


async def test_a_replayed_status_may_prove_an_update_but_never_fail_it(api: Api) -> None:
    """A retained status the broker replays to a resubscribing worker (`fresh=False`) is
    old news: its old version does not fail an update under way; the target version in it
    is still proof."""
    owner, [device] = await fleet(api, 1)
    fw = await uploaded(api, owner, image())
    created = await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    found = await assignment(api, device)
    assert found is not None
    assert (await progress(api, device, found["job"], "UPDATING")).status_code == 200
    sessions = ctx_of(api).sessions
    async with sessions() as session, session.begin():
        changed = await ota_service.record_version(
            session, device_id=device.id, fw="1.2.0", fresh=False
        )
    assert changed.jobs == []
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "UPDATING"
    async with sessions() as session, session.begin():
        changed = await ota_service.record_version(
            session, device_id=device.id, fw="1.3.0", fresh=False
        )
    assert [j.state for j in changed.jobs] == ["UPDATED"]
    assert (await get_rollout(api, owner, created["id"]))["jobs"][0]["state"] == "UPDATED"
