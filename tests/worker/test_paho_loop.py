"""The worker's own receive path (worker/paho_loop.py): the packets of a byte stream come
out whole and in order however the stream is cut into reads; a device's PUBLISH is decoded
as paho decodes it, anything else goes to paho untouched; PUBACKs of one turn go out in
one write."""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTProtocolVersion

from sensorium.worker import paho_loop, paho_speedups
from sensorium.worker.paho_loop import LoopDriver, Message, PacketReader
from tests.worker.test_paho_speedups import _varint

paho_decode = paho_speedups._original_decode


@st.composite
def publishes(draw: st.DrawFn) -> tuple[int, bytes]:
    qos = draw(st.integers(0, 3))
    header = 0x30 | (0x08 if draw(st.booleans()) else 0) | qos << 1
    header |= 0x01 if draw(st.booleans()) else 0
    topic = draw(
        st.one_of(
            st.sampled_from([b"devices/02000000000a/telemetry", b"devices/x/status"]),
            st.text(max_size=40).map(str.encode),
            st.binary(max_size=20),  # not always UTF-8
        )
    )
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += draw(st.integers(0, 65535)).to_bytes(2, "big")
    # No properties (what devices send), some, or a length in more bytes than needed.
    body += draw(st.sampled_from([b"\x00", b"\x00", b"\x02\x01\x01", b"\x80\x00"]))
    body += draw(st.one_of(st.binary(max_size=200), st.binary(min_size=1000, max_size=20_000)))
    # Now and then a topic length beyond the packet's end.
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    return header, body if cut is None else body[:cut]


others = st.sampled_from(
    [
        (0xD0, b""),  # PINGRESP
        (0x20, b"\x01\x00\x00"),  # CONNACK
        (0x90, b"\x00\x01\x00\x01"),  # SUBACK
        (0xE0, b"\x00\x00"),  # DISCONNECT
    ]
)


def _wire(command: int, body: bytes) -> bytes:
    return bytes([command]) + _varint(len(body)) + body


def _expected(command: int, body: bytes) -> Message | tuple[int, bytes]:
    """A Message where the fast path applies (paho's own decoding says what it holds),
    else the packet as it came."""
    qos = (command & 0x06) >> 1
    if command & 0xF0 != 0x30 or qos == 3 or len(body) < 3:
        return (command, body)
    topic_end = 2 + int.from_bytes(body[:2], "big")
    props = topic_end + 2 if qos else topic_end
    if props >= len(body) or body[props] != 0:
        return (command, body)
    decoded = paho_decode(command, body, MQTTProtocolVersion.MQTTv5)
    try:
        topic = decoded.topic.decode()
    except UnicodeDecodeError:
        return (command, body)
    return Message(topic, bytes(decoded.payload), decoded.mid, decoded.qos, decoded.retain)


@settings(max_examples=400, deadline=None)
@given(
    packets=st.lists(st.one_of(publishes(), others), min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 100_000), max_size=40),
)
def test_packets_come_out_whole_and_in_order_however_the_stream_is_cut(
    packets: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(_wire(c, b) for c, b in packets)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = PacketReader()
    out: list[Any] = []
    for start, end in itertools.pairwise(points):
        out += reader.feed(stream[start:end])
    assert out == [_expected(c, b) for c, b in packets]
    assert reader._have == 0
    assert not reader._parts


def test_a_large_packet_read_in_many_pieces_is_joined_once() -> None:
    body = b"\x00\x05a/b/c\x00\x07\x00" + b"x" * 1_000_000
    stream = _wire(0x32, body)
    reader = PacketReader()
    joins = 0
    for i in range(0, len(stream), 4096):
        got = reader.feed(stream[i : i + 4096])
        if got:
            joins += 1
            assert got == [Message("a/b/c", b"x" * 1_000_000, 7, 1, False)]
        else:
            # Until the packet is complete only the pieces are kept, nothing is parsed.
            assert len(reader._parts) == i // 4096 + 1
    assert joins == 1


def test_a_remaining_length_of_five_bytes_is_a_protocol_violation() -> None:
    reader = PacketReader()
    try:
        reader.feed(b"\x30\xff\xff\xff\xff\x01")
    except paho_loop.ProtocolViolation:
        return
    raise AssertionError("not refused")


async def test_the_acks_of_one_turn_go_out_in_one_write() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = paho_loop.new_client("test")
    driver = LoopDriver(client, on_messages=lambda _b: None, on_closed=lambda: None)
    driver._loop = asyncio.get_running_loop()
    client._sock = ours
    driver._socket_open(client, None, ours)
    sends: list[bytes] = []

    class Counting:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

        def send(self, data: bytes) -> int:
            sends.append(data)
            return self._sock.send(data)

        def fileno(self) -> int:
            return self._sock.fileno()

    driver._sock = Counting(ours)
    try:
        for mid in (1, 300, 65535):
            driver.ack(mid)
        assert sends == []  # not before the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sends == [b"\x40\x02\x00\x01" + b"\x40\x02\x01\x2c" + b"\x40\x02\xff\xff"]
        assert theirs.recv(100) == sends[0]
        # Gone with the connection: acks not yet written are dropped, not sent on the next.
        driver.ack(2)
        driver._socket_close(client, None, driver._sock)
        await asyncio.sleep(0)
        assert len(sends) == 1
    finally:
        client._sock = None
        ours.close()
        theirs.close()
