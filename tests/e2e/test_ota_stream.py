"""The dashboard's OTA streams on a real server: a rollout's stream starts with the whole
rollout, then carries each job change of its devices and the rollout's counts after them,
and the rollout again when it is paused elsewhere; the rollouts stream carries summaries.
Another user's rollouts never reach them. A device's firmware history (GET
/devices/{id}/ota/jobs) lists its jobs with their versions."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.e2e.test_alerts_stream import events
from tests.helpers import Account, Api, RegisteredDevice


async def fleet(api: Api, n: int) -> tuple[Account, list[RegisteredDevice]]:
    owner = await api.account()
    devices = [await api.device(owner, name=f"node {i}") for i in range(n)]
    for device in devices:
        r = await api.client.post(
            f"/api/v1/devices/{device.id}/status",
            json={"online": True, "fw": "1.2.0"},
            headers=device.headers,
        )
        assert r.status_code == 200, r.text
    return owner, devices


async def rolled_out(api: Api, owner: Account, devices: list[RegisteredDevice]) -> dict[str, Any]:
    r = await api.client.post(
        "/api/v1/firmware",
        data={"title": "Spring", "version": "1.3.0"},
        files={"file": ("fw.bin", b"\x02" * 4096, "application/octet-stream")},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": r.json()["id"], "devices": [d.id for d in devices]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def report(api: Api, device: RegisteredDevice, job: str, state: str, **extra: Any) -> None:
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/ota/progress",
        json={"job": job, "state": state, **extra},
        headers=device.headers,
    )
    assert r.status_code == 200, r.text


async def test_rollout_stream_carries_its_jobs_counts_and_pauses(http: httpx.AsyncClient) -> None:
    api = Api(http)
    owner, devices = await fleet(api, 2)
    other, theirs = await fleet(api, 1)
    mine = await rolled_out(api, owner, devices)
    foreign = await rolled_out(api, other, theirs)
    jobs = {j["device_id"]: j["job"] for j in mine["jobs"]}
    path = f"/api/v1/rollouts/{mine['id']}/events"
    r = await http.get(path, headers=other.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "rollout_not_found")

    async with asyncio.timeout(30), http.stream("GET", path, headers=owner.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        kind, first = await anext(stream)
        assert kind == "rollout"
        assert (first["id"], first["state"], first["counts"]) == (
            mine["id"],
            "running",
            {"ASSIGNED": 2},
        )
        assert {j["device_id"] for j in first["jobs"]} == {d.id for d in devices}

        # Theirs moves first: the first job event is mine, then the counts after it.
        await report(api, theirs[0], foreign["jobs"][0]["job"], "DOWNLOADING", progress=0.9)
        await report(api, devices[0], jobs[devices[0].id], "DOWNLOADING", progress=0.4)
        kind, data = await anext(stream)
        assert kind == "job"
        job = data["job"]
        assert (job["device_id"], job["state"], job["progress"]) == (
            devices[0].id,
            "DOWNLOADING",
            0.4,
        )
        kind, data = await anext(stream)
        assert kind == "summary"
        assert data["counts"] == {"ASSIGNED": 1, "DOWNLOADING": 1}
        assert "jobs" not in data

        # A failure: the job with its error, then the counts and the failure rate.
        await report(api, devices[1], jobs[devices[1].id], "FAILED", error="flash write error")
        kind, data = await anext(stream)
        assert (kind, data["job"]["state"], data["job"]["error"]) == (
            "job", "FAILED", "flash write error",
        )  # fmt: skip
        kind, data = await anext(stream)
        # 1 failed of 1 finished is above the 20 % threshold: paused, so the whole rollout.
        assert kind == "rollout"
        assert (data["state"], data["failure_percent"]) == ("paused", 100.0)
        assert data["counts"] == {"DOWNLOADING": 1, "FAILED": 1}

        # Resumed through the API (another tab): the stream's poll notices.
        r = await http.post(f"/api/v1/rollouts/{mine['id']}/resume", headers=owner.headers)
        assert r.status_code == 200, r.text
        kind, data = await anext(stream)
        assert (kind, data["state"], data["pause_reason"]) == ("rollout", "running", None)
        assert len(data["jobs"]) == 2
        await stream.aclose()

    # The device's firmware history.
    r = await http.get(f"/api/v1/devices/{devices[1].id}/ota/jobs", headers=owner.headers)
    assert r.status_code == 200, r.text
    [entry] = r.json()["items"]
    assert (entry["version"], entry["rollout_id"], entry["state"], entry["error"]) == (
        "1.3.0", mine["id"], "FAILED", "flash write error",
    )  # fmt: skip
    assert (entry["rollout_state"], entry["from_version"]) == ("running", "1.2.0")
    r = await http.get(f"/api/v1/devices/{devices[1].id}/ota/jobs", headers=other.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "device_not_found")


async def test_rollouts_stream_summarises_only_your_rollouts(http: httpx.AsyncClient) -> None:
    api = Api(http)
    owner, devices = await fleet(api, 2)
    other, theirs = await fleet(api, 1)
    mine = await rolled_out(api, owner, devices)
    foreign = await rolled_out(api, other, theirs)
    async with (
        asyncio.timeout(30),
        http.stream("GET", "/api/v1/rollouts/events", headers=owner.headers) as response,
    ):
        assert response.status_code == 200
        stream = events(response)
        kind, data = await anext(stream)
        assert kind == "rollouts"
        assert [(r["id"], r["counts"]) for r in data["items"]] == [(mine["id"], {"ASSIGNED": 2})]

        await report(api, theirs[0], foreign["jobs"][0]["job"], "DOWNLOADING", progress=0.5)
        job = {j["device_id"]: j["job"] for j in mine["jobs"]}[devices[0].id]
        await report(api, devices[0], job, "DOWNLOADING", progress=0.1)
        await report(api, devices[0], job, "DOWNLOADING", progress=0.2)
        kind, data = await anext(stream)
        assert (kind, data["id"]) == ("rollout", mine["id"])
        assert data["counts"] == {"ASSIGNED": 1, "DOWNLOADING": 1}
        assert "jobs" not in data
        await stream.aclose()
