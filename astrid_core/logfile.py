"""Log files of the tree: ``logs/<capsule>.log``, ``logs/broker.log``, ``logs/supervisor.log``.

One record per line: ``<UTC time with ms>Z <LEVEL> <capsule>[<generation>] <message>``. The broker
writes a capsule's ``astrid_log`` records (levels TRACE, DEBUG, INFO, WARN, ERROR) and the
supervisor the same capsule's stdout/stderr lines (levels STDOUT, STDERR) into the same file. Both
open it with ``O_APPEND`` and write each record with one ``write``, so records never interleave
and nothing sits in a buffer when a process dies.

Rotation is by size: before a record would take the file past ``max_bytes``, the writer takes an
exclusive :func:`fcntl.flock` on the sidecar ``<name>.log.lock``, checks again under the lock that
the file it holds is still ``<name>.log`` and still too full, shifts ``<name>.log.N`` to ``.N+1``
(the oldest beyond ``backups`` is dropped), renames ``<name>.log`` to ``<name>.log.1`` and opens a
new ``<name>.log``. The other process writing the same file notices the rename (the inode at the
path is no longer the one it holds) on its next check and reopens; a check happens every
``check_bytes`` bytes, every ``check_writes`` records or ``check_interval`` seconds, whichever comes
first, and always before rotating. A record appended in between lands, whole, in ``<name>.log.1``.
Readers (``astrid logs``) take the same lock shared while they open the chain of files, so they
never see a rotation half done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_BACKUPS",
    "DEFAULT_MAX_BYTES",
    "ROTATION_LOCK_WAIT",
    "LogFile",
    "backup_path",
    "capsule_tag",
    "format_record",
    "lock_path",
    "rotated_paths",
    "shared_rotation_lock",
    "utc_timestamp",
]

#: Rotate a log file before it grows past this many bytes.
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
#: Rotated files kept: ``<name>.log.1`` (newest) to ``<name>.log.5`` (oldest).
DEFAULT_BACKUPS: Final = 5
#: Defaults of the "was my file rotated by the other writer?" check (see :class:`LogFile`).
DEFAULT_CHECK_BYTES: Final = 64 * 1024
DEFAULT_CHECK_WRITES: Final = 256
DEFAULT_CHECK_INTERVAL: Final = 1.0
#: The longest a writer waits for the rotation lock (see :func:`_lock_exclusive`).
ROTATION_LOCK_WAIT: Final = 0.2

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


# --------------------------------------------------------------------------------------------
# The chain of files: <name>.log, <name>.log.1 (newest rotated) ... <name>.log.N (oldest)


def backup_path(path: Path, index: int) -> Path:
    """``<name>.log.<index>``: the ``index``-th most recent rotated file."""
    return path.with_name(f"{path.name}.{index}")


def lock_path(path: Path) -> Path:
    """The sidecar ``<name>.log.lock`` that serialises rotations of ``path``."""
    return path.with_name(f"{path.name}.lock")


def rotated_paths(path: Path) -> list[Path]:
    """The rotated files of ``path`` that exist, oldest first (``.5``, ..., ``.1``)."""
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)")
    found: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((int(match[1]), Path(entry.path)))
    return [p for _, p in sorted(found, reverse=True)]


@contextlib.contextmanager
def shared_rotation_lock(path: Path) -> Iterator[None]:
    """Hold the rotation lock of ``path`` shared: no writer rotates it meanwhile.

    For readers; keep it for as long as opening a few files takes (a writer that wants to rotate
    waits for it). When the lock file cannot be opened or created, proceeds without it.
    """
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_exclusive(fd: int) -> bool:
    """Take the exclusive lock, waiting at most :data:`ROTATION_LOCK_WAIT` seconds.

    The other writer holds it for the few renames of a rotation, a reader for the opening of a
    few files. A writer never waits longer than that: a stuck lock holder must not stall the
    supervisor; the record then goes into the file held and the next write tries again.
    """
    deadline = time.monotonic() + ROTATION_LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        else:
            return True


# --------------------------------------------------------------------------------------------
# Writing


class LogFile:
    """An append-only log file, rotated by size, safe to share with another writing process.

    ``max_bytes`` (0: never rotate) and ``backups`` (rotated files kept; 0: a full file is
    dropped) set the rotation. A record is never split: it is written whole, with one ``write``,
    into whichever file the writer holds; a file only exceeds ``max_bytes`` by a record that is
    larger on its own, or by what another process appended concurrently.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        check_bytes: int = DEFAULT_CHECK_BYTES,
        check_writes: int = DEFAULT_CHECK_WRITES,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        if max_bytes < 0 or backups < 0:
            raise ValueError("max_bytes and backups must not be negative")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        # A small file is checked more often: the other writer must not stay on a rotated file
        # for as long as several rotations take.
        self.check_bytes = min(check_bytes, max_bytes // 4) if max_bytes else check_bytes
        self.check_writes = check_writes
        self.check_interval = check_interval
        self._mutex = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._ino = 0
        self._rotation_retry_at = 0.0
        self._open()

    # -- public API --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append ``data``; raises OSError (a full disk, say) for the caller to report.

        ``data`` is one record (or several whole ones): it goes into one file. A failed
        rotation is not an error of the write: the record is appended to the file held.
        """
        with self._mutex:
            if self._check_due():
                self._reopen_if_rotated()
            if self.max_bytes:
                size = os.fstat(self._fd).st_size
                if size and size + len(data) > self.max_bytes:
                    self._rotate(len(data))
            self._append(data)

    def write_record(self, level: str, tag: str, message: str) -> None:
        self.write(format_record(level, tag, message))

    def close(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- internals ---------------------------------------------------------------------------

    def _open(self) -> None:
        """(Re)open ``self.path``, creating it; the previous descriptor is closed."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        old, self._fd = self._fd, fd
        self._ino = os.fstat(fd).st_ino
        if old >= 0:
            with contextlib.suppress(OSError):
                os.close(old)
        self._reset_check()

    def _reset_check(self) -> None:
        self._unchecked_bytes = 0
        self._unchecked_writes = 0
        self._checked_at = time.monotonic()

    def _check_due(self) -> bool:
        return (
            self._unchecked_bytes >= self.check_bytes
            or self._unchecked_writes >= self.check_writes
            or time.monotonic() - self._checked_at >= self.check_interval
        )

    def _reopen_if_rotated(self) -> bool:
        """Reopen when ``self.path`` is no longer the file held (rotated, or removed).

        Returns whether the file held is now ``self.path``; when that cannot be told or the
        reopening fails, the file held is kept (records still go somewhere) and False returned.
        """
        self._reset_check()
        try:
            if os.stat(self.path).st_ino == self._ino:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            self._open()
        except OSError:
            return False
        return True

    def _rotate(self, incoming: int) -> None:
        """Rotate under the exclusive lock, unless another writer did it already."""
        if time.monotonic() < self._rotation_retry_at:
            return
        try:
            lock_fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._rotation_retry_at = time.monotonic() + self.check_interval
            return  # no rotation without the lock; the record still gets written
        try:
            if not _lock_exclusive(lock_fd):
                self._rotation_retry_at = time.monotonic() + self.check_interval
                return
            held = self._ino
            if not self._reopen_if_rotated():
                return
            if self._ino != held:  # rotated by the other writer: is the new file full too?
                size = os.fstat(self._fd).st_size
                if not size or size + incoming <= self.max_bytes:
                    return
            self._shift()
            self._open()
        except OSError:
            self._rotation_retry_at = time.monotonic() + self.check_interval
        finally:
            os.close(lock_fd)  # releases the lock

    def _shift(self) -> None:
        """``.N`` → ``.N+1`` (the oldest beyond ``backups`` are dropped), the file → ``.1``."""
        for member in rotated_paths(self.path):  # oldest (highest index) first
            index = int(member.name.rpartition(".")[2])
            if index >= self.backups:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(member)
            else:
                os.rename(member, backup_path(self.path, index + 1))
        if self.backups:
            os.rename(self.path, backup_path(self.path, 1))
        else:
            os.unlink(self.path)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._unchecked_bytes += len(data)
        self._unchecked_writes += 1
