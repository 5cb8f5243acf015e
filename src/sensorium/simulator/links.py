"""How a simulated device reaches the server: its own MQTT connection (paho driven by
the event loop, no thread per device) or HTTP requests with its token.

Both raise `LinkError` with a short `kind` the summary counts by; a send returns only
once the server side acknowledged it (MQTT: the broker's PUBACK; HTTP: 2xx after commit).
Downlink (desired state, commands, the firmware update assignment) goes to the device's
`DownlinkSink`: MQTT delivers it on the device's subscriptions, HTTP long-polls for it
while the device is online.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Collection
from concurrent.futures import Executor
from typing import Any, Protocol

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sensorium.aio import wait_for
from sensorium.protocol import (
    CommandMessage,
    PayloadError,
    StateDocument,
    command_result_topic,
    commands_topic,
    ota_progress_topic,
    ota_topic,
    parse_command_message,
    parse_state_document,
    state_desired_topic,
    state_reported_topic,
    status_topic,
    telemetry_topic,
    validate_command_message,
    validate_state_document,
)
from sensorium.protocol.ota import OtaAssignment, parse_assignment, validate_assignment

OFFLINE_STATUS = b'{"online": false}'
API_PREFIX = "/api/v1"
# MQTT 5 PUBACK reason 0x10: accepted, but no subscription matched.
NO_MATCHING_SUBSCRIBERS = 0x10
# Statuses after which sending the same document again cannot succeed.
_REFUSED = frozenset({400, 413, 415, 422})


class LinkError(Exception):
    """A send or connect that did not go through; `kind` is the counted reason, `retry_after`
    a server-requested pause (HTTP 429), `fatal` means retrying the same document is
    pointless (the server refused its content)."""

    def __init__(
        self, kind: str, detail: str = "", *, retry_after: float | None = None, fatal: bool = False
    ) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.retry_after = retry_after
        self.fatal = fatal


class DownlinkSink(Protocol):
    """Where a link delivers what the server sent the device (called on the event loop,
    possibly from inside a paho callback: it must not block or await)."""

    def on_desired(self, doc: StateDocument) -> None: ...

    def on_command(self, message: CommandMessage) -> None: ...

    def on_ota(self, assignment: OtaAssignment | None) -> None:
        """The firmware update assignment in force (None: there is none, or it was
        withdrawn). Only links made with `ota=True` deliver it."""

    def on_link_error(self, kind: str) -> None:
        """A downlink problem the device itself does not see (counted like send errors)."""


class Link(Protocol):
    """One device's connection to the server."""

    @property
    def connected(self) -> bool: ...

    def attach(self, sink: DownlinkSink) -> None:
        """Receive downlink from now on (from the next `connect`); without a sink the
        link neither subscribes nor polls."""

    async def connect(self) -> None: ...

    async def send_status(self, payload: bytes) -> None: ...

    async def send_telemetry(self, payload: bytes) -> None: ...

    async def send_reported(self, payload: bytes) -> None: ...

    async def send_result(self, command_id: str, payload: bytes) -> None: ...

    async def send_ota_progress(self, payload: bytes) -> None: ...

    async def drop(self) -> None:
        """Leave the network like a device losing Wi-Fi (MQTT: the broker sends the will)."""

    async def close(self) -> None:
        """Release everything (idempotent; after `drop` too)."""

    def tick(self) -> None:
        """Housekeeping once a second (MQTT keep-alive)."""


