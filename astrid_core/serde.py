"""The JSON conventions of the reference (serde + serde_json defaults, spec/core.md §1).

Every type of ``astrid_core`` that crosses a process boundary converts itself with
``to_json()`` (a JSON-ready Python value) and ``from_json(value)`` (strict validation, raising
:class:`SerdeError`), using the helpers here so that all of them agree on:

* compact output with raw UTF-8 (:func:`dumps`), byte-identical to serde_json;
* UUIDs: lowercase hyphenated out, exactly four forms in (:func:`parse_uuid_strict`);
* timestamps: RFC 3339 with ``Z`` and 0/3/6/9 fractional digits out, chrono's relaxed RFC 3339
  in, converted to UTC (:func:`format_datetime`, :func:`parse_datetime`). Python datetimes hold
  microseconds, so 9-digit input loses its last three digits;
* required and optional fields (:class:`Fields`): a missing non-optional key is an error, a
  missing ``Option`` key reads as ``None``, unknown keys are ignored, and ``bool`` is never
  accepted where a number is expected;
* ``f64``: non-finite values are written as ``null`` (:func:`float_to_json`), numbers that
  overflow to infinity are rejected on input;
* ``std::time::Duration`` as ``{"secs","nanos"}`` (:func:`duration_to_json`,
  :func:`duration_from_json`), held in Python as a non-negative :class:`~datetime.timedelta`;
* unit-only enums as their snake_case string (:func:`str_enum_from_json`);
* base64 with the standard alphabet and canonical padding (:func:`base64_encode`,
  :func:`base64_decode_strict`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

from astrid_core.text import UNICODE_WHITESPACE

T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)

#: Largest values of Rust's fixed-width unsigned integers, for :func:`to_uint`'s ``maximum``.
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


class SerdeError(ValueError):
    """A JSON value that does not deserialize into the expected type."""


# ---------------------------------------------------------------------------------------------
# Text


def dumps(value: Any) -> str:
    """serde_json's compact form: no spaces, non-ASCII as raw UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Parse JSON like serde_json; raises :class:`SerdeError`.

    ``NaN``/``Infinity`` literals are rejected, and so are numbers too large for an ``f64``
    (``1e400``), which serde_json reports as "number out of range".
    """

    def reject(constant: str) -> Any:
        raise SerdeError(f"invalid number {constant}")

    def parse_int(literal: str) -> int | float:
        # serde_json keeps integers that fit an i64/u64; larger ones become f64.
        try:
            value = int(literal)
        except ValueError:  # beyond Python's digit limit: far outside f64 anyway
            raise SerdeError(f"number out of range: {literal[:32]}...") from None
        if -(2**63) <= value < 2**64:
            return value
        result = float(value) if value.bit_length() <= 1024 else math.inf
        if math.isinf(result):
            raise SerdeError(f"number out of range: {literal[:32]}...")
        return result

    def parse_float(literal: str) -> float:
        result = float(literal)
        if math.isinf(result):
            raise SerdeError(f"number out of range: {literal}")
        return result

    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")  # serde_json reads UTF-8 only: no UTF-16, no BOM
        except UnicodeDecodeError as exc:
            raise SerdeError(
                f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    try:
        value = json.loads(
            text, parse_constant=reject, parse_float=parse_float, parse_int=parse_int
        )
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SerdeError(f"invalid JSON: {exc}") from None
    if "\\u" in text and _has_lone_surrogate(value):
        raise SerdeError("invalid JSON: lone surrogate in a \\u escape")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a parsed value holds a string with an unpaired UTF-16 surrogate (from an escape;
    serde_json rejects those, Python would keep a string that cannot be encoded)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def split_tagged(value: Any, what: str, tags: tuple[str, ...]) -> tuple[str, Any]:
    """Split serde's externally tagged enum form into ``(tag, content)``.

    A bare string is a unit variant (content ``None``); otherwise the value must be an object
    with exactly one key, the variant name.
    """
    if isinstance(value, str):
        tag, content = value, None
    elif isinstance(value, dict):
        if len(value) != 1:
            raise SerdeError(
                f"{what}: expected a variant name or an object with exactly one key, "
                f"got an object with {len(value)} keys"
            )
        ((tag, content),) = value.items()
    else:
        raise SerdeError(f"{what}: expected a variant name or a single-key object")
    if tag not in tags:
        expected = ", ".join(f"`{name}`" for name in tags)
        raise SerdeError(f"{what}: unknown variant `{tag}`, expected one of {expected}")
    return tag, content


# ---------------------------------------------------------------------------------------------
# UUIDs

_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_UUID_FORMS = re.compile(
    rf"(?P<simple>{_HEX}{{32}})"
    rf"|(?P<hyphenated>{_HYPHENATED})"
    rf"|\{{(?P<braced>{_HYPHENATED})\}}"
    rf"|urn:uuid:(?P<urn>{_HYPHENATED})"
)

#: The nil UUID (``SessionId.SYSTEM``, the ``source_id`` of kernel messages).
NIL_UUID = uuid.UUID(int=0)


def parse_uuid_strict(s: str) -> uuid.UUID:
    """Parse a UUID in exactly one of the four forms the reference accepts.

    * 32 hex digits (simple form);
    * 8-4-4-4-12 hyphenated form (36 characters);
    * the hyphenated form in braces (38 characters);
    * ``urn:uuid:`` (lower case only) followed by the hyphenated form (45 characters).

    Hex digits may be in either case. Anything else raises :class:`ValueError`; unlike
    :class:`uuid.UUID`, no surrounding whitespace, braced simple form or stray hyphen is accepted.
    """
    match = _UUID_FORMS.fullmatch(s)
    if match is None:
        raise ValueError(f"invalid UUID: {s!r}")
    digits = next(group for group in match.groups() if group is not None)
    return uuid.UUID(hex=digits.replace("-", ""))


def uuid_from_json(value: Any, what: str = "UUID") -> uuid.UUID:
    if not isinstance(value, str):
        raise SerdeError(f"{what} must be a string, got {json_kind(value)}")
    try:
        return parse_uuid_strict(value)
    except ValueError:
        raise SerdeError(f"{what}: invalid UUID {value!r}") from None


def uuid_to_json(value: uuid.UUID) -> str:
    return str(value)


# ---------------------------------------------------------------------------------------------
# Timestamps

_WS = f"[{re.escape(UNICODE_WHITESPACE)}]*"
# chrono's relaxed RFC 3339 (``DateTime<FixedOffset>::from_str``): whitespace may precede every
# number and literal; fields need not be zero-padded (1-2 digits, years 1-4 digits or signed);
# exactly one ``T``/``t``/space follows the day; a fraction has at least one digit; the offset
# is ``UTC`` (any case), ``Z``/``z`` or a sign (``+``, ``-``, U+2212) with two-digit hours and
# minutes separated by any run of colons and whitespace; trailing whitespace is ignored.
# Digits are ASCII only.
_RFC3339 = re.compile(
    rf"{_WS}(?P<year>[+-][0-9]+|[0-9]{{1,4}}){_WS}-{_WS}(?P<month>[0-9]{{1,2}})"
    rf"{_WS}-{_WS}(?P<day>[0-9]{{1,2}})[Tt ]"
    rf"{_WS}(?P<hour>[0-9]{{1,2}}){_WS}:{_WS}(?P<minute>[0-9]{{1,2}})"
    rf"{_WS}:{_WS}(?P<second>[0-9]{{1,2}})(?:\.(?P<frac>[0-9]+))?{_WS}"
    rf"(?:[Uu][Tt][Cc]|[Zz]|(?P<sign>[-+\u2212])(?P<oh>[0-9]{{2}})"
    rf"[:{re.escape(UNICODE_WHITESPACE)}]*(?P<om>[0-5][0-9])){_WS}"
)


def format_datetime(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` and as many fractional digits as needed (0, 3, 6 or 9)."""
    value = aware_utc(value)
    text = f"{value.year:04d}-{value:%m-%dT%H:%M:%S}"
    micros = value.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{text}{fraction}Z"


