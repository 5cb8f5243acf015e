"""The `sensorium` command: migrate, user create, device create."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sensorium import config
from sensorium.cli import app


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    monkeypatch.setenv("SENSORIUM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SENSORIUM_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("SENSORIUM_ARGON2_MEMORY_KIB", "64")
    monkeypatch.setenv("SENSORIUM_ARGON2_TIME_COST", "1")
    config.get_settings.cache_clear()
    yield CliRunner()
    config.get_settings.cache_clear()


def test_migrate_user_and_device(cli_env: CliRunner) -> None:
    result = cli_env.invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    result = cli_env.invoke(app, ["user", "create", "ada", "--password", "analytical engine"])
    assert result.exit_code == 0, result.output
    assert "created user ada" in result.output
    result = cli_env.invoke(
        app, ["device", "create", "--owner", "ada", "--mac", "A4:CF:12:B3:C4:D5", "--name", "Lab"]
    )
    assert result.exit_code == 0, result.output
    assert "a4cf12b3c4d5" in result.output
    assert "sdt_" in result.output
    result = cli_env.invoke(
        app, ["device", "create", "--owner", "ada", "--mac", "a4cf12b3c4d5", "--name", "Again"]
    )
    assert result.exit_code == 1
    assert "already registered" in result.output


def test_weak_password_is_refused(cli_env: CliRunner) -> None:
    assert cli_env.invoke(app, ["migrate"]).exit_code == 0
    result = cli_env.invoke(app, ["user", "create", "bob", "--password", "short"])
    assert result.exit_code == 1
    assert "at least 10 characters" in result.output


def test_production_without_secret_refuses_to_start(
    cli_env: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENSORIUM_MODE", "production")
    config.get_settings.cache_clear()
    result = cli_env.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "SENSORIUM_SECRET_KEY" in result.output


def test_broker_init_writes_a_config_and_dynsec_file(cli_env: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "broker"
    result = cli_env.invoke(app, ["broker", "init", str(target), "--port", "18999"])
    assert result.exit_code == 0, result.output
    config = (target / "mosquitto.conf").read_text()
    assert "listener 18999 0.0.0.0" in config
    assert "allow_anonymous false" in config
    assert "max_queued_messages 0" in config
    document = json.loads((target / "dynamic-security.json").read_text())
    assert {c["username"] for c in document["clients"]} == {"sensorium-admin", "sensorium-service"}
    assert document["defaultACLAccess"]["publishClientSend"] is False
    assert (target / "dynamic-security.json").stat().st_mode & 0o077 == 0
    assert "SENSORIUM_MQTT_URL" in result.output
