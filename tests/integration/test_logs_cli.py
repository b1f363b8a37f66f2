"""``astrid logs`` through the installed command: -n, rotated files, -f, --since, --previous.

Most tests write the log files themselves (through :class:`LogFile`, as the broker and the
supervisor do); the last one runs the real supervisor with the example ``counter`` capsule, kills
its worker and reads the crashed generation's last records with ``--previous``.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from astrid_core.logfile import LogFile, format_record, rotated_paths, utc_timestamp
from supervisor.status import (
    BrokerStatus,
    CapsuleStatus,
    StatusFile,
    SupervisorInfo,
    status_path,
    write_status,
)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def astrid(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "astrid"), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write(log: LogFile, generation: int, message: str, when: float, name: str = "cap") -> None:
    log.write(format_record("INFO", f"{name}[{generation}]", message, when=when))


def messages(output: str) -> list[str]:
    """``<capsule>[<generation>] <message>`` of each line."""
    return [line.split(None, 2)[2] for line in output.splitlines()]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / "logs").mkdir(parents=True)
    return tmp_path / "home"


# --------------------------------------------------------------------------------------------
# Reading


def test_last_n_records(home: Path) -> None:
    log = LogFile(home / "logs" / "cap.log")
    for number in range(150):
        write(log, 1, f"record {number}", T0 + number)
    log.close()

    result = astrid(home, "logs", "cap")
    assert result.returncode == 0, result.stderr
    assert messages(result.stdout) == [f"cap[1] record {n}" for n in range(50, 150)]
    assert result.stdout.splitlines()[0].startswith(utc_timestamp(T0 + 50) + " INFO   cap[1] ")

    result = astrid(home, "logs", "cap", "-n", "3")
    assert messages(result.stdout) == [f"cap[1] record {n}" for n in (147, 148, 149)]
    result = astrid(home, "logs", "--home", str(home), "cap", "--lines", "0")
    assert len(result.stdout.splitlines()) == 150
    result = astrid(home, "logs", "cap", "-n", "1000")
    assert len(result.stdout.splitlines()) == 150


def test_reads_across_rotated_files_in_order(home: Path) -> None:
    path = home / "logs" / "cap.log"
    log = LogFile(path, max_bytes=1000, backups=40)
    for number in range(300):
        write(log, 1 + number // 100, f"record {number} " + "x" * (number % 40), T0 + number)
    log.close()
    assert len(rotated_paths(path)) >= 10

    result = astrid(home, "logs", "cap", "-n", "0")
    assert result.returncode == 0, result.stderr
    numbers = [int(m.split()[2]) for m in messages(result.stdout)]
    assert numbers == list(range(300))
    result = astrid(home, "logs", "cap", "-n", "120")
    assert [int(m.split()[2]) for m in messages(result.stdout)] == list(range(180, 300))

    # Only rotated files left (the current one removed): still readable.
    path.unlink()
    result = astrid(home, "logs", "cap", "-n", "2")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_broker_and_supervisor_logs(home: Path) -> None:
    broker = LogFile(home / "logs" / "broker.log")
    write(broker, 1, "broker ready", T0, name="broker")
    broker.close()
    supervisor = LogFile(home / "logs" / "supervisor.log")
    supervisor.write(f"{utc_timestamp(T0)} INFO astrid-supervisor starting (pid 1)\n".encode())
    supervisor.write(
        f"{utc_timestamp(T0 + 1)} ERROR it broke\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\nValueError: boom\n'.encode()
    )
    supervisor.write(f"{utc_timestamp(T0 + 2)} INFO after\n".encode())
    supervisor.close()

    result = astrid(home, "logs", "broker")
    assert result.returncode == 0, result.stderr
    assert messages(result.stdout) == ["broker[1] broker ready"]
    # A traceback stays with its record: -n counts records.
    result = astrid(home, "logs", "supervisor", "-n", "2")
    assert result.stdout.splitlines()[1:] == [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: boom",
        f"{utc_timestamp(T0 + 2)} INFO after",
    ]


def test_since(home: Path) -> None:
    log = LogFile(home / "logs" / "cap.log")
    now = time.time()
    for number in range(10):
        write(log, 1, f"record {number}", T0 + number * 60)
    write(log, 1, "recent", now - 30)
    log.close()

    result = astrid(home, "logs", "cap", "--since", utc_timestamp(T0 + 7 * 60))
    assert messages(result.stdout) == [*(f"cap[1] record {n}" for n in (7, 8, 9)), "cap[1] recent"]
    offset = utc_timestamp(T0 + 8 * 60 + 30).replace("Z", "+00:00")
    result = astrid(home, "logs", "cap", "--since", offset, "-n", "1")
    assert messages(result.stdout) == ["cap[1] recent"]
    result = astrid(home, "logs", "cap", "--since", "5m")
    assert messages(result.stdout) == ["cap[1] recent"]
    result = astrid(home, "logs", "cap", "--since", "1d", "-n", "0")
    assert messages(result.stdout) == ["cap[1] recent"]


def test_errors_are_one_line(home: Path) -> None:
    LogFile(home / "logs" / "cap.log").close()
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("nope",), 1, "astrid: no log for 'nope' in "),
        (("../cap",), 1, "invalid capsule name"),
        (("cap", "-n", "-1"), 2, "must be 0 (all) or more"),
        (("cap", "-n", "x"), 2, "not a whole number"),
        (("cap", "--since", "yesterday"), 2, "invalid time"),
        (("cap", "--previous", "-f"), 2, "--previous cannot be combined with -f"),
        (("cap", "--previous"), 1, "'cap' has no previous generation"),
    ]
    for args, code, text in cases:
        result = astrid(home, "logs", *args)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    (home / "logs" / "cap.log").unlink()
    result = astrid(home, "logs", "cap")
    assert result.returncode == 1
    assert "no log for 'cap'" in result.stderr
    assert "(logs: " not in result.stderr
    LogFile(home / "logs" / "supervisor.log").close()
    result = astrid(home, "logs", "supervisor", "--previous")
    assert result.returncode == 1
    assert "supervisor.log has no generations" in result.stderr
    result = astrid(home.parent / "missing-home", "logs", "cap")
    assert result.returncode == 1
    assert "no log for 'cap'" in result.stderr


# --------------------------------------------------------------------------------------------
# -f


class Output:
    """The lines a background process prints, collected by a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def take(self, count: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        taken: list[str] = []
        while len(taken) < count:
            try:
                taken.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(taken)} of {count} lines: {taken}") from None
        return taken

    def quiet(self, seconds: float) -> bool:
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected line: {line}")


