"""Simulated devices' identities and credentials: deterministic locally administered
MACs, registration through the API, and devices.json."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sensorium.protocol import normalize_mac
from sensorium.simulator.registry import (
    DeviceRecord,
    DevicesFile,
    DevicesFileError,
    load_devices,
    login,
    profile_for,
    register_devices,
    save_devices,
    simulated_mac,
)
from tests.helpers import Api


def test_macs_are_locally_administered_unicast_distinct_and_reproducible() -> None:
    macs = [simulated_mac(5, i) for i in range(2000)]
    assert len(set(macs)) == 2000
    for mac in macs[:50]:
        first = int(mac[:2], 16)
        assert first & 0x02  # locally administered: never a vendor's address
        assert not first & 0x01  # unicast
        assert normalize_mac(mac) == mac.replace(":", "").lower()
    assert macs == [simulated_mac(5, i) for i in range(2000)]
    assert simulated_mac(6, 0) != simulated_mac(5, 0)
    with pytest.raises(ValueError, match="index"):
        simulated_mac(5, 1 << 16)


def test_mixed_profile_is_a_seeded_mix() -> None:
    chosen = [profile_for("mixed", seed=1, index=i) for i in range(100)]
    assert chosen == [profile_for("mixed", seed=1, index=i) for i in range(100)]
    assert 25 < chosen.count("climate") < 75
    assert profile_for("energy", seed=1, index=0) == "energy"


def test_devices_file_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    data = DevicesFile(
        api="http://127.0.0.1:8000",
        mqtt="mqtt://127.0.0.1:1883",
        seed=3,
        devices=[DeviceRecord(id="02:AA:BB:CC:00:01", token="t0k", profile="energy", index=1)],
    )
    save_devices(path, data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds device tokens
    loaded = load_devices(path)
    assert loaded == data
    assert loaded.devices[0].id == "02aabbcc0001"
    path.write_text('{"devices": [{"id": "nope", "token": "x", "profile": "climate"}]}')
    with pytest.raises(DevicesFileError, match="not a simulator devices file"):
        load_devices(path)
    with pytest.raises(DevicesFileError, match="cannot read"):
        load_devices(tmp_path / "missing.json")


async def test_register_then_reuse_from_file_and_report_conflicts(api: Api) -> None:
    owner = await api.account()
    token = await login(api.client, owner.username, owner.password)
    first = await register_devices(
        api.client, access_token=token, count=6, seed=9, profile="mixed", concurrency=3
    )
    assert len(first.created) == 6
    assert not first.conflicts
    assert not first.failures
    assert [d.index for d in first.devices] == list(range(6))
    assert {d.id for d in first.devices} == {normalize_mac(simulated_mac(9, i)) for i in range(6)}
    r = await api.client.get("/api/v1/devices", headers=owner.headers)
    assert {d["name"] for d in r.json()["items"]} == {d.name for d in first.devices}
    # The credentials work: a device sends with its token.
    device = first.devices[0]
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/telemetry",
        json={"x": 1},
        headers={"Authorization": f"Bearer {device.token}"},
    )
    assert r.status_code == 202

    # Known devices are reused; one more is registered.
    again = await register_devices(
        api.client, access_token=token, count=7, seed=9, profile="mixed", known=first.devices
    )
    assert [d.index for d in again.reused] == list(range(6))
    assert [d.index for d in again.created] == [6]

    # Without the file, the tokens of existing devices cannot be had: reported, skipped.
    blind = await register_devices(api.client, access_token=token, count=7, seed=9, profile="mixed")
    assert sorted(blind.conflicts) == sorted(d.id for d in again.devices)
    assert blind.devices == []
