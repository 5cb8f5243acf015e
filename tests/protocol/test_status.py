"""Status documents: what a device reports about itself, and what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorium.protocol import (
    MAX_PAYLOAD_BYTES,
    PayloadError,
    StatusReport,
    parse_status,
    validate_status,
)


def test_the_protocol_example_parses() -> None:
    raw = (
        b'{"online": true, "fw": "1.2.0", "uptime_s": 3600, "rssi": -61, '
        b'"ip": "192.168.1.23", "free_heap": 81234}'
    )
    assert parse_status(raw) == StatusReport(
        online=True,
        fw="1.2.0",
        uptime_s=3600,
        rssi=-61,
        ip="192.168.1.23",
        free_heap=81234,
        interval_s=None,
    )


def test_last_will_reports_offline_only() -> None:
    assert parse_status(b'{"online": false}') == StatusReport(online=False)


def test_every_member_is_optional() -> None:
    assert parse_status(b"{}") == StatusReport(None, None, None, None, None, None, None)


def test_null_members_count_as_not_reported() -> None:
    assert parse_status(b'{"online": null, "fw": null, "rssi": null, "ip": null}') == StatusReport()


def test_unknown_members_are_ignored() -> None:
    report = parse_status(b'{"online": true, "board": "esp32-s3", "extra": {"nested": [1]}}')
    assert report == StatusReport(online=True)


def test_interval_is_read() -> None:
    assert parse_status(b'{"interval_s": 30}').interval_s == 30


def test_integral_floats_are_accepted_as_integers() -> None:
    report = parse_status(b'{"uptime_s": 3600.0, "rssi": -61.0}')
    assert report.uptime_s == 3600
    assert type(report.uptime_s) is int
    assert report.rssi == -61


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::1", "::1"),
        ("fe80::1%wlan0", "fe80::1%wlan0"),
    ],
)
def test_ip_addresses_are_accepted_in_canonical_form(text: str, expected: str) -> None:
    assert validate_status({"ip": text}).ip == expected


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("rssi", -150),
        ("rssi", 0),
        ("interval_s", 1),
        ("interval_s", 86400),
        ("uptime_s", 0),
        ("free_heap", 0),
        ("free_heap", 2**63 - 1),
        ("fw", "x" * 32),
        ("fw", "1.3.0-rc.1+build.7"),
    ],
)
def test_boundary_values_are_accepted(member: str, value: object) -> None:
    assert getattr(validate_status({member: value}), member) == value


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("online", "true"),
        ("online", 1),
        ("online", 0),
        ("online", {}),
        ("fw", 120),
        ("fw", ""),
        ("fw", "x" * 33),
        ("fw", "1.2.0\n"),
        ("fw", ["1.2.0"]),
        ("uptime_s", -1),
        ("uptime_s", "3600"),
        ("uptime_s", 1.5),
        ("uptime_s", True),
        ("uptime_s", 2**63),
        ("rssi", -151),
        ("rssi", 1),
        ("rssi", -61.5),
        ("rssi", "-61"),
        ("ip", "256.1.1.1"),
        ("ip", "192.168.001.1"),
        ("ip", "192.168.1"),
        ("ip", "localhost"),
        ("ip", ""),
        ("ip", 3232235799),
        ("ip", "1" * 200),
        ("free_heap", -1),
        ("free_heap", False),
        ("interval_s", 0),
        ("interval_s", 86401),
        ("interval_s", 30.5),
        ("interval_s", float("nan")),
        ("interval_s", float("inf")),
    ],
)
def test_wrong_members_are_rejected_naming_the_member(member: str, value: object) -> None:
    with pytest.raises(PayloadError) as caught:
        validate_status({"online": True, member: value})
    assert caught.value.code == "invalid_value"
    assert caught.value.field == member
    assert member in caught.value.message


@pytest.mark.parametrize("raw", [b"[]", b'"online"', b"true", b"null", b"3", b'[{"online": true}]'])
def test_a_document_that_is_not_an_object_is_rejected(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_status(raw)
    assert caught.value.code == "invalid_shape"
    assert caught.value.field is None


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"online": tru}', b'{"fw": "\xff"}', b"\xef\xbb\xbf{}"]
)
def test_undecodable_bodies_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_status(raw)
    assert caught.value.code == "invalid_json"
    assert caught.value.field is None


def test_size_limit_is_checked_on_the_raw_bytes() -> None:
    body = b'{"online": true}'
    at_limit = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert parse_status(at_limit) == StatusReport(online=True)
    with pytest.raises(PayloadError) as caught:
        parse_status(at_limit + b" ")
    assert caught.value.code == "payload_too_large"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
members = st.sampled_from(
    ["online", "fw", "uptime_s", "rssi", "ip", "free_heap", "interval_s", "other"]
)


@settings(database=None, deadline=None)
@given(doc=json_values | st.dictionaries(members, json_values))
def test_any_document_yields_a_report_or_a_payload_error(doc: object) -> None:
    try:
        report: StatusReport | PayloadError = validate_status(doc)
    except PayloadError as error:
        report = error
    if isinstance(report, PayloadError):
        assert report.code in {"invalid_shape", "invalid_value"}
    else:
        assert report.online in {None, True, False}
        assert report.fw is None or 0 < len(report.fw) <= 32
        assert report.rssi is None or -150 <= report.rssi <= 0
        assert report.interval_s is None or 1 <= report.interval_s <= 86400
