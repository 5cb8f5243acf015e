"""Two shortcuts in paho-mqtt's receive path, for the worker's single-reading messages.

With 3-value messages a worker was CPU-bound in paho's network thread, holding the GIL
(docs/benchmarks.md, "MQTT ingest"): 56 % of its time went to `decode_publish`, which for
every MQTT 5 PUBLISH builds a `Properties` object (two ~30-entry dicts filled through
`list.index` calls) and then `clear()`s it attribute by attribute, although devices send no
properties; another 12 % went to the `threading.Condition` each incoming message's
`MQTTMessageInfo` gets, which only `wait_for_publish()` on outgoing messages uses.

- `decode_publish`: an MQTT 5 PUBLISH whose property length is 0 is decoded here, with an
  empty `Properties` that shares prebuilt lookup tables (nothing ever writes into those
  tables: properties are set as instance attributes). Anything else (other protocol
  versions, properties present, QoS 3, a packet too short for what it claims) goes to
  paho's decoder, which also raises paho's errors for malformed packets.
- `MQTTMessageInfo`: its condition is created on first use, under a lock, so publishers
  that do wait still get exactly one.

Both replace private parts of paho, so they are installed only on the paho versions they
were checked against (tests/worker/test_paho_speedups.py compares the decoders on
generated packets); on any other version paho runs unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import paho.mqtt
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

# The paho releases whose `_packet.decode_publish`, `Properties` and `MQTTMessageInfo` these
# shortcuts were read against (pyproject.toml pins the same range).
SUPPORTED = ("2.2.",)

_original_decode: Callable[[int, bytes | bytearray, MQTTProtocolVersion], _packet.PublishPacket] = (
    _packet.decode_publish
)
_PublishPacket = _packet.PublishPacket
_MQTTv5 = MQTTProtocolVersion.MQTTv5
# An empty PUBLISH Properties: its __dict__ (packetType and the three lookup tables) is
# what each decoded message's copy starts from.
_EMPTY_PROPERTIES: dict[str, Any] = dict(
    Properties(PacketTypes.PUBLISH).__dict__  # type: ignore[no-untyped-call]
)
_new_object = object.__new__


def _empty_publish_properties() -> Properties:
    properties: Properties = _new_object(Properties)
    properties.__dict__.update(_EMPTY_PROPERTIES)
    return properties


def decode_publish(
    header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion
) -> _packet.PublishPacket:
    """paho's `decode_publish`, without its cost when the packet has no properties."""
    qos = (header & 0x06) >> 1
    size = len(packet)
    if protocol != _MQTTv5 or qos == 3 or size < 3:
        return _original_decode(header, packet, protocol)
    topic_end = 2 + ((packet[0] << 8) | packet[1])
    # The packet id (QoS 1 and 2), then the property length.
    properties_at = topic_end + 2 if qos else topic_end
    if properties_at >= size or packet[properties_at] != 0:
        return _original_decode(header, packet, protocol)
    with memoryview(packet) as view:
        topic = bytes(view[2:topic_end])
        payload = bytes(view[properties_at + 1 :])
    return _PublishPacket(
        dup=bool(header & 0x08),
        qos=qos,
        retain=bool(header & 0x01),
        topic=topic,
        mid=(packet[topic_end] << 8) | packet[topic_end + 1] if qos else 0,
        properties=_empty_publish_properties(),
        payload=payload,
    )


class LazyCondition:
    """A `threading.Condition` made on first use. paho's network thread (which marks
    outgoing messages published) and a publisher in `wait_for_publish()` may both be first:
    the lock makes sure they share one."""

    __slots__ = ("_condition",)
    _creating = threading.Lock()

    def __init__(self) -> None:
        self._condition: threading.Condition | None = None

    def _get(self) -> threading.Condition:
        condition = self._condition
        if condition is None:
            with LazyCondition._creating:
                condition = self._condition
                if condition is None:
                    condition = self._condition = threading.Condition()
        return condition

    def __enter__(self) -> bool:
        return self._get().__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._get().__exit__(kind, exc, traceback)

    def wait(self, timeout: float | None = None) -> bool:
        return self._get().wait(timeout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        return self._get().wait_for(predicate, timeout)

    def notify(self, n: int = 1) -> None:
        self._get().notify(n)

    def notify_all(self) -> None:
        self._get().notify_all()


def _message_info_init(self: paho_client.MQTTMessageInfo, mid: int) -> None:
    # paho 2.2's MQTTMessageInfo.__init__, with the condition made lazily.
    self.mid = mid
    self._published = False
    self._condition = LazyCondition()  # type: ignore[assignment]
    self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    self._iterpos = 0


_installed = False


def supported(version: str = paho.mqtt.__version__) -> bool:
    return version.startswith(SUPPORTED)


def install() -> bool:
    """Install both shortcuts, once per process; False (and paho unchanged) on a paho
    version they were not checked against."""
    global _installed
    if _installed:
        return True
    if not supported():
        log.info(
            "paho-mqtt %s: its PUBLISH decoding is used as is (the worker's shortcuts "
            "were checked against %s)",
            paho.mqtt.__version__,
            ", ".join(f"{v}x" for v in SUPPORTED),
        )
        return False
    _packet.decode_publish = decode_publish
    paho_client.MQTTMessageInfo.__init__ = _message_info_init  # type: ignore[method-assign]
    _installed = True
    return True
