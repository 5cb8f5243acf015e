"""Telemetry documents (PROTOCOL.md "Telemetry"): the three accepted shapes, as readings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence, Set
from datetime import UTC, datetime, timedelta
from itertools import chain, islice, pairwise, repeat
from typing import Any, NamedTuple, overload

from sensorium.protocol._json import MAX_PAYLOAD_BYTES, decode_document, json_type
from sensorium.protocol.errors import PayloadError

__all__ = [
    "FUTURE_TOLERANCE_MS",
    "MAX_BATCH_ENTRIES",
    "MAX_KEY_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "Reading",
    "Readings",
    "decode_document",
    "parse_readings",
    "parse_telemetry",
    "validate_readings",
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
# Value types a JSON decoder gives for numbers and booleans: exactly these take the fast path.
_NUMBER_TYPES = frozenset({float, int, bool})
_DICT = {dict}
_FLOAT = {float}
_INT = {int}
_TWO = {2}
# A single-reading document's keys as one shared tuple and set per key set (see `_shape`).
_SHAPES: dict[tuple[str, ...], tuple[tuple[str, ...], frozenset[str]]] = {}
_SHAPES_MAX = 10_000


class Reading(NamedTuple):
    """One point of a device's time series. A named tuple: made three times per
    single-reading MQTT message, it costs a third of a frozen dataclass (0.5 vs 1.6 µs)."""

    ts: int  # epoch milliseconds
    key: str
    value: float  # booleans become 0.0/1.0, ints become float


class Readings(Sequence[Reading]):
    """One document's readings as columns: the key, ts and value of each, in the
    document's order, never the same (key, ts) twice. What a batch writer asks of a
    document comes without a pass over its readings: its keys (`names`), its first and
    last ts, and whether its ts never decrease (`ordered`: then each key's last reading
    is its newest). A 150-reading batch message is 3 lists instead of 150 `Reading`s;
    read as a sequence, the `Reading`s are made on demand."""

    __slots__ = ("first", "keys", "last", "names", "ordered", "stamps", "values")

    def __init__(
        self,
        keys: Sequence[str],
        stamps: Sequence[int],
        values: Sequence[float],
        *,
        names: Set[str] | None = None,
        ordered: bool | None = None,
        first: int | None = None,
        last: int | None = None,
    ) -> None:
        self.keys = keys
        self.stamps = stamps
        self.values = values
        self.names: Set[str] = set(keys) if names is None else names
        self.first = first if first is not None else min(stamps) if stamps else 0
        self.last = last if last is not None else max(stamps) if stamps else 0
        if ordered is None:
            ordered = all(a <= b for a, b in pairwise(stamps))
        self.ordered = ordered

    @classmethod
    def of(cls, readings: Iterable[Reading]) -> Readings:
        """`readings` as columns (itself when it is already); a later reading of the same
        (key, ts) replaces an earlier one, in its place."""
        if type(readings) is Readings:
            return readings
        rows = list(readings)
        keys = [r.key for r in rows]
        stamps = [r.ts for r in rows]
        values = [r.value for r in rows]
        if len(set(zip(keys, stamps, strict=True))) < len(rows):
            keys, stamps, values = _latest_columns(keys, stamps, values)
        return cls(keys, stamps, values)

    @classmethod
    def join(cls, parts: Sequence[Readings]) -> Readings:
        """Several documents' readings one after the other (the same (key, ts) may recur)."""
        if len(parts) == 1:
            return parts[0]
        keys: list[str] = []
        stamps: list[int] = []
        values: list[float] = []
        for part in parts:
            keys += part.keys
            stamps += part.stamps
            values += part.values
        return cls(
            keys,
            stamps,
            values,
            names=set().union(*[p.names for p in parts]),
            ordered=False,
            first=min([p.first for p in parts if p], default=0),
            last=max([p.last for p in parts if p], default=0),
        )

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Reading: ...

    @overload
    def __getitem__(self, index: slice) -> list[Reading]: ...

    def __getitem__(self, index: int | slice) -> Reading | list[Reading]:
        if isinstance(index, slice):
            return list(map(Reading, self.stamps[index], self.keys[index], self.values[index]))
        return Reading(self.stamps[index], self.keys[index], self.values[index])

    def __iter__(self) -> Iterator[Reading]:
        return map(Reading, self.stamps, self.keys, self.values)

    def __repr__(self) -> str:
        return f"Readings({list(self)!r})"

    def newest(self) -> dict[str, list[float | int]]:
        """Each key's newest reading as [ts, value]; the later one of a tie."""
        found: dict[str, list[float | int]] = {}
        keys, stamps, values = self.keys, self.stamps, self.values
        if self.ordered:
            # Each key's last reading is its newest: walk back until every key is found.
            wanted = len(self.names)
            for i in range(len(keys) - 1, -1, -1):
                if keys[i] not in found:
                    found[keys[i]] = [stamps[i], values[i]]
                    if len(found) == wanted:
                        break
            return found
        for key, ts, value in zip(keys, stamps, values, strict=True):
            current = found.get(key)
            if current is None or ts >= current[0]:
                found[key] = [ts, value]
        return found


