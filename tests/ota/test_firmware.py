"""The firmware registry: streamed uploads hashed and signed (by the server's key or a
verified detached signature), list, download, delete; bad uploads store nothing."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensorium.api.app import create_app
from sensorium.config import InsecureSettings, Settings
from sensorium.ota.models import Firmware, Rollout
from sensorium.ota.signing import generate_key_files, public_path
from tests.helpers import Api, running_client
from tests.ota.conftest import count, firmware_files, image, upload, uploaded, verifies


async def test_upload_is_hashed_signed_listed_downloaded_and_deleted(api: Api) -> None:
    owner = await api.account()
    data = image(300_000)
    r = await upload(api, owner, data, version="1.3.0", title="Spring", notes="Fixes the LED")
    assert r.status_code == 201, r.text
    fw = r.json()
    assert (fw["version"], fw["title"], fw["notes"]) == ("1.3.0", "Spring", "Fixes the LED")
    assert fw["size"] == len(data)
    assert fw["sha256"] == hashlib.sha256(data).hexdigest()
    assert fw["signed_by"] == "server"
    key = (await api.client.get("/api/v1/firmware/public-key", headers=owner.headers)).json()
    assert key["can_sign"] is True
    assert verifies(key["public_key"], data, fw["signature"])
    assert not verifies(key["public_key"], data + b"x", fw["signature"])

    listed = (await api.client.get("/api/v1/firmware", headers=owner.headers)).json()["items"]
    assert [f["id"] for f in listed] == [fw["id"]]
    r = await api.client.get(f"/api/v1/firmware/{fw['id']}/image", headers=owner.headers)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["etag"] == f'"{fw["sha256"]}"'
    assert len(firmware_files(api)) == 1

    r = await api.client.delete(f"/api/v1/firmware/{fw['id']}", headers=owner.headers)
    assert r.status_code == 204
    assert firmware_files(api) == []
    assert await count(api, Firmware) == 0
    r = await api.client.get(f"/api/v1/firmware/{fw['id']}", headers=owner.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "firmware_not_found")


async def test_versions_are_per_owner(api: Api) -> None:
    ada, bob = await api.account(), await api.account()
    await uploaded(api, ada, image(), "1.0.0")
    await uploaded(api, bob, image(seed=2), "1.0.0")
    assert await count(api, Firmware) == 2
    mine = (await api.client.get("/api/v1/firmware", headers=bob.headers)).json()["items"]
    assert [f["sha256"] for f in mine] == [hashlib.sha256(image(seed=2)).hexdigest()]


@pytest.mark.parametrize(
    ("version", "field"),
    [("1.3", "version"), ("v1.3.0", "version"), ("01.2.3", "version"), ("", "version")],
)
async def test_non_semver_version_is_422_and_nothing_is_stored(
    api: Api, version: str, field: str
) -> None:
    owner = await api.account()
    r = await upload(api, owner, image(), version=version)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert await count(api, Firmware) == 0
    assert firmware_files(api) == []


async def test_semver_with_prerelease_and_build_is_accepted(api: Api) -> None:
    owner = await api.account()
    assert (await uploaded(api, owner, image(), "2.0.0-rc.1+build.7"))["version"] == (
        "2.0.0-rc.1+build.7"
    )


async def test_duplicate_version_is_409_and_the_first_stays(api: Api) -> None:
    owner = await api.account()
    first = await uploaded(api, owner, image(), "1.3.0")
    r = await upload(api, owner, image(seed=9), version="1.3.0")
    assert r.status_code == 409, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "duplicate_version",
        "version",
    )
    assert await count(api, Firmware) == 1
    assert len(firmware_files(api)) == 1
    r = await api.client.get(f"/api/v1/firmware/{first['id']}/image", headers=owner.headers)
    assert r.content == image()


@pytest.fixture
def small_limit(settings: Settings) -> Settings:
    return settings.model_copy(update={"ota_max_image_bytes": 4096})


async def test_oversized_upload_is_413_and_nothing_is_stored(small_limit: Settings) -> None:
    async with running_client(small_limit) as client:
        api = Api(client)
        owner = await api.account()
        r = await upload(api, owner, image(4097))
        assert r.status_code == 413, r.text
        assert r.json()["error"]["field"] == "file"
        assert await count(api, Firmware) == 0
        assert firmware_files(api) == []
        # Exactly at the limit is fine.
        assert (await upload(api, owner, image(4096))).status_code == 201


async def test_oversized_chunked_upload_is_cut_off_while_streaming(small_limit: Settings) -> None:
    """No Content-Length to refuse it by: the limit applies as the bytes arrive."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nBig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\n9.9.9\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(1000):  # 1000 x 1 KiB, far beyond the limit
            sent.append(1)
            yield b"\0" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    async with running_client(small_limit) as client:
        api = Api(client)
        owner = await api.account()
        r = await client.post(
            "/api/v1/firmware",
            content=body(),
            headers={
                **owner.headers,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        assert r.status_code == 413, r.text
        assert await count(api, Firmware) == 0
        assert firmware_files(api) == []


async def test_upload_that_is_not_multipart_is_415(api: Api) -> None:
    owner = await api.account()
    r = await api.client.post("/api/v1/firmware", json={"version": "1.0.0"}, headers=owner.headers)
    assert r.status_code == 415
    assert set(r.json()["error"]) == {"code", "message", "field"}


async def test_upload_without_file_or_title_is_422(api: Api) -> None:
    owner = await api.account()
    r = await api.client.post(
        "/api/v1/firmware",
        data={"title": "x", "version": "1.0.0"},
        files={"other": ("a", b"b")},
        headers=owner.headers,
    )
    assert r.status_code == 422
    r = await upload(api, owner, image(), title="")
    assert (r.status_code, r.json()["error"]["field"]) == (422, "title")
    r = await upload(api, owner, b"")
    assert (r.status_code, r.json()["error"]["field"]) == (422, "file")
    assert await count(api, Firmware) == 0
    assert firmware_files(api) == []


@pytest.fixture
def verify_only(settings: Settings, tmp_path: Path) -> tuple[Settings, Ed25519PrivateKey]:
    """A server with only the public key: images are signed elsewhere (the test's key)."""
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "keys" / "release.pem"
    generate_key_files(path)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return settings.model_copy(update={"ota_public_key": public_path(path)}), private


def _sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(hashlib.sha256(data).digest())).decode()


async def test_detached_signature_is_verified_against_the_public_key(
    verify_only: tuple[Settings, Ed25519PrivateKey],
) -> None:
    settings, key = verify_only
    async with running_client(settings) as client:
        api = Api(client)
        owner = await api.account()
        data = image()
        public = (await client.get("/api/v1/firmware/public-key", headers=owner.headers)).json()
        assert public["can_sign"] is False

        # No signature, and the server has no key to make one.
        r = await upload(api, owner, data)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "signature_required")
        # A signature made for another image.
        r = await upload(api, owner, data, signature=_sign(key, image(seed=5)))
        assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_signature")
        assert r.json()["error"]["field"] == "signature"
        # Not a signature at all.
        r = await upload(api, owner, data, signature="bm90IGEgc2lnbmF0dXJl")
        assert (r.status_code, r.json()["error"]["field"]) == (422, "signature")
        assert await count(api, Firmware) == 0
        assert firmware_files(api) == []

        r = await upload(api, owner, data, signature=_sign(key, data))
        assert r.status_code == 201, r.text
        assert r.json()["signed_by"] == "uploaded"
        assert verifies(public["public_key"], data, r.json()["signature"])


