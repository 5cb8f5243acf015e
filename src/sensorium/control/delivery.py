"""Getting desired state, commands and firmware update assignments to MQTT devices.

`MqttDownlink` is this process's publishing connection (the service account, QoS 1).
`ControlPlane` decides what to publish: the desired state (retained) whenever it changes
and whenever the device comes online; queued commands when they are created for an
online MQTT device and when the device comes back. HTTP devices fetch both themselves
(long-poll); nothing is published for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import weakref
from typing import Protocol

import aiomqtt
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import cancel_and_wait, wait_for
from sensorium.broker.endpoint import MqttEndpoint
from sensorium.control import service as control
from sensorium.control.models import Command
from sensorium.db import epoch_ms
from sensorium.devices.models import Device
from sensorium.devices.service import effective_status
from sensorium.live.bus import LiveBus
from sensorium.ota import service as ota
from sensorium.protocol import commands_topic, ota_topic, state_desired_topic

log = logging.getLogger(__name__)


class DownlinkUnavailable(RuntimeError):
    """The broker could not take the message now (not connected, or no PUBACK in time)."""


class Downlink(Protocol):
    @property
    def connected(self) -> bool: ...

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class MqttDownlink:
    """A reconnecting aiomqtt connection; `publish` returns once the broker has the message."""

    def __init__(
        self, endpoint: MqttEndpoint, *, client_id: str | None = None, timeout_s: float = 5.0
    ) -> None:
        self._endpoint = endpoint
        self._client_id = client_id or f"sensorium-downlink-{socket.gethostname()}-{os.getpid()}"
        self._timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-downlink")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = 0.1
        while True:
            client = aiomqtt.Client(
                self._endpoint.host,
                self._endpoint.port,
                username=self._endpoint.username,
                password=self._endpoint.password,
                identifier=self._client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                timeout=self._timeout_s,
            )
            try:
                async with client:
                    self._client = client
                    self._connected.set()
                    delay = 0.1
                    # Nothing is subscribed: iterating ends (raises) when the connection drops.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                log.warning("downlink MQTT connection lost (%s); reconnecting", exc)
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        try:
            await wait_for(self._connected.wait(), self._timeout_s)
        except TimeoutError:
            raise DownlinkUnavailable("not connected to the MQTT broker") from None
        client = self._client
        if client is None:
            raise DownlinkUnavailable("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            raise DownlinkUnavailable(str(exc)) from exc


# Devices that come online together (a fleet booting, a broker restart: thousands at once)
# each want a database connection; unbounded, they exhausted the pool and the ingest waited
# behind them (10,000 simulated devices: thousands of pool timeouts). A few at a time.
ONLINE_CONCURRENCY = 4


class ControlPlane:
    """What this process does about desired state and commands beyond the database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: LiveBus,
        downlink: Downlink | None = None,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self.downlink = downlink
        # One delivery at a time per device keeps its commands in order (a lock lives
        # while someone holds or awaits it).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._online_slots = asyncio.Semaphore(ONLINE_CONCURRENCY)

    def reaches(self, device: Device) -> bool:
        """Whether this process publishes commands to the device now (an online MQTT device)."""
        return (
            self.downlink is not None
            and device.transport == "mqtt"
            and effective_status(device, now_ms=epoch_ms()) == "online"
        )

    async def publish_desired(self, device_id: str) -> bool:
        """Publish the current desired state, retained. Published again if it changed
        meanwhile, so the broker keeps the newest even when processes race."""
        if self.downlink is None:
            return False
        published = -1
        for _ in range(3):
            async with self._sessions() as session:
                row = await control.read_state(session, device_id)
            if row.desired_version == published:
                break
            if row.desired_version == 0 and published == -1:
                return False  # nothing was ever desired: leave the topic empty
            await self.downlink.publish(
                state_desired_topic(device_id),
                control.desired_document(row).to_json(),
                retain=True,
            )
            published = row.desired_version
        return True

    async def update_desired(self, device_id: str) -> None:
        """After a change: publish it now if the broker is there; else the device gets it
        when it comes online (published again then). Never makes the caller wait for a
        broker that is away."""
        if self.downlink is None or not self.downlink.connected:
            log.info("desired state of %s goes out when the broker is back", device_id)
            return
        try:
            await self.publish_desired(device_id)
        except DownlinkUnavailable as exc:
            log.warning("desired state of %s published later: %s", device_id, exc)

    async def clear_desired(self, device_id: str) -> None:
        """Remove the retained desired state and update assignment (the device was
        deleted)."""
        if self.downlink is not None:
            with contextlib.suppress(DownlinkUnavailable):
                await self.downlink.publish(state_desired_topic(device_id), b"", retain=True)
                await self.downlink.publish(ota_topic(device_id), b"", retain=True)

    async def publish_ota(self, device_id: str, *, clear: bool = True) -> None:
        """Publish the device's firmware update assignment in force, retained, or clear
        the topic when there is none (unless `clear` is False); again if it changed
        meanwhile."""
        if self.downlink is None:
            return
        published: bytes | None = None
        for _ in range(3):
            async with self._sessions() as session:
                current = await ota.assignment(session, device_id)
            payload = current.to_json() if current is not None else b""
            if payload == published or (not payload and not clear and published is None):
                return
            await self.downlink.publish(ota_topic(device_id), payload, retain=True)
            published = payload

    async def update_ota(self, device_id: str) -> None:
        """After an OTA change: publish now if the broker is there; else it goes out when
        the device next comes online."""
        if self.downlink is None or not self.downlink.connected:
            log.info("OTA assignment of %s goes out when the broker is back", device_id)
            return
        try:
            await self.publish_ota(device_id)
        except DownlinkUnavailable as exc:
            log.warning("OTA assignment of %s published later: %s", device_id, exc)

    async def deliver_commands(self, device_id: str) -> int:
        """Claim the device's queued commands and publish them in order; what could not be
        published goes back to queued. Returns how many were published."""
        downlink = self.downlink
        if downlink is None or not downlink.connected:
            # Queued: they go out when the device next says it is online.
            return 0
        lock = self._locks.get(device_id)
        if lock is None:
            lock = self._locks[device_id] = asyncio.Lock()
        delivered = 0
        async with lock:
            while True:
                async with self._sessions() as session, session.begin():
                    claimed = await control.claim_queued(session, device_id=device_id)
                if not claimed:
                    return delivered
                self._announce(claimed)
                for index, command in enumerate(claimed):
                    try:
                        await downlink.publish(
                            commands_topic(device_id), control.command_message(command).to_json()
                        )
                    except DownlinkUnavailable as exc:
                        log.warning("commands to %s wait: %s", device_id, exc)
                        async with self._sessions() as session, session.begin():
                            back = await control.unclaim(
                                session, command_ids=[c.id for c in claimed[index:]]
                            )
                        self._announce(back)
                        return delivered
                    delivered += 1
                if len(claimed) < control.POLL_BATCH:
                    return delivered  # that was all of them: no empty claim round

    async def device_online(self, device_id: str) -> None:
        """An MQTT device (re)connected: its desired state, waiting commands and update
        assignment go out."""
        async with self._online_slots:
            try:
                await self.publish_desired(device_id)
                await self.deliver_commands(device_id)
                # Cleared topics were cleared when their job finished: not again at every
                # reconnect of the fleet.
                await self.publish_ota(device_id, clear=False)
            except DownlinkUnavailable as exc:
                log.warning("could not update device %s now: %s", device_id, exc)

    def _announce(self, commands: list[Command]) -> None:
        now_ms = epoch_ms()
        for command in commands:
            self._bus.publish(control.command_event(command, now_ms=now_ms))
