"""OTA documents of PROTOCOL.md, for the server, the simulator and the firmware:

- assignment (server → device, retained `devices/{id}/ota`): `{"job": "j_…", "version":
  "1.3.0", "size": 412345, "sha256": "…", "signature": "<base64 Ed25519 over the
  sha256>", "url": "/api/v1/firmware/…"}`; an empty retained message clears it.
- progress (device → server, `devices/{id}/ota/progress`): `{"job": "j_…", "state":
  "DOWNLOADING", "progress": 0.42, "error": "…"}`.

The signature is over the 32 bytes of the SHA-256 digest (not its hex text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from sensorium.protocol._json import decode_document, json_type
from sensorium.protocol.errors import PayloadError

DEVICE_STATES = ("DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED", "FAILED")
DeviceState = Literal["DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED", "FAILED"]
MAX_ERROR_LENGTH = 1000
_JOB = re.compile(r"j_[A-Za-z0-9_-]{1,38}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Semantic Versioning 2.0.0, the regular expression suggested at semver.org.
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
MAX_VERSION_LENGTH = 64


def is_semver(value: str) -> bool:
    return len(value) <= MAX_VERSION_LENGTH and SEMVER.fullmatch(value) is not None


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class OtaAssignment:
    job: str
    version: str
    size: int
    sha256: str
    signature: str
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "signature": self.signature,
            "url": self.url,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_assignment(raw: bytes) -> OtaAssignment | None:
    """Device side: the retained assignment; None when it was cleared (empty message)."""
    if not raw:
        return None
    return validate_assignment(decode_document(raw))


def validate_assignment(doc: object) -> OtaAssignment:
    """An assignment document already decoded (e.g. the `ota` of the HTTP state poll)."""
    if not isinstance(doc, dict):
        raise PayloadError(
            "invalid_shape", f"an assignment must be an object, got {json_type(doc)}"
        )
    if not is_job_id(doc.get("job")):
        raise PayloadError("invalid_value", "'job' must be a job id", "job")
    size = doc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise PayloadError("invalid_value", "'size' must be a positive integer", "size")
    sha256 = doc.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise PayloadError("invalid_value", "'sha256' must be 64 lowercase hex digits", "sha256")
    for name in ("version", "signature", "url"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise PayloadError("invalid_value", f"'{name}' must be a string", name)
    return OtaAssignment(doc["job"], doc["version"], size, sha256, doc["signature"], doc["url"])


@dataclass(frozen=True, slots=True)
class OtaProgress:
    job: str
    state: DeviceState
    progress: float | None = None
    error: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"job": self.job, "state": self.state}
        if self.progress is not None:
            doc["progress"] = self.progress
        if self.error is not None:
            doc["error"] = self.error
        return orjson.dumps(doc)


def validate_progress(doc: object) -> OtaProgress:
    if not isinstance(doc, dict):
        raise PayloadError(
            "invalid_shape", f"an OTA progress report must be an object, got {json_type(doc)}"
        )
    job = doc.get("job")
    if not is_job_id(job):
        raise PayloadError("invalid_value", "'job' must be the job id of the assignment", "job")
    state = doc.get("state")
    if state not in DEVICE_STATES:
        raise PayloadError(
            "invalid_value", f"'state' must be one of {', '.join(DEVICE_STATES)}", "state"
        )
    progress = doc.get("progress")
    if progress is not None:
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise PayloadError("invalid_value", "'progress' must be a number", "progress")
        if not 0 <= progress <= 1:
            raise PayloadError("invalid_value", "'progress' must be from 0 to 1", "progress")
    error = doc.get("error")
    if error is not None and not isinstance(error, str):
        raise PayloadError("invalid_value", "'error' must be a string", "error")
    if state == "FAILED" and not error:
        error = "the device reported a failure"
    assert isinstance(job, str)
    return OtaProgress(
        job,
        state,
        float(progress) if progress is not None else None,
        error[:MAX_ERROR_LENGTH] if error is not None else None,
    )


def parse_progress(raw: bytes) -> OtaProgress:
    return validate_progress(decode_document(raw))