async def test_image_in_use_by_an_active_rollout_cannot_be_deleted(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    fw = await uploaded(api, owner, image())
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": fw["id"], "devices": [device.id]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    r = await api.client.delete(f"/api/v1/firmware/{fw['id']}", headers=owner.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "firmware_in_use")
    assert await count(api, Firmware) == 1
    assert len(firmware_files(api)) == 1

    r = await api.client.post(f"/api/v1/rollouts/{rollout_id}/cancel", headers=owner.headers)
    assert r.status_code == 200, r.text
    r = await api.client.delete(f"/api/v1/firmware/{fw['id']}", headers=owner.headers)
    assert r.status_code == 204
    assert firmware_files(api) == []
    # The finished rollout's history stays, without its image.
    detail = (await api.client.get(f"/api/v1/rollouts/{rollout_id}", headers=owner.headers)).json()
    assert (detail["firmware_id"], detail["version"], detail["state"]) == (
        None,
        "1.3.0",
        "cancelled",
    )
    assert await count(api, Rollout) == 1


# --- keys --------------------------------------------------------------------------------


def test_production_refuses_to_start_without_a_signing_key(tmp_path: Path) -> None:
    settings = Settings(mode="production", secret_key="k" * 8 + "x9Q2" * 8, data_dir=tmp_path)
    with pytest.raises(InsecureSettings, match="SENSORIUM_OTA_SIGNING_KEY"):
        create_app(settings)
    # Nothing was generated in its place.
    assert not list(tmp_path.glob("*.pem"))


def test_production_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "ota.pem"
    generate_key_files(path)
    path.chmod(0o644)
    settings = Settings(
        mode="production",
        secret_key="k" * 8 + "x9Q2" * 8,
        data_dir=tmp_path,
        ota_signing_key=path,
    )
    with pytest.raises(InsecureSettings, match="chmod 600"):
        create_app(settings)
    path.chmod(0o600)
    create_app(settings)


def test_a_public_key_that_is_not_the_signing_keys_half_is_refused(tmp_path: Path) -> None:
    generate_key_files(tmp_path / "a.pem")
    generate_key_files(tmp_path / "b.pem")
    settings = Settings(
        data_dir=tmp_path,
        ota_signing_key=tmp_path / "a.pem",
        ota_public_key=public_path(tmp_path / "b.pem"),
    )
    with pytest.raises(InsecureSettings, match="public half"):
        create_app(settings)


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    generate_key_files(path)
    before = path.read_bytes()
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        generate_key_files(path)
    assert path.read_bytes() == before
