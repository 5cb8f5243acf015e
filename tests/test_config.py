"""Settings: production refuses weak secrets; dev keeps a generated key across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensorium.api.app import create_app
from sensorium.config import InsecureSettings, Settings


@pytest.mark.parametrize("secret", ["", "change-me", "secret", "short-but-random-1234"])
def test_production_refuses_missing_or_default_secret(secret: str, tmp_path: Path) -> None:
    settings = Settings(mode="production", secret_key=secret, data_dir=tmp_path)
    with pytest.raises(InsecureSettings, match="SENSORIUM_SECRET_KEY"):
        create_app(settings)


def test_production_accepts_a_strong_secret(tmp_path: Path) -> None:
    settings = Settings(
        mode="production",
        secret_key="k" * 8 + "x9Q2" * 8,
        data_dir=tmp_path,
        ota_public_key=tmp_path / "release.pem.pub",
    )
    settings.check_secure()
    assert settings.resolved_secret_key() == settings.secret_key


def test_dev_generates_and_keeps_a_secret(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).resolved_secret_key()
    second = Settings(data_dir=tmp_path).resolved_secret_key()
    assert first == second
    assert len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_environment_configures_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SENSORIUM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SENSORIUM_ACCESS_TOKEN_TTL_S", "600")
    settings = Settings()
    assert settings.access_token_ttl_s == 600
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'sensorium.db'}"


def test_default_password_hashing_is_argon2id_with_strong_cost() -> None:
    settings = Settings()
    assert settings.argon2_memory_kib >= 64 * 1024
    assert settings.argon2_time_cost >= 3
