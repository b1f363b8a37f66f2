"""The real Supervisor with real processes: the fake broker/worker entry points of
``tests/fake_children.py`` stand in for the real ones, so only supervision is under test.

Each test runs the supervisor in its own interpreter (a runner given on ``python -c``) with a
temporary home, and watches it through the status file, psutil and the real ``astrid`` CLI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from supervisor.status import StatusFile, live_process, read_status

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")

RUNNER = """
import json, sys
from pathlib import Path
from astrid_core.dirs import AstridHome
from supervisor.config import default_config_path, load_config
from supervisor.policy import RestartPolicy
from supervisor.tree import Supervisor, SupervisorError

home, workspace, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
policy = options.pop("policy", None)
# Like `astrid-supervisor up`: <home>/supervisor.toml when it exists, else the defaults; explicit
# options (policy, grace, ready_timeout) override it.
config = load_config(default_config_path(AstridHome.from_path(home)), required=False)
options.setdefault("worker_entry", "tests.fake_children:worker")
options.setdefault("preload", ["tests.fake_children"])
supervisor = Supervisor(
    AstridHome.from_path(home),
    Path(workspace),
    config=config,
    policy=RestartPolicy(**policy) if policy is not None else None,
    broker_entry="tests.fake_children:broker",
    cache_dir=Path(options.pop("cache_dir")),
    **options,
)
try:
    code = supervisor.run()
except SupervisorError as exc:
    print("supervisor error:", exc.message, file=sys.stderr)
    for line in exc.details:
        print(line, file=sys.stderr)
    code = 1
sys.exit(code)
"""

FAST_POLICY = {
    "base_delay": 0.02,
    "max_delay": 0.1,
    "jitter": 0.1,
    "max_restarts": 3,
    "window": 30.0,
    "stable_after": 5.0,
}

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def write_capsule(root: Path, name: str, extra: str = "") -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "Capsule.toml").write_text(
        f'[package]\nname = "{name}"\nversion = "0.1.0"\n\n[[component]]\nfile = "x.wasm"\n{extra}'
    )
    return directory


def wait_until(probe: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}")
        time.sleep(0.02)


def gone(pid: int, create_time: float | None) -> bool:
    return live_process(pid, create_time) is None


@dataclass
class Tree:
    tmp: Path
    home: Path
    workspace: Path
    process: subprocess.Popen[bytes] | None = None
    seen: dict[int, float | None] = field(default_factory=dict)

    @property
    def status_file(self) -> Path:
        return self.home / "state" / "supervisor.json"

    def start(
        self, env: dict[str, str] | None = None, *, configured: bool = False, **options: Any
    ) -> None:
        """Run the supervisor; ``configured``: from ``<home>/supervisor.toml`` alone (no test
        defaults for policy, grace and readiness timeout)."""
        if not configured:
            options.setdefault("policy", FAST_POLICY)
            options.setdefault("grace", 2.0)
            options.setdefault("ready_timeout", 5.0)
        options["cache_dir"] = str(self.tmp / "cache")
        self.stderr_path = self.tmp / "supervisor.stderr"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUNNER,
                str(self.home),
                str(self.workspace),
                json.dumps(options),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
        )

    def status(self) -> StatusFile | None:
        status = read_status(self.status_file)
        if status is not None:
            self._remember(status)
        return status

    def _remember(self, status: StatusFile) -> None:
        entries = [
            (status.supervisor.pid, status.supervisor.create_time),
            (status.broker.pid, status.broker.create_time),
            *((c.pid, c.create_time) for c in status.capsules),
        ]
        for pid, create_time in entries:
            if pid is not None:
                self.seen[pid] = create_time

    def wait_for(
        self, predicate: Callable[[StatusFile], bool], timeout: float = 10.0
    ) -> StatusFile:
        def probe() -> StatusFile | None:
            status = self.status()
            return status if status is not None and predicate(status) else None

        return wait_until(probe, timeout, what="the status file to match")

    def capsule(self, status: StatusFile, name: str) -> Any:
        capsule = status.capsule(name)
        assert capsule is not None, name
        return capsule

    def astrid(self, *args: str) -> subprocess.CompletedProcess[str]:
        script = Path(sys.executable).with_name("astrid")
        command = (
            [str(script)] if script.exists() else [sys.executable, "-m", "supervisor.astrid_cli"]
        )
        return subprocess.run(
            [*command, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def survivors(self) -> list[int]:
        return [pid for pid, create_time in self.seen.items() if not gone(pid, create_time)]


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
    for pid in result.survivors():
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def state_of(status: StatusFile, name: str) -> str | None:
    capsule = status.capsule(name)
    return None if capsule is None else str(capsule.state)


def all_in(status: StatusFile, expected: dict[str, str]) -> bool:
    return all(state_of(status, name) == state for name, state in expected.items())


# --------------------------------------------------------------------------------------------


CONFIG = """
[supervisor]
grace = 2
ready_timeout = 5

