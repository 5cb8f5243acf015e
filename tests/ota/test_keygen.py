"""`sensorium ota keygen`: a key a production server then starts with and signs by."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

from sensorium import config
from sensorium.cli import app
from sensorium.config import Settings
from sensorium.ota.signing import OtaKeys


def test_keygen_makes_a_private_key_only_its_owner_reads_and_prints_the_public_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SENSORIUM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SENSORIUM_MODE", "production")  # keygen runs before a key exists
    config.get_settings.cache_clear()
    path = tmp_path / "keys" / "ota.pem"
    try:
        result = CliRunner().invoke(app, ["ota", "keygen", "--out", str(path)])
        assert result.exit_code == 0, result.output
        assert path.stat().st_mode & 0o077 == 0
        assert f"SENSORIUM_OTA_SIGNING_KEY={path.resolve()}" in result.output
        # The private key appears nowhere in what is printed.
        assert "PRIVATE" not in result.output
        again = CliRunner().invoke(app, ["ota", "keygen", "--out", str(path)])
        assert again.exit_code == 1
        assert "exists" in again.output
    finally:
        config.get_settings.cache_clear()

    settings = Settings(
        mode="production",
        secret_key="k" * 8 + "x9Q2" * 8,
        data_dir=tmp_path,
        ota_signing_key=path,
    )
    keys = OtaKeys.from_settings(settings)
    printed = next(
        line.split(": ", 1)[1].strip()
        for line in result.output.splitlines()
        if line.startswith("public key for the firmware")
    )
    assert printed == keys.public_key_b64
    digest = hashlib.sha256(b"image").digest()
    device_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(printed))
    device_key.verify(base64.b64decode(keys.sign(digest)), digest)


def test_processes_sharing_a_data_directory_in_dev_mode_agree_on_one_key(tmp_path: Path) -> None:
    """Two `sensorium api` processes started at once on one data directory both found no
    key; the second crashed on the file the first had just made (seen in the suite)."""
    import threading

    from sensorium.ota.signing import DEV_KEY_NAME

    settings = Settings(data_dir=tmp_path, secret_key="k" * 8 + "x9Q2" * 8)
    barrier = threading.Barrier(8)
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            public = OtaKeys.from_settings(settings).public
            keys.append(public.public_bytes_raw())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert (tmp_path / DEV_KEY_NAME).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
