"""Operator control: the control socket (in-process, then in a real supervisor), ``astrid
restart|stop|start`` against a supervisor with fake children, and ``astrid-supervisor up
--detach`` / ``status`` / ``down`` with the real broker and workers.

The fake children are those of ``tests/fake_children.py``; ``flaky-*`` capsules (see
:func:`worker`) crash until their directory holds a file named ``fixed``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest

from astrid_core.dirs import AstridHome
from astrid_core.launch import ExitCode, WorkerLaunch
from supervisor import control
from supervisor.control import ControlServer, Reply
from supervisor.status import read_status
from supervisor.tree import _Timers
from tests import fake_children
from tests.integration.test_supervisor_tree import (
    Tree,
    gone,
    state_of,
    wait_until,
    write_capsule,
)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ENTRY = f"{__name__}:worker"
PRELOAD = ["tests.fake_children", __name__]


def worker(launch: WorkerLaunch) -> NoReturn:
    """``flaky-*``: crash (exit 1) unless ``<capsule dir>/fixed`` exists, else like ``good-*``;
    everything else as in tests/fake_children.py."""
    if launch.capsule.startswith("flaky-"):
        if not (Path(launch.capsule_dir) / "fixed").exists():
            time.sleep(0.05)
            print(f"{launch.capsule} crashing", file=sys.stderr)
            sys.exit(ExitCode.TRAP)
        fake_children.worker(dataclasses.replace(launch, capsule=f"good-{launch.capsule}"))
    fake_children.worker(launch)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    home = tmp_path / "home"
    workspace = tmp_path / "ws"
    (home / "capsules").mkdir(parents=True)
    workspace.mkdir()
    result = Tree(tmp_path, home, workspace)
    yield result
    if result.process is not None and result.process.poll() is None:
        result.process.kill()
        result.process.wait()
    for pid in result.survivors():
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The control server alone, in this process


class Loop:
    """A selector and a timer heap, pumped by hand (the supervisor's loop in miniature)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers = _Timers()

    def pump(self, duration: float = 0.1) -> None:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            for key, _ in self.selector.select(0.01):
                key.data()
            self.timers.run_due(time.monotonic())


@pytest.fixture
def loop() -> Iterator[Loop]:
    result = Loop()
    yield result
    result.selector.close()


class Recorder:
    """A handler: ``echo`` answers at once, ``later`` keeps the reply for the test, ``boom``
    raises."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.pending: list[Reply] = []

    def __call__(self, request: dict[str, Any], reply: Reply) -> None:
        self.requests.append(request)
        if request["command"] == "later":
            self.pending.append(reply)
        elif request["command"] == "boom":
            raise RuntimeError("boom")
        else:
            reply({"ok": True, "echo": request})


@pytest.fixture
def server(tmp_path: Path, loop: Loop) -> Iterator[tuple[ControlServer, Recorder]]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    recorder = Recorder()
    result = ControlServer(
        run_dir / "supervisor.sock", loop.selector, recorder, call_later=loop.timers.call_later
    )
    result.open()
    yield result, recorder
    result.close()


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(str(path))
    return client


def read_lines(client: socket.socket, loop: Loop, count: int) -> list[dict[str, Any]]:
    buffer = b""
    deadline = time.monotonic() + 5
    while buffer.count(b"\n") < count:
        assert time.monotonic() < deadline, buffer
        loop.pump(0.02)
        client.settimeout(0.02)
        try:
            chunk = client.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        buffer += chunk
    return [json.loads(line) for line in buffer.splitlines()]


def at_eof(client: socket.socket, loop: Loop) -> bool:
    loop.pump(0.05)
    client.settimeout(1)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_control_socket_is_private(server: tuple[ControlServer, Recorder]) -> None:
    control_server, _ = server
    mode = control_server.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_control_socket_refuses_other_uids(
    server: tuple[ControlServer, Recorder], loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    control_server, recorder = server
    stranger = os.geteuid() + 1
    seen: list[int] = []

    def fake_peer_uid(sock: socket.socket) -> int:
        seen.append(sock.fileno())
        return stranger

    monkeypatch.setattr(control, "peer_uid", fake_peer_uid)
    client = connect(control_server.path)
    client.sendall(b'{"command": "status"}\n')
    answers = read_lines(client, loop, 1)
    assert answers == [
        {"ok": False, "error": f"permission denied: uid {stranger} may not control this supervisor"}
    ]
    assert at_eof(client, loop)
    assert seen
    assert recorder.requests == []  # never reached the supervisor
    assert control_server.connections == 0
    client.close()


def test_control_socket_drops_a_peer_it_cannot_identify(
    server: tuple[ControlServer, Recorder], loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    control_server, recorder = server

    def broken(sock: socket.socket) -> int:
        raise OSError("no credentials")

    monkeypatch.setattr(control, "peer_uid", broken)
    client = connect(control_server.path)
    client.sendall(b'{"command": "status"}\n')
    assert at_eof(client, loop)
    assert recorder.requests == []


def test_control_socket_serves_the_same_uid(
    server: tuple[ControlServer, Recorder], loop: Loop
) -> None:
    control_server, _ = server
    client = connect(control_server.path)
    client.sendall(b'{"command": "echo", "id": 1, "x": "\xc3\xa9"}\n')
    assert read_lines(client, loop, 1) == [
        {"ok": True, "echo": {"command": "echo", "id": 1, "x": "\u00e9"}, "id": 1}
    ]
    client.close()


def test_malformed_requests_get_an_error_and_the_connection_stays(
    server: tuple[ControlServer, Recorder], loop: Loop
) -> None:
    control_server, recorder = server
    client = connect(control_server.path)
    client.sendall(
        b"not json\n"
        b"[1, 2]\n"
        b'{"command": 5, "id": 7}\n'
        b"\xff\xfe\n"
        b"\n"
        b'{"command": "boom"}\n'
        b'{"command": "echo"}\n'
    )
    answers = read_lines(client, loop, 6)
    assert [answer["ok"] for answer in answers] == [False] * 5 + [True]
    assert answers[0]["error"].startswith("malformed request: Expecting value")
    assert answers[1]["error"] == "malformed request: not a JSON object"
    assert answers[2] == {"ok": False, "error": "malformed request: no string 'command'", "id": 7}
    assert answers[3]["error"].startswith("malformed request: ")
    assert answers[4]["error"] == "internal error: RuntimeError: boom"
    assert [request["command"] for request in recorder.requests] == ["boom", "echo"]
    client.close()


def test_requests_of_one_connection_are_answered_in_order(
    server: tuple[ControlServer, Recorder], loop: Loop
) -> None:
    control_server, recorder = server
    slow = connect(control_server.path)
    other = connect(control_server.path)
    slow.sendall(b'{"command": "later", "id": "a"}\n{"command": "echo", "id": "b"}\n')
    loop.pump(0.1)
    assert [request["id"] for request in recorder.requests] == ["a"]  # "b" waits its turn
    other.sendall(b'{"command": "echo", "id": "c"}\n')  # another connection is not held up
    assert read_lines(other, loop, 1)[0]["id"] == "c"
    (reply,) = recorder.pending
    reply({"ok": True, "late": True})
    reply({"ok": True, "twice": True})  # a second answer to one request is ignored
    answers = read_lines(slow, loop, 2)
    assert answers == [
        {"ok": True, "late": True, "id": "a"},
        {"ok": True, "echo": {"command": "echo", "id": "b"}, "id": "b"},
    ]
    slow.close()
    other.close()


def test_an_answer_to_a_closed_connection_is_dropped(
    server: tuple[ControlServer, Recorder], loop: Loop
) -> None:
    control_server, recorder = server
    client = connect(control_server.path)
    client.sendall(b'{"command": "later"}\n')
    loop.pump(0.1)
    client.close()
    loop.pump(0.1)
    # At EOF the connection waits for its answer (a half-closed client may still read it) ...
    assert control_server.connections == 1
    recorder.pending[0]({"ok": True})  # ... which finds nobody: no error, and it is gone
    loop.pump(0.05)
    assert control_server.connections == 0
    again = connect(control_server.path)
    again.sendall(b'{"command": "echo"}\n')
    assert read_lines(again, loop, 1)[0]["ok"] is True
    again.close()


def test_a_request_too_long_closes_the_connection(
    server: tuple[ControlServer, Recorder], loop: Loop
) -> None:
    control_server, recorder = server
    client = connect(control_server.path)
    client.sendall(b"x" * (control.MAX_REQUEST_SIZE + 10))
    answers = read_lines(client, loop, 1)
    assert answers == [
        {"ok": False, "error": f"request longer than {control.MAX_REQUEST_SIZE} bytes"}
    ]
    assert at_eof(client, loop)
    assert recorder.requests == []


def test_too_many_connections_are_refused(
    server: tuple[ControlServer, Recorder], loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    control_server, _ = server
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 2)
    first, second = connect(control_server.path), connect(control_server.path)
    loop.pump(0.1)
    third = connect(control_server.path)
    assert read_lines(third, loop, 1) == [
        {"ok": False, "error": "too many control connections; try again later"}
    ]
    first.sendall(b'{"command": "echo"}\n')
    assert read_lines(first, loop, 1)[0]["ok"] is True
    for client in (first, second, third):
        client.close()


def test_idle_connections_are_closed(
    server: tuple[ControlServer, Recorder], loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    control_server, recorder = server
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.1)
    idle = connect(control_server.path)
    busy = connect(control_server.path)
    busy.sendall(b'{"command": "later"}\n')
    loop.pump(0.4)
    assert at_eof(idle, loop)
    assert control_server.connections == 1  # the one waiting for an answer stays
    recorder.pending[0]({"ok": True})
    assert read_lines(busy, loop, 1) == [{"ok": True}]
    idle.close()
    busy.close()


def test_close_unlinks_the_socket(server: tuple[ControlServer, Recorder], loop: Loop) -> None:
    control_server, _ = server
    client = connect(control_server.path)
    loop.pump(0.05)
    control_server.close()
    assert not control_server.path.exists()
    assert at_eof(client, loop)
    client.close()


# --------------------------------------------------------------------------------------------
# A real supervisor (fake children) driven by `astrid restart|stop|start`


def test_restart_stop_start_through_the_cli(tree: Tree) -> None:
    capsules = tree.home / "capsules"
    write_capsule(capsules, "good-a", '\n[dependencies]\nprovides = ["topic:demo.data"]\n')
    write_capsule(capsules, "good-b", '\n[dependencies]\nrequires = ["topic:demo.data"]\n')
    write_capsule(capsules, "fatal-a")
    tree.start()
    status = tree.wait_for(
        lambda s: (
            state_of(s, "good-a") == "READY"
            and state_of(s, "good-b") == "READY"
            and state_of(s, "fatal-a") == "FATAL"
        )
    )
    first = tree.capsule(status, "good-a")
    dependent = tree.capsule(status, "good-b")

    # restart: a new worker, READY when the command returns.
    result = tree.astrid("restart", "good-a")
    assert result.returncode == 0, result.stderr
    status = tree.status()
    assert status is not None
    second = tree.capsule(status, "good-a")
    assert result.stdout == f"restarted good-a: READY (pid {second.pid}, was {first.pid})\n"
    assert (second.state, second.restarts, second.generation) == ("READY", 1, 2)
    assert second.last_exit == "killed by SIGTERM: restarted by the operator"
    assert gone(first.pid, first.create_time)

    # stop: gone when the command returns, and it stays STOPPED; its dependent runs on.
    result = tree.astrid("stop", "good-a")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stopped good-a (killed by SIGTERM: stopped by the operator)\n"
    assert gone(second.pid, second.create_time)
    time.sleep(0.5)
    status = tree.status()
    assert status is not None
    stopped = tree.capsule(status, "good-a")
    assert (stopped.state, stopped.pid, stopped.restarts) == ("STOPPED", None, 1)
    still = tree.capsule(status, "good-b")
    assert (still.state, still.pid, still.restarts) == ("READY", dependent.pid, 0)
    rows = {row["name"]: row for row in json.loads(tree.astrid("ps", "--json").stdout)["processes"]}
    assert rows["good-a"]["state"] == "STOPPED"
    assert rows["good-a"]["last_exit"] == "killed by SIGTERM: stopped by the operator"
    result = tree.astrid("stop", "good-a")
    assert (result.returncode, result.stdout) == (
        0,
        "good-a was not running (STOPPED); it stays STOPPED\n",
    )

    # start: READY again; starting a running capsule changes nothing.
    result = tree.astrid("start", "good-a")
    assert result.returncode == 0, result.stderr
    status = tree.status()
    assert status is not None
    third = tree.capsule(status, "good-a")
    assert result.stdout == f"started good-a: READY (pid {third.pid})\n"
    assert (third.state, third.restarts, third.generation) == ("READY", 2, 3)
    result = tree.astrid("start", "good-a")
    assert result.returncode == 0
    assert result.stdout == f"good-a is already running (READY, pid {third.pid})\n"

    # Errors: exit 1, one line.
    result = tree.astrid("restart", "nope")
    assert result.returncode == 1
    assert result.stderr == "astrid: no capsule named 'nope' (known: fatal-a, good-a, good-b)\n"
    result = tree.astrid("start", "fatal-a")
    assert result.returncode == 1
    assert result.stderr == (
        "astrid: fatal-a exited before it was READY (exit code 78: invalid manifest: test); "
        "it is FATAL now\n"
    )
    assert result.stdout == ""

    log = tree.log("supervisor")
    assert "restart good-a requested on the control socket" in log
    assert "good-a[2] stopped by the operator" in log
    assert tree.stop() == 0
    assert tree.survivors() == []
    assert not (tree.home / "run" / "supervisor.sock").exists()


def test_start_resets_fatal_and_the_restart_window(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "flaky-a")
    write_capsule(tree.home / "capsules", "good-a")
    tree.start(worker_entry=ENTRY, preload=PRELOAD)
    status = tree.wait_for(
        lambda s: state_of(s, "flaky-a") == "FATAL" and state_of(s, "good-a") == "READY"
    )
    fatal = tree.capsule(status, "flaky-a")
    healthy = tree.capsule(status, "good-a")
    assert fatal.restarts == 3  # FAST_POLICY: max_restarts 3
    assert fatal.last_exit == "exit code 1; restarted 3 times within 30 s"

    # The operator fixes the cause and starts it: READY, FATAL forgotten.
    (tree.home / "capsules" / "flaky-a" / "fixed").touch()
    result = tree.astrid("start", "flaky-a")
    assert result.returncode == 0, result.stderr
    status = tree.status()
    assert status is not None
    started = tree.capsule(status, "flaky-a")
    assert result.stdout == f"started flaky-a: READY (pid {started.pid})\n"
    assert (started.state, started.restarts) == ("READY", 4)

    # The restart window starts afresh: three more restarts before FATAL again, not zero.
    (tree.home / "capsules" / "flaky-a" / "fixed").unlink()
    assert tree.astrid("kill", "flaky-a", "--signal", "KILL").returncode == 0
    status = tree.wait_for(lambda s: state_of(s, "flaky-a") == "FATAL")
    assert tree.capsule(status, "flaky-a").restarts == 7

    # restart works on a FATAL capsule too.
    (tree.home / "capsules" / "flaky-a" / "fixed").touch()
    result = tree.astrid("restart", "flaky-a")
    assert result.returncode == 0, result.stderr
    status = tree.status()
    assert status is not None
    assert (
        result.stdout == f"restarted flaky-a: READY (pid {tree.capsule(status, 'flaky-a').pid})\n"
    )
    assert tree.capsule(status, "good-a").pid == healthy.pid
    assert tree.capsule(status, "good-a").restarts == 0
    assert tree.stop() == 0
    assert tree.survivors() == []


def test_restart_of_a_worker_ignoring_sigterm(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "stubborn-a")
    tree.start(grace=0.5)
    status = tree.wait_for(lambda s: state_of(s, "stubborn-a") == "READY")
    before = tree.capsule(status, "stubborn-a")
    started = time.monotonic()
    result = tree.astrid("restart", "stubborn-a")
    assert result.returncode == 0, result.stderr
    assert 0.4 < time.monotonic() - started < 5
    status = tree.status()
    assert status is not None
    after = tree.capsule(status, "stubborn-a")
    assert after.last_exit == "killed by SIGKILL: restarted by the operator"
    assert gone(before.pid, before.create_time)
    assert "stubborn-a[1] did not stop within 0.5 s: SIGKILL" in tree.log("supervisor")
    assert tree.stop() == 0


def test_a_capsule_stopped_while_in_backoff_stays_stopped(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "crash-a")
    tree.start(policy={**_slow_backoff()})
    tree.wait_for(lambda s: state_of(s, "crash-a") == "BACKOFF")
    result = tree.astrid("stop", "crash-a")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "crash-a was not running (BACKOFF); it stays STOPPED\n"
    status = tree.status()
    assert status is not None
    restarts = tree.capsule(status, "crash-a").restarts
    time.sleep(1.5)  # longer than the backoff: no restart happens
    status = tree.status()
    assert status is not None
    crash = tree.capsule(status, "crash-a")
    assert (crash.state, crash.restarts, crash.pid) == ("STOPPED", restarts, None)
    assert tree.stop() == 0


def _slow_backoff() -> dict[str, float]:
    return {
        "base_delay": 1.0,
        "max_delay": 1.0,
        "jitter": 0.0,
        "max_restarts": 10,
        "window": 30.0,
        "stable_after": 5.0,
    }


def test_malformed_requests_do_not_crash_the_supervisor(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "good-a")
    tree.start()
    tree.wait_for(lambda s: state_of(s, "good-a") == "READY")
    assert tree.process is not None
    path = tree.home / "run" / "supervisor.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    def exchange(payload: bytes, count: int) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(payload)
            buffer = b""
            while buffer.count(b"\n") < count:
                chunk = client.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        return [json.loads(line) for line in buffer.splitlines()]

    answers = exchange(
        b"not json\n"
        b"[1, 2]\n"
        b'{"command": 5, "id": 7}\n'
        b'{"command": "dance"}\n'
        b'{"command": "restart"}\n'
        b'{"command": "stop", "capsule": ["good-a"]}\n'
        b'{"command": "start", "capsule": "nope"}\n'
        b"\xff\xfe\n"
        b'{"command": "status", "id": "s"}\n',
        9,
    )
    errors = [answer.get("error") for answer in answers[:-1]]
    assert all(answer["ok"] is False for answer in answers[:-1])
    assert errors[0].startswith("malformed request")
    assert errors[1:3] == [
        "malformed request: not a JSON object",
        "malformed request: no string 'command'",
    ]
    assert errors[3] == (
        "unknown command 'dance' (expected: restart, shutdown, start, status, stop)"
    )
    assert errors[4] == "restart needs a capsule name ('capsule')"
    assert errors[5] == "stop needs a capsule name ('capsule')"
    assert errors[6] == "no capsule named 'nope' (known: good-a)"
    assert errors[7].startswith("malformed request")
    last = answers[-1]
    assert last["ok"] is True and last["id"] == "s"
    assert last["status"]["supervisor"]["pid"] == tree.process.pid
    assert last["config"] is None  # no supervisor.toml in the home: the built-in defaults
    assert [c["name"] for c in last["status"]["capsules"]] == ["good-a"]

    # A request cut short, a client gone before its answer, an endless line.
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(b'{"command": "sta')
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(b'{"command": "restart", "capsule": "good-a"}\n')
    assert exchange(b"y" * 70_000, 1) == [{"ok": False, "error": "request longer than 65536 bytes"}]
    # The restart asked by the vanished client still happened; the supervisor is fine.
    tree.wait_for(
        lambda s: (c := s.capsule("good-a")) is not None and c.restarts == 1 and c.state == "READY"
    )
    assert tree.process.poll() is None
    assert exchange(b'{"command": "status"}\n', 1)[0]["ok"] is True
    assert tree.stop() == 0
    assert tree.survivors() == []


def test_shutdown_command(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "good-a")
    tree.start()
    tree.wait_for(lambda s: state_of(s, "good-a") == "READY")
    assert tree.process is not None
    answer = control.send_request(_home(tree), {"command": "shutdown"}, timeout=5)
    assert answer == {"ok": True, "message": "shutting down", "pid": tree.process.pid}
    assert tree.process.wait(timeout=10) == 0
    assert tree.survivors() == []
    with pytest.raises(control.NotRunningError):
        control.send_request(_home(tree), {"command": "status"}, timeout=5)


def _home(tree: Tree) -> AstridHome:
    return AstridHome.from_path(tree.home)


# --------------------------------------------------------------------------------------------
# up --detach / status / down, with the real broker and workers


def run_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_detach_status_down_round_trip(tmp_path: Path, capsules: dict[str, Path]) -> None:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    workspace.mkdir()
    for name in ("counter", "hello-tool"):
        shutil.copytree(
            capsules[name], home / "capsules" / name, ignore=shutil.ignore_patterns("*.c")
        )
    h = ("--home", str(home))
    daemon_pid = None
    try:
        started = time.monotonic()
        result = run_command(
            "astrid-supervisor", "up", "--detach", *h, "--workspace", str(workspace)
        )
        assert result.returncode == 0, result.stderr
        match = re.fullmatch(r"astrid-supervisor running \(pid (\d+), home (.+)\)\n", result.stdout)
        assert match is not None, result.stdout
        daemon_pid = int(match[1])
        assert match[2] == str(home)
        assert time.monotonic() - started < 30
        # A daemon: not our child, in a new session it does not lead (so it can never acquire
        # a controlling terminal); the broker is READY already.
        assert psutil.Process(daemon_pid).ppid() != os.getpid()
        assert os.getsid(daemon_pid) not in (os.getsid(0), daemon_pid)
        status = read_status(home / "state" / "supervisor.json")
        assert status is not None
        assert status.supervisor.pid == daemon_pid
        assert status.broker.state == "READY"

        result = run_command("astrid-supervisor", "status", *h)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"astrid-supervisor is running (pid {daemon_pid}, up ")
        assert f"  home:      {home}\n" in result.stdout

        def ready() -> dict[str, Any] | None:
            out = run_command("astrid", "ps", "--json", *h)
            rows = {row["name"]: row for row in json.loads(out.stdout)["processes"]}
            ok = all(rows[n]["state"] == "READY" for n in ("counter", "hello-tool"))
            return rows if ok else None

        rows = wait_until(ready, timeout=30, what="both capsules READY")
        tree_pids = {row["pid"] for row in rows.values() if row["pid"]}
        tree_pids |= {child.pid for child in psutil.Process(daemon_pid).children(recursive=True)}
        assert len(tree_pids) >= 4

        result = run_command("astrid", "ps", "--tree", *h)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"astrid-supervisor  RUNNING  pid {daemon_pid}  up ")
        assert [line.split("  ")[0:2] for line in lines[1:]] == [
            ["", "broker"],
            ["", "counter"],
            ["", "hello-tool"],
        ]

        result = run_command("astrid", "restart", "hello-tool", *h)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("restarted hello-tool: READY (pid ")
        result = run_command("astrid", "call", "hello-tool", "greet", '{"name": "Ada"}', *h)
        assert json.loads(result.stdout)["content"] == "Hello, Ada!"
        tree_pids |= {child.pid for child in psutil.Process(daemon_pid).children(recursive=True)}

        # A second one for the same home refuses, through the daemon's start report.
        result = run_command(
            "astrid-supervisor", "up", "--detach", *h, "--workspace", str(workspace)
        )
        assert result.returncode == 1
        assert result.stderr == (
            f"astrid-supervisor: another astrid-supervisor (pid {daemon_pid}) "
            f"is already running for {home}\n"
        )

        result = run_command("astrid-supervisor", "down", *h)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"astrid-supervisor stopped (pid {daemon_pid})\n"
        assert [pid for pid in tree_pids if alive(pid)] == []
        result = run_command("astrid-supervisor", "status", *h)
        assert result.returncode == 3
        assert result.stdout == f"astrid-supervisor is not running (home: {home})\n"
        assert not (home / "run" / "supervisor.sock").exists()
        assert not (home / "state" / "supervisor.json").exists()
        assert (
            "shutdown requested on the control socket"
            in (home / "logs" / "supervisor.log").read_text()
        )
        result = run_command("astrid-supervisor", "down", *h)
        assert (result.returncode, result.stdout) == (
            0,
            f"astrid-supervisor is not running (home: {home})\n",
        )
        result = run_command("astrid", "restart", "counter", *h)
        assert result.returncode == 1
        assert result.stderr == f"astrid: astrid-supervisor is not running (home: {home})\n"
    finally:
        if daemon_pid is not None and alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


def test_detach_reports_a_start_error(tmp_path: Path) -> None:
    home = tmp_path / ("h" * 100)
    result = run_command(
        "astrid-supervisor", "up", "--detach", "--home", str(home), "--workspace", str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stderr.startswith("astrid-supervisor: socket path too long: ")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
    # The daemon wrote it to its log too, and is gone (it was a fork of the command: same
    # command line, which names the home).
    assert "socket path too long" in (home / "logs" / "supervisor.log").read_text()
    leftovers = [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if str(home) in (process.info["cmdline"] or []) and alive(process.pid)
    ]
    assert leftovers == []
