"""Desired/reported state and commands (PROTOCOL.md "Desired / reported state", "Commands").

The server, the simulator and the firmware build and read these documents through here:

- desired (server → device, retained): `{"version": 7, "state": {"relay": true}}`
- reported (device → server): `{"version": 7, "state": {"relay": true}}`
- command (server → device): `{"id": "c_…", "name": "reboot", "params": {}, "expires_at": …}`
- result (device → server): `{"status": "ok|error", "result": {...}, "error": "…"}`

State documents are JSON objects whose top-level keys follow the telemetry key rules;
changes to them are JSON merge patches (RFC 7396: members replace, `null` removes,
objects merge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from sensorium.protocol._json import decode_document, json_type
from sensorium.protocol.errors import PayloadError
from sensorium.protocol.topics import is_command_id

MAX_STATE_BYTES = 16 * 1024
MAX_PARAMS_BYTES = 8 * 1024
MAX_RESULT_BYTES = 16 * 1024
MAX_ERROR_LENGTH = 1000
MAX_DEPTH = 8
MAX_VERSION = 2**53 - 1  # what a JavaScript number and every JSON parser keep exactly
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 86_400
DEFAULT_TIMEOUT_S = 60

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
BUILTIN_COMMANDS = ("reboot", "ping", "set_interval", "reset_wifi", "blink", "wifi_scan")

ResultStatus = Literal["ok", "error"]


# --- JSON merge patch --------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: the document `target` becomes once `patch` is applied (inputs unchanged)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _check_depth(value: Any, field: str, depth: int = 1) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError("too_deep", f"nested deeper than {MAX_DEPTH} levels", field)
    if isinstance(value, dict):
        for child in value.values():
            _check_depth(child, field, depth + 1)
    elif isinstance(value, list):
        for child in value:
            _check_depth(child, field, depth + 1)


def _check_size(value: Any, limit: int, field: str) -> None:
    if len(orjson.dumps(value)) > limit:
        raise PayloadError("too_large", f"'{field}' is larger than {limit} bytes", field)


def validate_state(doc: object, *, field: str = "state") -> dict[str, Any]:
    """A state document or merge patch: an object with valid top-level keys, bounded."""
    if not isinstance(doc, dict):
        raise PayloadError(
            "invalid_shape", f"'{field}' must be a JSON object, got {json_type(doc)}", field
        )
    for key, value in doc.items():
        if not _NAME.fullmatch(key):
            raise PayloadError(
                "invalid_key",
                f"state key {key[:70]!r} must be 1-64 characters of A-Z a-z 0-9 _ . -",
                f"{field}.{key[:64]}",
            )
        if isinstance(value, float) and value != value:  # NaN cannot come from JSON, but
            raise PayloadError("invalid_value", "NaN is not a JSON value", f"{field}.{key}")
    _check_depth(doc, field)
    _check_size(doc, MAX_STATE_BYTES, field)
    return doc


def _version(doc: dict[str, Any]) -> int:
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise PayloadError(
            "invalid_value", f"'version' must be an integer from 0 to {MAX_VERSION}", "version"
        )
    return version


# --- desired / reported ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateDocument:
    """A versioned state: what the server wants (desired) or what the device applied
    (reported; its version is the desired version the device has seen)."""

    version: int
    state: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps({"version": self.version, "state": self.state})


def validate_state_document(doc: object) -> StateDocument:
    if not isinstance(doc, dict):
        raise PayloadError(
            "invalid_shape", f"a state document must be a JSON object, got {json_type(doc)}"
        )
    version = _version(doc)
    if "state" not in doc:
        raise PayloadError("missing_field", "'state' is required", "state")
    return StateDocument(version, validate_state(doc["state"]))


def parse_state_document(raw: bytes) -> StateDocument:
    """`{"version": 7, "state": {...}}`: a reported state, or (device side) a desired one."""
    return validate_state_document(decode_document(raw))


# --- commands ----------------------------------------------------------------------------


def validate_command_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PayloadError(
            "invalid_value", "'name' must be 1-64 characters of A-Z a-z 0-9 _ . -", "name"
        )
    return name


def validate_params(params: object) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise PayloadError(
            "invalid_shape", f"'params' must be a JSON object, got {json_type(params)}", "params"
        )
    _check_depth(params, "params")
    _check_size(params, MAX_PARAMS_BYTES, "params")
    return params


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """A command as the device receives it (MQTT `devices/{id}/commands`, or HTTP long-poll)."""

    id: str
    name: str
    params: dict[str, Any]
    expires_at: int  # epoch ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "params": self.params,
            "expires_at": self.expires_at,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def validate_command_message(doc: object) -> CommandMessage:
    """Device side: a command the server sent."""
    if not isinstance(doc, dict):
        raise PayloadError(
            "invalid_shape", f"a command must be a JSON object, got {json_type(doc)}"
        )
    command_id = doc.get("id")
    if not isinstance(command_id, str) or not is_command_id(command_id):
        raise PayloadError("invalid_value", "'id' must be a command id", "id")
    expires_at = doc.get("expires_at")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise PayloadError("invalid_value", "'expires_at' must be epoch milliseconds", "expires_at")
    return CommandMessage(
        command_id,
        validate_command_name(doc.get("name")),
        validate_params(doc.get("params", {})),
        expires_at,
    )


def parse_command_message(raw: bytes) -> CommandMessage:
    return validate_command_message(decode_document(raw))


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What the device answers: `ok` with an optional result object, or `error` with a
    message (and optionally a result object too)."""

    status: ResultStatus
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"status": self.status}
        if self.result is not None:
            doc["result"] = self.result
        if self.error is not None:
            doc["error"] = self.error
        return orjson.dumps(doc)


def validate_command_result(doc: object) -> CommandResult:
    if not isinstance(doc, dict):
        raise PayloadError("invalid_shape", f"a result must be a JSON object, got {json_type(doc)}")
    status = doc.get("status")
    if status not in ("ok", "error"):
        raise PayloadError("invalid_value", '\'status\' must be "ok" or "error"', "status")
    result = doc.get("result")
    if result is not None:
        if not isinstance(result, dict):
            raise PayloadError(
                "invalid_shape",
                f"'result' must be a JSON object, got {json_type(result)}",
                "result",
            )
        _check_depth(result, "result")
        _check_size(result, MAX_RESULT_BYTES, "result")
    error = doc.get("error")
    if error is not None and not isinstance(error, str):
        raise PayloadError("invalid_value", "'error' must be a string", "error")
    if status == "error" and not error:
        error = "the device reported an error"
    return CommandResult(status, result, error[:MAX_ERROR_LENGTH] if error is not None else None)


def parse_command_result(raw: bytes) -> CommandResult:
    return validate_command_result(decode_document(raw))
