"""A real Mosquitto per test (free port, generated config and dynsec file) and the app
running MQTT ingest in-process against it, plus a paho device client."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from sensorium.broker import admin as dynsec_admin
from sensorium.broker.service import Outbox, reconcile
from sensorium.config import Settings
from sensorium.worker.runtime import BrokerAddress, EmbeddedBroker
from tests.conftest import IN_CI
from tests.helpers import Api, RegisteredDevice, running_client


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[EmbeddedBroker]:
    if shutil.which(settings.mosquitto_binary) is None and not IN_CI:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    embedded = EmbeddedBroker(settings.model_copy(update={"mqtt_embedded_port": 0}))
    await embedded.start()
    yield embedded
    await embedded.stop()


@pytest.fixture
async def mqtt_api(settings: Settings, broker: EmbeddedBroker) -> AsyncIterator[Api]:
    assert broker.address is not None
    async with running_client(settings, broker=broker.address) as client:
        yield Api(client)


async def provisioned(api: Api) -> None:
    """Until the broker has every account change made so far."""
    provisioner = api.client.app.state.ctx.provisioner  # type: ignore[attr-defined]
    await provisioner.wait_idle()


def api_only(settings: Settings, address: BrokerAddress) -> Settings:
    """The API alone (a split deployment): it queues broker account changes for `sensorium
    broker sync` and runs no ingest, so nothing subscribes to the devices' uplink."""
    return settings.model_copy(update={"mqtt_url": f"mqtt://{address.host}:{address.port}"})


async def broker_sync(settings: Settings, api: Api, address: BrokerAddress) -> None:
    """What `sensorium broker sync` does for the API-only app behind `api`: the device
    accounts it queued are applied to the broker (devices get in)."""
    ctx = api.client.app.state.ctx  # type: ignore[attr-defined]
    (admin_user, admin_pw), _ = settings.mqtt_credentials()
    async with dynsec_admin.connect(
        address.host, address.port, username=admin_user, password=admin_pw
    ) as admin:
        await reconcile(ctx.sessions, admin, Outbox(settings.resolved_secret_key()))


async def registered(api: Api, count: int = 1) -> list[RegisteredDevice]:
    """`count` devices of a new account, their broker accounts already created."""
    owner = await api.account()
    devices = [await api.device(owner) for _ in range(count)]
    await provisioned(api)
    return devices


@dataclass
class Device:
    """A paho MQTT 5 client playing a device; records what happens to it."""

    address: BrokerAddress
    device_id: str
    password: str
    keepalive: int = 30
    will: bytes | None = None
    connack: ReasonCode | None = None
    disconnects: list[str] = field(default_factory=list)
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    connected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    client: mqtt.Client | None = None

    def start(self, timeout_s: float = 5.0) -> Device:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(self.device_id, self.password)
        if self.will is not None:
            client.will_set(f"devices/{self.device_id}/status", self.will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = lambda _c, _u, m: self.messages.append(m)
        client.on_publish = self._on_publish
        client.on_subscribe = lambda _c, _u, mid, reasons, _p: self.subacks.__setitem__(
            mid, reasons
        )
        client.reconnect_delay_set(1, 2)
        client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive)
        client.loop_start()
        self.client = client
        self.done.wait(timeout_s)
        return self

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        if not reason.is_failure:
            self.connected.set()
        self.done.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connected.clear()
        self.disconnects.append(str(reason))
        self.done.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.pubacks[mid] = reason

    def publish(self, kind: str, payload: bytes, *, device_id: str | None = None) -> ReasonCode:
        assert self.client is not None
        info = self.client.publish(f"devices/{device_id or self.device_id}/{kind}", payload, qos=1)
        deadline = time.monotonic() + 5
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        assert self.client is not None
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        deadline = time.monotonic() + 5
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.subacks[mid]

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    """Devices started in a test are stopped after it (their paho threads too)."""
    started: list[Device] = []
    yield started
    for device in started:
        device.stop()


async def wait_for(check: Any, timeout_s: float = 5.0, interval_s: float = 0.05) -> Any:
    """Poll an async `check` until it returns something truthy."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval_s)


def point_values(r: httpx.Response) -> list[float]:
    return [p["value"] for p in r.json()["points"]]
