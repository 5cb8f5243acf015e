"""Alerts across real `sensorium worker` processes (issue 8, acceptance 2): a worker killed
with SIGKILL inside a duration window and restarted still fires the alert once, at the
right time; two workers on the shared subscription open exactly one alert and send one
notification per transition. Durations are shortened by settings (SENSORIUM_ALERT_TICK_S)
and by device timestamps, never by faked logic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.alerts.models import Alert, AlertState, Delivery
from sensorium.config import Settings
from sensorium.db import create_engine, epoch_ms, session_factory
from sensorium.worker.runtime import EmbeddedBroker
from tests.alerts.receivers import WebhookReceiver, eventually, webhook_receiver
from tests.helpers import Account, Api, RegisteredDevice, running_client
from tests.system.conftest import Device
from tests.system.test_mqtt_loss import Workers

MIN = 60_000


@pytest.fixture
def workers(settings: Settings, broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Workers]:
    assert broker.address is not None
    group = Workers(settings, f"mqtt://{broker.address.host}:{broker.address.port}", tmp_path)
    group.env |= {
        "SENSORIUM_ALERT_TICK_S": "0.1",
        "SENSORIUM_ALERT_RETRY_BASE_S": "0.2",
        "SENSORIUM_PUBLIC_URL": "https://sensorium.example",
    }
    yield group
    group.stop_all()


@pytest.fixture
async def api(settings: Settings, broker: EmbeddedBroker) -> AsyncIterator[Api]:
    """The API next to the workers (`sensorium api`): it runs no scheduler of its own, so
    every alert here comes from a worker."""
    assert broker.address is not None
    mqtt_url = f"mqtt://{broker.address.host}:{broker.address.port}"
    async with running_client(settings.model_copy(update={"mqtt_url": mqtt_url})) as client:
        yield Api(client)


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    db = create_engine(settings.database_url)
    yield session_factory(db)
    await db.dispose()


async def connected(broker: EmbeddedBroker, devices: list[Device], reg: RegisteredDevice) -> Device:
    """The device on MQTT, once a worker's provisioner has created its account."""
    assert broker.address is not None
    for _ in range(100):
        device = Device(broker.address, reg.id, reg.token, keepalive=30)
        devices.append(device)
        await asyncio.to_thread(device.start)
        if device.connected.is_set():
            return device
        device.stop()
        await asyncio.sleep(0.2)
    raise AssertionError("the device account was not provisioned")


async def ready(workers: Workers, *names: str) -> None:
    """Until the workers are subscribed (they say so once started): what a device
    publishes before then would reach no one's session."""

    async def started() -> bool:
        logs = [(workers.logs / f"{n}.log").read_text(errors="replace") for n in names]
        return all("ingesting from" in log for log in logs)

    assert await eventually(started, timeout_s=60), names


async def publish(device: Device, points: list[dict[str, Any]]) -> None:
    """One QoS 1 message a point (acknowledged by the broker)."""
    for point in points:
        reason = await asyncio.to_thread(device.publish, "telemetry", orjson.dumps(point))
        assert not reason.is_failure, reason


async def co2_rule(api: Api, owner: Account, device_id: str, channel: int, duration_s: int) -> int:
    body = {
        "name": f"CO2 for {duration_s} s",
        "scope": "device",
        "devices": [device_id],
        "key": "co2",
        "operator": ">",
        "threshold": 1200,
        "duration_s": duration_s,
        "channels": [channel],
    }
    r = await api.client.post("/api/v1/alert-rules", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    rule_id: int = r.json()["id"]
    return rule_id


async def channel_for(api: Api, owner: Account, receiver: WebhookReceiver) -> int:
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "hook", "kind": "webhook", "url": receiver.url},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    channel_id: int = r.json()["id"]
    return channel_id


async def state_of(
    sessions: async_sessionmaker[AsyncSession], rule_id: int, device_id: str
) -> AlertState | None:
    async with sessions() as session:
        state: AlertState | None = await session.scalar(
            select(AlertState).where(
                AlertState.rule_id == rule_id, AlertState.device_id == device_id
            )
        )
        return state


