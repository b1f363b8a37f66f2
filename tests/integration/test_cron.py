"""Cron through real processes (DESIGN §6.10): the cronner capsule in a real broker and worker,
and a job that survives a restart of the real supervisor.

Effects are observed in ``state.db``: cronner's ``astrid_cron_trigger`` increments KV
``count:<name>`` and stores the trigger's arguments in ``last:<name>``.
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
from pathlib import Path
from typing import Any

import pytest

from astrid_core.rpc import RpcError
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
FIELDS = (
    "expected 5 fields (minute hour day-of-month month day-of-week), 6 with a seconds field "
    "last, or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
)


def wait_until(condition: Callable[[], Any], timeout: float = 15, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or condition}")


def read_kv(home: Path, capsule: str, key: str) -> bytes | None:
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT value FROM kv WHERE ns = ? AND key = ?", (f"capsule:{capsule}", key.encode())
        ).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


def count(home: Path, capsule: str, job: str) -> int:
    return int(read_kv(home, capsule, f"count:{job}") or b"0")


def log_lines(home: Path, capsule: str) -> list[str]:
    path = home / "logs" / f"{capsule}.log"
    return path.read_text().splitlines() if path.exists() else []


class Cronner:
    def __init__(self, runtime: Runtime, client: Client, name: str = "cronner") -> None:
        self.runtime = runtime
        self.client = client
        self.name = name

    def schedule(self, **arguments: Any) -> str:
        return self.client.call_tool(self.name, "schedule", arguments)

    def cancel(self, **arguments: Any) -> str:
        return self.client.call_tool(self.name, "cancel", arguments)

    def trap(self, tool: str, **arguments: Any) -> str:
        with pytest.raises(RpcError) as info:
            self.client.call_tool(self.name, tool, arguments)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")

    def count(self, job: str) -> int:
        return count(self.runtime.home, self.name, job)

    def last(self, job: str) -> bytes | None:
        return read_kv(self.runtime.home, self.name, f"last:{job}")

    def grows(self, job: str, by: int = 2, timeout: float = 15) -> None:
        start = self.count(job)
        wait_until(lambda: self.count(job) >= start + by, timeout, f"count:{job} grows")


@pytest.fixture(scope="module")
def env(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cronner]:
    base = tmp_path_factory.mktemp("cron")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    runtime.start_worker(copy_capsule(capsules["cronner"], base / "caps"))
    client = runtime.client()
    yield Cronner(runtime, client)
    client.close()
    runtime.stop()


# --------------------------------------------------------------------------------------------
# Firing


def test_the_manifest_cron_entry_fires(env: Cronner) -> None:
    env.grows("beat")
    assert env.last("beat") == b""  # a [[cron]] entry's trigger has empty arguments


def test_a_scheduled_job_fires_with_its_payload(env: Cronner) -> None:
    payload = '{"task": "sync", "n": 1}'
    assert json.loads(env.schedule(name="sync", schedule="* * * * * *", payload=payload)) == {
        "content": "ok",
        "is_error": False,
    }
    env.grows("sync")
    assert env.last("sync") == payload.encode()


def test_scheduling_again_replaces_the_payload(env: Cronner) -> None:
    env.schedule(name="swap", schedule="* * * * * *", payload="first")
    wait_until(lambda: env.last("swap") == b"first", message="first payload")
    env.schedule(name="swap", schedule="* * * * * *", payload="second")
    wait_until(lambda: env.last("swap") == b"second", message="second payload")


def test_a_binary_payload_arrives_unchanged(env: Cronner) -> None:
    payload = bytes(range(256))
    env.schedule(name="bin", schedule="* * * * * *", payload_hex=payload.hex())
    wait_until(lambda: env.last("bin") == payload, message="binary payload")


def test_cancel_stops_a_job(env: Cronner) -> None:
    env.schedule(name="stopme", schedule="* * * * * *", payload="x")
    env.grows("stopme", by=1)
    env.cancel(name="stopme")
    time.sleep(1.2)  # a run already in flight may still land
    stopped_at = env.count("stopme")
    time.sleep(2.5)
    assert env.count("stopme") == stopped_at
    # Idempotent, like kv_delete; the [[cron]] entry cannot be cancelled.
    env.cancel(name="stopme")
    env.cancel(name="never-scheduled")
    env.cancel(name="heartbeat")
    env.grows("beat")


def test_a_job_that_is_not_due_does_not_fire(env: Cronner) -> None:
    env.schedule(name="yearly", schedule="0 0 1 1 *", payload="")
    time.sleep(1.5)
    assert env.last("yearly") is None


# --------------------------------------------------------------------------------------------
# Errors: traps seen by the caller of astrid_tool_call


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (
            {"name": "", "schedule": "@daily"},
            "invalid cron job name '': must be 1 to 128 bytes",
        ),
        (
            {"name": "n" * 129, "schedule": "@daily"},
            "invalid cron job name: 129 bytes exceeds the limit of 128 bytes",
        ),
        (
            {"name": "white space", "schedule": "@daily"},
            "invalid cron job name 'white space': only [A-Za-z0-9_.-] are allowed",
        ),
        (
            {"name_hex": "6e61ff", "schedule": "@daily"},
            "invalid cron job name 'na\ufffd': only [A-Za-z0-9_.-] are allowed",
        ),
        (
            {"name": "job", "schedule": "*" * 257},
            "invalid cron schedule: 257 bytes exceeds the limit of 256 bytes",
        ),
        (
            {"name": "job", "schedule_hex": "2a20ff"},
            "invalid cron schedule: not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 2",
        ),
        (
            {"name": "job", "schedule": "every minute"},
            f"invalid cron schedule 'every minute': {FIELDS}",
        ),
        ({"name": "job"}, f"invalid cron schedule '': {FIELDS}"),
        (
            {"name": "job", "schedule": "H * * * *"},
            "invalid cron schedule 'H * * * *': hashed (H) and random (R) fields are not supported",
        ),
        (
            {"name": "job", "schedule": "0 25 * * *"},
            "invalid cron schedule '0 25 * * *': [0 25 * * *] is not acceptable, out of range",
        ),
        (
            {"name": "job", "schedule": "0 0 30 2 *"},
            "invalid cron schedule '0 0 30 2 *': it never fires",
        ),
        (
            {"name": "job", "schedule": "@daily", "payload_size": MiB + 1},
            "memory allocation of 1048577 bytes exceeds maximum allowed limit of 1048576 bytes",
        ),
    ],
    ids=[
        "name-empty",
        "name-129",
        "name-space",
        "name-non-utf8",
        "schedule-257",
        "schedule-non-utf8",
        "schedule-words",
        "schedule-empty",
        "schedule-hashed",
        "schedule-range",
        "schedule-never",
        "payload-1MiB+1",
    ],
)
def test_cron_schedule_errors_trap(env: Cronner, arguments: dict[str, Any], text: str) -> None:
    assert env.trap("schedule", **arguments) == text


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ({}, "invalid cron job name '': must be 1 to 128 bytes"),
        ({"name": "n" * 129}, "invalid cron job name: 129 bytes exceeds the limit of 128 bytes"),
        ({"name": "a:b"}, "invalid cron job name 'a:b': only [A-Za-z0-9_.-] are allowed"),
    ],
    ids=["empty", "129", "colon"],
)
def test_cron_cancel_errors_trap(env: Cronner, arguments: dict[str, Any], text: str) -> None:
    assert env.trap("cancel", **arguments) == text


def test_the_largest_arguments_are_accepted(env: Cronner) -> None:
    name = "N" * 128
    env.schedule(name=name, schedule="0 0 1 1 *" + " " * 247, payload_size=MiB)
    env.cancel(name=name)


def test_the_per_capsule_job_limit_traps(env: Cronner, capsules: dict[str, Path]) -> None:
    capsule = copy_capsule(capsules["cronner"], env.runtime.home.parent / "caps", name="cronlimit")
    env.runtime.start_worker(capsule)
    limited = Cronner(env.runtime, env.client, "cronlimit")
    for i in range(64):
        limited.schedule(name=f"job{i}", schedule="0 0 1 1 *")
    assert limited.trap("schedule", name="job64", schedule="0 0 1 1 *") == (
        "cron job limit reached (64 per capsule)"
    )
    limited.schedule(name="job0", schedule="* * * * * *", payload="replaced")  # a replacement
    wait_until(lambda: limited.last("job0") == b"replaced", message="replaced job fires")
    limited.cancel(name="job1")
    limited.schedule(name="job64", schedule="0 0 1 1 *")


# --------------------------------------------------------------------------------------------
# Capsules that cannot take the trigger, and capsules that are gone


def test_a_failing_trigger_is_logged_in_the_capsule_log(
    env: Cronner, capsules: dict[str, Path]
) -> None:
    """hello-tool has no astrid_cron_trigger export: every run fails, the capsule stays up."""
    extra = '[[cron]]\nname = "nudge"\nschedule = "* * * * * *"\naction = "nudge"\n'
    capsule = copy_capsule(
        capsules["hello-tool"],
        env.runtime.home.parent / "caps",
        name="no-trigger",
        extra_toml=extra,
    )
    env.runtime.start_worker(capsule)
    home = env.runtime.home
    failures = wait_until(
        lambda: [
            line for line in log_lines(home, "no-trigger") if "cron job 'nudge' failed" in line
        ],
        message="a failed cron run in the log",
    )
    assert " ERROR  no-trigger[1] cron job 'nudge' failed: " in failures[0]
    assert "astrid_cron_trigger" in failures[0]
    output = env.client.call_tool("no-trigger", "greet", {"name": "cron"})
    assert json.loads(output)["content"] == "Hello, cron!"


def test_a_run_loop_capsule_is_warned_about_once(env: Cronner, capsules: dict[str, Path]) -> None:
    extra = '[[cron]]\nname = "tick"\nschedule = "* * * * * *"\naction = "tick"\n'
    capsule = copy_capsule(
        capsules["counter"], env.runtime.home.parent / "caps", name="cron-loop", extra_toml=extra
    )
    env.runtime.start_worker(capsule)
    home = env.runtime.home
    wait_until(lambda: read_kv(home, "cron-loop", "count"), message="the run loop runs")
    time.sleep(2.5)
    warnings = [line for line in log_lines(home, "cron-loop") if "cron job" in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        "cron job 'tick' cannot run: a run-loop capsule cannot be invoked through "
        "astrid_cron_trigger"
    )


def test_a_job_of_a_stopped_capsule_is_skipped_then_resumes(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    capsule = copy_capsule(capsules["cronner"], tmp_path / "caps", name="cronmiss")
    worker = runtime.start_worker(capsule)
    client = runtime.client()
    try:
        client.call_tool("cronmiss", "schedule", {"name": "job", "schedule": "* * * * * *"})
        wait_until(lambda: count(runtime.home, "cronmiss", "job") >= 1, message="job fires")
        worker.process.terminate()  # Runtime.stop closes its status pipe later
        worker.process.wait(10)
        skipped = "cron job 'job' skipped: capsule 'cronmiss' is not running"
        wait_until(
            lambda: any(skipped in line for line in log_lines(runtime.home, "cronmiss")),
            message="the skip is logged",
        )
        stopped_at = count(runtime.home, "cronmiss", "job")
        time.sleep(2.5)
        assert count(runtime.home, "cronmiss", "job") == stopped_at
        lines = log_lines(runtime.home, "cronmiss")
        assert sum(skipped in line for line in lines) == 1
        assert sum("'heartbeat' skipped" in line for line in lines) == 0  # gone with the capsule

        runtime.start_worker(capsule)  # generation 2: the stored job resumes, no replay
        wait_until(
            lambda: count(runtime.home, "cronmiss", "job") >= stopped_at + 2,
            message="job fires again",
        )
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# The real supervisor: a scheduled job survives a restart of the whole tree


def _start_supervisor(home: Path, workspace: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                str(BIN / "astrid-supervisor"),
                "up",
                "--home",
                str(home),
                "--workspace",
                str(workspace),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _astrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "astrid"), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _ready(home: Path) -> bool:
    if not (home / "state" / "supervisor.json").exists():
        return False
    result = _astrid(home, "ps", "--json")
    if result.returncode != 0:
        return False
    processes = {p["name"]: p for p in json.loads(result.stdout)["processes"]}
    return processes.get("cronner", {}).get("state") == "READY"


def test_a_cron_job_scheduled_by_a_capsule_fires_after_a_supervisor_restart(
    tmp_path: Path, capsules: dict[str, Path]
) -> None:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    workspace.mkdir()
    shutil.copytree(
        capsules["cronner"], home / "capsules" / "cronner", ignore=shutil.ignore_patterns("*.c")
    )
    log = tmp_path / "supervisor.out"
    process = _start_supervisor(home, workspace, log)
    try:
        wait_until(lambda: _ready(home), 30, "cronner READY")
        result = _astrid(
            home,
            "call",
            "cronner",
            "schedule",
            json.dumps({"name": "persist", "schedule": "* * * * * *", "payload": "kept"}),
        )
        assert result.returncode == 0, result.stderr
        wait_until(lambda: count(home, "cronner", "persist") >= 1, message="job fires")

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        stopped_at = count(home, "cronner", "persist")

        process = _start_supervisor(home, workspace, log)
        wait_until(lambda: _ready(home), 30, "cronner READY again")
        # Nothing rescheduled it: the job came back from state.db.
        wait_until(
            lambda: count(home, "cronner", "persist") >= stopped_at + 2,
            message="the stored job fires after the restart",
        )
        assert read_kv(home, "cronner", "last:persist") == b"kept"
        assert count(home, "cronner", "beat") >= 2

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