def parse_readings(raw: bytes, *, now_ms: int, oldest_ms: int | None = None) -> Readings:
    """`parse_telemetry` as columns (see `Readings`): the same readings, the same errors."""
    return validate_readings(decode_document(raw), now_ms=now_ms, oldest_ms=oldest_ms)


def validate_readings(doc: object, *, now_ms: int, oldest_ms: int | None = None) -> Readings:
    """`validate_telemetry` as columns: the same readings, the same errors.

    Documents of the usual form (integer or absent `ts`, numbers and booleans as values)
    are read entry by entry, each entry's keys and values added to the columns in one
    go, and the values checked all at once (their types, range, NaN); anything else, and
    every invalid document, goes through `validate_telemetry`, which finds the first
    problem exactly as before."""
    try:
        fast = _fast_columns(doc, now_ms, oldest_ms)
    except PayloadError:
        fast = None
    if fast is not None:
        return fast
    return Readings.of(validate_telemetry(doc, now_ms=now_ms, oldest_ms=oldest_ms))


def _fast_columns(doc: object, now_ms: int, oldest_ms: int | None) -> Readings | None:
    """The readings of a document of the usual form: a single entry, or a batch whose
    entries all have an integer `ts` and non-empty `values`, every value a number or a
    boolean. None for any other document (and for values out of range); may raise
    PayloadError for a problem that is not the first (the caller then asks
    `validate_telemetry`). A batch is read with C-level passes (comprehensions, `map`,
    `chain`) instead of a Python loop per entry and per reading."""
    newest_ms = now_ms + FUTURE_TOLERANCE_MS
    # An integer ts above `lowest` and at most `newest_ms` is valid (see `_timestamp`).
    lowest = -1 if oldest_ms is None else max(oldest_ms, 0) - 1
    if type(doc) is dict:
        if "values" in doc or "ts" in doc:
            values = doc.get("values", _MISSING)
            ts = doc.get("ts", _MISSING)
            if not (
                type(ts) is int
                and lowest < ts <= newest_ms
                and type(values) is dict
                and values
                and len(doc) == 2
            ):
                ts, values = _entry(doc, None, now_ms, oldest_ms)
        elif doc:
            ts, values = now_ms, doc
        else:
            return None
        if not _KNOWN_KEYS.issuperset(values):
            _check_keys(values, None)
        numbers = _numbers(tuple(values.values()))
        if numbers is None:
            return None
        shared, names = _shape(values)
        # Tuples, not lists: the collector stops tracking a tuple of numbers the first time
        # it meets one, and a worker holds thousands of these documents until they are
        # committed (docs/benchmarks.md, "MQTT ingest", session 6).
        return Readings(
            shared, (ts,) * len(shared), numbers, names=names, ordered=True, first=ts, last=ts
        )
    if type(doc) is not list or not doc or len(doc) > MAX_BATCH_ENTRIES:
        return None
    if set(map(type, doc)) != _DICT or set(map(len, doc)) != _TWO:
        return None
    try:
        times = [entry["ts"] for entry in doc]
        entries = [entry["values"] for entry in doc]
    except KeyError:
        return None
    if set(map(type, times)) != _INT or set(map(type, entries)) != _DICT:
        return None
    first, last = min(times), max(times)
    sizes = set(map(len, entries))
    if not (lowest < first and last <= newest_ms) or 0 in sizes:
        return None
    if not _KNOWN_KEYS.issuperset(chain.from_iterable(entries)):
        for index, values in enumerate(entries):
            _check_keys(values, index)
    numbers = _numbers(list(chain.from_iterable(map(dict.values, entries))))
    if numbers is None:
        return None
    keys = list(chain.from_iterable(entries))
    if len(sizes) == 1:
        # Every entry has as many values (the usual batch): each ts that many times.
        stamps = list(chain.from_iterable(zip(*repeat(times, sizes.pop()), strict=True)))
    else:
        stamps = list(chain.from_iterable(map(repeat, times, map(len, entries))))
    # Strictly increasing ts (the usual batch): ordered, and no (key, ts) twice.
    increasing = all(map(int.__lt__, times, islice(times, 1, None)))
    if not increasing:
        if len(set(times)) < len(times):
            keys, stamps, numbers = _latest_columns(keys, stamps, numbers)
        ordered = all(map(int.__le__, times, islice(times, 1, None)))
        return Readings(keys, stamps, numbers, ordered=ordered, first=first, last=last)
    return Readings(keys, stamps, numbers, ordered=True, first=first, last=last)


