"""What the device does with its downlink (PROTOCOL.md "Desired / reported state",
"Commands"): apply the desired state and report what it applied, answer commands.
No I/O: the hardware is reached through `hooks`, the links send what this returns.
Behaves like the simulator's `sensorium.simulator.control` (tests check they agree).
"""

MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 86400
INTERVAL_ERROR = "interval_s must be an integer from %d to %d" % (MIN_INTERVAL_S, MAX_INTERVAL_S)
DEFAULT_BLINKS = 3
MAX_BLINKS = 20
# Command ids remembered to answer a redelivered command (MQTT QoS 1) only once.
REMEMBERED_IDS = 64
_INF = float("inf")


def _flag(value):
    return value if type(value) is bool else None


def _number(value):
    kind = type(value)
    if kind is int:
        return value
    if kind is float and -_INF < value < _INF:
        return value
    return None


def parse_interval(value):
    """A telemetry interval in whole seconds, or None when `value` is not one."""
    if type(value) is float and -_INF < value < _INF and value == int(value):
        value = int(value)
    if type(value) is not int:
        return None
    return value if MIN_INTERVAL_S <= value <= MAX_INTERVAL_S else None


# The keys the firmware acts on, each with what it accepts (None: refused, the device
# keeps its current value and the server keeps showing the key as pending).
KNOWN_KEYS = {
    "relay": _flag,
    "led": _flag,
    "brightness": _number,
    "interval_s": parse_interval,
}


class Reply:
    """The answer to one command; `action` ("reboot", "reset_wifi") is what the device
    does once the answer was delivered."""

    def __init__(self, command_id, status, result=None, error=None, action=None):
        self.command_id = command_id
        self.status = status
        self.result = result
        self.error = error
        self.action = action


class NoHooks:
    """Hardware hooks of a device without any (and the interface a board implements)."""

    def apply(self, key, value):
        pass

    def blink(self, times):
        pass

    def scan(self):
        return []


class Control:
    """A device's controllable state and its command handlers.

    `state` starts as what the device booted with (persisted across reboots by the app);
    `report_due` says a reported state should be sent (`report()`, then `reported()` once
    it was acknowledged); `changed` that the state should be persisted.
    """

    def __init__(self, state, hooks=None, applied_version=None):
        self.hooks = hooks or NoHooks()
        self.state = {}
        self.applied_version = applied_version
        self.report_due = False
        self.changed = False
        self._fresh = True
        self._answered = []
        self._set_state(dict(state))
        self.changed = False
        self._handlers = {
            "ping": self._ping,
            "blink": self._blink,
            "set_interval": self._set_interval,
            "wifi_scan": self._wifi_scan,
            "reset_wifi": self._reset_wifi,
            "reboot": self._reboot,
        }

    @property
    def interval_s(self):
        return self.state.get("interval_s")

    def reconnected(self):
        """The next desired document is applied and reported even if its version is not
        newer: the server learns what the device holds after every (re)connect."""
        self._fresh = True

    def apply_desired(self, version, desired):
        """Apply a desired document (the whole desired state); False when it was ignored
        because an equal or newer version was applied already."""
        stale = self.applied_version is not None and version <= self.applied_version
        if stale and not self._fresh:
            return False
        self._fresh = False
        # Hardware keys keep their value when the document leaves them out (the relay is
        # still there); other keys are whatever the server last asked for.
        state = {}
        for key in self.state:
            if key in KNOWN_KEYS:
                state[key] = self.state[key]
        for key in desired:
            value = desired[key]
            accept = KNOWN_KEYS.get(key)
            if accept is None:
                state[key] = value
            else:
                accepted = accept(value)
                if accepted is not None:
                    state[key] = accepted
        self._set_state(state)
        self.applied_version = version
        self.report_due = True
        self.changed = True
        return True

    def report(self):
        """(version, state): the last desired version seen and the full local state."""
        return self.applied_version or 0, dict(self.state)

    def reported(self):
        self.report_due = False

    def handle_command(self, command, now_ms, uptime_s):
        """The Reply to `command`; None when it expired or was answered already.
        `now_ms` is None while the device has no clock: nothing counts as expired then."""
        if now_ms is not None and command.expires_at < now_ms:
            return None
        if command.id in self._answered:
            return None
        self._answered.append(command.id)
        if len(self._answered) > REMEMBERED_IDS:
            self._answered.pop(0)
        handler = self._handlers.get(command.name)
        if handler is None:
            return Reply(command.id, "error", error="unknown command: " + command.name)
        return handler(command, uptime_s)

    # --- handlers -----------------------------------------------------------------------

    def _ping(self, command, uptime_s):
        return Reply(command.id, "ok", {"pong": True, "uptime_s": max(0, int(uptime_s))})

    def _blink(self, command, _uptime_s):
        times = command.params.get("times", DEFAULT_BLINKS)
        if type(times) is not int or not 1 <= times <= MAX_BLINKS:
            return Reply(
                command.id, "error", error="times must be an integer from 1 to %d" % MAX_BLINKS
            )
        self.hooks.blink(times)
        return Reply(command.id, "ok", {"times": times})

    def _set_interval(self, command, _uptime_s):
        interval = parse_interval(command.params.get("interval_s"))
        if interval is None:
            return Reply(command.id, "error", error=INTERVAL_ERROR)
        if interval != self.state.get("interval_s"):
            state = dict(self.state)
            state["interval_s"] = interval
            self._set_state(state)
            self.report_due = True
            self.changed = True
        return Reply(command.id, "ok", {"interval_s": interval})

    def _wifi_scan(self, command, _uptime_s):
        try:
            networks = self.hooks.scan()
        except OSError as exc:
            return Reply(command.id, "error", error="scan failed: %s" % exc)
        networks = sorted(networks, key=lambda n: -n["rssi"])
        return Reply(command.id, "ok", {"networks": networks})

    def _reset_wifi(self, command, _uptime_s):
        return Reply(command.id, "ok", action="reset_wifi")

    def _reboot(self, command, _uptime_s):
        return Reply(command.id, "ok", action="reboot")

    def _set_state(self, state):
        for key in KNOWN_KEYS:
            if key in state and state[key] != self.state.get(key):
                self.hooks.apply(key, state[key])
        self.state = state
