"""Simulated devices against the real server's control API (a Mosquitto per test, the app
publishing downlinks and ingesting from it): a desired state change reaches an MQTT and
an HTTP device and comes back reported, and both answer commands."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from sensorium.simulator.fleet import DeviceSpec, Fleet, FleetConfig
from sensorium.simulator.registry import load_devices, login
from sensorium.simulator.runner import SimulateOptions, simulate
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Account, Api
from tests.simulator.conftest import Served
from tests.simulator.test_system import registered, transitions
from tests.system.conftest import provisioned, wait_for

CONFIG = FleetConfig(interval_s=0.5, status_every_s=5.0, poll_wait_s=5, reboot_s=0.5, seed=31)


def mqtt_fleet(specs: list[DeviceSpec], broker: EmbeddedBroker) -> Fleet:
    assert broker.address is not None
    return Fleet(
        specs,
        CONFIG,
        transport="mqtt",
        mqtt_host=broker.address.host,
        mqtt_port=broker.address.port,
    )


async def state(api: Api, owner: Account, device_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/devices/{device_id}/state", headers=owner.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def desire(api: Api, owner: Account, device_id: str, patch: dict[str, Any]) -> int:
    r = await api.client.put(
        f"/api/v1/devices/{device_id}/state/desired", json=patch, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    return int(r.json()["desired_version"])


async def settled(api: Api, owner: Account, device_id: str, version: int) -> dict[str, Any]:
    """The state once the device reported `version` with nothing pending (or as it is)."""

    async def caught_up() -> dict[str, Any] | None:
        body = await state(api, owner, device_id)
        done = body["reported_version"] >= version and not body["pending"]
        return body if done else None

    return await wait_for(caught_up, timeout_s=10) or await state(api, owner, device_id)


async def command(
    api: Api, owner: Account, device_id: str, name: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = await api.client.post(
        f"/api/v1/devices/{device_id}/commands",
        params={"wait": "10"},
        json={"name": name, "params": params or {}, "timeout_s": 30},
        headers=owner.headers,
        timeout=20,  # more than `wait`: the server holds the request up to 10 s
    )
    assert r.status_code in (200, 202), r.text
    body: dict[str, Any] = r.json()
    return body


async def online(api: Api, owner: Account, device_id: str) -> bool:
    r = await api.client.get(f"/api/v1/devices/{device_id}", headers=owner.headers)
    return bool(r.json()["status"] == "online")


async def test_mqtt_and_http_devices_apply_desired_state_and_answer_commands(
    mqtt_api: Api, broker: EmbeddedBroker
) -> None:
    owner = await mqtt_api.account()
    specs = [replace(s, profile="energy") for s in await registered(mqtt_api, owner, 2, seed=31)]
    await provisioned(mqtt_api)
    over_mqtt, over_http = specs
    # Desired before the MQTT device is even connected: it gets the retained document.
    v_mqtt = await desire(mqtt_api, owner, over_mqtt.device_id, {"relay": False, "mode": "eco"})
    async with (
        mqtt_fleet([over_mqtt], broker) as mqtt,
        Fleet([over_http], CONFIG, transport="http", http_client=mqtt_api.client) as http,
    ):
        body = await settled(mqtt_api, owner, over_mqtt.device_id, v_mqtt)
        assert body["pending"] == []
        assert body["reported_version"] == v_mqtt
        assert body["reported"]["relay"] is False
        assert body["reported"]["mode"] == "eco"

        # A change while they are online, to both.
        for spec in specs:
            assert await wait_for(lambda spec=spec: online(mqtt_api, owner, spec.device_id))
            version = await desire(
                mqtt_api, owner, spec.device_id, {"relay": True, "interval_s": 2}
            )
            body = await settled(mqtt_api, owner, spec.device_id, version)
            assert (body["pending"], body["reported_version"]) == ([], version), body
            assert body["reported"]["interval_s"] == 2
            assert body["reported"]["relay"] is True

            ping = await command(mqtt_api, owner, spec.device_id, "ping")
            assert ping["status"] == "succeeded", ping
            assert ping["result"]["pong"] is True
            assert isinstance(ping["result"]["uptime_s"], int)

            unknown = await command(mqtt_api, owner, spec.device_id, "self_destruct")
            assert unknown["status"] == "failed", unknown
            assert unknown["error"] == "unknown command: self_destruct"
        await asyncio.sleep(0.2)
    for fleet in (mqtt, http):
        snap = fleet.snapshot()
        assert snap.errors == {}
        assert snap.commands_answered == 2
        assert snap.state_reports >= 2
    assert [d.control.interval_s for d in (*mqtt.devices, *http.devices)] == [2.0, 2.0]


async def test_mqtt_device_reboots_on_command_and_reports_again(
    mqtt_api: Api, broker: EmbeddedBroker
) -> None:
    owner = await mqtt_api.account()
    (spec,) = await registered(mqtt_api, owner, 1, seed=32)
    await provisioned(mqtt_api)
    version = await desire(mqtt_api, owner, spec.device_id, {"led": True})
    async with mqtt_fleet([spec], broker) as fleet:
        await settled(mqtt_api, owner, spec.device_id, version)
        assert await wait_for(lambda: online(mqtt_api, owner, spec.device_id))
        result = await command(mqtt_api, owner, spec.device_id, "reboot")
        assert result["status"] == "succeeded", result

        async def back() -> bool:
            return fleet.snapshot().connects == 2 and fleet.devices[0].state_reports >= 2

        assert await wait_for(back, timeout_s=5)
        # Back with its uptime restarted, and answering again.
        ping = await command(mqtt_api, owner, spec.device_id, "ping")
        assert ping["status"] == "succeeded", ping
        assert ping["result"]["uptime_s"] <= 2
    snap = fleet.snapshot()
    assert (snap.reboots, snap.errors) == (1, {})
    # Online, away during the reboot (its will), back, and off at the end.
    history = await wait_for(lambda: transitions(mqtt_api, owner, spec.device_id, at_least=4))
    assert [online for online, _ in history[:4]] == [True, False, True, False], history


async def test_simulate_declares_controls_for_devices_with_a_relay_and_keeps_changed_ones(
    served: Served, tmp_path: Path
) -> None:
    assert served.broker.address is not None
    account = {"username": "fleetowner", "password": "correct horse battery"}
    async with httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.post("/api/v1/auth/register", json=account)).status_code == 201
        token = await login(client, account["username"], account["password"])
        headers = {"Authorization": f"Bearer {token}"}
        options = SimulateOptions(
            devices=6,
            transport="mqtt",
            profile="mixed",
            config=FleetConfig(interval_s=0.5, seed=33),
            duration_s=1.0,
            register=True,
            api_url=served.url,
            mqtt_url=f"mqtt://{served.broker.address.host}:{served.broker.address.port}",
            username=account["username"],
            password=account["password"],
            out=tmp_path / "devices.json",
            handle_signals=False,
            declare_controls=True,
        )
        out = io.StringIO()
        summary = await simulate(options, Console(file=out, width=120))
        assert summary.snapshot.errors == {}
        records = load_devices(tmp_path / "devices.json").devices
        meters = [r for r in records if r.profile == "energy"]
        assert meters
        assert len(meters) < len(records)  # "mixed": some have nothing to control
        assert f"declared controls of {len(meters)} device(s)" in out.getvalue()

        async def controls(device_id: str) -> list[dict[str, Any]]:
            r = await client.get(f"/api/v1/devices/{device_id}/controls", headers=headers)
            assert r.status_code == 200, r.text
            found: list[dict[str, Any]] = r.json()
            return found

        for record in records:
            declared = await controls(record.id)
            if record.profile == "energy":
                assert [(c["key"], c["kind"]) for c in declared] == [
                    ("relay", "switch"),
                    ("identify", "button"),
                ]
                assert declared[1]["command"] == "blink"
            else:
                assert declared == []

        # The owner changes a meter's controls: a later run leaves them alone.
        mine = [{"key": "relay", "kind": "switch", "label": "Heater"}]
        url = f"/api/v1/devices/{meters[0].id}/controls"
        assert (await client.put(url, json=mine, headers=headers)).status_code == 200
        again = replace(options, register=False, from_file=tmp_path / "devices.json", out=None)
        await simulate(again, Console(file=io.StringIO()))
        assert await controls(meters[0].id) == mine
