"""The four host-process syscalls through a real broker, real workers and real children
(syscalls.md §2.12 and §5, DESIGN §6.13).

Copies of the syscaller capsule with ``host_process`` grants spawn commands; every reachable
error text of §2.12 is asserted as a trap the caller sees. The broker is started with a
poisoned environment to prove that none of it reaches a child. The last tests run the real
``astrid-supervisor``: ``astrid ps``/``astrid kill`` see the host processes, and a broker killed
with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from astrid_core import rpc
from astrid_core.rpc import RpcError
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BIN = Path(sys.executable).parent
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

Call = tuple[str, Sequence[bytes | Fill]]

GRANTS = '[capabilities]\nhost_process = ["sh", "sleep", "env", "pwd", "seq", "true"]\n'

#: Set in the broker's environment; none may reach a host process.
POISON = {
    "LD_PRELOAD": "/nonexistent/evil.so",
    "PYTHONPATH": "/evil/python",
    "NODE_OPTIONS": "--require /evil.js",
    "HTTP_PROXY": "http://evil.invalid:3128",
    "ASTRID_SESSION_TOKEN": "leaked-token",
    "ASTRID_HOME": "/evil/astrid-home",
    "DYLD_INSERT_LIBRARIES": "/evil.dylib",
    "npm_config_x": "evil",
    "SSL_CERT_FILE": "/evil.pem",
}


def spawn(cmd: str, *args: str) -> Call:
    return ("astrid_spawn_host", [json.dumps({"cmd": cmd, "args": list(args)}).encode()])


def background(cmd: str, *args: str) -> Call:
    return ("astrid_spawn_background_host", [json.dumps({"cmd": cmd, "args": list(args)}).encode()])


def logs(number: int) -> Call:
    return ("astrid_read_process_logs_host", [b'{"id":%d}' % number])


def kill(number: int) -> Call:
    return ("astrid_kill_process_host", [b'{"id":%d}' % number])


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(probe: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or probe}")


def group_of(leader: int) -> list[int]:
    """The leader and its descendants (they share its process group)."""
    process = psutil.Process(leader)
    return [leader, *(child.pid for child in process.children(recursive=True))]


def table_entries(home: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads((home / "state" / "processes.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    entries: list[dict[str, Any]] = document["processes"]
    return entries


def entry_for(home: Path, capsule: str, command: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for entry in table_entries(home):
            if entry["capsule"] == capsule and entry["command"] == command:
                return entry
        return None

    found: dict[str, Any] = wait_until(probe, what=f"{command!r} in the process table")
    return found


@dataclass
class Procs:
    runtime: Runtime | None  # None under the real supervisor
    client: Client
    home: Path
    workspace: Path
    caps: Path

    def run(self, capsule: str, calls: Sequence[Call], client: Client | None = None) -> list[Any]:
        arguments = json.loads(script_tool_args(encode_script(calls)))
        output = (client or self.client).call_tool(capsule, "run", arguments, timeout=60)
        return [None if r is None else json.loads(r) for r in decode_hex_output(output)]

    def one(self, capsule: str, call: Call) -> Any:
        return self.run(capsule, [call])[0]

    def trap(self, capsule: str, calls: Sequence[Call]) -> str:
        with pytest.raises(RpcError) as info:
            self.run(capsule, calls)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")

    def start(self, name: str, toml: str = GRANTS) -> None:
        source = self.caps / "syscaller-source"
        assert self.runtime is not None
        self.runtime.start_worker(copy_capsule(source, self.caps, name=name, extra_toml=toml))


@pytest.fixture(scope="module")
def procs(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    base = tmp_path_factory.mktemp("proc")
    home, workspace, caps = base / "home", base / "ws", base / "caps"
    for directory in (home, workspace, caps):
        directory.mkdir()
    shutil.copytree(capsules["syscaller"], caps / "syscaller-source")
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in POISON.items():
            patch.setenv(name, value)
        runtime.start_broker()  # the broker inherits the poisoned environment
    result = Procs(runtime, runtime.client(), home, workspace, caps)
    result.start("proc")
    result.start("noproc", "")
    yield result
    result.client.close()
    runtime.stop()


# --------------------------------------------------------------------------------------------
# Synchronous spawns


def test_spawn_host_returns_stdout_stderr_and_exit_code(procs: Procs) -> None:
    result = procs.one("proc", spawn("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert result == {"stdout": "out\n", "stderr": "err\n", "exit_code": 3}
    assert procs.one("proc", spawn("true")) == {"stdout": "", "stderr": "", "exit_code": 0}


def test_json_escapes_in_cmd_and_args_are_accepted(procs: Procs) -> None:
    request = b'{"cmd":"s\\u0068","args":["-c","printf \'%s|\' \\"$@\\"","x","a\\"b","c\\\\d","\\u00e9\\n"]}'
    result = procs.one("proc", ("astrid_spawn_host", [request]))
    assert result == {"stdout": 'a"b|c\\d|\u00e9\n|', "stderr": "", "exit_code": 0}


def test_a_signal_death_is_exit_code_minus_one(procs: Procs) -> None:
    result = procs.one("proc", spawn("sh", "-c", "echo before; kill -KILL $$"))
    assert result == {"stdout": "before\n", "stderr": "", "exit_code": -1}


def test_the_working_directory_and_home_are_the_workspace(procs: Procs) -> None:
    result = procs.one("proc", spawn("sh", "-c", 'pwd; echo "$HOME"'))
    real = os.path.realpath(procs.workspace)
    assert result["stdout"].splitlines() == [real, str(procs.workspace)]
    assert procs.one("proc", spawn("pwd"))["stdout"] == real + "\n"


def test_stdin_is_dev_null(procs: Procs) -> None:
    result = procs.one("proc", spawn("sh", "-c", "cat; readlink /proc/self/fd/0"))
    assert result == {"stdout": "/dev/null\n", "stderr": "", "exit_code": 0}


def test_a_synchronous_spawn_does_not_block_the_broker(procs: Procs) -> None:
    caller = Client(procs.home)
    try:
        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: outcome.update(result=procs.run("proc", [spawn("sleep", "2")], caller))
        )
        started = time.monotonic()
        thread.start()
        entry_for(procs.home, "proc", "sleep 2")
        assert procs.one("noproc", ("astrid_clock_ms", []))  # another capsule is served at once
        assert time.monotonic() - started < 1.5
        thread.join(10)
        assert outcome["result"] == [{"stdout": "", "stderr": "", "exit_code": 0}]
        assert time.monotonic() - started >= 2.0
    finally:
        caller.close()


@pytest.mark.parametrize("command", [("env",), ("sh", "-c", "env")])
def test_no_injected_variable_reaches_a_child(procs: Procs, command: tuple[str, ...]) -> None:
    result = procs.one("proc", spawn(*command))
    assert result["exit_code"] == 0
    env = dict(line.split("=", 1) for line in result["stdout"].splitlines())
    for name in POISON:
        assert name not in env
    assert not [name for name in env if name.upper().startswith("ASTRID_")]
    assert env["PATH"] == SAFE_PATH
    assert env["HOME"] == str(procs.workspace)
    allowed = {"PATH", "HOME", "USER", "SHELL", "TERM", "LANG", "LC_ALL", "LC_CTYPE"}
    shell_own = {"PWD", "SHLVL", "OLDPWD", "_"}  # what sh itself adds
    assert set(env) <= allowed | shell_own
    assert "evil" not in result["stdout"]


# --------------------------------------------------------------------------------------------
# Error texts (traps the caller sees)


def test_parse_errors_trap(procs: Procs) -> None:
    for syscall in ("astrid_spawn_host", "astrid_spawn_background_host"):
        text = procs.trap("proc", [(syscall, [b'{"args":["x"]}'])])
        assert text.startswith("failed to parse process request: ")
        assert "missing field `cmd`" in text
        assert procs.trap("proc", [(syscall, [b"not json"])]).startswith(
            "failed to parse process request: "
        )
        assert procs.trap("proc", [(syscall, [Fill(0x20, 10 * MiB + 1)])]) == (
            "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
        )
    assert procs.trap("proc", [("astrid_read_process_logs_host", [b'{"id":"1"}'])]).startswith(
        "failed to parse read logs request: "
    )
    assert procs.trap("proc", [("astrid_kill_process_host", [b"{}"])]).startswith(
        "failed to parse kill request: "
    )
    for syscall in ("astrid_read_process_logs_host", "astrid_kill_process_host"):
        assert procs.trap("proc", [(syscall, [Fill(0x20, 257)])]) == (
            "memory allocation of 257 bytes exceeds maximum allowed limit of 256 bytes"
        )
        assert procs.trap("proc", [(syscall, [b'{"id":4242}'])]) == (
            "no background process with id 4242"
        )


def test_undeclared_commands_are_denied(procs: Procs) -> None:
    denied = (
        "Security Check Failed: capsule '{}' denied: host process '{}' not declared in manifest"
    )
    assert procs.trap("noproc", [spawn("sh", "-c", "true")]) == denied.format("noproc", "sh")
    assert procs.trap("noproc", [background("sleep", "1")]) == denied.format("noproc", "sleep")
    assert procs.trap("proc", [spawn("ls")]) == denied.format("proc", "ls")
    assert procs.trap("proc", [spawn("/bin/sh")]) == denied.format("proc", "/bin/sh")
    assert procs.trap("proc", [spawn("shx")]) == denied.format("proc", "shx")


def test_spawn_failures_trap(procs: Procs) -> None:
    procs.start("missing", '[capabilities]\nhost_process = ["no-such-program-here"]\n')
    assert procs.trap("missing", [spawn("no-such-program-here")]) == (
        "failed to spawn command: No such file or directory (os error 2)"
    )
    assert procs.trap("missing", [background("no-such-program-here")]) == (
        "failed to spawn background process: No such file or directory (os error 2)"
    )


# --------------------------------------------------------------------------------------------
# Background processes


def test_background_logs_are_incremental_and_the_exit_code_is_reported_once(
    procs: Procs,
) -> None:
    script = "echo one; echo uno >&2; sleep 2; echo two; exit 3"
    number = procs.one("proc", background("sh", "-c", script))["id"]
    entry_for(procs.home, "proc", shlex.join(["sh", "-c", script]))
    time.sleep(0.5)
    assert procs.one("proc", logs(number)) == {
        "stdout": "one\n",
        "stderr": "uno\n",
        "running": True,
        "exit_code": None,
    }
    assert procs.one("proc", logs(number)) == {  # drained: nothing new
        "stdout": "",
        "stderr": "",
        "running": True,
        "exit_code": None,
    }
    stdout = ""
    while True:
        result = procs.one("proc", logs(number))
        stdout += result["stdout"]
        if not result["running"]:
            break
        assert result["exit_code"] is None
        time.sleep(0.05)
    assert stdout == "two\n"
    assert result["exit_code"] == 3
    assert procs.one("proc", logs(number)) == {  # the exit code is reported once
        "stdout": "",
        "stderr": "",
        "running": False,
        "exit_code": None,
    }
    assert procs.one("proc", kill(number)) == {
        "killed": True,
        "exit_code": None,
        "stdout": "",
        "stderr": "",
    }
    assert procs.trap("proc", [logs(number)]) == f"no background process with id {number}"


def test_ids_start_at_one_and_are_never_reused(procs: Procs) -> None:
    procs.start("ids")
    first = procs.run("ids", [background("true"), background("true")])
    assert first == [{"id": 1}, {"id": 2}]
    procs.run("ids", [kill(1), kill(2)])
    assert procs.one("ids", background("true")) == {"id": 3}
    procs.one("ids", kill(3))


def test_eight_background_processes_at_most(procs: Procs) -> None:
    procs.start("limits")
    ids = [r["id"] for r in procs.run("limits", [background("sleep", "300")] * 8)]
    assert ids == list(range(1, 9))
    limit = "background process limit reached (max 8)"
    assert procs.trap("limits", [background("sleep", "300")]) == limit
    assert procs.trap("limits", [background("ls")]) == limit  # checked before the gate
    assert procs.trap("limits", [("astrid_spawn_background_host", [b"{"])]).startswith(
        "failed to parse process request: "  # checked after parsing
    )
    # An exited process keeps its slot until it is killed.
    procs.one("limits", kill(8))
    number = procs.one("limits", background("true"))["id"]
    assert number == 9
    wait_until(lambda: procs.one("limits", logs(number))["running"] is False)
    assert procs.trap("limits", [background("sleep", "300")]) == limit
    procs.one("limits", kill(number))
    assert procs.one("limits", background("sleep", "1")) == {"id": 10}
    procs.run("limits", [kill(n) for n in (*range(1, 8), 10)])


def test_kill_ends_the_whole_group(procs: Procs) -> None:
    number = procs.one("proc", background("sh", "-c", "echo started; sleep 300 & sleep 300"))["id"]
    entry = entry_for(procs.home, "proc", "sh -c 'echo started; sleep 300 & sleep 300'")
    members = wait_until(lambda: len(g := group_of(entry["pid"])) == 3 and g, what="the group")
    assert {os.getpgid(pid) for pid in members} == {entry["pgid"]} == {entry["pid"]}
    result = procs.one("proc", kill(number))
    assert result == {"killed": True, "exit_code": None, "stdout": "started\n", "stderr": ""}
    wait_until(lambda: not any(alive(pid) for pid in members), timeout=5, what="the group's end")
    assert all(e["pid"] != entry["pid"] for e in table_entries(procs.home))
    assert procs.trap("proc", [kill(number)]) == f"no background process with id {number}"


def test_a_worker_that_dies_takes_its_process_groups_along(procs: Procs) -> None:
    procs.start("victim")
    procs.one("victim", background("sh", "-c", "sleep 300 & sleep 300"))
    entry = entry_for(procs.home, "victim", "sh -c 'sleep 300 & sleep 300'")
    members = wait_until(lambda: len(g := group_of(entry["pid"])) == 3 and g, what="the group")
    worker = next(child for child in procs.runtime.workers if child.name == "victim")
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait()
    wait_until(lambda: not any(alive(pid) for pid in members), timeout=5, what="the group's end")
    wait_until(lambda: all(e["capsule"] != "victim" for e in table_entries(procs.home)))


def test_the_table_file_lists_running_processes(procs: Procs) -> None:
    number = procs.one("proc", background("sleep", "300"))["id"]
    entry = entry_for(procs.home, "proc", "sleep 300")
    assert set(entry) == {"pid", "pgid", "capsule", "command", "started_at", "create_time"}
    process = psutil.Process(entry["pid"])
    assert process.name() == "sleep"  # setpriv exec'd it
    assert procs.runtime is not None and procs.runtime.broker is not None
    assert process.ppid() == procs.runtime.broker.process.pid
    assert entry["create_time"] == process.create_time()
    assert abs(entry["started_at"] - time.time()) < 30
    assert os.getpgid(entry["pid"]) == entry["pgid"] == entry["pid"]
    mode = (procs.home / "state" / "processes.json").stat().st_mode & 0o777
    assert mode == 0o600
    procs.one("proc", kill(number))
    assert all(e["pid"] != entry["pid"] for e in table_entries(procs.home))


# --------------------------------------------------------------------------------------------
# Cancellation


def _caller_session(procs: Procs, client: Client) -> str:
    [caller] = procs.run("proc", [("astrid_get_caller", [])], client)
    session_id: str = caller["session_id"]
    return session_id


def _cancel(client: Client, call_ids: list[str]) -> None:
    client.request(
        rpc.Method.BUS_PUBLISH,
        {
            "topic": "tool.v1.request.cancel",
            "payload": {"type": "tool_cancel_request", "call_ids": call_ids},
        },
    )


@pytest.mark.parametrize(
    ("script", "least", "most"),
    [
        ("echo partial; sleep 30", 0.0, 1.5),  # SIGINT ends it
        ("trap '' INT; echo partial; sleep 30", 2.0, 6.0),  # SIGINT ignored: SIGKILL after 2 s
    ],
    ids=["sigint", "sigkill-after-2s"],
)
def test_a_tool_cancel_request_cancels_the_callers_spawn(
    procs: Procs, script: str, least: float, most: float
) -> None:
    caller = Client(procs.home)
    try:
        session_id = _caller_session(procs, caller)
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["result"] = procs.run("proc", [spawn("sh", "-c", script)], caller)[0]
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        entry = entry_for(procs.home, "proc", shlex.join(["sh", "-c", script]))
        # A request for other calls leaves it alone.
        _cancel(procs.client, ["some-other-call"])
        time.sleep(0.3)
        assert alive(entry["pid"])
        started = time.monotonic()
        _cancel(procs.client, ["some-other-call", session_id])
        thread.join(15)
        elapsed = time.monotonic() - started
        assert not thread.is_alive()
        assert outcome.get("error") is None
        assert outcome["result"] == {"stdout": "partial\n", "stderr": "", "exit_code": -1}
        assert least <= elapsed <= most
        assert not alive(entry["pid"])
    finally:
        caller.close()


def test_background_processes_are_not_cancelled(procs: Procs) -> None:
    number = procs.one("proc", background("sleep", "300"))["id"]
    entry = entry_for(procs.home, "proc", "sleep 300")
    _cancel(procs.client, ["anything"])
    time.sleep(0.5)
    assert alive(entry["pid"])
    assert procs.one("proc", logs(number))["running"] is True
    procs.one("proc", kill(number))


# --------------------------------------------------------------------------------------------
# The real supervisor: astrid ps / kill, and a broker killed with SIGKILL


@dataclass
class Tree:
    home: Path
    process: subprocess.Popen[bytes]
    procs: Procs = field(init=False)

    def astrid(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "astrid"), "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def ps(self) -> list[dict[str, Any]]:
        result = self.astrid("ps", "--json")
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)["processes"]
        return rows

    def row(self, name: str) -> dict[str, Any] | None:
        return next((row for row in self.ps() if row["name"] == name), None)


@pytest.fixture(scope="module")
def tree(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("tree")
    home, workspace = base / "home", base / "ws"
    workspace.mkdir()
    copy_capsule(capsules["syscaller"], home / "capsules", name="hosted", extra_toml=GRANTS)
    log = (base / "supervisor.out").open("wb")
    process = subprocess.Popen(
        [str(BIN / "astrid-supervisor"), "up", "--home", str(home), "--workspace", str(workspace)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client: Client | None = None
    try:
        shell = Tree(home, process)
        wait_until(
            lambda: (
                (home / "state" / "supervisor.json").exists()
                and (row := shell.row("hosted")) is not None
                and row["state"] == "READY"
            ),
            timeout=30,
            what="capsule 'hosted' READY",
        )
        client = Client(home)
        shell.procs = Procs(None, client, home, workspace, base)
        yield shell
    finally:
        if client is not None:
            client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_astrid_ps_and_kill_see_host_processes(tree: Tree) -> None:
    procs = tree.procs
    number = procs.one("hosted", background("sleep", "300"))["id"]
    entry = entry_for(tree.home, "hosted", "sleep 300")
    rows = tree.ps()
    names = [row["name"] for row in rows]
    position = names.index("hosted")
    host = rows[position + 1]  # listed right under its capsule
    assert host["role"] == "host"
    assert host["name"] == "  \u21b3 sleep 300"
    assert host["capsule"] == "hosted"
    assert host["command"] == "sleep 300"
    assert host["pid"] == entry["pid"]
    assert host["state"] == "RUNNING"
    assert host["rss_bytes"] > 0
    assert host["uptime_s"] >= 0
    plain = tree.astrid("ps")
    assert "\u21b3 sleep 300" in plain.stdout

    result = tree.astrid("kill", str(entry["pid"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"sent SIGTERM to host process 'sleep 300' of capsule hosted (pid {entry['pid']})"
    )
    wait_until(lambda: not alive(entry["pid"]), timeout=5, what="sleep's end")
    assert procs.one("hosted", logs(number)) == {
        "stdout": "",
        "stderr": "",
        "running": False,
        "exit_code": None,  # killed by a signal
    }
    procs.one("hosted", kill(number))
    assert all(row["role"] != "host" for row in tree.ps())

    # A pid outside the table is refused.
    outsider = subprocess.Popen(["sleep", "300"])
    try:
        result = tree.astrid("kill", str(outsider.pid))
        assert result.returncode == 1
        assert "not part of the astrid tree" in result.stderr
        assert alive(outsider.pid)
    finally:
        outsider.kill()
        outsider.wait()


def test_a_broker_killed_with_sigkill_leaves_no_host_process(tree: Tree) -> None:
    procs = tree.procs
    procs.one("hosted", background("sh", "-c", "sleep 300 & sleep 300"))
    procs.one("hosted", background("sleep", "300"))
    entry = entry_for(tree.home, "hosted", "sh -c 'sleep 300 & sleep 300'")
    members = wait_until(lambda: len(g := group_of(entry["pid"])) == 3 and g, what="the group")
    single = entry_for(tree.home, "hosted", "sleep 300")
    broker = tree.row("broker")
    assert broker is not None and broker["pid"]
    # The broker's orphan guard (the cleanup for when the supervisor died too) goes as well.
    [guard] = [
        child.pid
        for child in psutil.Process(broker["pid"]).children()
        if "astrid orphan guard" in " ".join(child.cmdline())
    ]
    os.kill(broker["pid"], signal.SIGKILL)
    everything = [*members, single["pid"], guard]
    wait_until(
        lambda: not any(alive(pid) for pid in everything), timeout=5, what="no host process left"
    )
    # The supervisor removed the table and restarts the broker; the capsule comes back.
    wait_until(lambda: not (tree.home / "state" / "processes.json").exists(), timeout=5)
    wait_until(
        lambda: (
            (row := tree.row("broker")) is not None
            and row["state"] == "READY"
            and row["pid"] != broker["pid"]
        ),
        timeout=30,
        what="the broker back",
    )
    supervisor_log = (tree.home / "logs" / "supervisor.log").read_text()
    assert "host process group(s) left by the broker" in supervisor_log
