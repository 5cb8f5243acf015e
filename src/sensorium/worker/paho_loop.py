"""paho-mqtt driven from the asyncio event loop, with the worker's own receive path.

With `loop_start()` paho reads the socket in its own thread and the event loop takes the
messages from it: two threads taking turns with the GIL, and with single-reading messages
the worker was CPU-bound (docs/benchmarks.md, "MQTT ingest", session 2: paho's thread 31 %
of the GIL samples, 17.7 % of it in `_handle_on_message` with its callback lock and topic
matcher). Here paho runs in the event loop's thread through its external-loop API:

- its socket is registered with `add_reader`/`add_writer` (`on_socket_open`,
  `on_socket_register_write`, ...), and `loop_write()` sends what paho queued;
- reads are ours: one `recv()` of up to `RECV_SIZE` bytes, cut into packets by
  `PacketReader`. A PUBLISH of QoS 0 or 1 without properties (what devices send) becomes a
  `Message` directly; every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a PUBLISH
  with properties, ...) is handed to paho's own `_packet_handle()`, as its `_packet_read()`
  would. paho reads each packet with two or three `recv()` calls and decodes it through
  several layers;
- PUBACKs: the acknowledgements due in one turn of the loop go out as one write (one
  `_packet_queue` entry holding all of them) instead of one `send()` each;
- connecting: the TCP connection is opened in a thread, so the event loop never blocks
  on it, then given to paho's `reconnect()`; a lost connection is retried every
  `RETRY_S`, like `loop_forever()` did with `reconnect_delay_set(0.1, 0.2)`; `loop_misc()`
  (keep-alive) runs every second.

This uses private parts of paho 2.2 (`_packet_queue`, `_packet_handle`, `_in_packet`,
`_sock`, `_create_socket_connection`, `_loop_rc_handle`); pyproject.toml pins
paho-mqtt >=2.2,<2.3, and tests/worker/test_paho_loop.py checks them against the
installed paho and a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from sensorium.aio import wait_for

log = logging.getLogger(__name__)

# One read takes at most this much: ~3,000 single-reading PUBLISH packets.
RECV_SIZE = 262_144
# Between attempts to reach the broker (a restarted Mosquitto 2.0 has lost the shared
# subscriptions, so workers must be back before devices; see MqttIngest.start).
RETRY_S = 0.2
CONNECT_TIMEOUT_S = 5.0
_PUBACK = 0x40


@dataclass(slots=True)
class Message:
    """A PUBLISH received: what the worker needs of paho's `MQTTMessage`."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


class ProtocolViolation(Exception):
    """The byte stream is not MQTT (a remaining length of more than 4 bytes)."""


class PacketReader:
    """Cuts a byte stream into MQTT packets. `feed` returns, in order, each packet as
    either a `Message` (a PUBLISH of QoS 0/1 with no properties, decoded here) or a
    `(first byte, rest of the packet)` pair for paho to decode. A packet split over reads
    is kept until complete; a large one is joined once, not once per read."""

    __slots__ = ("_have", "_need", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._have = 0
        # Bytes the first incomplete packet needs in all (0: its header is incomplete too).
        self._need = 0

    def clear(self) -> None:
        self._parts = []
        self._have = 0
        self._need = 0

    def feed(self, chunk: bytes) -> list[Message | tuple[int, bytes]]:
        self._parts.append(chunk)
        self._have += len(chunk)
        if self._have < self._need:
            return []
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        out: list[Message | tuple[int, bytes]] = []
        size = len(data)
        pos = 0
        need = 0
        while pos + 2 <= size:
            command = data[pos]
            # Remaining length: 1 to 4 bytes, 7 bits each.
            i = pos + 1
            length = 0
            shift = 0
            complete = False
            while i < size:
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolViolation("remaining length longer than 4 bytes")
            if not complete:
                break  # the remaining length itself is incomplete
            end = i + length
            if end > size:
                need = end - pos
                break
            qos_bits = command & 0x06
            if (command & 0xF0) == 0x30 and qos_bits != 0x06 and length >= 3:
                # PUBLISH: topic length, topic, [packet id], property length, payload.
                topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
                props = topic_end + 2 if qos_bits else topic_end
                if props < end and data[props] == 0:
                    topic = data[i + 2 : topic_end]
                    try:
                        name = topic.decode()
                    except UnicodeDecodeError:
                        out.append((command, data[i:end]))
                    else:
                        out.append(
                            Message(
                                name,
                                data[props + 1 : end],
                                (data[topic_end] << 8) | data[topic_end + 1] if qos_bits else 0,
                                qos_bits >> 1,
                                bool(command & 0x01),
                            )
                        )
                    pos = end
                    continue
            out.append((command, data[i:end]))
            pos = end
        rest = data[pos:] if pos < size else b""
        self._parts = [rest] if rest else []
        self._have = len(rest)
        self._need = need
        return out


class _Client(mqtt.Client):
    """paho's client, given a TCP connection opened elsewhere (in a thread)."""

    _opened: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self._opened = self._opened, None
        if sock is None:  # not through LoopDriver: paho's own (blocking) connect
            return super()._create_socket_connection()
        return sock


def new_client(client_id: str) -> mqtt.Client:
    """An MQTT 5 client with manual acknowledgements, for `LoopDriver`."""
    return _Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=True,
    )


