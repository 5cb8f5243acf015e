"""The two ways a device reaches its server (PROTOCOL.md): MQTT, and HTTP as the fallback
when the broker cannot be reached. Both take the same documents and hand back downlink
events: ("desired", (version, state)), ("command", proto.Command) and ("ota",
proto.Assignment or None when the assignment was withdrawn).

Sending raises OSError when the server could not be reached (the caller buffers and
reconnects), mqtt5.NoSubscribers (an OSError) when the broker took a non-retained
document but no server process did (the caller keeps it and sends it again after a
back-off, without reconnecting); `telemetry()` returns False when the server refused a
document for good (HTTP 4xx, an MQTT failure reason code: resending it would fail the
same way).
"""

import socket
import time

from sensorium_fw import http_head, mqtt5, proto


class Refused(OSError):
    """The server answered but did not accept the request (HTTP status in args[0])."""


def _events(log, kind, raw):
    try:
        if kind == "desired":
            return [("desired", proto.parse_state_document(raw))]
        if kind == "ota":
            return [("ota", proto.parse_assignment(raw))]
        return [("command", proto.parse_command(raw))]
    except proto.ProtocolError as exc:
        log.warn("ignored a %s document: %s" % (kind, exc.message))
        return []


class MqttLink:
    """MQTT 5 (mqtt5.Client). A non-retained document that no subscriber took (PUBACK
    0x10) raises mqtt5.NoSubscribers: the caller keeps it and sends it again after a
    back-off, on the same connection (PROTOCOL.md)."""

    name = "mqtt"

    def __init__(self, host, port, device_id, token, log, keepalive_s=60):
        self.host = host
        self.port = port
        self.device_id = device_id
        self.token = token
        self.log = log
        self.keepalive_s = keepalive_s
        self.client = None
        self._quiet = 0
        self._inbox = []
        self._desired = proto.state_desired_topic(device_id).encode()
        self._commands = proto.commands_topic(device_id).encode()
        self._ota = proto.ota_topic(device_id).encode()

    def connect(self):
        client = mqtt5.Client(
            self.device_id,
            self.host,
            self.port,
            user=self.device_id,
            password=self.token,
            keepalive=self.keepalive_s,
        )
        client.set_last_will(proto.status_topic(self.device_id), proto.OFFLINE, True, 1)
        client.set_callback(self._on_message)
        client.connect()
        try:
            client.subscribe(proto.downlink_subscriptions(self.device_id), 1)
        except OSError:
            client.close()
            raise
        self.client = client
        self._quiet = 0

    def _on_message(self, topic, msg):
        # Called from inside the client (also while it waits for a PUBACK): only queue here.
        self._inbox.append((topic, msg))

    def _publish(self, topic, payload, retain=False):
        """True when the broker took it; False when it refused it for good (logged). A
        full quota (0x97, try later) raises like a lost connection."""
        if self.client is None:
            raise OSError("mqtt: not connected")
        try:
            self.client.publish(topic, payload, retain, 1)
        except mqtt5.Refused as exc:
            if exc.code == mqtt5.QUOTA_EXCEEDED:
                raise
            # Not a warning: a refused log line must not make another one.
            self.log.info("mqtt: %s" % (exc,))
            return False
        finally:
            self._quiet = 0
        return True

    def telemetry(self, payload):
        return self._publish(proto.telemetry_topic(self.device_id), payload)

    def status(self, payload):
        self._publish(proto.status_topic(self.device_id), payload, True)

    def reported(self, payload):
        self._publish(proto.state_reported_topic(self.device_id), payload)

    def result(self, command_id, payload):
        self._publish(proto.command_result_topic(self.device_id, command_id), payload)

    def log_line(self, payload):
        self._publish(proto.logs_topic(self.device_id), payload)

    def ota_progress(self, payload):
        self._publish(proto.ota_progress_topic(self.device_id), payload)

    def poll(self, elapsed_ms, wait_ms=0):
        """Downlink events that arrived; pings the broker when the link was quiet for
        half the keep-alive."""
        if self.client is None:
            raise OSError("mqtt: not connected")
        self.client.check_msg()
        self._quiet += elapsed_ms
        keepalive_s = self.client.keepalive  # the broker may have set it (0: none)
        if keepalive_s and self._quiet >= keepalive_s * 500:
            self.client.ping()
            self._quiet = 0
        events = []
        inbox, self._inbox = self._inbox, []
        for topic, msg in inbox:
            if topic == self._desired:
                events += _events(self.log, "desired", msg)
            elif topic == self._commands:
                events += _events(self.log, "command", msg)
            elif topic == self._ota:
                events += _events(self.log, "ota", msg)
        return events

    def close(self):
        client, self.client = self.client, None
        if client is not None:
            try:
                client.disconnect()
            except OSError:
                pass


