"""Telemetry documents: the three shapes, timestamps, limits, and every rejection."""

from __future__ import annotations

import enum
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorium.protocol import (
    FUTURE_TOLERANCE_MS,
    MAX_BATCH_ENTRIES,
    MAX_KEY_LENGTH,
    MAX_PAYLOAD_BYTES,
    PayloadError,
    ProtocolError,
    Reading,
    Readings,
    parse_readings,
    parse_telemetry,
    validate_readings,
    validate_telemetry,
)
from sensorium.protocol import telemetry as telemetry_module

_T = TypeVar("_T")

NOW = 1_763_900_000_000  # 2025-11-23T12:13:20Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse(doc: object, *, oldest_ms: int | None = None) -> list[Reading]:
    return parse_telemetry(orjson.dumps(doc), now_ms=NOW, oldest_ms=oldest_ms)


def rejection(doc: object, *, oldest_ms: int | None = None) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        validate_telemetry(doc, now_ms=NOW, oldest_ms=oldest_ms)
    return caught.value


# --- the three shapes ------------------------------------------------------------------------


def test_flat_document_is_stamped_now() -> None:
    raw = b'{"temperature": 21.5, "humidity": 40.2, "co2": 612}'
    assert parse_telemetry(raw, now_ms=NOW) == [
        Reading(NOW, "temperature", 21.5),
        Reading(NOW, "humidity", 40.2),
        Reading(NOW, "co2", 612.0),
    ]


def test_ts_values_document() -> None:
    raw = b'{"ts": 1763900000000, "values": {"temperature": 21.5}}'
    assert parse_telemetry(raw, now_ms=NOW + 1000) == [Reading(1763900000000, "temperature", 21.5)]


def test_ts_values_document_without_ts_is_stamped_now() -> None:
    assert parse({"values": {"temperature": 21.5}}) == [Reading(NOW, "temperature", 21.5)]


def test_batch_document() -> None:
    raw = (
        b'[{"ts": 1763900000000, "values": {"power": 230.1}},'
        b' {"ts": 1763900001000, "values": {"power": 229.8}}]'
    )
    assert parse_telemetry(raw, now_ms=NOW + 1000) == [
        Reading(1763900000000, "power", 230.1),
        Reading(1763900001000, "power", 229.8),
    ]


def test_batch_entries_without_ts_are_stamped_now() -> None:
    doc = [{"values": {"a": 1}}, {"ts": NOW - 5000, "values": {"b": 2}}]
    assert parse(doc) == [Reading(NOW, "a", 1.0), Reading(NOW - 5000, "b", 2.0)]


def test_booleans_become_one_and_zero_and_ints_become_floats() -> None:
    readings = parse({"relay": True, "door": False, "count": 7, "big": 2**59})
    assert readings == [
        Reading(NOW, "relay", 1.0),
        Reading(NOW, "door", 0.0),
        Reading(NOW, "count", 7.0),
        Reading(NOW, "big", float(2**59)),
    ]
    assert all(type(r.value) is float for r in readings)


def test_negative_zero_and_extreme_finite_values_are_kept() -> None:
    assert parse({"a": -0.0, "b": -1e18, "c": 5e-324, "d": -12}) == [
        Reading(NOW, "a", -0.0),
        Reading(NOW, "b", -1e18),
        Reading(NOW, "c", 5e-324),
        Reading(NOW, "d", -12.0),
    ]


def test_readings_are_immutable() -> None:
    reading = parse({"a": 1})[0]
    with pytest.raises(AttributeError):
        reading.value = 2.0  # type: ignore[misc]


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2025-11-23T12:13:20Z", NOW),
        ("2025-11-23T12:13:20.000Z", NOW),
        ("2025-11-23T12:13:19.5Z", NOW - 500),
        ("2025-11-23T12:13:19.123+00:00", NOW - 877),
        ("2025-11-23T13:13:20+01:00", NOW),
        ("2025-11-23T07:43:20-04:30", NOW),
        ("2025-11-23 12:13:20Z", NOW),
        ("2025-11-23T12:13:19.999999Z", NOW - 1),  # sub-millisecond part is dropped
        ("1970-01-01T00:00:00Z", 0),
        (NOW, NOW),
        (0, 0),
        (1763900000000.0, NOW),
        (1.7639e12, 1_763_900_000_000),
    ],
)
def test_timestamp_forms(ts: object, expected: int) -> None:
    assert parse({"ts": ts, "values": {"a": 1}}) == [Reading(expected, "a", 1.0)]


