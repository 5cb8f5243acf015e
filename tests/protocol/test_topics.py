"""MQTT topic names: building them and recognising device uplinks."""

from __future__ import annotations

import pytest

from sensorium.protocol import (
    TOPIC_PREFIX,
    UPLINK_KINDS,
    ParsedTopic,
    ProtocolError,
    command_result_topic,
    commands_topic,
    logs_topic,
    ota_progress_topic,
    ota_topic,
    parse_uplink_topic,
    state_desired_topic,
    state_reported_topic,
    status_topic,
    telemetry_topic,
    uplink_subscriptions,
)

DEVICE = "a4cf12b3c4d5"


def test_topic_names_match_the_protocol() -> None:
    assert TOPIC_PREFIX == "devices"
    assert telemetry_topic(DEVICE) == "devices/a4cf12b3c4d5/telemetry"
    assert status_topic(DEVICE) == "devices/a4cf12b3c4d5/status"
    assert logs_topic(DEVICE) == "devices/a4cf12b3c4d5/logs"
    assert state_desired_topic(DEVICE) == "devices/a4cf12b3c4d5/state/desired"
    assert state_reported_topic(DEVICE) == "devices/a4cf12b3c4d5/state/reported"
    assert commands_topic(DEVICE) == "devices/a4cf12b3c4d5/commands"
    assert (
        command_result_topic(DEVICE, "c_01HZX3") == "devices/a4cf12b3c4d5/commands/c_01HZX3/result"
    )
    assert ota_topic(DEVICE) == "devices/a4cf12b3c4d5/ota"
    assert ota_progress_topic(DEVICE) == "devices/a4cf12b3c4d5/ota/progress"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (telemetry_topic(DEVICE), ParsedTopic(DEVICE, "telemetry")),
        (status_topic(DEVICE), ParsedTopic(DEVICE, "status")),
        (logs_topic(DEVICE), ParsedTopic(DEVICE, "logs")),
        (state_reported_topic(DEVICE), ParsedTopic(DEVICE, "state/reported")),
        (ota_progress_topic(DEVICE), ParsedTopic(DEVICE, "ota/progress")),
        (
            command_result_topic(DEVICE, "c_01HZX3"),
            ParsedTopic(DEVICE, "command_result", "c_01HZX3"),
        ),
        (
            "devices/a4cf12b3c4d5/commands/0f8fad5b-d9cb-469f-a165-70867728950e/result",
            ParsedTopic(DEVICE, "command_result", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ),
    ],
)
def test_uplink_topics_are_recognised(topic: str, expected: ParsedTopic) -> None:
    parsed = parse_uplink_topic(topic)
    assert parsed == expected
    assert parsed is not None
    assert parsed.kind in UPLINK_KINDS


@pytest.mark.parametrize(
    "topic",
    [
        # downlink topics are the server's own, never accepted from a device
        "devices/a4cf12b3c4d5/state/desired",
        "devices/a4cf12b3c4d5/commands",
        "devices/a4cf12b3c4d5/ota",
        # device id must be canonical
        "devices/A4CF12B3C4D5/telemetry",
        "devices/a4:cf:12:b3:c4:d5/telemetry",
        "devices/a4cf12b3c4d/telemetry",
        "devices/+/telemetry",
        "devices//telemetry",
        # malformed
        "",
        "devices",
        "devices/a4cf12b3c4d5",
        "devices/a4cf12b3c4d5/",
        "devices/a4cf12b3c4d5/telemetry/",
        "/devices/a4cf12b3c4d5/telemetry",
        "Devices/a4cf12b3c4d5/telemetry",
        "things/a4cf12b3c4d5/telemetry",
        "devices/a4cf12b3c4d5/Telemetry",
        "devices/a4cf12b3c4d5/telemetry/extra",
        "devices/a4cf12b3c4d5/state/other",
        "devices/a4cf12b3c4d5/ota/other",
        "devices/a4cf12b3c4d5/commands/c_1",
        "devices/a4cf12b3c4d5/commands//result",
        "devices/a4cf12b3c4d5/commands/+/result",
        "devices/a4cf12b3c4d5/commands/c 1/result",
        "devices/a4cf12b3c4d5/commands/c_1/results",
        "devices/a4cf12b3c4d5/commands/c_1/result/x",
        f"devices/a4cf12b3c4d5/commands/{'c' * 129}/result",
        "v1/devices/me/telemetry",
    ],
)
def test_anything_else_is_not_an_uplink(topic: str) -> None:
    assert parse_uplink_topic(topic) is None


def test_non_string_topic_is_not_an_uplink() -> None:
    assert parse_uplink_topic(b"devices/a4cf12b3c4d5/status") is None  # type: ignore[arg-type]


@pytest.mark.parametrize("device_id", ["", "a/b", "#", "a4cf12b3c4d5/#", "x\0"])
def test_builders_refuse_ids_that_change_the_topic_shape(device_id: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        telemetry_topic(device_id)
    assert caught.value.field == "device_id"


@pytest.mark.parametrize("command_id", ["", "a/b", "#"])
def test_command_result_topic_refuses_bad_command_ids(command_id: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        command_result_topic(DEVICE, command_id)
    assert caught.value.field == "command_id"


def test_subscription_filters_cover_every_uplink_kind() -> None:
    filters = uplink_subscriptions()
    assert filters == (
        "devices/+/telemetry",
        "devices/+/status",
        "devices/+/logs",
        "devices/+/state/reported",
        "devices/+/commands/+/result",
        "devices/+/ota/progress",
    )
    # Substituting a concrete device for the wildcards gives topics that parse to every kind.
    kinds = {
        parsed.kind
        for topic in filters
        if (parsed := parse_uplink_topic(topic.replace("+", DEVICE, 1).replace("+", "c_1")))
    }
    assert kinds == UPLINK_KINDS
    assert uplink_subscriptions(DEVICE)[0] == telemetry_topic(DEVICE)
