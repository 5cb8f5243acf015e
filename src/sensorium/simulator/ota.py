"""Firmware updates on a simulated device, as the firmware does them (PROTOCOL.md "OTA",
docs/ota.md): on an assignment, download the image over HTTP with the device token,
hashing it as it streams (nothing of the image is kept: 10,000 devices must fit in one
process), resume with `Range`/`If-Range` when the download is cut, check the size, the
SHA-256 and the Ed25519 signature over the 32-byte digest against the public key the
device "was flashed with", report each step, then reboot into the new version.

Failures can be injected for demos and tests: a share of updates whose flash write fails
(the device reports FAILED), and updates whose new version does not boot, so the device
comes back with the old one (the server marks that FAILED "rolled back").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sensorium.protocol.ota import DeviceState, OtaAssignment, OtaProgress
from sensorium.simulator.links import LinkError

# A download cut this many times in a row (no byte gained) fails the update.
MAX_FRUITLESS_ATTEMPTS: Final = 8
FLASH_WRITE_FAILED: Final = "flash write failed (simulated)"


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The raw 32-byte Ed25519 public key in base64 (what `GET /api/v1/firmware/public-key`
    gives as `public_key`, and what the firmware is flashed with)."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("the OTA public key must be 32 bytes in base64") from None


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """How the simulated devices treat firmware updates."""

    # Off: the devices do not even subscribe to their assignment.
    enabled: bool = True
    # base64 of the raw key; without one every update fails ("no public key"), as on a
    # device flashed without one.
    public_key: str | None = None
    # Downloads running at once in the whole fleet (the others wait their turn).
    concurrency: int = 32
    # At most one DOWNLOADING report per device this often.
    progress_every_s: float = 1.0
    # Time between VERIFIED and the reboot (writing the flash).
    install_s: float = 1.0
    # Share of updates whose flash write fails: FAILED with FLASH_WRITE_FAILED.
    fail_rate: float = 0.0
    # Share of updates whose new version does not boot: back with the old one.
    rollback_rate: float = 0.0
    # Devices on which the new version never boots.
    rollback_devices: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("OTA download concurrency must be at least 1")
        if not 0.0 <= self.fail_rate <= 1.0 or not 0.0 <= self.rollback_rate <= 1.0:
            raise ValueError("OTA failure and rollback rates must be from 0 to 1")
        if self.progress_every_s < 0 or self.install_s < 0:
            raise ValueError("OTA progress interval and install time must not be negative")
        if self.public_key is not None:
            parse_public_key(self.public_key)


@dataclass(slots=True)
class OtaStats:
    """Fleet-wide update counters."""

    assigned: int = 0
    downloads: int = 0
    resumes: int = 0
    bytes: int = 0
    verified: int = 0
    failed: int = 0
    # Rebooted into the new version / came back with the old one.
    installed: int = 0
    rolled_back: int = 0
    # Withdrawn by the server (cancelled, finished elsewhere) before the device was done.
    abandoned: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class DownloadFailed(Exception):
    """The image could not be downloaded (the message is the device's FAILED reason)."""


class AssignmentGone(Exception):
    """The server no longer has this assignment for the device (withdrawn, or finished)."""


@dataclass(frozen=True, slots=True)
class Downloaded:
    size: int
    digest: bytes
    attempts: int


class _Cut(Exception):
    """The connection dropped under the download (the device went offline)."""


def _content_range_start(response: httpx.Response) -> int | None:
    unit, _, spec = response.headers.get("Content-Range", "").partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


async def download(
    client: httpx.AsyncClient,
    assignment: OtaAssignment,
    token: str,
    *,
    progress: Callable[[int], Awaitable[None]] | None = None,
    online: Callable[[], bool] = lambda: True,
    retry_s: float = 1.0,
    timeout_s: float = 30.0,
) -> Downloaded:
    """Stream the image into a SHA-256 (never into memory). A cut download resumes from the
    bytes received with `Range` and `If-Range: <ETag>`: a 206 from there continues the
    hash, a 200 (the image changed, or the server ignores ranges) starts it over.
    `progress(received)` is awaited after each chunk; `online()` false cuts the download
    (the device lost its network) until it is true again."""
    auth = {"Authorization": f"Bearer {token}"}
    hasher = hashlib.sha256()
    received = 0
    etag: str | None = None
    attempts = 0
    fruitless = 0
    last_error = ""
    while True:
        while not online():  # noqa: ASYNC110 - a device checks its Wi-Fi now and then
            await asyncio.sleep(retry_s)
        attempts += 1
        headers = dict(auth)
        if received:
            headers["Range"] = f"bytes={received}-"
            if etag:
                headers["If-Range"] = etag
        before = received
        try:
            async with client.stream(
                "GET", assignment.url, headers=headers, timeout=timeout_s
            ) as response:
                status = response.status_code
                if status in (403, 404):
                    raise AssignmentGone(f"HTTP {status}")
                if status == 416 and received >= assignment.size:
                    return Downloaded(received, hasher.digest(), attempts)
                if status == 206 and _content_range_start(response) == received:
                    pass  # the rest, from where it was cut
                elif status == 200:
                    if received:
                        hasher, received, before = hashlib.sha256(), 0, 0
                else:
                    raise _Cut(f"HTTP {status}")
                etag = response.headers.get("ETag") or etag
                async for chunk in response.aiter_bytes():
                    if received + len(chunk) > assignment.size:
                        # More than announced: a device stops writing at the partition's
                        # end; what came is enough to fail the size check.
                        received += len(chunk)
                        break
                    hasher.update(chunk)
                    received += len(chunk)
                    if progress is not None:
                        await progress(received)
                    if not online():
                        raise _Cut("went offline")
            return Downloaded(received, hasher.digest(), attempts)
        except (httpx.TransportError, _Cut) as exc:
            last_error = str(exc) or type(exc).__name__
        fruitless = 0 if received > before else fruitless + 1
        if fruitless >= MAX_FRUITLESS_ATTEMPTS:
            raise DownloadFailed(
                f"download failed after {attempts} attempts at byte {received}: {last_error}"
            )
        await asyncio.sleep(retry_s * min(fruitless + 1, 10))


def verify(
    assignment: OtaAssignment, image: Downloaded, public_key: Ed25519PublicKey
) -> str | None:
    """Why the device refuses to install the downloaded image, or None when it is good."""
    if image.size != assignment.size:
        return f"size mismatch: received {image.size} bytes, expected {assignment.size}"
    if image.digest.hex() != assignment.sha256:
        return (
            f"sha256 mismatch: the image hashes to {image.digest.hex()}, "
            f"expected {assignment.sha256}"
        )
    try:
        signature = base64.b64decode(assignment.signature, validate=True)
    except (binascii.Error, ValueError):
        return "bad signature: not base64"
    try:
        public_key.verify(signature, image.digest)
    except InvalidSignature:
        return "bad signature: the image is not signed by the key this device trusts"
    return None


class OtaDevice(Protocol):
    """What the updater needs of the device it runs on (fleet.SimDevice)."""

    # True from the flash write to the reboot: no status goes out meanwhile.
    installing: bool

    @property
    def device_id(self) -> str: ...

    @property
    def token(self) -> str: ...

    @property
    def network_up(self) -> bool:
        """On the network (a download can run)."""

    @property
    def link_up(self) -> bool:
        """Connected to the server (progress can go out)."""

    async def send_ota_progress(self, payload: bytes) -> None:
        """Raises LinkError (`fatal`: the server refuses reports of this job)."""

    def boot_into(self, version: str) -> None:
        """Reboot now; come back running `version`."""


class OtaUpdater:
    """Runs the fleet's updates: one `update` task per assigned device, the downloads
    limited to `config.concurrency` at once."""

    def __init__(
        self,
        config: OtaConfig,
        *,
        client: httpx.AsyncClient | None,
        seed: int,
        stats: OtaStats,
        on_error: Callable[[str], None],
        retry_s: float = 1.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.config = config
        self.stats = stats
        self._client = client
        self._key = parse_public_key(config.public_key) if config.public_key else None
        self._seed = seed
        self._on_error = on_error
        self._slots = asyncio.Semaphore(config.concurrency)
        self._retry_s = retry_s
        self._timeout_s = timeout_s

    async def update(self, device: OtaDevice, assignment: OtaAssignment, firmware: str) -> None:
        """The whole update of one device; returns when it is finished (failed, or the
        device asked to reboot into the new version), or withdrawn by the server."""
        stats = self.stats
        stats.assigned += 1
        job = assignment.job
        rng = random.Random(f"sensorium-sim/{self._seed}/{device.device_id}/ota/{job}")
        try:
            if self._key is None:
                await self._fail(device, job, "no public key to verify the image with")
                return
            if self._client is None:
                await self._fail(device, job, "no API URL to download the image from")
                return
            async with self._slots:
                await self._report(device, job, "DOWNLOADING", progress=0.0)
                stats.downloads += 1
                try:
                    image = await download(
                        self._client,
                        assignment,
                        device.token,
                        progress=self._progress_reporter(device, assignment),
                        online=lambda: device.network_up,
                        retry_s=self._retry_s,
                        timeout_s=self._timeout_s,
                    )
                except DownloadFailed as exc:
                    await self._fail(device, job, str(exc), kind="download failed")
                    return
                stats.resumes += image.attempts - 1
                stats.bytes += image.size
            await self._report(device, job, "DOWNLOADED")
            reason = verify(assignment, image, self._key)
            if reason is not None:
                await self._fail(device, job, reason)
                return
            stats.verified += 1
            await self._report(device, job, "VERIFIED")
            device.installing = True
            await asyncio.sleep(self.config.install_s)
            if rng.random() < self.config.fail_rate:
                device.installing = False
                await self._fail(device, job, FLASH_WRITE_FAILED)
                return
            await self._report(device, job, "UPDATING")
        except AssignmentGone:
            device.installing = False
            stats.abandoned += 1
            return
        boots = (
            device.device_id not in self.config.rollback_devices
            and rng.random() >= self.config.rollback_rate
        )
        if boots:
            stats.installed += 1
        else:
            stats.rolled_back += 1
        # The new version does not come up: the bootloader goes back to the old one.
        device.boot_into(assignment.version if boots else firmware)

    def _progress_reporter(
        self, device: OtaDevice, assignment: OtaAssignment
    ) -> Callable[[int], Awaitable[None]]:
        every = self.config.progress_every_s
        last = time.monotonic()

        async def report(received: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < every or received >= assignment.size:
                return
            last = now
            fraction = round(received / assignment.size, 3)
            await self._report(device, assignment.job, "DOWNLOADING", progress=fraction, must=False)

        return report

    async def _fail(
        self, device: OtaDevice, job: str, reason: str, *, kind: str | None = None
    ) -> None:
        self.stats.failed += 1
        kind = kind or reason.split(":", 1)[0]
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
        await self._report(device, job, "FAILED", error=reason)

    async def _report(
        self,
        device: OtaDevice,
        job: str,
        state: DeviceState,
        *,
        progress: float | None = None,
        error: str | None = None,
        must: bool = True,
    ) -> None:
        """Send a progress report; one that `must` arrive waits for the device to be back
        online. Raises AssignmentGone when the server refuses reports of the job."""
        payload = OtaProgress(job, state, progress, error).to_json()
        while True:
            if device.link_up:
                try:
                    await device.send_ota_progress(payload)
                    return
                except LinkError as exc:
                    self._on_error(exc.kind)
                    if exc.fatal:
                        raise AssignmentGone(str(exc)) from None
            if not must:
                return
            await asyncio.sleep(self._retry_s)
