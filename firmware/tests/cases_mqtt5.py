"""mqtt5: packets byte by byte (MQTT 5.0 spec), and the client's exchanges over a wire
that answers with scripted bytes: acknowledgements by reason code, downlink messages
while it waits, malformed packets, timeouts."""

import errno

from casekit import raises
from sensorium_fw import mqtt5


class Wire:
    """A connected socket: `incoming` is what the broker sends, `sent` what went out.
    Empty, it times out (or says EAGAIN without a timeout) as a socket does."""

    def __init__(self, incoming=b""):
        self.incoming = bytearray(incoming)
        self.sent = bytearray()
        self.timeout = None
        self.closed = False

    def settimeout(self, timeout):
        self.timeout = timeout

    def sendall(self, data):
        self.sent += data

    def recv(self, n):
        if not self.incoming:
            raise OSError(errno.EAGAIN if self.timeout == 0 else errno.ETIMEDOUT)
        out = bytes(self.incoming[:n])
        self.incoming = self.incoming[n:]
        return out

    def close(self):
        self.closed = True


CONNACK_OK = b"\x20\x03\x00\x00\x00"
TOKEN = "tok"


def connected(after_connack=b"", keepalive=60):
    got = []
    client = mqtt5.Client("dev1", "broker", keepalive=keepalive)
    client.set_callback(lambda topic, payload: got.append((topic, payload)))
    wire = Wire(CONNACK_OK + after_connack)
    client.connect(wire)
    wire.sent = bytearray()
    return client, wire, got


def case_variable_byte_integers():
    # The boundaries of each length (MQTT 5.0, 1.5.5).
    pairs = [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ]
    for value, encoded in pairs:
        assert mqtt5.varint(value) == encoded, value
        assert mqtt5.read_varint(b"\x07" + encoded + b"\x00", 1) == (value, 1 + len(encoded))
    raises(mqtt5.MQTTError, mqtt5.varint, 268435456)
    raises(mqtt5.MQTTError, mqtt5.varint, -1)
    raises(mqtt5.MQTTError, mqtt5.read_varint, b"\xff\xff\xff\xff\x7f")
    raises(mqtt5.MQTTError, mqtt5.read_varint, b"\x80")


def case_connect_packet():
    will = ("devices/dev1/status", b'{"online": false}', True, 1)
    data = mqtt5.connect_packet("dev1", 60, "dev1", "tok", will)
    body = (
        b"\x00\x04MQTT\x05"
        + b"\xee"  # user, password, will retain, will QoS 1, will, clean start
        + b"\x00\x3c"  # keep-alive 60 s
        + b"\x0a\x11\x00\x00\x00\x00\x27\x00\x00\x80\x00"  # session expiry 0, max packet
        + b"\x00\x04dev1"
        + b"\x00"  # will properties
        + b"\x00\x13devices/dev1/status"
        + b'\x00\x11{"online": false}'
        + b"\x00\x04dev1"
        + b"\x00\x03tok"
    )
    assert data == b"\x10" + bytes([len(body)]) + body
    bare = mqtt5.connect_packet("d", 0)
    assert bare == b"\x10\x18\x00\x04MQTT\x05\x02\x00\x00" + body[10:21] + b"\x00\x01d"


def case_publish_subscribe_and_puback_packets():
    data = mqtt5.publish_packet("a/b", b"hi", qos=1, retain=True, packet_id=258)
    assert data == b"\x33\x0a\x00\x03a/b\x01\x02\x00hi"
    assert mqtt5.publish_packet("t", b"", qos=0) == b"\x30\x04\x00\x01t\x00"
    raises(mqtt5.MQTTError, mqtt5.publish_packet, "", b"x")
    raises(mqtt5.MQTTError, mqtt5.publish_packet, "t", b"x", 2)
    data = mqtt5.subscribe_packet(7, ("a", "bc"))
    assert data == b"\x82\x0c\x00\x07\x00\x00\x01a\x01\x00\x02bc\x01"
    assert mqtt5.puback_packet(513) == b"\x40\x02\x02\x01"
    # A long payload takes a two-byte remaining length.
    data = mqtt5.publish_packet("t", b"x" * 200, qos=1, packet_id=1)
    assert data[:3] == b"\x32\xce\x01"
    assert len(data) == 3 + 206