class LoopDriver:
    """Runs `client` (made by `new_client`, host/port/credentials set, callbacks other than
    `on_message` and the socket ones set) on the running event loop.

    `on_messages` gets the PUBLISHes of each read, in order; `on_closed` is told, before
    anything else happens, that the connection is gone (acks of its messages must not be
    sent on the next one). Both are called in the event loop's thread, as are paho's own
    callbacks (`on_connect`, ...)."""

    def __init__(
        self,
        client: mqtt.Client,
        *,
        on_messages: Callable[[list[Message]], None],
        on_closed: Callable[[], None],
    ) -> None:
        assert isinstance(client, _Client), "make the client with new_client()"
        self._client: _Client = client
        self._on_messages = on_messages
        self._on_closed = on_closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader = PacketReader()
        self._sock: Any = None
        self._acks = bytearray()
        self._ack_flush_pending = False
        self._closed = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Set while paho decodes a packet: its `on_message` (a PUBLISH it decoded) adds to it.
        self._burst: list[Message] | None = None
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_message = self._paho_message

    # --- lifecycle -------------------------------------------------------------------

    def start(self, host: str, port: int, *, keepalive: int, **connect: Any) -> None:
        """Connect (and keep reconnecting) in the background; `connect` goes to paho's
        `connect_async` (clean_start, properties)."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(host, port, keepalive=keepalive, **connect)
        self._task = asyncio.create_task(self._keep_connected(host, port), name="mqtt-connection")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """After `client.disconnect()`: wait until the DISCONNECT is written and the socket
        closed, then stop reconnecting."""
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(TimeoutError):
                await wait_for(self._closed.wait(), timeout_s)
        if self._sock is not None:
            self._client._sock_close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _keep_connected(self, host: str, port: int) -> None:
        client = self._client
        while not self._stopping:
            if self._sock is None:
                try:
                    sock = await asyncio.to_thread(
                        socket.create_connection, (host, port), CONNECT_TIMEOUT_S
                    )
                except OSError as exc:
                    log.debug("MQTT broker %s:%s not reachable: %s", host, port, exc)
                    await asyncio.sleep(RETRY_S)
                    continue
                if self._stopping:
                    sock.close()
                    return
                client._opened = sock
                self._closed.clear()
                try:
                    client.reconnect()
                except OSError as exc:
                    log.debug("MQTT connect to %s:%s failed: %s", host, port, exc)
                    await asyncio.sleep(RETRY_S)
                    continue
            try:
                await wait_for(self._closed.wait(), 1.0)
            except TimeoutError:
                # Keep-alive: PINGREQ when due, and a broker that stopped answering is
                # taken for gone.
                client.loop_misc()
            else:
                await asyncio.sleep(RETRY_S / 2)

    # --- socket callbacks (paho calls them) --------------------------------------------

    def _socket_open(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._reader.clear()
        self._acks.clear()
        self._loop.add_reader(sock, self._readable)

    def _socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self._reader.clear()
            self._acks.clear()
            self._closed.set()
            self._on_closed()

    def _register_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _paho_message(
        self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        # A PUBLISH paho decoded (one with properties): in line with the others.
        burst = self._burst
        assert burst is not None
        burst.append(
            Message(
                message.topic,
                bytes(message.payload),
                message.mid,
                message.qos,
                bool(message.retain),
            )
        )

    # --- reading -----------------------------------------------------------------------

    def _readable(self) -> None:
        client = self._client
        sock = self._sock
        if sock is None:
            return
        try:
            chunk = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("MQTT socket read failed: %s", exc)
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        if not chunk:
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        client._last_bytes_received = time.monotonic()
        try:
            packets = self._reader.feed(chunk)
        except ProtocolViolation as exc:
            log.error("MQTT protocol error from the broker: %s", exc)
            client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            return
        burst: list[Message] = []
        failed = MQTTErrorCode.MQTT_ERR_SUCCESS
        for packet in packets:
            if type(packet) is Message:
                burst.append(packet)
                continue
            assert isinstance(packet, tuple)
            command, body = packet
            self._burst = burst
            try:
                rc = self._paho_handle(command, body)
            finally:
                self._burst = None
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                failed = rc
                break
            if self._sock is not sock:  # paho closed it (a DISCONNECT from the broker)
                break
        if burst:
            try:
                self._on_messages(burst)
            except Exception:
                log.exception("handing over %d MQTT message(s) failed", len(burst))
        if failed != MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is sock:
            client._loop_rc_handle(failed)

    def _paho_handle(self, command: int, body: bytes) -> MQTTErrorCode:
        """One packet through paho's decoder and handlers, as its `_packet_read` does."""
        client = self._client
        client._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc: MQTTErrorCode = client._packet_handle()
        except MalformedPacket as exc:
            log.debug("malformed MQTT packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            client._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }
        return rc

    # --- acknowledging -----------------------------------------------------------------

    def ack(self, mid: int) -> None:
        """A PUBACK (success) for `mid` on the current connection, written with the
        others of this turn of the loop. Dropped if the connection goes first."""
        if self._sock is None:
            return
        self._acks += bytes((_PUBACK, 2, mid >> 8, mid & 0xFF))
        if not self._ack_flush_pending:
            self._ack_flush_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_flush_pending = False
        sock = self._sock
        if not self._acks or sock is None:
            self._acks.clear()
            return
        packets = bytes(self._acks)
        self._acks.clear()
        client = self._client
        sent = 0
        if not client._out_packet:
            # Nothing of paho's waits to go out before them: straight to the socket.
            try:
                sent = sock.send(packets)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # paho's own write finds out and closes the connection
            else:
                client._last_msg_out = time.monotonic()
        if sent < len(packets):
            # The rest in one queue entry, written as paho writes any packet (partial
            # sends too), after what it already has queued.
            client._packet_queue(_PUBACK, packets[sent:], 0, 0)
