"""Workers that outlive trouble, and a tree that never outlives its supervisor (issue 6).

Real ``astrid-supervisor up`` trees with real capsules, driven by the real ``astrid`` CLI and a
client on ``sessions/system.sock``:

* a guest sleeping in WASI past its call timeout (which Extism cannot interrupt) is ended by the
  worker's watchdog and restarted by the supervisor, the reason visible in ``astrid ps``; a guest
  that only overstays into the grace period, a spinning guest and a guest waiting on the broker
  trap with a timeout and keep their worker;
* the broker killed with SIGKILL while tool capsules are idle and while one is in a call: the call
  in flight traps with "lost the connection to the broker" instead of hanging, the same worker
  processes serve after the supervisor restarted the broker, and acknowledged KV data is intact;
* ``kill -9`` of the supervisor leaves no process of the tree: supervisor, broker, workers, host
  processes, their own children, and the broker's orphan guard.

Plus focused harness tests (a broker started and restarted by hand): reconnection, and a re-hello
of a running worker on a broker that never went away. The bound on waiting for a broker is in
``test_worker_process.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from astrid_core import wire
from astrid_core.launch import Event
from astrid_core.rpc import RpcError
from astrid_core.syscalls import BY_NAME
from astrid_core.wire import HelloInfo, Status, derive_worker_secret
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args
from worker.channel import BrokerChannel, BrokerLost

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
GRANTS = '[capabilities]\nhost_process = ["sh", "sleep"]\n'
LOST = "lost the connection to the broker"

Call = tuple[str, Sequence[bytes | Fill]]


def wait_until(probe: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or probe}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def spawn(cmd: str, *args: str) -> Call:
    return ("astrid_spawn_host", [json.dumps({"cmd": cmd, "args": list(args)}).encode()])


def background(cmd: str, *args: str) -> Call:
    return ("astrid_spawn_background_host", [json.dumps({"cmd": cmd, "args": list(args)}).encode()])


def run_script(
    client: Client, capsule: str, calls: Sequence[Call], timeout: float = 60
) -> list[Any]:
    arguments = json.loads(script_tool_args(encode_script(calls)))
    output = client.call_tool(capsule, "run", arguments, timeout=timeout)
    return decode_hex_output(output)


def table_entries(home: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads((home / "state" / "processes.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    entries: list[dict[str, Any]] = document["processes"]
    return entries


@dataclass
class Tree:
    home: Path
    workspace: Path
    process: subprocess.Popen[bytes]

    def astrid(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "astrid"), "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ps(self) -> dict[str, dict[str, Any]]:
        result = self.astrid("ps", "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["processes"]
        return {row["name"]: row for row in rows if row["role"] != "host"}

    def call(self, capsule: str, tool: str, arguments: Any) -> subprocess.CompletedProcess[str]:
        return self.astrid("call", capsule, tool, json.dumps(arguments))

    def content(self, capsule: str, tool: str, arguments: Any) -> str:
        result = self.call(capsule, tool, arguments)
        assert result.returncode == 0, result.stderr
        content: str = json.loads(result.stdout)["content"]
        return content

    def capsule_log(self, capsule: str) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in sorted((self.home / "logs").glob(f"{capsule}.log*"))
        )

    def ready(self, names: Sequence[str]) -> dict[str, dict[str, Any]] | None:
        if not (self.home / "state" / "supervisor.json").exists():
            return None
        rows = self.ps()
        if all(name in rows and rows[name]["state"] == "READY" for name in names):
            return rows
        return None


def start_tree(base: Path, capsules: dict[str, Path], names: dict[str, str]) -> Tree:
    """``names`` maps each installed capsule name to the source capsule it copies (the
    syscaller copies get host process grants)."""
    home, workspace = base / "home", base / "ws"
    workspace.mkdir(parents=True)
    for name, source in names.items():
        extra = GRANTS if source == "syscaller" else ""
        copy_capsule(capsules[source], home / "capsules", name=name, extra_toml=extra)
    log = (base / "supervisor.out").open("wb")
    process = subprocess.Popen(
        [str(BIN / "astrid-supervisor"), "up", "--home", str(home), "--workspace", str(workspace)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    tree = Tree(home, workspace, process)
    try:
        wait_until(lambda: tree.ready(list(names)), timeout=30, what="every capsule READY")
    except BaseException:
        stop_tree(tree)
        raise
    return tree


def stop_tree(tree: Tree) -> None:
    if tree.process.poll() is None:
        tree.process.send_signal(signal.SIGTERM)
        try:
            tree.process.wait(30)
        except subprocess.TimeoutExpired:
            tree.process.kill()
            tree.process.wait()


CAPSULES = {"sleeper": "sleeper", "hello-tool": "hello-tool", "hosted": "syscaller"}


@pytest.fixture(scope="module")
def tree(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    shell = start_tree(tmp_path_factory.mktemp("resilience"), capsules, CAPSULES)
    yield shell
    stop_tree(shell)


# --------------------------------------------------------------------------------------------
# Guests that overstay their call timeout


def test_a_guest_sleeping_past_its_timeout_is_killed_and_restarted(tree: Tree) -> None:
    before = tree.ps()["sleeper"]
    # Within the grace period: Extism traps the call once the sleep returns; the worker stays.
    started = time.monotonic()
    result = tree.call("sleeper", "sleep", {"ms": 12_000})
    assert result.returncode == 1
    assert "timeout" in result.stderr
    assert 11.5 < time.monotonic() - started < 14.5
    assert tree.ps()["sleeper"]["pid"] == before["pid"]

    # Past it: the watchdog ends the worker 15 s into the call, the supervisor restarts it.
    started = time.monotonic()
    result = tree.call("sleeper", "sleep", {"ms": 120_000})
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "stopped" in result.stderr, result.stderr
    assert 14.5 < elapsed < 20
    after = wait_until(
        lambda: (
            (row := tree.ps()["sleeper"])["state"] == "READY"
            and row["pid"] not in (None, before["pid"])
            and row
        ),
        what="sleeper restarted",
    )
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_exit"].startswith("exit code 124")
    assert after["last_exit"].endswith(
        "timeout: the guest ignored its 10 s call timeout (astrid_tool_call ran 15 s)"
    )
    assert not alive(before["pid"])
    assert "ERROR timeout: the guest ignored its 10 s call timeout" in tree.capsule_log("sleeper")
    assert tree.content("sleeper", "ok", {}) == "ok"
    assert tree.content("sleeper", "sleep", {"ms": 200}) == "slept 200"


def test_a_spinning_guest_traps_and_keeps_its_worker(tree: Tree) -> None:
    before = tree.ps()["sleeper"]
    started = time.monotonic()
    result = tree.call("sleeper", "spin", {})
    assert result.returncode == 1
    assert "astrid_tool_call failed: timeout" in result.stderr, result.stderr
    assert 9.5 < time.monotonic() - started < 13
    assert tree.content("sleeper", "ok", {}) == "ok"
    after = tree.ps()["sleeper"]
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])


def test_a_guest_waiting_on_the_broker_traps_at_its_timeout(tree: Tree) -> None:
    """A host call cannot be interrupted by Extism, but the worker's side of it gives up when
    the call timeout expires: a trap, not a killed worker."""
    before = tree.ps()["hosted"]
    client = Client(tree.home)
    try:
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            run_script(client, "hosted", [spawn("sleep", "30")])
        assert 9.5 < time.monotonic() - started < 13
        assert info.value.message == (
            "astrid_tool_call failed: timeout: the call timeout expired while "
            "astrid_spawn_host was waiting for the broker"
        )
        assert run_script(client, "hosted", [("astrid_clock_ms", [])])[0]
    finally:
        client.close()
    after = tree.ps()["hosted"]
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])


# --------------------------------------------------------------------------------------------
# Broker recovery


def _kill_broker_and_wait(tree: Tree) -> dict[str, dict[str, Any]]:
    """SIGKILL the broker; return ``astrid ps`` once the supervisor restarted it and every
    capsule answers a call again (its worker said hello to the new broker)."""
    broker = tree.ps()["broker"]
    os.kill(broker["pid"], signal.SIGKILL)
    rows: dict[str, dict[str, Any]] = wait_until(
        lambda: (
            (rows := tree.ready([*CAPSULES, "broker"])) is not None
            and rows["broker"]["pid"] not in (None, broker["pid"])
            and rows
        ),
        timeout=30,
        what="the broker back",
    )
    for name, tool in (("sleeper", "ok"), ("hello-tool", "now")):
        wait_until(
            lambda name=name, tool=tool: tree.call(name, tool, {}).returncode == 0,  # type: ignore[misc]
            timeout=5,
            what=f"{name} served by the new broker",
        )
    return rows


def test_idle_workers_reconnect_to_a_restarted_broker(tree: Tree) -> None:
    assert "remembered color" in tree.content(
        "hello-tool", "remember", {"key": "color", "value": "blue"}
    )
    before = tree.ps()
    after = _kill_broker_and_wait(tree)
    # The same worker processes serve; nothing was restarted but the broker.
    for name in CAPSULES:
        assert after[name]["pid"] == before[name]["pid"], name
        assert after[name]["restarts"] == before[name]["restarts"], name
    assert after["broker"]["restarts"] == before["broker"]["restarts"] + 1
    # The acknowledged write survived, and writes go on.
    assert tree.content("hello-tool", "recall", {"key": "color"}) == "blue"
    assert "remembered shape" in tree.content(
        "hello-tool", "remember", {"key": "shape", "value": "round"}
    )
    assert tree.content("sleeper", "ok", {}) == "ok"
    for name in CAPSULES:
        wait_until(
            lambda name=name: "reconnected to the broker" in tree.capsule_log(name),  # type: ignore[misc]
            timeout=5,
            what=f"{name} logs its reconnection",
        )


def test_a_call_in_flight_traps_when_the_broker_dies_and_the_worker_resumes(tree: Tree) -> None:
    assert "remembered size" in tree.content(
        "hello-tool", "remember", {"key": "size", "value": "large"}
    )
    before = tree.ps()
    client = Client(tree.home)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = run_script(client, "hosted", [spawn("sleep", "8")], timeout=30)
        except Exception as exc:  # the broker's socket goes away with it
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    try:
        wait_until(
            lambda: any(e["command"] == "sleep 8" for e in table_entries(tree.home)),
            what="the host call in flight",
        )
        log_before = len(tree.capsule_log("hosted"))
        killed_at = time.monotonic()
        after = _kill_broker_and_wait(tree)
        thread.join(10)
        assert not thread.is_alive(), "the caller hangs"
        assert "error" in outcome
        # The guest trapped on the lost connection within the liveness slice, well before its
        # host call (8 s) or its timeout (10 s) would have ended it.
        line = wait_until(
            lambda: next(
                (
                    line
                    for line in tree.capsule_log("hosted")[log_before:].splitlines()
                    if f"trap: {LOST}" in line
                ),
                None,
            ),
            timeout=5,
            what="the trap in the worker's log",
        )
        assert "astrid_tool_call" in line
        assert time.monotonic() - killed_at < 8
    finally:
        client.close()
    for name in CAPSULES:
        assert after[name]["pid"] == before[name]["pid"], name
        assert after[name]["restarts"] == before[name]["restarts"], name
    client = Client(tree.home)
    try:
        assert run_script(client, "hosted", [spawn("sh", "-c", "echo again")]) == [
            b'{"stdout":"again\\n","stderr":"","exit_code":0}'
        ]
    finally:
        client.close()
    assert tree.content("hello-tool", "recall", {"key": "size"}) == "large"


# --------------------------------------------------------------------------------------------
# No orphans after kill -9 of the supervisor


def test_kill_9_of_the_supervisor_leaves_no_process_of_the_tree(
    capsules: dict[str, Path], tmp_path: Path
) -> None:
    tree = start_tree(tmp_path, capsules, {"hosted": "syscaller", "hello-tool": "hello-tool"})
    try:
        client = Client(tree.home)
        try:
            run_script(client, "hosted", [background("sh", "-c", "sleep 300 & sleep 300")])
            run_script(client, "hosted", [background("sleep", "300")])
        finally:
            client.close()
        entries = wait_until(
            lambda: len(e := table_entries(tree.home)) == 2 and e, what="two host processes"
        )
        leaders = [entry["pid"] for entry in entries]
        group = wait_until(
            lambda: (
                len(g := [p for leader in leaders for p in _with_descendants(leader)]) == 4 and g
            ),
            what="the shell's two sleeps",
        )
        rows = tree.ps()
        broker = rows["broker"]["pid"]
        workers = [rows[name]["pid"] for name in ("hosted", "hello-tool")]
        guards = [
            child.pid
            for child in psutil.Process(broker).children()
            if "astrid orphan guard" in " ".join(child.cmdline())
        ]
        assert len(guards) == 1, "the broker's orphan guard"
        everything = [tree.process.pid, broker, *workers, *group, *guards]
        assert all(alive(pid) for pid in everything)

        tree.process.send_signal(signal.SIGKILL)
        tree.process.wait()
        wait_until(
            lambda: not [pid for pid in everything if alive(pid)],
            timeout=5,
            what="no process of the tree left",
        )
    finally:
        stop_tree(tree)


def _with_descendants(pid: int) -> list[int]:
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


# --------------------------------------------------------------------------------------------
# Harness: a broker started and restarted by hand


def test_a_worker_reconnects_to_a_broker_restarted_on_its_endpoint(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    worker = runtime.start_worker(capsules["hello-tool"])
    client = runtime.client()
    try:
        client.call_tool("hello-tool", "remember", {"key": "k", "value": "v"})
    finally:
        client.close()
    assert runtime.broker is not None
    runtime.broker.process.send_signal(signal.SIGKILL)
    runtime.broker.process.wait()
    runtime.broker.stop()
    time.sleep(1.5)  # the worker notices within its liveness slice and waits
    assert worker.process.poll() is None
    runtime.start_broker()
    client = wait_until(lambda: _connected_client(runtime, "hello-tool"), what="a served call")
    try:
        assert client.call_tool("hello-tool", "recall", {"key": "k"}) == json.dumps(
            {"content": "v", "is_error": False}, separators=(",", ":")
        )
    finally:
        client.close()
    assert worker.process.poll() is None
    worker.read_events(0.2)
    assert [e.event for e in worker.events] == [Event.LOADED, Event.READY]


def _connected_client(runtime: Runtime, capsule: str) -> Client | None:
    client = runtime.client()
    try:
        client.call_tool(capsule, "now", {}, timeout=5)
    except RpcError:
        client.close()
        return None
    return client


def test_a_running_worker_that_says_hello_again_keeps_its_session(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    """A re-hello of the running generation (a reset connection, a worker that thought the
    broker was gone) resumes the session on the new connection, its host processes included."""
    source = copy_capsule(
        capsules["syscaller"], tmp_path / "caps", name="rehello", extra_toml=GRANTS
    )
    runtime.start_worker(source)
    client = runtime.client()
    try:
        run_script(client, "rehello", [background("sleep", "300")])
        [entry] = wait_until(lambda: table_entries(runtime.home), what="the host process")
        # A second connection presents the worker's own hello (its pid, generation, secret).
        worker = runtime.workers[-1]
        info = HelloInfo("rehello", str(source), 1, worker.process.pid, False)
        secret = derive_worker_secret(runtime.master_key, info)
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(runtime.endpoint)
        try:
            dealer.send(wire.encode_hello(1, info, secret))
            assert dealer.poll(10_000)
            reply = wire.decode_broker_frame(dealer.recv())
            assert isinstance(reply, wire.Reply) and reply.status == Status.OK, reply
            # The session moved to the new connection with its state: the host process lives.
            time.sleep(0.3)
            assert alive(entry["pid"])
            assert [e["pid"] for e in table_entries(runtime.home)] == [entry["pid"]]
        finally:
            dealer.close(0)
            context.term()
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# A broker that restarted between two calls answers REAUTH (a scripted ROUTER plays it)


def _scripted_broker(
    endpoint: str, replies: list[wire.Status], stop: threading.Event
) -> tuple[threading.Thread, list[Any]]:
    """Welcome every hello and answer each call with the next status of ``replies``, until
    ``stop``; returns the thread and the list of frames it received."""
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    received: list[Any] = []

    def serve() -> None:
        pending = list(replies)
        try:
            while not stop.is_set():
                if not router.poll(50):
                    continue
                identity, raw = router.recv_multipart()
                frame = wire.decode_worker_frame(raw)
                received.append(frame)
                if isinstance(frame, wire.Hello):
                    answer = wire.encode_reply(frame.seq, wire.Status.OK, wire.encode_welcome({}))
                else:
                    status = pending.pop(0)
                    payload = b"42" if status == wire.Status.OK else ""
                    answer = wire.encode_reply(frame.seq, status, payload)
                router.send_multipart([identity, answer])
        finally:
            router.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, received


@pytest.mark.parametrize("has_run", [True, False], ids=["run-loop", "tool"])
def test_a_reauth_ends_a_run_loop_but_a_tool_capsule_authenticates_again(
    tmp_path: Path, has_run: bool
) -> None:
    endpoint = f"ipc://{tmp_path}/broker.ipc"
    stop = threading.Event()
    thread, received = _scripted_broker(endpoint, [wire.Status.REAUTH, wire.Status.OK], stop)
    info = wire.HelloInfo("loop", str(tmp_path), 1, os.getpid(), has_run)
    channel = BrokerChannel(endpoint, info, b"s" * 32)
    try:
        channel.hello()
        if has_run:
            # Its host processes and handles died with the old broker: no resuming.
            with pytest.raises(BrokerLost, match="the broker restarted during the run"):
                channel.call(BY_NAME["astrid_clock_ms"].index, [])
            assert channel.lost
            assert sum(isinstance(frame, wire.Hello) for frame in received) == 1
        else:
            assert channel.call(BY_NAME["astrid_clock_ms"].index, []) == (True, b"42")
            assert channel.epoch == 2
    finally:
        channel.close()
        stop.set()
        thread.join(10)