def test_follow_picks_up_new_records_and_rotations(home: Path) -> None:
    path = home / "logs" / "cap.log"
    broker = LogFile(path, max_bytes=1200, backups=50)  # two writers, as broker and supervisor
    supervisor = LogFile(path, max_bytes=1200, backups=50)
    for number in range(5):
        write(broker, 1, f"record {number}", T0)
    process = subprocess.Popen(
        [str(BIN / "astrid"), "--home", str(home), "logs", "cap", "-f", "-n", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    output = Output(process.stdout)
    try:
        assert messages("\n".join(output.take(2))) == ["cap[1] record 3", "cap[1] record 4"]
        # A burst: several rotations between two looks of the follower.
        for number in range(5, 80):
            write(broker if number % 2 else supervisor, 1, f"record {number}", T0)
        assert len(rotated_paths(path)) >= 3
        got = messages("\n".join(output.take(75)))
        assert got == [f"cap[1] record {n}" for n in range(5, 80)]
        # One record at a time, across a rotation.
        rotations = len(rotated_paths(path))
        number = 80
        while len(rotated_paths(path)) < rotations + 2:
            write(supervisor, 2, f"record {number} " + "y" * 300, T0)
            assert messages(output.take(1)[0]) == [f"cap[2] record {number} " + "y" * 300]
            number += 1
        assert output.quiet(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        broker.close()
        supervisor.close()


def test_follow_waits_for_a_file_that_only_has_rotated_files(home: Path) -> None:
    path = home / "logs" / "cap.log"
    log = LogFile(path, max_bytes=150)  # 48-byte records: 3 a file
    for number in range(4):
        write(log, 1, f"record {number}", T0)
    log.close()
    path.unlink()
    assert len(rotated_paths(path)) == 1
    process = subprocess.Popen(
        [str(BIN / "astrid"), "--home", str(home), "logs", "cap", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    try:
        assert messages(output.take(1)[0]) == ["cap[1] record 2"]
        log = LogFile(path, max_bytes=200)
        write(log, 1, "back", T0)
        log.close()
        assert messages(output.take(1)[0]) == ["cap[1] back"]
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------------------------
# --previous from the files


def _two_runs(home: Path, with_supervisor_log: bool) -> None:
    """Run A: generations 1-3 of cap; run B (an hour later): generations 1 and 2."""
    if with_supervisor_log:
        supervisor = LogFile(home / "logs" / "supervisor.log")
        for start in (T0, T0 + 3600):
            supervisor.write(
                f"{utc_timestamp(start)} INFO astrid-supervisor starting (pid 7, home x)\n".encode()
            )
            supervisor.write(f"{utc_timestamp(start + 1)} INFO cap[1] started (pid 8)\n".encode())
        supervisor.close()
    log = LogFile(home / "logs" / "cap.log", max_bytes=600)  # a few rotations on the way
    for generation in (1, 2, 3):
        for number in range(3):
            write(log, generation, f"A gen {generation} line {number}", T0 + 10 * generation)
    for generation in (1, 2):
        for number in range(3):
            write(log, generation, f"B gen {generation} line {number}", T0 + 3600 + generation)
        if generation == 1:
            log.write(format_record("STDERR", "cap[1]", "B gen 1 stderr", when=T0 + 3601.5))
    log.close()


@pytest.mark.parametrize("with_supervisor_log", [True, False])
def test_previous_from_the_logs_only(home: Path, with_supervisor_log: bool) -> None:
    _two_runs(home, with_supervisor_log)
    result = astrid(home, "logs", "cap", "--previous")
    assert result.returncode == 0, result.stderr
    assert messages(result.stdout) == [
        *(f"cap[1] B gen 1 line {n}" for n in range(3)),
        "cap[1] B gen 1 stderr",
    ]
    result = astrid(home, "logs", "cap", "--previous", "-n", "2")
    assert messages(result.stdout) == ["cap[1] B gen 1 line 2", "cap[1] B gen 1 stderr"]
    if with_supervisor_log:
        # A record of generation 1 written after generation 2's first: still generation 1's.
        log = LogFile(home / "logs" / "cap.log")
        write(log, 1, "B gen 1 late", T0 + 3603)
        log.close()
        result = astrid(home, "logs", "cap", "--previous", "-n", "2")
        assert messages(result.stdout) == ["cap[1] B gen 1 stderr", "cap[1] B gen 1 late"]


def test_previous_from_the_status_file(home: Path) -> None:
    _two_runs(home, with_supervisor_log=False)
    (home / "state").mkdir()

    def status(generation: int, broker_restarts: int = 0) -> None:
        write_status(
            status_path(home / "state"),
            StatusFile(
                SupervisorInfo(1, T0 + 3600, T0 + 3600, str(home), "/ws", "ipc://x"),
                BrokerStatus(restarts=broker_restarts, started_at=T0 + 3600),
                [CapsuleStatus(name="cap", dir="/c", generation=generation)],
            ),
        )

    # The status file says generation 3 (the third of run B has not logged yet): previous is 2.
    status(3)
    result = astrid(home, "logs", "cap", "--previous")
    assert result.returncode == 0, result.stderr
    assert messages(result.stdout) == [f"cap[2] B gen 2 line {n}" for n in range(3)]
    # Run A's generation 3 is not run B's.
    status(4)
    result = astrid(home, "logs", "cap", "--previous")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no records of cap[3]" in result.stderr
    status(1)
    result = astrid(home, "logs", "cap", "--previous")
    assert result.returncode == 1
    assert "the current one is cap[1]" in result.stderr
    # The broker's generation is its restarts + 1.
    broker = LogFile(home / "logs" / "broker.log")
    write(broker, 1, "first broker", T0 + 3601, name="broker")
    write(broker, 2, "second broker", T0 + 3700, name="broker")
    broker.close()
    status(1, broker_restarts=1)
    result = astrid(home, "logs", "broker", "--previous")
    assert messages(result.stdout) == ["broker[1] first broker"]


# --------------------------------------------------------------------------------------------
# --previous with the real supervisor


def wait_until(condition: Callable[[], Any], timeout: float = 30, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or condition}")


@pytest.fixture
def tree(tmp_path: Path, capsules: dict[str, Path]) -> Iterator[Path]:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    workspace.mkdir()
    shutil.copytree(
        capsules["counter"], home / "capsules" / "counter", ignore=shutil.ignore_patterns("*.c")
    )
    log = (tmp_path / "supervisor.out").open("wb")
    process = subprocess.Popen(
        [str(BIN / "astrid-supervisor"), "up", "--home", str(home), "--workspace", str(workspace)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield home
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


COUNT = re.compile(r" INFO   counter\[(\d+)\] count is now (\d+)$")


def counts(output: str) -> list[tuple[int, int]]:
    """(generation, count) of each "count is now N" line."""
    return [(int(m[1]), int(m[2])) for line in output.splitlines() if (m := COUNT.search(line))]


def test_previous_shows_the_crashed_generation(tree: Path) -> None:
    home = tree
    log = home / "logs" / "counter.log"
    wait_until(
        lambda: log.exists() and len(counts(log.read_text())) >= 2,
        message="two counts of generation 1",
    )
    result = astrid(home, "kill", "counter", "--signal", "KILL")
    assert result.returncode == 0, result.stderr
    wait_until(
        lambda: any(generation == 2 for generation, _ in counts(log.read_text())),
        message="generation 2 counting",
    )
    everything = counts(log.read_text())
    first = [count for generation, count in everything if generation == 1]

    result = astrid(home, "logs", "counter", "--previous")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines, "no records of generation 1"
    assert all(" counter[1] " in line for line in lines), lines
    assert [count for _, count in counts(result.stdout)] == first  # its last lines, all of them
    assert lines[-1].endswith(f"count is now {first[-1]}")

    result = astrid(home, "logs", "counter", "--previous", "-n", "1")
    assert counts(result.stdout) == [(1, first[-1])]
    # Without --previous: the current generation's records are last.
    result = astrid(home, "logs", "counter", "-n", "1")
    assert " counter[2] " in result.stdout
    result = astrid(home, "logs", "broker", "-n", "0")
    assert result.returncode == 0, result.stderr
    result = astrid(home, "logs", "supervisor", "-n", "0")
    assert "counter[1]" in result.stdout


def test_in_process_api(home: Path) -> None:
    import argparse

    from supervisor.logs import parse_since, read_records

    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("1.5h", now=10_000.0) == 10_000.0 - 5400
    assert parse_since(utc_timestamp(T0)) == T0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("10 parsecs")
    log = LogFile(home / "logs" / "cap.log")
    write(log, 3, "three", T0)
    log.write(b"a stray line\n")
    write(log, 4, "four", T0 + 1)
    log.close()
    records = read_records(home / "logs" / "cap.log", lines=0)
    # The stray line stays with the record before it.
    assert [(r.timestamp, r.generation) for r in records] == [
        (utc_timestamp(T0).encode(), 3),
        (utc_timestamp(T0 + 1).encode(), 4),
    ]
    assert records[0].data.endswith(b"three\na stray line\n")
