"""The worker's shortcuts in paho-mqtt's receive path decode exactly as paho does, and the
lazily made condition still serves publishers that wait."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sensorium.worker import paho_speedups

V5 = MQTTProtocolVersion.MQTTv5
paho_decode = paho_speedups._original_decode
fast_decode = paho_speedups.decode_publish


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# PUBLISH properties, set through paho's own Properties (which checks them) and packed by it.
publish_properties = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": st.text(max_size=20),
        "ResponseTopic": st.text(min_size=1, max_size=40),
        "CorrelationData": st.binary(max_size=20),
        "SubscriptionIdentifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3),
        "TopicAlias": st.integers(1, 65535),
        "UserProperty": st.lists(
            st.tuples(st.text(max_size=10), st.text(max_size=10)), min_size=1, max_size=3
        ),
    },
)


def _packed(values: dict[str, Any]) -> bytes:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(properties, name, value)
    packed: bytes = properties.pack()  # type: ignore[no-untyped-call]
    return packed


# What follows the packet id: no properties (b"\0", what devices send), real ones, a
# property length written in more bytes than needed, or anything at all.
property_sections = st.one_of(
    st.just(b"\x00"),
    publish_properties.map(_packed),
    st.just(b"\x80\x00"),
    st.binary(max_size=12),
)
topics = st.one_of(
    st.text(max_size=80).map(str.encode),
    st.sampled_from(["devices/02000000000a/telemetry", "$share/sensorium/devices/+/status"]).map(
        str.encode
    ),
    st.integers(1000, 65535).map(lambda n: b"d/" * (n // 2) + b"x" * (n % 2)),
    st.binary(max_size=30),  # not UTF-8, decoded all the same
)


@st.composite
def publish_packets(draw: st.DrawFn) -> tuple[int, bytes]:
    qos = draw(st.integers(0, 3))
    header = 0x30 | (0x08 if draw(st.booleans()) else 0) | qos << 1
    header |= 0x01 if draw(st.booleans()) else 0
    topic = draw(topics)
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += draw(st.integers(0, 65535)).to_bytes(2, "big")
    body += draw(property_sections)
    body += draw(st.binary(max_size=300))
    # Now and then a packet cut short, or with a topic length beyond its end.
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    return header, body if cut is None else body[:cut]


def _outcome(decode: Any, header: int, packet: bytes | bytearray, protocol: Any) -> Any:
    try:
        result = decode(header, packet, protocol)
    except Exception as exc:  # paho's errors must be the same, type and text
        return ("error", type(exc), str(exc))
    properties = result.properties
    return (
        result._replace(properties=None),
        type(result.topic),
        type(result.payload),
        None
        if properties is None
        else (
            type(properties),
            properties.packetType,
            vars(properties),
            str(properties),
            properties.json(),
            properties.isEmpty(),
        ),
    )


@settings(max_examples=3000, deadline=None)
@given(
    packet=publish_packets(),
    protocol=st.sampled_from(list(MQTTProtocolVersion)),
    as_bytearray=st.booleans(),
)
def test_the_fast_path_decodes_exactly_like_paho(
    packet: tuple[int, bytes], protocol: MQTTProtocolVersion, as_bytearray: bool
) -> None:
    header, body = packet
    # paho hands its decoder the bytearray it read into.
    data = bytearray(body) if as_bytearray else body
    assert _outcome(fast_decode, header, data, protocol) == _outcome(
        paho_decode, header, data, protocol
    )


def test_the_packets_devices_send_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not just equal results: paho's decoder is not called for them."""
    called: list[int] = []

    def spy(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion) -> Any:
        called.append(header)
        return paho_decode(header, packet, protocol)

    monkeypatch.setattr(paho_speedups, "_original_decode", spy)
    topic = b"devices/02000000000a/telemetry"
    payload = b'{"ts":1,"values":{"t":1}}'
    for qos in (0, 1, 2):
        body = len(topic).to_bytes(2, "big") + topic + (b"\x01\x02" if qos else b"")
        result = fast_decode(0x30 | qos << 1, bytearray(body + b"\x00" + payload), V5)
        assert (result.topic, result.payload, result.qos) == (topic, payload, qos)
        assert result.mid == (0x0102 if qos else 0)
    assert called == []
    with_alias = len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + b"\x03\x23\x00\x07"
    aliased = fast_decode(0x32, with_alias + payload, V5)
    assert aliased.properties is not None
    assert getattr(aliased.properties, "TopicAlias", None) == 7
    assert called == [0x32]


def test_decoded_properties_are_each_messages_own() -> None:
    body = b"\x00\x01t\x00\x05\x00"
    first = fast_decode(0x32, body, V5).properties
    second = fast_decode(0x32, body, V5).properties
    assert first is not None
    assert second is not None
    assert first is not second
    first.UserProperty = ("a", "1")
    first.ContentType = "text/plain"
    assert second.isEmpty()  # type: ignore[no-untyped-call]
    assert not hasattr(second, "UserProperty")
    # The shared lookup tables are unchanged: a new object from paho is empty and packs so.
    fresh = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    assert fresh.isEmpty()  # type: ignore[no-untyped-call]
    assert fresh.pack() == b"\x00"  # type: ignore[no-untyped-call]
    assert vars(second) == vars(fresh)


def test_only_checked_paho_versions_get_the_shortcuts() -> None:
    assert paho_speedups.supported("2.2.0")
    assert paho_speedups.supported("2.2.3")
    assert not paho_speedups.supported("2.1.0")
    assert not paho_speedups.supported("2.3.0")
    assert not paho_speedups.supported("3.0.0")
    assert paho_speedups.install()
    # paho's client calls the module attribute, so this is what its network thread uses.
    assert _packet.decode_publish is paho_speedups.decode_publish


def test_a_publisher_waiting_for_its_message_is_woken() -> None:
    assert paho_speedups.install()
    info = paho_client.MQTTMessageInfo(5)
    assert isinstance(info._condition, paho_speedups.LazyCondition)
    assert (info.rc, info.mid, list(info), info[1]) == (
        MQTTErrorCode.MQTT_ERR_SUCCESS,
        5,
        [0, 5],
        5,
    )
    assert not info.is_published()
    waiter = threading.Thread(target=info.wait_for_publish)
    waiter.start()
    threading.Timer(0.05, info._set_as_published).start()
    waiter.join(5)
    assert not waiter.is_alive()
    assert info.is_published()


def test_threads_first_using_a_condition_together_share_one() -> None:
    for _ in range(200):
        lazy = paho_speedups.LazyCondition()
        seen: list[threading.Condition] = []
        start = threading.Barrier(4)

        def use(
            lazy: paho_speedups.LazyCondition = lazy,
            seen: list[Any] = seen,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            seen.append(lazy._get())

        threads = [threading.Thread(target=use) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(c) for c in seen}) == 1
