"""The status file: atomic writes, a tolerant reader, and pid-reuse detection."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.forking import write_compile_cache_config
from supervisor.status import (
    BrokerStatus,
    CapsuleStatus,
    ProcState,
    StatusFile,
    SupervisorInfo,
    live_process,
    read_status,
    remove_status,
    status_path,
    write_status,
)


def sample_status() -> StatusFile:
    return StatusFile(
        supervisor=SupervisorInfo(
            pid=100,
            create_time=1700000000.5,
            started_at=1700000000.75,
            home="/home/op/.astrid",
            workspace="/srv/project",
            endpoint="ipc:///home/op/.astrid/run/broker.ipc",
        ),
        broker=BrokerStatus(
            pid=101,
            create_time=1700000000.6,
            state=ProcState.READY,
            restarts=1,
            started_at=1700000001.0,
            last_exit="killed by SIGKILL",
        ),
        capsules=[
            CapsuleStatus(
                name="counter",
                dir="/home/op/.astrid/capsules/counter",
                pid=102,
                create_time=1700000000.7,
                state=ProcState.READY,
                restarts=2,
                generation=3,
                started_at=1700000002.0,
                last_exit="exit code 1: trap: unreachable",
                has_run=True,
            ),
            CapsuleStatus(name="broken", dir="/x", state=ProcState.FATAL),
        ],
    )


def test_round_trip(tmp_path: Path) -> None:
    path = status_path(tmp_path)
    assert path == tmp_path / "supervisor.json"
    status = sample_status()
    write_status(path, status)
    assert read_status(path) == status


def test_schema_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    write_status(path, sample_status())
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert set(data["supervisor"]) == {
        "pid",
        "create_time",
        "started_at",
        "home",
        "workspace",
        "endpoint",
    }
    assert set(data["broker"]) == {
        "pid",
        "create_time",
        "state",
        "restarts",
        "started_at",
        "last_exit",
    }
    assert set(data["capsules"][0]) == {
        "name",
        "dir",
        "pid",
        "create_time",
        "state",
        "restarts",
        "generation",
        "started_at",
        "last_exit",
        "has_run",
    }
    assert data["capsules"][1]["pid"] is None
    assert data["capsules"][1]["state"] == "FATAL"


def test_write_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text("old content")
    os.chmod(path, 0o644)
    write_status(path, sample_status())
    assert read_status(path) == sample_status()
    # A new file replaced the old one (so its mode is the new file's), and no temporary is left.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["supervisor.json"]


def test_fresh_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    write_status(path, sample_status())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_remove_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    write_status(path, sample_status())
    remove_status(path)
    remove_status(path)
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe garbage",
        b"{not json",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"version": 2, "supervisor": {"pid": 1, "create_time": 1, "started_at": 1}}',
        b'{"version": 1}',
        b'{"version": 1, "supervisor": []}',
        b'{"version": 1, "supervisor": {"pid": "12", "create_time": 1.0, "started_at": 1.0}}',
        b'{"version": 1, "supervisor": {"pid": true, "create_time": 1.0, "started_at": 1.0}}',
        b'{"version": 1, "supervisor": {"pid": 12, "started_at": 1.0}}',
    ],
)
def test_garbage_reads_as_no_supervisor(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "supervisor.json"
    path.write_bytes(content)
    assert read_status(path) is None


def test_missing_file_reads_as_no_supervisor(tmp_path: Path) -> None:
    assert read_status(tmp_path / "nope.json") is None
    assert read_status(tmp_path) is None  # a directory


def test_malformed_entries_are_skipped_or_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    data = {
        "version": 1,
        "supervisor": {"pid": 5, "create_time": 10, "started_at": 11.5, "home": 3},
        "broker": "nonsense",
        "capsules": [
            "not an object",
            {"name": ""},
            {"dir": "/no/name"},
            {
                "name": "ok",
                "pid": "7",
                "state": "SLEEPING",
                "restarts": None,
                "generation": 2,
                "has_run": "yes",
                "create_time": "x",
            },
        ],
    }
    path.write_text(json.dumps(data))
    status = read_status(path)
    assert status is not None
    assert status.supervisor.pid == 5
    assert status.supervisor.create_time == 10.0
    assert status.supervisor.home == ""
    assert status.broker == BrokerStatus(state=ProcState.STOPPED)
    assert status.capsules == [
        CapsuleStatus(name="ok", dir="", state=ProcState.STOPPED, generation=2, has_run=False)
    ]
    assert status.capsule("ok") is not None
    assert status.capsule("missing") is None


# --------------------------------------------------------------------------------------------
# live_process


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_live_process_matches_pid_and_create_time(sleeper: subprocess.Popen[bytes]) -> None:
    create_time = psutil.Process(sleeper.pid).create_time()
    process = live_process(sleeper.pid, create_time)
    assert process is not None
    assert process.pid == sleeper.pid


def test_live_process_detects_pid_reuse(sleeper: subprocess.Popen[bytes]) -> None:
    create_time = psutil.Process(sleeper.pid).create_time()
    assert live_process(sleeper.pid, create_time - 5.0) is None
    assert live_process(sleeper.pid, create_time + 0.5) is None


def test_live_process_none_and_nonsense() -> None:
    assert live_process(None, 1.0) is None
    assert live_process(os.getpid(), None) is None
    assert live_process(0, 1.0) is None
    assert live_process(-1, 1.0) is None


def test_dead_and_zombie_processes_are_not_live() -> None:
    process = subprocess.Popen(["true"])
    create_time = psutil.Process(process.pid).create_time()
    deadline = time.monotonic() + 5
    while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert live_process(process.pid, create_time) is None  # a zombie, not yet reaped
    process.wait()
    assert live_process(process.pid, create_time) is None  # gone


# --------------------------------------------------------------------------------------------
# The wasmtime compile cache configuration (the real compile is an integration test)


def test_compile_cache_config_keeps_config_outside_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "wasmtime"
    config = write_compile_cache_config(root)
    assert config == root / "config.toml"
    parsed = tomllib.loads(config.read_text())
    assert parsed == {"cache": {"directory": str(root / "cache")}}
    assert (root / "cache").is_dir()
    # Idempotent, and atomic (no temporary file left).
    assert write_compile_cache_config(root) == config
    assert sorted(p.name for p in root.iterdir()) == ["cache", "config.toml"]


def test_compile_cache_config_escapes_odd_paths(tmp_path: Path) -> None:
    root = tmp_path / 'we"ird \\ päth' / "wasmtime"
    config = write_compile_cache_config(root)
    assert tomllib.loads(config.read_text())["cache"]["directory"] == str(root / "cache")
