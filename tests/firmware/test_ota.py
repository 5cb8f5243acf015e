"""Over-the-air updates with the firmware itself (host-run, MicroPython shims) against the
real server and Mosquitto: an application bundle uploaded, signed by the server and
rolled out reaches UPDATED on three devices, each running the new bundle with the old
one kept; a download cut mid-body resumes with Range from the staged bytes; a tampered
image or a device flashed with another key fails with the reason and keeps its version;
a bundle that never reaches the server is rolled back."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.firmware import host
from tests.firmware.conftest import Served
from tests.firmware.fakes import Node, NtpServer, device_config
from tests.firmware.test_system import closed_port
from tests.helpers import Account, RegisteredDevice
from tests.system.conftest import provisioned, wait_for

OLD = "1.2.0"
LIB = host.FIRMWARE / "lib" / "sensorium_fw"


def bundle(version: str, filler: int = 0) -> bytes:
    """An application bundle as `make firmware` packs it (here with the .py sources), with
    `filler` bytes of an extra module to make it bigger."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("VERSION", f"{version}\n".encode())
        for path in sorted(LIB.glob("*.py")):
            add(f"sensorium_fw/{path.name}", path.read_bytes())
        if filler:
            add("sensorium_fw/filler.py", b"# " + b"f" * filler + b"\n")
    return out.getvalue()


def install_bundle(root: Path, version: str) -> None:
    """What was flashed: the bundle of `version` in app/."""
    with tarfile.open(fileobj=io.BytesIO(bundle(version))) as tar:
        tar.extractall(root / "app", filter="data")


async def public_key(served: Served, owner: Account) -> str:
    r = await served.api.client.get("/api/v1/firmware/public-key", headers=owner.headers)
    assert r.status_code == 200, r.text
    key: str = r.json()["public_key"]
    return key


async def upload(served: Served, owner: Account, data: bytes, version: str) -> dict[str, Any]:
    r = await served.api.client.post(
        "/api/v1/firmware",
        data={"title": "Release", "version": version},
        files={"file": ("firmware-bundle.tar", data, "application/x-tar")},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def roll_out(served: Served, owner: Account, firmware_id: int, ids: list[str]) -> int:
    r = await served.api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": firmware_id, "devices": ids, "abort_failure_percent": 100},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    rollout_id: int = r.json()["id"]
    return rollout_id


async def jobs(served: Served, owner: Account, rollout_id: int) -> dict[str, dict[str, Any]]:
    r = await served.api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=owner.headers)
    assert r.status_code == 200, r.text
    return {job["device_id"]: job for job in r.json()["jobs"]}


async def finished(
    served: Served, owner: Account, rollout_id: int, timeout_s: float = 40
) -> dict[str, dict[str, Any]]:
    async def done() -> dict[str, dict[str, Any]] | None:
        found = await jobs(served, owner, rollout_id)
        return found if all(j["state"] in ("UPDATED", "FAILED") for j in found.values()) else None

    result: dict[str, dict[str, Any]] | None = await wait_for(
        done, timeout_s=timeout_s, interval_s=0.2
    )
    assert result is not None, await jobs(served, owner, rollout_id)
    return result


async def firmware_version(served: Served, device: RegisteredDevice) -> str | None:
    r = await served.api.client.get(f"/api/v1/devices/{device.id}", headers=device.owner.headers)
    assert r.status_code == 200, r.text
    version: str | None = r.json()["firmware_version"]
    return version


def states(job: dict[str, Any]) -> list[str]:
    return [entry["state"] for entry in job["history"]]


class Nodes:
    """Simulated ESP32s, each with its flash under tmp_path (they share one World: the
    shims' board, which these tests do not tell apart)."""

    def __init__(self, tmp_path: Path, board: host.World) -> None:
        self.tmp_path = tmp_path
        self.board = board
        self.nodes: list[Node] = []

    def boot(
        self, served: Served, device: RegisteredDevice, ntp: NtpServer, key: str, **extra: Any
    ) -> Node:
        root = self.tmp_path / device.id
        root.mkdir()
        install_bundle(root, OLD)
        node = Node(root, self.board)
        config = device_config(
            device_id=device.id,
            token=device.token,
            mqtt_port=extra.pop("mqtt_port", served.mqtt_port),
            http_port=extra.pop("http_port", served.port),
            ntp_port=ntp.port,
            interval_s=2,
            ota_public_key=key,
            **extra,
        )
        config["sensors"] = {}
        node.write_config(config)
        self.nodes.append(node)
        return node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def online_with(served: Served, device: RegisteredDevice, version: str) -> bool:
    async def reported() -> bool:
        return await firmware_version(served, device) == version

    return bool(await wait_for(reported, timeout_s=15))


