"""A real process tree for the benchmark: ``astrid-supervisor up`` with N copies of the bench
capsule in a temporary ``ASTRID_HOME``, a management client on ``sessions/system.sock``, and
what the measurements read from it (status file, supervisor log, psutil).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from astrid_core import rpc
from astrid_core.session import (
    MAX_CLIENT_FRAME,
    SessionToken,
    client_handshake,
    recv_frame,
    send_frame,
)
from bench.common import BENCH_CAPSULE_DIR, BENCH_WASM, VENV_BIN, alive, kill_tree, progress

_LOG_LINE = re.compile(r"^(\S+Z) (\w+) (.*)$")
_READY = re.compile(r"^(\S+) READY \(pid (\d+)\) in ([\d.]+) ms$")
_EXITED = re.compile(r"^(\S+)\[(\d+)\] exited \((.*)\); restarting in ([\d.]+) s$")


def parse_log_time(stamp: str) -> float:
    """UNIX seconds of a log timestamp (``2026-11-21T22:00:00.123Z``, millisecond resolution)."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class LogRecord:
    time: float
    level: str
    message: str


class Client:
    """A JSON-RPC client on ``sessions/system.sock`` after the session-token handshake."""

    def __init__(self, home: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(home / "sessions" / "system.sock"))
        token = SessionToken.read_from_file(home / "sessions" / "system.token")
        client_handshake(self.sock, token, "astrid-bench/0")
        self._id = 0

    def tool(self, capsule: str, arguments: list[int], timeout: float = 30.0) -> str:
        self._id += 1
        params = {"capsule": capsule, "tool": "bench", "arguments": arguments}
        send_frame(self.sock, rpc.encode_request(self._id, rpc.Method.TOOL_CALL, params))
        payload = recv_frame(self.sock, MAX_CLIENT_FRAME, timeout=timeout)
        _, result = rpc.decode_response(payload)
        return str(result["output"])

    def close(self) -> None:
        self.sock.close()


class Tree:
    """``astrid-supervisor up`` with ``n`` bench capsules (``b000``, ``b001``, ...)."""

    def __init__(self, n: int) -> None:
        self.n = n
        base = Path(tempfile.mkdtemp(prefix="ab"))  # short: the socket path must fit sun_path
        self.base = base
        self.home = base / "h"
        self.workspace = base / "w"
        self.workspace.mkdir()
        self.names = [f"b{i:03d}" for i in range(n)]
        manifest = (BENCH_CAPSULE_DIR / "Capsule.toml").read_text()
        for name in self.names:
            target = self.home / "capsules" / name
            target.mkdir(parents=True)
            (target / "Capsule.toml").write_text(
                manifest.replace('name = "benchcap"', f'name = "{name}"', 1)
            )
            shutil.copyfile(BENCH_WASM, target / BENCH_WASM.name)
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self.seen: list[psutil.Process] = []
        self._clients: list[Client] = []
        self.leftovers: list[str] = []
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------

    @property
    def status_path(self) -> Path:
        return self.home / "state" / "supervisor.json"

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "supervisor.log"

    def start(self, timeout: float | None = None) -> None:
        limit = timeout if timeout is not None else 60 + 0.5 * self.n
        progress(f"tree of {self.n}: starting astrid-supervisor")
        out = (self.base / "supervisor.out").open("wb")
        t0 = time.monotonic()
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "astrid-supervisor"),
                "up",
                "--home",
                str(self.home),
                "--workspace",
                str(self.workspace),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        deadline = t0 + limit
        last_report = t0
        while True:
            status = self.status()
            ready = 0
            if status is not None and status["broker"].get("state") == "READY":
                ready = sum(1 for c in status["capsules"] if c["state"] == "READY")
                if ready == self.n and len(status["capsules"]) == self.n:
                    break
            if self.process.poll() is not None:
                tail = (self.base / "supervisor.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"astrid-supervisor exited:\n{tail}")
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"tree of {self.n}: only {ready} READY after {limit:.0f} s")
            if now - last_report > 10:
                progress(f"tree of {self.n}: {ready} READY")
                last_report = now
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0
        self.snapshot()
        progress(f"tree of {self.n}: all READY in {self.start_seconds:.1f} s")

    def snapshot(self) -> None:
        """Remember every process of the tree (for the leak check after stop)."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.process.pid)
            known = {p.pid for p in self.seen}
            for proc in [root, *root.children(recursive=True)]:
                if proc.pid not in known:
                    self.seen.append(proc)

    def status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def worker_pids(self) -> dict[str, int]:
        status = self.status()
        if status is None:
            return {}
        return {c["name"]: c["pid"] for c in status["capsules"] if c.get("pid")}

    def pid_of(self, role: str) -> int | None:
        status = self.status()
        if status is None:
            return None
        pid = status[role].get("pid")
        return int(pid) if pid else None

    def client(self) -> Client:
        client = Client(self.home)
        with self._lock:
            self._clients.append(client)
        return client

    # ----------------------------------------------------------------------------------------
    # The supervisor's log

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_records(self, offset: int = 0) -> list[LogRecord]:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
        records = []
        for line in text.splitlines():
            match = _LOG_LINE.match(line)
            if match:
                records.append(LogRecord(parse_log_time(match[1]), match[2], match[3].rstrip()))
        return records

    def ready_lines(self, offset: int = 0) -> list[tuple[float, str, int, float]]:
        """``(log time, capsule, pid, fork→READY ms)`` of every READY line after ``offset``."""
        found = []
        for record in self.log_records(offset):
            match = _READY.match(record.message)
            if match:
                found.append((record.time, match[1], int(match[2]), float(match[3])))
        return found

    def exit_lines(self, offset: int = 0) -> list[tuple[float, str, str, float]]:
        """``(log time, capsule, reason, restart delay s)`` of every exit line after ``offset``."""
        found = []
        for record in self.log_records(offset):
            match = _EXITED.match(record.message)
            if match:
                found.append((record.time, match[1], match[3], float(match[4])))
        return found

    # ----------------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop the tree (SIGTERM, then SIGKILL after 30 s); returns leftover processes."""
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.close()
        self._clients.clear()
        if self.process is not None:
            self.snapshot()
            if self.process.poll() is None:
                progress(f"tree of {self.n}: stopping")
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    progress(f"tree of {self.n}: supervisor did not stop in 30 s, SIGKILL")
                    kill_tree(self.process.pid)
                    self.process.wait()
        # Every process of the tree must be gone (workers have their own process groups).
        deadline = time.monotonic() + 10
        left = alive(self.seen)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = alive(left)
        leftovers = []
        for proc in left:
            with contextlib.suppress(psutil.Error):
                leftovers.append(f"{proc.pid} {proc.name()}")
                proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)
        return leftovers

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leftovers = self.stop()
        if self.leftovers:
            progress(f"tree of {self.n}: LEFT BEHIND after stop: {', '.join(self.leftovers)}")


def uptime(status_entry: dict[str, Any]) -> float:
    started = status_entry.get("started_at")
    return time.time() - float(started) if started else 0.0
