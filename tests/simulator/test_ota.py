"""Firmware updates on simulated devices.

The download on its own (a fake HTTP server answering like the real one): a cut download
resumes with Range/If-Range and hashes to the image; an image changed between the cut and
the resume starts over; what the device refuses to install and why.

Against the real server on a port and a real Mosquitto: a rollout to three devices run by
`sensorium simulate` (which fetches the public key with the user's login) ends UPDATED
with the new version in their status; an image tampered with on the server's disk is
refused by an MQTT and an HTTP device (FAILED with the reason, old version kept); a device
whose new version does not boot comes back with the old one (FAILED "rolled back")."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console

from sensorium import __version__
from sensorium.protocol.ota import OtaAssignment
from sensorium.simulator.fleet import DeviceSpec, Fleet, FleetConfig
from sensorium.simulator.ota import (
    Downloaded,
    DownloadFailed,
    OtaConfig,
    download,
    parse_public_key,
    verify,
)
from sensorium.simulator.registry import login, register_devices
from sensorium.simulator.runner import SimulateOptions, fetch_public_key, simulate
from tests.simulator.conftest import Served
from tests.system.conftest import wait_for

IMAGE = random.Random(5).randbytes(300_000)
OLD = f"{__version__}-sim"
URL = "/api/v1/firmware/jobs/j_test/image"

# --- the download against a fake server -----------------------------------------------------


class _Body(httpx.AsyncByteStream):
    """A response body in 16 KiB pieces that breaks off (ReadError) after `cut_at` bytes."""

    def __init__(self, data: bytes, cut_at: int | None = None) -> None:
        self._data = data
        self._cut_at = cut_at

    async def __aiter__(self) -> AsyncIterator[bytes]:
        end = len(self._data) if self._cut_at is None else self._cut_at
        for start in range(0, end, 16_384):
            yield self._data[start : min(start + 16_384, end)]
        if self._cut_at is not None:
            raise httpx.ReadError("connection reset by peer")


def image_server(
    images: list[bytes], cuts: list[int | None], seen: list[httpx.Request]
) -> httpx.MockTransport:
    """Serves images[n] to the nth request (the last one after that), like the server's
    download: ETag = SHA-256, `Range: bytes=N-` honoured when `If-Range` matches."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(seen) - 1
        data = images[min(n, len(images) - 1)]
        cut = cuts[n] if n < len(cuts) else None
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        assert request.headers["Authorization"] == "Bearer tok"
        wanted = request.headers.get("Range")
        if wanted and request.headers.get("If-Range", etag) == etag:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            part = data[start:]
            cut = None if cut is None else cut - start
            return httpx.Response(206, headers=headers, stream=_Body(part, cut))
        return httpx.Response(200, headers=headers, stream=_Body(data, cut))

    return httpx.MockTransport(handle)


def assignment_of(data: bytes, key: Ed25519PrivateKey) -> OtaAssignment:
    digest = hashlib.sha256(data).digest()
    signature = base64.b64encode(key.sign(digest)).decode()
    return OtaAssignment("j_test", "1.3.0", len(data), digest.hex(), signature, URL)


async def test_a_cut_download_resumes_where_it_broke_off() -> None:
    seen: list[httpx.Request] = []
    progress: list[int] = []

    async def note(received: int) -> None:
        progress.append(received)

    transport = image_server([IMAGE], [100_000, 250_000], seen)
    async with httpx.AsyncClient(transport=transport, base_url="http://sensorium") as client:
        got = await download(
            client, assignment_of(IMAGE, Ed25519PrivateKey.generate()), "tok",
            progress=note, retry_s=0,
        )  # fmt: skip
    assert got == Downloaded(len(IMAGE), hashlib.sha256(IMAGE).digest(), attempts=3)
    etag = f'"{hashlib.sha256(IMAGE).hexdigest()}"'
    assert [(r.headers.get("Range"), r.headers.get("If-Range")) for r in seen] == [
        (None, None),
        ("bytes=100000-", etag),
        ("bytes=250000-", etag),
    ]
    assert progress == sorted(progress)
    assert progress[-1] == len(IMAGE)


