"""The system fixtures (a real Mosquitto per test, the app with in-process MQTT ingest)
for the simulator's tests, and the app served on a real port as `sensorium serve` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from sensorium.api.app import create_app
from sensorium.config import Settings
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import serving
from tests.system.conftest import broker, mqtt_api

__all__ = ["Served", "broker", "mqtt_api", "served"]


@dataclass
class Served:
    url: str
    app: Any
    broker: EmbeddedBroker


@pytest.fixture
async def served(settings: Settings, broker: EmbeddedBroker) -> AsyncIterator[Served]:
    """The app on a real HTTP port with MQTT ingest: what `sensorium serve` runs."""
    app = create_app(settings, broker=broker.address)
    async with serving(app) as url:
        yield Served(url, app, broker)
