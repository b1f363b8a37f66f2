"""Log files of the tree: ``logs/<capsule>.log``, ``logs/broker.log``, ``logs/supervisor.log``.

One record per line: ``<UTC time with ms>Z <LEVEL> <capsule>[<generation>] <message>``. The broker
writes a capsule's ``astrid_log`` records (levels TRACE, DEBUG, INFO, WARN, ERROR) and the
supervisor the same capsule's stdout/stderr lines (levels STDOUT, STDERR) into the same file. Both
open it with ``O_APPEND`` and write each record with one ``write``, so records never interleave
and nothing sits in a buffer when a process dies.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r"})


def utc_timestamp(when: float | None = None) -> str:
    """``2026-11-21T22:00:00.123Z`` (now, unless ``when`` is given)."""
    when = time.time() if when is None else when
    seconds = int(when)
    millis = int((when - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def format_record(level: str, tag: str, message: str, when: float | None = None) -> bytes:
    """One log line; line breaks inside ``message`` are escaped so a record stays one line."""
    line = f"{utc_timestamp(when)} {level:<6} {tag} {message.translate(_ESCAPES)}\n"
    return line.encode("utf-8", "backslashreplace")


def capsule_tag(capsule: str, generation: int) -> str:
    return f"{capsule}[{generation}]"


class LogFile:
    """An append-only log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        """Append ``data``; raises OSError (a full disk, say) for the caller to report."""
        while data:
            data = data[os.write(self._fd, data) :]

    def write_record(self, level: str, tag: str, message: str) -> None:
        self.write(format_record(level, tag, message))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