class MqttLink:
    """A device's MQTT 5 connection: client id and user name = device id, password = token,
    last will `{"online": false}` retained on its status topic.

    paho does the protocol; the event loop does the I/O through paho's socket callbacks, so
    thousands of links share one thread. A fresh paho client per connection keeps a lost
    connection's in-flight messages from being replayed behind the device's back: the
    device re-sends what was not acknowledged itself, from its outbox.
    """

    def __init__(
        self,
        device_id: str,
        token: str,
        *,
        host: str,
        port: int,
        executor: Executor,
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
        ota: bool = False,
    ) -> None:
        self.device_id = device_id
        self._token = token
        self._host = host
        self._port = port
        self._executor = executor
        self._keepalive_s = keepalive_s
        self._timeout_s = timeout_s
        self._status_topic = status_topic(device_id)
        self._telemetry_topic = telemetry_topic(device_id)
        self._reported_topic = state_reported_topic(device_id)
        self._desired_topic = state_desired_topic(device_id)
        self._commands_topic = commands_topic(device_id)
        # The retained assignment, when the device follows updates.
        self._ota_topic = ota_topic(device_id) if ota else None
        self._ota_progress_topic = ota_progress_topic(device_id)
        self._sink: DownlinkSink | None = None
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._closed: asyncio.Event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    def attach(self, sink: DownlinkSink) -> None:
        self._sink = sink

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.username_pw_set(self.device_id, self._token)
        client.will_set(self._status_topic, OFFLINE_STATUS, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        sockets = _LoopSockets(loop)
        client.on_socket_open = sockets.opened
        client.on_socket_close = sockets.closed
        client.on_socket_register_write = sockets.want_write
        client.on_socket_unregister_write = sockets.wrote
        self._connack = loop.create_future()
        self._closed = asyncio.Event()
        self._client = client
        try:
            # connect() resolves and opens the TCP connection synchronously: keep it off
            # the loop (a slow or remote broker would stall every other device).
            await loop.run_in_executor(
                self._executor,
                functools.partial(
                    client.connect, self._host, self._port, keepalive=self._keepalive_s
                ),
            )
        except OSError as exc:
            self._client = None
            raise LinkError("connect_failed", str(exc)) from None
        try:
            reason = await wait_for(asyncio.shield(self._connack), self._timeout_s)
        except TimeoutError:
            self._abort()
            raise LinkError("connect_timeout") from None
        if reason.is_failure:
            self._abort()
            raise LinkError("connect_refused", str(reason))
        if self._sink is not None:
            await self._subscribe(client, self._sink)

    async def _subscribe(self, client: mqtt.Client, sink: DownlinkSink) -> None:
        """Subscribe to the device's desired state and OTA assignment (retained: they
        arrive at once) and commands. A refusal is counted but the connection kept:
        telemetry still works."""
        topics = [(self._desired_topic, 1), (self._commands_topic, 1)]
        if self._ota_topic is not None:
            topics.append((self._ota_topic, 1))
        result, mid = client.subscribe(topics)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self._abort()
            raise LinkError("subscribe_failed", mqtt.error_string(result))
        future: asyncio.Future[list[ReasonCode]] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = future
        try:
            reasons = await wait_for(future, self._timeout_s)
        except TimeoutError:
            self._abort()
            raise LinkError("subscribe_timeout") from None
        finally:
            self._subacks.pop(mid, None)
        if any(reason.is_failure for reason in reasons):
            sink.on_link_error("subscribe_refused")

    async def send_status(self, payload: bytes) -> None:
        await self._publish(self._status_topic, payload, retain=True)

    async def send_telemetry(self, payload: bytes) -> None:
        await self._publish(self._telemetry_topic, payload, retain=False)

    async def send_reported(self, payload: bytes) -> None:
        await self._publish(self._reported_topic, payload, retain=False)

    async def send_result(self, command_id: str, payload: bytes) -> None:
        await self._publish(command_result_topic(self.device_id, command_id), payload, retain=False)

    async def send_ota_progress(self, payload: bytes) -> None:
        await self._publish(self._ota_progress_topic, payload, retain=False)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        client = self._client
        if client is None or not client.is_connected():
            raise LinkError("not_connected")
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError("publish_failed", mqtt.error_string(info.rc))
        future = asyncio.get_running_loop().create_future()
        self._pending[info.mid] = future
        try:
            reason = await wait_for(future, self._timeout_s)
        except TimeoutError:
            # Unacknowledged: the connection is no good; the device will reconnect.
            self._abort()
            raise LinkError("ack_timeout") from None
        finally:
            self._pending.pop(info.mid, None)
        if reason.is_failure:
            # The broker refused it (not authorized, quota): the content will not get better.
            raise LinkError("publish_refused", str(reason), fatal=True)
        if reason.value == NO_MATCHING_SUBSCRIBERS and not retain:
            # Accepted but given to nobody: no ingest worker is subscribed (none runs yet,
            # or a restarted Mosquitto 2.0 lost the workers' shared subscriptions and they
            # have not subscribed again). Keep it and send it again after a back-off; a
            # re-send is stored once (docs/PROTOCOL.md). A retained message stays with the
            # broker for whoever subscribes, so it is not re-sent.
            raise LinkError("no_subscribers", str(reason))

    async def drop(self) -> None:
        """Disconnect with reason 0x04 (with will message): the broker publishes the will at
        once, as it would after the keep-alive of a device that lost Wi-Fi."""
        await self._disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))

    async def close(self) -> None:
        """A clean disconnect (no will)."""
        await self._disconnect(None)

    async def _disconnect(self, reason: ReasonCode | None) -> None:
        client = self._client
        if client is None:
            return
        if client.is_connected():
            client.disconnect(reasoncode=reason)
            with contextlib.suppress(TimeoutError):
                await wait_for(self._closed.wait(), self._timeout_s)
        self._abort()

    def tick(self) -> None:
        client = self._client
        if client is not None:
            client.loop_misc()

    def _abort(self) -> None:
        """Close the socket now, whatever state the connection is in."""
        client, self._client = self._client, None
        if client is not None:
            # paho has no public "close now"; disconnect() would wait for the DISCONNECT to
            # be written, which is what a stuck connection cannot do.
            client._sock_close()
        self._fail_pending("connection_lost")
        self._closed.set()

    def _fail_pending(self, kind: str) -> None:
        for waiting in (self._pending, self._subacks):
            for future in waiting.values():
                if not future.done():
                    future.set_exception(LinkError(kind))
            waiting.clear()

    # --- paho callbacks (event loop thread) -------------------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(
        self, client: mqtt.Client, _u: Any, _flags: Any, _reason: ReasonCode, _p: Any
    ) -> None:
        if client is not self._client:
            return
        self._fail_pending("connection_lost")
        self._closed.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(reason)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        future = self._subacks.get(mid)
        if future is not None and not future.done():
            future.set_result(list(reasons))

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        sink = self._sink
        if sink is None or client is not self._client:
            return
        payload = bytes(message.payload)
        try:
            if message.topic == self._ota_topic:
                # Empty: the assignment was withdrawn (finished or cancelled).
                sink.on_ota(parse_assignment(payload))
            elif not payload:
                return  # an empty retained message only clears the topic
            elif message.topic == self._desired_topic:
                sink.on_desired(parse_state_document(payload))
            elif message.topic == self._commands_topic:
                sink.on_command(parse_command_message(payload))
        except PayloadError:
            sink.on_link_error("bad_downlink")


