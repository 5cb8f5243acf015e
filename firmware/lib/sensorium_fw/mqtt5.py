"""A small MQTT 5 client (OASIS MQTT 5.0) for the device: one blocking socket with a
timeout, QoS 0/1, no session kept. What it has over MQTT 3.1.1 (umqtt.simple) is the
reason code of a PUBACK: 0x10 "no matching subscribers" means the broker took the
message and gave it to nobody (no ingest worker is subscribed, as right after a broker
restart), so the device keeps it and sends it again (PROTOCOL.md).

Every failure is an OSError: a connection lost, timed out or refused, a malformed or
unexpected packet (MQTTError), a refusal by reason code (Refused), a non-retained
message nobody took (NoSubscribers). The pure encoders and decoders are module
functions, tested on CPython and MicroPython alike (firmware/tests/cases_mqtt5.py).
"""

import errno
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
NO_MATCHING_SUBSCRIBERS = 0x10
QUOTA_EXCEEDED = 0x97
PACKET_TOO_LARGE = 0x95
# The largest packet the device takes (told to the broker at CONNECT, which then drops
# bigger ones for this client instead of sending them): downlink documents are small.
MAX_INCOMING = 32768
MAX_VARINT = 268435455

REASONS = {
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9F: "connection rate exceeded",
}

# Property identifier -> how its value is encoded (MQTT 5.0, 2.2.2.2).
_BYTE, _TWO, _FOUR, _VAR, _DATA, _PAIR = range(6)
_PROPERTIES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _DATA, 0x08: _DATA, 0x09: _DATA, 0x0B: _VAR,
    0x11: _FOUR, 0x12: _DATA, 0x13: _TWO, 0x15: _DATA, 0x16: _DATA, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _DATA, 0x1C: _DATA, 0x1F: _DATA, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
SERVER_KEEP_ALIVE, REASON_STRING, MAXIMUM_QOS, MAXIMUM_PACKET_SIZE = 0x13, 0x1F, 0x24, 0x27


class MQTTError(OSError):
    """A malformed or unexpected packet: the connection cannot go on."""


class Refused(OSError):
    """The broker answered with a failure reason code (`code`)."""

    def __init__(self, code, what, props=None):
        super().__init__("%s: %s" % (what, _described(code, props or {})))
        self.code = code


class NoSubscribers(OSError):
    """PUBACK 0x10 for a non-retained message: accepted, but nobody subscribed took it."""

    def __init__(self, topic):
        super().__init__("%s: 0x10 no matching subscribers" % topic)
        self.code = NO_MATCHING_SUBSCRIBERS


# --- encoding ------------------------------------------------------------------------------