def test_the_future_tolerance_is_five_minutes() -> None:
    assert FUTURE_TOLERANCE_MS == 300_000
    edge = NOW + FUTURE_TOLERANCE_MS
    assert parse({"ts": edge, "values": {"a": 1}}) == [Reading(edge, "a", 1.0)]
    error = rejection({"ts": edge + 1, "values": {"a": 1}})
    assert (error.code, error.field) == ("ts_in_future", "ts")
    assert "300001 ms ahead" in error.message


def test_iso_timestamps_in_the_future_are_rejected() -> None:
    error = rejection({"ts": "2025-11-23T12:18:21Z", "values": {"a": 1}})
    assert (error.code, error.field) == ("ts_in_future", "ts")


def test_oldest_ms_rejects_older_points() -> None:
    oldest = NOW - 86_400_000
    assert parse({"ts": oldest, "values": {"a": 1}}, oldest_ms=oldest) == [
        Reading(oldest, "a", 1.0)
    ]
    error = rejection({"ts": oldest - 1, "values": {"a": 1}}, oldest_ms=oldest)
    assert (error.code, error.field) == ("ts_too_old", "ts")
    batch = [{"ts": NOW, "values": {"a": 1}}, {"ts": "1999-01-01T00:00:00Z", "values": {"a": 1}}]
    error = rejection(batch, oldest_ms=oldest)
    assert (error.code, error.field) == ("ts_too_old", "[1].ts")


def test_without_oldest_ms_old_points_are_accepted() -> None:
    assert parse({"ts": 1, "values": {"a": 1}}) == [Reading(1, "a", 1.0)]


@pytest.mark.parametrize(
    "ts",
    [
        True,
        False,
        None,
        -1,
        -1.0,
        1.5,
        NOW + 0.5,
        "1763900000000",
        "yesterday",
        "",
        "2025-11-23T12:13:20",  # no offset
        "2025-11-23",  # a date, not an instant
        "2025-11-23T12:13:20+25:00",
        "1969-12-31T23:59:59Z",
        "2025-11-23T12:13:20Z" + " " * 60,
        "\N{ARABIC-INDIC DIGIT TWO}025-11-23T12:13:20Z",
        [NOW],
        {"ms": NOW},
    ],
)
def test_invalid_timestamps(ts: object) -> None:
    error = rejection({"ts": ts, "values": {"a": 1}})
    assert (error.code, error.field) == ("invalid_ts", "ts")


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamps_from_python_callers(ts: float) -> None:
    error = rejection({"ts": ts, "values": {"a": 1}})
    assert (error.code, error.field) == ("invalid_ts", "ts")


def test_naive_iso_timestamp_message_says_what_is_missing() -> None:
    error = rejection([{"values": {"a": 1}}, {"ts": "2025-11-23T12:13:20", "values": {"a": 1}}])
    assert (error.code, error.field) == ("invalid_ts", "[1].ts")
    assert error.message.startswith("entry 1: ")
    assert "offset" in error.message


# --- keys and values -------------------------------------------------------------------------


def test_key_length_limit_is_64() -> None:
    assert MAX_KEY_LENGTH == 64
    key = "k" * 64
    assert parse({key: 1}) == [Reading(NOW, key, 1.0)]
    long_key = "k" * 65
    error = rejection({long_key: 1})
    assert (error.code, error.field) == ("invalid_key", f"values.{long_key}")
    assert "65" in error.message


def test_every_allowed_key_character() -> None:
    key = "AZaz09_.-"
    assert parse({"values": {key: 1}}) == [Reading(NOW, key, 1.0)]


@pytest.mark.parametrize(
    "key", ["", "a b", "temp/1", "t\N{LATIN SMALL LETTER A WITH DIAERESIS}", "a\n", "$x", "a:b"]
)
def test_invalid_keys_are_named(key: str) -> None:
    error = rejection({key: 1})
    assert (error.code, error.field) == ("invalid_key", f"values.{key}")
    error = rejection({"ts": NOW, "values": {"ok": 1, key: 1}})
    assert (error.code, error.field) == ("invalid_key", f"values.{key}")
    error = rejection([{"values": {"ok": 1}}, {"values": {key: 1}}])
    assert (error.code, error.field) == ("invalid_key", f"[1].values.{key}")
    assert error.message.startswith("entry 1: key ")