async def test_three_devices_are_updated_to_the_new_bundle(
    served: Served, ntp: NtpServer, tmp_path: Path, board: host.World
) -> None:
    owner = await served.api.account()
    devices = [await served.api.device(owner) for _ in range(3)]
    await provisioned(served.api)
    key = await public_key(served, owner)
    nodes = Nodes(tmp_path, board)
    try:
        booted = [nodes.boot(served, device, ntp, key) for device in devices]
        for device in devices:
            assert await online_with(served, device, OLD)  # the version in app/VERSION
        image = bundle("1.3.0", filler=150_000)
        firmware = await upload(served, owner, image, "1.3.0")
        assert firmware["sha256"] == hashlib.sha256(image).hexdigest()
        rollout = await roll_out(served, owner, firmware["id"], [d.id for d in devices])

        found = await finished(served, owner, rollout)
        for device, node in zip(devices, booted, strict=True):
            job = found[device.id]
            assert job["state"] == "UPDATED", job
            assert states(job)[:5] == [
                "ASSIGNED",
                "DOWNLOADING",
                "DOWNLOADED",
                "VERIFIED",
                "UPDATING",
            ], job["history"]
            assert states(job)[-1] == "UPDATED"
            # What the device itself reported, in order (its own UPDATED after the reboot
            # is recorded; the server's UPDATED comes from the status's fw).
            reported = [h["reported"] for h in job["history"] if h.get("reported")]
            assert [r for r in reported if r != "DOWNLOADING"] == [
                "DOWNLOADED",
                "VERIFIED",
                "UPDATING",
                "UPDATED",
            ], job["history"]
            assert reported[0] == "DOWNLOADING"
            assert await online_with(served, device, "1.3.0")
            # Rebooted once into the new bundle, the old one kept for a rollback.
            assert node.boots == 2
            assert node.device.fw_version == "1.3.0"
            assert (node.root / "app" / "VERSION").read_text() == "1.3.0\n"
            assert (node.root / "app.prev" / "VERSION").read_text() == f"{OLD}\n"
            assert (node.root / "app" / "sensorium_fw" / "filler.py").stat().st_size == 150_003
            assert not (node.root / "ota" / "image.part").exists()
            assert not (node.root / "ota" / "trial.json").exists()  # confirmed
        r = await served.api.client.get(f"/api/v1/rollouts/{rollout}", headers=owner.headers)
        assert r.json()["state"] == "completed"
    finally:
        nodes.stop()