async def alerts_of(
    sessions: async_sessionmaker[AsyncSession], rule_id: int
) -> list[tuple[Alert, list[Delivery]]]:
    async with sessions() as session:
        alerts = (
            await session.scalars(select(Alert).where(Alert.rule_id == rule_id).order_by(Alert.id))
        ).all()
        out = []
        for alert in alerts:
            deliveries = (
                await session.scalars(select(Delivery).where(Delivery.alert_id == alert.id))
            ).all()
            out.append((alert, list(deliveries)))
        return out


async def pending(
    sessions: async_sessionmaker[AsyncSession], rule_id: int, device_id: str
) -> AlertState:
    async def check() -> AlertState | None:
        state = await state_of(sessions, rule_id, device_id)
        return state if state is not None and state.phase == "pending" else None

    state: AlertState | None = await eventually(check, timeout_s=30)
    assert state is not None, await state_of(sessions, rule_id, device_id)
    return state


async def fired_once(
    sessions: async_sessionmaker[AsyncSession],
    rule_id: int,
    receiver: WebhookReceiver,
    *,
    attempts: int = 1,
) -> tuple[Alert, Delivery]:
    """Wait for the rule's alert and its notification; then check that, a few scheduler
    ticks later, there is still exactly one of each."""

    async def sent() -> bool:
        found = await alerts_of(sessions, rule_id)
        return bool(found) and all(d.status == "succeeded" for _, ds in found for d in ds)

    assert await eventually(sent, timeout_s=30), await alerts_of(sessions, rule_id)
    await asyncio.sleep(1.0)
    [(alert, [delivery])] = await alerts_of(sessions, rule_id)
    assert (alert.state, delivery.event, delivery.attempts) == ("active", "fired", attempts)
    assert [r.document["alert"]["id"] for r in receiver.accepted()].count(alert.id) == 1
    return alert, delivery