def test_non_string_keys_from_python_callers_are_invalid_keys() -> None:
    error = rejection({"values": {7: 1.0}})
    assert (error.code, error.field) == ("invalid_key", "values.7")


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ("21.5", "string"),
        (None, "null"),
        ({"v": 1}, "object"),
        ([1, 2], "array"),
    ],
)
def test_values_must_be_numbers_or_booleans(value: object, described: str) -> None:
    error = rejection({"temp": value})
    assert (error.code, error.field) == ("invalid_value", "values.temp")
    assert error.message == f"value of 'temp' must be a number or boolean, got {described}"


def test_batch_value_error_names_the_entry_and_key() -> None:
    ok = {"ts": NOW, "values": {"temp": 1}}
    error = rejection([ok, ok, ok, {"ts": NOW, "values": {"temp": "hot"}}])
    assert (error.code, error.field) == ("invalid_value", "[3].values.temp")
    assert error.message == "entry 3: value of 'temp' must be a number or boolean, got string"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, -(10**400)])
def test_non_finite_values_from_python_callers(value: float) -> None:
    error = rejection({"values": {"temp": value}})
    assert (error.code, error.field) == ("invalid_value", "values.temp")


@pytest.mark.parametrize("value", [1e18, -1e18, 10**18, -(10**18), 999_999_999_999_999_999])
def test_values_up_to_1e18_are_kept(value: float) -> None:
    assert parse({"big": value}) == [Reading(NOW, "big", float(value))]


@pytest.mark.parametrize("raw", [b"1.0000001e18", b"-1e19", b"1000000000000000001", b"1.7e308"])
def test_values_beyond_1e18_are_out_of_range(raw: bytes) -> None:
    error = outcome(lambda: parse_telemetry(b'{"power": ' + raw + b"}", now_ms=NOW))
    assert isinstance(error, PayloadError)
    assert (error.code, error.field) == ("invalid_value", "values.power")
    assert error.message == "value of 'power' is out of range: readings are limited to ±1e18"


class Mode(enum.IntEnum):
    ECO = 2


class Celsius(float):
    pass


def test_number_subclasses_from_python_callers() -> None:
    assert validate_telemetry({"mode": Mode.ECO, "t": Celsius(21.5)}, now_ms=NOW) == [
        Reading(NOW, "mode", 2.0),
        Reading(NOW, "t", 21.5),
    ]
    error = rejection({"t": Celsius("nan")})
    assert (error.code, error.field) == ("invalid_value", "values.t")


# --- document shape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("temperature", None),
        (21.5, None),
        (None, None),
        (True, None),
        ({}, None),
        ([], None),
        ({"ts": NOW}, "values"),
        ({"values": 21.5}, "values"),
        ({"values": [{"a": 1}]}, "values"),
        ({"values": {}}, "values"),
        ({"ts": NOW, "values": {"a": 1}, "temperature": 1}, "temperature"),
        ({"values": {"a": 1}, "device": "x"}, "device"),
        ({"ts": NOW, "temperature": 21.5}, "temperature"),
        ([1], "[0]"),
        ([{"values": {"a": 1}}, "x"], "[1]"),
        ([{"values": {"a": 1}}, [{"values": {"a": 1}}]], "[1]"),
        ([{"values": {"a": 1}}, {"ts": NOW}], "[1].values"),
        ([{"values": {"a": 1}}, {"values": {}}], "[1].values"),
        ([{"values": {"a": 1}}, {"values": None}], "[1].values"),
        ([{"values": {"a": 1}}, {}], "[1].values"),
        ([{"values": {"a": 1}, "extra": 1}], "[0].extra"),
        ([{"temperature": 21.5}], "[0].temperature"),
    ],
)
def test_malformed_documents_are_invalid_shape(doc: object, field: str | None) -> None:
    error = rejection(doc)
    assert (error.code, error.field) == ("invalid_shape", field)
    assert error.message


def test_a_bad_entry_rejects_the_whole_batch_naming_its_index() -> None:
    doc = [{"ts": NOW - i, "values": {"power": 230.0}} for i in range(10)]
    doc[7]["values"] = {"power": "n/a"}
    error = rejection(doc)
    assert (error.code, error.field) == ("invalid_value", "[7].values.power")
    assert error.message.startswith("entry 7: ")


