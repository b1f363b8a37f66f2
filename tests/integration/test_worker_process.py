"""A worker process's life: readiness, load failures, shutdown, broker loss, its process title."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import zmq

from astrid_core import wire
from astrid_core.launch import Event, ExitCode
from astrid_core.wire import Hello, Status
from tests import harness
from tests.harness import Runtime

pytestmark = pytest.mark.integration


def test_a_run_loop_capsule_is_ready_after_signal_ready(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    worker = runtime.start_worker(capsules["counter"])
    loaded = worker.wait_for(Event.LOADED)
    assert loaded.has_run
    kinds = [e.event for e in worker.events]
    assert kinds.index(Event.LOADED) < kinds.index(Event.READY)


def test_a_tool_capsule_is_ready_after_loading(runtime: Runtime, capsules: dict[str, Path]) -> None:
    worker = runtime.start_worker(capsules["hello-tool"])
    assert not worker.wait_for(Event.LOADED).has_run


def test_the_process_title_names_the_capsule(runtime: Runtime, capsules: dict[str, Path]) -> None:
    worker = runtime.start_worker(capsules["hello-tool"])
    assert psutil.Process(worker.process.pid).cmdline()[0] == "astrid-worker: hello-tool"
    assert runtime.broker is not None
    assert psutil.Process(runtime.broker.process.pid).cmdline()[0] == "astrid-broker"


@pytest.mark.parametrize(
    ("wasm", "reason"),
    [
        (b"not a wasm binary", "cannot load the capsule's wasm"),
        (None, "cannot read the capsule's wasm"),
    ],
    ids=["corrupt", "missing"],
)
def test_a_capsule_that_cannot_load_is_fatal(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path, wasm: bytes | None, reason: str
) -> None:
    capsule = tmp_path / "hello-tool"
    shutil.copytree(capsules["hello-tool"], capsule)
    target = capsule / "hello.wasm"
    if wasm is None:
        target.unlink()
    else:
        target.write_bytes(wasm)
    worker = runtime.start_worker(capsule, wait=None)
    failed = worker.wait_for(Event.FAILED)
    assert failed.fatal and reason in failed.reason
    assert worker.process.wait(10) == ExitCode.CONFIG


def test_an_invalid_manifest_is_fatal(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    capsule = tmp_path / "hello-tool"
    shutil.copytree(capsules["hello-tool"], capsule)
    (capsule / "Capsule.toml").write_text('[package]\nname = "hello-tool"\nversion = "1.0"\n')
    worker = runtime.start_worker(capsule, wait=None)
    failed = worker.wait_for(Event.FAILED)
    assert failed.fatal and "invalid version '1.0'" in failed.reason


@pytest.fixture
def short_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started by the harness wait 3 s (not 60) for a lost broker to come back."""
    marker = 'resolve_entry("broker.main:run"'
    assert marker in harness._LAUNCHER
    patched = harness._LAUNCHER.replace(
        marker, "import worker.channel\nworker.channel.RECONNECT_TIMEOUT_S = 3.0\n" + marker
    )
    monkeypatch.setattr(harness, "_LAUNCHER", patched)


@pytest.mark.usefixtures("short_reconnect")
def test_a_worker_that_loses_the_broker_waits_for_it_then_exits_for_a_restart(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    """A tool capsule waits for the broker to come back (tests/integration/
    test_worker_resilience.py shows it resuming), but not forever."""
    worker = runtime.start_worker(capsules["hello-tool"])
    assert runtime.broker is not None
    runtime.broker.process.send_signal(signal.SIGKILL)
    started = time.monotonic()
    assert worker.process.wait(15) == ExitCode.TEMPFAIL
    assert 3 <= time.monotonic() - started < 10
    worker.read_events(1)
    assert worker.events[-1].event == Event.STOPPING
    assert worker.events[-1].reason == (
        "lost the connection to the broker; no broker answered within 3 s"
    )


def test_a_worker_that_finds_no_broker_gives_up(tmp_path: Path, capsules: dict[str, Path]) -> None:
    runtime = Runtime(tmp_path, tmp_path, f"ipc://{tmp_path}/nobody.ipc")
    worker = runtime.start_worker(capsules["hello-tool"], wait=None)
    try:
        assert worker.process.wait(30) == ExitCode.TEMPFAIL
        worker.read_events(1)
        assert "did not answer" in worker.events[-1].reason
    finally:
        runtime.stop()


def test_a_shutdown_frame_stops_the_worker(tmp_path: Path, capsules: dict[str, Path]) -> None:
    """The test plays the broker on a real ROUTER socket."""
    endpoint = f"ipc://{tmp_path}/b.ipc"
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    runtime = Runtime(tmp_path, tmp_path, endpoint)
    worker = runtime.start_worker(capsules["hello-tool"], wait=None)
    try:
        assert router.poll(15000)
        identity, raw = router.recv_multipart()
        hello = wire.decode_worker_frame(raw)
        assert isinstance(hello, Hello)
        assert hello.info.pid == worker.process.pid
        assert wire.verify_worker_secret(runtime.master_key, hello.info, hello.secret)
        welcome = wire.encode_welcome({"capsule_uuid": "00000000-0000-0000-0000-000000000001"})
        router.send_multipart([identity, wire.encode_reply(hello.seq, Status.OK, welcome)])
        worker.wait_for(Event.READY)
        router.send_multipart([identity, wire.encode_shutdown("operator asked")])
        assert worker.process.wait(10) == ExitCode.OK
        worker.read_events(1)
        assert worker.events[-1].reason == "shutdown: operator asked"
    finally:
        runtime.stop()
        router.close(0)
        context.term()


def test_the_worker_does_not_inherit_secrets_through_the_environment(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    worker = runtime.start_worker(capsules["hello-tool"])
    environment = psutil.Process(worker.process.pid).environ()
    assert not any(runtime.master_key.hex() in value for value in environment.values())
    assert os.environ.keys() >= environment.keys() - {"EXTISM_CACHE_CONFIG"}


def test_a_run_loop_that_loses_the_broker_mid_call_exits_for_a_restart(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    worker = runtime.start_worker(capsules["counter"])
    assert runtime.broker is not None
    runtime.broker.process.send_signal(signal.SIGKILL)
    assert worker.process.wait(10) == ExitCode.TEMPFAIL
    worker.read_events(1)
    assert worker.events[-1].event == Event.STOPPING
    assert "lost the connection to the broker" in worker.events[-1].reason
    assert "BrokerLost" not in worker.events[-1].reason
