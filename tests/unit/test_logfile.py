"""Log files: size-based rotation, and two processes appending to one file through rotations."""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from pathlib import Path

import pytest

from astrid_core.logfile import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    ROTATION_LOCK_WAIT,
    LogFile,
    backup_path,
    format_record,
    lock_path,
    rotated_paths,
    shared_rotation_lock,
)

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO   w(\d)\[1\] seq=(\d+) (x*)\n")


def record(number: int, width: int = 0) -> bytes:
    """A record of exactly ``64 + width`` bytes (for numbers below 10**6)."""
    return format_record("INFO", "w0[1]", f"seq={number:06d} {'.' * 14}{'x' * width}", when=0.0)


def chain(path: Path) -> list[Path]:
    """The log's files, oldest first."""
    return [*rotated_paths(path), path]


def chain_lines(path: Path) -> list[bytes]:
    return [line for member in chain(path) for line in member.read_bytes().splitlines(True)]


def test_defaults_and_existing_api(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "logs" / "cap.log")
    assert (log.max_bytes, log.backups) == (DEFAULT_MAX_BYTES, DEFAULT_BACKUPS)
    assert (DEFAULT_MAX_BYTES, DEFAULT_BACKUPS) == (10 * 1024 * 1024, 5)
    log.write_record("INFO", "cap[1]", "hello")
    log.write(b"raw line\n")
    log.close()
    log.close()  # idempotent
    assert (tmp_path / "logs" / "cap.log").read_bytes().endswith(b" cap[1] hello\nraw line\n")
    assert lock_path(log.path).name == "cap.log.lock"
    assert backup_path(log.path, 3).name == "cap.log.3"
    with pytest.raises(ValueError, match="negative"):
        LogFile(tmp_path / "x.log", max_bytes=-1)