def varint(n):
    if n < 0 or n > MAX_VARINT:
        raise MQTTError("length out of range: %d" % n)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def text(value):
    """A UTF-8 string or binary data: two length bytes, then the bytes."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    if len(data) > 65535:
        raise MQTTError("string longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def packet(kind, flags, body):
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(client_id, keepalive, user=None, password=None, will=None):
    """CONNECT, protocol level 5, clean start, session expiry 0 (no session kept),
    Maximum Packet Size MAX_INCOMING. `will`: (topic, payload, retain, qos)."""
    flags = 0x02
    payload = text(client_id)
    if will is not None:
        topic, message, retain, qos = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += b"\x00" + text(topic) + text(message)
    if user is not None:
        flags |= 0x80
        payload += text(user)
    if password is not None:
        flags |= 0x40
        payload += text(password)
    props = b"\x11\x00\x00\x00\x00\x27" + struct.pack("!I", MAX_INCOMING)
    head = b"\x00\x04MQTT\x05" + bytes([flags]) + struct.pack("!H", keepalive)
    return packet(CONNECT, 0, head + varint(len(props)) + props + payload)


def publish_packet(topic, message, qos=0, retain=False, packet_id=0):
    if not topic or qos not in (0, 1):
        raise MQTTError("cannot publish to %r with QoS %r" % (topic, qos))
    body = text(topic) + (struct.pack("!H", packet_id) if qos else b"") + b"\x00"
    return packet(PUBLISH, qos << 1 | (1 if retain else 0), body + bytes(message))


def subscribe_packet(packet_id, topics, qos=1):
    body = struct.pack("!H", packet_id) + b"\x00"
    for topic in topics:
        body += text(topic) + bytes([qos])
    return packet(SUBSCRIBE, 0x02, body)


def puback_packet(packet_id):
    return packet(PUBACK, 0, struct.pack("!H", packet_id))


# --- decoding ------------------------------------------------------------------------------


def _need(body, pos, n):
    if n < 0 or pos + n > len(body):
        raise MQTTError("malformed packet: %d bytes past its end" % (pos + n - len(body)))
    return pos + n


def read_varint(data, pos=0):
    """(value, next position) of the variable byte integer at `pos`."""
    value = shift = 0
    for _ in range(4):
        _need(data, pos, 1)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MQTTError("malformed packet: a variable byte integer longer than 4 bytes")


def read_text(body, pos):
    """(bytes, next position) of a length-prefixed string or binary data."""
    start = _need(body, pos, 2)
    end = _need(body, start, struct.unpack_from("!H", body, pos)[0])
    return bytes(body[start:end]), end


def read_properties(body, pos):
    """({identifier: value}, next position) of the property block at `pos`."""
    length, pos = read_varint(body, pos)
    end = _need(body, pos, length)
    found = {}
    while pos < end:
        ident, pos = read_varint(body, pos)
        kind = _PROPERTIES.get(ident)
        if kind is None:
            raise MQTTError("malformed packet: unknown property 0x%02x" % ident)
        if kind == _VAR:
            value, pos = read_varint(body, pos)
        elif kind == _DATA:
            value, pos = read_text(body, pos)
        elif kind == _PAIR:
            name, pos = read_text(body, pos)
            value, pos = read_text(body, pos)
            value = (name, value)
        else:
            size = (1, 2, 4)[kind]
            _need(body, pos, size)
            value = int.from_bytes(bytes(body[pos : pos + size]), "big")
            pos += size
        if pos > end:
            raise MQTTError("malformed packet: a property runs past its block")
        found[ident] = value
    return found, end


def reason(body, pos):
    """(reason code, properties) of an acknowledgement whose reason code is at `pos`;
    absent means success (MQTT 5.0 3.4.2.1)."""
    if len(body) <= pos:
        return 0, {}
    found = {}
    if len(body) > pos + 1:
        found, end = read_properties(body, pos + 1)
        if end != len(body):
            raise MQTTError("malformed packet: %d bytes after the properties" % (len(body) - end))
    return body[pos], found


def parse_publish(flags, body):
    """(topic, payload, qos, packet id or 0, retain) of an incoming PUBLISH."""
    qos = flags >> 1 & 3
    if qos > 1:
        raise MQTTError("unexpected PUBLISH with QoS %d" % qos)
    topic, pos = read_text(body, 0)
    packet_id = 0
    if qos:
        _need(body, pos, 2)
        packet_id = struct.unpack_from("!H", body, pos)[0]
        pos += 2
    _props, pos = read_properties(body, pos)
    if not topic:
        raise MQTTError("PUBLISH without a topic (topic aliases are not used)")
    return topic, bytes(body[pos:]), qos, packet_id, bool(flags & 1)


def _described(code, props):
    said = props.get(REASON_STRING)
    try:
        said = " (%s)" % said.decode() if said else ""
    except UnicodeError:
        said = " (%r)" % said
    return "0x%02x %s%s" % (code, REASONS.get(code, "?"), said)


# --- the client ----------------------------------------------------------------------------


class Client:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.timeout_s = 10
        self.callback = None  # callback(topic bytes, payload bytes)
        self.will = None
        self.sock = None
        self.max_packet = 0  # the broker's Maximum Packet Size (0: none said)
        self._packet_id = 0
        self._pinged = False

    def set_callback(self, callback):
        self.callback = callback

    def set_last_will(self, topic, message, retain=False, qos=0):
        self.will = (topic, message, retain, qos)

    def connect(self, sock=None):
        """Connect (or speak over `sock`, already connected) and wait for the CONNACK."""
        if sock is None:
            import socket  # here: the packet functions need no network (tests)

            address = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock = sock
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(address)
            except OSError:
                self.close()
                raise
        self.sock = sock
        self._pinged = False
        try:
            self._send(
                connect_packet(self.client_id, self.keepalive, self.user, self.password, self.will)
            )
            kind, _flags, body = self._read(True)
            if kind != CONNACK or len(body) < 2:
                raise MQTTError("expected CONNACK, got packet type %d" % kind)
            code, props = reason(body, 1)
            if code >= 0x80:
                raise Refused(code, "connect refused", props)
            if props.get(MAXIMUM_QOS, 1) < 1:
                raise MQTTError("the broker takes QoS 0 only")
            self.keepalive = props.get(SERVER_KEEP_ALIVE, self.keepalive)
            self.max_packet = props.get(MAXIMUM_PACKET_SIZE, 0)
        except OSError:
            self.close()
            raise

    def subscribe(self, topics, qos=1):
        """Subscribe to every topic of `topics`; raises Refused unless each is granted."""
        packet_id = self._next_id()
        self._send(subscribe_packet(packet_id, topics, qos))
        body = self._wait(SUBACK, packet_id)
        _props, pos = read_properties(body, 2)
        codes = bytes(body[pos:])
        if len(codes) != len(topics):
            raise MQTTError("SUBACK with %d reason codes for %d topics" % (len(codes), len(topics)))
        for i in range(len(codes)):
            if codes[i] >= 0x80:
                raise Refused(codes[i], "subscribe to %s refused" % topics[i])

    def publish(self, topic, message, retain=False, qos=1):
        """Publish; with QoS 1 wait for the PUBACK and return its reason code (0, or 0x10
        for a retained message: it stays with the broker for later subscribers). Raises
        NoSubscribers for 0x10 on a non-retained message, Refused for a failure code."""
        packet_id = self._next_id() if qos else 0
        data = publish_packet(topic, message, qos, retain, packet_id)
        if self.max_packet and len(data) > self.max_packet:
            raise Refused(PACKET_TOO_LARGE, "publish to %s not sent" % topic)
        self._send(data)
        if not qos:
            return 0
        code, props = reason(self._wait(PUBACK, packet_id), 2)
        if code >= 0x80:
            raise Refused(code, "publish to %s refused" % topic, props)
        if code == NO_MATCHING_SUBSCRIBERS and not retain:
            raise NoSubscribers(topic)
        return code

    def check_msg(self, limit=10):
        """Handle what has arrived (up to `limit` packets) without waiting."""
        for _ in range(limit):
            got = self._read(False)
            if got is None:
                return
            self._handle(*got)

    def ping(self):
        """PINGREQ; raises when the one before was not answered (a dead connection)."""
        if self._pinged:
            raise MQTTError("no PINGRESP to the last PINGREQ")
        self._send(packet(PINGREQ, 0, b""))
        self._pinged = True

    def disconnect(self):
        try:
            self._send(packet(DISCONNECT, 0, b""))
        finally:
            self.close()

    def close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # --- inside ----------------------------------------------------------------------------

    def _next_id(self):
        self._packet_id = self._packet_id % 65535 + 1
        return self._packet_id

    def _socket(self):
        if self.sock is None:
            raise MQTTError("not connected")
        return self.sock

    def _send(self, data):
        self._socket().sendall(data)

    def _recv(self, n):
        sock = self._socket()
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise MQTTError("connection closed by the broker")
            out += chunk
        return out

    def _read(self, block):
        """(type, flags, body) of the next packet; None when `block` is False and nothing
        has arrived. Raises (OSError) on a timeout: nothing waits forever."""
        sock = self._socket()
        if not block:
            sock.settimeout(0)
            try:
                first = sock.recv(1)
            except OSError as exc:
                if exc.args and exc.args[0] == errno.EAGAIN:
                    return None
                raise
            finally:
                sock.settimeout(self.timeout_s)
            if first is None:
                return None
            if not first:
                raise MQTTError("connection closed by the broker")
        else:
            sock.settimeout(self.timeout_s)
            first = self._recv(1)
        length = shift = 0
        for _ in range(4):
            byte = self._recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise MQTTError("malformed packet: a variable byte integer longer than 4 bytes")
        if length > MAX_INCOMING:
            raise MQTTError("a packet of %d bytes (at most %d)" % (length, MAX_INCOMING))
        return first[0] >> 4, first[0] & 0x0F, self._recv(length)

    def _wait(self, kind, packet_id):
        """The body of the acknowledgement `kind` of `packet_id`, handling what else
        arrives meanwhile (downlink messages)."""
        started = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), started) < self.timeout_s * 1000:
            got, flags, body = self._read(True)
            if got == kind and len(body) >= 2 and struct.unpack_from("!H", body)[0] == packet_id:
                return body
            self._handle(got, flags, body)
        raise MQTTError("no answer to packet %d in %d s" % (packet_id, self.timeout_s))

    def _handle(self, kind, flags, body):
        if kind == PUBLISH:
            topic, payload, qos, packet_id, _retain = parse_publish(flags, body)
            if self.callback is not None:
                self.callback(topic, payload)
            if qos:
                self._send(puback_packet(packet_id))
        elif kind == PINGRESP:
            self._pinged = False
        elif kind == DISCONNECT:
            code, props = reason(body, 0)
            self.close()
            raise MQTTError("disconnected by the broker: %s" % _described(code, props))
        elif kind not in (PUBACK, SUBACK):  # a late answer to a request given up on
            raise MQTTError("unexpected packet type %d" % kind)