async def test_an_image_changed_before_the_resume_is_downloaded_again_from_the_start() -> None:
    seen: list[httpx.Request] = []
    newer = random.Random(6).randbytes(len(IMAGE))
    transport = image_server([IMAGE, newer], [100_000], seen)
    async with httpx.AsyncClient(transport=transport, base_url="http://sensorium") as client:
        got = await download(
            client, assignment_of(IMAGE, Ed25519PrivateKey.generate()), "tok", retry_s=0
        )
    # If-Range did not match: the server sent the whole (new) image, hashed from zero.
    assert seen[1].headers["Range"] == "bytes=100000-"
    assert got.digest == hashlib.sha256(newer).digest()
    assert got.size == len(newer)


async def test_a_download_that_keeps_breaking_without_progress_fails() -> None:
    seen: list[httpx.Request] = []
    transport = image_server([IMAGE], [0] * 20, seen)
    async with httpx.AsyncClient(transport=transport, base_url="http://sensorium") as client:
        with pytest.raises(DownloadFailed, match="download failed after 8 attempts at byte 0"):
            await download(
                client, assignment_of(IMAGE, Ed25519PrivateKey.generate()), "tok", retry_s=0
            )


def test_what_the_device_refuses_to_install() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    good = assignment_of(IMAGE, key)
    digest = hashlib.sha256(IMAGE).digest()
    assert verify(good, Downloaded(len(IMAGE), digest, 1), public) is None

    short = verify(good, Downloaded(len(IMAGE) - 1, digest, 1), public)
    assert short == f"size mismatch: received {len(IMAGE) - 1} bytes, expected {len(IMAGE)}"
    other = hashlib.sha256(b"evil").digest()
    assert verify(good, Downloaded(len(IMAGE), other, 1), public) == (
        f"sha256 mismatch: the image hashes to {other.hex()}, expected {digest.hex()}"
    )
    # Signed by another key than the device trusts.
    stranger = assignment_of(IMAGE, Ed25519PrivateKey.generate())
    assert verify(stranger, Downloaded(len(IMAGE), digest, 1), public) == (
        "bad signature: the image is not signed by the key this device trusts"
    )
    # A signature over the hex text instead of the 32-byte digest is not valid either.
    hex_signed = replace(good, signature=base64.b64encode(key.sign(digest.hex().encode())).decode())
    assert verify(hex_signed, Downloaded(len(IMAGE), digest, 1), public) is not None
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert (
        parse_public_key(base64.b64encode(raw).decode()).public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        == raw
    )


# --- against the real server and Mosquitto -------------------------------------------------

CONFIG = FleetConfig(
    interval_s=0.5, status_every_s=5.0, poll_wait_s=5, reboot_s=0.5, seed=41,
    ota=OtaConfig(progress_every_s=0.05, install_s=0.2),
)  # fmt: skip


async def account(client: httpx.AsyncClient) -> dict[str, str]:
    """A new user; its headers."""
    body = {"username": f"ota{random.getrandbits(24):06x}", "password": "correct horse battery"}
    assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
    token = await login(client, body["username"], body["password"])
    return {**body, "Authorization": f"Bearer {token}"}


def auth(owner: dict[str, str]) -> dict[str, str]:
    return {"Authorization": owner["Authorization"]}