def test_rotation_sizes_count_and_shift(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    assert len(record(0)) == 64
    log = LogFile(path, max_bytes=640, backups=3)  # 10 records per file
    for number in range(95):
        log.write(record(number))
        assert path.stat().st_size <= 640
    log.close()
    # 95 records: 9 full files of 10 and one of 5; kept: the current file and .1 to .3.
    assert [p.name for p in chain(path)] == ["cap.log.3", "cap.log.2", "cap.log.1", "cap.log"]
    assert [p.stat().st_size for p in chain(path)] == [640, 640, 640, 320]
    numbers = [int(line[42:48]) for line in chain_lines(path)]
    assert numbers == list(range(60, 95))  # the oldest were dropped, the rest in order
    assert not backup_path(path, 4).exists()


def test_rotation_is_checked_before_the_record_that_would_overflow(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    log = LogFile(path, max_bytes=200, backups=2)
    log.write(record(1))  # 64
    log.write(record(2))  # 128
    log.write(record(3, width=8))  # 72 more: exactly 200, still fits
    assert not backup_path(path, 1).exists()
    log.write(record(4))  # would make 264: rotate first
    assert backup_path(path, 1).stat().st_size == 200
    assert path.read_bytes() == record(4)
    # A record larger than the limit is never split: it gets a file of its own.
    big = record(5, width=500)
    log.write(big)
    assert path.read_bytes() == big
    assert backup_path(path, 1).read_bytes() == record(4)
    log.write(record(6))
    assert path.read_bytes() == record(6)
    assert backup_path(path, 1).read_bytes() == big
    log.close()


def test_no_backups_drops_the_full_file_and_fewer_backups_prune_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    log = LogFile(path, max_bytes=128, backups=4)
    for number in range(10):
        log.write(record(number))
    log.close()
    assert len(rotated_paths(path)) == 4
    log = LogFile(path, max_bytes=128, backups=0)
    log.write(record(10))  # the current file is full: dropped, and the old backups with it
    log.close()
    assert rotated_paths(path) == []
    assert path.read_bytes() == record(10)


def test_no_rotation_when_max_bytes_is_zero(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    log = LogFile(path, max_bytes=0)
    for number in range(50):
        log.write(record(number))
    log.close()
    assert rotated_paths(path) == []
    assert path.stat().st_size == 50 * 64


def test_a_writer_reopens_after_another_rotated(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    # A writer that checks only every 3 records (no byte or time trigger).
    slow = LogFile(path, max_bytes=10_000, check_bytes=10**9, check_writes=3, check_interval=1e9)
    other = LogFile(path, max_bytes=640)
    slow.write(record(1))
    for number in range(101, 110):  # 10 records with slow's: full
        other.write(record(number))
    other.write(record(110))  # rotates: the file slow holds is now cap.log.1
    assert backup_path(path, 1).exists()
    slow.write(record(2))  # not checked yet: lands, whole, in the rotated file
    slow.write(record(3))
    slow.write(record(4))  # three writes since the last check: reopens first
    slow.write(record(5))
    assert path.read_bytes() == record(110) + record(4) + record(5)
    assert backup_path(path, 1).read_bytes().endswith(record(2) + record(3))
    slow.close()
    other.close()


def test_a_writer_reopens_instead_of_rotating_again(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    never = {"check_bytes": 10**9, "check_writes": 10**9, "check_interval": 1e9}
    first = LogFile(path, max_bytes=640, **never)
    second = LogFile(path, max_bytes=640, **never)
    for number in range(10):
        first.write(record(number))
    second.write(record(10))  # the file is full: second rotates
    assert path.read_bytes() == record(10)
    # first still holds the full, rotated file: before rotating it checks, and only reopens.
    first.write(record(11))
    assert path.read_bytes() == record(10) + record(11)
    assert rotated_paths(path) == [backup_path(path, 1)]
    first.close()
    second.close()


def test_a_removed_file_is_recreated_at_the_next_check(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    log = LogFile(path, check_writes=1)
    log.write(record(1))
    path.unlink()
    log.write(record(2))
    assert path.read_bytes() == record(2)
    log.close()


def test_a_reader_holding_the_lock_delays_rotation_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "cap.log"
    log = LogFile(path, max_bytes=128, check_interval=0.3)
    with shared_rotation_lock(path):
        started = time.monotonic()
        for number in range(4):
            # Waits a little for the reader (then not again for check_interval), and writes
            # anyway.
            log.write(record(number))
        assert time.monotonic() - started < 4 * ROTATION_LOCK_WAIT + 0.7
        assert rotated_paths(path) == []
        assert path.stat().st_size == 4 * 64
    time.sleep(0.3)
    log.write(record(4))
    assert backup_path(path, 1).stat().st_size == 4 * 64
    assert path.read_bytes() == record(4)
    log.close()


def _writer(path: str, writer: int, count: int, barrier: object) -> None:
    log = LogFile(Path(path), max_bytes=8 * 1024, backups=1000, check_writes=50)
    barrier.wait()  # type: ignore[attr-defined]
    for seq in range(count):
        # Records of varied length (64 to 300 bytes), some larger than a pipe buffer's atom.
        width = (seq * 37 + writer * 11) % 240
        log.write_record("INFO", f"w{writer}[1]", f"seq={seq} " + "x" * width)
        if seq % 500 == 0:
            os.sched_yield()
    log.close()


def test_two_processes_appending_through_rotations_lose_and_split_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "logs" / "cap.log"
    count = 4000
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    processes = [
        context.Process(target=_writer, args=(str(path), writer, count, barrier))
        for writer in (1, 2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    files = chain(path)
    assert len(files) > 20  # many rotations, by both writers
    seen: dict[int, list[int]] = {1: [], 2: []}
    for line in chain_lines(path):
        match = LINE.fullmatch(line.decode())
        assert match, f"split or mangled record: {line!r}"
        writer, seq = int(match[1]), int(match[2])
        assert len(match[3]) == (seq * 37 + writer * 11) % 240
        seen[writer].append(seq)
    # Every record exactly once, and each writer's in the order written (files oldest first).
    assert seen == {1: list(range(count)), 2: list(range(count))}
    # Files stay near the limit: over it by what the other writer appended before it noticed a
    # rotation. (A median: a writer stalled for long under the lock, on a loaded machine, makes
    # the other give up waiting and write on into the full file.)
    sizes = sorted(member.stat().st_size for member in files[:-1])
    assert sizes[len(sizes) // 2] <= 8 * 1024 + 50 * 310
