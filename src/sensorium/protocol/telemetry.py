"""Telemetry documents (PROTOCOL.md "Telemetry"): the three accepted shapes, as readings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sensorium.protocol._json import MAX_PAYLOAD_BYTES, decode_document, json_type
from sensorium.protocol.errors import PayloadError

__all__ = [
    "FUTURE_TOLERANCE_MS",
    "MAX_BATCH_ENTRIES",
    "MAX_KEY_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "Reading",
    "decode_document",
    "parse_telemetry",
    "validate_telemetry",
]

MAX_BATCH_ENTRIES = 1000
MAX_KEY_LENGTH = 64
FUTURE_TOLERANCE_MS = 5 * 60 * 1000

_KEY_MATCH = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_KEY_LENGTH}}}").fullmatch
# Keys already matched: a fleet sends the same few keys in every document; a set lookup
# instead of the pattern per reading. Bounded: beyond it keys are matched every time.
_KNOWN_KEYS: set[str] = set()
_KNOWN_KEYS_MAX = 10_000
_ENTRY_MEMBERS = ("ts", "values")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_INF = float("inf")
# Readings beyond ±1e18 are refused: no sensor reads them, and with them sums and
# averages over a bucket, and energy's power x time, could overflow a double (PostgreSQL
# raises "value out of range" on float8 overflow, so one such device could make its
# rollups, and the writer's batch, fail for good).
MAX_ABS_VALUE = 1e18
# Longer than any date-time fromisoformat accepts; spares it from parsing junk.
_MAX_ISO_LENGTH = 64
_MISSING: Any = object()


class Reading(NamedTuple):
    """One point of a device's time series. A named tuple: made three times per
    single-reading MQTT message, it costs a third of a frozen dataclass (0.5 vs 1.6 µs)."""

    ts: int  # epoch milliseconds
    key: str
    value: float  # booleans become 0.0/1.0, ints become float


def parse_telemetry(raw: bytes, *, now_ms: int, oldest_ms: int | None = None) -> list[Reading]:
    """Decode and validate a telemetry body; raises PayloadError on the first problem."""
    return validate_telemetry(decode_document(raw), now_ms=now_ms, oldest_ms=oldest_ms)


def validate_telemetry(doc: object, *, now_ms: int, oldest_ms: int | None = None) -> list[Reading]:
    """Validate an already-decoded telemetry document.

    A missing `ts` means `now_ms`; `oldest_ms` (the retention horizon) is checked when given.
    The result never holds the same (key, ts) twice: a later duplicate replaces an earlier one.
    """
    readings: list[Reading] = []
    if isinstance(doc, dict):
        if "values" in doc or "ts" in doc:
            ts, values = _entry(doc, None, now_ms, oldest_ms)
        elif doc:
            ts, values = now_ms, doc
        else:
            raise PayloadError("invalid_shape", "document holds no values")
        # One JSON object cannot repeat a key, so a single-entry document needs no dedup.
        _collect(values, ts, None, readings)
        return readings
    if isinstance(doc, list):
        if not doc:
            raise PayloadError("invalid_shape", "batch is empty")
        if len(doc) > MAX_BATCH_ENTRIES:
            raise PayloadError(
                "too_many_entries",
                f"batch has {len(doc)} entries; at most {MAX_BATCH_ENTRIES} are allowed",
            )
        seen_ts: set[int] = set()
        repeated_ts = False
        for index, entry in enumerate(doc):
            if not isinstance(entry, dict):
                raise _error(
                    "invalid_shape", index, None, f"must be an object, got {json_type(entry)}"
                )
            ts, values = _entry(entry, index, now_ms, oldest_ms)
            # Duplicates need a shared ts; tracking per entry keeps the common case cheap.
            if ts in seen_ts:
                repeated_ts = True
            else:
                seen_ts.add(ts)
            _collect(values, ts, index, readings)
        return _latest_only(readings) if repeated_ts else readings
    raise PayloadError(
        "invalid_shape", f"document must be a JSON object or array, got {json_type(doc)}"
    )


def _entry(
    entry: dict[Any, Any], index: int | None, now_ms: int, oldest_ms: int | None
) -> tuple[int, dict[Any, Any]]:
    values = entry.get("values", _MISSING)
    raw_ts = entry.get("ts", _MISSING)
    expected_size = 1 if raw_ts is _MISSING else 2
    if values is _MISSING or len(entry) != expected_size:
        for member in entry:
            if member not in _ENTRY_MEMBERS:
                raise _error(
                    "invalid_shape",
                    index,
                    str(member),
                    f"unknown member {member!r:.80}; an entry holds only 'ts' and 'values' "
                    "(readings go inside 'values')",
                )
        raise _error("invalid_shape", index, "values", "'values' is missing")
    if not isinstance(values, dict):
        raise _error(
            "invalid_shape", index, "values", f"'values' must be an object, got {json_type(values)}"
        )
    if not values:
        raise _error("invalid_shape", index, "values", "'values' is empty")
    ts = now_ms if raw_ts is _MISSING else _timestamp(raw_ts, index, now_ms, oldest_ms)
    return ts, values


def _collect(values: dict[Any, Any], ts: int, index: int | None, out: list[Reading]) -> None:
    append = out.append
    known = _KNOWN_KEYS
    for key, value in values.items():
        if key not in known:
            if type(key) is not str or _KEY_MATCH(key) is None:
                raise _bad_key(key, index)
            if len(known) < _KNOWN_KEYS_MAX:
                known.add(key)
        # Exact type checks first: JSON decoders only produce these, and bool is an int subclass.
        kind = type(value)
        if kind is float:
            if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
                raise _bad_value(key, value, index)
            append(Reading(ts, key, value))
        elif kind is int:
            if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
                raise _bad_value(key, value, index)
            append(Reading(ts, key, float(value)))
        elif kind is bool:
            append(Reading(ts, key, 1.0 if value else 0.0))
        else:
            append(Reading(ts, key, _unusual_value(key, value, index)))


def _unusual_value(key: str, value: object, index: int | None) -> float:
    # Subclasses (IntEnum, float subclasses) only reach here from Python callers.
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = _INF
        if -MAX_ABS_VALUE <= number <= MAX_ABS_VALUE:
            return number
    raise _bad_value(key, value, index)


def _timestamp(raw: object, index: int | None, now_ms: int, oldest_ms: int | None) -> int:
    if type(raw) is int:
        ts = raw
    elif type(raw) is str:
        ts = _iso_ms(raw, index)
    elif (isinstance(raw, float) and raw.is_integer()) or (
        isinstance(raw, int) and not isinstance(raw, bool)
    ):
        ts = int(raw)
    else:
        raise _error(
            "invalid_ts",
            index,
            "ts",
            "'ts' must be integer epoch milliseconds or an ISO-8601 string with offset, "
            f"got {_describe(raw)}",
        )
    if ts < 0:
        raise _error("invalid_ts", index, "ts", f"'ts' {ts} is before 1970")
    if ts > now_ms + FUTURE_TOLERANCE_MS:
        raise _error(
            "ts_in_future",
            index,
            "ts",
            f"'ts' {ts} is {ts - now_ms} ms ahead of the server clock "
            f"(at most {FUTURE_TOLERANCE_MS // 60000} minutes allowed)",
        )
    if oldest_ms is not None and ts < oldest_ms:
        raise _error(
            "ts_too_old",
            index,
            "ts",
            f"'ts' {ts} is older than the retention window (oldest accepted: {oldest_ms})",
        )
    return ts


def _iso_ms(text: str, index: int | None) -> int:
    if len(text) <= _MAX_ISO_LENGTH and text.isascii():
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                raise _error(
                    "invalid_ts",
                    index,
                    "ts",
                    f"'ts' {text!r} has no UTC offset; add 'Z' or '+hh:mm'",
                )
            return (moment - _EPOCH) // _ONE_MS
    raise _error(
        "invalid_ts", index, "ts", f"'ts' {text!r:.60} is not an ISO-8601 date-time with offset"
    )


def _latest_only(readings: list[Reading]) -> list[Reading]:
    # Walk backwards so the last occurrence of each (key, ts) is the one kept, in its place.
    seen: set[tuple[str, int]] = set()
    kept: list[Reading] = []
    for reading in reversed(readings):
        point = (reading.key, reading.ts)
        if point not in seen:
            seen.add(point)
            kept.append(reading)
    kept.reverse()
    return kept


def _error(code: str, index: int | None, where: str | None, message: str) -> PayloadError:
    if index is None:
        return PayloadError(code, message, where)
    field = f"[{index}]" if where is None else f"[{index}].{where}"
    return PayloadError(code, f"entry {index}: {message}", field)


def _bad_key(key: object, index: int | None) -> PayloadError:
    name = key if isinstance(key, str) else str(key)
    if not isinstance(key, str):
        problem = f"key {key!r:.80} must be a string"
    elif not key or len(key) > MAX_KEY_LENGTH:
        problem = f"key {key!r:.80} is {len(key)} characters long; keys have 1-{MAX_KEY_LENGTH}"
    else:
        problem = f"key {key!r:.80} may only contain A-Z, a-z, 0-9, '_', '.' and '-'"
    return _error("invalid_key", index, f"values.{name}", problem)


def _bad_value(key: str, value: object, index: int | None) -> PayloadError:
    if isinstance(value, float) and not -_INF < value < _INF:
        shown = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        problem = f"value of {key!r} must be a finite number, got {shown}"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        problem = f"value of {key!r} is out of range: readings are limited to ±1e18"
    else:
        problem = f"value of {key!r} must be a number or boolean, got {json_type(value)}"
    return _error("invalid_value", index, f"values.{key}", problem)


def _describe(value: object) -> str:
    if isinstance(value, float):
        return f"non-integral number {value!r}"
    return json_type(value)
