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
  accepted where a number is expected.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

T = TypeVar("T")


class SerdeError(ValueError):
    """A JSON value that does not deserialize into the expected type."""


# ---------------------------------------------------------------------------------------------
# Text


def dumps(value: Any) -> str:
    """serde_json's compact form: no spaces, non-ASCII as raw UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Parse JSON, rejecting NaN/Infinity like serde_json; raises :class:`SerdeError`."""

    def reject(constant: str) -> Any:
        raise SerdeError(f"invalid number {constant}")

    try:
        return json.loads(text, parse_constant=reject)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SerdeError(f"invalid JSON: {exc}") from None


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
        raise SerdeError(f"{what} must be a string, got {_kind(value)}")
    try:
        return parse_uuid_strict(value)
    except ValueError:
        raise SerdeError(f"{what}: invalid UUID {value!r}") from None


def uuid_to_json(value: uuid.UUID) -> str:
    return str(value)


# ---------------------------------------------------------------------------------------------
# Timestamps

_RFC3339 = re.compile(
    r"\s*(?P<date>\d{4}-\d{2}-\d{2})\s*[Tt ]\s*(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
    r"(?:\.(?P<frac>\d+))?\s*(?P<offset>[Zz]|UTC|[+-]\d{2}:?\d{2})\s*"
)


def format_datetime(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` and as many fractional digits as needed (0, 3, 6 or 9)."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    value = value.astimezone(UTC)
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
    """chrono's relaxed RFC 3339 (``T``, ``t`` or a space; any number of fractional digits; a
    mandatory offset ``Z``/``z``/``UTC``/``±HH:MM``/``±HHMM``), converted to UTC.

    Raises :class:`ValueError`.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}")
    fraction = (match["frac"] or "")[:6].ljust(6, "0")
    offset = match["offset"]
    if offset in ("Z", "z", "UTC"):
        zone: timezone = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise ValueError(f"invalid UTC offset in {text!r}")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        year, month, day = (int(part) for part in match["date"].split("-"))
        local = datetime(
            year,
            month,
            day,
            int(match["h"]),
            int(match["m"]),
            int(match["s"]),
            int(fraction),
            tzinfo=zone,
        )
    except ValueError as exc:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}: {exc}") from None
    return local.astimezone(UTC)


def datetime_from_json(value: Any, what: str = "timestamp") -> datetime:
    if not isinstance(value, str):
        raise SerdeError(f"{what} must be a string, got {_kind(value)}")
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise SerdeError(f"{what}: {exc}") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Objects


def _kind(value: Any) -> str:
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
            raise SerdeError(f"{what} must be a JSON object, got {_kind(value)}")
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


def to_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SerdeError(f"{what} must be a string, got {_kind(value)}")
    return value


def to_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SerdeError(f"{what} must be a boolean, got {_kind(value)}")
    return value


def to_uint(value: Any, what: str, maximum: int = 2**64 - 1) -> int:
    """A non-negative integer up to ``maximum``; floats (``1.0``) and booleans are rejected."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SerdeError(f"{what} must be an integer, got {_kind(value)}")
    if not 0 <= value <= maximum:
        raise SerdeError(f"{what} must be between 0 and {maximum}, got {value}")
    return value


def to_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SerdeError(f"{what} must be a number, got {_kind(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise SerdeError(f"{what} must be finite")
    return result


def to_str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise SerdeError(f"{what} must be an array, got {_kind(value)}")
    return [to_str(item, f"{what}[{index}]") for index, item in enumerate(value)]


def to_str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SerdeError(f"{what} must be an object, got {_kind(value)}")
    return {key: to_str(item, f"{what}.{key}") for key, item in value.items()}
