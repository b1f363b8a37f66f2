"""Start a real broker and real workers without the supervisor, for focused integration tests.

Each process is a fresh interpreter running the real entry point; its launch record (secrets
included) arrives on stdin, never through the environment, like the supervisor's fork hand-over.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from astrid_core import rpc
from astrid_core.launch import Event, StatusEvent
from astrid_core.session import (
    MAX_CLIENT_FRAME,
    SessionToken,
    client_handshake,
    recv_frame,
    send_frame,
)
from astrid_core.wire import HelloInfo, derive_worker_secret

REPO = Path(__file__).resolve().parent.parent

_LAUNCHER = r"""
import ctypes, os, signal, sys, msgpack
# Die with the test process, even when pytest is killed before its fixtures clean up.
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() == 1:
    sys.exit(1)
from astrid_core.launch import BrokerLaunch, WorkerLaunch, resolve_entry
kind, fields = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
launch = (BrokerLaunch if kind == "broker" else WorkerLaunch)(**fields)
resolve_entry("broker.main:run" if kind == "broker" else "worker.main:run")(launch)
"""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    status_fd: int
    events: list[StatusEvent] = field(default_factory=list)
    _buffer: bytes = b""

    def read_events(self, timeout: float) -> list[StatusEvent]:
        """Collect status events until ``timeout`` passes without a new one or the pipe ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select(
                [self.status_fd], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                break
            chunk = os.read(self.status_fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                self.events.append(StatusEvent.decode(line))
        return self.events

    def wait_for(self, event: Event, timeout: float = 15.0) -> StatusEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for seen in self.events:
                if seen.event == event:
                    return seen
                if seen.event == Event.FAILED and event != Event.FAILED:
                    raise AssertionError(f"{self.name} failed: {seen.reason}")
            if self.process.poll() is not None and not self.read_events(0.05):
                break
            self.read_events(0.1)
        raise AssertionError(f"{self.name}: no {event} event; saw {self.events}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self.status_fd)


def _spawn(kind: str, fields: dict[str, Any], log_path: Path, name: str) -> Child:
    read_fd, write_fd = os.pipe()
    fields = dict(fields, status_fd=write_fd, supervisor_pid=os.getpid())
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            pass_fds=[write_fd],
            cwd=REPO,
        )
    assert process.stdin is not None
    process.stdin.write(msgpack.packb([kind, fields]))
    process.stdin.close()
    os.close(write_fd)
    return Child(name, process, read_fd)


@dataclass
class Runtime:
    """A broker plus the workers started against it, in a temporary ``ASTRID_HOME``."""

    home: Path
    workspace: Path
    endpoint: str
    master_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    broker: Child | None = None
    workers: list[Child] = field(default_factory=list)
    generations: dict[str, int] = field(default_factory=dict)

    def start_broker(self) -> Child:
        self.broker = _spawn(
            "broker",
            {
                "home": str(self.home),
                "workspace": str(self.workspace),
                "endpoint": self.endpoint,
                "master_key": self.master_key,
            },
            self.home / "broker.out",
            "broker",
        )
        self.broker.wait_for(Event.READY)
        return self.broker

    def start_worker(
        self, capsule_dir: Path, name: str | None = None, wait: Event | None = Event.READY
    ) -> Child:
        name = name or capsule_dir.name
        generation = self.generations.get(name, 0) + 1
        self.generations[name] = generation
        info = HelloInfo(name, str(capsule_dir), generation, 0, False)
        child = _spawn(
            "worker",
            {
                "capsule": name,
                "capsule_dir": str(capsule_dir),
                "generation": generation,
                "broker_endpoint": self.endpoint,
                "secret": derive_worker_secret(self.master_key, info),
            },
            self.home / f"{name}.out",
            name,
        )
        self.workers.append(child)
        if wait is not None:
            child.wait_for(wait)
        return child

    def client(self) -> Client:
        return Client(self.home)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.broker is not None:
            self.broker.stop()


class Client:
    """A JSON-RPC client on ``sessions/system.sock`` (after the token handshake)."""

    def __init__(self, home: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(home / "sessions" / "system.sock"))
        token = SessionToken.read_from_file(home / "sessions" / "system.token")
        client_handshake(self.sock, token, "astrid-tests/0")
        self._id = 0

    def request(self, method: str, params: dict[str, Any], timeout: float = 30.0) -> Any:
        self._id += 1
        send_frame(self.sock, rpc.encode_request(self._id, method, params))
        payload = recv_frame(self.sock, MAX_CLIENT_FRAME, timeout=timeout)
        _, result = rpc.decode_response(payload)
        return result

    def call_tool(self, capsule: str, tool: str, arguments: Any, timeout: float = 30.0) -> str:
        result = self.request(
            rpc.Method.TOOL_CALL,
            {"capsule": capsule, "tool": tool, "arguments": arguments},
            timeout,
        )
        return str(result["output"])

    def close(self) -> None:
        self.sock.close()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
