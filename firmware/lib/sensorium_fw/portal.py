"""The provisioning portal: with no usable config.json (or after `reset_wifi` / a long
button press) the device opens an open access point "Sensorium-XXXXXX" with a small web
form that lists the networks in range and saves the configuration, then reboots.

A tiny DNS responder answers every name with the device's address, so phones and
laptops show the form as a captive portal by themselves.
"""

import select
import socket
import time

from sensorium_fw import config

SAVE_PATH = "/save"
HTTP_PORT = 80
DNS_PORT = 53
_MAX_REQUEST = 8192


def url_decode(text):
    """application/x-www-form-urlencoded value -> str."""
    text = text.replace("+", " ")
    out = bytearray()
    i = 0
    raw = text.encode()
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25 and _is_hex(raw[i + 1 : i + 3]):  # "%"
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    try:
        return bytes(out).decode()
    except UnicodeError:
        return text


def _is_hex(pair):
    if len(pair) != 2:
        return False
    return all(48 <= byte <= 57 or 65 <= byte <= 70 or 97 <= byte <= 102 for byte in pair)


def parse_form(body):
    """A urlencoded request body -> {name: value} (the last of repeated names wins)."""
    if isinstance(body, bytes):
        body = body.decode()
    form = {}
    for pair in body.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        form[url_decode(name)] = url_decode(value)
    return form


