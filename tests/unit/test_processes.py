"""Host processes: ring buffers, the child environment, the broker's process table and its
handlers (real child processes, a real kernel and session, no worker), the supervisor's cleanup
after a broker death, and the ``astrid ps``/``kill`` view of the table.

The end-to-end behaviour through a worker and a guest is in
``tests/integration/test_process_syscalls.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from astrid_core.dirs import AstridHome
from astrid_core.manifest import parse_manifest
from astrid_core.wire import HelloInfo
from broker import processes as processes_module
from broker.bus import BusMessage
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.processes import (
    MAX_BUFFER_BYTES,
    SAFE_PATH,
    ProcessTable,
    RingBuffer,
    SpawnFailed,
    child_environment,
)
from broker.sessions import CapsuleSession, Invocation
from broker.syscalls import process as handlers
from supervisor.astrid_cli import (
    CliError,
    HostProcessEntry,
    collect_rows,
    read_host_processes,
    render_plain,
    resolve_kill_target,
)
from supervisor.status import BrokerStatus, CapsuleStatus, ProcState, StatusFile, SupervisorInfo
from supervisor.tree import kill_host_process_groups

T = TypeVar("T")

MANIFEST = """
[package]
name = "{name}"
version = "0.1.0"

[[component]]
file = "x.wasm"