def test_batch_limit_is_1000_entries() -> None:
    assert MAX_BATCH_ENTRIES == 1000
    doc = [{"ts": NOW - i, "values": {"p": i}} for i in range(1000)]
    assert len(parse(doc)) == 1000
    error = rejection([*doc, {"values": {"p": 1}}])
    assert (error.code, error.field) == ("too_many_entries", None)
    assert "1001" in error.message


def test_size_limit_is_256_kib_on_the_raw_bytes() -> None:
    assert MAX_PAYLOAD_BYTES == 262_144
    body = b'{"temperature": 21.5}'
    at_limit = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert parse_telemetry(at_limit, now_ms=NOW) == [Reading(NOW, "temperature", 21.5)]
    with pytest.raises(PayloadError) as caught:
        parse_telemetry(at_limit + b" ", now_ms=NOW)
    assert (caught.value.code, caught.value.field) == ("payload_too_large", None)


def test_oversized_bodies_are_refused_before_parsing() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_telemetry(b"{" * (MAX_PAYLOAD_BYTES + 1), now_ms=NOW)
    assert caught.value.code == "payload_too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e400}',
        b'{"a\xff": 1}',
        b"\xef\xbb\xbf{}",
        b'{"a": 1} {"b": 2}',
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_undecodable_bodies_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_telemetry(raw, now_ms=NOW)
    assert (caught.value.code, caught.value.field) == ("invalid_json", None)


# --- duplicates ------------------------------------------------------------------------------


def test_a_repeated_key_in_one_object_keeps_the_later_value() -> None:
    assert parse_telemetry(b'{"a": 1, "b": 2, "a": 3}', now_ms=NOW) == [
        Reading(NOW, "a", 3.0),
        Reading(NOW, "b", 2.0),
    ]


def test_a_repeated_key_and_ts_in_a_batch_keeps_the_later_value() -> None:
    doc = [
        {"ts": NOW - 2000, "values": {"power": 1, "volts": 230}},
        {"ts": NOW - 1000, "values": {"power": 2}},
        {"ts": NOW - 2000, "values": {"power": 3}},
    ]
    assert parse(doc) == [
        Reading(NOW - 2000, "volts", 230.0),
        Reading(NOW - 1000, "power", 2.0),
        Reading(NOW - 2000, "power", 3.0),
    ]


def test_the_same_instant_written_two_ways_is_one_point() -> None:
    doc = [
        {"ts": NOW, "values": {"a": 1}},
        {"ts": "2025-11-23T13:13:20+01:00", "values": {"a": 2}},
    ]
    assert parse(doc) == [Reading(NOW, "a", 2.0)]


def test_entries_without_ts_share_now_and_are_deduplicated() -> None:
    assert parse([{"values": {"a": 1, "b": 1}}, {"values": {"a": 2}}]) == [
        Reading(NOW, "b", 1.0),
        Reading(NOW, "a", 2.0),
    ]


def test_a_shared_ts_with_different_keys_keeps_both() -> None:
    doc = [{"ts": NOW, "values": {"a": 1}}, {"ts": NOW, "values": {"b": 2}}]
    assert parse(doc) == [Reading(NOW, "a", 1.0), Reading(NOW, "b", 2.0)]


# --- errors ----------------------------------------------------------------------------------


def test_payload_errors_are_value_errors_that_survive_pickling() -> None:
    error = rejection([{"values": {"a": "x"}}])
    assert isinstance(error, ProtocolError)
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, round-tripped
    assert type(copy) is PayloadError
    assert (copy.code, copy.message, copy.field) == (error.code, error.message, error.field)
    assert str(copy) == error.message


# --- generated documents ---------------------------------------------------------------------

KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
keys = st.text(alphabet=KEY_CHARS, min_size=1, max_size=MAX_KEY_LENGTH)
values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**18), max_value=10**18),
    st.floats(min_value=-1e18, max_value=1e18),
)
epoch_ms = st.integers(min_value=0, max_value=NOW + FUTURE_TOLERANCE_MS)
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[object, int] | None:
    """None (no ts), or (what the device writes, the epoch ms it means)."""
    form = draw(st.sampled_from(["missing", "epoch", "float", "iso"]))
    if form == "missing":
        return None
    ms = draw(epoch_ms)
    if form == "epoch":
        return ms, ms
    if form == "float":
        return float(ms), ms
    zone = timezone(timedelta(minutes=draw(offsets)))
    text = (EPOCH + timedelta(milliseconds=ms)).astimezone(zone).isoformat(timespec="milliseconds")
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text[:-6] + "Z"
    return text, ms


