"""How a simulated device reaches the server: its own MQTT connection (paho driven by
the event loop, no thread per device) or HTTP requests with its token.

Both raise `LinkError` with a short `kind` the summary counts by; a send returns only
once the server side acknowledged it (MQTT: the broker's PUBACK; HTTP: 202 after commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sensorium.protocol import status_topic, telemetry_topic

OFFLINE_STATUS = b'{"online": false}'
API_PREFIX = "/api/v1"


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


class Link(Protocol):
    """One device's connection to the server."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def send_status(self, payload: bytes) -> None: ...

    async def send_telemetry(self, payload: bytes) -> None: ...

    async def drop(self) -> None:
        """Leave the network like a device losing Wi-Fi (MQTT: the broker sends the will)."""

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
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._closed: asyncio.Event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

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
            reason = await asyncio.wait_for(asyncio.shield(self._connack), self._timeout_s)
        except TimeoutError:
            self._abort()
            raise LinkError("connect_timeout") from None
        if reason.is_failure:
            self._abort()
            raise LinkError("connect_refused", str(reason))

    async def send_status(self, payload: bytes) -> None:
        await self._publish(self._status_topic, payload, retain=True)

    async def send_telemetry(self, payload: bytes) -> None:
        await self._publish(self._telemetry_topic, payload, retain=False)

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
            reason = await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            # Unacknowledged: the connection is no good; the device will reconnect.
            self._abort()
            raise LinkError("ack_timeout") from None
        finally:
            self._pending.pop(info.mid, None)
        if reason.is_failure:
            # The broker refused it (not authorized, quota): the content will not get better.
            raise LinkError("publish_refused", str(reason), fatal=True)

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
                await asyncio.wait_for(self._closed.wait(), self._timeout_s)
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
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkError(kind))
        self._pending.clear()

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
    to hold; "connected" means the server accepted the device's last request."""

    def __init__(self, device_id: str, token: str, *, client: httpx.AsyncClient) -> None:
        self.device_id = device_id
        self._client = client
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        base = f"{API_PREFIX}/devices/{device_id}"
        self._status_path = f"{base}/status"
        self._telemetry_path = f"{base}/telemetry"
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        # Nothing to open: the first status report is what tells the server it is back.
        self._connected = True

    async def send_status(self, payload: bytes) -> None:
        await self._post(self._status_path, payload, expect=200)

    async def send_telemetry(self, payload: bytes) -> None:
        await self._post(self._telemetry_path, payload, expect=202)

    async def drop(self) -> None:
        self._connected = False

    async def close(self) -> None:
        self._connected = False

    def tick(self) -> None:
        return None

    async def _post(self, path: str, payload: bytes, *, expect: int) -> None:
        try:
            response = await self._client.post(path, content=payload, headers=self._headers)
        except httpx.TimeoutException:
            self._connected = False
            raise LinkError("http_timeout") from None
        except httpx.HTTPError as exc:
            self._connected = False
            raise LinkError("http_unreachable", str(exc)) from None
        status = response.status_code
        if status == expect:
            return
        if status == 429:
            raise LinkError("http_429", retry_after=_retry_after(response))
        detail = _error_message(response)
        if status in (400, 413, 415, 422):
            raise LinkError(f"http_{status}", detail, fatal=True)
        if status in (401, 403):
            self._connected = False
        raise LinkError(f"http_{status}", detail)


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
