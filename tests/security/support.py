"""The attacker's toolkit shared by the security suite and the fuzz tests.

* :class:`World`: one real broker in a temporary ``ASTRID_HOME`` with copies of the syscaller
  capsule under chosen names and grants, and an operator client on ``sessions/system.sock``.
* :class:`Caller`: runs syscall scripts in one of those capsules and returns results or the trap
  text the caller sees.
* :class:`Peer`: a foreign ZeroMQ DEALER on the broker's worker socket (no worker behind it).
* :func:`raw_connect`, :func:`read_until_closed`, :func:`split_frames`: a raw client on the
  broker's Unix socket.
* :func:`snapshot` / :func:`read_namespace`: what "leaves no trace" is checked against.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from astrid_core import wire
from astrid_core.rpc import ErrorCode, RpcError
from astrid_core.wire import BrokerFrame, HelloInfo, Reply, Status
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

Call = tuple[str, Sequence[bytes | Fill]]

TRAP_PREFIX = "astrid_tool_call failed: "


class Trap(Exception):
    """A script that trapped; ``text`` is what the guest's caller sees."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass
class Caller:
    """Runs syscaller scripts in capsule ``name``."""

    client: Client
    name: str

    def run(self, calls: Sequence[Call], timeout: float = 60.0) -> list[bytes | None]:
        """The results of the script; raises :class:`Trap` when it trapped."""
        arguments = json.loads(script_tool_args(encode_script(calls)))
        try:
            output = self.client.call_tool(self.name, "run", arguments, timeout=timeout)
        except RpcError as exc:
            if exc.code == ErrorCode.TRAP and exc.message.startswith(TRAP_PREFIX):
                raise Trap(exc.message.removeprefix(TRAP_PREFIX)) from None
            raise
        return decode_hex_output(output)

    def one(self, call: Call) -> bytes | None:
        return self.run([call])[0]

    def trap(self, calls: Sequence[Call]) -> str:
        with pytest.raises(Trap) as info:
            self.run(calls)
        return info.value.text


@dataclass
class World:
    runtime: Runtime
    client: Client
    base: Path
    callers: dict[str, Caller] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.runtime.home

    @property
    def workspace(self) -> Path:
        """The canonical workspace (the physical paths the broker reports)."""
        return Path(os.path.realpath(self.runtime.workspace))

    def __getitem__(self, name: str) -> Caller:
        return self.callers[name]

    def add(self, source: Path, name: str, toml: str = "") -> Caller:
        self.runtime.start_worker(
            copy_capsule(source, self.base / "caps", name=name, extra_toml=toml)
        )
        caller = self.callers[name] = Caller(self.client, name)
        return caller


def start_world(
    base: Path,
    syscaller: Path,
    capsules: Mapping[str, str],
    env: Mapping[str, str | None] | None = None,
) -> World:
    """A broker (with ``env`` applied to the environment it inherits: None removes a name)
    and one syscaller copy per ``capsules`` entry (name → extra manifest TOML)."""
    home, workspace = base / "home", base / "ws"
    home.mkdir(exist_ok=True)
    workspace.mkdir(exist_ok=True)
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        runtime.start_broker()
    try:
        world = World(runtime, runtime.client(), base)
        for name, toml in capsules.items():
            world.add(syscaller, name, toml)
    except BaseException:
        runtime.stop()
        raise
    return world


def stop_world(world: World) -> None:
    world.client.close()
    world.runtime.stop()


def world_fixture(
    base: Path,
    syscaller: Path,
    capsules: Mapping[str, str],
    env: Mapping[str, str | None] | None = None,
) -> Iterator[World]:
    world = start_world(base, syscaller, capsules, env)
    try:
        yield world
    finally:
        stop_world(world)


def broker_alive(runtime: Runtime) -> bool:
    return runtime.broker is not None and runtime.broker.process.poll() is None


# --------------------------------------------------------------------------------------------
# No trace


