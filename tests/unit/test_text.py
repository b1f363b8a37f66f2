"""Tests for astrid_core.text (spec/core.md §11 and the utils.rs tests of §12)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core.text import (
    UNICODE_WHITESPACE,
    lossy_utf8,
    strip_unicode_whitespace,
    truncate_to_boundary,
)

# --- ports of utils.rs ----------------------------------------------------------------------


def test_ascii_no_truncation() -> None:
    """Mirrors utils.rs `ascii_no_truncation`."""
    assert truncate_to_boundary("hello", 10) == "hello"


def test_ascii_truncation() -> None:
    """Mirrors utils.rs `ascii_truncation`."""
    assert truncate_to_boundary("hello world", 5) == "hello"


def test_emoji_boundary() -> None:
    """Mirrors utils.rs `emoji_boundary`."""
    s = "\U0001f600\U0001f601\U0001f602"
    assert len(s.encode()) == 12
    assert truncate_to_boundary(s, 4) == "\U0001f600"
    assert truncate_to_boundary(s, 5) == "\U0001f600"
    assert truncate_to_boundary(s, 7) == "\U0001f600"
    assert truncate_to_boundary(s, 8) == "\U0001f600\U0001f601"


def test_multibyte_boundary() -> None:
    """Mirrors utils.rs `multibyte_boundary`."""
    assert truncate_to_boundary("café", 3) == "caf"
    assert truncate_to_boundary("café", 4) == "caf"
    assert truncate_to_boundary("café", 5) == "café"


def test_zero_max_bytes() -> None:
    """Mirrors utils.rs `zero_max_bytes`."""
    assert truncate_to_boundary("hello", 0) == ""


def test_empty_string() -> None:
    """Mirrors utils.rs `empty_string`."""
    assert truncate_to_boundary("", 10) == ""


# --- further tests --------------------------------------------------------------------------


def test_truncate_rejects_negative_limit() -> None:
    with pytest.raises(ValueError, match="negative"):
        truncate_to_boundary("abc", -1)


def test_truncate_counts_bytes_not_characters() -> None:
    # 3 characters, 6 bytes: a character-based cut would keep everything.
    assert truncate_to_boundary("ééé", 5) == "éé"


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_truncate_is_longest_fitting_prefix(s: str, max_bytes: int) -> None:
    result = truncate_to_boundary(s, max_bytes)
    assert s.startswith(result)
    encoded = result.encode("utf-8", "surrogatepass")
    assert len(encoded) <= max_bytes or result == s
    if result != s:
        next_char = s[len(result)]
        assert len(encoded) + len(next_char.encode("utf-8", "surrogatepass")) > max_bytes


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_truncate_returns_input_when_it_fits(s: str, extra: int) -> None:
    assert truncate_to_boundary(s, len(s.encode("utf-8", "surrogatepass")) + extra) == s


def test_lossy_utf8() -> None:
    assert lossy_utf8(b"caf\xc3\xa9") == "café"
    assert lossy_utf8(b"ab\xffcd") == "ab\ufffdcd"
    assert lossy_utf8(bytearray(b"\xe2\x82")) == "\ufffd"
    assert lossy_utf8(memoryview(b"ok")) == "ok"


@given(st.binary())
def test_lossy_utf8_never_fails_and_round_trips_valid_text(data: bytes) -> None:
    text = lossy_utf8(data)
    try:
        expected = data.decode("utf-8")
    except UnicodeDecodeError:
        assert "\ufffd" in text
    else:
        assert text == expected


def test_strip_unicode_whitespace_matches_rust_trim() -> None:
    assert strip_unicode_whitespace("\u3000 abc\n\u2029") == "abc"
    # U+001C..U+001F are whitespace to Python's str.strip() but not to Rust's str::trim.
    assert strip_unicode_whitespace("\x1cabc\x1f") == "\x1cabc\x1f"
    assert "\x1c" not in UNICODE_WHITESPACE
    assert all(ch.isspace() for ch in UNICODE_WHITESPACE)
