"""Nothing is lost or duplicated while workers are killed, the broker restarts and the
worker group is scaled down (issue acceptance: the loss test)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import func, select

from sensorium.config import Settings
from sensorium.db import create_engine, session_factory
from sensorium.simulator.links import NO_MATCHING_SUBSCRIBERS
from sensorium.telemetry.models import Point
from sensorium.worker.runtime import EmbeddedBroker
from tests.helpers import Api, RegisteredDevice, running_client

DEVICES = 3
MESSAGES_PER_DEVICE = 10_000
KEYS = ("a", "b")
RATE_PER_DEVICE = 700  # messages/s: ~14 s of publishing, long enough for every event


class Workers:
    """`sensorium worker` processes, killed and restarted like an operator (or OOM) would."""

    def __init__(self, settings: Settings, mqtt_url: str, logs: Path) -> None:
        (_, admin_pw), (_, service_pw) = settings.mqtt_credentials()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")},
            "SENSORIUM_DATABASE_URL": settings.database_url,
            "SENSORIUM_DATA_DIR": str(settings.data_dir),
            "SENSORIUM_SECRET_KEY": settings.secret_key,
            "SENSORIUM_MQTT_URL": mqtt_url,
            "SENSORIUM_MQTT_ADMIN_PASSWORD": admin_pw,
            "SENSORIUM_MQTT_SERVICE_PASSWORD": service_pw,
            "SENSORIUM_LOG_LEVEL": "info",
        }
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *extra: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "sensorium", "worker", "--name", name, *extra],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def terminate(self, name: str) -> int:
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=90)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Publisher(threading.Thread):
    """A device publishing QoS 1 readings at a steady rate; paho resends what the broker
    had not acknowledged when the connection drops. A reading the broker accepted but gave
    to nobody (PUBACK 0x10, "no matching subscribers": after a restart, Mosquitto 2.0 has
    lost the workers' shared subscriptions until they subscribe again) is sent again after
    `RESEND_AFTER_S`, as docs/PROTOCOL.md asks of MQTT 5 devices."""

    RESEND_AFTER_S = 0.5

    def __init__(self, host: str, port: int, device: RegisteredDevice, start_ms: int) -> None:
        super().__init__(daemon=True)
        self.device = device
        self.start_ms = start_ms
        self.acked = 0  # taken by a subscriber (reason 0x00)
        self.unrouted = 0  # PUBACK 0x10, sent again
        self.lock = threading.Lock()
        # In flight, by message id: recorded by this thread right after publish(). paho's
        # thread may see the PUBACK first; `_early` then holds its reason for this thread.
        self._payloads: dict[int, bytes] = {}
        self._early: dict[int, bool] = {}
        self._resend: deque[tuple[float, bytes]] = deque()
        self._stopping = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device.id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device.id, device.token)
        self.client.max_inflight_messages_set(50)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=10)

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        taken = reason.value != NO_MATCHING_SUBSCRIBERS
        with self.lock:
            payload = self._payloads.pop(mid, None)
            if payload is None:
                self._early[mid] = taken
            else:
                self._settled(taken, payload)

    def _settled(self, taken: bool, payload: bytes) -> None:
        if taken:
            self.acked += 1
        else:
            self.unrouted += 1
            self._resend.append((time.monotonic() + self.RESEND_AFTER_S, payload))

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        with self.lock:
            taken = self._early.pop(info.mid, None)
            if taken is None:
                self._payloads[info.mid] = payload
            else:
                self._settled(taken, payload)

    def _resend_due(self, topic: str) -> None:
        now = time.monotonic()
        due: list[bytes] = []
        with self.lock:
            while self._resend and self._resend[0][0] <= now:
                due.append(self._resend.popleft()[1])
        for payload in due:
            self._publish(topic, payload)

    def run(self) -> None:
        self.client.loop_start()
        began = time.monotonic()
        topic = f"devices/{self.device.id}/telemetry"
        for i in range(MESSAGES_PER_DEVICE):
            payload = (f'{{"ts": {self.start_ms + i}, "values": {{"a": {i}, "b": {-i}}}}}').encode()
            self._publish(topic, payload)
            self._resend_due(topic)
            ahead = began + i / RATE_PER_DEVICE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while not self._stopping.wait(0.05):
            self._resend_due(topic)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def workers(settings: Settings, broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Workers]:
    assert broker.address is not None
    group = Workers(settings, f"mqtt://{broker.address.host}:{broker.address.port}", tmp_path)
    yield group
    group.stop_all()


async def stored(settings: Settings) -> tuple[int, int]:
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as session:
            total = await session.scalar(select(func.count()).select_from(Point))
            distinct = await session.scalar(
                select(func.count()).select_from(
                    select(Point.series, Point.ts).distinct().subquery()
                )
            )
        return int(total or 0), int(distinct or 0)
    finally:
        await engine.dispose()


async def _wait_until_provisioned(host: str, port: int, device: RegisteredDevice) -> None:
    """The workers' provisioner creates the device accounts; wait until a device gets in
    (a worker takes seconds to start on a loaded machine)."""
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device.id, protocol=mqtt.MQTTv5)
    probe.username_pw_set(device.id, device.token)
    for _ in range(300):
        try:
            if probe.connect(host, port) == 0:
                probe.loop(timeout=1.0)
                if probe.is_connected():
                    probe.disconnect()
                    return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("device accounts were not provisioned")


@pytest.mark.parametrize(
    "scenario", ["single-worker-broker-restart", "shared-workers-broker-restart-scale-down"]
)
async def test_no_loss_and_no_duplicates(
    settings: Settings, broker: EmbeddedBroker, workers: Workers, tmp_path: Path, scenario: str
) -> None:
    """While 3 devices publish 30,000 QoS 1 messages: a worker is killed -9 twice and
    restarted, the broker is restarted (SIGTERM), and, with two shared-subscription workers,
    the other one is scaled down. Exactly 30,000 x 2 points are stored, none twice.

    Mosquitto 2.0 does not restore shared subscriptions when it restarts: until a worker
    subscribes again, it answers the devices' publishes with PUBACK 0x10 ("no matching
    subscribers") and the devices send those readings again (docs/PROTOCOL.md). The single
    worker subscribes without `$share`, which survives restarts.
    """
    assert broker.address is not None
    assert broker.supervisor is not None
    mqtt_url = f"mqtt://{broker.address.host}:{broker.address.port}"
    async with running_client(settings.model_copy(update={"mqtt_url": mqtt_url})) as client:
        api = Api(client)
        owner = await api.account()
        registered = [await api.device(owner) for _ in range(DEVICES)]
    shared = scenario.startswith("shared")
    workers.start("w1", "--shared" if shared else "--no-shared")
    if shared:
        workers.start("w2", "--shared", "--leave")
    await _wait_until_provisioned(broker.address.host, broker.address.port, registered[-1])

    start_ms = int(time.time() * 1000) - 3_600_000
    publishers = [
        Publisher(broker.address.host, broker.address.port, device, start_ms)
        for device in registered
    ]
    for publisher in publishers:
        publisher.start()
    try:
        await asyncio.sleep(2)
        workers.kill("w1")  # kill -9 number one
        await asyncio.sleep(1)
        workers.start("w1", "--shared" if shared else "--no-shared")
        await asyncio.sleep(2)
        # The broker restarts (SIGTERM: it saves its sessions and queues first).
        pid = broker.supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(2)
        workers.kill("w1")  # kill -9 number two
        await asyncio.sleep(1)
        workers.start("w1", "--shared" if shared else "--no-shared")
        await asyncio.sleep(2)
        if shared:
            # Scale down: w2 leaves the group (unsubscribe, drain, end its session).
            workers.procs["w2"].send_signal(signal.SIGTERM)
        for _ in range(1800):
            if all(p.acked >= MESSAGES_PER_DEVICE for p in publishers):
                break
            await asyncio.sleep(0.1)
        assert [p.acked >= MESSAGES_PER_DEVICE for p in publishers] == [True] * DEVICES
        if shared:
            assert workers.procs["w2"].wait(timeout=90) == 0
        want = DEVICES * MESSAGES_PER_DEVICE * len(KEYS)
        total = distinct = 0
        for _ in range(600):
            total, distinct = await stored(settings)
            if total >= want:
                break
            await asyncio.sleep(0.1)
        logs = "\n".join(await asyncio.to_thread(_tails, tmp_path))
        assert (total, distinct) == (want, want), logs
        assert broker.supervisor.restarts == 1
        unrouted = sum(p.unrouted for p in publishers)
        if not shared:
            # The plain subscription survived the restart: nothing went unrouted.
            assert unrouted == 0
    finally:
        for publisher in publishers:
            publisher.stop()


def _tails(directory: Path) -> list[str]:
    return [p.read_text()[-2000:] for p in sorted(directory.glob("w*.log"))]
