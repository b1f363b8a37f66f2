"""The six Unix-socket syscalls through a real broker and a real worker (syscalls.md §2.6,
DESIGN §6.2).

A copy of the syscaller capsule with ``net_bind = ["unix://<short dir>/sub/cli.sock"]`` binds a
real listener; real clients (threads of this test, or another process) connect, do the
session-token handshake with the token of ``<home>/sessions/system.token`` and exchange
length-prefixed frames with the capsule's accept/read/write/close calls. Every test starts from
a fresh worker (so a fresh session: stream ids from 1, no listener yet).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astrid_core import rpc
from astrid_core.rpc import RpcError
from astrid_core.session import (
    MAX_CLIENT_FRAME,
    HandshakeRejected,
    HandshakeRequest,
    HandshakeResponse,
    SessionToken,
    client_handshake,
    recv_frame,
    send_frame,
)
from tests.conftest import copy_capsule
from tests.harness import Child, Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
NO_LISTENER = "No CLI Socket Listener available in HostState"
MISMATCH = (
    "Protocol version mismatch (client=2, server=1). "
    "Restart the daemon with `astrid daemon restart`."
)

Call = tuple[str, Sequence[bytes | Fill]]


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


@dataclass
class Net:
    runtime: Runtime
    client: Client
    capsule: Path
    path: Path
    pool: ThreadPoolExecutor
    worker: Child | None = None

    @property
    def token(self) -> SessionToken:
        return SessionToken.read_from_file(self.runtime.home / "sessions" / "system.token")

    def restart(self) -> None:
        """A fresh session of the capsule (its old listeners and streams are closed)."""
        if self.worker is not None:
            self.worker.stop()
            self.runtime.workers.remove(self.worker)
        self.worker = self.runtime.start_worker(self.capsule, "syscaller")

    def run(self, calls: Sequence[Call], capsule: str = "syscaller") -> list[bytes | None]:
        arguments = json.loads(script_tool_args(encode_script(calls)))
        return decode_hex_output(self.client.call_tool(capsule, "run", arguments, timeout=60))

    def trap(self, calls: Sequence[Call], capsule: str = "syscaller") -> str:
        with pytest.raises(RpcError) as info:
            self.run(calls, capsule)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")

    def bind(self) -> None:
        assert self.run([("astrid_net_bind_unix", [b""])]) == [b"1"]

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(str(self.path))
        return sock

    def good_client(self, sock: socket.socket | None = None) -> Future[socket.socket]:
        """A client that connects (now) and does the handshake in a thread."""
        conn = sock or self.connect()
        token = self.token

        def handshake() -> socket.socket:
            client_handshake(conn, token, "astrid-tests/0")
            return conn

        return self.pool.submit(handshake)

    def raw_client(self, payload: bytes) -> socket.socket:
        """A client that connects and sends ``payload`` as its handshake frame."""
        sock = self.connect()
        send_frame(sock, payload)
        return sock

    def accept(self, expected: bytes = b"1") -> socket.socket:
        """A good client, accepted by the capsule as stream ``expected``."""
        pending = self.good_client()
        assert self.run([("astrid_net_accept", [b""])]) == [expected]
        return pending.result(timeout=20)


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="an", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def module_env(
    capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, short_dir: Path
) -> Iterator[Net]:
    base = tmp_path_factory.mktemp("net")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    path = short_dir / "sub" / "cli.sock"
    capsule = copy_capsule(
        capsules["syscaller"],
        base / "caps",
        extra_toml=f'[capabilities]\nnet_bind = ["unix://{path}"]\n',
    )
    nobind = copy_capsule(capsules["syscaller"], base / "caps", name="nobind")
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    runtime.start_worker(nobind)
    client = runtime.client()
    with ThreadPoolExecutor(max_workers=16) as pool:
        yield Net(runtime, client, capsule, path, pool)
    client.close()
    runtime.stop()


@pytest.fixture
def net(module_env: Net) -> Net:
    module_env.restart()
    return module_env


class Events:
    """A JSON-RPC subscriber to ``client.v1.*`` on sessions/system.sock."""

    def __init__(self, runtime: Runtime) -> None:
        self.client = runtime.client()
        self.client.request(rpc.Method.BUS_SUBSCRIBE, {"pattern": "client.v1.*"})

    def take(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``count`` messages (fewer if ``timeout`` passes)."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            try:
                payload = recv_frame(
                    self.client.sock, MAX_CLIENT_FRAME, timeout=deadline - time.monotonic()
                )
            except TimeoutError:
                break
            notification = json.loads(payload)
            assert notification["method"] == rpc.Method.BUS_MESSAGES
            messages += notification["params"]["envelope"]["messages"]
        return messages

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------------------------
# Binding


def test_the_config_names_the_path_the_capsule_may_bind(net: Net) -> None:
    assert net.run([("astrid_get_config", [b"ASTRID_SOCKET_PATH"])]) == [
        json.dumps(str(net.path)).encode()
    ]
    system_sock = net.runtime.home / "sessions" / "system.sock"
    assert net.run([("astrid_get_config", [b"ASTRID_SOCKET_PATH"])], capsule="nobind") == [
        json.dumps(str(system_sock)).encode()
    ]


def test_bind_listens_at_a_private_socket_until_the_session_ends(net: Net) -> None:
    assert net.run(
        [
            ("astrid_net_bind_unix", [str(net.path).encode()]),
            ("astrid_net_bind_unix", [f"unix://{net.path}".encode()]),
            ("astrid_net_bind_unix", [b""]),
        ]
    ) == [b"1", b"1", b"1"]
    info = os.lstat(net.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(net.path.parent).st_mode) == 0o700
    events = Events(net.runtime)
    conn = net.accept()
    assert net.worker is not None
    net.worker.stop()
    net.runtime.workers.remove(net.worker)
    net.worker = None
    # The session's end closes the stream (no disconnect event) and removes the socket file.
    assert conn.recv(1) == b""
    deadline = time.monotonic() + 10
    while os.path.lexists(net.path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.lexists(net.path)
    messages = events.take(2, timeout=1)
    events.close()
    assert [m["topic"] for m in messages] == ["client.v1.connected"]


def test_bind_is_gated_by_the_manifest(net: Net) -> None:
    assert net.trap([("astrid_net_bind_unix", [str(net.path).encode()])], capsule="nobind") == (
        "security denied net_bind: capsule 'nobind' denied: net_bind not declared in manifest"
    )
    assert net.trap([("astrid_net_bind_unix", [b"/tmp/elsewhere.sock"])]) == (
        "security denied net_bind: capsule 'syscaller' denied: socket path "
        "'/tmp/elsewhere.sock' not declared in manifest"
    )


def test_a_stale_socket_is_replaced_and_a_live_one_refused(net: Net) -> None:
    net.path.parent.mkdir(exist_ok=True)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(net.path))
    live.listen()
    try:
        assert net.trap([("astrid_net_bind_unix", [b""])]) == (
            f"cannot bind {net.path}: another listener is running on this socket"
        )
    finally:
        live.close()  # now stale: the file remains
    assert os.path.lexists(net.path)
    net.bind()
    net.accept().close()


# --------------------------------------------------------------------------------------------
# Accepting


def test_accept_and_poll_need_a_listener(net: Net) -> None:
    assert net.trap([("astrid_net_accept", [b""])]) == NO_LISTENER
    assert net.trap([("astrid_net_poll_accept", [b""])]) == NO_LISTENER
    net.bind()
    assert net.trap([("astrid_net_accept", [b"one"])]) == "Invalid listener handle"
    assert net.trap([("astrid_net_poll_accept", [b"2"])]) == "Listener handle not found"


def test_a_client_talks_to_the_capsule_in_frames(net: Net) -> None:
    events = Events(net.runtime)
    try:
        net.bind()
        conn = net.accept()
        send_frame(conn, b'{"hello":"capsule"}')
        assert net.run([("astrid_net_read", [b"1"])]) == [b'{"hello":"capsule"}']
        # Nothing more to read: an empty result after a short wait.
        assert net.run([("astrid_net_read", [b"1"])]) == [b""]
        assert net.run(
            [("astrid_net_write", [b"1", b"pong"]), ("astrid_net_write", [b"1", b""])]
        ) == [None, None]
        assert recv_frame(conn, MAX_CLIENT_FRAME, timeout=10) == b"pong"
        assert recv_frame(conn, MAX_CLIENT_FRAME, timeout=10) == b""
        # A bigger frame (syscaller results are capped at 1 MiB) arrives whole.
        big = os.urandom(512 * 1024)
        sender = net.pool.submit(send_frame, conn, big)
        assert net.run([("astrid_net_read", [b"1"])]) == [big]
        sender.result(timeout=20)
        # Close twice: the second is a silent no-op.
        assert net.run(
            [("astrid_net_close_stream", [b"1"]), ("astrid_net_close_stream", [b"1"])]
        ) == [None, None]
        assert conn.recv(1) == b""
        assert net.trap([("astrid_net_read", [b"1"])]) == "Stream handle not found"
        messages = events.take(3, timeout=3)
        assert [(m["topic"], m["payload"]) for m in messages] == [
            ("client.v1.connected", {"type": "connect"}),
            ("client.v1.disconnect", {"type": "disconnect", "reason": "stream_closed"}),
        ]
        assert messages[0]["source_id"] == messages[1]["source_id"]
    finally:
        events.close()


def test_failed_handshakes_are_refused_and_a_good_client_still_gets_through(net: Net) -> None:
    net.bind()
    token = net.token.to_hex()
    wrong = net.raw_client(
        HandshakeRequest(SessionToken.generate().to_hex(), 1, "t").to_json().encode()
    )
    version = net.raw_client(HandshakeRequest(token, 2, "t").to_json().encode())
    oversized = net.raw_client(b"x" * 4097)
    good = net.good_client()
    assert net.run([("astrid_net_accept", [b""])]) == [b"1"]
    good.result(timeout=20)
    reply = HandshakeResponse.from_json(recv_frame(wrong, 4096, timeout=10))
    assert (reply.status, reply.reason) == ("error", "authentication failed")
    reply = HandshakeResponse.from_json(recv_frame(version, 4096, timeout=10))
    assert (reply.status, reply.reason) == ("error", MISMATCH)
    try:
        assert oversized.recv(1) == b""  # dropped without a reply
    except ConnectionResetError:
        pass  # (it had unread bytes when the server closed it)
    # The rejected clients were really closed.
    assert wrong.recv(1) == b""
    assert version.recv(1) == b""


def test_client_handshake_sees_the_rejection(net: Net) -> None:
    net.bind()
    conn = net.connect()
    pending = net.pool.submit(client_handshake, conn, SessionToken.generate(), "t")
    polled = net.run([("astrid_net_poll_accept", [b""])])
    with pytest.raises(HandshakeRejected) as info:
        pending.result(timeout=20)
    assert str(info.value) == "Daemon rejected connection: authentication failed"
    assert polled == [b""]


def _nobody_python() -> str | None:
    """A Python interpreter that user 65534 can run, if this test runs as root."""
    if os.geteuid() != 0:
        return None
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            done = subprocess.run([candidate, "-c", "pass"], user=65534, cwd="/", check=False)
            if done.returncode == 0:
                return candidate
    return None


STRANGER = r"""
import json, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
request = json.dumps({"token": sys.argv[2], "protocol_version": 1, "client_version": "x"})
sock.sendall(struct.pack(">I", len(request)) + request.encode())
print("connected", flush=True)
sock.settimeout(30)
try:
    data = sock.recv(4096)
