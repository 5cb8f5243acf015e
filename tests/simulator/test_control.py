"""A simulated device's downlink logic (no server): desired state applied and reported
like the firmware does, and the built-in commands answered."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from sensorium.protocol import CommandMessage, StateDocument, validate_command_result
from sensorium.simulator.control import INTERVAL_ERROR, DeviceControl, controls_for
from sensorium.simulator.signals import Profile

NOW_MS = 1_763_900_000_000


def device(profile: Profile = "energy", interval_s: float = 5.0, seed: int = 1) -> DeviceControl:
    return DeviceControl(profile=profile, interval_s=interval_s, rng=random.Random(seed))


def command(name: str, params: dict[str, Any] | None = None, **extra: Any) -> CommandMessage:
    return CommandMessage(
        extra.get("id", f"c_{name}"), name, params or {}, extra.get("expires_at", NOW_MS + 60_000)
    )


def answer(control: DeviceControl, message: CommandMessage, uptime_s: float = 0.0) -> Any:
    reply = control.handle_command(message, now_ms=NOW_MS, uptime_s=uptime_s)
    assert reply is not None
    assert reply.command_id == message.id
    # What the server will parse: the device's answer is a valid PROTOCOL result.
    return validate_command_result(orjson.loads(reply.result.to_json()))


def test_a_desired_state_is_applied_and_the_full_local_state_reported() -> None:
    control = device("energy")
    assert control.state == {"relay": True, "led": False, "interval_s": 5}
    assert not control.report_due

    assert control.apply_desired(StateDocument(3, {"relay": False, "mode": "eco"}))
    assert control.report_due
    report = control.report()
    assert report.version == 3
    # Keys it does not know are kept as given; what the document left out keeps its value.
    assert report.state == {"relay": False, "led": False, "interval_s": 5, "mode": "eco"}
    control.reported()
    assert not control.report_due

    # The document is the whole desired state: an unknown key it no longer holds is gone,
    # a hardware key it no longer holds is still there.
    assert control.apply_desired(StateDocument(4, {"led": True}))
    assert control.report().state == {"relay": False, "led": True, "interval_s": 5}


def test_versions_not_newer_are_ignored_except_right_after_a_reconnect() -> None:
    control = device()
    assert control.apply_desired(StateDocument(5, {"relay": False}))
    control.reported()
    assert not control.apply_desired(StateDocument(5, {"relay": True}))
    assert not control.apply_desired(StateDocument(4, {"relay": True}))
    assert control.state["relay"] is False
    assert not control.report_due

    control.reconnected()
    # The retained document again (same version): applied and reported once…
    assert control.apply_desired(StateDocument(5, {"relay": False}))
    assert control.report_due
    control.reported()
    # …and the server's second copy (it also publishes when the device comes online) not.
    assert not control.apply_desired(StateDocument(5, {"relay": False}))
    assert not control.report_due

    # After a reconnect the server's version wins even when lower (its database was reset).
    control.reconnected()
    assert control.apply_desired(StateDocument(1, {"relay": True}))
    assert control.report().version == 1
    assert control.apply_desired(StateDocument(2, {"relay": False}))


def test_the_first_document_is_applied_whatever_its_version() -> None:
    control = device()
    control.reconnected()
    assert control.apply_desired(StateDocument(0, {}))
    assert control.report() == StateDocument(0, {"relay": True, "led": False, "interval_s": 5})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("relay", "on"),
        ("relay", 1),
        ("led", "yes"),
        ("interval_s", 0),
        ("interval_s", 86_401),
        ("interval_s", 2.5),
        ("interval_s", True),
        ("interval_s", "30"),
        ("brightness", "bright"),
        ("brightness", False),
    ],
)
def test_a_value_the_hardware_cannot_take_is_not_applied(key: str, value: Any) -> None:
    control = device("climate", interval_s=10)
    before = dict(control.state)
    assert control.apply_desired(StateDocument(1, {key: value, "other": 1}))
    # Reported as it really is, so the server keeps showing the key as pending.
    assert control.report().state == {**before, "other": 1}
    assert control.interval_s == 10


def test_the_interval_key_changes_the_telemetry_interval() -> None:
    control = device("climate", interval_s=0.2)
    assert control.state["interval_s"] == 1
    control.apply_desired(StateDocument(1, {"interval_s": 1, "brightness": 42.5}))
    assert control.interval_s == 0.2  # the key did not change: a test fleet stays fast
    assert control.state["brightness"] == 42.5
    control.apply_desired(StateDocument(2, {"interval_s": 30.0}))
    assert control.interval_s == 30.0
    assert control.report().state["interval_s"] == 30


def test_ping_blink_reset_wifi_and_reboot() -> None:
    control = device()
    pong = answer(control, command("ping"), uptime_s=12.7)
    assert (pong.status, pong.result) == ("ok", {"pong": True, "uptime_s": 12})
    assert answer(control, command("blink", id="c_b1")).result == {"times": 3}
    assert answer(control, command("blink", {"times": 7}, id="c_b2")).result == {"times": 7}
    assert answer(control, command("reset_wifi")).status == "ok"
    reply = control.handle_command(command("reboot"), now_ms=NOW_MS, uptime_s=1)
    assert reply is not None
    assert reply.result.status == "ok"
    assert reply.reboot
    ping = control.handle_command(command("ping", id="c_p2"), now_ms=NOW_MS, uptime_s=1)
    assert ping is not None
    assert not ping.reboot


def test_set_interval_changes_the_interval_and_the_reported_state() -> None:
    control = device(interval_s=5)
    control.apply_desired(StateDocument(2, {"relay": True}))
    control.reported()
    result = answer(control, command("set_interval", {"interval_s": 60}))
    assert (result.status, result.result) == ("ok", {"interval_s": 60})
    assert control.interval_s == 60
    assert control.report_due
    assert control.report() == StateDocument(2, {"relay": True, "led": False, "interval_s": 60})


@pytest.mark.parametrize("params", [{}, {"interval_s": 0}, {"interval_s": 86_401},
                                    {"interval_s": "60"}, {"interval_s": True}])  # fmt: skip
def test_set_interval_refuses_bad_params(params: dict[str, Any]) -> None:
    control = device(interval_s=5)
    result = answer(control, command("set_interval", params))
    assert (result.status, result.error) == ("error", INTERVAL_ERROR)
    assert control.interval_s == 5
    assert not control.report_due


def test_wifi_scan_lists_networks_reproducibly_from_the_device_seed() -> None:
    def scans(seed: int) -> list[Any]:
        control = device(seed=seed)
        return [answer(control, command("wifi_scan", id=f"c_{i}")).result for i in range(3)]

    first = scans(4)
    assert first == scans(4)
    assert first != scans(5)
    networks = first[0]["networks"]
    assert len(networks) >= 3
    assert all(isinstance(n["ssid"], str) and -100 <= n["rssi"] <= -30 for n in networks)
    assert [n["rssi"] for n in networks] == sorted((n["rssi"] for n in networks), reverse=True)
    # The same networks each time, their signal varying a little.
    assert {n["ssid"] for n in first[1]["networks"]} == {n["ssid"] for n in networks}


def test_unknown_expired_and_repeated_commands() -> None:
    control = device()
    unknown = answer(control, command("self_destruct"))
    assert (unknown.status, unknown.error) == ("error", "unknown command: self_destruct")
    expired = command("ping", id="c_old", expires_at=NOW_MS - 1)
    assert control.handle_command(expired, now_ms=NOW_MS, uptime_s=0) is None
    fresh = command("ping", id="c_new")
    assert control.handle_command(fresh, now_ms=NOW_MS, uptime_s=0) is not None
    # MQTT QoS 1 may deliver it twice: answered once.
    assert control.handle_command(fresh, now_ms=NOW_MS, uptime_s=0) is None


def test_only_devices_with_a_relay_declare_controls() -> None:
    controls = controls_for("energy")
    assert {"key": "relay", "kind": "switch", "label": "Relay"} in controls
    button = next(c for c in controls if c["kind"] == "button")
    assert (button["command"], button["label"]) == ("blink", "Blink")
    assert device("energy").state["relay"] is True
    assert controls_for("climate") == []
    assert "relay" not in device("climate").state