[capabilities]
host_process = {grants}
"""

GRANTS = ["sh", "sleep", "env", "pwd", "echo", "./tool.sh", "true"]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(probe: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {probe}")


# --------------------------------------------------------------------------------------------
# Ring buffers


def test_ring_buffer_keeps_the_newest_bytes() -> None:
    ring = RingBuffer(10)
    ring.write(b"abcdef")
    ring.write(b"ghijkl")
    assert len(ring) == 10
    assert ring.discarded == 2
    assert ring.drain() == b"cdefghijkl"
    assert ring.drain() == b""
    ring.write(b"0123456789ABCDEF")  # one chunk larger than the buffer
    assert ring.drain() == b"6789ABCDEF"
    assert ring.discarded == 8


def test_ring_buffer_of_a_mebibyte() -> None:
    ring = RingBuffer(MAX_BUFFER_BYTES)
    for index in range(300):
        ring.write(bytes([index % 256]) * 4096)
    data = ring.drain()
    assert len(data) == MAX_BUFFER_BYTES
    assert data[-4096:] == bytes([299 % 256]) * 4096
    assert data[:4096] == bytes([(300 - 256) % 256]) * 4096


def test_ring_buffer_needs_a_capacity() -> None:
    with pytest.raises(ValueError):
        RingBuffer(0)


# --------------------------------------------------------------------------------------------
# The environment


def test_child_environment_is_an_allow_list_minus_the_blocklist() -> None:
    source = {
        "PATH": "/evil/bin",
        "HOME": "/root",
        "USER": "op",
        "SHELL": "/bin/zsh",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "LC_CTYPE": "C",
        "TMPDIR": "/evil/tmp",
        "TMP": "/evil/tmp",
        "TEMP": "/evil/tmp",
        "LD_PRELOAD": "/evil.so",
        "PYTHONPATH": "/evil",
        "NODE_OPTIONS": "--require /evil.js",
        "HTTP_PROXY": "http://evil",
        "ASTRID_SESSION_TOKEN": "secret",
        "ASTRID_HOME": "/home/op/.astrid",
        "DYLD_INSERT_LIBRARIES": "/evil.dylib",
        "npm_config_x": "1",
        "SSL_CERT_FILE": "/evil.pem",
        "EDITOR": "vim",
    }
    assert child_environment(source, Path("/srv/ws")) == {
        "PATH": SAFE_PATH,
        "HOME": "/srv/ws",
        "USER": "op",
        "SHELL": "/bin/zsh",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "LC_CTYPE": "C",
    }


def test_spawn_failed_reads_like_a_rust_io_error() -> None:
    assert SpawnFailed.from_os_error(FileNotFoundError(2, "No such file or directory")).text == (
        "No such file or directory (os error 2)"
    )
    assert SpawnFailed.from_os_error(OSError("odd")).text == "odd"


# --------------------------------------------------------------------------------------------
# The broker side: a real kernel and session, real children


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    home = AstridHome.from_path(tmp_path / "home")
    home.logs_dir().mkdir(parents=True, exist_ok=True)
    (tmp_path / "ws").mkdir()
    k = Kernel(home, tmp_path / "ws", KvStore(home.state_db_path()), b"k" * 32)
    yield k
    k.close()


def make_session(
    kernel: Kernel, name: str = "cap", grants: list[str] | None = None
) -> CapsuleSession:
    root = kernel.workspace.parent
    text = MANIFEST.format(name=name, grants=json.dumps(GRANTS if grants is None else grants))
    manifest = parse_manifest(text, root / name / "Capsule.toml")
    session = CapsuleSession(
        kernel=kernel,
        identity=name.encode(),
        info=HelloInfo(name, str(root / name), 1, 1, False),
        manifest=manifest,
        config={},
        gate=CapabilityGate(name, manifest.capabilities, kernel.workspace),
        log=kernel.capsule_log(name),
        global_root=None,
    )
    kernel.sessions.add(session)
    return session


def request(cmd: str, *args: str) -> bytes:
    return json.dumps({"cmd": cmd, "args": list(args)}).encode()


def table_file(kernel: Kernel) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((kernel.home.state_dir() / "processes.json").read_text())
    return data


def trap(call: Callable[[], Any]) -> str:
    with pytest.raises(SyscallError) as info:
        call()
    return info.value.text


def test_parse_errors_and_limits(kernel: Kernel) -> None:
    session = make_session(kernel)
    spawn = handlers.astrid_spawn_host
    assert trap(lambda: spawn(session, b"{")).startswith("failed to parse process request: ")
    assert "missing field `cmd`" in trap(lambda: spawn(session, b'{"args":[]}'))
    assert trap(lambda: spawn(session, b'{"cmd":"sh","args":[1]}')).startswith(
        "failed to parse process request: "
    )
    assert trap(lambda: spawn(session, b'{"cmd":"sh","args":null}')).startswith(
        "failed to parse process request: "
    )
    assert trap(lambda: spawn(session, b" " * (10 * 1024 * 1024 + 1))) == (
        "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
    )
    logs, kill = handlers.astrid_read_process_logs_host, handlers.astrid_kill_process_host
    assert trap(lambda: logs(session, b'{"id":-1}')).startswith(
        "failed to parse read logs request: "
    )
    assert trap(lambda: kill(session, b"[]")).startswith("failed to parse kill request: ")
    assert trap(lambda: logs(session, b" " * 257)) == (
        "memory allocation of 257 bytes exceeds maximum allowed limit of 256 bytes"
    )
    assert trap(lambda: logs(session, b'{"id":7}')) == "no background process with id 7"
    assert trap(lambda: kill(session, b'{"id":7}')) == "no background process with id 7"


def test_the_gate_and_spawn_failures(kernel: Kernel) -> None:
    session = make_session(kernel, grants=["sh", "nosuchprogram", "./tool.sh", "./dir"])
    (kernel.workspace / "tool.sh").write_text("#!/bin/sh\necho tool\n")  # not executable
    (kernel.workspace / "dir").mkdir()

    async def scenario() -> None:
        spawn = handlers.astrid_spawn_host
        assert trap(lambda: spawn(session, request("ls"))) == (
            "Security Check Failed: capsule 'cap' denied: host process 'ls' not declared in "
            "manifest"
        )
        assert trap(lambda: spawn(session, request("/bin/sh"))).startswith(
            "Security Check Failed: capsule 'cap' denied: host process '/bin/sh'"
        )
        assert trap(lambda: spawn(session, request("nosuchprogram"))) == (
            "failed to spawn command: No such file or directory (os error 2)"
        )
        assert trap(lambda: spawn(session, request("./tool.sh"))) == (
            "failed to spawn command: Permission denied (os error 13)"
        )
        assert trap(lambda: spawn(session, request("./dir"))) == (
            "failed to spawn command: Permission denied (os error 13)"
        )
        assert trap(lambda: spawn(session, request("sh", "-c", "a\0b"))) == (
            "failed to spawn command: nul byte found in provided data"
        )
        background = handlers.astrid_spawn_background_host
        assert trap(lambda: background(session, request("nosuchprogram"))) == (
            "failed to spawn background process: No such file or directory (os error 2)"
        )
        (kernel.workspace / "tool.sh").chmod(0o755)
        result = json.loads(await spawn(session, request("./tool.sh")))
        assert result == {"stdout": "tool\n", "stderr": "", "exit_code": 0}

    run(scenario())


def test_synchronous_spawn_and_its_table_entry(kernel: Kernel) -> None:
    session = make_session(kernel)

    async def scenario() -> None:
        pending = handlers.astrid_spawn_host(
            session, request("sh", "-c", 'echo "out $1"; echo err >&2; pwd; exit 7', "sh", 'é"\n')
        )
        [entry] = table_file(kernel)["processes"]
        assert entry["capsule"] == "cap"
        assert entry["command"].startswith("sh -c ")
        assert entry["pgid"] == entry["pid"]
        assert entry["create_time"] == psutil.Process(entry["pid"]).create_time()
        result = json.loads(await pending)
        assert result == {
            "stdout": f'out é"\n\n{os.path.realpath(kernel.workspace)}\n',
            "stderr": "err\n",
            "exit_code": 7,
        }
        assert table_file(kernel)["processes"] == []
        killed = json.loads(
            await handlers.astrid_spawn_host(session, request("sh", "-c", "kill -TERM $$"))
        )
        assert killed == {"stdout": "", "stderr": "", "exit_code": -1}

    run(scenario())


def test_a_session_that_ends_cancels_its_synchronous_spawn(kernel: Kernel) -> None:
    session = make_session(kernel)

    async def scenario() -> None:
        pending = asyncio.ensure_future(
            handlers.astrid_spawn_host(session, request("sh", "-c", "echo partial; sleep 300"))
        )
        await asyncio.sleep(0.3)
        [process] = list(kernel.service(ProcessTable))
        session.close_extensions()
        result = await asyncio.wait_for(pending, 5)
        assert json.loads(result) == {"stdout": "", "stderr": "process cancelled", "exit_code": -1}
        assert await process.wait_exit(5)
        assert not alive(process.pid)
        assert table_file(kernel)["processes"] == []

    run(scenario())


def test_the_group_does_not_outlive_its_leader(kernel: Kernel) -> None:
    session = make_session(kernel)

    async def scenario() -> None:
        result = json.loads(
            await handlers.astrid_spawn_host(
                session, request("sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!")
            )
        )
        grandchild = int(result["stdout"])
        await asyncio.sleep(0.1)
        assert not alive(grandchild)

    run(scenario())


def test_background_logs_exit_once_and_kill(kernel: Kernel) -> None:
    session = make_session(kernel)
    spawn = handlers.astrid_spawn_background_host
    logs, kill = handlers.astrid_read_process_logs_host, handlers.astrid_kill_process_host

    async def scenario() -> None:
        assert json.loads(spawn(session, request("sh", "-c", "echo a; echo b >&2; exit 4"))) == {
            "id": 1
        }
        [process] = list(kernel.service(ProcessTable))
        assert await process.wait_exit(5)
        assert json.loads(logs(session, b'{"id":1}')) == {
            "stdout": "a\n",
            "stderr": "b\n",
            "running": False,
            "exit_code": 4,
        }
        assert json.loads(logs(session, b'{"id":1}')) == {
            "stdout": "",
            "stderr": "",
            "running": False,
            "exit_code": None,
        }
        assert json.loads(await kill(session, b'{"id":1}')) == {
            "killed": True,
            "exit_code": None,
            "stdout": "",
            "stderr": "",
        }
        # Exited but not yet reported: kill reports the natural code.
        assert json.loads(spawn(session, request("sh", "-c", "echo bye; exit 5"))) == {"id": 2}
        [process] = list(kernel.service(ProcessTable))
        assert await process.wait_exit(5)
        assert json.loads(await kill(session, b'{"id":2}')) == {
            "killed": True,
            "exit_code": 5,
            "stdout": "bye\n",
            "stderr": "",
        }

    run(scenario())


def test_the_ring_buffer_of_a_background_process_keeps_the_newest_mebibyte(
    kernel: Kernel,
) -> None:
    # (Through a guest the result would not fit: the syscaller capsule caps its results at
    # 1 MiB, so the overflow is checked here, on the broker side, with a real child.)
    expected = subprocess.run(["seq", "1", "400000"], capture_output=True, check=True).stdout
    assert len(expected) > 2 * MAX_BUFFER_BYTES
    session = make_session(kernel, grants=["seq"])

    async def scenario() -> dict[str, Any]:
        handlers.astrid_spawn_background_host(session, request("seq", "1", "400000"))
        [process] = list(kernel.service(ProcessTable))
        assert await process.wait_exit(10)
        result: dict[str, Any] = json.loads(
            handlers.astrid_read_process_logs_host(session, b'{"id":1}')
        )
        assert process.stdout.discarded == len(expected) - MAX_BUFFER_BYTES
        return result

    result = run(scenario())
    assert result["running"] is False
    assert result["exit_code"] == 0
    assert result["stdout"].encode() == expected[-MAX_BUFFER_BYTES:]


def test_the_background_limit_is_checked_before_the_gate(kernel: Kernel) -> None:
    session = make_session(kernel)
    spawn = handlers.astrid_spawn_background_host

    async def scenario() -> None:
        for number in range(1, 9):
            assert json.loads(spawn(session, request("sleep", "300"))) == {"id": number}
        limit = "background process limit reached (max 8)"
        assert trap(lambda: spawn(session, request("sleep", "1"))) == limit
        assert trap(lambda: spawn(session, request("ls"))) == limit  # not granted: limit first
        assert trap(lambda: spawn(session, b"{")).startswith("failed to parse process request")
        assert len(table_file(kernel)["processes"]) == 8
        await handlers.astrid_kill_process_host(session, b'{"id":3}')
        assert json.loads(spawn(session, request("sleep", "300"))) == {"id": 9}
        pids = [process.pid for process in kernel.service(ProcessTable)]
        session.close_extensions()
        for process in list(kernel.service(ProcessTable)):
            assert await process.wait_exit(5)
        assert not any(alive(pid) for pid in pids)
        assert table_file(kernel)["processes"] == []

    run(scenario())


def test_cancellation_sigint_then_sigkill(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes_module, "SIGKILL_GRACE", 1.0)
    session = make_session(kernel)
    other = make_session(kernel, name="other")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        session.current = Invocation(
            "astrid_tool_call", b"", {"session_id": "s-1"}, loop.create_future()
        )
        stubborn = asyncio.ensure_future(
            handlers.astrid_spawn_host(session, request("sh", "-c", "trap '' INT; sleep 30"))
        )
        session.current = Invocation(
            "astrid_tool_call", b"", {"session_id": "s-2"}, loop.create_future()
        )
        spared = asyncio.ensure_future(handlers.astrid_spawn_host(session, request("sleep", "2")))
        other.current = None  # no caller: a null call id is cancelled by every request
        plain = asyncio.ensure_future(handlers.astrid_spawn_host(other, request("sleep", "30")))
        background = handlers.astrid_spawn_background_host(other, request("sleep", "30"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        kernel.bus.publish(
            BusMessage(
                "tool.v1.request.cancel",
                {"type": "tool_cancel_request", "call_ids": ["s-1"]},
                session.uuid,
            )
        )
        assert json.loads(await asyncio.wait_for(plain, 5))["exit_code"] == -1
        assert time.monotonic() - started < 0.9  # SIGINT ended it, not the SIGKILL
        assert json.loads(await asyncio.wait_for(stubborn, 5))["exit_code"] == -1
        assert time.monotonic() - started >= 1.0  # SIGKILL after the grace period
        assert json.loads(await asyncio.wait_for(spared, 5))["exit_code"] == 0
        # Background processes are not cancelled; an empty list cancels nothing.
        number = json.loads(background)["id"]
        status = json.loads(handlers.astrid_read_process_logs_host(other, b'{"id":%d}' % number))
        assert status["running"] is True
        kernel.bus.publish(
            BusMessage(
                "tool.v1.request.cancel",
                {"type": "tool_cancel_request", "call_ids": []},
                other.uuid,
            )
        )
        kernel.bus.publish(BusMessage("other.topic", {"type": "custom", "data": 1}, other.uuid))

    run(scenario())


def test_without_setpriv_the_command_runs_directly(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(processes_module, "SETPRIV", "/nonexistent/setpriv")
    session = make_session(kernel)

    async def scenario() -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            await handlers.astrid_spawn_host(session, request("echo", "ok"))
        )
        return result

    with caplog.at_level(logging.WARNING, logger="astrid.broker"):
        result = run(scenario())
        run(scenario())
    assert result["exit_code"] == 0
    warnings = [r for r in caplog.records if "setpriv is missing" in r.getMessage()]
    assert len(warnings) == 1


def test_setpriv_execs_the_command(kernel: Kernel) -> None:
    session = make_session(kernel)

    async def scenario() -> str:
        result = json.loads(
            await handlers.astrid_spawn_host(session, request("sh", "-c", "cat /proc/$$/stat"))
        )
        return str(result["stdout"])

    # setpriv execs the command: the pid is the shell's, its parent the broker (this process).
    fields = run(scenario()).rsplit(")", 1)[1].split()
    assert int(fields[1]) == os.getpid()  # ppid


def test_the_table_file_goes_away_with_the_broker(kernel: Kernel) -> None:
    session = make_session(kernel)

    async def scenario() -> int:
        handlers.astrid_spawn_background_host(session, request("sh", "-c", "sleep 300 & sleep 300"))
        await asyncio.sleep(0.2)
        [entry] = table_file(kernel)["processes"]
        assert table_file(kernel)["broker"]["pid"] == os.getpid()
        pid: int = entry["pid"]
        # At broker stop the router closes the sessions, then the kernel its services; the
        # table copes with processes whose session was not closed.
        kernel.service(ProcessTable).close()
        return pid

    pid = run(scenario())
    assert not (kernel.home.state_dir() / "processes.json").exists()
    assert not alive(pid)


# --------------------------------------------------------------------------------------------
# The supervisor's cleanup


def spawn_group(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], process_group=0)


def group_members(pgid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return members


def write_table(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "broker": {}, "processes": entries}))


def entry_of(popen: subprocess.Popen[bytes], **overrides: Any) -> dict[str, Any]:
    entry = {
        "pid": popen.pid,
        "pgid": popen.pid,
        "capsule": "cap",
        "command": "sh -c ...",
        "started_at": time.time(),
        "create_time": psutil.Process(popen.pid).create_time(),
    }
    entry.update(overrides)
    return entry


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for popen in started:
        for pid in group_members(popen.pid):
            os.kill(pid, signal.SIGKILL)
        popen.kill()
        popen.wait()


def test_supervisor_kills_listed_groups_live_leader_or_not(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    live = spawn_group("sleep 300 & sleep 300")
    orphaned = spawn_group("sleep 300 & sleep 300")
    stranger = spawn_group("sleep 300")
    groups += [live, orphaned, stranger]
    # sh, and its two sleeps
    wait_until(lambda: len(group_members(live.pid)) == 3 and len(group_members(orphaned.pid)) == 3)
    entries = [entry_of(live), entry_of(orphaned)]
    # Stale: the recorded leader is younger than everything in that group.
    entries.append(entry_of(stranger, create_time=psutil.Process(stranger.pid).create_time() + 60))
    entries.append(entry_of(stranger, pid=999_999_999, pgid=999_999_999))  # long gone
    # The parent-death signal killed the leader; its child lives on in the group.
    orphaned.kill()
    orphaned.wait()
    survivors = group_members(orphaned.pid)
    assert len(survivors) == 2
    table = tmp_path / "state" / "processes.json"
    write_table(table, entries)

    killed = kill_host_process_groups(tmp_path / "state")

    assert sorted(killed) == sorted([live.pid, orphaned.pid])
    wait_until(lambda: not group_members(live.pid) and not group_members(orphaned.pid))
    assert stranger.pid in group_members(stranger.pid)  # untouched
    assert not table.exists()
    assert kill_host_process_groups(tmp_path / "state") == []  # no file: nothing to do


def test_supervisor_ignores_a_malformed_table(tmp_path: Path) -> None:
    table = tmp_path / "state" / "processes.json"
    table.parent.mkdir()
    table.write_text("{not json")
    assert kill_host_process_groups(tmp_path / "state") == []
    assert not table.exists()


# --------------------------------------------------------------------------------------------
# astrid ps / kill


def test_read_host_processes_is_tolerant(tmp_path: Path) -> None:
    path = tmp_path / "processes.json"
    assert read_host_processes(path) == []
    path.write_text('{"version": 2, "processes": []}')
    assert read_host_processes(path) == []
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "processes": [
                    {"pid": 10, "pgid": 10, "capsule": "a", "command": "sleep 1",
                     "started_at": 5, "create_time": 4.5},
                    {"pid": "11", "pgid": 11, "capsule": "a", "command": "x"},
                    {"pid": 12, "pgid": 12, "capsule": None, "command": "x"},
                    {"pid": 13, "capsule": "b", "command": "y", "started_at": "later"},
                    "junk",
                ],
            }
        )
    )  # fmt: skip
    assert read_host_processes(path) == [
        HostProcessEntry(10, 10, "a", "sleep 1", 5.0, 4.5),
        HostProcessEntry(13, 13, "b", "y", None, None),
    ]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    popen = subprocess.Popen(["sleep", "300"], process_group=0)
    yield popen
    popen.kill()
    popen.wait()


def status_with(worker_pid: int) -> StatusFile:
    me = psutil.Process()
    return StatusFile(
        SupervisorInfo(me.pid, me.create_time(), time.time(), "/h", "/w", "ipc:///x"),
        BrokerStatus(),
        [
            CapsuleStatus("cap", "/caps/cap", worker_pid, me.create_time(), ProcState.READY),
            CapsuleStatus("idle", "/caps/idle", None, None, ProcState.STOPPED),
        ],
    )


def host_entry(popen: subprocess.Popen[bytes], capsule: str = "cap") -> HostProcessEntry:
    create_time = psutil.Process(popen.pid).create_time()
    return HostProcessEntry(
        popen.pid, popen.pid, capsule, "sleep 300", time.time() - 2, create_time
    )


def test_ps_lists_host_processes_under_their_capsule(sleeper: subprocess.Popen[bytes]) -> None:
    status = status_with(os.getpid())
    hosts = [
        host_entry(sleeper),
        HostProcessEntry(999_999_999, 999_999_999, "cap", "gone", None, 1.0),
        host_entry(sleeper, capsule="unknown"),
    ]
    rows = collect_rows(status, hosts=hosts)
    assert [(row.name, row.role) for row in rows] == [
        ("astrid-supervisor", "supervisor"),
        ("broker", "broker"),
        ("cap", "worker"),
        ("  \u21b3 sleep 300", "host"),
        ("idle", "worker"),
        ("  \u21b3 sleep 300", "host"),
    ]
    host = rows[3].to_json()
    assert host["pid"] == sleeper.pid
    assert host["capsule"] == "cap"
    assert host["command"] == "sleep 300"
    assert host["state"] == "RUNNING"
    assert host["uptime_s"] >= 1.5
    assert host["rss_bytes"] > 0
    assert "capsule" not in rows[2].to_json()  # worker rows keep their shape
    assert "\u21b3 sleep 300" in render_plain(rows)


def test_kill_resolves_host_pids_from_the_table(sleeper: subprocess.Popen[bytes]) -> None:
    status = status_with(os.getpid())
    entry = host_entry(sleeper)
    target = resolve_kill_target(status, str(sleeper.pid), [entry])
    assert target.pid == sleeper.pid
    assert target.description == "host process 'sleep 300' of capsule cap"
    with pytest.raises(CliError, match="not part of the astrid tree"):
        resolve_kill_target(status, str(sleeper.pid), [])
    stale = HostProcessEntry(
        sleeper.pid, sleeper.pid, "cap", "sleep 300", None, (entry.create_time or 0) - 50
    )
    with pytest.raises(CliError, match="not part of the astrid tree"):
        resolve_kill_target(status, str(sleeper.pid), [stale])
