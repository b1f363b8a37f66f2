"""``astrid logs CAPSULE [-f] [-n N] [--previous] [--since TIME]``: read the tree's log files.

A capsule's records are in ``$ASTRID_HOME/logs/<capsule>.log`` and its rotated files
``<capsule>.log.1`` (newest) to ``.N`` (oldest), see :mod:`astrid_core.logfile`; ``broker`` and
``supervisor`` name ``logs/broker.log`` and ``logs/supervisor.log``. The chain of files is opened
under the shared rotation lock, so a rotation never makes a record appear twice or not at all.

A record is one line, ``<time> <LEVEL> <capsule>[<generation>] <message>``, except in
``supervisor.log``, where a traceback follows its record on the next lines; ``-n`` counts records.

``--previous`` shows the generation before the current one: the worker that crashed. The current
generation and the start of the supervisor's current run come from the status file; when the
supervisor is not running, from the logs themselves (the last ``astrid-supervisor starting``
record of ``supervisor.log`` marks the last run; the highest generation of that run is the
current one). Only the current run's records count: generation numbers start over with every run
of the supervisor.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, TextIO

from astrid_core.dirs import AstridHome
from astrid_core.logfile import rotated_paths, shared_rotation_lock, utc_timestamp
from supervisor.status import StatusFile, read_status, status_path

__all__ = [
    "DEFAULT_LINES",
    "FOLLOW_INTERVAL",
    "LogsError",
    "Record",
    "log_path",
    "non_negative_int",
    "parse_since",
    "previous_generation",
    "read_records",
    "show_logs",
]

#: ``-n`` when not given.
DEFAULT_LINES: Final = 100
#: How often ``-f`` looks for new records (seconds).
FOLLOW_INTERVAL: Final = 0.2
#: With ``-f``, how long a file that was rotated away is still read: the other writing process
#: may append a record or two to it before it notices the rotation.
ROTATED_GRACE: Final = 2.0

SUPERVISOR_LOG: Final = "supervisor"
BROKER_LOG: Final = "broker"
#: The record the supervisor writes first in every run (``supervisor/tree.py``).
_RUN_START_MESSAGE: Final = b" astrid-supervisor starting "

_BLOCK: Final = 64 * 1024
#: Without a status file, the current generation is the highest among this many last records of
#: the run (a record of the previous generation can come a little after the first of the next).
_CURRENT_LOOKBACK: Final = 1000
_RECORD_START = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
_TIMESTAMP_LEN: Final = len("2026-11-21T22:00:00.123Z")
_TAG = re.compile(rb"\S+ +\S+ +[^\s\[\]]+\[(\d+)\]")
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LogsError(Exception):
    """A problem for the operator (unknown capsule, unreadable file): one line, exit 1."""


# --------------------------------------------------------------------------------------------
# Arguments


def non_negative_int(text: str) -> int:
    """argparse type of ``-n``: 0 (everything) or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or more: {text!r}")
    return value


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: ``30s``, ``10m``, ``2h``, ``1d`` ago, or an ISO 8601 time → UNIX seconds.

    A time without a zone (``2026-11-21 22:00``) is local time; the log's own timestamps end in
    ``Z`` (UTC) and can be pasted as they are.
    """
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        now = time.time() if now is None else now
        return now - float(relative[1]) * _UNITS[relative[2]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time: {text!r} (examples: 10m, 2h, 2026-11-21T22:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


# --------------------------------------------------------------------------------------------
# Files


def log_path(home: AstridHome, name: str) -> Path:
    """``logs/<name>.log`` of an existing log (it or a rotated file of it exists)."""
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise LogsError(f"invalid capsule name: {name!r}")
    logs_dir = home.logs_dir()
    path = logs_dir / f"{name}.log"
    if path.exists() or rotated_paths(path):
        return path
    try:
        known = sorted(p.name.removesuffix(".log") for p in logs_dir.glob("*.log"))
    except OSError:
        known = []
    hint = f" (logs: {', '.join(known)})" if known else ""
    raise LogsError(f"no log for '{name}' in {logs_dir}{hint}")


@dataclass
class _Source:
    """One open file of a log's chain; ``end``: where its complete records end (at opening)."""

    path: Path
    fd: int
    ino: int
    end: int

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _open_chain(path: Path) -> list[_Source]:
    """The log's files, oldest first, opened under the shared rotation lock."""
    sources: list[_Source] = []
    try:
        with shared_rotation_lock(path):
            for member in [*rotated_paths(path), path]:
                try:
                    fd = os.open(member, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                info = os.fstat(fd)
                sources.append(_Source(member, fd, info.st_ino, info.st_size))
        if sources and sources[-1].path == path:
            # A record being appended right now is left to -f (it ends the current file).
            sources[-1].end = _last_line_end(sources[-1].fd, sources[-1].end)
    except OSError as exc:
        for source in sources:
            source.close()
        raise LogsError(f"cannot read {path}: {exc}") from None
    return sources


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline in the first ``size`` bytes (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _BLOCK)
        newline = os.pread(fd, pos - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


def _reverse_lines(fd: int, end: int) -> Iterator[bytes]:
    """The lines of the first ``end`` bytes of ``fd``, last first, each ending with a newline."""
    buffer = b""
    pos = end
    while pos > 0:
        start = max(0, pos - _BLOCK)
        data = os.pread(fd, pos - start, start)
        if len(data) < pos - start:  # the file shrank (truncated by hand): read no further
            return
        buffer = data + buffer
        pos = start
        if pos > 0:
            newline = buffer.find(b"\n")
            if newline < 0:
                continue  # a line longer than a block
            head, body = buffer[: newline + 1], buffer[newline + 1 :]
        else:
            head, body = b"", buffer
        lines = body.split(b"\n")
        last = lines.pop()
        if last:  # no newline at the end of the file
            yield last + b"\n"
        for line in reversed(lines):
            yield line + b"\n"
        buffer = head


# --------------------------------------------------------------------------------------------
# Records


class Record(NamedTuple):
    """A record: its line (and the lines of a traceback that follows it), as written."""

    data: bytes
    timestamp: bytes | None  # b"2026-11-21T22:00:00.123Z"; None for stray lines
    generation: int | None  # the N of <capsule>[N]; None when untagged


def _record(lines: list[bytes], tagged: bool) -> Record:
    first = lines[0]
    timestamp = first[:_TIMESTAMP_LEN] if _RECORD_START.match(first) else None
    generation = None
    if tagged and timestamp is not None:
        match = _TAG.match(first)
        if match:
            generation = int(match[1])
    return Record(b"".join(lines), timestamp, generation)


def _reverse_records(sources: list[_Source], tagged: bool) -> Iterator[Record]:
    """The records of the chain, newest first."""
    continuation: list[bytes] = []  # lines after a record's first line, seen before it
    for source in reversed(sources):
        for line in _reverse_lines(source.fd, source.end):
            if _RECORD_START.match(line):
                continuation.append(line)
                continuation.reverse()
                yield _record(continuation, tagged)
                continuation = []
            else:
                continuation.append(line)
    if continuation:  # lines before the first record (its start rotated away)
        continuation.reverse()
        yield _record(continuation, tagged)


def _last(records: Iterable[Record], count: int) -> list[Record]:
    """The first ``count`` of the (newest first) ``records`` (all for 0), oldest first."""
    chosen: list[Record] = []
    for record in records:
        chosen.append(record)
        if count and len(chosen) >= count:
            break
    chosen.reverse()
    return chosen


def _since(records: Iterable[Record], since: float | None) -> Iterator[Record]:
    if since is None:
        yield from records
        return
    threshold = utc_timestamp(since).encode()
    for record in records:
        if record.timestamp is not None and record.timestamp >= threshold:
            yield record


def read_records(
    path: Path, *, lines: int = DEFAULT_LINES, since: float | None = None
) -> list[Record]:
    """The last ``lines`` records (0: all) of a log and its rotated files, oldest first."""
    sources = _open_chain(path)
    try:
        return _tail(path, sources, lines, since)
    finally:
        for source in sources:
            source.close()


def _tail(path: Path, sources: list[_Source], lines: int, since: float | None) -> list[Record]:
    try:
        return _last(_since(_reverse_records(sources, True), since), lines)
    except OSError as exc:
        raise LogsError(f"cannot read {path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# --previous


@dataclass
class _Run:
    """Which records belong to the supervisor's current (or last) run."""

    start: bytes | None  # timestamp of the run's start; None: unknown, see below
    _lowest: int | None = field(default=None, init=False)

    def contains(self, record: Record) -> bool | None:
        """Whether ``record`` (walking newest first) is of the run; None: the run begins later.

        Without a known start, generations only grow within a run: walking back, a generation
        higher than one already seen belongs to an earlier run.
        """
        if self.start is not None:
            return record.timestamp is not None and record.timestamp >= self.start
        generation = record.generation
        if not generation:
            return True
        if self._lowest is not None and generation > self._lowest:
            return None
        self._lowest = generation
        return True


def _run_start_from_log(home: AstridHome) -> bytes | None:
    """The time of the last ``astrid-supervisor starting`` record of ``supervisor.log``."""
    path = home.logs_dir() / f"{SUPERVISOR_LOG}.log"
    if not path.exists() and not rotated_paths(path):
        return None
    try:
        sources = _open_chain(path)
    except LogsError:
        return None
    try:
        for record in _reverse_records(sources, False):
            if record.timestamp is not None and _RUN_START_MESSAGE in record.data.split(b"\n")[0]:
                return record.timestamp
    except OSError:
        return None
    finally:
        for source in sources:
            source.close()
    return None


def _status_generation(status: StatusFile, name: str) -> int | None:
    if name == BROKER_LOG:
        return status.broker.restarts + 1 if status.broker.started_at is not None else None
    capsule = status.capsule(name)
    return capsule.generation if capsule is not None else None


def previous_generation(
    home: AstridHome, name: str, *, lines: int = DEFAULT_LINES, since: float | None = None
) -> tuple[int, list[Record]]:
    """The generation before the current one and its last ``lines`` records (0: all)."""
    if name == SUPERVISOR_LOG:
        raise LogsError(
            "supervisor.log has no generations: --previous applies to a capsule or the broker"
        )
    path = log_path(home, name)
    status = read_status(status_path(home.state_dir()))
    current: int | None = None
    if status is not None:
        run = _Run(utc_timestamp(status.supervisor.started_at).encode())
        current = _status_generation(status, name)
    else:
        run = _Run(_run_start_from_log(home))
    sources = _open_chain(path)
    try:
        records = _in_run(_reverse_records(sources, True), run)
        walked: list[Record] = []
        if current is None:  # the highest generation among the run's last records
            current = 0
            for record in records:
                walked.append(record)
                current = max(current, record.generation or 0)
                if len(walked) >= _CURRENT_LOOKBACK:
                    break
        if current <= 1:
            raise LogsError(
                f"'{name}' has no previous generation: the current one is {name}[{current}]"
            )
        wanted = current - 1
        selected = (r for r in itertools.chain(walked, records) if r.generation == wanted)
        return wanted, _last(_since(selected, since), lines)
    except OSError as exc:
        raise LogsError(f"cannot read {path}: {exc}") from None
    finally:
        for source in sources:
            source.close()


def _in_run(records: Iterable[Record], run: _Run) -> Iterator[Record]:
    """The records (newest first) of ``run``, up to its beginning."""
    for record in records:
        inside = run.contains(record)
        if inside is None:
            return
        if inside:
            yield record


# --------------------------------------------------------------------------------------------
# -f


@dataclass
class _Followed:
    """A file being read as it grows; ``partial``: the start of a record not yet complete."""

    fd: int
    ino: int
    offset: int
    partial: bytes = b""
    retired_at: float | None = None

    def read_new(self) -> bytes:
        """The complete lines appended since the last call."""
        if os.fstat(self.fd).st_size < self.offset:  # truncated (by hand): start over
            self.offset, self.partial = 0, b""
        chunks = [self.partial]
        while True:
            data = os.pread(self.fd, _BLOCK, self.offset)
            if not data:
                break
            self.offset += len(data)
            chunks.append(data)
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return data[:cut]

    def close(self) -> bytes:
        """What is left (an unterminated last line gets its newline)."""
        rest = self.read_new()
        if self.partial:
            rest += self.partial + b"\n"
            self.partial = b""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        return rest


class _Follower:
    """``-f``: print what is appended to a log, across rotations."""

    def __init__(self, path: Path, current: _Followed | None, out: BinaryIO) -> None:
        self.path = path
        self.current = current
        self.retired: list[_Followed] = []
        self.out = out

    def poll(self) -> None:
        now = time.monotonic()
        for old in list(self.retired):
            if old.retired_at is not None and now - old.retired_at >= ROTATED_GRACE:
                self.retired.remove(old)
                self._emit(old.close())
            else:
                self._emit(old.read_new())
        if self.current is not None:
            self._emit(self.current.read_new())
        if self._rotated():
            self._switch(now)

    def close(self) -> None:
        for followed in [*self.retired, *([self.current] if self.current else [])]:
            with contextlib.suppress(OSError):
                os.close(followed.fd)

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.out.flush()

    def _rotated(self) -> bool:
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False  # mid-rotation, or removed: wait for the new file
        return self.current is None or ino != self.current.ino

    def _switch(self, now: float) -> None:
        """Move to the new file, reading first the files rotated past since the last poll."""
        old = self.current
        opened: list[tuple[Path, _Followed]] = []
        with shared_rotation_lock(self.path):
            for member in [*rotated_paths(self.path), self.path]:
                try:
                    fd = os.open(member, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                opened.append((member, _Followed(fd, os.fstat(fd).st_ino, 0)))
        position = next(
            (i for i, (_, f) in enumerate(opened) if old is not None and f.ino == old.ino), None
        )
        newer: list[_Followed] = []
        for index, (member, followed) in enumerate(opened):
            if (index > position) if position is not None else (member == self.path):
                newer.append(followed)
            else:
                os.close(followed.fd)
        if old is not None:
            old.retired_at = now
            self.retired.append(old)
        if not newer or opened[-1][0] != self.path:
            for followed in newer:
                os.close(followed.fd)
            self.current = None
            return
        *between, self.current = newer
        for followed in between:  # rotated away already: read them once, keep them a while
            self._emit(followed.read_new())
            followed.retired_at = now
            self.retired.append(followed)
        self._emit(self.current.read_new())


def _follow(path: Path, current: _Source | None, out: BinaryIO, interval: float) -> None:
    followed = None
    if current is not None:
        followed = _Followed(os.dup(current.fd), current.ino, current.end)
    follower = _Follower(path, followed, out)
    try:
        while True:
            follower.poll()
            time.sleep(interval)
    finally:
        follower.close()


# --------------------------------------------------------------------------------------------
# The command


def show_logs(
    home: AstridHome,
    name: str,
    *,
    lines: int = DEFAULT_LINES,
    since: float | None = None,
    previous: bool = False,
    follow: bool = False,
    out: BinaryIO | None = None,
    err: TextIO | None = None,
    interval: float = FOLLOW_INTERVAL,
) -> int:
    """Print the records of ``name``'s log; with ``follow``, then what is appended until Ctrl-C.

    Raises :class:`LogsError` for the operator; returns the exit status.
    """
    out = out if out is not None else sys.stdout.buffer
    err = err if err is not None else sys.stderr
    if previous:
        if follow:
            raise LogsError("--previous cannot be combined with -f: that generation has ended")
        generation, records = previous_generation(home, name, lines=lines, since=since)
        for record in records:
            out.write(record.data)
        out.flush()
        if not records:
            print(f"no records of {name}[{generation}] in the logs", file=err)
        return 0
    path = log_path(home, name)
    sources = _open_chain(path)
    try:
        for record in _tail(path, sources, lines, since):
            out.write(record.data)
        out.flush()
        if not follow:
            return 0
        current = sources[-1] if sources and sources[-1].path == path else None
        try:
            _follow(path, current, out, interval)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise LogsError(f"cannot follow {path}: {exc}") from None
        return 0
    finally:
        for source in sources:
            source.close()
