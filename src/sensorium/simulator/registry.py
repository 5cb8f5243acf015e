"""The simulator's devices: deterministic MACs, registration through the public API, the
devices.json that keeps the credentials it was given (tokens are shown only once), and
the dashboard controls of the devices that have something to control."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator

from sensorium.protocol import InvalidMac, normalize_mac
from sensorium.simulator.control import controls_for
from sensorium.simulator.fleet import DeviceSpec
from sensorium.simulator.links import API_PREFIX
from sensorium.simulator.signals import PROFILES, Profile

# 16 bits of the MAC number the devices of one seed: up to 65,536 per seed.
MAX_DEVICES = 1 << 16
FILE_VERSION = 1


def simulated_mac(seed: int, index: int) -> str:
    """`02:SS:SS:SS:II:II`: locally administered, unicast (first octet 0x02, so never a
    vendor's address), 24 bits derived from the seed and 16 from the device's index."""
    if not 0 <= index < MAX_DEVICES:
        raise ValueError(f"device index must be 0..{MAX_DEVICES - 1}")
    fleet = int.from_bytes(hashlib.sha256(f"sensorium-sim/{seed}".encode()).digest()[:3], "big")
    value = (0x02 << 40) | (fleet << 16) | index
    return ":".join(f"{value:012X}"[i : i + 2] for i in range(0, 12, 2))


def profile_for(profile: str, *, seed: int, index: int) -> Profile:
    """The profile of device `index`: the one asked for, or for "mixed" a seeded choice."""
    if profile in PROFILES:
        return profile
    if profile != "mixed":
        raise ValueError(f"unknown profile {profile!r}")
    return random.Random(f"sensorium-sim/{seed}/{index}/profile").choice(PROFILES)


class DeviceRecord(BaseModel):
    """One device as devices.json keeps it."""

    id: str
    token: str = Field(min_length=1)
    profile: Profile
    index: int = Field(ge=0)
    mac: str = ""
    name: str = ""
    location: str = ""

    @field_validator("id")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return normalize_mac(value)

    def spec(self) -> DeviceSpec:
        return DeviceSpec(self.id, self.token, self.profile, self.index)


class DevicesFile(BaseModel):
    """devices.json: where the devices were registered and their credentials."""

    version: int = FILE_VERSION
    api: str | None = None
    mqtt: str | None = None
    seed: int | None = None
    devices: list[DeviceRecord] = Field(default_factory=list)


class DevicesFileError(ValueError):
    """devices.json is missing, unreadable or not what the simulator wrote."""


def load_devices(path: Path) -> DevicesFile:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DevicesFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return DevicesFile.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError, InvalidMac) as exc:
        raise DevicesFileError(f"{path} is not a simulator devices file: {exc}") from None


def save_devices(path: Path, data: DevicesFile) -> None:
    """Write atomically and readable only by the owner: the file holds device tokens."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(data.model_dump(), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


@dataclass(slots=True)
class Registration:
    """What `register_devices` did; `created` must be saved, whatever else happened."""

    created: list[DeviceRecord] = field(default_factory=list)
    reused: list[DeviceRecord] = field(default_factory=list)
    # Registered before, but not in the devices file: their tokens are not available.
    conflicts: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def devices(self) -> list[DeviceRecord]:
        return sorted([*self.reused, *self.created], key=lambda d: d.index)


class RegistrationError(RuntimeError):
    """Login failed or the API is unreachable."""


async def login(client: httpx.AsyncClient, username: str, password: str) -> str:
    """An access token for the API (POST /auth/login)."""
    try:
        r = await client.post(
            f"{API_PREFIX}/auth/login", json={"username": username, "password": password}
        )
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the API: {exc}") from None
    if r.status_code != 200:
        raise RegistrationError(f"login as {username!r} failed: {_message(r)}")
    return str(r.json()["access_token"])


async def register_devices(
    client: httpx.AsyncClient,
    *,
    access_token: str,
    count: int,
    seed: int,
    profile: str,
    known: Sequence[DeviceRecord] = (),
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
    into: Registration | None = None,
) -> Registration:
    """Make sure devices 0..count-1 of `seed` exist: those in `known` are reused, the
    others registered (POST /devices). A 409 means the device was registered by an
    earlier run whose devices.json is not at hand: it is reported, not guessed at.

    Results accumulate in `into` when given, so a caller keeps the tokens obtained even if
    this is cancelled half-way."""
    if not 0 < count <= MAX_DEVICES:
        raise ValueError(f"count must be 1..{MAX_DEVICES}")
    result = into if into is not None else Registration()
    by_id = {d.id: d for d in known}
    headers = {"Authorization": f"Bearer {access_token}"}
    todo: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        mac = simulated_mac(seed, index)
        record = by_id.get(normalize_mac(mac))
        if record is not None:
            result.reused.append(record)
            if progress is not None:
                progress(1)
        else:
            todo.put_nowait(index)

    async def worker() -> None:
        while not todo.empty():
            index = todo.get_nowait()
            await _register_one(client, headers, result, seed=seed, index=index, profile=profile)
            if progress is not None:
                progress(1)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return result


async def _register_one(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    result: Registration,
    *,
    seed: int,
    index: int,
    profile: str,
) -> None:
    mac = simulated_mac(seed, index)
    chosen = profile_for(profile, seed=seed, index=index)
    name = f"sim-{chosen}-{index:05d}"
    location = f"Simulated site {seed}, room {index // 10 + 1}"
    body: dict[str, Any] = {"mac": mac, "name": name, "location": location}
    try:
        r = await client.post(f"{API_PREFIX}/devices", json=body, headers=headers)
    except httpx.HTTPError as exc:
        result.failures[normalize_mac(mac)] = f"cannot reach the API: {exc}"
        return
    if r.status_code == 201:
        data = r.json()
        result.created.append(
            DeviceRecord(
                id=data["id"],
                token=data["token"],
                profile=chosen,
                index=index,
                mac=mac,
                name=name,
                location=location,
            )
        )
    elif r.status_code == 409:
        result.conflicts.append(normalize_mac(mac))
    else:
        result.failures[normalize_mac(mac)] = f"HTTP {r.status_code}: {_message(r)}"


@dataclass(slots=True)
class ControlsDeclaration:
    """What `declare_controls` did, by device id."""

    declared: list[str] = field(default_factory=list)
    # Controls were declared already (by an earlier run, or the user): left as they are.
    kept: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


async def declare_controls(
    client: httpx.AsyncClient,
    *,
    access_token: str,
    devices: Sequence[DeviceRecord],
    concurrency: int = 8,
) -> ControlsDeclaration:
    """Declare the dashboard controls of the devices that have some (those with a relay:
    a switch and a "Blink" button), through PUT /devices/{id}/controls. A device that
    already has controls keeps them: the owner may have changed them since."""
    result = ControlsDeclaration()
    headers = {"Authorization": f"Bearer {access_token}"}
    todo: asyncio.Queue[DeviceRecord] = asyncio.Queue()
    for record in devices:
        if controls_for(record.profile):
            todo.put_nowait(record)

    async def worker() -> None:
        while not todo.empty():
            record = todo.get_nowait()
            url = f"{API_PREFIX}/devices/{record.id}/controls"
            try:
                r = await client.get(url, headers=headers)
                if r.status_code == 200 and r.json():
                    result.kept.append(record.id)
                    continue
                if r.status_code == 200:
                    r = await client.put(url, json=controls_for(record.profile), headers=headers)
            except httpx.HTTPError as exc:
                result.failures[record.id] = f"cannot reach the API: {exc}"
                continue
            if r.status_code == 200:
                result.declared.append(record.id)
            else:
                result.failures[record.id] = f"HTTP {r.status_code}: {_message(r)}"

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return result


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200] or r.reason_phrase
