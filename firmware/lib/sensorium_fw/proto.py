"""The device side of PROTOCOL.md: topic names and the JSON documents a device sends and
reads. A minimal copy of the server's `sensorium.protocol` (tests check they agree)."""

import json

PREFIX = "devices"
MAX_BATCH_ENTRIES = 1000
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_KEY_LENGTH = 64
MAX_COMMAND_ID_LENGTH = 128
MAX_VERSION = 2**53 - 1
MAX_DEPTH = 8
MAX_STATE_BYTES = 16 * 1024
MAX_PARAMS_BYTES = 8 * 1024
MAX_ABS_VALUE = 1e18  # readings beyond it are refused by the server
BUILTIN_COMMANDS = ("reboot", "ping", "set_interval", "reset_wifi", "blink", "wifi_scan")
OFFLINE = b'{"online":false}'

_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_SEPARATORS = (",", ":")


class ProtocolError(ValueError):
    """A document from the server that breaks PROTOCOL.md; `field` names the culprit."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.message = message
        self.field = field


def dumps(doc):
    """Compact JSON bytes (what goes on the wire and into the flash buffer)."""
    return json.dumps(doc, separators=_SEPARATORS).encode()


# --- names -------------------------------------------------------------------------------


def _chars_ok(text, longest):
    if type(text) is not str or not 0 < len(text) <= longest:
        return False
    return all(char in _NAME_CHARS for char in text)


def is_key(key):
    """A telemetry or state key: 1-64 characters of A-Z a-z 0-9 _ . -"""
    return _chars_ok(key, MAX_KEY_LENGTH)


def is_command_id(value):
    return _chars_ok(value, MAX_COMMAND_ID_LENGTH)


# --- topics ------------------------------------------------------------------------------


def _device(device_id):
    if type(device_id) is not str or not device_id or "/" in device_id or "#" in device_id:
        raise ProtocolError("device_id cannot be used in a topic", "device_id")
    return PREFIX + "/" + device_id


def telemetry_topic(device_id):
    return _device(device_id) + "/telemetry"


def status_topic(device_id):
    return _device(device_id) + "/status"


def logs_topic(device_id):
    return _device(device_id) + "/logs"


def state_desired_topic(device_id):
    return _device(device_id) + "/state/desired"


def state_reported_topic(device_id):
    return _device(device_id) + "/state/reported"


def commands_topic(device_id):
    return _device(device_id) + "/commands"


def command_result_topic(device_id, command_id):
    if not is_command_id(command_id):
        raise ProtocolError("command_id cannot be used in a topic", "command_id")
    return _device(device_id) + "/commands/" + command_id + "/result"


def ota_topic(device_id):
    return _device(device_id) + "/ota"


def ota_progress_topic(device_id):
    return _device(device_id) + "/ota/progress"


def downlink_subscriptions(device_id):
    """What a device subscribes to (QoS 1): its desired state, its commands and its
    update assignment."""
    return (state_desired_topic(device_id), commands_topic(device_id), ota_topic(device_id))


# --- telemetry ---------------------------------------------------------------------------


def is_value(value):
    """Numbers within ±MAX_ABS_VALUE (the server's limit); booleans are fine (0/1)."""
    kind = type(value)
    if kind is bool:
        return True
    return (kind is int or kind is float) and -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE


def clean_values(values):
    """The publishable part of a reading: valid keys with finite numbers or booleans.
    A driver's NaN or a bad key is dropped here rather than rejected by the server with
    the whole document."""
    clean = {}
    for key in values:
        value = values[key]
        if is_key(key) and is_value(value):
            clean[key] = value
    return clean


def entry(ts, values):
    """One telemetry entry; without a device clock (`ts` None) the server stamps it."""
    if ts is None:
        return dict(values)
    return {"ts": ts, "values": values}


def batches(entries, max_entries=MAX_BATCH_ENTRIES, max_bytes=MAX_PAYLOAD_BYTES):
    """Encode timestamped entries (`{"ts", "values"}` dicts, oldest first) as the fewest
    telemetry documents within the batch limits. Yields (payload bytes, entry count)."""
    parts = []
    size = 2
    for item in entries:
        part = dumps(item)
        if len(part) + 2 > max_bytes:
            raise ProtocolError("one entry alone is larger than a document may be")
        grown = size + len(part) + (1 if parts else 0)
        if len(parts) == max_entries or grown > max_bytes:
            yield _join(parts), len(parts)
            parts = []
            grown = 2 + len(part)
        parts.append(part)
        size = grown
    if parts:
        yield _join(parts), len(parts)


def _join(parts):
    return b"[" + b",".join(parts) + b"]"


# --- status and logs ---------------------------------------------------------------------


def status_doc(fw, uptime_s, rssi=None, ip=None, free_heap=None, interval_s=None):
    doc = {"online": True, "fw": fw, "uptime_s": int(uptime_s)}
    # The server accepts RSSI from -150 to 0 dBm; a radio that is off reports nothing.
    if type(rssi) is int and -150 <= rssi <= 0:
        doc["rssi"] = rssi
    if ip:
        doc["ip"] = ip
    if free_heap is not None:
        doc["free_heap"] = int(free_heap)
    if interval_s is not None:
        doc["interval_s"] = int(interval_s)
    return doc


def log_doc(level, msg, ts=None):
    doc = {"level": level, "msg": msg[:1000] or "-"}
    if ts is not None:
        doc["ts"] = ts
    return doc


# --- desired / reported state ------------------------------------------------------------


def _check_depth(value, field, depth=1):
    if depth > MAX_DEPTH:
        raise ProtocolError("nested deeper than %d levels" % MAX_DEPTH, field)
    if type(value) is dict:
        for key in value:
            _check_depth(value[key], field, depth + 1)
    elif type(value) is list:
        for child in value:
            _check_depth(child, field, depth + 1)


def _check_size(value, limit, field):
    if len(dumps(value)) > limit:
        raise ProtocolError("'%s' is larger than %d bytes" % (field, limit), field)


def validate_state(doc, field="state"):
    if type(doc) is not dict:
        raise ProtocolError("'%s' must be a JSON object" % field, field)
    for key in doc:
        if not is_key(key):
            raise ProtocolError("state key must be 1-64 characters of A-Z a-z 0-9 _ . -", field)
    _check_depth(doc, field)
    _check_size(doc, MAX_STATE_BYTES, field)
    return doc


def _version(doc):
    version = doc.get("version")
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise ProtocolError("'version' must be an integer from 0 to %d" % MAX_VERSION, "version")
    return version


def validate_state_document(doc):
    """`{"version": 7, "state": {...}}` -> (version, state)."""
    if type(doc) is not dict:
        raise ProtocolError("a state document must be a JSON object")
    version = _version(doc)
    if "state" not in doc:
        raise ProtocolError("'state' is required", "state")
    return version, validate_state(doc["state"])


def _loads(raw):
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("document is larger than 256 KiB")
    try:
        return json.loads(raw)
    except ValueError:
        raise ProtocolError("document is not valid JSON") from None


def parse_state_document(raw):
    return validate_state_document(_loads(raw))


def reported_doc(version, state):
    return {"version": version, "state": state}


# --- commands ----------------------------------------------------------------------------


class Command:
    """A command as the device receives it."""

    def __init__(self, command_id, name, params, expires_at):
        self.id = command_id
        self.name = name
        self.params = params
        self.expires_at = expires_at


def validate_command(doc):
    if type(doc) is not dict:
        raise ProtocolError("a command must be a JSON object")
    command_id = doc.get("id")
    if not is_command_id(command_id):
        raise ProtocolError("'id' must be a command id", "id")
    expires_at = doc.get("expires_at")
    if type(expires_at) is not int:
        raise ProtocolError("'expires_at' must be epoch milliseconds", "expires_at")
    name = doc.get("name")
    if not is_key(name):
        raise ProtocolError("'name' must be 1-64 characters of A-Z a-z 0-9 _ . -", "name")
    params = doc.get("params", {})
    if type(params) is not dict:
        raise ProtocolError("'params' must be a JSON object", "params")
    _check_depth(params, "params")
    _check_size(params, MAX_PARAMS_BYTES, "params")
    return Command(command_id, name, params, expires_at)


def parse_command(raw):
    return validate_command(_loads(raw))


def result_doc(status, result=None, error=None):
    doc = {"status": status}
    if result is not None:
        doc["result"] = result
    if error is not None:
        doc["error"] = error
    return doc


# --- OTA ---------------------------------------------------------------------------------

OTA_STATES = ("DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED", "FAILED")
MAX_OTA_ERROR_LENGTH = 1000
_JOB_CHARS = _NAME_CHARS.replace(".", "")
_HEX = "0123456789abcdef"


class Assignment:
    """An update the server assigned (PROTOCOL.md "OTA")."""

    def __init__(self, job, version, size, sha256, signature, url):
        self.job = job
        self.version = version
        self.size = size
        self.sha256 = sha256
        self.signature = signature
        self.url = url

    def to_dict(self):
        return {
            "job": self.job,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "signature": self.signature,
            "url": self.url,
        }


def is_job_id(value):
    return (
        type(value) is str
        and 3 <= len(value) <= 40
        and value.startswith("j_")
        and all(char in _JOB_CHARS for char in value[2:])
    )


def validate_assignment(doc):
    if type(doc) is not dict:
        raise ProtocolError("an assignment must be a JSON object")
    if not is_job_id(doc.get("job")):
        raise ProtocolError("'job' must be a job id", "job")
    size = doc.get("size")
    if type(size) is not int or size <= 0:
        raise ProtocolError("'size' must be a positive integer", "size")
    sha256 = doc.get("sha256")
    if type(sha256) is not str or len(sha256) != 64 or sha256.strip(_HEX):
        raise ProtocolError("'sha256' must be 64 lowercase hex digits", "sha256")
    for name in ("version", "signature", "url"):
        if type(doc.get(name)) is not str or not doc[name]:
            raise ProtocolError("'%s' must be a string" % name, name)
    return Assignment(doc["job"], doc["version"], size, sha256, doc["signature"], doc["url"])


def parse_assignment(raw):
    """The retained assignment; None when it was withdrawn (an empty message)."""
    if not raw:
        return None
    return validate_assignment(_loads(raw))


def progress_doc(job, state, progress=None, error=None):
    doc = {"job": job, "state": state}
    if progress is not None:
        doc["progress"] = progress
    if error is not None:
        doc["error"] = error[:MAX_OTA_ERROR_LENGTH] or "-"
    return doc
