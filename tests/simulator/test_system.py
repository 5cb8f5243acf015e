"""The simulator against the real thing: a Mosquitto per test, the app ingesting from it,
the database. Every point the simulator counts as sent must be stored, no more, no less,
including what a device buffered while offline and backfilled."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import func, select

from sensorium.api.app import create_app
from sensorium.config import Settings
from sensorium.protocol import int_to_mac
from sensorium.simulator.fleet import DeviceSpec, Fleet, FleetConfig
from sensorium.simulator.registry import load_devices, login, register_devices
from sensorium.simulator.runner import SimulateError, SimulateOptions, simulate
from sensorium.telemetry.models import Point, Series
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Account, Api, running_client, serving
from tests.simulator.conftest import Served
from tests.system.conftest import api_only, broker_sync, provisioned, wait_for

KEYS = {
    "climate": ("temperature", "humidity", "co2"),
    "energy": ("power", "energy", "voltage", "current"),
}


async def stored_points(app: Any) -> dict[str, int]:
    """Points in the database, by device."""
    async with app.state.ctx.sessions() as session:
        rows = await session.execute(
            select(Series.device, func.count())
            .select_from(Point)
            .join(Series, Series.id == Point.series)
            .group_by(Series.device)
        )
        return {int_to_mac(device): count for device, count in rows.all()}


async def settled(app: Any, sent: dict[str, int], timeout_s: float = 10.0) -> dict[str, int]:
    """The stored counts once ingest has caught up with what was sent (or timed out)."""
    expected = {device: n for device, n in sent.items() if n}

    async def caught_up() -> dict[str, int] | None:
        stored = await stored_points(app)
        return stored if all(stored.get(d, 0) >= n for d, n in expected.items()) else None

    return await wait_for(caught_up, timeout_s=timeout_s) or await stored_points(app)


async def registered(api: Api, owner: Account, count: int, seed: int) -> list[DeviceSpec]:
    token = await login(api.client, owner.username, owner.password)
    result = await register_devices(
        api.client, access_token=token, count=count, seed=seed, profile="mixed"
    )
    assert len(result.created) == count
    return [d.spec() for d in result.devices]


async def timestamps(api: Api, owner: Account, device_id: str, key: str) -> list[int]:
    """Every stored timestamp of one key, through the paginated history API."""
    found: list[int] = []
    cursor: str | None = None
    while True:
        params = {"keys": key, "limit": "100", **({"cursor": cursor} if cursor else {})}
        r = await api.client.get(
            f"/api/v1/devices/{device_id}/telemetry", params=params, headers=owner.headers
        )
        assert r.status_code == 200, r.text
        page = r.json()
        found += [p["ts"] for p in page["points"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def transitions(
    api: Api, owner: Account, device_id: str, at_least: int = 0
) -> list[tuple[bool, str]] | None:
    """The device's online/offline changes, oldest first; None until there are `at_least`.

    Repeats are merged: the server can record "online" twice when a reconnecting device's
    backfill and its status report are stored concurrently (see the simulator's report),
    and can record a "data" online right after a will that followed that data.
    """
    r = await api.client.get(f"/api/v1/devices/{device_id}/status/history", headers=owner.headers)
    merged: list[tuple[bool, str]] = []
    for event in reversed(r.json()):
        if not merged or merged[-1][0] != event["online"]:
            merged.append((event["online"], event["reason"]))
    return merged if len(merged) >= at_least else None


async def test_mqtt_fleet_stores_exactly_what_it_sent_including_a_backfill(
    mqtt_api: Api, broker: EmbeddedBroker
) -> None:
    assert broker.address is not None
    owner = await mqtt_api.account()
    specs = await registered(mqtt_api, owner, 20, seed=11)
    await provisioned(mqtt_api)
    # Device 3 loses the network from 1.0 s to 8.0 s after the start: long enough for the
    # checks below to see it away however long the server takes to record its will (they
    # wait up to 5 s; with an outage of 1.6 s a loaded machine saw it back already).
    specs[3] = replace(specs[3], outages=((1.0, 8.0),))
    away = specs[3].device_id
    config = FleetConfig(interval_s=0.2, status_every_s=1.0, seed=11)
    fleet = Fleet(
        specs,
        config,
        transport="mqtt",
        mqtt_host=broker.address.host,
        mqtt_port=broker.address.port,
    )
    loop = asyncio.get_running_loop()
    async with fleet:
        started = loop.time()
        await asyncio.sleep(1.8)
        # Mid-outage: its last will has told the server, and its readings wait on board.
        history = await wait_for(lambda: transitions(mqtt_api, owner, away, at_least=2))
        assert history is not None
        assert history[1] == (False, "status")
        assert fleet.devices[3].outbox.points > 0
        assert fleet.snapshot().connected == 19
        # Back at 8.0 s: time to reconnect and send its backlog.
        await asyncio.sleep(max(0.0, started + 9.4 - loop.time()))
    snap = fleet.snapshot()
    sent = fleet.points_sent_by_device()

    assert snap.errors == {}
    assert snap.buffered_points == 0
    assert all(n > 0 for n in sent.values())
    assert fleet.devices[3].backfills >= 1
    assert snap.backfill_messages == fleet.devices[3].backfills
    assert snap.points_sent == sum(sent.values())
    assert await settled(mqtt_api.client.app, sent) == sent  # type: ignore[attr-defined]

    # The backfill kept the readings' own timestamps: no hole where the device was away.
    keys = KEYS[specs[3].profile]
    ts = await timestamps(mqtt_api, owner, away, keys[0])
    assert len(ts) == sent[away] // len(keys)
    assert max(b - a for a, b in itertools.pairwise(ts)) < 1000
    # Online, away (its will, at once), back, and off at the end (the will again).
    history = await wait_for(lambda: transitions(mqtt_api, owner, away, at_least=4))
    assert [online for online, _ in history[:4]] == [True, False, True, False], history
    r = await mqtt_api.client.get(f"/api/v1/devices/{specs[0].device_id}", headers=owner.headers)
    device = r.json()
    assert device["firmware_version"] == config.firmware
    assert {"rssi", "ip", "free_heap", "uptime_s"} <= device["info"].keys()


async def test_mqtt_devices_keep_what_no_ingest_took_and_send_it_when_one_subscribes(
    settings: Settings, broker: EmbeddedBroker
) -> None:
    """PUBACK 0x10 ("no matching subscribers": the broker accepted the reading but nobody
    took it, as after a Mosquitto 2.0 restart that lost the workers' shared subscriptions)
    leaves the reading on board; it is sent again once an ingest subscribes, and stored
    exactly once. Before, the device counted it as sent and it was gone."""
    address = broker.address
    assert address is not None
    # The API alone (split deployment) queues the device accounts, which `sensorium broker
    # sync` applies: the devices get in but nobody subscribes.
    split = api_only(settings, address)
    async with running_client(split) as client:
        api = Api(client)
        owner = await api.account()
        specs = await registered(api, owner, 2, seed=21)
        await broker_sync(split, api, address)

    config = FleetConfig(interval_s=0.2, status_every_s=1.0, max_backoff_s=1.0, seed=21)
    fleet = Fleet(specs, config, transport="mqtt", mqtt_host=address.host, mqtt_port=address.port)
    async with fleet:

        async def refused_twice() -> bool:
            snap = fleet.snapshot()
            return snap.connected == 2 and snap.errors.get("no_subscribers", 0) >= 4

        assert await wait_for(refused_twice, timeout_s=10.0)
        assert fleet.snapshot().buffered_points > 0
        assert sum(fleet.points_sent_by_device().values()) == 0
        # Now an ingest subscribes (`sensorium serve`'s, on the same database).
        async with running_client(settings, broker=address) as client:

            async def emptied() -> bool:
                return fleet.snapshot().buffered_points == 0

            assert await wait_for(emptied, timeout_s=15.0)
            # Closed first, so nothing is sent after the count.
            await fleet.close()
            sent = fleet.points_sent_by_device()
            assert all(n > 0 for n in sent.values())
            assert await settled(client.app, sent) == sent  # type: ignore[attr-defined]
    assert set(fleet.snapshot().errors) == {"no_subscribers"}


async def test_http_fleet_stores_exactly_what_it_sent_including_a_backfill(api: Api) -> None:
    owner = await api.account()
    specs = await registered(api, owner, 5, seed=12)
    specs[1] = replace(specs[1], outages=((0.6, 1.8),))
    config = FleetConfig(interval_s=0.2, status_every_s=1.0, seed=12)
    async with Fleet(specs, config, transport="http", http_client=api.client) as fleet:
        await asyncio.sleep(2.6)

        async def caught_up() -> bool:
            # On a loaded machine the device that was away may still be sending its backlog.
            return fleet.devices[1].backfills >= 1 and fleet.snapshot().buffered_points == 0

        assert await wait_for(caught_up, timeout_s=15, interval_s=0.01)
    snap = fleet.snapshot()
    sent = fleet.points_sent_by_device()
    assert snap.errors == {}
    assert snap.buffered_points == 0
    assert fleet.devices[1].backfills >= 1
    assert snap.status_messages >= 5
    # HTTP answers 202 only after the commit: nothing to wait for.
    assert await stored_points(api.client.app) == sent  # type: ignore[attr-defined]
    r = await api.client.get(f"/api/v1/devices/{specs[0].device_id}", headers=owner.headers)
    assert r.json()["firmware_version"] == config.firmware


async def test_simulate_registers_saves_credentials_reuses_them_and_stops_on_ctrl_c(
    served: Served, tmp_path: Path
) -> None:
    assert served.broker.address is not None
    async with httpx.AsyncClient(base_url=served.url) as client:
        body = {"username": "fleetowner", "password": "correct horse battery"}
        r = await client.post("/api/v1/auth/register", json=body)
        assert r.status_code == 201
    devices_json = tmp_path / "devices.json"
    out = io.StringIO()
    console = Console(file=out, width=120)
    options = SimulateOptions(
        devices=4,
        transport="mqtt",
        profile="energy",
        config=FleetConfig(interval_s=0.2, seed=21),
        duration_s=1.5,
        register=True,
        api_url=served.url,
        mqtt_url=f"mqtt://{served.broker.address.host}:{served.broker.address.port}",
        username="fleetowner",
        password="correct horse battery",
        out=devices_json,
    )
    first = await simulate(options, console)
    saved = load_devices(devices_json)
    assert len(saved.devices) == 4
    assert {d.profile for d in saved.devices} == {"energy"}
    assert saved.api == served.url
    assert first.snapshot.points_sent > 0
    assert first.snapshot.errors == {}  # it waited for the broker to know the new devices
    assert "Simulation summary" in out.getvalue()

    # Again from the file alone (it knows the API and the broker), until Ctrl-C.
    asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.SIGINT)
    second = await simulate(SimulateOptions(
        devices=None, transport="mqtt", profile=None, config=FleetConfig(interval_s=0.2, seed=21),
        from_file=devices_json,
    ), console)  # fmt: skip
    assert second.interrupted
    assert second.snapshot.devices == 4
    assert second.snapshot.points_sent > 0
    assert second.snapshot.errors == {}

    # Registering the same seed without the file cannot recover tokens: nothing to run.
    with pytest.raises(SimulateError, match="no devices"):
        await simulate(replace(options, out=tmp_path / "other.json"), console)
    assert "registered by an earlier run" in out.getvalue()
    assert not (tmp_path / "other.json").exists()

    total = first.snapshot.points_sent + second.snapshot.points_sent

    async def stored_total() -> int | None:
        n = sum((await stored_points(served.app)).values())
        return n if n >= total else None

    assert await wait_for(stored_total, timeout_s=10) == total


async def test_registering_into_an_existing_file_keeps_its_credentials(
    settings: Settings, tmp_path: Path
) -> None:
    async with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            body = {"username": "fleetowner", "password": "correct horse battery"}
            assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
        devices_json = tmp_path / "devices.json"
        console = Console(file=io.StringIO())

        def run(seed: int, devices: int) -> SimulateOptions:
            return SimulateOptions(
                devices=devices,
                transport="http",
                profile="climate",
                # Short long-polls: the server ends a poll only when its wait is over, even
                # after the device went away, and uvicorn waits for it before stopping.
                config=FleetConfig(interval_s=0.2, seed=seed, poll_wait_s=2),
                duration_s=0.5,
                register=True,
                api_url=url,
                username="fleetowner",
                password="correct horse battery",
                out=devices_json,
            )

        await simulate(run(seed=1, devices=2), console)
        second = await simulate(run(seed=2, devices=3), console)
        assert second.snapshot.devices == 3
        assert second.snapshot.errors == {}
        saved = load_devices(devices_json)
        assert len(saved.devices) == 5  # the first fleet's tokens are still there
        again = await simulate(run(seed=1, devices=2), console)  # reused, not a conflict
        assert again.snapshot.devices == 2
        assert again.snapshot.points_sent > 0
        assert len(load_devices(devices_json).devices) == 5
