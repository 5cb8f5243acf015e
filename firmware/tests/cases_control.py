"""control: desired state applied and reported, built-in commands answered once."""

from sensorium_fw import control, proto


class Hooks:
    def __init__(self):
        self.applied = []
        self.blinked = []

    def apply(self, key, value):
        self.applied.append((key, value))

    def blink(self, times):
        self.blinked.append(times)

    def scan(self):
        return [
            {"ssid": "far", "rssi": -80, "channel": 1},
            {"ssid": "near", "rssi": -40, "channel": 6},
        ]


def _device():
    hooks = Hooks()
    device = control.Control({"relay": False, "led": False, "interval_s": 60}, hooks)
    hooks.applied = []
    return device, hooks


def case_the_boot_state_is_put_on_the_hardware():
    hooks = Hooks()
    device = control.Control({"relay": True, "mode": "eco"}, hooks, applied_version=4)
    assert hooks.applied == [("relay", True)]
    assert device.report() == (4, {"relay": True, "mode": "eco"})
    assert not device.report_due
    assert not device.changed


def _command(name, params=None, expires_at=2000, command_id="c_1"):
    return proto.Command(command_id, name, params or {}, expires_at)


def case_desired_state_is_applied_to_the_hardware_and_reported():
    device, hooks = _device()
    assert device.apply_desired(3, {"relay": True, "mode": "eco", "brightness": "max"})
    assert hooks.applied == [("relay", True)]
    assert device.state == {"relay": True, "led": False, "interval_s": 60, "mode": "eco"}
    assert device.report_due
    assert device.changed
    assert device.report() == (3, device.state)
    device.reported()
    assert not device.report_due


def case_stale_versions_are_ignored_until_a_reconnect():
    device, hooks = _device()
    assert device.apply_desired(3, {"relay": True})
    assert not device.apply_desired(3, {"relay": False})
    assert not device.apply_desired(2, {"relay": False})
    device.reconnected()
    assert device.apply_desired(3, {"relay": True})  # reported again after every connect
    assert device.apply_desired(4, {"relay": False})
    assert hooks.applied == [("relay", True), ("relay", False)]


def case_refused_values_keep_the_current_one():
    device, _hooks = _device()
    device.apply_desired(1, {"relay": "on", "interval_s": 0, "led": True})
    assert device.state["relay"] is False
    assert device.state["interval_s"] == 60
    assert device.state["led"] is True
    device.apply_desired(2, {"interval_s": 30.0})
    assert device.interval_s == 30


def case_ping():
    device, _hooks = _device()
    reply = device.handle_command(_command("ping"), 1000, 42.9)
    assert (reply.command_id, reply.status, reply.result) == (
        "c_1",
        "ok",
        {"pong": True, "uptime_s": 42},
    )


def case_a_command_is_answered_once_and_not_after_it_expired():
    device, _hooks = _device()
    assert device.handle_command(_command("ping"), 1000, 1) is not None
    assert device.handle_command(_command("ping"), 1000, 1) is None  # QoS 1 redelivery
    assert device.handle_command(_command("ping", command_id="c_2"), 2001, 1) is None
    # Without a clock nothing counts as expired.
    assert device.handle_command(_command("ping", command_id="c_3"), None, 1) is not None


def case_set_interval():
    device, _hooks = _device()
    reply = device.handle_command(_command("set_interval", {"interval_s": 15}), 0, 0)
    assert (reply.status, reply.result) == ("ok", {"interval_s": 15})
    assert device.interval_s == 15
    assert device.report_due
    for bad in (0, 86401, "10", 1.5, True, None):
        reply = device.handle_command(
            _command("set_interval", {"interval_s": bad}, command_id="c_%r" % (bad,)), 0, 0
        )
        assert (reply.status, reply.error) == ("error", control.INTERVAL_ERROR)
    assert device.interval_s == 15


def case_blink_wifi_scan_and_unknown():
    device, hooks = _device()
    reply = device.handle_command(_command("blink"), 0, 0)
    assert (reply.status, reply.result, hooks.blinked) == ("ok", {"times": 3}, [3])
    reply = device.handle_command(_command("blink", {"times": 99}, command_id="c_2"), 0, 0)
    assert reply.status == "error"
    reply = device.handle_command(_command("wifi_scan", command_id="c_3"), 0, 0)
    assert [n["ssid"] for n in reply.result["networks"]] == ["near", "far"]
    reply = device.handle_command(_command("self_destruct", command_id="c_4"), 0, 0)
    assert (reply.status, reply.error) == ("error", "unknown command: self_destruct")


def case_reboot_and_reset_wifi_act_after_answering():
    device, _hooks = _device()
    assert device.handle_command(_command("reboot"), 0, 0).action == "reboot"
    reply = device.handle_command(_command("reset_wifi", command_id="c_2"), 0, 0)
    assert (reply.status, reply.action) == ("ok", "reset_wifi")


def case_every_builtin_command_is_handled():
    device, _hooks = _device()
    for i, name in enumerate(proto.BUILTIN_COMMANDS):
        reply = device.handle_command(_command(name, command_id="c_%d" % i), 0, 0)
        assert reply.error != "unknown command: " + name
