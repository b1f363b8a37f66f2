"""Tests for astrid_core.serde, the shared JSON conventions (spec/core.md §1).

The four accepted UUID forms and their rejections are covered in test_dirs.py; this file only
adds the JSON-level UUID behaviour.
"""

from __future__ import annotations

import base64
import enum
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core.serde import (
    NIL_UUID,
    U32_MAX,
    U64_MAX,
    Fields,
    SerdeError,
    aware_utc,
    base64_decode_strict,
    base64_encode,
    datetime_from_json,
    dumps,
    duration_from_json,
    duration_to_json,
    float_to_json,
    format_datetime,
    loads,
    parse_datetime,
    str_enum_from_json,
    to_bool,
    to_float,
    to_list,
    to_str,
    to_str_list,
    to_str_map,
    to_uint,
    utc_now,
    uuid_from_json,
    uuid_to_json,
)

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

# --- dumps / loads --------------------------------------------------------------------------


def test_dumps_is_compact_raw_utf8() -> None:
    assert (
        dumps({"a": [1, 2.0, None, True], "b": "café ☕"})
        == '{"a":[1,2.0,null,true],"b":"café ☕"}'
    )
    assert dumps(0.1) == "0.1"
    assert dumps("\u2028\x00") == '"\u2028\\u0000"'


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps(float("nan"))


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"x":NaN}', "[1,Infinity]"])
def test_loads_rejects_non_finite_literals(text: str) -> None:
    with pytest.raises(SerdeError, match="invalid number"):
        loads(text)


@pytest.mark.parametrize("text", ["1e400", "-1e400", '{"x":[1.5e999]}'])
def test_loads_rejects_numbers_out_of_range(text: str) -> None:
    with pytest.raises(SerdeError, match="number out of range"):
        loads(text)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a':1}", b"\xff", "01"])
def test_loads_rejects_invalid_json(text: str | bytes) -> None:
    with pytest.raises(SerdeError, match="invalid JSON"):
        loads(text)


def test_loads_accepts_bytes_and_big_integers() -> None:
    assert loads(b'{"a":"\xc3\xa9"}') == {"a": "é"}
    assert loads("18446744073709551616") == 2**64
    assert loads("1e308") == 1e308


# --- UUIDs at the JSON level ----------------------------------------------------------------


def test_uuid_to_json_is_lowercase_hyphenated() -> None:
    value = uuid.UUID("0F8C2A9E5B7D4C1E9A3F123456789ABC")
    assert uuid_to_json(value) == "0f8c2a9e-5b7d-4c1e-9a3f-123456789abc"
    assert uuid_to_json(NIL_UUID) == "00000000-0000-0000-0000-000000000000"


def test_uuid_from_json_errors_name_the_field() -> None:
    with pytest.raises(SerdeError, match=r"^X\.id must be a string, got a number$"):
        uuid_from_json(5, "X.id")
    with pytest.raises(SerdeError, match=r"^X\.id must be a string, got a boolean$"):
        uuid_from_json(True, "X.id")
    with pytest.raises(SerdeError, match=r"^X\.id: invalid UUID 'nope'$"):
        uuid_from_json("nope", "X.id")
    with pytest.raises(SerdeError, match=r"^UUID: invalid UUID"):
        uuid_from_json("{0f8c2a9e5b7d4c1e9a3f123456789abc}")
    assert uuid_from_json("urn:uuid:0f8c2a9e-5b7d-4c1e-9a3f-123456789abc", "X.id") == uuid.UUID(
        "0f8c2a9e-5b7d-4c1e-9a3f-123456789abc"
    )


# --- format_datetime ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "2025-01-02T03:04:05Z"),
        (120_000, "2025-01-02T03:04:05.120Z"),
        (1_000, "2025-01-02T03:04:05.001Z"),
        (999_000, "2025-01-02T03:04:05.999Z"),
        (123_456, "2025-01-02T03:04:05.123456Z"),
        (120_001, "2025-01-02T03:04:05.120001Z"),
        (1, "2025-01-02T03:04:05.000001Z"),
    ],
)
def test_format_datetime_fraction_digits(micros: int, text: str) -> None:
    assert format_datetime(WHEN.replace(microsecond=micros)) == text


