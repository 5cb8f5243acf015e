"""What a simulated device does with its downlink, like the firmware: apply the desired
state and report what it applied, answer commands. No I/O: the links deliver the
documents (PROTOCOL.md "Desired / reported state", "Commands") and send what this returns.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sensorium.protocol import CommandMessage, CommandResult, StateDocument
from sensorium.simulator.signals import Profile

MIN_INTERVAL_S: Final = 1
MAX_INTERVAL_S: Final = 86_400
INTERVAL_ERROR: Final = f"interval_s must be an integer from {MIN_INTERVAL_S} to {MAX_INTERVAL_S}"
DEFAULT_BLINKS: Final = 3
# Command ids remembered to answer a redelivered command (MQTT QoS 1) only once.
_REMEMBERED_IDS: Final = 64

_SSIDS: Final = (
    "FRITZ!Box 7590",
    "Vodafone-2G",
    "eduroam",
    "HP-Print-3F",
    "TP-Link_Guest",
    "Office-IoT",
    "NETGEAR42",
    "Livebox-5a1c",
    "iPhone",
    "DIRECT-roku",
)


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def parse_interval(value: Any) -> int | None:
    """A telemetry interval in whole seconds, or None when `value` is not one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if MIN_INTERVAL_S <= value <= MAX_INTERVAL_S else None


# The keys the firmware acts on, each with what it accepts (None: refused, the device
# keeps its current value and the server keeps showing the key as pending).
KNOWN_KEYS: Final[dict[str, Callable[[Any], Any]]] = {
    "relay": _flag,
    "led": _flag,
    "brightness": _number,
    "interval_s": parse_interval,
}


def initial_state(profile: Profile, interval_s: float) -> dict[str, Any]:
    """The state a device boots with: an energy meter switches its circuit through a relay;
    every board has a status LED, the climate sensors a dimmable one."""
    state: dict[str, Any] = {"relay": True} if profile == "energy" else {"brightness": 128}
    state["led"] = False
    state["interval_s"] = max(MIN_INTERVAL_S, min(MAX_INTERVAL_S, round(interval_s)))
    return state


def controls_for(profile: Profile) -> list[dict[str, Any]]:
    """The dashboard controls (docs/control.md "Controls") of a device of `profile`."""
    if profile != "energy":
        return []
    return [
        {"key": "relay", "kind": "switch", "label": "Relay"},
        {
            "key": "identify",
            "kind": "button",
            "label": "Blink",
            "command": "blink",
            "params": {"times": DEFAULT_BLINKS},
        },
    ]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one command; `reboot`: once it is delivered, the device restarts."""

    command_id: str
    result: CommandResult
    reboot: bool = False


@dataclass(frozen=True, slots=True)
class _Network:
    ssid: str
    rssi: int
    channel: int


class DeviceControl:
    """A device's controllable state and its command handlers.

    `interval_s` is the telemetry interval the device samples at: it starts as the fleet's
    (which may be below a second in tests) and follows the `interval_s` key once that
    changes. `report_due` says a reported state should be sent (`report()`, then
    `reported()` once it was acknowledged).
    """

    def __init__(self, *, profile: Profile, interval_s: float, rng: random.Random) -> None:
        self.state: dict[str, Any] = initial_state(profile, interval_s)
        self.interval_s = interval_s
        self.applied_version: int | None = None
        self.report_due = False
        self._fresh = True
        self._rng = rng
        self._answered: deque[str] = deque(maxlen=_REMEMBERED_IDS)
        names = rng.sample(_SSIDS, rng.randint(3, 7))
        self._networks = [
            _Network(name, rng.randint(-92, -40), rng.choice((1, 6, 11))) for name in names
        ]
        self._handlers: dict[str, Callable[[CommandMessage, float], Reply]] = {
            "ping": self._ping,
            "blink": self._blink,
            "set_interval": self._set_interval,
            "wifi_scan": self._wifi_scan,
            "reset_wifi": self._ok,
            "reboot": self._reboot,
        }

    def reconnected(self) -> None:
        """The next desired document is applied and reported even if its version is not
        newer: the server learns what the device holds after every (re)connect."""
        self._fresh = True

    def apply_desired(self, doc: StateDocument) -> bool:
        """Apply a desired document (the whole desired state); False when it was ignored
        because an equal or newer version was applied already."""
        stale = self.applied_version is not None and doc.version <= self.applied_version
        if stale and not self._fresh:
            return False
        self._fresh = False
        # Hardware keys keep their value when the document leaves them out (the relay is
        # still there); other keys are whatever the server last asked for.
        state = {key: value for key, value in self.state.items() if key in KNOWN_KEYS}
        for key, value in doc.state.items():
            accept = KNOWN_KEYS.get(key)
            if accept is None:
                state[key] = value
            elif (accepted := accept(value)) is not None:
                state[key] = accepted
        self._set_state(state)
        self.applied_version = doc.version
        self.report_due = True
        return True

    def report(self) -> StateDocument:
        """The reported document: the last desired version seen and the full local state."""
        return StateDocument(self.applied_version or 0, dict(self.state))

    def reported(self) -> None:
        self.report_due = False

    def handle_command(
        self, message: CommandMessage, *, now_ms: int, uptime_s: float
    ) -> Reply | None:
        """The reply to `message`; None when it expired or was answered already."""
        if message.expires_at < now_ms or message.id in self._answered:
            return None
        self._answered.append(message.id)
        handler = self._handlers.get(message.name)
        if handler is None:
            return Reply(
                message.id, CommandResult("error", error=f"unknown command: {message.name}")
            )
        return handler(message, uptime_s)

    # --- handlers -----------------------------------------------------------------------

    def _ok(self, message: CommandMessage, _uptime_s: float) -> Reply:
        return Reply(message.id, CommandResult("ok"))

    def _ping(self, message: CommandMessage, uptime_s: float) -> Reply:
        result = {"pong": True, "uptime_s": max(0, int(uptime_s))}
        return Reply(message.id, CommandResult("ok", result))

    def _blink(self, message: CommandMessage, _uptime_s: float) -> Reply:
        times = message.params.get("times", DEFAULT_BLINKS)
        return Reply(message.id, CommandResult("ok", {"times": times}))

    def _set_interval(self, message: CommandMessage, _uptime_s: float) -> Reply:
        interval = parse_interval(message.params.get("interval_s"))
        if interval is None:
            return Reply(message.id, CommandResult("error", error=INTERVAL_ERROR))
        if interval != self.state["interval_s"]:
            self._set_state({**self.state, "interval_s": interval})
            self.report_due = True
        return Reply(message.id, CommandResult("ok", {"interval_s": interval}))

    def _wifi_scan(self, message: CommandMessage, _uptime_s: float) -> Reply:
        rng = self._rng
        heard = [(max(-100, min(-30, n.rssi + rng.randint(-4, 4))), n) for n in self._networks]
        heard.sort(key=lambda pair: -pair[0])
        networks = [{"ssid": n.ssid, "rssi": rssi, "channel": n.channel} for rssi, n in heard]
        return Reply(message.id, CommandResult("ok", {"networks": networks}))

    def _reboot(self, message: CommandMessage, _uptime_s: float) -> Reply:
        return Reply(message.id, CommandResult("ok"), reboot=True)

    def _set_state(self, state: dict[str, Any]) -> None:
        interval = state.get("interval_s")
        if interval != self.state.get("interval_s") and isinstance(interval, int):
            self.interval_s = float(interval)
        self.state = state
