"""Small text helpers shared by every package (spec/core.md §11).

Rust strings are UTF-8 byte sequences and several limits of the reference are expressed in bytes,
not characters; these helpers give Python the same byte-oriented behaviour.
"""

from __future__ import annotations

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