@pytest.mark.parametrize(
    ("year", "text"),
    [
        (5, "0005-01-02T03:04:05Z"),
        (1, "0001-01-02T03:04:05Z"),
        (999, "0999-01-02T03:04:05Z"),
        (9999, "9999-01-02T03:04:05Z"),
    ],
)
def test_format_datetime_pads_year(year: int, text: str) -> None:
    assert format_datetime(WHEN.replace(year=year)) == text


def test_format_datetime_converts_to_utc() -> None:
    local = datetime(2025, 1, 2, 5, 34, 5, 120_000, tzinfo=timezone(timedelta(hours=2, minutes=30)))
    assert format_datetime(local) == "2025-01-02T03:04:05.120Z"


def test_format_datetime_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_datetime(datetime(2025, 1, 2, 3, 4, 5))


# --- parse_datetime -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-02T03:04:05Z",
        "2025-01-02t03:04:05Z",
        "2025-01-02 03:04:05Z",
        "2025-01-02T03:04:05z",
        "2025-01-02T03:04:05UTC",
        "2025-01-02T03:04:05utc",
        "2025-01-02T03:04:05 UTC",
        "2025-01-02T03:04:05+00:00",
        "2025-01-02T03:04:05-00:00",
        "2025-01-02T03:04:05+0000",
        # chrono's relaxed form: whitespace between components, unpadded fields, signed years.
        " 2025-01-02T03:04:05Z ",
        "2025 - 01 - 02T 03 : 04 : 05 Z",
        "2025-01-02   03:04:05Z",
        "2025-01-02T03:04:05\tZ\n",
        "\u30002025-01-02T03:04:05Z\u2003",
        "2025-1-2T3:4:5Z",
        "+2025-01-02T03:04:05Z",
        "2025-01-02T03:04:05+00 : 00",
        "2025-01-02T03:04:05+00::00",
    ],
)
def test_parse_datetime_accepts_relaxed_forms(text: str) -> None:
    parsed = parse_datetime(text)
    assert parsed == WHEN
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-02T05:04:05+02:00", WHEN),
        ("2025-01-02T05:04:05+0200", WHEN),
        ("2025-01-02T01:34:05-0130", WHEN),
        ("2025-01-02T01:34:05-01:30", WHEN),
        ("2025-01-02T01:34:05\u221201:30", WHEN),  # U+2212 MINUS SIGN
        ("2025-01-01T03:05:05-23:59", WHEN),
        ("2025-01-03T03:03:05+23:59", WHEN),
        ("2025-01-01T23:04:05.5-04:00", WHEN.replace(microsecond=500_000)),
    ],
)
def test_parse_datetime_converts_offsets_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("fraction", "micros"),
    [
        ("5", 500_000),
        ("12", 120_000),
        ("120", 120_000),
        ("123456", 123_456),
        ("1234567", 123_456),
        ("123456789", 123_456),
        ("999999999", 999_999),
        ("123456789123456", 123_456),
        ("000000999", 0),
    ],
)
def test_parse_datetime_truncates_fractions_to_microseconds(fraction: str, micros: int) -> None:
    assert parse_datetime(f"2025-01-02T03:04:05.{fraction}Z") == WHEN.replace(microsecond=micros)


