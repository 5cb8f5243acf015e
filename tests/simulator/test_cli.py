"""`sensorium simulate` refuses what it cannot run, saying what to do instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sensorium.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --register"),
        (["--register", "--password", "x"], "--register needs --api"),
        (["--from-file", "missing.json"], "cannot read missing.json"),
        (["--transport", "pigeon", "--from-file", "x.json"], "must be mqtt or http"),
        (["--profile", "weather", "--from-file", "x.json"], "climate, energy or mixed"),
        (["--offline-ratio", "1", "--from-file", "x.json"], "offline-ratio"),
        (["--ota-public-key", "bm90IGEga2V5", "--from-file", "x.json"], "must be 32 bytes in"),
        (["--ota-rollback", "nope", "--from-file", "x.json"], "--ota-rollback"),
        (["--ota-fail-rate", "1.5", "--from-file", "x.json"], "ota-fail-rate"),
    ],
)
def test_simulate_explains_what_is_missing(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
