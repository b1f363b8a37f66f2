"""Unix-socket listeners and streams (broker/capsule_net.py, broker/syscalls/net.py).

The handlers run against a real kernel state (bus, home, session) in one event loop; clients are
real Unix-socket connections in the same loop. What needs another process (the worker, the
syscaller capsule, a peer of another UID) is in tests/integration/test_net_syscalls.py.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid_core.dirs import AstridHome
from astrid_core.manifest import parse_manifest
from astrid_core.session import (
    HandshakeRequest,
    HandshakeResponse,
    SessionToken,
    read_frame,
    write_frame,
)
from astrid_core.wire import HelloInfo
from broker import capsule_net
from broker.bus import Subscription
from broker.capsule_net import (
    CapsuleNet,
    allowed_socket_paths,
    os_error_text,
    socket_entry_path,
)
from broker.config import SOCKET_PATH_KEY, resolve_config
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.sessions import CapsuleSession
from broker.syscalls.net import (
    astrid_net_accept,
    astrid_net_bind_unix,
    astrid_net_close_stream,
    astrid_net_poll_accept,
    astrid_net_read,
    astrid_net_write,
)

MiB = 1024 * 1024
NO_LISTENER = "No CLI Socket Listener available in HostState"

MANIFEST = """
[package]
name = "{name}"
version = "0.1.0"

[[component]]
file = "x.wasm"

[capabilities]
net_bind = {net_bind}
"""


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="an", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class World:
    def __init__(self, root: Path, sockets: Path) -> None:
        self.root = root
        self.sockets = sockets
        home = AstridHome.from_path(root / "home")
        home.ensure()
        (root / "ws").mkdir()
        self.kernel = Kernel(home, root / "ws", KvStore(home.state_db_path()), b"k" * 32)
        self.token = SessionToken.generate()
        self.token.write_to_file(home.token_path())
        self._generation = 0

    @property
    def path(self) -> Path:
        """The socket path the default session may bind (a directory that does not exist yet)."""
        return self.sockets / "sub" / "cli.sock"

    def session(self, net_bind: list[str] | None = None, name: str = "cap") -> CapsuleSession:
        self._generation += 1
        entries = [f"unix://{self.path}"] if net_bind is None else net_bind
        manifest = parse_manifest(
            MANIFEST.format(name=name, net_bind=json.dumps(entries)),
            self.root / name / "Capsule.toml",
        )
        return CapsuleSession(
            kernel=self.kernel,
            identity=f"{name}-{self._generation}".encode(),
            info=HelloInfo(name, str(self.root / name), self._generation, 1, False),
            manifest=manifest,
            config={},
            gate=CapabilityGate(name, manifest.capabilities, self.root / "ws"),
            log=self.kernel.capsule_log(name),
            global_root=None,
        )


@pytest.fixture
def world(tmp_path: Path, short_dir: Path) -> Iterator[World]:
    w = World(tmp_path, short_dir)
    yield w
    w.kernel.close()


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with asyncio.timeout(30):
            return await body()

    return asyncio.run(main())


async def trap(awaitable: Awaitable[Any]) -> str:
    with pytest.raises(SyscallError) as info:
        await awaitable
    return info.value.text


def sync_trap(call: Callable[[], Any]) -> str:
    with pytest.raises(SyscallError) as info:
        call()
    return info.value.text


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(path: Path) -> Conn:
    return await asyncio.open_unix_connection(str(path))


async def hello(
    conn: Conn, token: str, version: int = 1, raw: bytes | None = None
) -> HandshakeResponse | None:
    """Send a handshake; the server's answer, or None if it closed the connection."""
    reader, writer = conn
    if raw is None:
        raw = HandshakeRequest(token, version, "tests/0").to_json().encode()
    try:
        await write_frame(writer, raw)
        return HandshakeResponse.from_json(await read_frame(reader, 4096, timeout=10))
    except ConnectionError:
        return None


