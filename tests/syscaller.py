"""Scripts for the syscaller test capsule (``tests/capsules/syscaller``).

The capsule runs a binary SCRIPT of syscalls and returns binary RESULTS:

* SCRIPT: ``u8 flags`` (bit 0: repeat the whole script forever, bit 1: after the script, spin in
  a busy loop), ``u8 count``, then ``count`` calls, each ``u8 index`` (``astrid_core.syscalls``
  order), ``u8 nargs`` and ``nargs`` times ``u32 LE length + bytes``. A length with bit 31 set
  is a fill (:class:`Fill`): ``length & 0x7FFFFFFF`` copies of the one byte that follows, made by
  the capsule, so a big argument needs no big script.
* RESULTS: per call, ``u32 LE length + bytes`` for a value-returning syscall, ``u32 LE 0xFFFFFFFF``
  for a void one (it completed).

The ``astrid_tool_call`` export (tool ``run``) takes the script as tool arguments that are a JSON
string of lowercase hex (:func:`script_tool_args`) and outputs the results as hex text
(:func:`decode_hex_output`); the ``run_script`` export takes and returns raw bytes
(:func:`decode_results`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from astrid_core.syscalls import BY_NAME

#: Results marker of a void call that completed.
VOID_MARKER = 0xFFFFFFFF

FLAG_REPEAT = 0x01
FLAG_SPIN = 0x02

#: Most calls one script can hold (``count`` is one byte).
MAX_CALLS = 255

FILL_BIT = 0x80000000


@dataclass(frozen=True, slots=True)
class Fill:
    """An argument of ``count`` copies of ``byte``, generated inside the capsule."""

    byte: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.byte <= 0xFF:
            raise ValueError(f"fill byte {self.byte} is not in 0..255")
        if not 0 <= self.count < FILL_BIT:
            raise ValueError(f"fill count {self.count} is not in 0..2**31-1")

    def __bytes__(self) -> bytes:
        return bytes((self.byte,)) * self.count


def encode_script(
    calls: Sequence[tuple[str, Sequence[bytes | Fill]]], repeat: bool = False, spin: bool = False
) -> bytes:
    """Encode ``(syscall name, args)`` pairs as a SCRIPT.

    Raises ``ValueError`` for an unknown name, a wrong number of arguments, or too many calls.
    """
    if len(calls) > MAX_CALLS:
        raise ValueError(f"a script holds at most {MAX_CALLS} calls, got {len(calls)}")
    flags = (FLAG_REPEAT if repeat else 0) | (FLAG_SPIN if spin else 0)
    out = bytearray((flags, len(calls)))
    for name, args in calls:
        syscall = BY_NAME.get(name)
        if syscall is None:
            raise ValueError(f"unknown syscall {name!r}")
        if len(args) != syscall.arity:
            raise ValueError(f"{name} takes {syscall.arity} argument(s), got {len(args)}")
        out += bytes((syscall.index, len(args)))
        for arg in args:
            if isinstance(arg, Fill):
                out += struct.pack("<IB", FILL_BIT | arg.count, arg.byte)
            else:
                out += struct.pack("<I", len(arg))
                out += arg
    return bytes(out)


def script_tool_args(script: bytes) -> str:
    """The tool arguments (JSON text) that make tool ``run`` execute ``script``."""
    return json.dumps(script.hex())


def tool_call_input(script: bytes) -> bytes:
    """The full ``astrid_tool_call`` input for tool ``run`` (arguments as a JSON byte array)."""
    arguments = list(script_tool_args(script).encode())
    return json.dumps({"name": "run", "arguments": arguments}, separators=(",", ":")).encode()


def decode_results(raw: bytes) -> list[bytes | None]:
    """Decode RESULTS: one entry per call, ``None`` for a completed void call."""
    results: list[bytes | None] = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < 4:
            raise ValueError(f"truncated results at byte {pos}")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if length == VOID_MARKER:
            results.append(None)
            continue
        if len(raw) - pos < length:
            raise ValueError(f"truncated result at byte {pos}: needs {length} bytes")
        results.append(bytes(raw[pos : pos + length]))
        pos += length
    return results


def decode_hex_output(text: str) -> list[bytes | None]:
    """Decode the hex text output of tool ``run``."""
    return decode_results(bytes.fromhex(text.strip()))
