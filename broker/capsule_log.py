"""Capsule log files: ``logs/<capsule>.log``, one line per record.

The supervisor appends the worker's stdout/stderr lines to the same file in the same format
(``<time>Z <LEVEL> <capsule>[<generation>] <message>``); both open it with ``O_APPEND`` and write
whole lines with one ``write`` each, so records never interleave.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r"})


def utc_timestamp(now: float | None = None) -> str:
    """``2026-11-21T22:00:00.123Z``."""
    now = time.time() if now is None else now
    seconds = int(now)
    millis = int((now - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def format_record(level: str, capsule: str, generation: int, message: str) -> bytes:
    line = f"{utc_timestamp()} {level:<5} {capsule}[{generation}] {message.translate(_ESCAPES)}\n"
    return line.encode("utf-8", "replace")


class CapsuleLog:
    """An append-only log file of one capsule."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, level: str, capsule: str, generation: int, message: str) -> None:
        os.write(self._fd, format_record(level, capsule, generation, message))

    def close(self) -> None:
        os.close(self._fd)
