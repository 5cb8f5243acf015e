"""MQTT topic names of PROTOCOL.md; the only place topic strings are built or parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sensorium.protocol.errors import ProtocolError
from sensorium.protocol.mac import is_canonical_mac

TOPIC_PREFIX = "devices"

KIND_TELEMETRY = "telemetry"
KIND_STATUS = "status"
KIND_LOGS = "logs"
KIND_STATE_REPORTED = "state/reported"
KIND_COMMAND_RESULT = "command_result"
KIND_OTA_PROGRESS = "ota/progress"
UPLINK_KINDS = frozenset(
    {
        KIND_TELEMETRY,
        KIND_STATUS,
        KIND_LOGS,
        KIND_STATE_REPORTED,
        KIND_COMMAND_RESULT,
        KIND_OTA_PROGRESS,
    }
)

# Server-generated ids look like "c_01H…" (ULID) or a UUID; anything else cannot be ours.
_COMMAND_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def is_command_id(value: str) -> bool:
    return _COMMAND_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """An uplink topic split into the publishing device and what it published."""

    device_id: str
    kind: str
    command_id: str | None = None


def _segment(value: str, what: str) -> str:
    # Builders also accept MQTT wildcards and broker ACL patterns ("+", "%c") for
    # subscriptions, so only what would change the topic's shape is refused here.
    if not isinstance(value, str) or not value or "/" in value or "#" in value or "\0" in value:
        raise ProtocolError(
            "invalid_topic", f"{what} cannot be used in a topic: {value!r:.40}", what
        )
    return value


def _device(device_id: str) -> str:
    return f"{TOPIC_PREFIX}/{_segment(device_id, 'device_id')}"


def telemetry_topic(device_id: str) -> str:
    return f"{_device(device_id)}/telemetry"


def status_topic(device_id: str) -> str:
    return f"{_device(device_id)}/status"


def logs_topic(device_id: str) -> str:
    return f"{_device(device_id)}/logs"


def state_desired_topic(device_id: str) -> str:
    return f"{_device(device_id)}/state/desired"


def state_reported_topic(device_id: str) -> str:
    return f"{_device(device_id)}/state/reported"


def commands_topic(device_id: str) -> str:
    return f"{_device(device_id)}/commands"


def command_result_topic(device_id: str, command_id: str) -> str:
    return f"{_device(device_id)}/commands/{_segment(command_id, 'command_id')}/result"


def ota_topic(device_id: str) -> str:
    return f"{_device(device_id)}/ota"


def ota_progress_topic(device_id: str) -> str:
    return f"{_device(device_id)}/ota/progress"


def uplink_subscriptions(device_id: str = "+") -> tuple[str, ...]:
    """Topic filters covering every uplink topic of one device (default: of all devices)."""
    return (
        telemetry_topic(device_id),
        status_topic(device_id),
        logs_topic(device_id),
        state_reported_topic(device_id),
        command_result_topic(device_id, "+"),
        ota_progress_topic(device_id),
    )


def downlink_topics(device_id: str = "+") -> tuple[str, ...]:
    """The topics the server publishes to a device (default: filters for all devices)."""
    return (state_desired_topic(device_id), commands_topic(device_id), ota_topic(device_id))


def parse_uplink_topic(topic: str) -> ParsedTopic | None:
    """Split a device → server topic; None for anything else, including non-canonical ids."""
    if not isinstance(topic, str):
        return None
    parts = topic.split("/")
    n = len(parts)
    if n < 3 or n > 5 or parts[0] != TOPIC_PREFIX or not is_canonical_mac(parts[1]):
        return None
    device_id = parts[1]
    if n == 3:
        kind = parts[2]
        if kind in (KIND_TELEMETRY, KIND_STATUS, KIND_LOGS):
            return ParsedTopic(device_id, kind)
        return None
    if n == 4:
        kind = f"{parts[2]}/{parts[3]}"
        if kind in (KIND_STATE_REPORTED, KIND_OTA_PROGRESS):
            return ParsedTopic(device_id, kind)
        return None
    if parts[2] == "commands" and parts[4] == "result" and _COMMAND_ID.fullmatch(parts[3]):
        return ParsedTopic(device_id, KIND_COMMAND_RESULT, parts[3])
    return None