async def client(world: World, path: Path | None = None) -> Conn:
    conn = await connect(path or world.path)
    response = await hello(conn, world.token.to_hex())
    assert response is not None and response.is_ok()
    return conn


async def accepted(world: World, session: CapsuleSession) -> tuple[bytes, Conn]:
    """Accept one good client; returns the stream id and the client's connection."""
    task = asyncio.ensure_future(astrid_net_accept(session, b""))
    conn = await client(world)
    return await task, conn


def events(world: World) -> Subscription:
    return world.kernel.bus.subscribe("client.v1.*")


# --------------------------------------------------------------------------------------------
# Which paths a capsule may bind


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("unix:///run/astrid/cli.sock", "/run/astrid/cli.sock"),
        ("/run/astrid/cli.sock", "/run/astrid/cli.sock"),
        ("unix:///run//astrid/./cli.sock/", "/run/astrid/cli.sock"),
        ("sessions/cli.sock", "/home/a/.astrid/sessions/cli.sock"),
        ("unix://sessions/cli.sock", "/home/a/.astrid/sessions/cli.sock"),
        ("", None),
        ("unix://", None),
        ("unix:///", None),
        ("tcp://127.0.0.1:80", None),
        ("unix:///run/../etc/cli.sock", None),
        ("../cli.sock", None),
        ("unix:///run/a\0b", None),
    ],
)
def test_socket_entry_path(entry: str, expected: str | None) -> None:
    path = socket_entry_path(entry, Path("/home/a/.astrid"))
    assert (None if path is None else str(path)) == expected


def test_allowed_socket_paths_keep_manifest_order_without_duplicates() -> None:
    home = Path("/h")
    entries = ["", "b.sock", "unix:///x/a.sock", "/h/b.sock", "tcp://x"]
    assert allowed_socket_paths(entries, home) == (Path("/h/b.sock"), Path("/x/a.sock"))


def test_astrid_socket_path_is_the_path_a_net_bind_capsule_may_bind(world: World) -> None:
    home = world.kernel.home
    kv = world.kernel.kv

    def config(net_bind: list[str], **kw: Any) -> str:
        manifest = world.session(net_bind).manifest
        return resolve_config(manifest, kv, "capsule:cap", home.socket_path(), **kw)[
            SOCKET_PATH_KEY
        ]

    assert config([]) == str(home.socket_path())
    assert config([""]) == str(home.socket_path())
    assert config(["tcp://x", "unix:///run/x.sock", "y.sock"]) == "/run/x.sock"
    assert config(["sessions/cli.sock"]) == str(home.root() / "sessions" / "cli.sock")
    assert config(["cli.sock"], home_root=Path("/elsewhere")) == "/elsewhere/cli.sock"


def test_os_error_text_reads_like_rust() -> None:
    assert os_error_text(BrokenPipeError(errno.EPIPE, "x")) == "Broken pipe (os error 32)"
    assert os_error_text(ConnectionResetError("Connection lost")) == "Connection lost"


# --------------------------------------------------------------------------------------------
# Binding


def test_bind_requires_a_net_bind_entry(world: World) -> None:
    denied = "security denied net_bind: capsule 'cap' denied: net_bind not declared in manifest"
    assert run(lambda: trap(astrid_net_bind_unix(world.session([]), b""))) == denied
    assert run(lambda: trap(astrid_net_bind_unix(world.session([""]), b"/tmp/x.sock"))) == denied


@pytest.mark.parametrize(
    "requested", ["/tmp/other.sock", "unix:///tmp/other.sock", "x/../cli.sock", "tcp://a:1"]
)
def test_bind_refuses_paths_the_manifest_does_not_name(world: World, requested: str) -> None:
    text = run(lambda: trap(astrid_net_bind_unix(world.session(), requested.encode())))
    assert text == (
        f"security denied net_bind: capsule 'cap' denied: socket path '{requested}' "
        "not declared in manifest"
    )


