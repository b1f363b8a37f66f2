"""Small text helpers shared by every package (spec/core.md §11).

Rust strings are UTF-8 byte sequences and several limits of the reference are expressed in bytes,
not characters; these helpers give Python the same byte-oriented behaviour.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Final

__all__ = [
    "UNICODE_WHITESPACE",
    "lossy_utf8",
    "strip_unicode_whitespace",
    "truncate_to_boundary",
]

#: Code points with the Unicode ``White_Space`` property: what Rust's ``str::trim`` removes.
#: Python's ``str.strip()`` also removes U+001C..U+001F, which Rust keeps.
UNICODE_WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def truncate_to_boundary(s: str, max_bytes: int) -> str:
    """Return the longest prefix of ``s`` whose UTF-8 encoding is at most ``max_bytes`` long.

    ``s`` is returned unchanged when it already fits. Otherwise the cut is moved back until it
    falls on a character boundary, so a multi-byte character is never split. Lone surrogates
    (which a Rust ``&str`` cannot hold) count as their three-byte encoded form.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
    encoded = s.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return s
    cut = max_bytes
    # The byte at ``cut`` starts the first excluded character unless it is a continuation byte
    # (0b10xxxxxx); step back until the cut is at the start of a character.
    while cut > 0 and encoded[cut] & 0xC0 == 0x80:
        cut -= 1
    return encoded[:cut].decode("utf-8", "surrogatepass")


def lossy_utf8(data: bytes | bytearray | memoryview) -> str:
    """Decode ``data`` as UTF-8, replacing each invalid sequence with U+FFFD."""
    return str(data, "utf-8", "replace")


def strip_unicode_whitespace(s: str) -> str:
    """Strip leading and trailing Unicode ``White_Space`` characters (Rust's ``str::trim``)."""
    return s.strip(UNICODE_WHITESPACE)


# ---------------------------------------------------------------------------------------------
# Rust's Debug quoting (error texts of the reference quote values with {:?})

# Rust's `{:?}` of str and char, used verbatim in the capsule-id messages: `\0 \t \r \n \\` and
# the quote are backslash-escaped; grapheme extenders and non-printable characters (general
# categories C*, Z* except the space) become `\u{hex}`.
_GRAPHEME_EXTEND_CATEGORIES: Final = frozenset({"Mn", "Me"})
#: Unicode's Other_Grapheme_Extend code points (Grapheme_Extend = Mn + Me + these).
_OTHER_GRAPHEME_EXTEND: Final = frozenset(
    (
        *(0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E),
        *(0x0D57, 0x0DCF, 0x0DDF, 0x1B35, 0x200C, 0x302E, 0x302F, 0xFF9E, 0xFF9F, 0x1133E),
        *(0x11357, 0x114B0, 0x114BD, 0x115AF, 0x11930, 0x1D165),
        *range(0x1D16E, 0x1D173),
        *range(0xE0020, 0xE0080),
    )
)
_NON_PRINTABLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_BACKSLASH_ESCAPES: Final = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\"}


def _escape_debug(char: str, quote: str) -> str:
    if char in _BACKSLASH_ESCAPES:
        return _BACKSLASH_ESCAPES[char]
    if char == quote:
        return "\\" + char
    category = unicodedata.category(char)
    if (
        category in _GRAPHEME_EXTEND_CATEGORIES
        or ord(char) in _OTHER_GRAPHEME_EXTEND
        or (category in _NON_PRINTABLE_CATEGORIES and char != " ")
    ):
        return f"\\u{{{ord(char):x}}}"
    return char


def rust_debug_str(s: str) -> str:
    """``s`` quoted like Rust's ``{:?}`` of a ``&str``: ``"a\\"b\\n"``."""
    return '"' + "".join(_escape_debug(char, '"') for char in s) + '"'


def rust_debug_char(char: str) -> str:
    """``char`` quoted like Rust's ``{:?}`` of a ``char``: ``'x'``."""
    return "'" + _escape_debug(char, "'") + "'"


def rust_debug_list(items: Iterable[str]) -> str:
    """Strings like Rust's ``{:?}`` of a ``Vec<String>``: ``[\"a\", \"b\"]``."""
    return "[" + ", ".join(rust_debug_str(item) for item in items) + "]"
