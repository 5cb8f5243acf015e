"""The firmware beyond its pure modules on the real MicroPython interpreter (WebAssembly
build): every module imports with `.py` stand-ins for machine/network/dht/socket, and the
device loop runs a few passes with recording links (desired state, a command, telemetry
and a backfill), so MicroPython-only differences in app.py show up here too."""

from __future__ import annotations

import itertools
import json

from tests.firmware import wasm
from tests.firmware.host import FIRMWARE

STAND_INS = {
    "/esp32/machine.py": (
        "class Pin:\n"
        "    IN = 1\n    OUT = 3\n    PULL_UP = 2\n"
        "    def __init__(self, n, mode=-1, pull=-1):\n        self.n = n\n        self.v = 1\n"
        "    def value(self, v=None):\n"
        "        if v is None:\n            return self.v\n"
        "        self.v = v\n"
        "class ADC:\n    ATTN_11DB = 3\n    def __init__(self, pin):\n        pass\n"
        "class I2C:\n    def __init__(self, bus, sda=None, scl=None, freq=0):\n        pass\n"
        "class PWM:\n    def __init__(self, pin, freq=0):\n        pass\n"
        "class WDT:\n    def __init__(self, timeout=0):\n        pass\n"
        "    def feed(self):\n        pass\n"
        "def reset():\n    raise SystemExit\n"
    ),
    "/esp32/network.py": "STA_IF = 0\nAP_IF = 1\nclass WLAN:\n    pass\n",
    "/esp32/dht.py": "class DHT22:\n    pass\n",
    # This interpreter has no sockets (a board does): the names exist, using them fails.
    "/esp32/socket.py": (
        "AF_INET = 2\nSOCK_STREAM = 1\nSOCK_DGRAM = 2\nSOL_SOCKET = 1\nSO_REUSEADDR = 4\n"
        "def getaddrinfo(*args):\n    raise OSError('no network here')\n"
        "class socket:\n    def __init__(self, *args):\n        raise OSError('no network here')\n"
    ),
}

# A board, links that record what they send, and sensors whose readings count up.
DEVICE = """
import json
import time
from sensorium_fw import app, clock, config, log, proto
from sensorium_fw.mqtt5 import NoSubscribers

class Board:
    def __init__(self):
        self.applied = []
    def mac_id(self): return "a4cf12b3c4d5"
    def wifi_connected(self): return True
    def feed(self): pass
    def button_held_ms(self): return 0
    def rssi(self): return -50
    def ip(self): return "192.168.1.23"
    def free_heap(self): return 81234
    def apply(self, key, value): self.applied.append([key, value])
    def blink(self, times): pass
    def scan(self): return []
    def start_watchdog(self, s): pass
    def reset(self): raise SystemExit

class Link:
    def __init__(self, name, fail=False):
        self.name = name
        self.host = "h"
        self.port = 1
        self.fail = fail
        self.nobody = False  # no subscriber: PUBACK 0x10 for what is not retained
        self.connects = 0
        self.sent = []
        self.downlink = []
    def connect(self):
        if self.fail:
            raise OSError("refused")
        self.connects += 1
    def _send(self, kind, payload):
        if self.fail:
            raise OSError("gone")
        if self.nobody and kind != "status":
            raise NoSubscribers(kind)
        self.sent.append([kind, json.loads(payload)])
    def telemetry(self, payload):
        self._send("telemetry", payload)
        return True
    def status(self, payload): self._send("status", payload)
    def reported(self, payload): self._send("reported", payload)
    def result(self, command_id, payload): self._send("result:" + command_id, payload)
    def log_line(self, payload): self._send("log", payload)
    def poll(self, elapsed_ms, wait_ms=0):
        if self.fail:
            raise OSError("gone")
        events, self.downlink = self.downlink, []
        return events
    def close(self): pass

class Sensors:
    def __init__(self):
        self.drivers = []
        self.n = 0
    def read(self):
        self.n += 1
        return {"co2": 400 + self.n}

cfg = config.with_defaults({
    "wifi": {"ssid": "lab", "password": "x"}, "server": {"host": "h"}, "token": "t",
    "interval_s": 1, "ntp_host": "", "pins": {"relay": 26, "led": 2, "button": 0},
    "buffer": {"max_entries": 100, "segment_entries": 2},
})
c = clock.Clock()
c.set_epoch_ms(1763900000000)
"""

DEVICE_LOOP = (
    DEVICE
    + """
mqtt = Link("mqtt", fail=True)
http = Link("http", fail=True)
board = Board()
device = app.Device(cfg, board, Sensors(), log.Log(c), c, "/tmp/run/", links=(mqtt, http))
for _ in range(3):           # nothing reachable: three readings into the flash buffer
    device.step()
    time.sleep_ms(1000)
buffered = len(device.buffer)
mqtt.fail = False
mqtt.downlink = [
    ("desired", (3, {"relay": True})),
    ("command", proto.Command("c_1", "ping", {}, 1763900000000 + 60000)),
]
device._next["mqtt"] = time.ticks_ms()
for _ in range(4):
    device.step()
print("RESULT " + json.dumps({
    "buffered": buffered, "left": len(device.buffer), "sent": mqtt.sent,
    "applied": board.applied, "link": device.link.name,
}))
"""
)