def test_bind_checks_its_argument(world: World) -> None:
    session = world.session()
    assert run(lambda: trap(astrid_net_bind_unix(session, b"x" * 4097))) == (
        "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes"
    )
    assert run(lambda: trap(astrid_net_bind_unix(session, b"\xff"))) == (
        "invalid utf-8 sequence of 1 bytes from index 0"
    )


def test_bind_creates_a_private_socket_and_returns_a_handle(world: World) -> None:
    second = world.sockets / "two.sock"
    session = world.session([f"unix://{world.path}", str(second)])

    async def body() -> None:
        assert await astrid_net_bind_unix(session, str(world.path).encode()) == b"1"
        info = os.lstat(world.path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(world.path.parent).st_mode) == 0o700
        # The same path again, or the default (the first entry), is the same listener.
        assert await astrid_net_bind_unix(session, f"unix://{world.path}".encode()) == b"1"
        assert await astrid_net_bind_unix(session, b"") == b"1"
        assert await astrid_net_bind_unix(session, str(second).encode()) == b"2"
        session.close_extensions()

    old_umask = os.umask(0o022)
    try:
        run(body)
    finally:
        os.umask(old_umask)
    # The session's end removed both socket files.
    assert not os.path.lexists(world.path)
    assert not os.path.lexists(second)


def test_bind_refuses_a_path_over_the_platform_limit(world: World) -> None:
    path = "/tmp/" + "x" * 103  # 108 bytes
    text = run(lambda: trap(astrid_net_bind_unix(world.session([path]), b"")))
    assert text == (
        f"socket path {path} is 108 bytes long, exceeding the platform limit of 107 bytes"
    )


def test_bind_replaces_a_stale_socket(world: World) -> None:
    world.path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(world.path))
    stale.close()  # the file stays, nobody listens
    session = world.session()

    async def body() -> None:
        assert await astrid_net_bind_unix(session, b"") == b"1"
        _, conn = await accepted(world, session)
        conn[1].close()
        session.close_extensions()

    run(body)


def test_bind_refuses_a_live_socket(world: World) -> None:
    world.path.parent.mkdir()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(world.path))
    live.listen()
    try:
        text = run(lambda: trap(astrid_net_bind_unix(world.session(), b"")))
    finally:
        live.close()
    assert text == f"cannot bind {world.path}: another listener is running on this socket"
    assert stat.S_ISSOCK(os.lstat(world.path).st_mode)  # left alone


def test_bind_removes_a_symlink_without_following_it(world: World) -> None:
    world.path.parent.mkdir()
    target = world.sockets / "precious"
    target.write_text("keep me")
    target.chmod(0o644)
    world.path.symlink_to(target)
    session = world.session()

    async def body() -> None:
        assert await astrid_net_bind_unix(session, b"") == b"1"
        assert stat.S_ISSOCK(os.lstat(world.path).st_mode)
        session.close_extensions()

    run(body)
    assert target.read_text() == "keep me"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_bind_refuses_a_path_that_is_not_a_socket(world: World) -> None:
    world.path.parent.mkdir()
    world.path.write_text("data")
    text = run(lambda: trap(astrid_net_bind_unix(world.session(), b"")))
    assert text == f"cannot bind {world.path}: the path exists and is not a socket"
    assert world.path.read_text() == "data"


def test_bind_reports_a_directory_it_cannot_create(world: World) -> None:
    (world.sockets / "sub").write_text("a file where a directory should be")
    text = run(lambda: trap(astrid_net_bind_unix(world.session(), b"")))
    assert text == f"cannot bind {world.path}: Not a directory (os error 20)"
    blocked = world.sockets / "ro"
    blocked.mkdir(mode=0o500)
    path = blocked / "new" / "cli.sock"
    if os.geteuid() == 0:
        return  # root creates directories anywhere
    text = run(lambda: trap(astrid_net_bind_unix(world.session([str(path)]), b"")))
    assert text == f"cannot create socket directory {path.parent}: Permission denied (os error 13)"


