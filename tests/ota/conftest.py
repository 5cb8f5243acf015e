"""Helpers for the OTA tests: images, uploads, what the database and the disk hold."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select

from sensorium.api.context import AppContext
from sensorium.ota.models import Firmware, OtaJob, Rollout
from tests.helpers import Account, Api, RegisteredDevice


def image(size: int = 50_000, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def ctx_of(api: Api) -> AppContext:
    ctx: AppContext = api.client.app.state.ctx  # type: ignore[attr-defined]
    return ctx


def firmware_files(api: Api) -> list[str]:
    """Every file in the firmware directory (stored images and leftovers alike)."""
    directory = ctx_of(api).settings.data_dir / "firmware"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def upload(
    api: Api,
    owner: Account,
    data: bytes,
    *,
    version: str = "1.3.0",
    title: str = "Release",
    notes: str = "",
    signature: str | None = None,
) -> httpx.Response:
    fields = {"title": title, "version": version, "notes": notes}
    if signature is not None:
        fields["signature"] = signature
    return await api.client.post(
        "/api/v1/firmware",
        data=fields,
        files={"file": ("fw.bin", data, "application/octet-stream")},
        headers=owner.headers,
    )


async def uploaded(api: Api, owner: Account, data: bytes, version: str = "1.3.0") -> dict[str, Any]:
    r = await upload(api, owner, data, version=version)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def count(api: Api, model: type[Firmware] | type[Rollout] | type[OtaJob]) -> int:
    async with ctx_of(api).sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def verifies(public_key_b64: str, data: bytes, signature_b64: str) -> bool:
    """What a device does with the key it was flashed with."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    try:
        key.verify(base64.b64decode(signature_b64), hashlib.sha256(data).digest())
    except Exception:
        return False
    return True


async def status(api: Api, device: RegisteredDevice, fw: str) -> None:
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/status",
        json={"online": True, "fw": fw},
        headers=device.headers,
    )
    assert r.status_code == 200, r.text


async def rollout(api: Api, owner: Account, **body: Any) -> dict[str, Any]:
    r = await api.client.post("/api/v1/rollouts", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def assignment(api: Api, device: RegisteredDevice) -> dict[str, Any] | None:
    """What an HTTP device finds in its state poll."""
    r = await api.client.get(f"/api/v1/devices/{device.id}/state", headers=device.headers)
    assert r.status_code == 200, r.text
    found: dict[str, Any] | None = r.json()["ota"]
    return found


async def progress(
    api: Api, device: RegisteredDevice, job: str, state: str, **extra: Any
) -> httpx.Response:
    return await api.client.post(
        f"/api/v1/devices/{device.id}/ota/progress",
        json={"job": job, "state": state, **extra},
        headers=device.headers,
    )


async def get_rollout(api: Api, owner: Account, rollout_id: int) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=owner.headers)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def jobs_by_device(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["device_id"]: j for j in detail["jobs"]}


def key_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
