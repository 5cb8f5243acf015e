"""Fixtures for the firmware's tests: the MicroPython shims (for this package only), a
simulated board per test, and the server the firmware talks to (a real Mosquitto and
the app on a real HTTP port, as `sensorium serve` runs them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensorium.api.app import create_app
from sensorium.config import Settings
from sensorium.worker.runtime import EmbeddedBroker
from tests.firmware import host
from tests.firmware.fakes import Node, NtpServer
from tests.helpers import Api, RegisteredDevice, running_client, serving
from tests.system.conftest import api_only, broker, broker_sync

__all__ = ["Served", "board", "broker", "firmware_shims", "node", "ntp", "serve", "served"]


@pytest.fixture(scope="package", autouse=True)
def firmware_shims() -> Iterator[None]:
    with host.installed():
        yield


@pytest.fixture
def board() -> Iterator[host.World]:
    with host.world(host.World()) as world:
        yield world


@pytest.fixture
def ntp() -> Iterator[NtpServer]:
    server = NtpServer()
    yield server
    server.close()


@dataclass
class Served:
    url: str
    port: int
    app: Any
    broker: EmbeddedBroker
    api: Api

    @property
    def mqtt_port(self) -> int:
        assert self.broker.address is not None
        return self.broker.address.port


@asynccontextmanager
async def serve(settings: Settings, broker: EmbeddedBroker) -> AsyncIterator[Served]:
    """The app on a real HTTP port with MQTT ingest, and an API client for the test."""
    app = create_app(settings, broker=broker.address)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        client.app = app  # type: ignore[attr-defined]
        yield Served(url, int(url.rsplit(":", 1)[1]), app, broker, Api(client))


@pytest.fixture
async def served(settings: Settings, broker: EmbeddedBroker) -> AsyncIterator[Served]:
    async with serve(settings, broker) as running:
        yield running


async def device_nobody_hears(settings: Settings, broker: EmbeddedBroker) -> RegisteredDevice:
    """A device registered through the API alone (a split deployment) whose broker account
    `sensorium broker sync` made: it can connect and publish, but no ingest subscribes."""
    address = broker.address
    assert address is not None
    split = api_only(settings, address)
    async with running_client(split) as client:
        api = Api(client)
        device = await api.device(await api.account())
        await broker_sync(split, api, address)
    return device


@pytest.fixture
def node(tmp_path: Path, board: host.World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A simulated ESP32 whose flash is `tmp_path/flash`; stopped after the test. Its
    provisioning portal listens on free ports instead of 80 and 53."""
    portal = host.firmware("portal")
    monkeypatch.setattr(portal, "HTTP_PORT", 0)
    monkeypatch.setattr(portal, "DNS_PORT", 0)
    root = tmp_path / "flash"
    root.mkdir()
    esp32 = Node(root, board)
    yield esp32
    esp32.stop()