class CuttingProxy:
    """A TCP proxy in front of the HTTP port that cuts the first image download after
    `cut_after` bytes of its answer, and keeps every request head it forwarded."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.heads: list[bytes] = []
        self.cut = 0
        self.body_before_cut: int | None = None  # body bytes the cut download delivered
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="proxy")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(client,), name="proxy-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        client.settimeout(10)
        upstream.settimeout(10)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            upstream.sendall(head)
            with self._lock:
                self.heads.append(head)
                cutting = b"/image" in head and self.cut == 0
                if cutting:
                    self.cut = -1  # this one
            answer = b""
            while True:
                data = upstream.recv(4096)
                if not data:
                    return
                if cutting and len(answer) + len(data) >= self.cut_after:
                    data = data[: self.cut_after - len(answer)]
                    client.sendall(data)
                    answer += data
                    self.body_before_cut = len(answer) - answer.index(b"\r\n\r\n") - 4
                    self.cut = self.cut_after
                    return  # both closed mid-body
                client.sendall(data)
                if cutting:
                    answer += data
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._server.close()


async def test_a_download_cut_mid_body_resumes_from_the_staged_bytes(
    served: Served, ntp: NtpServer, tmp_path: Path, board: host.World
) -> None:
    owner = await served.api.account()
    device = await served.api.device(owner)
    await provisioned(served.api)
    key = await public_key(served, owner)
    proxy = CuttingProxy(served.port, cut_after=120_000)
    nodes = Nodes(tmp_path, board)
    try:
        node = nodes.boot(served, device, ntp, key, http_port=proxy.port)
        assert await online_with(served, device, OLD)
        image = bundle("1.3.0", filler=300_000)
        firmware = await upload(served, owner, image, "1.3.0")
        rollout = await roll_out(served, owner, firmware["id"], [device.id])
        job = (await finished(served, owner, rollout))[device.id]
        assert job["state"] == "UPDATED", job
        assert await online_with(served, device, "1.3.0")

        downloads = [h for h in proxy.heads if b"/image" in h]
        assert len(downloads) == 2, downloads
        assert b"Range" not in downloads[0]
        # The cut came after the answer's head: what the device staged is the body so far.
        resumed = downloads[1].decode()
        start = int(resumed.split("Range: bytes=", 1)[1].split("-", 1)[0])
        assert start == proxy.body_before_cut, (start, proxy.body_before_cut)
        assert 100_000 < start < 120_000
        assert f'If-Range: "{firmware["sha256"]}"' in resumed
        # What it installed is the uploaded bundle byte for byte (its SHA-256 checked out).
        with tarfile.open(fileobj=io.BytesIO(image)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    assert (node.root / "app" / member.name).read_bytes() == extracted.read()
        downloading = [h for h in job["history"] if h["state"] == "DOWNLOADING"]
        assert downloading, job["history"]
    finally:
        nodes.stop()
        proxy.close()


async def test_a_tampered_image_or_another_key_fails_and_the_old_version_runs_on(
    served: Served, ntp: NtpServer, tmp_path: Path, board: host.World
) -> None:
    owner = await served.api.account()
    tampered_for, other_key = [await served.api.device(owner) for _ in range(2)]
    await provisioned(served.api)
    key = await public_key(served, owner)
    # A key pair of someone else: its public half flashed into the second device.
    stranger = Ed25519PrivateKey.generate().public_key()
    stranger_b64 = base64.b64encode(
        stranger.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    nodes = Nodes(tmp_path, board)
    try:
        first = nodes.boot(served, tampered_for, ntp, key)
        second = nodes.boot(served, other_key, ntp, stranger_b64)
        for device in (tampered_for, other_key):
            assert await online_with(served, device, OLD)

        # Signed by the server at upload, then one byte changed on the server's disk.
        image = bundle("1.3.0", filler=20_000)
        tampered = await upload(served, owner, image, "1.3.0")
        directory = served.app.state.ctx.settings.data_dir / "firmware"
        (stored,) = [p for p in directory.iterdir() if p.read_bytes() == image]
        damaged = bytearray(image)
        damaged[len(image) // 2] ^= 0x20
        stored.write_bytes(bytes(damaged))
        good = await upload(served, owner, bundle("1.3.1"), "1.3.1")

        first_rollout = await roll_out(served, owner, tampered["id"], [tampered_for.id])
        second_rollout = await roll_out(served, owner, good["id"], [other_key.id])
        job = (await finished(served, owner, first_rollout))[tampered_for.id]
        assert job["state"] == "FAILED", job
        assert "SHA-256 mismatch" in job["error"], job
        assert hashlib.sha256(damaged).hexdigest() in job["error"]
        job = (await finished(served, owner, second_rollout))[other_key.id]
        assert job["state"] == "FAILED", job
        assert "bad signature" in job["error"], job
        assert "VERIFIED" not in states(job)

        for device, node in ((tampered_for, first), (other_key, second)):
            assert node.boots == 1  # never rebooted
            assert (node.root / "app" / "VERSION").read_text() == f"{OLD}\n"
            assert not (node.root / "app.new").exists()
            assert not (node.root / "ota" / "image.part").exists()
            assert node.device.link is not None
            assert await firmware_version(served, device) == OLD
        # Still at work: a ping is answered by the old firmware.
        r = await served.api.client.post(
            f"/api/v1/devices/{other_key.id}/commands",
            params={"wait": "10"},
            json={"name": "ping", "params": {}, "timeout_s": 30},
            headers=owner.headers,
            timeout=20,  # more than `wait`: the server holds the request up to 10 s
        )
        assert r.json()["status"] == "succeeded", r.text
    finally:
        nodes.stop()


async def test_a_bundle_that_never_reaches_the_server_is_rolled_back(
    served: Served, ntp: NtpServer, tmp_path: Path, board: host.World
) -> None:
    owner = await served.api.account()
    device = await served.api.device(owner)
    await provisioned(served.api)
    key = await public_key(served, owner)
    nodes = Nodes(tmp_path, board)

    def network(boots: int) -> None:
        # The new bundle boots into a dead network (as if it broke Wi-Fi); after the
        # rollback the network is back.
        board.wifi_up = boots != 2

    try:
        node = nodes.boot(served, device, ntp, key, ota_trial_s=3)
        node.on_boot = network
        assert await online_with(served, device, OLD)
        firmware = await upload(served, owner, bundle("1.3.0"), "1.3.0")
        rollout = await roll_out(served, owner, firmware["id"], [device.id])
        started = time.monotonic()
        job = (await finished(served, owner, rollout, timeout_s=60))[device.id]
        assert job["state"] == "FAILED", job
        assert "rolled back" in job["error"], job
        assert "UPDATING" in states(job)
        assert node.boots == 3, node.boots
        assert (node.root / "app" / "VERSION").read_text() == f"{OLD}\n"
        assert not (node.root / "ota" / "trial.json").exists()
        assert await online_with(served, device, OLD)
        assert time.monotonic() - started < 60
    finally:
        nodes.stop()


async def test_over_the_http_fallback_the_state_poll_brings_the_update(
    served: Served, ntp: NtpServer, tmp_path: Path, board: host.World
) -> None:
    owner = await served.api.account()
    device = await served.api.device(owner)
    await provisioned(served.api)
    key = await public_key(served, owner)
    nodes = Nodes(tmp_path, board)
    try:
        # No broker for this device: the assignment comes as `ota` in the state poll and
        # the progress goes up with POST .../ota/progress.
        node = nodes.boot(served, device, ntp, key, mqtt_port=closed_port())
        assert await online_with(served, device, OLD)
        assert node.device.link.name == "http"
        firmware = await upload(served, owner, bundle("1.3.0"), "1.3.0")
        rollout = await roll_out(served, owner, firmware["id"], [device.id])
        job = (await finished(served, owner, rollout))[device.id]
        assert job["state"] == "UPDATED", job
        reported = [h["reported"] for h in job["history"] if h.get("reported")]
        assert {"DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED"} <= set(reported), reported
        assert node.boots == 2
        assert node.device.link.name == "http"
        assert await online_with(served, device, "1.3.0")
    finally:
        nodes.stop()