async def upload(client: httpx.AsyncClient, owner: dict[str, str], data: bytes) -> int:
    r = await client.post(
        "/api/v1/firmware",
        data={"title": "Summer", "version": "1.3.0"},
        files={"file": ("fw.bin", data, "application/octet-stream")},
        headers=auth(owner),
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def rollout(
    client: httpx.AsyncClient, owner: dict[str, str], firmware_id: int, ids: list[str]
) -> int:
    r = await client.post(
        "/api/v1/rollouts",
        json={"firmware_id": firmware_id, "devices": ids},
        headers=auth(owner),
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def device(client: httpx.AsyncClient, owner: dict[str, str], device_id: str) -> Any:
    r = await client.get(f"/api/v1/devices/{device_id}", headers=auth(owner))
    assert r.status_code == 200, r.text
    return r.json()


async def running(
    client: httpx.AsyncClient, owner: dict[str, str], ids: list[str], fw: str
) -> bool:
    found = [await device(client, owner, d) for d in ids]
    return all(d["status"] == "online" and d["firmware_version"] == fw for d in found)


async def finished_jobs(
    client: httpx.AsyncClient, owner: dict[str, str], rollout_id: int, count: int
) -> dict[str, Any]:
    """The rollout's jobs by device once `count` of them are UPDATED or FAILED."""

    async def done() -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/rollouts/{rollout_id}", headers=auth(owner))
        jobs = {j["device_id"]: j for j in r.json()["jobs"]}
        ended = [j for j in jobs.values() if j["state"] in ("UPDATED", "FAILED")]
        return jobs if len(ended) >= count else None

    jobs: dict[str, Any] | None = await wait_for(done, timeout_s=30, interval_s=0.2)
    assert jobs is not None, "the devices did not finish their updates"
    return jobs


async def specs(
    served: Served, client: httpx.AsyncClient, owner: dict[str, str], count: int
) -> list[DeviceSpec]:
    token = owner["Authorization"].removeprefix("Bearer ")
    result = await register_devices(
        client, access_token=token, count=count, seed=CONFIG.seed, profile="mixed"
    )
    await served.app.state.ctx.provisioner.wait_idle()
    return [d.spec() for d in result.devices]


def mqtt_fleet(served: Served, devices: list[DeviceSpec], config: FleetConfig) -> Fleet:
    assert served.broker.address is not None
    return Fleet(
        devices,
        config,
        transport="mqtt",
        mqtt_host=served.broker.address.host,
        mqtt_port=served.broker.address.port,
        api_url=served.url,
    )


def states(job: dict[str, Any]) -> list[str]:
    return [h["state"] for h in job["history"]]


async def test_a_rollout_to_three_simulated_devices_ends_updated_with_the_new_version(
    served: Served, tmp_path: Path
) -> None:
    assert served.broker.address is not None
    async with httpx.AsyncClient(base_url=served.url) as client:
        owner = await account(client)
        options = SimulateOptions(
            devices=3,
            transport="mqtt",
            profile="mixed",
            config=CONFIG,  # no public key: `simulate` fetches the server's with the login
            register=True,
            api_url=served.url,
            mqtt_url=f"mqtt://{served.broker.address.host}:{served.broker.address.port}",
            username=owner["username"],
            password=owner["password"],
            out=tmp_path / "devices.json",
        )
        out = io.StringIO()
        run = asyncio.create_task(simulate(options, Console(file=out, width=140)))

        async def listed() -> list[str]:
            # All three or nothing: the simulator registers them one after another.
            r = await client.get("/api/v1/devices", headers=auth(owner))
            found = [d["id"] for d in r.json()["items"]]
            return found if len(found) >= 3 else []

        ids: list[str] = await wait_for(lambda: listed(), timeout_s=20)
        assert len(ids) == 3
        assert await wait_for(lambda: running(client, owner, ids, OLD), timeout_s=20)
        rollout_id = await rollout(client, owner, await upload(client, owner, IMAGE), ids)

        jobs = await finished_jobs(client, owner, rollout_id, 3)
        for job in jobs.values():
            assert job["state"] == "UPDATED", job
            assert job["from_version"] == OLD
            # Every step the device reports, in order, then the status that proves it.
            assert states(job)[:5] == [
                "ASSIGNED", "DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING",
            ]  # fmt: skip
            assert states(job)[-1] == "UPDATED"
        assert await wait_for(lambda: running(client, owner, ids, "1.3.0"), timeout_s=10)
        r = await client.get(f"/api/v1/rollouts/{rollout_id}", headers=auth(owner))
        assert r.json()["state"] == "completed"

        os.kill(os.getpid(), signal.SIGINT)
        summary = await run
    ota = summary.snapshot.ota
    assert (ota.assigned, ota.verified, ota.installed, ota.failed) == (3, 3, 3, 0)
    assert ota.bytes == 3 * len(IMAGE)
    assert summary.snapshot.errors == {}
    assert "3 installed, 0 rolled back, 0 failed" in out.getvalue()


async def test_a_tampered_image_fails_on_mqtt_and_http_devices_which_keep_their_version(
    served: Served,
) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        owner = await account(client)
        over_mqtt, over_http = await specs(served, client, owner, 2)
        key = await fetch_public_key(client, owner["Authorization"].removeprefix("Bearer "))
        config = replace(CONFIG, ota=replace(CONFIG.ota, public_key=key))
        firmware_id = await upload(client, owner, IMAGE)
        # Someone changes the stored image: same size, one byte different.
        [stored] = (served.app.state.ctx.settings.data_dir / "firmware").iterdir()
        with stored.open("r+b") as file:
            file.seek(150_000)
            byte = file.read(1)
            file.seek(150_000)
            file.write(bytes([byte[0] ^ 0xFF]))
        ids = [over_mqtt.device_id, over_http.device_id]
        async with (
            mqtt_fleet(served, [over_mqtt], config) as mqtt,
            Fleet([over_http], config, transport="http", api_url=served.url) as http,
        ):
            assert await wait_for(lambda: running(client, owner, ids, OLD), timeout_s=20)
            rollout_id = await rollout(client, owner, firmware_id, ids)
            jobs = await finished_jobs(client, owner, rollout_id, 2)
            tampered = bytearray(IMAGE)
            tampered[150_000] ^= 0xFF
            reason = (
                f"sha256 mismatch: the image hashes to {hashlib.sha256(tampered).hexdigest()}, "
                f"expected {hashlib.sha256(IMAGE).hexdigest()}"
            )
            for job in jobs.values():
                assert (job["state"], job["error"]) == ("FAILED", reason), job
                assert "VERIFIED" not in states(job)
            await asyncio.sleep(1.0)  # a status or two later: still the old version
            assert await running(client, owner, ids, OLD)
            for fleet in (mqtt, http):
                assert [d.firmware for d in fleet.devices] == [OLD]
                assert fleet.stats.ota.failures == {"sha256 mismatch": 1}
                assert fleet.stats.ota.installed == 0


async def test_a_device_whose_new_version_does_not_boot_comes_back_rolled_back(
    served: Served,
) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        owner = await account(client)
        stubborn, fine = await specs(served, client, owner, 2)
        key = await fetch_public_key(client, owner["Authorization"].removeprefix("Bearer "))
        config = replace(
            CONFIG,
            ota=replace(
                CONFIG.ota, public_key=key, rollback_devices=frozenset({stubborn.device_id})
            ),
        )
        ids = [stubborn.device_id, fine.device_id]
        async with (
            mqtt_fleet(served, [stubborn], config) as mqtt,
            Fleet([fine], config, transport="http", api_url=served.url) as http,
        ):
            assert await wait_for(lambda: running(client, owner, ids, OLD), timeout_s=20)
            rollout_id = await rollout(client, owner, await upload(client, owner, IMAGE), ids)
            jobs = await finished_jobs(client, owner, rollout_id, 2)
            back = jobs[stubborn.device_id]
            assert back["state"] == "FAILED", back
            assert back["error"] == f"rolled back: the device came back with {OLD}, not 1.3.0"
            assert states(back)[1:5] == ["DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING"]
            assert jobs[fine.device_id]["state"] == "UPDATED", jobs[fine.device_id]
            assert (await device(client, owner, stubborn.device_id))["firmware_version"] == OLD
            assert (await device(client, owner, fine.device_id))["firmware_version"] == "1.3.0"
            assert mqtt.stats.ota.rolled_back == 1
            assert mqtt.devices[0].firmware == OLD
            assert http.stats.ota.installed == 1
            assert http.devices[0].firmware == "1.3.0"
