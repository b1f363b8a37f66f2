"""The supervisor's memory limit, configured in ``supervisor.toml``: a worker over its RSS limit is
killed (SIGKILL to its group) with the reason recorded, then restarted under the policy, while
the other capsules keep serving.

First with fake children (``hog-*``, see :func:`worker`: 100 MiB of ballast in the first
generation), then with the real worker running ``tests/capsules/hog``, whose tool fills its
guest memory up to the 64 MiB cap.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest

from astrid_core.launch import WorkerLaunch
from tests import fake_children
from tests.integration.test_supervisor_tree import Tree, state_of, wait_until, write_capsule

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
MEMORY_REASON = re.compile(r"killed by SIGKILL: memory: RSS (\d+\.\d) MiB over the (\d+) MiB limit")

#: Kept referenced, so that the ballast stays resident.
_BALLAST: list[bytes] = []


def worker(launch: WorkerLaunch) -> NoReturn:
    """``hog-a``: 100 MiB of ballast in generation 1 only (a restart cures it); ``hog-b``: in
    every generation; then both behave like ``good-*``. Anything else: tests/fake_children.py."""
    name = launch.capsule
    if name.startswith("hog-"):
        if name == "hog-b" or launch.generation == 1:
            _BALLAST.append(b"\x01" * (100 * MIB))  # written, hence resident
        fake_children.worker(dataclasses.replace(launch, capsule=f"good-{name}"))
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


CONFIG = """
[supervisor]
grace = 2
rss_limit_mib = 64
memory_check_interval = 0.1

[restart]
base_delay = 0.05
max_restarts = 5

[capsules.hog-b]
rss_limit_mib = 0   # no limit for this one
"""


def rss_mib(pid: int | None) -> float:
    assert pid is not None
    return psutil.Process(pid).memory_info().rss / MIB


def test_a_worker_over_its_memory_limit_is_killed_and_restarted(tree: Tree) -> None:
    for name in ("good-a", "hog-a", "hog-b"):
        write_capsule(tree.home / "capsules", name)
    (tree.home / "supervisor.toml").write_text(CONFIG)
    tree.start(
        configured=True,
        worker_entry=f"{__name__}:worker",
        preload=["tests.fake_children", __name__],
    )
    status = tree.wait_for(
        lambda s: (
            (hog := s.capsule("hog-a")) is not None
            and hog.restarts == 1
            and hog.state == "READY"
            and state_of(s, "good-a") == "READY"
            and state_of(s, "hog-b") == "READY"
        ),
        timeout=15,
    )
    hog = tree.capsule(status, "hog-a")
    assert hog.generation == 2
    assert hog.last_exit is not None
    match = MEMORY_REASON.fullmatch(hog.last_exit)
    assert match is not None, hog.last_exit
    assert float(match[1]) > 64  # sampled while the ballast was being written, maybe
    assert match[2] == "64"
    # The second generation (no ballast) stays.
    assert rss_mib(hog.pid) < 64

    # The others: good-a is well under the limit; hog-b is over 64 MiB but has no limit.
    good = tree.capsule(status, "good-a")
    assert (good.restarts, good.last_exit) == (0, None)
    assert rss_mib(good.pid) < 64
    unlimited = tree.capsule(status, "hog-b")
    assert unlimited.restarts == 0
    assert rss_mib(unlimited.pid) > 100

    # astrid ps shows the reason in LAST EXIT.
    result = tree.astrid("ps", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)["processes"]}
    assert rows["hog-a"]["last_exit"] == hog.last_exit
    assert rows["hog-a"]["restarts"] == 1
    table = tree.astrid("ps").stdout
    assert "memory: RSS" in table and "over the 64 MiB limit" in table

    log = tree.log("supervisor")
    assert re.search(
        r"ERROR hog-a\[1\] memory: RSS \d+\.\d MiB over the 64 MiB limit: killing it", log
    )
    status = tree.status()
    assert status is not None
    assert tree.capsule(status, "good-a").pid == good.pid
    assert tree.stop() == 0
    assert tree.survivors() == []


def test_a_capsule_that_always_exceeds_its_limit_becomes_fatal(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "hog-b")
    write_capsule(tree.home / "capsules", "good-a")
    (tree.home / "supervisor.toml").write_text(
        """