def expected_number(value: bool | int | float) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value)


def latest_only(points: list[Reading]) -> list[Reading]:
    """Reference model: a point survives unless a later one has the same key and ts."""
    return [
        point
        for i, point in enumerate(points)
        if not any((p.key, p.ts) == (point.key, point.ts) for p in points[i + 1 :])
    ]


@st.composite
def entries(draw: st.DrawFn, *, top_level: bool) -> tuple[dict[str, Any], list[Reading]]:
    reading_values = draw(st.dictionaries(keys, values, min_size=1, max_size=6))
    stamp = draw(timestamps())
    entry: dict[str, Any] = {"values": reading_values}
    ts = NOW
    if stamp is not None:
        entry["ts"], ts = stamp
    # Without ts, the same readings may also be sent in the flat form (unless a key would
    # make it look like the ts/values form).
    flat_possible = stamp is None and not {"ts", "values"} & reading_values.keys()
    if top_level and flat_possible and draw(st.booleans()):
        entry = dict(reading_values)
    points = [Reading(ts, key, expected_number(v)) for key, v in reading_values.items()]
    return entry, points


@st.composite
def documents(draw: st.DrawFn) -> tuple[object, list[Reading]]:
    if draw(st.booleans()):
        return draw(entries(top_level=True))
    batch = draw(st.lists(entries(top_level=False), min_size=1, max_size=12))
    doc = [entry for entry, _ in batch]
    points = [point for _, entry_points in batch for point in entry_points]
    return doc, latest_only(points)


@settings(database=None, deadline=None)
@given(case=documents())
def test_generated_valid_documents_parse_to_their_readings(
    case: tuple[object, list[Reading]],
) -> None:
    doc, expected = case
    assert parse_telemetry(orjson.dumps(doc), now_ms=NOW) == expected
    assert validate_telemetry(doc, now_ms=NOW) == expected


def outcome(call: Callable[[], _T]) -> _T | PayloadError:
    try:
        return call()
    except PayloadError as error:
        return error


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["2025-11-23T12:00:00Z", "ts", "values"]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["ts", "values", "a", ""]) | st.text(max_size=8), inner)
    ),
    max_leaves=12,
)


@settings(database=None, deadline=None)
@given(doc=json_values, oldest_ms=st.none() | epoch_ms)
def test_any_decoded_document_yields_readings_or_a_payload_error(
    doc: object, oldest_ms: int | None
) -> None:
    result = outcome(lambda: validate_telemetry(doc, now_ms=NOW, oldest_ms=oldest_ms))
    if isinstance(result, PayloadError):
        assert result.code in {
            "invalid_shape",
            "invalid_key",
            "invalid_value",
            "invalid_ts",
            "ts_in_future",
            "ts_too_old",
        }
    else:
        assert result
        assert len({(r.key, r.ts) for r in result}) == len(result)
        assert all(abs(r.value) <= 1e18 for r in result)