[restart]
base_delay = 0.02
max_delay = 0.1
jitter = 0.1
max_restarts = 8
window = 30
stable_after = 5

[capsules.crash-a]
max_restarts = 3
"""


def test_supervision_kill_restart_and_shutdown(tree: Tree) -> None:
    capsules = tree.home / "capsules"
    for name in ("good-a", "good-b", "crash-a", "fatal-a"):
        write_capsule(capsules, name)
    # The configuration file in the home: [restart] for all, and crash-a's own limit.
    (tree.home / "supervisor.toml").write_text(CONFIG)
    tree.start(configured=True)

    status = tree.wait_for(
        lambda s: (
            s.broker.state == "READY"
            and all_in(s, {"good-a": "READY", "good-b": "READY", "fatal-a": "FATAL"})
        ),
        timeout=10,
    )
    good_a = tree.capsule(status, "good-a")
    fatal = tree.capsule(status, "fatal-a")
    assert fatal.restarts == 0
    assert fatal.pid is None
    assert fatal.last_exit == "exit code 78: invalid manifest: test"
    assert good_a.generation == 1 and good_a.restarts == 0
    assert live_process(good_a.pid, good_a.create_time) is not None

    assert f"configuration: {tree.home / 'supervisor.toml'}" in tree.log("supervisor")

    # The crash loop reaches FATAL after the number of restarts configured for it...
    status = tree.wait_for(lambda s: state_of(s, "crash-a") == "FATAL", timeout=10)
    crash = tree.capsule(status, "crash-a")
    assert crash.restarts == 3
    assert crash.generation == 4
    assert crash.last_exit == ("exit code 1: trap: unreachable; restarted 3 times within 30 s")
    # ... while the good capsule kept its process.
    assert tree.capsule(status, "good-a").pid == good_a.pid

    # astrid kill <good> --signal KILL: back with a new pid, restarts = 1.
    result = tree.astrid("kill", "good-a", "--signal", "KILL")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent SIGKILL to worker good-a (pid {good_a.pid})"
    status = tree.wait_for(
        lambda s: (
            (c := s.capsule("good-a")) is not None
            and c.restarts == 1
            and c.state == "READY"
            and c.pid not in (None, good_a.pid)
        ),
        timeout=5,
    )
    restarted = tree.capsule(status, "good-a")
    assert restarted.generation == 2
    assert restarted.last_exit == "killed by SIGKILL"
    assert gone(good_a.pid, good_a.create_time)

    # astrid ps --json lists everything.
    result = tree.astrid("ps", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["running"] is True
    rows = {row["name"]: row for row in document["processes"]}
    assert set(rows) == {"astrid-supervisor", "broker", "good-a", "good-b", "crash-a", "fatal-a"}
    assert rows["astrid-supervisor"]["pid"] == tree.process.pid  # type: ignore[union-attr]
    assert rows["good-a"]["pid"] == restarted.pid
    assert rows["good-a"]["restarts"] == 1
    assert rows["crash-a"]["state"] == "FATAL"
    assert rows["broker"]["state"] == "READY"
    assert rows["good-b"]["rss_bytes"] > 0

    # The plain table works too, and kill refuses strangers.
    assert "good-b" in tree.astrid("ps").stdout
    refused = tree.astrid("kill", str(os.getpid()))
    assert refused.returncode == 1
    assert "is not part of the astrid tree" in refused.stderr

    # Logs: one file per capsule, each line stamped with the generation.
    log = tree.log("good-a")
    assert re.search(rf"^{TIMESTAMP} STDOUT good-a\[1\] hello from good-a generation 1$", log, re.M)
    assert re.search(rf"^{TIMESTAMP} STDOUT good-a\[2\] hello from good-a generation 2$", log, re.M)
    assert re.search(rf"^{TIMESTAMP} STDERR good-a\[1\] good-a stderr$", log, re.M)
    # The unterminated last line of generation 1 was written when it died.
    assert re.search(r"STDOUT good-a\[1\] partial line without newline$", log, re.M)
    assert "leaked fds: []" in log
    assert "pgid is pid: True" in log
    assert "master key: zeroed" in log
    assert f"cache config: {tree.tmp / 'cache' / 'config.toml'}" in log
    assert len(re.findall(r"STDERR crash-a\[\d\] crash-a crashing", tree.log("crash-a"))) == 4
    assert "fake broker up" in tree.log("broker")
    assert "master key: NOT zeroed" in tree.log("broker")  # the broker needs it
    supervisor_log = tree.log("supervisor")
    assert re.search(r"good-b READY \(pid \d+\) in \d+\.\d ms", supervisor_log)

    # SIGTERM: exit 0 quickly, nothing left behind.
    tree.status()
    started = time.monotonic()
    assert tree.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert tree.survivors() == []
    assert not tree.status_file.exists()


def test_one_supervisor_per_home(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "good-a")
    tree.start()
    status = tree.wait_for(lambda s: state_of(s, "good-a") == "READY")
    assert tree.process is not None
    second = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisor_cli", "up", "--home", str(tree.home)],
        cwd=tree.workspace,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"astrid-supervisor: another astrid-supervisor (pid {tree.process.pid}) "
        f"is already running for {tree.home}"
    )
    # The running supervisor's status file is untouched.
    after = tree.status()
    assert after is not None
    assert after.supervisor == status.supervisor
    assert tree.stop() == 0


def test_supervisor_kill9_takes_the_children_along(tree: Tree) -> None:
    for name in ("good-a", "good-b", "slow-a"):
        write_capsule(tree.home / "capsules", name)
    tree.start()
    status = tree.wait_for(
        lambda s: s.broker.state == "READY" and all_in(s, {"good-a": "READY", "good-b": "READY"})
    )
    children = [(c.pid, c.create_time) for c in status.capsules if c.pid is not None]
    assert status.broker.pid is not None
    children.append((status.broker.pid, status.broker.create_time))
    assert len(children) == 4
    tree.stop(signal.SIGKILL)
    wait_until(
        lambda: all(gone(pid, create_time) for pid, create_time in children),
        timeout=5,
        what="the children to die with the supervisor",
    )
    # The stale status file is recognised as "not running".
    result = tree.astrid("ps")
    assert result.returncode == 1
    assert "astrid-supervisor is not running" in result.stderr


def test_readiness_timeout_kills_and_restarts(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "slow-a")
    tree.start(ready_timeout=0.3)
    status = tree.wait_for(lambda s: (c := s.capsule("slow-a")) is not None and c.restarts >= 1)
    slow = tree.capsule(status, "slow-a")
    assert slow.last_exit == "killed by SIGKILL: not ready within 0.3 s"
    status = tree.wait_for(lambda s: state_of(s, "slow-a") == "FATAL", timeout=15)
    slow = tree.capsule(status, "slow-a")
    assert slow.restarts == 3
    assert slow.has_run is True  # from its LOADED event
    assert tree.stop() == 0
    assert tree.survivors() == []


def test_dependency_order_and_reverse_stop(tree: Tree) -> None:
    capsules = tree.home / "capsules"
    # Discovery order is by name: the dependent comes first and must wait for its provider.
    write_capsule(capsules, "good-a-consumer", '\n[dependencies]\nrequires = ["topic:demo.data"]\n')
    write_capsule(capsules, "good-b-provider", '\n[dependencies]\nprovides = ["topic:demo.data"]\n')
    write_capsule(capsules, "good-c-orphan", '\n[dependencies]\nrequires = ["topic:dead.x"]\n')
    write_capsule(capsules, "fatal-provider", '\n[dependencies]\nprovides = ["topic:dead.x"]\n')
    tree.start()
    tree.wait_for(
        lambda s: all_in(
            s,
            {
                "good-a-consumer": "READY",
                "good-b-provider": "READY",
                "good-c-orphan": "READY",
                "fatal-provider": "FATAL",
            },
        )
    )
    assert tree.stop() == 0
    lines = tree.log("supervisor").splitlines()

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    assert first(r"good-b-provider READY") < first(r"good-a-consumer\[1\] started")
    assert first(r"fatal-provider is FATAL") < first(r"good-c-orphan\[1\] started")
    assert first(r"starting good-c-orphan although its provider fatal-provider is FATAL")
    # Stop: the consumer before its provider, the broker last.
    assert first(r"good-a-consumer\[1\] stopped") < first(r"stopping good-b-provider")
    assert first(r"good-b-provider\[1\] stopped") < first(r"stopping broker")


def test_grace_period_then_sigkill(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "stubborn-a")
    write_capsule(tree.home / "capsules", "child-a")
    tree.start(grace=0.5)
    status = tree.wait_for(lambda s: all_in(s, {"stubborn-a": "READY", "child-a": "READY"}))
    child_worker = tree.capsule(status, "child-a")
    grandchild = wait_until(
        lambda: psutil.Process(child_worker.pid).children(), what="the worker's own child"
    )[0]
    grandchild_ct = grandchild.create_time()
    started = time.monotonic()
    assert tree.stop(signal.SIGTERM) == 0
    assert 0.4 < time.monotonic() - started < 4
    assert "stubborn-a[1] did not stop within 0.5 s: SIGKILL" in tree.log("supervisor")
    assert tree.survivors() == []
    assert gone(grandchild.pid, grandchild_ct)  # the whole process group went


def test_second_sigint_kills_at_once(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "stubborn-a")
    tree.start(grace=30.0)
    tree.wait_for(lambda s: state_of(s, "stubborn-a") == "READY")
    assert tree.process is not None
    tree.process.send_signal(signal.SIGINT)
    wait_until(lambda: "stopping stubborn-a" in tree.log("supervisor"), timeout=5)
    started = time.monotonic()
    assert tree.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 3
    assert "SIGINT during shutdown: killing every process now" in tree.log("supervisor")
    assert tree.survivors() == []


def test_broker_restart(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "good-a")
    tree.start()
    status = tree.wait_for(lambda s: s.broker.state == "READY" and all_in(s, {"good-a": "READY"}))
    broker_pid = status.broker.pid
    assert broker_pid is not None
    result = tree.astrid("kill", str(broker_pid), "--signal", "KILL")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent SIGKILL to broker (pid {broker_pid})"
    status = tree.wait_for(
        lambda s: (
            s.broker.restarts == 1 and s.broker.state == "READY" and s.broker.pid != broker_pid
        )
    )
    assert status.broker.last_exit == "killed by SIGKILL"
    assert re.search(r"STDOUT broker\[2\] fake broker up", tree.log("broker"))
    assert tree.stop() == 0
    assert tree.survivors() == []


def test_broker_failing_to_start(tree: Tree) -> None:
    write_capsule(tree.home / "capsules", "good-a")
    tree.start(env={"FAKE_BROKER_FAIL": "1"})
    assert tree.process is not None
    assert tree.process.wait(timeout=10) == 1
    stderr = tree.stderr()
    assert "supervisor error: broker failed to start: cannot bind: test" in stderr
    assert "broker stderr: fake broker stderr line" in stderr
    assert not tree.status_file.exists()
    assert "good-a[1] started" not in tree.log("supervisor")


def test_long_home_moves_the_endpoint_to_a_temporary_directory(tmp_path: Path) -> None:
    base = tmp_path / "h"
    padding = 85 - len(str(base)) - 1
    if padding < 1:
        pytest.skip("the temporary directory is too long for this test")
    home = base / ("x" * padding)
    assert len(str(home / "run" / "broker.ipc")) >= 100
    assert len(str(home / "sessions" / "system.sock")) <= 107
    (home / "capsules").mkdir(parents=True)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    tree = Tree(tmp_path, home, workspace)
    tree.start()
    try:
        status = tree.wait_for(lambda s: s.broker.state == "READY")
        endpoint = status.supervisor.endpoint
        assert endpoint.startswith("ipc://")
        directory = Path(endpoint.removeprefix("ipc://")).parent
        assert directory.name.startswith("astrid-")
        assert directory.stat().st_mode & 0o777 == 0o700
        assert tree.stop() == 0
        assert not directory.exists()
    finally:
        if tree.process is not None and tree.process.poll() is None:
            tree.process.kill()


def test_compile_cache_config_really_caches(tmp_path: Path) -> None:
    """The generated configuration is accepted by extism/wasmtime and survives its cleanup."""
    wasmtime = pytest.importorskip("wasmtime")
    from supervisor.forking import write_compile_cache_config

    config = write_compile_cache_config(tmp_path / "wasmtime")
    wasm = tmp_path / "tiny.wasm"
    wasm.write_bytes(
        bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 7))'))
    )
    probe = (
        "import sys, time, extism\n"
        "extism.Plugin(open(sys.argv[1], 'rb').read(), wasi=False)\n"
        "time.sleep(0.5)\n"  # let wasmtime's background cache worker run
    )
    env = {**os.environ, "EXTISM_CACHE_CONFIG": str(config)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", probe, str(wasm)], env=env, check=True, timeout=60)
        assert config.exists()
    cached = [p for p in (tmp_path / "wasmtime" / "cache").rglob("*") if p.is_file()]
    assert cached