@pytest.mark.parametrize(
    "text",
    [
        # naive or incomplete
        "2025-01-02T03:04:05",
        "2025-01-02T03:04:05.123",
        "2025-01-02",
        "2025-01-02T03:04Z",
        "03:04:05Z",
        "",
        " ",
        # malformed separators and fractions
        "2025-01-02T03:04:05.Z",
        "2025-01-02T03:04:05 .5Z",
        "2025-01-02 T03:04:05Z",
        "2025-01-02_03:04:05Z",
        "2025-01-02TT03:04:05Z",
        "2025/01/02T03:04:05Z",
        "20250102T030405Z",
        # malformed offsets
        "2025-01-02T03:04:05+24:00",
        "2025-01-02T03:04:05+02:60",
        "2025-01-02T03:04:05+2:00",
        "2025-01-02T03:04:05+02:0",
        "2025-01-02T03:04:05+02",
        "2025-01-02T03:04:05+02:00:00",
        "2025-01-02T03:04:05 GMT",
        "2025-01-02T03:04:05ZZ",
        "2025-01-02T03:04:05Zx",
        # out-of-range fields
        "2025-13-02T03:04:05Z",
        "2025-02-30T03:04:05Z",
        "2025-01-02T24:00:00Z",
        "2025-01-02T03:60:05Z",
        "2025-01-02T23:59:60Z",  # a leap second: chrono accepts it, datetime cannot hold it
        "2025-001-02T03:04:05Z",
        "12025-01-02T03:04:05Z",
        "0000-01-02T03:04:05Z",
        "-0001-01-02T03:04:05Z",
        "+10000-01-02T03:04:05Z",
        # non-ASCII digits (str.isdigit() would accept these)
        "２０２５-01-02T03:04:05Z",  # noqa: RUF001
        "2025-01-02T03:04:0\u0665Z",
        # conversion to UTC leaves datetime's range
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_parse_datetime_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid RFC 3339|leap seconds|invalid UTC offset"):
        parse_datetime(text)


def test_datetime_from_json_errors_name_the_field() -> None:
    with pytest.raises(SerdeError, match=r"^X\.at must be a string, got a number$"):
        datetime_from_json(1735787045, "X.at")
    with pytest.raises(SerdeError, match=r"^X\.at: invalid RFC 3339 timestamp"):
        datetime_from_json("2025-01-02T03:04:05", "X.at")
    with pytest.raises(SerdeError, match=r"^X\.at: invalid RFC 3339 timestamp .*out of range"):
        datetime_from_json("0001-01-01T00:00:00+01:00", "X.at")


@given(st.datetimes(timezones=st.just(UTC)))
def test_datetime_round_trips(value: datetime) -> None:
    text = format_datetime(value)
    assert parse_datetime(text) == value
    assert len(text) in (20, 24, 27)


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
def test_parse_datetime_reads_any_offset(local: datetime, offset_minutes: int) -> None:
    value = local.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert parse_datetime(value.isoformat()) == value
    assert parse_datetime(value.isoformat(sep=" ")) == value


# --- aware_utc / utc_now --------------------------------------------------------------------


def test_aware_utc() -> None:
    assert aware_utc(WHEN).tzinfo is UTC
    assert aware_utc(datetime(2025, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))) == WHEN
    with pytest.raises(ValueError, match=r"^X.at must be timezone-aware$"):
        aware_utc(datetime(2025, 1, 2), "X.at")
    with pytest.raises(TypeError, match="must be a datetime"):
        aware_utc("2025-01-02T03:04:05Z")  # type: ignore[arg-type]
    assert utc_now().tzinfo is UTC


# --- Fields ---------------------------------------------------------------------------------


def test_fields_messages() -> None:
    fields = Fields({"s": "x", "n": 5, "b": True, "z": None, "f": 1.5}, "Thing")
    assert fields.string("s") == "x"
    assert fields.uint("n") == 5
    assert fields.boolean("b") is True
    assert fields.number("f") == 1.5
    assert fields.number("n") == 5.0
    assert fields.opt_string("z") is None
    assert fields.opt_string("missing") is None
    assert fields.opt_raw("missing") is None
    assert fields.raw("z") is None
    assert fields.has("z") and not fields.has("missing")
    with pytest.raises(SerdeError, match=r"^Thing: missing field `missing`$"):
        fields.string("missing")
    with pytest.raises(SerdeError, match=r"^Thing: missing field `missing`$"):
        fields.raw("missing")
    with pytest.raises(SerdeError, match=r"^Thing\.n must be a string, got a number$"):
        fields.string("n")
    with pytest.raises(SerdeError, match=r"^Thing\.z must be a string, got null$"):
        fields.string("z")
    with pytest.raises(SerdeError, match=r"^Thing\.s must be a boolean, got a string$"):
        fields.boolean("s")
    with pytest.raises(SerdeError, match=r"^Thing\.b must be an integer, got a boolean$"):
        fields.uint("b")
    with pytest.raises(SerdeError, match=r"^Thing\.f must be an integer, got a number$"):
        fields.uint("f")
    with pytest.raises(SerdeError, match=r"^Thing\.n must be between 0 and 4, got 5$"):
        fields.uint("n", 4)
    with pytest.raises(SerdeError, match=r"^Thing\.b must be a number, got a boolean$"):
        fields.number("b")
    with pytest.raises(SerdeError, match=r"^Thing\.s: invalid UUID 'x'$"):
        fields.get_uuid("s")
    with pytest.raises(SerdeError, match=r"^Thing\.s: invalid RFC 3339"):
        fields.get_datetime("s")
    with pytest.raises(SerdeError, match=r"^Thing\.n must be a string, got a number$"):
        fields.opt_string("n")


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "null"), ([], "an array"), ("x", "a string"), (1, "a number"), (True, "a boolean")],
)
def test_fields_requires_an_object(value: Any, kind: str) -> None:
    with pytest.raises(SerdeError, match=f"^Thing must be a JSON object, got {kind}$"):
        Fields(value, "Thing")