@settings(database=None, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_body_yields_readings_or_a_payload_error(raw: bytes) -> None:
    result = outcome(lambda: parse_telemetry(raw, now_ms=NOW))
    if isinstance(result, PayloadError):
        assert result.code in {"invalid_json", "invalid_shape", "invalid_key", "invalid_value"}
    else:
        assert all(isinstance(r, Reading) for r in result)


# --- as columns (parse_readings / validate_readings) -----------------------------------------


def same_outcome(doc: object, oldest_ms: int | None) -> list[Reading] | PayloadError:
    """validate_readings gives what validate_telemetry gives: the same readings in the same
    order, or the same error (code, message, field)."""
    reference = outcome(lambda: validate_telemetry(doc, now_ms=NOW, oldest_ms=oldest_ms))
    columns = outcome(lambda: validate_readings(doc, now_ms=NOW, oldest_ms=oldest_ms))
    if isinstance(columns, PayloadError):
        assert isinstance(reference, PayloadError), columns
        assert (columns.code, columns.message, columns.field) == (
            reference.code,
            reference.message,
            reference.field,
        )
        return columns
    assert isinstance(columns, Readings)
    assert not isinstance(reference, PayloadError), reference
    assert list(columns) == reference
    assert [type(r.value) for r in columns] == [float] * len(reference)
    assert columns.names == {r.key for r in reference}
    assert (columns.first, columns.last) == (
        min(r.ts for r in reference),
        max(r.ts for r in reference),
    )
    if columns.ordered:
        assert [r.ts for r in reference] == sorted(r.ts for r in reference)
    return reference


# What a batch of the usual form may hold, and what makes it unusual or wrong.
odd_values: st.SearchStrategy[Any] = st.one_of(
    values,
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e18, -1e18, 10**18, -(10**18), 10**18 + 1, 10**19]
    ),
    st.sampled_from([1e18 + 1e3, 2**63, None, "1.5", [], {}]),
)
usual_ts = st.integers(min_value=NOW - 10_000, max_value=NOW + 10_000)
odd_ts = st.one_of(
    usual_ts,
    st.sampled_from([-1, 0, NOW + FUTURE_TOLERANCE_MS, NOW + FUTURE_TOLERANCE_MS + 1, True]),
    st.sampled_from([float(NOW), 1.5, "2025-11-23T12:00:00Z", None]),
)


@st.composite
def usual_batches(draw: st.DrawFn) -> object:
    """Batches of entries {"ts": int, "values": {...}}, mostly valid, sometimes with an odd
    value, ts, key, member or entry somewhere (which the columns must refuse or read
    exactly as validate_telemetry does)."""
    names = draw(st.lists(st.sampled_from(["t", "h", "co2", "a.b", "x-1"]), min_size=1))
    odd = draw(st.integers(min_value=0, max_value=5))
    size = draw(st.integers(min_value=1, max_value=8))
    batch: list[Any] = []
    stamps = draw(st.lists(usual_ts, min_size=size, max_size=size))
    if draw(st.booleans()):
        stamps.sort()
    for ts in stamps:
        entry_values = {n: draw(values if odd != 1 else odd_values) for n in names}
        if odd == 2 and draw(st.booleans()):
            entry_values[draw(st.sampled_from(["", "bad key", "k" * 65, "new_key_7"]))] = 1.0
        entry: dict[str, Any] = {"ts": ts if odd != 3 else draw(odd_ts), "values": entry_values}
        if odd == 4 and draw(st.booleans()):
            entry = draw(st.sampled_from([{"values": entry_values}, {**entry, "x": 1}, {}, []]))
        batch.append(entry)
    if odd == 5:
        return batch[0] if isinstance(batch[0], dict) and draw(st.booleans()) else batch * 2
    return batch


@settings(database=None, deadline=None, max_examples=300)
@given(doc=usual_batches(), oldest_ms=st.none() | st.sampled_from([NOW - 5_000, NOW + 20_000]))
def test_columns_read_usual_batches_as_validate_telemetry_does(
    doc: object, oldest_ms: int | None
) -> None:
    same_outcome(doc, oldest_ms)


def _batch(*entry_values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"ts": NOW - 100 + i, "values": v} for i, v in enumerate(entry_values)]