def parse_datetime(text: str) -> datetime:
    """chrono's relaxed RFC 3339, converted to an aware UTC datetime.

    Accepted: ``T``, ``t`` or a space between date and time; whitespace between components;
    unpadded fields; any number of fractional digits (truncated to microseconds); a mandatory
    offset ``Z``/``z``/``UTC``/``±HH:MM``/``±HHMM``. Naive timestamps, non-ASCII digits, leap
    seconds (``:60``, which chrono accepts but :class:`datetime` cannot hold) and dates outside
    years 1-9999 raise :class:`ValueError`.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}")
    if match["sign"] is None:
        zone: timezone = UTC
    else:
        hours, minutes = int(match["oh"]), int(match["om"])
        if hours > 23:
            raise ValueError(f"invalid UTC offset in {text!r}")
        offset = timedelta(hours=hours, minutes=minutes)
        zone = timezone(offset if match["sign"] == "+" else -offset)
    if int(match["second"]) == 60:
        raise ValueError(f"leap seconds are not supported: {text!r}")
    fraction = (match["frac"] or "")[:6].ljust(6, "0")
    try:
        local = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            int(fraction),
            tzinfo=zone,
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}: {exc}") from None


def datetime_from_json(value: Any, what: str = "timestamp") -> datetime:
    if not isinstance(value, str):
        raise SerdeError(f"{what} must be a string, got {json_kind(value)}")
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise SerdeError(f"{what}: {exc}") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware_utc(value: datetime, what: str = "timestamp") -> datetime:
    """``value`` converted to UTC; for ``__post_init__`` checks of ``DateTime<Utc>`` fields.

    Raises :class:`ValueError` for a naive datetime (it has no defined instant) and
    :class:`TypeError` for anything that is not a :class:`datetime`.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Objects