class _LoopSockets:
    """paho's socket callbacks, wired to the event loop. paho calls them from whichever
    thread runs it (connect() runs in the executor), so registering goes through
    call_soon_threadsafe; unregistering happens on the loop (paho closes sockets there)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def opened(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._loop.call_soon_threadsafe(self._add_reader, sock, client.loop_read)

    def want_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._loop.call_soon_threadsafe(self._add_writer, sock, client.loop_write)

    def closed(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)

    def wrote(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    # The socket may be closed already (connection refused) when these run.

    def _add_reader(self, sock: Any, callback: Callable[[], Any]) -> None:
        if sock.fileno() >= 0:
            self._loop.add_reader(sock, callback)

    def _add_writer(self, sock: Any, callback: Callable[[], Any]) -> None:
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, callback)


class HttpLink:
    """A device on the HTTP API: `Authorization: Bearer <token>`. There is no connection
    to hold; "connected" means the server accepted the device's last request.

    While connected and given a sink, two long-polls run (like the firmware's): one for
    commands, one for the desired state (ETag / `If-None-Match`), which also carries the
    OTA assignment (`ota`, delivered when the link was made with `ota=True`). They stop on
    `drop` and `close`, and start over on `connect`: the first state request asks without
    an ETag, so the device reports what it holds after every (re)connect. Long-polls may
    use their own client (`poll_client`): each waits up to `poll_wait_s` on a connection
    of its own.
    """

    def __init__(
        self,
        device_id: str,
        token: str,
        *,
        client: httpx.AsyncClient,
        poll_client: httpx.AsyncClient | None = None,
        poll_wait_s: int = 30,
        timeout_s: float = 10.0,
        max_backoff_s: float = 60.0,
        min_poll_gap_s: float = 0.5,
        ota: bool = False,
    ) -> None:
        self.device_id = device_id
        self._client = client
        self._poll_client = poll_client or client
        self._poll_wait_s = poll_wait_s
        self._poll_timeout = httpx.Timeout(timeout_s, read=poll_wait_s + timeout_s)
        self._max_backoff_s = max_backoff_s
        self._min_poll_gap_s = min_poll_gap_s
        self._auth = {"Authorization": f"Bearer {token}"}
        self._headers = {**self._auth, "Content-Type": "application/json"}
        self._base = f"{API_PREFIX}/devices/{device_id}"
        self._status_path = f"{self._base}/status"
        self._telemetry_path = f"{self._base}/telemetry"
        self._reported_path = f"{self._base}/state/reported"
        self._state_path = f"{self._base}/state"
        self._commands_path = f"{self._base}/commands"
        self._ota_progress_path = f"{self._base}/ota/progress"
        self._ota = ota
        self._rng = random.Random(f"sensorium-sim/{device_id}/http-poll")
        self._sink: DownlinkSink | None = None
        self._polls: list[asyncio.Task[None]] = []
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    def attach(self, sink: DownlinkSink) -> None:
        self._sink = sink

    async def connect(self) -> None:
        # Nothing to open: the first status report is what tells the server it is back.
        await self._stop_polls()
        self._connected = True
        sink = self._sink
        if sink is not None:
            name = f"sim-poll-{self.device_id}"
            self._polls = [
                asyncio.create_task(self._poll_state(sink), name=f"{name}-state"),
                asyncio.create_task(self._poll_commands(sink), name=f"{name}-commands"),
            ]

    async def send_status(self, payload: bytes) -> None:
        await self._post(self._status_path, payload, expect={200})

    async def send_telemetry(self, payload: bytes) -> None:
        await self._post(self._telemetry_path, payload, expect={202})

    async def send_reported(self, payload: bytes) -> None:
        await self._post(self._reported_path, payload, expect={200, 202, 204})

    async def send_result(self, command_id: str, payload: bytes) -> None:
        # 404 (no such command) and 409 (finished or expired meanwhile) will not change.
        await self._post(
            f"{self._commands_path}/{command_id}/result",
            payload,
            expect={200, 202, 204},
            refused=_REFUSED | {404, 409},
        )

    async def send_ota_progress(self, payload: bytes) -> None:
        # 404 (no such job) and 409 (finished or cancelled meanwhile) will not change.
        await self._post(
            self._ota_progress_path, payload, expect={200}, refused=_REFUSED | {404, 409}
        )

    async def drop(self) -> None:
        self._connected = False
        await self._stop_polls()

    async def close(self) -> None:
        self._connected = False
        await self._stop_polls()

    def tick(self) -> None:
        return None

    async def _stop_polls(self) -> None:
        polls, self._polls = self._polls, []
        for task in polls:
            task.cancel()
        results = await asyncio.gather(*polls, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and self._sink is not None:
                self._sink.on_link_error(f"crash:{type(result).__name__}")

    async def _post(
        self,
        path: str,
        payload: bytes,
        *,
        expect: Collection[int],
        refused: Collection[int] = _REFUSED,
    ) -> None:
        try:
            response = await self._client.post(path, content=payload, headers=self._headers)
        except httpx.TimeoutException:
            self._connected = False
            raise LinkError("http_timeout") from None
        except httpx.HTTPError as exc:
            self._connected = False
            raise LinkError("http_unreachable", str(exc)) from None
        status = response.status_code
        if status in expect:
            return
        if status == 429:
            raise LinkError("http_429", retry_after=_retry_after(response))
        detail = _error_message(response)
        if status in refused:
            raise LinkError(f"http_{status}", detail, fatal=True)
        if status in (401, 403):
            self._connected = False
        raise LinkError(f"http_{status}", detail)

    # --- long-polls ---------------------------------------------------------------------

    async def _poll_state(self, sink: DownlinkSink) -> None:
        etag: str | None = None
        backoff = 1.0
        while True:
            started = time.monotonic()
            if etag is None:
                # Right after (re)connect: the current state at once, whatever changed.
                headers, params = self._auth, {}
            else:
                headers = {**self._auth, "If-None-Match": etag}
                params = {"wait": str(self._poll_wait_s)}
            response = await self._poll(self._state_path, headers, params, sink)
            if response is None or response.status_code not in (200, 304):
                if response is not None:
                    self._poll_failed(response, sink)
                backoff = await self._backoff(response, backoff)
                continue
            backoff = 1.0
            if response.status_code == 200:
                etag = response.headers.get("ETag")
                try:
                    body = response.json()
                    version = body.get("desired_version") or 0
                    doc = validate_state_document({"version": version, "state": body["desired"]})
                    found = body.get("ota") if self._ota else None
                    assignment = validate_assignment(found) if found is not None else None
                except (ValueError, KeyError, TypeError, AttributeError, PayloadError):
                    sink.on_link_error("bad_downlink")
                    await asyncio.sleep(self._jitter(backoff))
                    continue
                sink.on_desired(doc)
                if self._ota:
                    sink.on_ota(assignment)
                if etag is None:
                    # A server without ETags cannot long-poll: ask again now and then.
                    await asyncio.sleep(self._poll_wait_s)
            await self._pace(started)

    async def _poll_commands(self, sink: DownlinkSink) -> None:
        backoff = 1.0
        params = {"wait": str(self._poll_wait_s)}
        while True:
            started = time.monotonic()
            response = await self._poll(self._commands_path, self._auth, params, sink)
            if response is None or response.status_code not in (200, 204):
                if response is not None:
                    self._poll_failed(response, sink)
                backoff = await self._backoff(response, backoff)
                continue
            backoff = 1.0
            if response.status_code == 200:
                try:
                    messages: Any = response.json()
                except ValueError:
                    messages = None
                if not isinstance(messages, list):
                    sink.on_link_error("bad_downlink")
                    messages = []
                for doc in messages:
                    try:
                        command = validate_command_message(doc)
                    except PayloadError:
                        sink.on_link_error("bad_downlink")
                        continue
                    sink.on_command(command)
            await self._pace(started)

    async def _poll(
        self, path: str, headers: dict[str, str], params: dict[str, str], sink: DownlinkSink
    ) -> httpx.Response | None:
        try:
            return await self._poll_client.get(
                path, headers=headers, params=params, timeout=self._poll_timeout
            )
        except httpx.TimeoutException:
            sink.on_link_error("http_timeout")
        except httpx.HTTPError:
            sink.on_link_error("http_unreachable")
        return None

    def _poll_failed(self, response: httpx.Response, sink: DownlinkSink) -> None:
        # 401/403: token revoked or replaced; 404: device deleted, or a server without the
        # endpoint; 429 and 5xx: busy. All of them: count and ask again later.
        sink.on_link_error(f"http_{response.status_code}")

    async def _backoff(self, response: httpx.Response | None, backoff: float) -> float:
        if response is not None and response.status_code == 429:
            await asyncio.sleep(_retry_after(response))
        else:
            await asyncio.sleep(self._jitter(backoff))
        return min(backoff * 2, self._max_backoff_s)

    async def _pace(self, started: float) -> None:
        # A server that answers at once (no long-poll, or a bug) must not be hammered.
        rest = self._min_poll_gap_s - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)

    def _jitter(self, seconds: float) -> float:
        return seconds * self._rng.uniform(0.8, 1.2)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.1, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