def _check_keys(values: dict[Any, Any], index: int | None) -> None:
    known = _KNOWN_KEYS
    for key in values:
        if key not in known:
            if type(key) is not str or _KEY_MATCH(key) is None:
                raise _bad_key(key, index)
            if len(known) < _KNOWN_KEYS_MAX:
                known.add(key)


def _shape(values: dict[str, Any]) -> tuple[tuple[str, ...], frozenset[str]]:
    """`values`' keys, in order, and as a set: the same two objects for every document with
    these keys (a fleet sends a few key sets), so a waiting document holds no list or set of
    its own for the garbage collector to scan."""
    keys = tuple(values)
    try:
        return _SHAPES[keys]
    except KeyError:
        shape = (keys, frozenset(keys))
        if len(_SHAPES) < _SHAPES_MAX:
            _SHAPES[keys] = shape
        return shape


def _numbers(values: Sequence[Any]) -> Sequence[float] | None:
    """The values as floats when every one is a number or boolean in range, checked all
    at once (a tuple stays a tuple); None otherwise."""
    kinds = set(map(type, values))
    if kinds == _FLOAT:
        if not (min(values) >= -MAX_ABS_VALUE and max(values) <= MAX_ABS_VALUE):
            return None
    else:
        if not kinds <= _NUMBER_TYPES:
            return None
        try:
            values = (tuple if type(values) is tuple else list)(map(float, values))
        except OverflowError:
            return None
        # An integer just past the limit becomes the limit as a float: the limit itself
        # is left to the exact check.
        if not (min(values) > -MAX_ABS_VALUE and max(values) < MAX_ABS_VALUE):
            return None
    # NaN fails every comparison, but min and max may pass it over; the sum is NaN then.
    total = sum(values)
    if total != total:
        return None
    return values


def _latest_columns(
    keys: Sequence[str], stamps: Sequence[int], values: Sequence[Any]
) -> tuple[list[str], list[int], list[Any]]:
    """The last reading of each (key, ts), each in its place (as `_latest_only`)."""
    seen: set[tuple[str, int]] = set()
    kept: list[int] = []
    for i in range(len(keys) - 1, -1, -1):
        point = (keys[i], stamps[i])
        if point not in seen:
            seen.add(point)
            kept.append(i)
    kept.reverse()
    return [keys[i] for i in kept], [stamps[i] for i in kept], [values[i] for i in kept]


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