NO_SUBSCRIBERS_LOOP = (
    DEVICE
    + """
mqtt = Link("mqtt")
mqtt.nobody = True
mqtt.downlink = [("command", proto.Command("c_1", "ping", {}, 1763900000000 + 60000))]
device = app.Device(
    cfg, Board(), Sensors(), log.Log(c), c, "/tmp/run/", links=(mqtt, Link("http", fail=True))
)
for _ in range(4):
    device.step()
    time.sleep_ms(1000)
held = {"buffered": len(device.buffer), "holding": device.holding, "sent": list(mqtt.sent)}
mqtt.nobody = False
for _ in range(40):
    device.step()
    time.sleep_ms(250)
    if not device.holding and not len(device.buffer) and not device.replies:
        break
print("RESULT " + json.dumps({
    "held": held, "holding": device.holding, "left": len(device.buffer), "sent": mqtt.sent,
    "link": device.link.name, "connects": mqtt.connects, "replies": len(device.replies),
}))
"""
)


def test_every_firmware_module_imports_on_micropython() -> None:
    modules = sorted(p.stem for p in (FIRMWARE / "lib" / "sensorium_fw").glob("*.py"))
    code = "".join(f"import sensorium_fw.{m}\n" for m in modules if m != "__init__")
    result = wasm.run(code + "print('imported', len(sys.modules))\n", STAND_INS)
    assert result.ok, result.error
    assert "imported" in result.stdout


def test_the_device_loop_runs_on_micropython() -> None:
    result = wasm.run(DEVICE_LOOP, STAND_INS)
    assert result.ok, f"{result.error}\n{result.stdout}"
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    body = json.loads(line.removeprefix("RESULT "))
    assert body["buffered"] == 3
    assert body["left"] == 0
    assert body["link"] == "mqtt"
    assert ["relay", True] in body["applied"]
    kinds = [kind for kind, _doc in body["sent"]]
    assert kinds[0] == "status"
    assert "reported" in kinds
    assert "result:c_1" in kinds
    (result_doc,) = [doc for kind, doc in body["sent"] if kind == "result:c_1"]
    assert result_doc["status"] == "ok"
    assert result_doc["result"]["pong"] is True
    batches = [doc for kind, doc in body["sent"] if kind == "telemetry" and isinstance(doc, list)]
    backfilled = [entry["values"]["co2"] for batch in batches for entry in batch]
    assert backfilled[:3] == [401, 402, 403]  # the three taken offline, in order
    live = [
        doc["values"]["co2"]
        for kind, doc in body["sent"]
        if kind == "telemetry" and isinstance(doc, dict)
    ]
    every = sorted(backfilled + live)
    assert every == list(range(401, 401 + len(every)))  # none lost, none twice
    stamps = [entry["ts"] for batch in batches for entry in batch]
    assert all(900 <= b - a <= 1100 for a, b in itertools.pairwise(stamps)), stamps
    (reported,) = [doc for kind, doc in body["sent"] if kind == "reported"]
    assert reported == {"version": 3, "state": {"relay": True, "led": False, "interval_s": 1}}


def test_what_no_subscriber_took_is_kept_and_sent_again_on_micropython() -> None:
    """The link raises mqtt5.NoSubscribers (PUBACK 0x10) for everything but the retained
    status: readings stay in the buffer and the command result in its queue, on the same
    connection; once a subscriber is there each is sent exactly once."""
    result = wasm.run(NO_SUBSCRIBERS_LOOP, STAND_INS)
    assert result.ok, f"{result.error}\n{result.stdout}"
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    body = json.loads(line.removeprefix("RESULT "))
    held = body["held"]
    assert held["holding"] is True
    assert held["buffered"] >= 3
    assert [kind for kind, _doc in held["sent"]] == ["status"]  # retained: 0x10 is fine
    assert "0x10 no matching subscribers: kept" in result.stdout
    assert (body["holding"], body["left"], body["replies"]) == (False, 0, 0)
    assert (body["link"], body["connects"]) == ("mqtt", 1)  # never reconnected for it
    kinds = [kind for kind, _doc in body["sent"]]
    assert kinds.count("result:c_1") == 1
    telemetry = [doc for kind, doc in body["sent"] if kind == "telemetry"]
    entries = [e for doc in telemetry for e in (doc if isinstance(doc, list) else [doc])]
    values = [entry["values"]["co2"] for entry in entries]
    assert sorted(values) == list(range(401, 401 + len(values)))  # none lost, none twice
    assert values[: held["buffered"]] == list(range(401, 401 + held["buffered"]))