def case_properties_of_every_kind_are_read_or_refused():
    block = (
        b"\x01\x01"  # payload format indicator (byte)
        + b"\x13\x00\x1e"  # server keep alive (two bytes)
        + b"\x27\x00\x01\x00\x00"  # maximum packet size (four bytes)
        + b"\x0b\x81\x01"  # subscription identifier (variable byte integer)
        + b"\x1f\x00\x02no"  # reason string
        + b"\x26\x00\x01k\x00\x01v"  # user property
    )
    body = b"\xaa" + bytes([len(block)]) + block + b"rest"
    props, pos = mqtt5.read_properties(body, 1)
    assert props == {0x01: 1, 0x13: 30, 0x27: 65536, 0x0B: 129, 0x1F: b"no", 0x26: (b"k", b"v")}
    assert body[pos:] == b"rest"
    raises(mqtt5.MQTTError, mqtt5.read_properties, b"\x02\x7e\x00", 0)  # unknown property
    raises(mqtt5.MQTTError, mqtt5.read_properties, b"\x05\x1f\x00\x09abc", 0)  # string too long
    raises(mqtt5.MQTTError, mqtt5.read_properties, b"\x02\x13\x00\x00", 0)  # past its block
    raises(mqtt5.MQTTError, mqtt5.read_properties, b"\x09\x01\x01", 0)  # block past the packet


def case_incoming_publish():
    props = b"\x05\x01\x01\x23\x00\x01"  # payload format indicator, topic alias
    body = b"\x00\x03a/b" + b"\x00\x09" + props + b"payload"  # QoS 1: a packet id
    assert mqtt5.parse_publish(0x03, body) == (b"a/b", b"payload", 1, 9, True)
    assert mqtt5.parse_publish(0x00, b"\x00\x01t\x00") == (b"t", b"", 0, 0, False)
    raises(mqtt5.MQTTError, mqtt5.parse_publish, 0x04, b"\x00\x01t\x00\x01\x00")  # QoS 2
    raises(mqtt5.MQTTError, mqtt5.parse_publish, 0x00, b"\x00\x00\x03\x23\x00\x01")  # alias
    raises(mqtt5.MQTTError, mqtt5.parse_publish, 0x02, b"\x00\x01t\x00")  # no packet id
    raises(mqtt5.MQTTError, mqtt5.parse_publish, 0x00, b"\x00\x05t")  # topic past the end


def case_connect_reads_the_connack():
    client = mqtt5.Client("dev1", "broker", user="dev1", password=TOKEN, keepalive=60)
    # Server keep alive 20 s and a maximum packet size of 100 bytes.
    wire = Wire(b"\x20\x0b\x00\x00\x08\x13\x00\x14\x27\x00\x00\x00\x64")
    client.connect(wire)
    assert wire.sent == mqtt5.connect_packet("dev1", 60, "dev1", "tok")
    assert (client.keepalive, client.max_packet) == (20, 100)
    exc = raises(mqtt5.Refused, client.publish, "t", b"x" * 100)
    assert exc.code == 0x95
    refused = b"\x20\x0a\x00\x86\x07\x1f\x00\x04nope"
    client = mqtt5.Client("dev1", "broker")
    wire = Wire(refused)
    exc = raises(mqtt5.Refused, client.connect, wire)
    assert exc.code == 0x86
    assert "bad user name or password (nope)" in str(exc), str(exc)
    assert wire.closed
    assert client.sock is None
    for answer in (b"\x30\x02\x00\x00", b"\x20\x01\x00", b"\x20\x04\x00\x00\x05\x24"):
        wire = Wire(answer)
        raises(mqtt5.MQTTError, mqtt5.Client("d", "b").connect, wire)
        assert wire.closed
    wire = Wire(b"\x20\x06\x00\x00\x03\x24\x00\x00")  # maximum QoS 0
    raises(mqtt5.MQTTError, mqtt5.Client("d", "b").connect, wire)
    raises(OSError, mqtt5.Client("d", "b").connect, Wire(b""))  # no CONNACK: times out