@pytest.mark.parametrize(
    "doc",
    [
        # The checks made all at once must find what the reading-by-reading ones find,
        # wherever it is.
        _batch({"a": 1.0}, {"a": math.nan}),
        _batch({"a": 1.0, "b": math.nan}),
        _batch({"a": 1.0}, {"a": math.inf}, {"a": -math.inf}),
        _batch({"a": 1.0}, {"a": math.inf}),
        _batch({"a": 1.0}, {"a": -1e19}),
        _batch({"a": 1.0}, {"a": math.nan, "b": math.inf}),
        _batch({"a": 1}, {"a": 10**18 + 1}),
        _batch({"a": 1}, {"a": -(10**18) - 1}),
        _batch({"a": 1}, {"a": 10**18}, {"a": -(10**18)}, {"a": 1e18}),
        _batch({"a": 1}, {"a": 10**400}),
        _batch({"a": 1.0}, {}),
        _batch({"a": 1.0}, {"a": True}, {"a": "1"}),
        _batch({"a": 1.0}, {"a": None}),
        _batch({"a": 2.0}, {"bad key": 1.0}, {"a": "x"}),
        _batch({"a": "x"}, {"bad key": 1.0}),
        [*_batch({"a": 1.0}), {"ts": NOW - 100, "values": {"a": 2.0, "b": True}}],
        [*_batch({"a": 1.0}, {"a": 2.0}), {"ts": NOW - 100, "values": {"a": "x"}}],
        [{"ts": NOW, "values": {"a": 1.0}}, {"ts": NOW - 5, "values": {"a": 2}}],
        [{"ts": NOW, "values": {"a": 1.0}}, {"ts": -1, "values": {"a": 2}}],
        [{"ts": NOW, "values": {"a": 1.0}}, {"ts": NOW + FUTURE_TOLERANCE_MS + 1, "values": {}}],
        {"ts": NOW, "values": {"a": math.nan}},
        {"ts": NOW, "values": {"a": 1, "b": 10**18 + 1}},
        {"a": 1.0, "b": math.inf},
        {"ts": NOW, "values": {}},
        {},
    ],
)
def test_columns_refuse_and_read_edge_cases_as_validate_telemetry_does(doc: object) -> None:
    same_outcome(doc, None)
    same_outcome(doc, NOW - 50)


@settings(database=None, deadline=None)
@given(doc=json_values, oldest_ms=st.none() | epoch_ms)
def test_columns_read_any_document_as_validate_telemetry_does(
    doc: object, oldest_ms: int | None
) -> None:
    same_outcome(doc, oldest_ms)


@settings(database=None, deadline=None)
@given(case=documents())
def test_columns_of_generated_valid_documents(case: tuple[object, list[Reading]]) -> None:
    doc, expected = case
    assert list(parse_readings(orjson.dumps(doc), now_ms=NOW)) == expected
    assert same_outcome(doc, None) == expected


@pytest.mark.parametrize(
    "doc",
    [
        {"ts": NOW, "values": {"t": 1.5, "h": 40, "on": True}},
        {"t": 1.5, "h": 2},
        [{"ts": NOW - 10 + i, "values": {"t": 1.5 + i, "co2": 400 + i}} for i in range(10)],
        [{"values": {"t": 1.5}, "ts": NOW - 10 + i} for i in range(3)],
    ],
)
def test_usual_documents_are_read_without_validate_telemetry(
    doc: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents of the usual form take the column-wise path (validate_telemetry, the
    reading-by-reading one, is the fallback for the rest)."""
    expected = validate_telemetry(doc, now_ms=NOW)

    def refuse(*_args: object, **_kwargs: object) -> list[Reading]:
        raise AssertionError("validate_telemetry was called")

    monkeypatch.setattr(telemetry_module, "validate_telemetry", refuse)
    assert list(validate_readings(doc, now_ms=NOW)) == expected


@settings(database=None, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(min_value=0, max_value=6), values),
        max_size=20,
    )
)
def test_readings_of_a_list_keep_the_later_of_a_repeated_point_and_its_newest(
    points: list[tuple[str, int, bool | int | float]],
) -> None:
    readings = [Reading(ts, key, expected_number(v)) for key, ts, v in points]
    columns = Readings.of(readings)
    assert list(columns) == latest_only(readings)
    assert Readings.of(columns) is columns
    assert columns[:] == list(columns)
    if columns:
        assert columns[-1] == list(columns)[-1]
    # Each key's newest [ts, value], the later one of a tie: the same from the columns'
    # shortcut (when ts never decrease) as from a pass over every reading.
    newest: dict[str, list[float | int]] = {}
    for r in readings:
        if r.key not in newest or r.ts >= newest[r.key][0]:
            newest[r.key] = [r.ts, r.value]
    assert columns.newest() == newest
    in_order = Readings.of(sorted(readings, key=lambda r: r.ts))
    assert in_order.ordered
    unknown_order = Readings(in_order.keys, in_order.stamps, in_order.values, ordered=False)
    assert in_order.newest() == unknown_order.newest()
    # Several documents' readings one after the other (what alert evaluation gets).
    empty = Readings.of([])
    joined = Readings.join([columns, empty, in_order])
    assert list(joined) == list(columns) + list(in_order)
    assert joined.names == {r.key for r in readings}
    if readings:
        assert (joined.first, joined.last) == (
            min(r.ts for r in readings),
            max(r.ts for r in readings),
        )