[supervisor]
memory_check_interval = 0.05

[capsules.hog-b]
rss_limit_mib = 48
max_restarts = 2
base_delay = 0.01
"""
    )
    tree.start(
        configured=True,
        worker_entry=f"{__name__}:worker",
        preload=["tests.fake_children", __name__],
    )
    status = tree.wait_for(
        lambda s: state_of(s, "hog-b") == "FATAL" and state_of(s, "good-a") == "READY",
        timeout=15,
    )
    hog = tree.capsule(status, "hog-b")
    assert hog.restarts == 2
    assert hog.last_exit is not None
    reason, _, verdict = hog.last_exit.partition("; ")
    assert MEMORY_REASON.fullmatch(reason), hog.last_exit
    assert verdict.startswith("restarted 2 times within ")
    assert tree.capsule(status, "good-a").restarts == 0
    assert tree.stop() == 0
    assert tree.survivors() == []


# --------------------------------------------------------------------------------------------
# The real worker: a guest that fills its memory


def test_a_real_guest_filling_its_memory_is_killed_and_restarted(
    tmp_path: Path, capsules: dict[str, Path]
) -> None:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    workspace.mkdir()
    for name in ("hog", "hello-tool"):
        shutil.copytree(
            capsules[name], home / "capsules" / name, ignore=shutil.ignore_patterns("*.c")
        )
    # An idle worker is about 35 MiB; the hog's tool adds ~62 MiB of guest memory.
    config = tmp_path / "limits.toml"
    config.write_text(
        "[supervisor]\nmemory_check_interval = 0.1\n\n[capsules.hog]\nrss_limit_mib = 60\n"
    )
    log = (tmp_path / "supervisor.out").open("wb")
    process = subprocess.Popen(
        [
            str(BIN / "astrid-supervisor"),
            "up",
            "--home",
            str(home),
            "--workspace",
            str(workspace),
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def astrid(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "astrid"), "--home", str(home), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ps() -> dict[str, dict[str, Any]]:
        result = astrid("ps", "--json")
        if result.returncode != 0:
            return {}
        return {row["name"]: row for row in json.loads(result.stdout)["processes"]}

    try:
        before = wait_until(
            lambda: (
                (rows := ps())
                and all(rows[n]["state"] == "READY" for n in ("hog", "hello-tool"))
                and rows
            ),
            timeout=30,
            what="both capsules READY",
        )
        assert before["hog"]["rss_bytes"] < 60 * MIB
        hog_pid = before["hog"]["pid"]

        # The call is in flight when the worker dies: the caller gets an error, not a hang.
        result = astrid("call", "hog", "fill")
        assert result.returncode == 1, result.stdout

        after = wait_until(
            lambda: (
                (rows := ps())
                and rows["hog"]["restarts"] == 1
                and rows["hog"]["state"] == "READY"
                and rows
            ),
            timeout=30,
            what="the hog restarted",
        )
        match = MEMORY_REASON.fullmatch(after["hog"]["last_exit"] or "")
        assert match is not None, after["hog"]["last_exit"]
        assert float(match[1]) > 60 and match[2] == "60"
        assert after["hog"]["pid"] != hog_pid
        assert not alive(hog_pid)

        # The other capsule kept its worker and serves; the new hog worker serves too.
        assert after["hello-tool"]["pid"] == before["hello-tool"]["pid"]
        assert after["hello-tool"]["restarts"] == 0
        result = astrid("call", "hello-tool", "greet", '{"name": "Ada"}')
        assert json.loads(result.stdout)["content"] == "Hello, Ada!"
        result = astrid("call", "hog", "ping")
        assert json.loads(result.stdout)["content"] == "pong"
        assert "over the 60 MiB limit" in astrid("ps").stdout

        tree_pids = [row["pid"] for row in after.values() if row["pid"]]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert [pid for pid in tree_pids if alive(pid)] == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
