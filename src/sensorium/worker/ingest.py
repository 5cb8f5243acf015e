"""The MQTT ingest coordinator: owns the broker connection and feeds the batch writer.

paho-mqtt runs in the event loop's thread, its socket driven by the loop
(`worker/paho_loop.py`): one thread, no GIL hand-offs, each read's messages handled in one
go. Messages are QoS 1 on a persistent session through a shared subscription, and each is
acknowledged only after what it carries is committed, so killing a worker loses nothing:
the broker redelivers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import wait_for
from sensorium.api.metrics import INGEST_DOCUMENTS, INGEST_POINTS, INGEST_REJECTED
from sensorium.broker.dynsec import SHARE_GROUP
from sensorium.broker.endpoint import MqttEndpoint
from sensorium.control import service as control
from sensorium.control.delivery import ControlPlane
from sensorium.db import epoch_ms
from sensorium.devices import service as devices
from sensorium.errors import NotFound, SensoriumError
from sensorium.live.bus import LiveBus
from sensorium.ota import service as ota
from sensorium.ota.delivery import deliver as deliver_ota
from sensorium.protocol import (
    KIND_COMMAND_RESULT,
    KIND_LOGS,
    KIND_OTA_PROGRESS,
    KIND_STATE_REPORTED,
    KIND_STATUS,
    KIND_TELEMETRY,
    ParsedTopic,
    ProtocolError,
    Reading,
    StatusReport,
    parse_command_result,
    parse_log,
    parse_readings,
    parse_state_document,
    parse_status,
    parse_uplink_topic,
    uplink_subscriptions,
)
from sensorium.protocol.ota import parse_progress
from sensorium.telemetry.writer import BatchWriter, Unstorable
from sensorium.worker import paho_loop, paho_speedups
from sensorium.worker.acks import AckQueue, Ticket
from sensorium.worker.paho_loop import LoopDriver, Message

log = logging.getLogger(__name__)

# Looked up once: `.labels()` costs a lock and a dict lookup, per message.
_DOCUMENTS = INGEST_DOCUMENTS.labels("mqtt")
_POINTS = INGEST_POINTS.labels("mqtt")

# The longest wait between attempts to store telemetry while the database is failing.
RETRY_MAX_S = 30.0
# Tries to store a status, log, state or result message before giving up (~6 s of retries).
CONTROL_ATTEMPTS = 5
# Status messages stored in one transaction, at most.
STATUS_BATCH = 500
# Topics whose parse is remembered, at most (then forgotten all at once).
TOPIC_CACHE = 100_000
# Few and small: handled one at a time, in order, after the device's pending telemetry.
CONTROL_KINDS = frozenset(
    {KIND_STATUS, KIND_LOGS, KIND_STATE_REPORTED, KIND_COMMAND_RESULT, KIND_OTA_PROGRESS}
)


@dataclass(slots=True)
class _Control:
    """A status, log, reported state, command result or OTA progress message."""

    parsed: ParsedTopic
    message: Message
    entry: Ticket


class RejectLog:
    """Logs a rejected message at most once per device per minute (a broken device can
    send thousands a second; the counter in /metrics has the full number)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}

    def warn(self, device_id: str, reason: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._last.get(device_id, -self._interval_s) >= self._interval_s:
            self._last[device_id] = now
            log.warning("dropped MQTT message from device %s: %s (%s)", device_id, reason, detail)


class MqttIngest:
    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        writer: BatchWriter,
        sessions: async_sessionmaker[AsyncSession],
        retention_days: int,
        offline_after_s: int,
        session_expiry_s: int,
        receive_maximum: int = 5000,
        shared: bool = True,
        bus: LiveBus | None = None,
        control: ControlPlane | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self._writer = writer
        self._sessions = sessions
        self._retention_ms = retention_days * 86_400_000
        self._offline_after_s = offline_after_s
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        # Mosquitto 2.0 does not restore shared subscriptions when it restarts (sessions
        # and queues it does), so what devices publish between its restart and the
        # workers' resubscription is dropped. A lone worker subscribes plainly and keeps
        # everything; a group needs the share. See docs/mqtt.md.
        self._shared = shared
        self._bus = bus
        self._control_plane = control
        self._loop: asyncio.AbstractEventLoop | None = None
        # Messages received while the writer's queue was full, in order: (connection
        # generation, message), see AckQueue. `_drain_held` takes them as room comes.
        self._held: deque[tuple[int, Message]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        # Status and log messages are few; one queue keeps each device's in order.
        self._control: asyncio.Queue[_Control | None] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None
        self._controller: asyncio.Task[None] | None = None
        self._client: mqtt.Client | None = None
        self._driver: LoopDriver | None = None
        # One bound method for every document's outcome (not a new one per message).
        self._on_written = self._written
        self._acks = AckQueue(self._send_ack)
        # Which connection a message came on: counted up when a connection closes, so no
        # ack of its messages can go out on the next one (see AckQueue).
        self._generation = 0
        self._connected = asyncio.Event()
        self._rejects = RejectLog()
        self._retries: set[asyncio.Task[None]] = set()
        self._last_message_at = 0.0
        # Each device's latest telemetry write not yet done, which its status/log messages
        # wait for; `_write_done` is set when one is done while someone waits.
        self._pending_writes: dict[str, Ticket] = {}
        # How often a document's write failed, while it is retried.
        self._attempts: dict[Ticket, int] = {}
        self._write_waiters = 0
        self._write_done = asyncio.Event()
        self._stored_documents = 0
        self._stored_points = 0
        self._count_pending = False
        # parse_uplink_topic's answers: a fleet has a few topics per device.
        self._topics: dict[str, ParsedTopic | None] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, timeout_s: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        paho_speedups.install()
        self._consumer = asyncio.create_task(self._drain_held(), name="mqtt-ingest")
        self._controller = asyncio.create_task(self._consume_control(), name="mqtt-control")
        client = paho_loop.new_client(self.client_id)
        client.username_pw_set(self.endpoint.username, self.endpoint.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        properties = _properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._session_expiry_s
        properties.ReceiveMaximum = self._receive_maximum
        self._client = client
        # Reconnects every 0.2 s: a restarted Mosquitto 2.0 has lost the group's shared
        # subscriptions, and what devices publish before a worker subscribes again goes
        # nowhere. Devices back off from 1 s, so the workers are back first.
        self._driver = LoopDriver(
            client, on_messages=self._received, on_closed=self._connection_closed
        )
        # clean_start=False: resume the persistent session and what queued up meanwhile.
        self._driver.start(
            self.endpoint.host,
            self.endpoint.port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        await wait_for(self._connected.wait(), timeout_s)

    async def stop(self, *, leave_group: bool = False) -> None:
        """Disconnect after everything received so far is written and acknowledged.

        `leave_group` (scaling down): unsubscribe first and end the session, so the
        broker stops giving this worker a share and nothing waits in a dead session.
        """
        client = self._client
        if client is not None and leave_group and self._connected.is_set():
            client.unsubscribe(self._subscriptions())
            # The broker keeps pushing what was already queued for this session; it is
            # drained when nothing has arrived for a while and everything is acknowledged.
            await self._settle(quiet_s=1.0, timeout_s=60.0)
        else:
            await self._settle(quiet_s=0.0, timeout_s=10.0)
        # What arrives from now on is not taken (nor acknowledged): the broker keeps it.
        self._closing = True
        self._wake.set()
        if self._consumer is not None:
            await self._consumer
        await self._control.put(None)
        if self._controller is not None:
            await self._controller
        while self._retries:
            await asyncio.gather(*self._retries, return_exceptions=True)
        if client is not None:
            properties = _properties(PacketTypes.DISCONNECT)
            if leave_group:
                properties.SessionExpiryInterval = 0
            client.disconnect(properties=properties)
        if self._driver is not None:
            await self._driver.stop()
        self._client = None

    async def _settle(self, *, quiet_s: float, timeout_s: float) -> None:
        """Until every message received has been handled and acknowledged, and none has
        arrived for `quiet_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            idle = not self._held and self._control.empty() and len(self._acks) == 0
            if idle and time.monotonic() - self._last_message_at >= quiet_s:
                return
            await asyncio.sleep(0.05)
        oldest = self._acks.oldest()
        log.warning(
            "stopping with %d message(s) not yet acknowledged%s",
            len(self._acks),
            ""
            if oldest is None
            else f"; the oldest ({oldest.topic}) waits since "
            f"{time.monotonic() - oldest.received_at:.1f} s",
        )

    # --- paho callbacks (in the event loop's thread) -------------------------------------

    def _subscriptions(self) -> list[str]:
        filters = uplink_subscriptions("+")
        return [f"$share/{SHARE_GROUP}/{f}" for f in filters] if self._shared else list(filters)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused: %s", reason)
            return
        # Subscribing again on a present session is harmless and repairs a subscription
        # the broker refused earlier (e.g. before its ACLs were brought up to date).
        client.subscribe([(topic, 1) for topic in self._subscriptions()])
        log.info(
            "connected to MQTT %s:%s (session present: %s)",
            self.endpoint.host,
            self.endpoint.port,
            flags.session_present,
        )
        self._connected.set()

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("the broker refused the worker's subscriptions: %s", ", ".join(refused))

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning("MQTT connection lost: %s; reconnecting", reason)

    def _connection_closed(self) -> None:
        """The connection is gone: acks of what came on it must never be sent (the broker
        redelivers those messages on the next one, under new ids)."""
        self._generation += 1
        self._acks.new_connection(self._generation)
        self._connected.clear()

    def _send_ack(self, mid: int, qos: int, generation: int) -> None:
        if generation != self._generation or self._driver is None:
            return
        if qos == 1:
            self._driver.ack(mid)
        elif self._client is not None:
            rc = self._client.ack(mid, qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.debug("ack of %s not sent: %s", mid, rc)

    # --- messages ----------------------------------------------------------------------

    def _received(self, burst: list[Message]) -> None:
        """The PUBLISHes of one read, in order. Handled at once while the writer has room;
        the rest waits in `_held` (the broker holds what comes next: at most
        `receive_maximum` unacknowledged)."""
        if self._closing:
            return
        self._last_message_at = time.monotonic()
        generation = self._generation
        held = self._held
        if not held:
            writer = self._writer
            handle = self._handle
            for index, message in enumerate(burst):
                if writer.full():
                    burst = burst[index:]
                    break
                handle(generation, message)
            else:
                return
        held.extend((generation, message) for message in burst)
        self._wake.set()

    async def _drain_held(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._held:
                if self._writer.full():
                    # Back-pressure instead of a dropped message.
                    await self._writer.wait_for_room()
                    continue
                generation, message = self._held.popleft()
                self._handle(generation, message)
            if self._closing:
                return

    def _handle(self, generation: int, message: Message) -> None:
        entry = self._acks.track(
            message.mid, message.qos, generation=generation, topic=message.topic
        )
        try:
            self._dispatch(message, entry)
        except Exception:
            # Never let one message stop the worker; this one is dropped and acked.
            log.exception("unexpected error handling %s", message.topic)
            self._acks.complete(entry)

    def _dispatch(self, message: Message, entry: Ticket) -> None:
        try:
            parsed = self._topics[message.topic]
        except KeyError:
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            parsed = self._topics[message.topic] = parse_uplink_topic(message.topic)
        if parsed is None:
            self._reject("-", "unknown_topic", message.topic)
            self._acks.complete(entry)
        elif parsed.kind == KIND_TELEMETRY:
            now = epoch_ms()
            try:
                readings = parse_readings(
                    message.payload, now_ms=now, oldest_ms=now - self._retention_ms
                )
            except ProtocolError as exc:
                self._reject(parsed.device_id, exc.code, exc.message)
                self._acks.complete(entry)
                return
            self._submit(parsed.device_id, readings, entry)
        else:
            assert parsed.kind in CONTROL_KINDS
            self._control.put_nowait(_Control(parsed, message, entry))

    def _submit(self, device_id: str, readings: Sequence[Reading], entry: Ticket) -> None:
        self._pending_writes[device_id] = entry
        self._writer.enqueue(device_id, readings, self._on_written, entry)

    def _written(
        self,
        result: int | BaseException,
        device_id: str,
        readings: Sequence[Reading],
        entry: Ticket,
    ) -> None:
        if self._pending_writes.get(device_id) == entry:
            del self._pending_writes[device_id]
        if self._write_waiters:
            self._write_done.set()
        if not isinstance(result, BaseException):
            # Counted into /metrics once per batch: each inc() takes a lock.
            self._stored_documents += 1
            self._stored_points += result
            if not self._count_pending:
                self._count_pending = True
                asyncio.get_running_loop().call_soon(self._count_stored)
        elif isinstance(result, NotFound):
            self._reject(device_id, "unknown_device", str(result))
        elif isinstance(result, Unstorable):
            # Refused for its content: retrying would hold every later ack for ever.
            self._reject(device_id, result.code, result.message)
        else:
            # The database failed: keep the message unacknowledged and try again, so
            # nothing is lost and later acks wait behind it (they must stay in order).
            attempts = self._attempts[entry] = self._attempts.get(entry, 0) + 1
            delay = min(RETRY_MAX_S, 0.5 * 2**attempts)
            log.error(
                "storing telemetry of %s failed (%s); retry %d in %.0f s",
                device_id,
                result,
                attempts,
                delay,
            )
            task = asyncio.create_task(self._retry(device_id, readings, entry, delay))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        if self._attempts:
            self._attempts.pop(entry, None)
        self._acks.complete(entry)

    def _count_stored(self) -> None:
        self._count_pending = False
        _DOCUMENTS.inc(self._stored_documents)
        _POINTS.inc(self._stored_points)
        self._stored_documents = self._stored_points = 0

    async def _retry(
        self, device_id: str, readings: Sequence[Reading], entry: Ticket, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        await self._writer.wait_for_room()
        self._submit(device_id, readings, entry)

    async def _consume_control(self) -> None:
        held: _Control | None = None
        while True:
            item = held if held is not None else await self._control.get()
            held = None
            if item is None:
                return
            if item.parsed.kind != KIND_STATUS:
                await self._handle_control(item)
                continue
            # Heartbeats of a fleet (hundreds a second) go into one transaction: one at a
            # time, each cost ~14 ms of round trips, and every ack waited behind them.
            # At most one per device, so each device's messages keep their order.
            batch = [item]
            devices_in = {item.parsed.device_id}
            while len(batch) < STATUS_BATCH and not self._control.empty():
                following = self._control.get_nowait()
                if (
                    following is None
                    or following.parsed.kind != KIND_STATUS
                    or following.parsed.device_id in devices_in
                ):
                    held = following
                    break
                batch.append(following)
                devices_in.add(following.parsed.device_id)
            await self._handle_statuses(batch)

    async def _after_earlier_writes(self, device_ids: Iterable[str]) -> None:
        """Keep each device's messages in order: a last will published after a reading must
        not be stored before it (the reading would turn the device online again)."""
        earlier = [
            (device_id, entry)
            for device_id in device_ids
            if (entry := self._pending_writes.get(device_id)) is not None
        ]
        while earlier:
            self._write_waiters += 1
            self._write_done.clear()
            try:
                await self._write_done.wait()
            finally:
                self._write_waiters -= 1
            pending = self._pending_writes
            earlier = [(d, entry) for d, entry in earlier if pending.get(d) == entry]

    async def _handle_control(self, item: _Control) -> None:
        parsed, message = item.parsed, item.message
        await self._after_earlier_writes([parsed.device_id])
        for attempt in range(CONTROL_ATTEMPTS):
            try:
                await self._store_control(parsed, bytes(message.payload))
            except (ProtocolError, SensoriumError) as exc:
                self._reject(parsed.device_id, exc.code, exc.message)
            except Exception:
                # The database is busy or away ("database is locked" on SQLite): retry.
                log.exception("storing %s failed (attempt %d)", message.topic, attempt + 1)
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            break
        self._acks.complete(item.entry)

    async def _handle_statuses(self, batch: list[_Control]) -> None:
        await self._after_earlier_writes(item.parsed.device_id for item in batch)
        reports: list[tuple[_Control, StatusReport]] = []
        for item in batch:
            try:
                reports.append((item, parse_status(bytes(item.message.payload))))
            except ProtocolError as exc:
                self._reject(item.parsed.device_id, exc.code, exc.message)
        for attempt in range(CONTROL_ATTEMPTS):
            try:
                await self._store_statuses(reports)
            except Exception:
                log.exception(
                    "storing %d status message(s) failed (attempt %d)", len(reports), attempt + 1
                )
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            break
        for item in batch:
            self._acks.complete(item.entry)

    async def _store_control(self, parsed: ParsedTopic, payload: bytes) -> None:
        if parsed.kind == KIND_LOGS:
            await self._store_log(parsed.device_id, payload)
        elif parsed.kind == KIND_STATE_REPORTED:
            await self._store_reported(parsed.device_id, payload)
        elif parsed.kind == KIND_OTA_PROGRESS:
            await self._store_ota_progress(parsed.device_id, payload)
        else:
            assert parsed.command_id is not None
            await self._store_result(parsed.device_id, parsed.command_id, payload)

    async def _store_statuses(self, reports: list[tuple[_Control, StatusReport]]) -> None:
        if not reports:
            return
        async with self._sessions() as session, session.begin():
            recorded = await devices.record_statuses(
                session,
                reports=[(item.parsed.device_id, report) for item, report in reports],
                offline_after_s=self._offline_after_s,
                transport="mqtt",
            )
            # The firmware version proves (or disproves) an update. A retained status the
            # broker replays on resubscription is old news: it may prove, never disprove.
            with_fw = [item.parsed.device_id for item, report in reports if report.fw]
            updating = await ota.devices_updating(session, with_fw)
            updates = ota.Changed.none()
            for item, report in reports:
                if item.parsed.device_id in updating:
                    changed = await ota.record_version(
                        session,
                        device_id=item.parsed.device_id,
                        fw=report.fw,
                        fresh=not item.message.retain,
                    )
                    updates.devices |= changed.devices
                    updates.jobs += changed.jobs
        for item, _report in reports:
            if item.parsed.device_id not in recorded:
                self._reject(
                    item.parsed.device_id,
                    "device_not_found",
                    f"device {item.parsed.device_id} not found",
                )
        if updates.jobs:
            await deliver_ota(self._control_plane, self._bus, updates)
        now_ms = epoch_ms()
        for device_id, status in recorded.items():
            if self._bus is not None:
                self._bus.publish(
                    devices.live_status(status.device, reason="status", now_ms=now_ms)
                )
            if status.reconnected and self._control_plane is not None:
                # The device (re)connected: its desired state, waiting commands and update
                # assignment go out, without holding up other devices' messages.
                task = asyncio.create_task(self._control_plane.device_online(device_id))
                self._retries.add(task)
                task.add_done_callback(self._retries.discard)

    async def _store_reported(self, device_id: str, payload: bytes) -> None:
        report = parse_state_document(payload)
        async with self._sessions() as session, session.begin():
            row = await control.record_reported(session, device_id=device_id, report=report)
        if self._bus is not None:
            self._bus.publish(control.state_event(row, now_ms=epoch_ms()))

    async def _store_result(self, device_id: str, command_id: str, payload: bytes) -> None:
        result = parse_command_result(payload)
        async with self._sessions() as session, session.begin():
            command = await control.record_result(
                session, device_id=device_id, command_id=command_id, result=result
            )
        if self._bus is not None:
            self._bus.publish(control.command_event(command, now_ms=epoch_ms()))

    async def _store_ota_progress(self, device_id: str, payload: bytes) -> None:
        report = parse_progress(payload)
        async with self._sessions() as session, session.begin():
            _job, changed = await ota.record_progress(session, device_id=device_id, report=report)
        await deliver_ota(self._control_plane, self._bus, changed)

    async def _store_log(self, device_id: str, payload: bytes) -> None:
        record = parse_log(payload, now_ms=epoch_ms())
        async with self._sessions() as session, session.begin():
            await devices.append_log(session, device_id=device_id, record=record)

    def _reject(self, device_id: str, reason: str, detail: str) -> None:
        INGEST_REJECTED.labels("mqtt", reason).inc()
        self._rejects.warn(device_id, reason, detail)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]
