"""The firmware's own copy of the protocol (firmware/lib/sensorium_fw/proto.py) and its
control logic agree with the server's `sensorium.protocol` and the simulator's
`sensorium.simulator.control`: what one builds the other reads, what one refuses the
other refuses, and both devices answer the same downlink the same way."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sensorium import protocol
from sensorium.protocol import CommandMessage, StateDocument
from sensorium.protocol.ota import DEVICE_STATES, OtaAssignment, parse_assignment, parse_progress
from sensorium.simulator.control import DeviceControl
from tests.firmware import host

DEVICE = "a4cf12b3c4d5"
NOW_MS = 1_763_900_000_000


def fw(name: str = "proto") -> Any:
    return host.firmware(name)


def test_topics_agree() -> None:
    proto = fw()
    for device in (DEVICE, "000000000000", "+"):
        assert proto.telemetry_topic(device) == protocol.telemetry_topic(device)
        assert proto.status_topic(device) == protocol.status_topic(device)
        assert proto.logs_topic(device) == protocol.logs_topic(device)
        assert proto.state_desired_topic(device) == protocol.state_desired_topic(device)
        assert proto.state_reported_topic(device) == protocol.state_reported_topic(device)
        assert proto.commands_topic(device) == protocol.commands_topic(device)
        assert proto.command_result_topic(device, "c_01H") == protocol.command_result_topic(
            device, "c_01H"
        )
        assert proto.ota_topic(device) == protocol.ota_topic(device)
        assert proto.ota_progress_topic(device) == protocol.ota_progress_topic(device)
    # Everything the server sends a device, the firmware listens to.
    assert set(proto.downlink_subscriptions(DEVICE)) == set(protocol.downlink_topics(DEVICE))
    parsed = protocol.parse_uplink_topic(proto.command_result_topic(DEVICE, "c_9"))
    assert parsed == protocol.ParsedTopic(DEVICE, protocol.KIND_COMMAND_RESULT, "c_9")


def test_limits_and_command_names_agree() -> None:
    proto = fw()
    assert proto.BUILTIN_COMMANDS == protocol.BUILTIN_COMMANDS
    assert proto.MAX_BATCH_ENTRIES == protocol.MAX_BATCH_ENTRIES
    assert proto.MAX_PAYLOAD_BYTES == protocol.MAX_PAYLOAD_BYTES
    assert proto.MAX_KEY_LENGTH == protocol.MAX_KEY_LENGTH
    assert proto.MAX_ABS_VALUE == protocol.telemetry.MAX_ABS_VALUE


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09_.-/ é#"), min_size=0, max_size=70))
def test_keys_the_firmware_accepts_are_the_keys_the_server_accepts(key: str) -> None:
    try:
        protocol.validate_telemetry({key: 1}, now_ms=NOW_MS)
    except protocol.PayloadError:
        server_ok = False
    else:
        server_ok = True
    assert fw().is_key(key) is server_ok


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.floats(width=32),
        st.floats(),
        st.integers(-(2**70), 2**70),
        st.booleans(),
        st.sampled_from([1e18, -1e18, 1e18 * (1 + 2**-52), 10**18, 10**18 + 1]),
    )
)
def test_values_the_firmware_keeps_are_the_values_the_server_accepts(value: Any) -> None:
    try:
        protocol.validate_telemetry({"v": value}, now_ms=NOW_MS)
    except protocol.PayloadError:
        server_ok = False
    else:
        server_ok = True
    assert fw().is_value(value) is server_ok, value


values = st.dictionaries(
    st.text(alphabet="abcxyz_.-019", min_size=1, max_size=8),
    st.one_of(
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(min_value=-9.999999843067494e17, max_value=9.999999843067494e17, width=32),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(values, min_size=1, max_size=40), st.integers(1, 7))
def test_firmware_batches_are_read_back_by_the_server_unchanged(
    readings: list[dict[str, Any]], max_entries: int
) -> None:
    entries: list[dict[str, Any]] = [
        {"ts": NOW_MS - 1000 * i, "values": v} for i, v in enumerate(readings)
    ]
    got: list[protocol.Reading] = []
    for payload, count in fw().batches(entries, max_entries=max_entries):
        parsed = protocol.parse_telemetry(payload, now_ms=NOW_MS)
        assert len(orjson.loads(payload)) == count <= max_entries
        got += parsed
    want = [protocol.Reading(e["ts"], k, float(v)) for e in entries for k, v in e["values"].items()]
    assert got == want


def test_live_documents_are_accepted_by_the_server() -> None:
    proto = fw()
    readings = protocol.parse_telemetry(
        proto.dumps(proto.entry(NOW_MS, {"co2": 612, "relay": True})), now_ms=NOW_MS
    )
    assert readings == [
        protocol.Reading(NOW_MS, "co2", 612.0),
        protocol.Reading(NOW_MS, "relay", 1.0),
    ]
    unstamped = protocol.parse_telemetry(proto.dumps(proto.entry(None, {"t": 1.5})), now_ms=5)
    assert unstamped == [protocol.Reading(5, "t", 1.5)]
    status = protocol.parse_status(
        proto.dumps(proto.status_doc("1.0.0", 61.9, -61, "192.168.1.23", 81234, 30))
    )
    assert status == protocol.StatusReport(True, "1.0.0", 61, -61, "192.168.1.23", 81234, 30)
    assert protocol.parse_status(proto.OFFLINE).online is False
    line = protocol.parse_log(
        proto.dumps(proto.log_doc("warn", "dht22: no reading", NOW_MS)), now_ms=NOW_MS
    )
    assert (line.level, line.msg, line.ts) == ("warn", "dht22: no reading", NOW_MS)
    reported = protocol.parse_state_document(proto.dumps(proto.reported_doc(7, {"relay": True})))
    assert reported == StateDocument(7, {"relay": True})
    result = protocol.parse_command_result(proto.dumps(proto.result_doc("ok", {"pong": True})))
    assert (result.status, result.result) == ("ok", {"pong": True})
    error = protocol.parse_command_result(proto.dumps(proto.result_doc("error", error="nope")))
    assert (error.status, error.error) == ("error", "nope")


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-5, 2**54), st.floats(-10, 10), st.text(max_size=3)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
command_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.sampled_from(["c_01H", "c/1", "", "x" * 129]), json_values),
            "name": st.one_of(st.sampled_from(["ping", "set_interval", "a b", ""]), json_values),
            "params": json_values,
            "expires_at": st.one_of(st.sampled_from([NOW_MS, 1.5, True]), json_values),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(command_docs)
@example({"id": "c_01H", "name": "ping", "params": {"times": 2}, "expires_at": NOW_MS})
@example({"id": "c_01H", "name": "ping", "expires_at": NOW_MS})
@example({"id": "c_01H", "name": "ping", "params": {"a": [[[[[[[[1]]]]]]]]}, "expires_at": 1})
def test_commands_the_firmware_accepts_are_the_ones_the_server_would_send(doc: Any) -> None:
    proto = fw()
    try:
        server = protocol.validate_command_message(doc)
    except protocol.PayloadError:
        server = None
    try:
        device = proto.validate_command(doc)
    except proto.ProtocolError:
        device = None
    assert (device is None) is (server is None)
    if device is not None and server is not None:
        assert (device.id, device.name, device.params, device.expires_at) == (
            server.id,
            server.name,
            server.params,
            server.expires_at,
        )


state_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "version": st.one_of(st.sampled_from([0, 7, 2**53, -1, 1.0, False]), json_values),
            "state": st.one_of(
                st.dictionaries(st.sampled_from(["relay", "interval_s", "a b", ""]), json_values),
                json_values,
            ),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(state_docs)
@example({"version": 7, "state": {"relay": True, "mode": "eco"}})
@example({"version": 2**53 - 1, "state": {}})
@example({"version": 1, "state": {"deep": [[[[[[[[1]]]]]]]]}})
def test_desired_documents_are_read_alike(doc: Any) -> None:
    proto = fw()
    try:
        server = protocol.validate_state_document(doc)
    except protocol.PayloadError:
        server = None
    try:
        device = proto.validate_state_document(doc)
    except proto.ProtocolError:
        device = None
    assert (device is None) is (server is None), doc
    if device is not None and server is not None:
        assert device == (server.version, server.state)


DOWNLINK: list[tuple[str, Any]] = [
    ("desired", (1, {"relay": False, "mode": "eco"})),
    ("command", ("c_1", "ping", {})),
    ("desired", (1, {"relay": True})),  # stale: ignored by both
    ("reconnect", None),
    ("desired", (1, {"relay": True, "interval_s": 30})),
    ("command", ("c_2", "set_interval", {"interval_s": 15})),
    ("command", ("c_3", "set_interval", {"interval_s": 0})),
    ("command", ("c_2", "set_interval", {"interval_s": 99})),  # redelivered: ignored
    ("desired", (2, {"relay": "on", "led": True, "brightness": 40, "interval_s": 20.0})),
    ("command", ("c_4", "blink", {})),
    ("command", ("c_5", "self_destruct", {})),
    ("command", ("c_6", "reset_wifi", {})),
    ("command", ("c_7", "reboot", {})),
    ("desired", (3, {})),
]


def test_firmware_and_simulator_handle_the_same_downlink_alike() -> None:
    control = fw("control")
    simulator = DeviceControl(profile="energy", interval_s=60, rng=random.Random(1))
    firmware = control.Control(dict(simulator.state))
    assert firmware.state == simulator.state
    for kind, body in DOWNLINK:
        if kind == "reconnect":
            simulator.reconnected()
            firmware.reconnected()
        elif kind == "desired":
            version, state = body
            applied = simulator.apply_desired(StateDocument(version, state))
            assert firmware.apply_desired(version, state) is applied, body
        else:
            command_id, name, params = body
            message = CommandMessage(command_id, name, params, NOW_MS + 1000)
            want = simulator.handle_command(message, now_ms=NOW_MS, uptime_s=12.5)
            got = firmware.handle_command(
                fw().Command(command_id, name, params, NOW_MS + 1000), NOW_MS, 12.5
            )
            if want is None:
                assert got is None, body
            else:
                assert got is not None, body
                assert (got.status, got.result, got.error) == (
                    want.result.status,
                    want.result.result,
                    want.result.error,
                ), body
                assert (got.action == "reboot") is want.reboot
        assert firmware.state == simulator.state, body
        assert firmware.report() == (simulator.report().version, simulator.report().state)
        assert firmware.interval_s == simulator.interval_s
    assert json.loads(fw().dumps(firmware.state)) == simulator.state


@pytest.mark.parametrize("times", [1, 5])
def test_blink_with_times_agrees(times: int) -> None:
    control = fw("control")
    simulator = DeviceControl(profile="energy", interval_s=60, rng=random.Random(1))
    firmware = control.Control(dict(simulator.state))
    message = CommandMessage("c_1", "blink", {"times": times}, NOW_MS)
    want = simulator.handle_command(message, now_ms=NOW_MS, uptime_s=1)
    got = firmware.handle_command(fw().Command("c_1", "blink", {"times": times}, NOW_MS), NOW_MS, 1)
    assert want is not None
    assert (got.status, got.result) == (want.result.status, want.result.result)


ASSIGNMENT: dict[str, Any] = {
    "job": "j_01HZX3",
    "version": "1.3.0",
    "size": 412345,
    "sha256": "ab" * 32,
    "signature": "c2ln",
    "url": "/api/v1/firmware/jobs/j_01HZX3/image",
}
assignment_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "job": st.one_of(
                st.sampled_from(["j_01HZX3", "j_", "j_a.b", "x_1", "j_" + "a" * 39]), json_values
            ),
            "version": st.one_of(st.sampled_from(["1.3.0", ""]), json_values),
            "size": st.one_of(st.sampled_from([1, 0, -1, 2.0, True]), json_values),
            "sha256": st.one_of(st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 31]), json_values),
            "signature": st.one_of(st.sampled_from(["c2ln", ""]), json_values),
            "url": st.one_of(st.sampled_from(["/api/v1/x", ""]), json_values),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(assignment_docs)
@example(ASSIGNMENT)
@example({**ASSIGNMENT, "size": True})
@example({**ASSIGNMENT, "job": "j_" + "a" * 38})
def test_assignments_are_read_alike(doc: Any) -> None:
    proto = fw()
    raw = orjson.dumps(doc)
    try:
        server = parse_assignment(raw)
    except protocol.PayloadError:
        server = None
    try:
        device = proto.parse_assignment(raw)
    except proto.ProtocolError:
        device = None
    assert (device is None) is (server is None), doc
    if device is not None and server is not None:
        assert device.to_dict() == server.to_dict()


def test_the_firmware_reads_what_the_server_assigns_and_the_server_its_progress() -> None:
    proto = fw()
    sent = OtaAssignment(**ASSIGNMENT).to_json()
    assert proto.parse_assignment(sent).to_dict() == ASSIGNMENT
    assert proto.parse_assignment(b"") is None  # withdrawn
    assert parse_assignment(b"") is None
    assert proto.OTA_STATES == DEVICE_STATES
    for state in proto.OTA_STATES:
        report = parse_progress(proto.dumps(proto.progress_doc("j_1", state, 0.5)))
        assert (report.job, report.state, report.progress) == ("j_1", state, 0.5)
    failed = parse_progress(proto.dumps(proto.progress_doc("j_1", "FAILED", error="x" * 2000)))
    assert failed.error == "x" * 1000