def snapshot(
    root: Path, skip: Sequence[str] = ()
) -> dict[str, tuple[str, bytes | str | int | None]]:
    """Every entry under ``root`` (symlinks not followed) with its kind and content, link
    target or mode; ``skip`` names top-level entries left out."""
    entries: dict[str, tuple[str, bytes | str | int | None]] = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        names = dirnames + filenames
        if directory == str(root):
            dirnames[:] = [name for name in dirnames if name not in skip]
            names = [name for name in names if name not in skip]
        for name in names:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = ("dir", stat.S_IMODE(info.st_mode))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    entries[relative] = ("file", handle.read())
            else:
                entries[relative] = ("other", stat.S_IFMT(info.st_mode))
    return entries


def read_namespace(home: Path, namespace: str) -> dict[bytes, bytes]:
    """Every key and value of one KV namespace, read from ``state.db`` directly."""
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, value FROM kv WHERE ns = ?", (namespace,)).fetchall()
    finally:
        db.close()
    return {bytes(key): bytes(value) for key, value in rows}


def namespaces(home: Path) -> set[str]:
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT DISTINCT ns FROM kv")}
    finally:
        db.close()


# --------------------------------------------------------------------------------------------
# The worker socket, from a foreign process


class Peer:
    """A raw DEALER connected to the broker's ROUTER, outside any worker."""

    def __init__(self, endpoint: str, routing_id: bytes | None = None) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.socket.setsockopt(zmq.ROUTING_ID, routing_id)
        self.socket.connect(endpoint)

    def send(self, raw: bytes) -> None:
        self.socket.send(raw)

    def receive_frame(self, timeout_ms: int = 3000) -> BrokerFrame | None:
        if not self.socket.poll(timeout_ms):
            return None
        return wire.decode_broker_frame(self.socket.recv())

    def receive(self, timeout_ms: int = 3000) -> Reply | None:
        frame = self.receive_frame(timeout_ms)
        assert frame is None or isinstance(frame, Reply), frame
        return frame

    def exchange(self, raw: bytes, timeout_ms: int = 5000) -> Reply:
        self.send(raw)
        reply = self.receive(timeout_ms)
        assert reply is not None, "the broker did not answer"
        return reply

    def hello(self, runtime: Runtime, info: HelloInfo) -> dict[str, Any]:
        """Authenticate with the real master key (as a worker started by the supervisor
        would); a due lifecycle hook is answered at once. Returns the welcome."""
        secret = wire.derive_worker_secret(runtime.master_key, info)
        reply = self.exchange(wire.encode_hello(1, info, secret))
        assert reply.status == Status.OK, reply
        assert isinstance(reply.payload, bytes)
        welcome = wire.decode_welcome(reply.payload)
        lifecycle = welcome.get("lifecycle")
        if lifecycle is not None:
            self.send(wire.encode_answer(int(lifecycle["seq"]), True, b""))
        return welcome

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def hello_info(
    capsule_dir: Path, name: str, generation: int = 1, pid: int | None = None
) -> HelloInfo:
    return HelloInfo(name, str(capsule_dir), generation, os.getpid() if pid is None else pid, False)


# --------------------------------------------------------------------------------------------
# The client socket, raw


def raw_connect(home: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(home / "sessions" / "system.sock"))
    return sock


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def read_until_closed(sock: socket.socket, timeout: float = 15.0, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection (a hang fails the test)."""
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) <= limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(
                f"the broker neither answered nor closed within {timeout} s"
            ) from None
        if not chunk:
            break
        data += chunk
    return bytes(data)


def split_frames(data: bytes) -> list[bytes]:
    """The complete length-prefixed frames in ``data`` (a truncated tail is an error)."""
    frames: list[bytes] = []
    position = 0
    while position < len(data):
        assert len(data) - position >= 4, f"truncated frame header in {data!r}"
        (size,) = struct.unpack_from(">I", data, position)
        position += 4
        assert len(data) - position >= size, f"truncated frame in {data!r}"
        frames.append(data[position : position + size])
        position += size
    return frames