def json_kind(value: Any) -> str:
    """How an error message names the kind of a JSON value (``a string``, ``null``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Fields:
    """Typed access to the fields of a JSON object, with serde's rules and clear errors."""

    __slots__ = ("_data", "_what")

    def __init__(self, value: Any, what: str) -> None:
        if not isinstance(value, Mapping):
            raise SerdeError(f"{what} must be a JSON object, got {json_kind(value)}")
        self._data = value
        self._what = what

    def _field(self, key: str) -> str:
        return f"{self._what}.{key}"

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> Any:
        """Any JSON value; the key is required (``null`` allowed)."""
        if key not in self._data:
            raise SerdeError(f"{self._what}: missing field `{key}`")
        return self._data[key]

    def opt_raw(self, key: str) -> Any:
        """Any JSON value; a missing key reads as ``None``."""
        return self._data.get(key)

    def get(self, key: str, convert: Callable[[Any, str], T]) -> T:
        return convert(self.raw(key), self._field(key))

    def opt(self, key: str, convert: Callable[[Any, str], T]) -> T | None:
        value = self._data.get(key)
        return None if value is None else convert(value, self._field(key))

    def string(self, key: str) -> str:
        return self.get(key, to_str)

    def opt_string(self, key: str) -> str | None:
        return self.opt(key, to_str)

    def boolean(self, key: str) -> bool:
        return self.get(key, to_bool)

    def uint(self, key: str, maximum: int = 2**64 - 1) -> int:
        return self.get(key, lambda value, what: to_uint(value, what, maximum))

    def get_uuid(self, key: str) -> uuid.UUID:
        return self.get(key, uuid_from_json)

    def get_datetime(self, key: str) -> datetime:
        return self.get(key, datetime_from_json)

    def number(self, key: str) -> float:
        """An ``f64``: any finite JSON number (integers included), never a boolean."""
        return self.get(key, to_float)


def to_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SerdeError(f"{what} must be a string, got {json_kind(value)}")
    return value


def to_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SerdeError(f"{what} must be a boolean, got {json_kind(value)}")
    return value