except ConnectionResetError:
    data = b""
print("reply" if data else "dropped", flush=True)
"""


def test_a_client_of_another_user_is_dropped(net: Net) -> None:
    python = _nobody_python()
    if python is None:
        pytest.skip("needs root and a Python interpreter user 65534 may run (setuid helper)")
    net.bind()
    # Let user 65534 reach the socket at all (the listener's own files are 0700/0600).
    os.chmod(net.path.parent.parent, 0o755)
    os.chmod(net.path.parent, 0o755)
    os.chmod(net.path, 0o666)
    stranger = subprocess.Popen(
        [python, "-c", STRANGER, str(net.path), net.token.to_hex()],
        user=65534,
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline().strip() == "connected"
        # The stranger is first in the queue, even with the right token; the next one wins.
        good = net.good_client()
        assert net.run([("astrid_net_accept", [b""])]) == [b"1"]
        good.result(timeout=20)
        assert stranger.stdout.readline().strip() == "dropped"
    finally:
        stranger.kill()
        stranger.wait()
        os.chmod(net.path.parent.parent, 0o700)


def test_eight_streams_at_most_and_ids_are_never_reused(net: Net) -> None:
    net.bind()
    pending = [net.good_client() for _ in range(8)]
    results = net.run([("astrid_net_accept", [b""])] * 8)
    assert results == [str(n).encode() for n in range(1, 9)]
    conns = [p.result(timeout=20) for p in pending]
    assert net.trap([("astrid_net_accept", [b""])]) == "connection cap reached (8/8)"
    ninth = net.good_client()
    assert net.run([("astrid_net_poll_accept", [b""])]) == [b""]  # at the cap: empty
    assert not ninth.done()
    assert net.run([("astrid_net_close_stream", [b"3"]), ("astrid_net_poll_accept", [b""])]) == [
        None,
        b"9",
    ]
    conns.append(ninth.result(timeout=20))
    assert conns[2].recv(1) == b""
    for conn in conns:
        conn.close()


def test_poll_accept_is_empty_without_a_client(net: Net) -> None:
    net.bind()
    start = time.monotonic()
    assert net.run([("astrid_net_poll_accept", [b""])] * 5) == [b""] * 5
    assert time.monotonic() - start < 5
    good = net.good_client()
    deadline = time.monotonic() + 10
    result = [b""]
    while result == [b""] and time.monotonic() < deadline:
        result = net.run([("astrid_net_poll_accept", [b"1"])])
    assert result == [b"1"]
    good.result(timeout=20)


# --------------------------------------------------------------------------------------------
# Streams


def test_stream_handles_are_checked(net: Net) -> None:
    for call in (
        ("astrid_net_read", [b"abc"]),
        ("astrid_net_write", [b"-1", b"x"]),
        ("astrid_net_close_stream", [b""]),
    ):
        assert net.trap([call]) == "Invalid stream handle"
    assert net.trap([("astrid_net_read", [b"5"])]) == "Stream handle not found"
    assert net.trap([("astrid_net_write", [b"5", b"x"])]) == "Stream handle not found"
    assert net.run([("astrid_net_close_stream", [b"5"])]) == [None]
    assert net.trap([("astrid_net_read", [Fill(0x31, 1025)])]) == (
        "memory allocation of 1025 bytes exceeds maximum allowed limit of 1024 bytes"
    )
    assert net.trap([("astrid_net_read", [b"\xff"])]) == (
        "invalid utf-8 sequence of 1 bytes from index 0"
    )


def test_read_error_texts(net: Net) -> None:
    net.bind()
    gone = net.accept(b"1")
    gone.close()
    assert net.trap([("astrid_net_read", [b"1"])]) == "socket read error: early eof"
    huge = net.accept(b"2")
    huge.sendall((10 * MiB + 1).to_bytes(4, "big"))
    assert net.trap([("astrid_net_read", [b"2"])]) == "Payload too large (max 10MB)"
    cut = net.accept(b"3")
    cut.sendall((10).to_bytes(4, "big") + b"123")
    cut.close()
    assert net.trap([("astrid_net_read", [b"3"])]) == "socket payload read error: early eof"
    # No disconnect happened on errors: the guest closes the streams.
    assert net.run([("astrid_net_close_stream", [n]) for n in (b"1", b"2", b"3")]) == [None] * 3
    huge.close()


def test_write_limits_and_errors(net: Net) -> None:
    net.bind()
    conn = net.accept()
    assert net.trap([("astrid_net_write", [b"1", Fill(0x61, 10 * MiB + 1)])]) == (
        "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
    )
    receiver = net.pool.submit(recv_frame, conn, MAX_CLIENT_FRAME, 20)
    assert net.run([("astrid_net_write", [b"1", Fill(0x61, 10 * MiB)])]) == [None]
    assert receiver.result(timeout=20) == b"a" * (10 * MiB)
    conn.close()
    time.sleep(0.05)
    assert net.trap([("astrid_net_write", [b"1", b"late"])]) == "Broken pipe (os error 32)"