class HttpLink:
    """The HTTP device API: POST the documents, long-poll commands, poll the state."""

    name = "http"

    def __init__(self, host, port, device_id, token, log, timeout_s=10):
        self.host = host
        self.port = port
        self.device_id = device_id
        self.log = log
        self.timeout_s = timeout_s
        self._auth = "Bearer " + token
        self._base = "/api/v1/devices/" + device_id
        self._etag = None
        self._polled_at = None
        self._pending = []

    def connect(self):
        # One cheap authenticated request, so a dead server is noticed before switching;
        # what it brings (the current desired state) is handed over by the next poll.
        self._etag = None
        self._pending = self._state_events()

    def request(self, method, path, body=None, headers=None, timeout_s=None):
        """(status, headers, body) of one HTTP/1.1 request on a fresh connection."""
        address = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s or self.timeout_s)
            sock.connect(address)
            lines = [
                "%s %s HTTP/1.1" % (method, path),
                "Host: %s:%d" % (self.host, self.port),
                "Authorization: " + self._auth,
                "Connection: close",
            ]
            if body is not None:
                lines.append("Content-Type: application/json")
                lines.append("Content-Length: %d" % len(body))
            for name in headers or {}:
                lines.append("%s: %s" % (name, headers[name]))
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            if body:
                sock.sendall(body)
            return _read_response(sock)
        finally:
            sock.close()

    def _post(self, path, payload, quiet=False):
        """True when the server took it; False when it refused it for good: logged as a
        warning (sent to the server's log), or only printed when `quiet` (a refused log
        line, which as a warning would be another log line to send, refused in turn)."""
        status, _headers, body = self.request("POST", self._base + path, payload)
        if status >= 500 or status == 429:
            raise Refused(status, "server answered %d" % status)
        if status >= 400:
            note = self.log.info if quiet else self.log.warn
            note("POST %s refused (%d): %s" % (path, status, body[:120]))
        return status < 400

    def telemetry(self, payload):
        return self._post("/telemetry", payload)

    def status(self, payload):
        self._post("/status", payload)

    def reported(self, payload):
        self._post("/state/reported", payload)

    def result(self, command_id, payload):
        self._post("/commands/" + command_id + "/result", payload)

    def log_line(self, payload):
        self._post("/logs", payload, quiet=True)

    def ota_progress(self, payload):
        self._post("/ota/progress", payload)

    def _state_events(self):
        headers = {"If-None-Match": self._etag} if self._etag else None
        status, got, body = self.request("GET", self._base + "/state", headers=headers)
        if status == 304:
            return []
        if status != 200:
            raise Refused(status, "GET state answered %d" % status)
        self._etag = got.get("etag")
        try:
            doc = proto.json.loads(body)
            version, desired = proto.validate_state_document(
                {"version": doc["desired_version"], "state": doc["desired"]}
            )
        except (ValueError, KeyError, TypeError) as exc:
            self.log.warn("ignored a state answer: %s" % (exc,))
            return []
        events = [("desired", (version, desired))]
        try:
            assigned = doc.get("ota")
            events.append(("ota", proto.validate_assignment(assigned) if assigned else None))
        except proto.ProtocolError as exc:
            self.log.warn("ignored an update assignment: %s" % exc.message)
        return events

    def poll(self, elapsed_ms, wait_ms=0):
        """The desired state when it changed, then commands: waits up to `wait_ms` for
        them (long-poll), which is also how the device idles between readings."""
        events, self._pending = self._pending, []
        now = time.ticks_ms()
        recent = self._polled_at is not None and time.ticks_diff(now, self._polled_at) < 2000
        if wait_ms < 1000 and recent:
            return events
        self._polled_at = now
        events += self._state_events()
        wait_s = max(0, min(60, wait_ms // 1000))
        path = "%s/commands?wait=%d" % (self._base, wait_s)
        status, _headers, body = self.request("GET", path, timeout_s=wait_s + self.timeout_s)
        if status == 204:
            return events
        if status != 200:
            raise Refused(status, "GET commands answered %d" % status)
        try:
            commands = proto.json.loads(body)
        except ValueError:
            commands = None
        if type(commands) is not list:
            self.log.warn("ignored a commands answer that is not a list")
            return events
        for doc in commands:
            try:
                events.append(("command", proto.validate_command(doc)))
            except proto.ProtocolError as exc:
                self.log.warn("ignored a command: %s" % exc.message)
        return events

    def close(self):
        pass


def _read_response(sock):
    status, headers, body = http_head.read(sock)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raise OSError("http: chunked answers are not supported")
    length = headers.get("content-length")
    if length is not None:
        length = int(length)
        while len(body) < length:
            chunk = sock.recv(min(4096, length - len(body)))
            if not chunk:
                raise OSError("http: connection closed mid-body")
            body += chunk
    else:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
    return status, headers, body