def case_publish_by_puback_reason_code():
    acks = b"\x40\x02\x00\x01" + b"\x40\x03\x00\x02\x10" + b"\x40\x03\x00\x03\x10"
    acks += b"\x40\x08\x00\x04\x87\x04\x1f\x00\x01x" + b"\x40\x04\x00\x05\x00\x00"
    client, wire, _got = connected(acks)
    assert client.publish("devices/dev1/telemetry", b"{}") == 0  # a bare PUBACK: success
    assert wire.sent == mqtt5.publish_packet("devices/dev1/telemetry", b"{}", 1, False, 1)
    exc = raises(mqtt5.NoSubscribers, client.publish, "devices/dev1/telemetry", b"{}")
    assert isinstance(exc, OSError)
    assert exc.code == 0x10
    # Retained: it stays with the broker for whoever subscribes later.
    assert client.publish("devices/dev1/status", b"{}", retain=True) == 0x10
    exc = raises(mqtt5.Refused, client.publish, "devices/dev2/telemetry", b"{}")
    assert exc.code == 0x87
    assert "not authorized (x)" in str(exc), str(exc)
    assert client.publish("t", b"x") == 0  # reason code and empty properties
    assert client.publish("t", b"x", qos=0) == 0  # nothing to wait for
    raises(OSError, client.publish, "t", b"x")  # no PUBACK: times out


def case_messages_that_arrive_while_waiting_are_delivered_and_acked():
    downlink = b"\x32\x11\x00\x0adev1/state\x00\x07\x00{}"  # QoS 1, packet id 7
    other_ack = b"\x40\x02\x00\x09"  # an acknowledgement for another packet: ignored
    client, wire, got = connected(downlink + other_ack + b"\xd0\x00" + b"\x40\x02\x00\x01")
    assert client.publish("devices/dev1/telemetry", b"{}") == 0
    assert got == [(b"dev1/state", b"{}")]
    publish = mqtt5.publish_packet("devices/dev1/telemetry", b"{}", 1, False, 1)
    assert wire.sent == publish + b"\x40\x02\x00\x07"


def case_subscribe_checks_every_reason_code():
    retained = b"\x31\x08\x00\x03a/b\x00on"  # a retained message before the SUBACK
    client, wire, got = connected(retained + b"\x90\x06\x00\x01\x00\x01\x01\x00")
    client.subscribe(("a/b", "c", "d"), 1)
    assert wire.sent == mqtt5.subscribe_packet(1, ("a/b", "c", "d"), 1)
    assert got == [(b"a/b", b"on")]
    client, wire, _got = connected(b"\x90\x05\x00\x01\x00\x01\x87")
    exc = raises(mqtt5.Refused, client.subscribe, ("a", "b/#"), 1)
    assert exc.code == 0x87
    assert "b/#" in str(exc)
    client, wire, _got = connected(b"\x90\x04\x00\x01\x00\x01")
    raises(mqtt5.MQTTError, client.subscribe, ("a", "b"), 1)


def case_check_msg_ping_and_what_ends_a_connection():
    client, wire, got = connected()
    client.check_msg()  # nothing there: returns at once
    assert got == []
    assert wire.timeout == client.timeout_s
    wire.incoming += b"\x30\x06\x00\x01t\x00ok" + b"\xd0\x00"
    client.ping()
    assert wire.sent == b"\xc0\x00"
    client.check_msg()
    assert got == [(b"t", b"ok")]
    client.ping()
    exc = raises(mqtt5.MQTTError, client.ping)  # the last one was not answered
    assert "PINGRESP" in str(exc)
    # The broker's DISCONNECT (with its reason), an unknown packet type, a packet larger
    # than the device takes, a closed connection.
    for incoming, said in (
        (b"\xe0\x01\x8e", "0x8e session taken over"),
        (b"\xf0\x00", "unexpected packet type 15"),
        (b"\x30\xff\xff\x03", "a packet of 65535 bytes"),
        (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
    ):
        client, wire, got = connected(incoming)
        exc = raises(mqtt5.MQTTError, client.check_msg)
        assert said in str(exc), str(exc)
    client, wire, got = connected()
    wire.recv = lambda n: b""
    raises(mqtt5.MQTTError, client.check_msg)
    client.disconnect()
    assert wire.sent == b"\xe0\x00"
    assert wire.closed
    assert client.sock is None
    raises(mqtt5.MQTTError, client.publish, "t", b"x")  # not connected