def to_uint(value: Any, what: str, maximum: int = 2**64 - 1) -> int:
    """A non-negative integer up to ``maximum``; floats (``1.0``) and booleans are rejected."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SerdeError(f"{what} must be an integer, got {json_kind(value)}")
    if not 0 <= value <= maximum:
        raise SerdeError(f"{what} must be between 0 and {maximum}, got {value}")
    return value


def to_float(value: Any, what: str) -> float:
    """An ``f64``; integers are accepted (serde_json does), booleans and non-finite values not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SerdeError(f"{what} must be a number, got {json_kind(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise SerdeError(f"{what}: number out of range") from None
    if not math.isfinite(result):
        raise SerdeError(f"{what} must be finite")
    return result


def to_list(value: Any, what: str, item: Callable[[Any, str], T]) -> list[T]:
    """A JSON array whose elements are converted by ``item`` (named ``what[index]``)."""
    if not isinstance(value, list):
        raise SerdeError(f"{what} must be an array, got {json_kind(value)}")
    return [item(element, f"{what}[{index}]") for index, element in enumerate(value)]


def to_str_list(value: Any, what: str) -> list[str]:
    return to_list(value, what, to_str)


def to_str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SerdeError(f"{what} must be an object, got {json_kind(value)}")
    return {key: to_str(item, f"{what}.{key}") for key, item in value.items()}


# ---------------------------------------------------------------------------------------------
# Durations (``std::time::Duration``)

_NANOS_PER_SEC = 1_000_000_000


def duration_to_json(value: timedelta) -> dict[str, int]:
    """``{"secs": <u64>, "nanos": <u32>}``; ``value`` must not be negative."""
    if value < timedelta(0):
        raise ValueError(f"a Duration cannot be negative: {value!r}")
    return {
        "secs": value.days * 86_400 + value.seconds,
        "nanos": value.microseconds * 1_000,
    }


def duration_from_json(value: Any, what: str = "Duration") -> timedelta:
    """serde's ``Duration``: an object with exactly the keys ``secs`` (u64) and ``nanos`` (u32).

    Unknown keys are rejected (serde's Duration visitor is the one place that does so), and
    ``nanos`` of a second or more carries into ``secs``. A :class:`timedelta` holds
    microseconds, so the last three digits of ``nanos`` are truncated; durations beyond
    :attr:`timedelta.max` (about 2.7 million years) raise :class:`SerdeError`.
    """
    if not isinstance(value, Mapping):
        raise SerdeError(f"{what} must be a JSON object, got {json_kind(value)}")
    for key in value:
        if key not in ("secs", "nanos"):
            raise SerdeError(f"{what}: unknown field `{key}`, expected `secs` or `nanos`")
    fields = Fields(value, what)
    secs = fields.uint("secs", U64_MAX)
    nanos = fields.uint("nanos", U32_MAX)
    secs += nanos // _NANOS_PER_SEC
    if secs > U64_MAX:
        raise SerdeError(f"{what}: overflow deserializing Duration")
    try:
        return timedelta(seconds=secs, microseconds=(nanos % _NANOS_PER_SEC) // 1_000)
    except OverflowError:
        raise SerdeError(f"{what}: {secs} seconds is too large for a timedelta") from None


# ---------------------------------------------------------------------------------------------
# Numbers, enums, base64


def float_to_json(value: float) -> float | None:
    """An ``f64`` as serde_json writes it: ``null`` when NaN or infinite, else the float."""
    result = float(value)
    return result if math.isfinite(result) else None


def str_enum_from_json(cls: type[E], value: Any, what: str) -> E:
    """A unit-only enum from its serialized string; unknown variants name the valid ones."""
    if not isinstance(value, str):
        raise SerdeError(f"{what} must be a string, got {json_kind(value)}")
    try:
        return cls(value)
    except ValueError:
        expected = ", ".join(f"`{member.value}`" for member in cls)
        raise SerdeError(f"{what}: unknown variant `{value}`, expected one of {expected}") from None


def base64_encode(data: bytes) -> str:
    """Standard alphabet with ``=`` padding (the base64 crate's ``STANDARD`` engine)."""
    return base64.b64encode(data).decode("ascii")


def base64_decode_strict(text: str) -> bytes:
    """Decode like the base64 crate's ``STANDARD`` engine; raises :class:`ValueError`.

    Only the canonical encoding is accepted: standard alphabet, exact ``=`` padding, zero
    trailing bits, no whitespace or other characters. :func:`base64.b64decode` checks neither
    the padding length nor the trailing bits, so the result is re-encoded and compared.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None
    if base64_encode(data) != text:
        raise ValueError("invalid base64: not the canonical encoding")
    return data