# --- scalar converters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be an integer, got a boolean"),
        (False, "must be an integer, got a boolean"),
        (1.0, "must be an integer, got a number"),
        (0.0, "must be an integer, got a number"),
        ("1", "must be an integer, got a string"),
        (None, "must be an integer, got null"),
        ([1], "must be an integer, got an array"),
        ({}, "must be an integer, got an object"),
        (-1, "must be between 0 and 18446744073709551615, got -1"),
        (2**64, "must be between 0 and 18446744073709551615"),
    ],
)
def test_to_uint_rejects(value: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=f"^X.n {message}"):
        to_uint(value, "X.n")


def test_to_uint_limits() -> None:
    assert to_uint(0, "n") == 0
    assert to_uint(U64_MAX, "n") == U64_MAX
    assert to_uint(U32_MAX, "n", U32_MAX) == U32_MAX
    with pytest.raises(SerdeError, match="between 0 and 4294967295"):
        to_uint(U32_MAX + 1, "n", U32_MAX)


def test_to_float() -> None:
    assert to_float(2, "x") == 2.0
    assert isinstance(to_float(2, "x"), float)
    assert to_float(-0.5, "x") == -0.5
    with pytest.raises(SerdeError, match=r"^x must be a number, got a boolean$"):
        to_float(True, "x")
    with pytest.raises(SerdeError, match=r"^x must be a number, got a string$"):
        to_float("1.0", "x")
    with pytest.raises(SerdeError, match=r"^x: number out of range$"):
        to_float(10**400, "x")
    with pytest.raises(SerdeError, match=r"^x must be finite$"):
        to_float(float("inf"), "x")


def test_other_converters() -> None:
    assert to_str("a", "s") == "a"
    assert to_bool(False, "b") is False
    with pytest.raises(SerdeError, match=r"^b must be a boolean, got a number$"):
        to_bool(0, "b")
    assert to_str_list(["a", "b"], "l") == ["a", "b"]
    with pytest.raises(SerdeError, match=r"^l\[1\] must be a string, got a number$"):
        to_str_list(["a", 1], "l")
    with pytest.raises(SerdeError, match=r"^l must be an array, got a string$"):
        to_str_list("a", "l")
    assert to_list([1, 2], "l", to_uint) == [1, 2]
    with pytest.raises(SerdeError, match=r"^l\[0\] must be an integer, got a boolean$"):
        to_list([True], "l", to_uint)
    assert to_str_map({"k": "v"}, "m") == {"k": "v"}
    with pytest.raises(SerdeError, match=r"^m\.k must be a string, got null$"):
        to_str_map({"k": None}, "m")
    with pytest.raises(SerdeError, match=r"^m must be an object, got an array$"):
        to_str_map([], "m")


