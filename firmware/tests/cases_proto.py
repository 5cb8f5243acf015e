"""proto: topics, telemetry documents and batches, downlink document checks."""

import json

from casekit import raises
from sensorium_fw import proto

ID = "a4cf12b3c4d5"


def case_topics():
    assert proto.telemetry_topic(ID) == "devices/a4cf12b3c4d5/telemetry"
    assert proto.status_topic(ID) == "devices/a4cf12b3c4d5/status"
    assert proto.logs_topic(ID) == "devices/a4cf12b3c4d5/logs"
    assert proto.state_desired_topic(ID) == "devices/a4cf12b3c4d5/state/desired"
    assert proto.state_reported_topic(ID) == "devices/a4cf12b3c4d5/state/reported"
    assert proto.commands_topic(ID) == "devices/a4cf12b3c4d5/commands"
    assert proto.command_result_topic(ID, "c_01H") == "devices/a4cf12b3c4d5/commands/c_01H/result"
    raises(proto.ProtocolError, proto.telemetry_topic, "a/b")
    raises(proto.ProtocolError, proto.command_result_topic, ID, "c/1")


def case_keys():
    assert proto.is_key("temperature")
    assert proto.is_key("a.b-c_D9")
    assert proto.is_key("k" * 64)
    assert not proto.is_key("k" * 65)
    assert not proto.is_key("")
    assert not proto.is_key("temp erature")
    assert not proto.is_key("tempé")
    assert not proto.is_key(5)


def case_clean_values_drops_what_the_server_would_refuse():
    values = {"t": 21.5, "n": 3, "on": True, "bad key": 1, "nan": float("nan"), "s": "x"}
    values["inf"] = float("inf")
    values["huge"] = 2e18  # beyond the server's ±1e18
    values["big"] = -(10**19)
    values["edge"] = -1e18
    assert proto.clean_values(values) == {"t": 21.5, "n": 3, "on": True, "edge": -1e18}


def case_entry_without_a_clock_is_stamped_by_the_server():
    assert proto.entry(None, {"t": 1}) == {"t": 1}
    assert proto.entry(1763900000000, {"t": 1}) == {"ts": 1763900000000, "values": {"t": 1}}


def case_batches_respect_entry_and_byte_limits():
    entries = [{"ts": 1763900000000 + i, "values": {"power": i}} for i in range(25)]
    docs = list(proto.batches(entries, max_entries=10))
    assert [count for _payload, count in docs] == [10, 10, 5]
    decoded = []
    for payload, _count in docs:
        decoded += json.loads(payload)
    assert decoded == entries
    one = len(proto.dumps(entries[0]))
    docs = list(proto.batches(entries, max_bytes=2 + 3 * one + 2))
    assert all(len(payload) <= 2 + 3 * one + 2 for payload, _count in docs)
    assert sum(count for _payload, count in docs) == 25
    big = [{"ts": 1, "values": {"k": i}} for i in range(proto.MAX_BATCH_ENTRIES + 1)]
    counts = [count for _payload, count in proto.batches(big)]
    assert counts == [proto.MAX_BATCH_ENTRIES, 1]


def case_status_document():
    doc = proto.status_doc("1.0.0", 12.7, rssi=-61, ip="10.0.0.2", free_heap=81234, interval_s=30)
    assert doc == {
        "online": True,
        "fw": "1.0.0",
        "uptime_s": 12,
        "rssi": -61,
        "ip": "10.0.0.2",
        "free_heap": 81234,
        "interval_s": 30,
    }
    assert "rssi" not in proto.status_doc("1.0.0", 1, rssi=31)  # "no signal" on some ports
    assert json.loads(proto.OFFLINE) == {"online": False}


def case_desired_document():
    assert proto.parse_state_document(b'{"version": 7, "state": {"relay": true}}') == (
        7,
        {"relay": True},
    )
    for raw in (
        b"[]",
        b'{"state": {}}',
        b'{"version": -1, "state": {}}',
        b'{"version": 1.5, "state": {}}',
        b'{"version": true, "state": {}}',
        b'{"version": 1}',
        b'{"version": 1, "state": []}',
        b'{"version": 1, "state": {"bad key": 1}}',
        b"{not json",
    ):
        raises(proto.ProtocolError, proto.parse_state_document, raw)


def case_command_document():
    command = proto.parse_command(
        b'{"id": "c_01H", "name": "blink", "params": {"times": 2}, "expires_at": 1763900030000}'
    )
    assert (command.id, command.name, command.params) == ("c_01H", "blink", {"times": 2})
    assert command.expires_at == 1763900030000
    no_params = proto.parse_command(b'{"id": "c_2", "name": "ping", "expires_at": 1}')
    assert no_params.params == {}
    for raw in (
        b'{"id": "c/1", "name": "ping", "expires_at": 1}',
        b'{"id": "c_1", "name": "", "expires_at": 1}',
        b'{"id": "c_1", "name": "ping"}',
        b'{"id": "c_1", "name": "ping", "expires_at": "soon"}',
        b'{"id": "c_1", "name": "ping", "expires_at": 1, "params": []}',
        b'{"id": "c_1", "name": "ping", "expires_at": 1, "params": null}',
    ):
        raises(proto.ProtocolError, proto.parse_command, raw)


def case_result_document():
    assert proto.result_doc("ok", {"pong": True}) == {"status": "ok", "result": {"pong": True}}
    assert proto.result_doc("error", error="nope") == {"status": "error", "error": "nope"}