def test_a_relative_entry_binds_under_astrid_home(world: World) -> None:
    session = world.session(["sessions/c.sock"])
    expected = world.kernel.home.sessions_dir() / "c.sock"
    if len(os.fsencode(expected)) > capsule_net.MAX_SOCKET_PATH:
        pytest.skip("the temporary ASTRID_HOME is too deep for a socket path")

    async def body() -> None:
        assert await astrid_net_bind_unix(session, b"sessions/c.sock") == b"1"
        assert stat.S_ISSOCK(os.lstat(expected).st_mode)
        session.close_extensions()

    run(body)


# --------------------------------------------------------------------------------------------
# Accepting


def test_accept_and_poll_need_a_listener(world: World) -> None:
    session = world.session()
    assert run(lambda: trap(astrid_net_accept(session, b""))) == NO_LISTENER
    assert run(lambda: trap(astrid_net_poll_accept(session, b""))) == NO_LISTENER


def test_listener_handles_are_checked(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        for bad in (b"x", b"-1", b"1.0", b" 1", str(2**64).encode()):
            assert await trap(astrid_net_accept(session, bad)) == "Invalid listener handle"
            assert await trap(astrid_net_poll_accept(session, bad)) == "Invalid listener handle"
        assert await trap(astrid_net_accept(session, b"2")) == "Listener handle not found"
        assert await trap(astrid_net_poll_accept(session, b"2")) == "Listener handle not found"
        assert await trap(astrid_net_accept(session, b"\xc3")) == (
            "incomplete utf-8 byte sequence from index 0"
        )
        assert await trap(astrid_net_accept(session, b"1" * 1025)) == (
            "memory allocation of 1025 bytes exceeds maximum allowed limit of 1024 bytes"
        )
        assert await astrid_net_poll_accept(session, b"+1") == b""
        session.close_extensions()

    run(body)


def test_accept_authenticates_and_announces_the_client(world: World) -> None:
    session = world.session()
    seen = events(world)

    async def body() -> None:
        assert await astrid_net_bind_unix(session, b"") == b"1"
        task = asyncio.ensure_future(astrid_net_accept(session, b"1"))
        conn = await connect(world.path)
        response = await hello(conn, world.token.to_hex())
        assert response is not None
        assert response.to_json() == (
            '{"status":"ok","protocol_version":1,"server_version":"0.2.0"}'
        )
        assert await task == b"1"
        conn[1].close()
        session.close_extensions()

    run(body)
    messages = seen.drain().messages
    assert [(m.topic, m.payload, m.source_id) for m in messages] == [
        ("client.v1.connected", {"type": "connect"}, session.uuid)
    ]


def test_failed_handshakes_are_dropped_and_accepting_continues(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        task = asyncio.ensure_future(astrid_net_accept(session, b""))
        wrong = await hello(await connect(world.path), SessionToken.generate().to_hex())
        assert wrong is not None and wrong.reason == "authentication failed"
        malformed = await hello(await connect(world.path), "zz" * 32)
        assert malformed is not None and malformed.reason == "authentication failed"
        version = await hello(await connect(world.path), world.token.to_hex(), version=2)
        assert version is not None and version.reason == (
            "Protocol version mismatch (client=2, server=1). "
            "Restart the daemon with `astrid daemon restart`."
        )
        assert await hello(await connect(world.path), "", raw=b"x" * 4097) is None
        assert await hello(await connect(world.path), "", raw=b"not json") is None
        assert not task.done()
        good = await client(world)
        assert await task == b"1"
        good[1].close()
        session.close_extensions()

    run(body)


def test_a_peer_of_another_uid_is_dropped_before_the_handshake(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UID check, with SO_PEERCRED reporting another user for the first peer."""
    session = world.session()
    uids = [os.geteuid() + 1]
    real = capsule_net.peer_uid

    def fake_peer_uid(sock: socket.socket) -> int:
        assert real(sock) == os.geteuid()  # a real connected socket
        return uids.pop() if uids else real(sock)

    monkeypatch.setattr(capsule_net, "peer_uid", fake_peer_uid)

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        task = asyncio.ensure_future(astrid_net_accept(session, b""))
        stranger = await connect(world.path)
        # Dropped silently: no handshake reply even to the right token.
        assert await hello(stranger, world.token.to_hex()) is None
        assert not task.done()
        good = await client(world)
        assert await task == b"1"
        good[1].close()
        session.close_extensions()

    run(body)


def test_poll_accept_drops_a_stranger_with_an_empty_result(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = world.session()
    monkeypatch.setattr(capsule_net, "peer_uid", lambda _sock: os.geteuid() + 1)

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        conn = await connect(world.path)
        assert await astrid_net_poll_accept(session, b"") == b""
        assert await conn[0].read() == b""  # closed without a word
        session.close_extensions()

    run(body)


def test_poll_accept_is_empty_without_a_client_and_waits_briefly(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await astrid_net_poll_accept(session, b"") == b""
        assert loop.time() - start < 1.0
        # A pending client with a good handshake is accepted by one poll.
        conn = await connect(world.path)
        handshake = asyncio.ensure_future(hello(conn, world.token.to_hex()))
        assert await astrid_net_poll_accept(session, b"") == b"1"
        response = await handshake
        assert response is not None and response.is_ok()
        # A failed handshake: empty result.
        bad = await connect(world.path)
        failing = asyncio.ensure_future(hello(bad, SessionToken.generate().to_hex()))
        assert await astrid_net_poll_accept(session, b"") == b""
        assert (await failing) is not None
        session.close_extensions()

    run(body)


def test_eight_streams_at_most(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        conns = []
        for expected in range(1, 9):
            stream_id, conn = await accepted(world, session)
            assert stream_id == str(expected).encode()
            conns.append(conn)
        assert await trap(astrid_net_accept(session, b"")) == "connection cap reached (8/8)"
        # A waiting client is not even looked at by poll_accept at the cap.
        ninth = await connect(world.path)
        handshake = asyncio.ensure_future(hello(ninth, world.token.to_hex()))
        assert await astrid_net_poll_accept(session, b"") == b""
        assert not handshake.done()
        astrid_net_close_stream(session, b"3")
        assert await astrid_net_poll_accept(session, b"") == b"9"  # ids are never reused
        assert (await handshake) is not None
        session.close_extensions()

    run(body)


def test_the_stream_id_space_can_run_out(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        session.extension(CapsuleNet)._next_stream = 2**64 - 1
        stream_id, _conn = await accepted(world, session)
        assert stream_id == str(2**64 - 1).encode()
        task = asyncio.ensure_future(astrid_net_accept(session, b""))
        other = await client(world)
        assert await trap(task) == "stream handle ID space exhausted"
        assert await other[0].read() == b""  # closed
        session.close_extensions()

    run(body)


def test_accept_needs_the_session_token(world: World) -> None:
    session = world.session()
    world.kernel.home.token_path().unlink()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        task = asyncio.ensure_future(astrid_net_accept(session, b""))
        pending = await connect(world.path)
        assert await trap(task) == (
            "session token unavailable: No such file or directory (os error 2)"
        )
        assert await pending[0].read() == b""
        session.close_extensions()

    run(body)


class FailingSocket:
    """A listening socket whose accept fails like a process out of file descriptors."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real

    def accept(self) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def close(self) -> None:
        self.real.close()


def test_accept_errors_trap(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        listener = session.extension(CapsuleNet).listener(None)
        listener.sock = FailingSocket(listener.sock)  # type: ignore[assignment]
        assert await trap(astrid_net_accept(session, b"")) == ("Too many open files (os error 24)")
        assert await trap(astrid_net_poll_accept(session, b"")) == (
            "accept error: Too many open files (os error 24)"
        )
        session.close_extensions()

    run(body)


def test_a_blocked_accept_ends_with_capsule_unloading(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        waiting = asyncio.ensure_future(astrid_net_accept(session, b""))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        session.close_extensions()
        assert await trap(waiting) == "capsule unloading"

    run(body)
    assert not os.path.lexists(world.path)


def test_a_handshake_in_progress_ends_with_capsule_unloading(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        accepting = asyncio.ensure_future(astrid_net_accept(session, b""))
        silent = await connect(world.path)  # connects, never sends its handshake
        await asyncio.sleep(0.05)
        session.close_extensions()
        assert await trap(accepting) == "capsule unloading"
        assert await silent[0].read() == b""

        other = world.session()
        await astrid_net_bind_unix(other, b"")
        polling = asyncio.ensure_future(astrid_net_poll_accept(other, b""))
        pending = await connect(world.path)
        await asyncio.sleep(0.05)
        other.close_extensions()
        assert await polling == b""
        assert await pending[0].read() == b""

    run(body)


# --------------------------------------------------------------------------------------------
# Streams


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("syscall", ["read", "write", "close"])
def test_stream_handles_are_checked(world: World, syscall: str) -> None:
    session = world.session()

    async def call(handle: bytes) -> Any:
        if syscall == "read":
            return await astrid_net_read(session, handle)
        if syscall == "write":
            return await astrid_net_write(session, handle, b"x")
        return astrid_net_close_stream(session, handle)

    async def body() -> None:
        for bad in (b"", b"x", b"-1", b"1 ", b"0x1", str(2**64).encode()):
            assert await trap(call(bad)) == "Invalid stream handle"
        assert await trap(call(b"\xff\xfe")) == "invalid utf-8 sequence of 1 bytes from index 0"
        assert await trap(call(b"7" * 1025)) == (
            "memory allocation of 1025 bytes exceeds maximum allowed limit of 1024 bytes"
        )
        if syscall == "close":
            assert await call(b"7") is None  # unknown: a silent no-op
            assert await call(b"+7") is None
        else:
            assert await trap(call(b"7")) == "Stream handle not found"
            assert await trap(call(b"+7")) == "Stream handle not found"

    run(body)


def test_read_returns_frames_and_nothing_when_no_data(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        _, (_, writer) = await accepted(world, session)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await astrid_net_read(session, b"1") == b""
        assert 0.04 <= loop.time() - start < 1.0
        writer.write(frame(b"hello") + frame(b"") + frame(b'{"x":1}'))
        await writer.drain()
        assert await astrid_net_read(session, b"1") == b"hello"
        assert await astrid_net_read(session, b"1") == b""  # a zero-length frame
        assert await astrid_net_read(session, b"1") == b'{"x":1}'
        # A prefix arriving in pieces is not lost between reads.
        writer.write(frame(b"split")[:2])
        await writer.drain()
        assert await astrid_net_read(session, b"1") == b""
        writer.write(frame(b"split")[2:])
        await writer.drain()
        assert await astrid_net_read(session, b"1") == b"split"
        big = os.urandom(3 * MiB)
        writer.write(frame(big))
        assert await astrid_net_read(session, b"1") == big
        session.close_extensions()

    run(body)


def test_read_errors(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    session = world.session()
    monkeypatch.setattr(capsule_net, "PAYLOAD_TIMEOUT_BASE_MS", 100)

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        # Oversized frame.
        _, (_, w1) = await accepted(world, session)
        w1.write((10 * MiB + 1).to_bytes(4, "big"))
        await w1.drain()
        assert await trap(astrid_net_read(session, b"1")) == "Payload too large (max 10MB)"
        # Exactly 10 MiB is allowed.
        w1.write(frame(b"z" * (10 * MiB)))
        assert await astrid_net_read(session, b"1") == b"z" * (10 * MiB)
        # A payload that does not come in time.
        w1.write((10).to_bytes(4, "big") + b"12345")
        await w1.drain()
        assert await trap(astrid_net_read(session, b"1")) == "Payload read timed out"
        # The peer goes away in the middle of a payload, then between frames.
        _, (_, w2) = await accepted(world, session)
        w2.write((10).to_bytes(4, "big") + b"123")
        await w2.drain()
        w2.close()
        assert await trap(astrid_net_read(session, b"2")) == (
            "socket payload read error: early eof"
        )
        assert await trap(astrid_net_read(session, b"2")) == "socket read error: early eof"
        _, (_, w3) = await accepted(world, session)
        w3.write(b"\x00\x00")
        w3.close()
        assert await trap(astrid_net_read(session, b"3")) == "socket read error: early eof"
        session.close_extensions()

    run(body)


def test_write_sends_one_frame(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        _, (reader, _writer) = await accepted(world, session)
        assert await astrid_net_write(session, b"1", b"pong") is None
        assert await astrid_net_write(session, b"1", b"") is None
        assert await reader.readexactly(8 + 4) == frame(b"pong") + frame(b"")
        big = b"b" * (10 * MiB)
        writing = asyncio.ensure_future(astrid_net_write(session, b"1", big))
        assert await reader.readexactly(4 + len(big)) == frame(big)
        await writing
        assert await trap(astrid_net_write(session, b"1", b"b" * (10 * MiB + 1))) == (
            "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
        )
        session.close_extensions()

    run(body)


def test_write_to_a_departed_peer_traps_with_the_os_error(world: World) -> None:
    session = world.session()

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        _, (_reader, writer) = await accepted(world, session)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        texts = set()
        for _ in range(3):
            with pytest.raises(SyscallError) as info:
                await astrid_net_write(session, b"1", b"x")
            texts.add(info.value.text)
        assert texts == {"Broken pipe (os error 32)"}
        session.close_extensions()

    run(body)


def test_close_is_idempotent_and_announces_the_disconnect(world: World) -> None:
    session = world.session()
    seen = events(world)

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        _, (reader, _writer) = await accepted(world, session)
        assert astrid_net_close_stream(session, b"1") is None
        assert await reader.read() == b""  # the peer sees the end
        assert astrid_net_close_stream(session, b"1") is None
        assert await trap(astrid_net_read(session, b"1")) == "Stream handle not found"
        session.close_extensions()

    run(body)
    assert [(m.topic, m.payload, m.source_id) for m in seen.drain().messages] == [
        ("client.v1.connected", {"type": "connect"}, session.uuid),
        ("client.v1.disconnect", {"type": "disconnect", "reason": "stream_closed"}, session.uuid),
    ]


def test_the_end_of_the_session_closes_streams_silently(world: World) -> None:
    session = world.session()
    seen = events(world)

    async def body() -> None:
        await astrid_net_bind_unix(session, b"")
        _, (r1, w1) = await accepted(world, session)
        _, (r2, w2) = await accepted(world, session)
        reading = asyncio.ensure_future(astrid_net_read(session, b"1"))
        # A write the peer never reads blocks once the socket buffers are full.
        writing = asyncio.ensure_future(astrid_net_write(session, b"2", b"w" * (8 * MiB)))
        await asyncio.sleep(0.02)
        assert not writing.done()
        session.close_extensions()
        assert await reading == b""
        assert await trap(writing) == "capsule unloading"
        assert await r1.read() == b""
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await r2.readexactly(16 * MiB)
        # Nothing is left: handles are gone, a new bind of the path works.
        assert await trap(astrid_net_read(session, b"1")) == "Stream handle not found"
        w1.close()
        w2.close()

    run(body)
    assert [m.topic for m in seen.drain().messages] == ["client.v1.connected"] * 2
    assert not os.path.lexists(world.path)