def test_float_to_json() -> None:
    assert float_to_json(2) == 2.0
    assert isinstance(float_to_json(2), float)
    assert float_to_json(0.1) == 0.1
    assert float_to_json(float("nan")) is None
    assert float_to_json(float("inf")) is None
    assert float_to_json(float("-inf")) is None
    assert dumps([float_to_json(2), float_to_json(float("nan"))]) == "[2.0,null]"


# --- enums ----------------------------------------------------------------------------------


class _Colour(enum.StrEnum):
    RED = "red"
    DARK_BLUE = "dark_blue"


def test_str_enum_from_json() -> None:
    assert str_enum_from_json(_Colour, "dark_blue", "c") is _Colour.DARK_BLUE
    with pytest.raises(
        SerdeError, match=r"^c: unknown variant `Red`, expected one of `red`, `dark_blue`$"
    ):
        str_enum_from_json(_Colour, "Red", "c")
    with pytest.raises(SerdeError, match=r"^c must be a string, got a number$"):
        str_enum_from_json(_Colour, 0, "c")


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (timedelta(0), {"secs": 0, "nanos": 0}),
        (timedelta(milliseconds=100), {"secs": 0, "nanos": 100_000_000}),
        (timedelta(seconds=10), {"secs": 10, "nanos": 0}),
        (timedelta(days=2, seconds=3, microseconds=4), {"secs": 172_803, "nanos": 4_000}),
    ],
)
def test_duration_json(value: timedelta, data: dict[str, int]) -> None:
    assert duration_to_json(value) == data
    assert list(duration_to_json(value)) == ["secs", "nanos"]
    assert duration_from_json(data) == value


def test_duration_from_json_quirks() -> None:
    assert duration_from_json({"nanos": 2_500_000_001, "secs": 1}) == timedelta(
        seconds=3, microseconds=500_000
    )
    assert duration_from_json({"secs": 0, "nanos": 999}) == timedelta(0)
    with pytest.raises(
        SerdeError, match=r"^D: unknown field `millis`, expected `secs` or `nanos`$"
    ):
        duration_from_json({"secs": 0, "nanos": 0, "millis": 1}, "D")
    with pytest.raises(SerdeError, match=r"^D: missing field `secs`$"):
        duration_from_json({"nanos": 0}, "D")
    with pytest.raises(SerdeError, match=r"^D\.nanos must be an integer, got a number$"):
        duration_from_json({"secs": 0, "nanos": 0.5}, "D")
    with pytest.raises(SerdeError, match=r"^D: overflow deserializing Duration$"):
        duration_from_json({"secs": U64_MAX, "nanos": 10**9}, "D")
    with pytest.raises(SerdeError, match=r"^D: .* too large for a timedelta$"):
        duration_from_json({"secs": U64_MAX, "nanos": 0}, "D")
    with pytest.raises(SerdeError, match=r"^D must be a JSON object, got an array$"):
        duration_from_json([1, 0], "D")


def test_duration_to_json_rejects_negative() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        duration_to_json(timedelta(microseconds=-1))


@given(st.timedeltas(min_value=timedelta(0)))
def test_duration_round_trips(value: timedelta) -> None:
    assert duration_from_json(loads(dumps(duration_to_json(value)))) == value


# --- base64 ---------------------------------------------------------------------------------


def test_base64_strict() -> None:
    assert base64_encode(b"\xfb\xff") == "+/8="
    assert base64_decode_strict("+/8=") == b"\xfb\xff"
    assert base64_decode_strict("") == b""
    for text in ["+/8", "+/8==", "+/9=", "-_8=", "+/8=\n", " +/8=", "+/ 8=", "+/8=AAAA", "é"]:
        with pytest.raises(ValueError, match="invalid base64"):
            base64_decode_strict(text)


@given(st.binary())
def test_base64_round_trips(data: bytes) -> None:
    encoded = base64_encode(data)
    assert encoded == base64.b64encode(data).decode()
    assert base64_decode_strict(encoded) == data
