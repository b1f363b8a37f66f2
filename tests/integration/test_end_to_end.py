"""The whole path, operator to capsule and back, through the installed commands.

A real ``astrid-supervisor up`` in a temporary ASTRID_HOME with the two example capsules (a
run loop that counts in KV, a tool capsule), driven by the real ``astrid`` CLI: a tool call, KV
written by a capsule, a worker killed with SIGKILL and restarted while the other keeps running
and the data survives, then a clean stop that leaves no process of the tree.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@dataclass
class Tree:
    home: Path
    process: subprocess.Popen[bytes]

    def astrid(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
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
        return {p["name"]: p for p in json.loads(result.stdout)["processes"]}

    def kv(self, capsule: str, key: str) -> bytes | None:
        db = sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT value FROM kv WHERE ns = ? AND key = ?",
                (f"capsule:{capsule}", key.encode()),
            ).fetchone()
        finally:
            db.close()
        return None if row is None else bytes(row[0])


def wait_until(condition: Callable[[], Any], timeout: float = 20, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or condition}")


@pytest.fixture
def tree(tmp_path: Path, capsules: dict[str, Path]) -> Iterator[Tree]:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    workspace.mkdir()
    for name in ("counter", "hello-tool"):
        shutil.copytree(
            capsules[name], home / "capsules" / name, ignore=shutil.ignore_patterns("*.c")
        )
    log = (tmp_path / "supervisor.out").open("wb")
    process = subprocess.Popen(
        [str(BIN / "astrid-supervisor"), "up", "--home", str(home), "--workspace", str(workspace)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    t = Tree(home, process)
    try:
        wait_until(
            lambda: (
                (home / "state" / "supervisor.json").exists()
                and {p.get("state") for n, p in t.ps().items() if n in ("counter", "hello-tool")}
                == {"READY"}
            ),
            message="both capsules READY",
        )
        yield t
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_operator_path_end_to_end(tree: Tree) -> None:
    before = tree.ps()
    assert {"astrid-supervisor", "broker", "counter", "hello-tool"} <= set(before)
    tree_pids = {p["pid"] for p in before.values() if p["pid"]}

    # A tool call through `astrid call`, and the KV it wrote.
    result = tree.astrid("call", "hello-tool", "remember", '{"key": "color", "value": "blue"}')
    assert result.returncode == 0, result.stderr
    assert "remembered color" in result.stdout
    assert tree.kv("hello-tool", "color") == b"blue"
    result = tree.astrid("call", "hello-tool", "greet", '{"name": "Ada"}')
    assert json.loads(result.stdout) == {"content": "Hello, Ada!", "is_error": False}

    # KV written by the run-loop capsule on its own.
    count_before = int(wait_until(lambda: tree.kv("counter", "count"), message="counter counts"))
    assert tree.kv("counter", "started") == b"1"

    # Kill one worker: it comes back, the other keeps running, the data survives.
    counter_pid, tool_pid = before["counter"]["pid"], before["hello-tool"]["pid"]
    result = tree.astrid("kill", "counter", "--signal", "KILL")
    assert result.returncode == 0, result.stderr
    assert str(counter_pid) in result.stdout
    after = wait_until(
        lambda: (
            (ps := tree.ps())["counter"]["state"] == "READY"
            and ps["counter"]["pid"] not in (None, counter_pid)
            and ps
        ),
        message="counter restarted",
    )
    assert after["counter"]["restarts"] == 1
    assert after["hello-tool"]["pid"] == tool_pid
    assert after["hello-tool"]["restarts"] == 0
    assert after["broker"]["pid"] == before["broker"]["pid"]
    assert not psutil.pid_exists(counter_pid) or psutil.Process(counter_pid).status() == "zombie"
    wait_until(lambda: tree.kv("counter", "started") == b"2", message="counter run started again")
    assert int(tree.kv("counter", "count") or b"0") >= count_before
    result = tree.astrid("call", "hello-tool", "recall", '{"key": "color"}')
    assert json.loads(result.stdout)["content"] == "blue"
    tree_pids |= {p["pid"] for p in after.values() if p["pid"]}

    # The CLI refuses to signal what is not part of the tree.
    result = tree.astrid("kill", str(tree.process.pid + 10**6))
    assert result.returncode == 1
    assert "not part of the astrid tree" in result.stderr

    # Stop: nothing of the tree is left.
    tree.process.send_signal(signal.SIGTERM)
    assert tree.process.wait(30) == 0
    leftovers = [
        pid
        for pid in tree_pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert leftovers == []
    assert not (tree.home / "sessions" / "system.sock").exists()
    result = tree.astrid("ps")
    assert result.returncode == 1
    assert "not running" in result.stderr


def test_tool_call_errors_are_clear(tree: Tree) -> None:
    result = tree.astrid("call", "hello-tool", "nope")
    assert result.returncode == 1
    assert "declares no tool 'nope'" in result.stderr
    result = tree.astrid("call", "counter", "anything")
    assert result.returncode == 1
    assert "run-loop capsule" in result.stderr
    result = tree.astrid("call", "ghost", "anything")
    assert result.returncode == 1
    assert "capsule 'ghost' is not running" in result.stderr
    result = tree.astrid("call", "hello-tool", "greet", "{not json")
    assert result.returncode == 2
    assert "invalid JSON arguments" in result.stderr
    for output in (result.stdout, result.stderr):
        assert "Traceback" not in output
