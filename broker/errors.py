"""Errors a syscall handler raises, and the argument guards of the ABI (syscalls.md §0.2)."""

from __future__ import annotations


class SyscallError(Exception):
    """A host-call failure: the guest traps and the caller sees ``text`` verbatim."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def guard(data: bytes, limit: int) -> bytes:
    """Reject an argument larger than ``limit`` bytes with the reference's exact text."""
    if len(data) > limit:
        raise SyscallError(
            f"memory allocation of {len(data)} bytes exceeds maximum allowed limit of {limit} bytes"
        )
    return data


def lossy_or_empty(data: bytes) -> str:
    """Decode UTF-8; invalid UTF-8 becomes the empty string.

    (The reference's ``from_utf8(..).unwrap_or_default()``.)
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def lossy(data: bytes) -> str:
    """Decode UTF-8, replacing invalid sequences with U+FFFD (``from_utf8_lossy``)."""
    return data.decode("utf-8", "replace")


def utf8_error_text(data: bytes) -> str:
    """Describe why ``data`` is not UTF-8, in the words of Rust's ``Utf8Error``."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            return f"incomplete utf-8 byte sequence from index {exc.start}"
        return f"invalid utf-8 sequence of {exc.end - exc.start} bytes from index {exc.start}"
    return "valid utf-8"