def escape(text):
    return (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def _int(form, name, low, high, problems):
    text = form.get(name, "").strip()
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        problems.append("%s must be a whole number from %d to %d" % (name, low, high))
    return value


def config_from_form(form, base, mac_id):
    """(config, problems): `base` (the current config or the defaults) updated from the
    form; `problems` is [] when it can be saved."""
    cfg = config.with_defaults(base or {})
    problems = []
    ssid = form.get("ssid_other", "").strip() or form.get("ssid", "").strip()
    cfg["wifi"] = {"ssid": ssid, "password": form.get("password", "")}
    server = dict(cfg["server"])
    server["host"] = form.get("host", "").strip()
    server["mqtt_port"] = _int(form, "mqtt_port", 1, 65535, problems)
    server["http_port"] = _int(form, "http_port", 1, 65535, problems)
    cfg["server"] = server
    token = form.get("token", "").strip()
    if token:
        cfg["token"] = token
    device_id = form.get("device_id", "").strip().lower().replace(":", "").replace("-", "")
    cfg["device_id"] = "" if device_id == mac_id else device_id
    cfg["interval_s"] = _int(form, "interval_s", 1, 86400, problems)
    for problem in config.problems(cfg):
        # Numbers the form could not read are already named, field by field.
        if not (problems and ("port" in problem or "interval" in problem)):
            problems.append(problem)
    return cfg, problems


def render_form(networks, cfg, mac_id, problems=()):
    cfg = config.with_defaults(cfg or {})
    server = cfg["server"]
    options = []
    for network in networks:
        ssid = escape(network["ssid"])
        chosen = " selected" if network["ssid"] == cfg["wifi"]["ssid"] else ""
        options.append(
            '<option value="%s"%s>%s (%d dBm)</option>' % (ssid, chosen, ssid, network["rssi"])
        )
    errors = "".join("<li>%s</li>" % escape(p) for p in problems)

    def field(label, name, value, kind="text"):
        return '<label>%s<input name="%s" type="%s" value="%s"></label>' % (
            label,
            name,
            kind,
            escape(value),
        )

    return "".join(
        (
            "<!doctype html><html><head><meta charset=utf-8>",
            '<meta name=viewport content="width=device-width,initial-scale=1">',
            "<title>Sensorium setup</title><style>body{font-family:sans-serif;max-width:26em;",
            "margin:1em auto;padding:0 1em}label{display:block;margin:.6em 0}input,select",
            "{display:block;width:100%;padding:.3em}.err{color:#b00}</style></head><body>",
            "<h1>Sensorium setup</h1><p>Device <code>%s</code></p>" % escape(mac_id),
            '<ul class="err">%s</ul>' % errors if errors else "",
            '<form method="post" action="%s">' % SAVE_PATH,
            '<label>Wi-Fi network<select name="ssid">%s</select></label>' % "".join(options),
            field("or another network (hidden SSID)", "ssid_other", ""),
            field("Wi-Fi password", "password", "", "password"),
            field("Server host", "host", server["host"]),
            field("MQTT port", "mqtt_port", server["mqtt_port"], "number"),
            field("HTTP port", "http_port", server["http_port"], "number"),
            field("Device id", "device_id", cfg["device_id"] or mac_id),
            field("Device token (shown once when you added the device)", "token", "", "password"),
            field("Reading interval (s)", "interval_s", cfg["interval_s"], "number"),
            "<button>Save and restart</button></form></body></html>",
        )
    )


def response(status, body, content_type="text/html; charset=utf-8", extra=""):
    if isinstance(body, str):
        body = body.encode()
    head = "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n"
    return (head % (status, content_type, len(body), extra)).encode() + body


def dns_answer(query, ip):
    """A DNS response resolving whatever `query` asks to `ip` (captive portal)."""
    if len(query) < 12:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    question = query[12 : end + 5]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes(
        int(part) for part in ip.split(".")
    )
    header = query[:2] + b"\x81\x80" + query[4:6] + query[4:6] + b"\x00\x00\x00\x00"
    return header + question + answer


class Portal:
    """The form's HTTP server (and the DNS responder), driven by `poll()`."""

    def __init__(self, board, log, root="", port=80, dns_port=53, ip="192.168.4.1"):
        self.board = board
        self.log = log
        self.path = root + config.PATH
        self.ip = ip
        self.mac_id = board.mac_id()
        self.saved = False
        self.networks = []
        self.http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.http.bind(socket.getaddrinfo("0.0.0.0", port)[0][-1])  # noqa: S104 - the AP
        self.http.listen(2)
        self.port = self.http.getsockname()[1] if hasattr(self.http, "getsockname") else port
        self.dns = None
        if dns_port is not None:
            self.dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.dns.bind(socket.getaddrinfo("0.0.0.0", dns_port)[0][-1])  # noqa: S104
        self.poller = select.poll()
        self.poller.register(self.http, select.POLLIN)
        if self.dns is not None:
            self.poller.register(self.dns, select.POLLIN)

    def scan(self):
        try:
            self.networks = self.board.scan()
        except OSError as exc:
            self.log.warn("portal: scan failed: %s" % exc)
        return self.networks

    def poll(self, timeout_ms=200):
        for sock, _event in self.poller.poll(timeout_ms):
            if sock is self.dns:
                self._dns()
            else:
                self._accept()

    def _dns(self):
        try:
            query, peer = self.dns.recvfrom(512)
            answer = dns_answer(query, self.ip)
            if answer:
                self.dns.sendto(answer, peer)
        except OSError:
            pass

    def _accept(self):
        conn, _peer = self.http.accept()
        try:
            conn.settimeout(5)
            request = _read_request(conn)
            if request is not None:
                conn.sendall(self.handle(*request))
        except OSError as exc:
            self.log.warn("portal: %s" % exc)
        finally:
            conn.close()

    def handle(self, method, path, body):
        """The response bytes to one request."""
        current = config.load(self.path)
        if method == "POST" and path == SAVE_PATH:
            cfg, problems = config_from_form(parse_form(body), current, self.mac_id)
            if problems:
                return response("200 OK", render_form(self.networks, cfg, self.mac_id, problems))
            config.save(cfg, self.path)
            self.saved = True
            self.log.info("portal: configuration saved for %s" % cfg["wifi"]["ssid"])
            return response(
                "200 OK",
                "<!doctype html><p>Saved. The device restarts and connects to %s."
                % escape(cfg["wifi"]["ssid"]),
            )
        if method == "GET" and path.split("?")[0] in ("/", "/index.html"):
            if not self.networks:
                self.scan()
            return response("200 OK", render_form(self.networks, current, self.mac_id))
        # Anything else (the OS's connectivity checks): off to the form.
        return response("302 Found", "", extra="Location: http://%s/\r\n" % self.ip)

    def close(self):
        for sock in (self.http, self.dns):
            if sock is not None:
                self.poller.unregister(sock)
                sock.close()


def _read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(512)
        if not chunk:
            return None
        data += chunk
        if len(data) > _MAX_REQUEST:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > _MAX_REQUEST:
        return None
    while len(body) < length:
        chunk = conn.recv(min(512, length - len(body)))
        if not chunk:
            return None
        body += chunk
    return parts[0], parts[1], body


def run(board, log, root="", should_stop=None, started=None):
    """Open the access point and serve the form until a configuration was saved; then
    reboot into it."""
    essid = "Sensorium-" + board.mac_id()[-6:]
    ip = board.start_access_point(essid)
    log.info("portal: join Wi-Fi %s and open http://%s/" % (essid, ip))
    portal = Portal(board, log, root, HTTP_PORT, DNS_PORT, ip)
    portal.scan()
    if started is not None:
        started(portal)
    try:
        while not portal.saved and (should_stop is None or not should_stop()):
            board.feed()
            portal.poll()
        # Let the browser get its answer before the radio goes away.
        time.sleep_ms(500)
    finally:
        portal.close()
    if portal.saved:
        board.reset()
