"""MAC address spellings accepted at registration and the canonical device id."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorium.protocol import (
    InvalidMac,
    ProtocolError,
    int_to_mac,
    is_canonical_mac,
    mac_to_int,
    normalize_mac,
)


@pytest.mark.parametrize(
    "spelling",
    [
        "A4:CF:12:B3:C4:D5",
        "a4:cf:12:b3:c4:d5",
        "A4-CF-12-B3-C4-D5",
        "a4-cf-12-b3-c4-d5",
        "A4CF12B3C4D5",
        "a4cf12b3c4d5",
        "a4:Cf:12:b3:C4:d5",
    ],
)
def test_accepted_spellings_normalize_to_the_canonical_id(spelling: str) -> None:
    assert normalize_mac(spelling) == "a4cf12b3c4d5"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a4:cf:12:b3:c4",
        "a4cf12b3c4d",
        "a4cf12b3c4d5a",
        "a4:cf:12:b3:c4:d5:e6",
        "a4:cf-12:b3:c4:d5",
        "a4:cf:12:b3:c4d5",
        "a4:cf:12:b3:c4:d5:",
        ":a4:cf:12:b3:c4:d5",
        "a4.cf.12.b3.c4.d5",
        "a4cf.12b3.c4d5",
        "a4 cf 12 b3 c4 d5",
        "g4cf12b3c4d5",
        "a4cf12b3c4d5\n",
        " a4cf12b3c4d5",
        "0xa4cf12b3c4",
        "a4cf_12b3c4d5",
        "a4cf12b3c4d\N{FULLWIDTH DIGIT FIVE}",
        "a:4c:f1:2b:3c:4d5",
    ],
)
def test_other_strings_are_rejected_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidMac) as caught:
        normalize_mac(value)
    assert caught.value.code == "invalid_mac"
    assert caught.value.field == "mac"
    assert caught.value.message


@pytest.mark.parametrize("value", [None, 0xA4CF12B3C4D5, b"a4cf12b3c4d5", ["a4cf12b3c4d5"]])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(InvalidMac):
        normalize_mac(value)  # type: ignore[arg-type]


def test_invalid_mac_is_a_value_error_and_can_name_another_field() -> None:
    error = InvalidMac("bad", field="device_id")
    assert isinstance(error, ProtocolError)
    assert isinstance(error, ValueError)
    assert (error.code, error.message, error.field) == ("invalid_mac", "bad", "device_id")


def test_invalid_mac_survives_pickling() -> None:
    raw = pickle.dumps(InvalidMac("bad", field="device_id"))
    error = pickle.loads(raw)  # noqa: S301 - our own bytes, round-tripped
    assert type(error) is InvalidMac
    assert (error.code, error.message, error.field) == ("invalid_mac", "bad", "device_id")


def test_canonical_check() -> None:
    assert is_canonical_mac("a4cf12b3c4d5")
    assert not is_canonical_mac("A4CF12B3C4D5")
    assert not is_canonical_mac("a4:cf:12:b3:c4:d5")
    assert not is_canonical_mac("a4cf12b3c4d5\n")
    assert not is_canonical_mac(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mac", "number"),
    [
        ("000000000000", 0),
        ("000000000001", 1),
        ("a4cf12b3c4d5", 0xA4CF12B3C4D5),
        ("ffffffffffff", 2**48 - 1),
    ],
)
def test_integer_storage_key(mac: str, number: int) -> None:
    assert mac_to_int(mac) == number
    assert int_to_mac(number) == mac


@pytest.mark.parametrize(
    "mac", ["A4CF12B3C4D5", "a4:cf:12:b3:c4:d5", "0x0012b3c4d5", " 12b3c4d5ab"]
)
def test_mac_to_int_requires_the_canonical_form(mac: str) -> None:
    with pytest.raises(InvalidMac):
        mac_to_int(mac)


@pytest.mark.parametrize("number", [-1, 2**48, True, 1.0])
def test_int_to_mac_rejects_what_is_not_a_48_bit_integer(number: int) -> None:
    with pytest.raises(InvalidMac):
        int_to_mac(number)


@settings(database=None, deadline=None)
@given(
    raw=st.binary(min_size=6, max_size=6),
    style=st.sampled_from(["bare", ":", "-"]),
    cases=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_every_spelling_of_a_mac_normalizes_to_one_id(
    raw: bytes, style: str, cases: list[bool]
) -> None:
    canonical = raw.hex()
    digits = "".join(c.upper() if up else c for c, up in zip(canonical, cases, strict=True))
    pairs = [digits[i : i + 2] for i in range(0, 12, 2)]
    spelled = "".join(pairs) if style == "bare" else style.join(pairs)

    assert normalize_mac(spelled) == canonical
    assert is_canonical_mac(canonical)
    assert mac_to_int(canonical) == int.from_bytes(raw, "big")
    assert int_to_mac(mac_to_int(canonical)) == canonical