async def test_killed_inside_the_window_and_restarted_fires_once_at_the_mark(
    api: Api,
    broker: EmbeddedBroker,
    workers: Workers,
    devices: list[Device],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    owner = await api.account()
    timer_dev = await api.device(owner, name="Timer")
    stream_dev = await api.device(owner, name="Stream")
    async with webhook_receiver() as receiver:
        channel = await channel_for(api, owner, receiver)
        # "For 8 s" with one live point: the server's timer decides (server time).
        timer_rule = await co2_rule(api, owner, timer_dev.id, channel, duration_s=8)
        # "For 5 min" with device timestamps: the points decide.
        stream_rule = await co2_rule(api, owner, stream_dev.id, channel, duration_s=300)
        workers.start("w1", "--no-shared")
        await ready(workers, "w1")
        timer = await connected(broker, devices, timer_dev)
        stream = await connected(broker, devices, stream_dev)

        # Timer: one point above, stored and pending; SIGKILL before its mark.
        ts = epoch_ms()
        await publish(timer, [{"ts": ts, "values": {"co2": 1300}}])
        state = await pending(sessions, timer_rule, timer_dev.id)
        assert (state.since_ms, state.due_ms) == (ts, ts + 8000)
        assert state.wake_ms is not None
        wake_ms = state.wake_ms
        # Stream: minutes 0..2 above, stored; the window is open.
        t0 = epoch_ms() - 30 * MIN
        await publish(stream, [{"ts": t0 + i * MIN, "values": {"co2": 1250 + i}} for i in range(3)])

        async def three_stored() -> bool:
            s = await state_of(sessions, stream_rule, stream_dev.id)
            return s is not None and s.last_ts == t0 + 2 * MIN

        assert await eventually(three_stored, timeout_s=30)
        workers.kill("w1")
        killed_ms = epoch_ms()
        assert killed_ms < wake_ms, "the worker must die inside the window"
        assert await alerts_of(sessions, timer_rule) == []
        assert await alerts_of(sessions, stream_rule) == []

        # While it is down the device goes on: minutes 3..6 wait in the worker's
        # persistent session on the broker.
        await publish(
            stream, [{"ts": t0 + i * MIN, "values": {"co2": 1250 + i}} for i in range(3, 7)]
        )
        workers.start("w1", "--no-shared")

        alert, delivery = await fired_once(sessions, timer_rule, receiver)
        # Fired at the 8-second mark of the point, and not before the server's timer.
        assert (alert.fired_ms, alert.value) == (ts + 8000, 1300)
        assert delivery.created_ms >= wake_ms
        alert, delivery = await fired_once(sessions, stream_rule, receiver)
        assert (alert.fired_ms, alert.value) == (t0 + 5 * MIN, 1255)
        assert all(r.verified for r in receiver.requests)
        after = await state_of(sessions, timer_rule, timer_dev.id)
        assert after is not None
        assert after.phase == "firing"


async def test_two_shared_workers_open_one_alert_and_send_one_notification(
    api: Api,
    broker: EmbeddedBroker,
    workers: Workers,
    devices: list[Device],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    owner = await api.account()
    stream_dev = await api.device(owner, name="Stream")
    timer_dev = await api.device(owner, name="Timer")
    async with webhook_receiver() as receiver:
        channel = await channel_for(api, owner, receiver)
        stream_rule = await co2_rule(api, owner, stream_dev.id, channel, duration_s=10)
        timer_rule = await co2_rule(api, owner, timer_dev.id, channel, duration_s=4)
        workers.start("w1", "--shared")
        workers.start("w2", "--shared")
        stream = await connected(broker, devices, stream_dev)
        timer = await connected(broker, devices, timer_dev)
        await ready(workers, "w1", "w2")

        # One point a second (device time) for 30 s, above from second 5: the messages
        # are shared between the two workers, which commit them in either order.
        t0 = epoch_ms() - 10 * MIN
        points = [
            {"ts": t0 + i * 1000, "values": {"co2": 1300 if i >= 5 else 900}} for i in range(30)
        ]
        await publish(stream, points)
        # The timer device: one live point above; its timer is in both schedulers' reach.
        ts = epoch_ms()
        await publish(timer, [{"ts": ts, "values": {"co2": 1400}}])
        state = await pending(sessions, timer_rule, timer_dev.id)
        assert state.due_ms == ts + 4000

        alert, _ = await fired_once(sessions, stream_rule, receiver)
        assert alert.fired_ms == t0 + 15_000
        alert, _ = await fired_once(sessions, timer_rule, receiver)
        assert (alert.fired_ms, alert.value) == (ts + 4000, 1400)
        assert len(receiver.accepted()) == 2
        assert all(r.verified for r in receiver.requests)
        assert [workers.procs[n].poll() for n in ("w1", "w2")] == [None, None]


async def test_a_worker_killed_while_sending_a_webhook_sends_it_again_after_its_lease(
    api: Api,
    broker: EmbeddedBroker,
    workers: Workers,
    devices: list[Device],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The receiver holds the first request; the worker dies with it in flight. The
    delivery stays claimed until its lease (3 x the send timeout) runs out, then the
    restarted worker sends it again with the same delivery id: once more, not twice more."""
    workers.env["SENSORIUM_ALERT_SEND_TIMEOUT_S"] = "2"
    owner = await api.account()
    reg = await api.device(owner)
    async with webhook_receiver(hang_first=1) as receiver:
        channel = await channel_for(api, owner, receiver)
        rule = await co2_rule(api, owner, reg.id, channel, duration_s=0)
        workers.start("w1", "--no-shared")
        await ready(workers, "w1")
        device = await connected(broker, devices, reg)
        await publish(device, [{"ts": epoch_ms(), "values": {"co2": 1500}}])

        async def in_flight() -> bool:
            return len(receiver.requests) == 1

        assert await eventually(in_flight, timeout_s=30)
        workers.kill("w1")
        receiver.release.set()
        [(alert, [delivery])] = await alerts_of(sessions, rule)
        assert (delivery.status, delivery.attempts) == ("sending", 1)
        lease_end = delivery.next_ms

        workers.start("w1", "--no-shared")
        _alert, done = await fired_once(sessions, rule, receiver, attempts=2)
        assert (done.id, done.attempts, done.status) == (delivery.id, 2, "succeeded")
        assert done.first_try_ms == delivery.first_try_ms
        first, second = receiver.requests
        assert (first.status, second.status) == (0, 200)
        assert first.delivery == second.delivery == str(delivery.id)
        assert first.body == second.body
        assert second.document["alert"]["id"] == alert.id
        # Not before the lease ran out (the server's clock, as the claim used).
        assert done.done_ms is not None
        assert done.done_ms >= lease_end
