"""The ``astrid`` and ``astrid-supervisor`` command lines: parsing, formatting, error paths.

``ps`` and ``kill`` run against a status file that lists real ``sleep`` processes; ``call`` runs
against a small in-test server speaking the session handshake and JSON-RPC.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from astrid_core import rpc
from astrid_core.dirs import AstridHome
from astrid_core.session import (
    MAX_HANDSHAKE_SIZE,
    MAX_SERVER_FRAME,
    HandshakeRequest,
    HandshakeResponse,
    SessionToken,
    recv_frame,
    send_frame,
)
from supervisor import astrid_cli, supervisor_cli
from supervisor.astrid_cli import (
    ProcessRow,
    format_cpu_time,
    format_rss,
    format_uptime,
    parse_signal,
    render_plain,
)
from supervisor.status import (
    BrokerStatus,
    CapsuleStatus,
    ProcState,
    StatusFile,
    SupervisorInfo,
    status_path,
    write_status,
)

# --------------------------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TERM", signal.SIGTERM),
        ("KILL", signal.SIGKILL),
        ("SIGKILL", signal.SIGKILL),
        ("kill", signal.SIGKILL),
        ("sigkill", signal.SIGKILL),
        ("9", signal.SIGKILL),
        ("15", signal.SIGTERM),
        ("hup", signal.SIGHUP),
        (" INT ", signal.SIGINT),
    ],
)
def test_parse_signal(text: str, expected: signal.Signals) -> None:
    assert parse_signal(text) is expected


@pytest.mark.parametrize("text", ["", "FOO", "SIGFOO", "999", "-9", "9.0", "SIG"])
def test_parse_signal_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid signal"):
        parse_signal(text)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "-"),
        (0, "0s"),
        (3.9, "3s"),
        (59, "59s"),
        (60, "1m00s"),
        (252, "4m12s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (2 * 3600 + 3 * 60 + 59, "2h03m"),
        (86400 + 4 * 3600 + 120, "1d04h"),
        (12 * 86400, "12d00h"),
        (-5, "0s"),
    ],
)
def test_format_uptime(seconds: float | None, expected: str) -> None:
    assert format_uptime(seconds) == expected


def test_format_rss() -> None:
    assert format_rss(None) == "-"
    assert format_rss(0) == "0.0M"
    assert format_rss(1024 * 1024) == "1.0M"
    assert format_rss(int(12.34 * 1024 * 1024)) == "12.3M"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(None, "-"), (0.0, "0:00.00"), (1.23, "0:01.23"), (61.5, "1:01.50"), (3725.004, "62:05.00")],
)
def test_format_cpu_time(seconds: float | None, expected: str) -> None:
    assert format_cpu_time(seconds) == expected


def test_render_plain_aligns_columns() -> None:
    rows = [
        ProcessRow("astrid-supervisor", "supervisor", 1234, "RUNNING", None, 65, 10 << 20, 1.5,
                   2.0, None, None),
        ProcessRow("c", "worker", None, "FATAL", 10, None, None, None, None,
                   "exit code 1: restarted 10 times within 60 s", 11),
    ]  # fmt: skip
    lines = render_plain(rows).splitlines()
    assert lines[0].split() == [
        "NAME", "ROLE", "PID", "STATE", "RESTARTS", "UPTIME", "RSS", "CPU", "%CPU", "LAST", "EXIT"
    ]  # fmt: skip
    assert lines[1].split() == [
        "astrid-supervisor", "supervisor", "1234", "RUNNING", "-", "1m05s", "10.0M", "0:01.50", "2.0"
    ]  # fmt: skip
    assert lines[2].endswith("exit code 1: restarted 10 times within 60 s")
    # Right-aligned numeric columns end at the same offset as their header.
    assert lines[0].index("PID") + 3 == lines[1].index("1234") + 4


# --------------------------------------------------------------------------------------------
# ps and kill against real processes


@dataclass
class Tree:
    home: AstridHome
    status: StatusFile
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def write(self) -> None:
        write_status(status_path(self.home.state_dir()), self.status)


def _sleep() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def _ct(process: subprocess.Popen[bytes]) -> float:
    return psutil.Process(process.pid).create_time()


@pytest.fixture
def home(tmp_path: Path) -> AstridHome:
    home = AstridHome.from_path(tmp_path / "home")
    home.ensure()
    home.state_dir().mkdir()
    return home


@pytest.fixture
def tree(home: AstridHome) -> Iterator[Tree]:
    processes = {name: _sleep() for name in ("supervisor", "broker", "good-a")}
    now = time.time()
    status = StatusFile(
        supervisor=SupervisorInfo(
            pid=processes["supervisor"].pid,
            create_time=_ct(processes["supervisor"]),
            started_at=now - 3,
            home=str(home.root()),
            workspace="/srv/ws",
            endpoint="ipc:///x",
        ),
        broker=BrokerStatus(
            pid=processes["broker"].pid,
            create_time=_ct(processes["broker"]),
            state=ProcState.READY,
            started_at=now - 2,
        ),
        capsules=[
            CapsuleStatus(
                name="good-a",
                dir="/caps/good-a",
                pid=processes["good-a"].pid,
                create_time=_ct(processes["good-a"]),
                state=ProcState.READY,
                restarts=1,
                generation=2,
                started_at=now - 1,
                last_exit="killed by SIGKILL",
            ),
            CapsuleStatus(
                name="waiting",
                dir="/caps/waiting",
                state=ProcState.BACKOFF,
                restarts=3,
                generation=4,
                last_exit="exit code 1: trap: boom",
            ),
        ],
    )
    result = Tree(home, status, processes)
    result.write()
    yield result
    for process in processes.values():
        process.kill()
        process.wait()


def run_cli(home: AstridHome, *args: str) -> int:
    return astrid_cli.main(["--home", str(home.root()), *args])


def test_ps_json_lists_every_process(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tree.home, "ps", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["running"] is True
    assert document["home"] == str(tree.home.root())
    assert document["workspace"] == "/srv/ws"
    rows = {row["name"]: row for row in document["processes"]}
    assert list(rows) == ["astrid-supervisor", "broker", "good-a", "waiting"]
    assert [row["role"] for row in rows.values()] == ["supervisor", "broker", "worker", "worker"]
    for key in ("astrid-supervisor", "broker", "good-a"):
        row = rows[key]
        assert row["pid"] == tree.processes[key.removeprefix("astrid-")].pid
        assert row["rss_bytes"] > 0
        assert row["cpu_s"] >= 0
        assert row["cpu_percent"] >= 0
        assert row["uptime_s"] >= 0
    assert rows["good-a"]["uptime_s"] == pytest.approx(1, abs=0.5)
    assert rows["good-a"] | {"uptime_s": 0, "rss_bytes": 0, "cpu_s": 0, "cpu_percent": 0} == {
        "name": "good-a",
        "role": "worker",
        "pid": tree.processes["good-a"].pid,
        "state": "READY",
        "restarts": 1,
        "uptime_s": 0,
        "rss_bytes": 0,
        "cpu_s": 0,
        "cpu_percent": 0,
        "last_exit": "killed by SIGKILL",
        "generation": 2,
    }
    waiting = rows["waiting"]
    assert (waiting["pid"], waiting["rss_bytes"], waiting["uptime_s"]) == (None, None, None)
    assert waiting["state"] == "BACKOFF"
    assert waiting["last_exit"] == "exit code 1: trap: boom"


def test_ps_plain_table(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tree.home, "ps") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NAME")
    assert [line.split()[0] for line in lines[1:]] == [
        "astrid-supervisor",
        "broker",
        "good-a",
        "waiting",
    ]
    assert "exit code 1: trap: boom" in lines[-1]


def test_ps_hides_a_reused_pid(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    capsule = tree.status.capsules[0]
    assert capsule.create_time is not None
    tree.status.capsules[0] = replace(capsule, create_time=capsule.create_time - 100)
    tree.write()
    assert run_cli(tree.home, "ps", "--json") == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["processes"]}
    assert rows["good-a"]["pid"] is None
    assert rows["good-a"]["rss_bytes"] is None


def test_ps_works_while_the_broker_is_down(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    tree.processes["broker"].kill()
    tree.processes["broker"].wait()
    assert run_cli(tree.home, "ps", "--json") == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["processes"]}
    assert rows["broker"]["pid"] is None
    assert rows["good-a"]["pid"] == tree.processes["good-a"].pid


def test_ps_is_fast_with_200_capsules(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    worker = tree.status.capsules[0]
    tree.status.capsules[:] = [
        CapsuleStatus(
            name=f"capsule-{i}",
            dir=f"/caps/{i}",
            pid=worker.pid,
            create_time=worker.create_time,
            state=ProcState.READY,
            started_at=worker.started_at,
        )
        for i in range(200)
    ]
    tree.write()
    started = time.perf_counter()
    assert run_cli(tree.home, "ps") == 0
    elapsed = time.perf_counter() - started
    assert len(capsys.readouterr().out.splitlines()) == 203
    assert elapsed < 0.5


def test_ps_without_supervisor(home: AstridHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(home, "ps") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"astrid: astrid-supervisor is not running (home: {home.root()})"
    )
    assert run_cli(home, "ps", "--json") == 1
    assert json.loads(capsys.readouterr().out) == {"running": False, "home": str(home.root())}


def test_ps_with_a_dead_supervisor(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    tree.processes["supervisor"].kill()
    tree.processes["supervisor"].wait()
    assert run_cli(tree.home, "ps") == 1
    assert "astrid-supervisor is not running" in capsys.readouterr().err


def test_ps_with_a_garbage_status_file(
    home: AstridHome, capsys: pytest.CaptureFixture[str]
) -> None:
    status_path(home.state_dir()).write_bytes(b"\x00garbage{")
    assert run_cli(home, "ps") == 1
    assert "astrid-supervisor is not running" in capsys.readouterr().err


def test_home_after_the_command(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert astrid_cli.main(["ps", "--json", "--home", str(tree.home.root())]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is True


def test_home_from_the_environment(
    tree: Tree, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", str(tree.home.root()))
    assert astrid_cli.main(["ps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is True


def test_bad_home_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", "relative/home")
    assert astrid_cli.main(["ps"]) == 1
    assert "ASTRID_HOME must be an absolute path" in capsys.readouterr().err


@pytest.mark.parametrize("pid", [os.getpid(), 1])
def test_kill_refuses_a_pid_outside_the_tree(
    tree: Tree, capsys: pytest.CaptureFixture[str], pid: int
) -> None:
    assert run_cli(tree.home, "kill", str(pid), "--signal", "KILL") == 1
    assert capsys.readouterr().err.strip() == (
        f"astrid: refusing to signal pid {pid}: it is not part of the astrid tree (see `astrid ps`)"
    )


def test_kill_refuses_a_listed_pid_with_another_create_time(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    capsule = tree.status.capsules[0]
    tree.status.capsules[0] = replace(capsule, create_time=1.0)
    tree.write()
    assert run_cli(tree.home, "kill", str(capsule.pid)) == 1
    assert "refusing to signal pid" in capsys.readouterr().err
    assert tree.processes["good-a"].poll() is None


def test_kill_a_worker_by_name(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    worker = tree.processes["good-a"]
    assert run_cli(tree.home, "kill", "good-a", "--signal", "KILL") == 0
    assert capsys.readouterr().out.strip() == f"sent SIGKILL to worker good-a (pid {worker.pid})"
    assert worker.wait(timeout=5) == -signal.SIGKILL


@pytest.mark.parametrize(("name", "description"), [("broker", "broker"), ("supervisor", None)])
def test_kill_a_tree_member_by_pid(
    tree: Tree, capsys: pytest.CaptureFixture[str], name: str, description: str | None
) -> None:
    process = tree.processes[name]
    assert run_cli(tree.home, "kill", str(process.pid)) == 0
    label = description or "astrid-supervisor"
    assert capsys.readouterr().out.strip() == f"sent SIGTERM to {label} (pid {process.pid})"
    assert process.wait(timeout=5) == -signal.SIGTERM


def test_kill_by_worker_pid(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    worker = tree.processes["good-a"]
    assert run_cli(tree.home, "kill", str(worker.pid), "-s", "9") == 0
    assert f"sent SIGKILL to worker good-a (pid {worker.pid})" in capsys.readouterr().out
    assert worker.wait(timeout=5) == -signal.SIGKILL


def test_kill_unknown_capsule(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tree.home, "kill", "nope") == 1
    assert capsys.readouterr().err.strip() == (
        "astrid: no capsule named 'nope' (known: good-a, waiting)"
    )


def test_kill_capsule_without_worker(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tree.home, "kill", "waiting") == 1
    assert capsys.readouterr().err.strip() == (
        "astrid: capsule 'waiting' has no running worker (state BACKOFF)"
    )


def test_kill_bad_signal_is_a_usage_error(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tree.home, "kill", "good-a", "--signal", "NOPE")
    assert exit_info.value.code == 2
    assert "invalid signal: 'NOPE'" in capsys.readouterr().err
    assert tree.processes["good-a"].poll() is None


def test_kill_without_supervisor(home: AstridHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(home, "kill", "good-a") == 1
    assert "astrid-supervisor is not running" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# ps --tree


def _write_host_table(tree: Tree, entries: list[tuple[subprocess.Popen[bytes], str, str]]) -> None:
    processes = [
        {
            "pid": process.pid,
            "pgid": process.pid,
            "capsule": capsule,
            "command": command,
            "started_at": time.time(),
            "create_time": _ct(process),
        }
        for process, capsule, command in entries
    ]
    (tree.home.state_dir() / "processes.json").write_text(
        json.dumps({"version": 1, "processes": processes})
    )


@pytest.fixture
def hosts(tree: Tree) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {"own": _sleep(), "orphan": _sleep()}
    _write_host_table(
        tree, [(started["own"], "good-a", "sleep 60"), (started["orphan"], "gone", "sleep 61")]
    )
    yield started
    for process in started.values():
        process.kill()
        process.wait()


def test_ps_tree_plain(
    tree: Tree, hosts: dict[str, subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tree.home, "ps", "--tree") == 0
    lines = capsys.readouterr().out.splitlines()
    structure = [((len(line) - len(line.lstrip(" "))) // 2, line.split()[0]) for line in lines]
    assert structure == [
        (0, "astrid-supervisor"),
        (1, "broker"),
        (2, "sleep"),  # a host process of a capsule the status file does not know
        (1, "good-a"),
        (2, "sleep"),
        (1, "waiting"),
    ]
    supervisor, broker, orphan, good, own, waiting = (line.strip() for line in lines)
    pids = {name: process.pid for name, process in tree.processes.items()}
    assert supervisor.startswith(f"astrid-supervisor  RUNNING  pid {pids['supervisor']}  up ")
    assert broker.startswith(f"broker  READY  pid {pids['broker']}  up ")
    assert " MiB  cpu " in broker
    assert good.startswith(f"good-a  READY  pid {pids['good-a']}  up ")
    assert good.endswith("restarts 1  last exit: killed by SIGKILL")
    assert own.startswith(f"sleep 60  RUNNING  pid {hosts['own'].pid}  up ")
    assert orphan.startswith(f"sleep 61  RUNNING  pid {hosts['orphan'].pid}  up ")
    assert waiting == "waiting  BACKOFF  restarts 3  last exit: exit code 1: trap: boom"


def test_ps_tree_on_a_terminal_draws_with_rich(
    tree: Tree,
    hosts: dict[str, subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli(tree.home, "ps", "--tree") == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out  # styled
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    assert lines[0].startswith("astrid-supervisor  RUNNING")
    assert any(line.startswith("├── broker  READY") for line in lines)
    assert any(line.startswith("└── waiting  BACKOFF") for line in lines)
    assert any("── sleep 60  RUNNING" in line and line.startswith("│") for line in lines)


def test_ps_tree_and_json_exclude_each_other(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tree.home, "ps", "--tree", "--json")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_ps_tree_without_supervisor(home: AstridHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(home, "ps", "--tree") == 1
    assert "astrid-supervisor is not running" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# restart, stop, start (the real thing: tests/integration/test_supervisor_control.py)


@pytest.mark.parametrize("command", ["restart", "stop", "start"])
def test_control_commands_without_supervisor(
    home: AstridHome, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert run_cli(home, command, "good-a") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"astrid: astrid-supervisor is not running (home: {home.root()})\n"


def test_control_command_with_a_stale_socket(
    home: AstridHome, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = home.run_dir()
    run_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run_dir / "supervisor.sock"))
    stale.close()  # the file stays, nobody listens: a supervisor killed with SIGKILL
    assert run_cli(home, "restart", "good-a") == 1
    assert "astrid-supervisor is not running" in capsys.readouterr().err


def test_control_command_needs_a_capsule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        astrid_cli.main(["restart"])
    assert exit_info.value.code == 2
    assert "CAPSULE" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# call


Handler = Callable[[rpc.Request], Iterable[bytes]]


@dataclass
class FakeBroker:
    """Serves one connection on ``sessions/system.sock``: handshake, then one request."""

    home: AstridHome
    handler: Handler
    token: SessionToken = field(default_factory=SessionToken.generate)
    requests: list[rpc.Request] = field(default_factory=list)
    client_versions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token.write_to_file(self.home.token_path())
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.home.socket_path()))
        self.server.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.server.accept()
        with connection:
            request = HandshakeRequest.from_json(recv_frame(connection, MAX_HANDSHAKE_SIZE))
            self.client_versions.append(request.client_version)
            if request.token != self.token.to_hex():
                send_frame(connection, HandshakeResponse.error("bad token").to_json().encode())
                return
            send_frame(connection, HandshakeResponse.ok().to_json().encode())
            rpc_request = rpc.decode_request(recv_frame(connection, MAX_SERVER_FRAME))
            self.requests.append(rpc_request)
            for payload in self.handler(rpc_request):
                send_frame(connection, payload)
            time.sleep(2)  # keep the connection open (a silent handler means "no answer")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def broker(home: AstridHome) -> Iterator[Callable[[Handler], FakeBroker]]:
    started: list[FakeBroker] = []

    def start(handler: Handler) -> FakeBroker:
        fake = FakeBroker(home, handler)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


def answer(result: Any) -> Handler:
    return lambda request: [rpc.encode_result(request.id, result)]


def test_call_prints_the_output(
    home: AstridHome, broker: Callable[[Handler], FakeBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = broker(answer({"output": '{"content":"Hello, Ann!"}'}))
    assert run_cli(home, "call", "hello-tool", "greet", '{"name": "Ann"}') == 0
    assert capsys.readouterr().out == '{"content":"Hello, Ann!"}\n'
    (request,) = fake.requests
    assert request.method == rpc.Method.TOOL_CALL
    assert request.id == 1
    assert request.params == {
        "capsule": "hello-tool",
        "tool": "greet",
        "arguments": {"name": "Ann"},
    }
    assert fake.client_versions == ["astrid-cli/0.1.0"]


def test_call_default_arguments_and_trailing_newline(
    home: AstridHome, broker: Callable[[Handler], FakeBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = broker(answer({"output": "line\n"}))
    assert run_cli(home, "call", "c", "t") == 0
    assert capsys.readouterr().out == "line\n"
    assert fake.requests[0].params["arguments"] == {}


def test_call_skips_notifications(
    home: AstridHome, broker: Callable[[Handler], FakeBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(request: rpc.Request) -> list[bytes]:
        return [
            rpc.encode_notification("bus.event", {"topic": "x"}),
            rpc.encode_result(999, {"output": "not mine"}),
            rpc.encode_result(request.id, {"output": "mine"}),
        ]

    broker(handler)
    assert run_cli(home, "call", "c", "t") == 0
    assert capsys.readouterr().out == "mine\n"


def test_call_reports_a_trap(
    home: AstridHome, broker: Callable[[Handler], FakeBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    message = "astrid_tool_call failed: unreachable executed"
    broker(lambda request: [rpc.encode_error(request.id, rpc.ErrorCode.TRAP, message)])
    assert run_cli(home, "call", "c", "t", "[1, 2]") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"astrid: {message}"


def test_call_times_out(
    home: AstridHome, broker: Callable[[Handler], FakeBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    broker(lambda request: [])
    started = time.monotonic()
    assert run_cli(home, "call", "c", "t", "--timeout", "0.3") == 1
    assert time.monotonic() - started < 1.5
    assert capsys.readouterr().err.strip() == "astrid: no answer from the broker within 0.3 s"


def test_call_with_a_rejected_token(
    home: AstridHome, broker: Callable[[Handler], FakeBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = broker(answer({"output": "never"}))
    SessionToken.generate().write_to_file(home.token_path())  # the broker restarted meanwhile
    assert fake.token.to_hex() != SessionToken.read_from_file(home.token_path()).to_hex()
    assert run_cli(home, "call", "c", "t") == 1
    assert "the broker refused the connection: bad token" in capsys.readouterr().err


def test_call_bad_json_is_a_usage_error(
    home: AstridHome, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(home, "call", "c", "t", "{bad")
    assert exit_info.value.code == 2
    assert "invalid JSON arguments: " in capsys.readouterr().err


def test_call_without_broker(home: AstridHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(home, "call", "c", "t") == 1
    assert capsys.readouterr().err.strip() == (
        f"astrid: the astrid broker is not running: no socket at {home.socket_path()}"
    )


def test_call_with_a_stale_socket(home: AstridHome, capsys: pytest.CaptureFixture[str]) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home.socket_path()))
    stale.close()  # the file stays, nobody listens
    SessionToken.generate().write_to_file(home.token_path())
    assert run_cli(home, "call", "c", "t") == 1
    err = capsys.readouterr().err
    assert "the astrid broker is not running: nothing listens on" in err
    assert "Traceback" not in err


def test_call_without_token(home: AstridHome, capsys: pytest.CaptureFixture[str]) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(home.socket_path()))
    try:
        assert run_cli(home, "call", "c", "t") == 1
    finally:
        listener.close()
    assert "no session token at" in capsys.readouterr().err


def test_help_texts_have_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--help"],
        ["ps", "--help"],
        ["kill", "--help"],
        ["call", "--help"],
        ["restart", "--help"],
        ["stop", "--help"],
        ["start", "--help"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            astrid_cli.main(argv)
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# astrid-supervisor


def test_supervisor_socket_path_too_long(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / ("h" * 100)
    assert supervisor_cli.main(["up", "--home", str(home), "--workspace", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("astrid-supervisor: socket path too long: ")
    assert len(err.strip().splitlines()) == 1
    assert not home.exists()


def test_supervisor_bad_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", "not/absolute")
    assert supervisor_cli.main(["up", "--workspace", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "astrid-supervisor: cannot find the astrid home: ASTRID_HOME must be an absolute path"
    )


def test_supervisor_missing_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    assert supervisor_cli.main(["up", "--home", str(tmp_path), "--workspace", str(missing)]) == 1
    assert f"the workspace {missing} is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("grace", ["-1", "soon", "inf", "nan"])
def test_supervisor_bad_grace(grace: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        supervisor_cli.main(["up", "--grace", grace])
    assert exit_info.value.code == 2
    assert "--grace" in capsys.readouterr().err


def test_supervisor_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        supervisor_cli.main(["up", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--grace SECONDS" in out
    assert "examples:" in out


def test_supervisor_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["down", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            supervisor_cli.main(argv)
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        supervisor_cli.main(["up", "--help"])
    out = capsys.readouterr().out
    assert "--config PATH" in out
    assert "--detach" in out


def test_supervisor_status_not_running(
    home: AstridHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert supervisor_cli.main(["status", "--home", str(home.root())]) == 3
    assert capsys.readouterr().out == f"astrid-supervisor is not running (home: {home.root()})\n"
    assert supervisor_cli.main(["status", "--home", str(home.root()), "--json"]) == 3
    assert json.loads(capsys.readouterr().out) == {"running": False, "home": str(home.root())}


def test_supervisor_status_with_a_dead_supervisor(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    tree.processes["supervisor"].kill()
    tree.processes["supervisor"].wait()
    assert supervisor_cli.main(["status", "--home", str(tree.home.root())]) == 3
    assert "is not running" in capsys.readouterr().out


def test_supervisor_status_running(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tree.home.root())
    supervisor_pid = tree.processes["supervisor"].pid
    broker_pid = tree.processes["broker"].pid
    assert supervisor_cli.main(["status", "--home", root]) == 0
    first, *rest = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"astrid-supervisor is running \(pid {supervisor_pid}, up [345]s\)", first)
    assert rest == [
        f"  home:      {root}",
        "  workspace: /srv/ws",
        f"  broker:    READY, pid {broker_pid}, restarts 0",
        "  capsules:  2 (1 READY, 1 BACKOFF)",
    ]
    assert supervisor_cli.main(["status", "--home", root, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["uptime_s"] == pytest.approx(3, abs=1)
    assert document | {"uptime_s": 0, "started_at": 0} == {
        "running": True,
        "pid": supervisor_pid,
        "uptime_s": 0,
        "started_at": 0,
        "home": root,
        "workspace": "/srv/ws",
        "broker": {"state": "READY", "pid": broker_pid, "restarts": 0},
        "capsules": {"STARTING": 0, "READY": 1, "BACKOFF": 1, "FATAL": 0, "STOPPED": 0},
    }


def test_supervisor_status_bad_home(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", "relative")
    assert supervisor_cli.main(["status"]) == 4
    assert "cannot find the astrid home" in capsys.readouterr().err


def test_supervisor_down_when_not_running(
    home: AstridHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert supervisor_cli.main(["down", "--home", str(home.root())]) == 0
    assert capsys.readouterr().out == f"astrid-supervisor is not running (home: {home.root()})\n"


def test_supervisor_down_falls_back_to_sigterm(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """No control socket (a wedged or foreign supervisor): SIGTERM to the verified pid."""
    supervisor = tree.processes["supervisor"]
    assert supervisor_cli.main(["down", "--home", str(tree.home.root()), "--timeout", "5"]) == 0
    assert capsys.readouterr().out == f"astrid-supervisor stopped (pid {supervisor.pid})\n"
    assert supervisor.wait(timeout=5) == -signal.SIGTERM
    assert tree.processes["broker"].poll() is None  # only the supervisor was signalled


def test_supervisor_down_times_out(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline() == b"ready\n"
        sup = tree.status.supervisor
        tree.status = replace(
            tree.status, supervisor=replace(sup, pid=stubborn.pid, create_time=_ct(stubborn))
        )
        tree.write()
        started = time.monotonic()
        code = supervisor_cli.main(["down", "--home", str(tree.home.root()), "--timeout", "0.5"])
        assert code == 1
        assert 0.4 < time.monotonic() - started < 3
        assert capsys.readouterr().err == (
            f"astrid-supervisor: astrid-supervisor (pid {stubborn.pid}) did not stop within 0.5 s\n"
        )
        assert stubborn.poll() is None
    finally:
        stubborn.kill()
        stubborn.wait()
