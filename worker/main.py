"""Worker process entry point: one capsule, one Extism plugin, one connection to the broker.

Started by the supervisor in a forked child (``astrid_core.launch.WORKER_ENTRY``). Reports its
progress on the status pipe and exits with an :class:`~astrid_core.launch.ExitCode` that tells
the supervisor whether a restart can help.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import extism
from setproctitle import setproctitle

from astrid_core.launch import Event, ExitCode, StatusEvent, WorkerLaunch
from astrid_core.manifest import ManifestError, load_manifest
from astrid_core.wire import HelloInfo
from worker import channel as channel_module
from worker.channel import BrokerChannel, BrokerLost, HelloRejected, ShutdownRequested
from worker.host import HostBridge
from worker.runtime import CALL_TIMEOUT_MS, CapsuleRuntime, Outcome
from worker.wasm import exports_run

log = logging.getLogger("astrid.worker")


class _Status:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, event: StatusEvent) -> None:
        try:
            os.write(self.fd, event.encode())
        except OSError:
            pass  # the supervisor is gone; the parent-death signal ends us shortly


def _exit(status: _Status, code: ExitCode, event: StatusEvent | None = None) -> NoReturn:
    if event is not None:
        status.send(event)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def _run_lifecycle(
    wasm: bytes, bridge: HostBridge, lifecycle: dict[str, Any], status: _Status
) -> Outcome:
    """Run the install/upgrade hook the broker announced, on a plugin without a call timeout
    (a hook may wait for an operator to answer an elicitation; the ``hook`` status event tells
    the supervisor to pause its readiness timeout). A capsule that does not export the hook
    has nothing to do."""
    export, data = lifecycle.get("export"), lifecycle.get("input", b"")
    if not isinstance(export, str) or not isinstance(data, bytes):
        return Outcome(False, "malformed lifecycle request from the broker")
    runtime = CapsuleRuntime(wasm, bridge, timeout_ms=None)
    if not runtime.exports(export):
        return Outcome(True, b"")
    log.info("running %s", export)
    status.send(StatusEvent(Event.HOOK, export))
    return runtime.invoke(export, data)


def _stuck_handler(status: _Status, timeout_ms: int) -> Callable[[str, float], None]:
    """What the watchdog does with a guest that ignored its call timeout (it runs in the
    watchdog's thread while the main thread is stuck in the guest): report and exit at once."""

    def on_stuck(export: str, elapsed: float) -> None:
        reason = (
            f"timeout: the guest ignored its {timeout_ms / 1000:g} s call timeout "
            f"({export} ran {elapsed:.0f} s)"
        )
        # No logging and no flush: the stuck main thread may hold their locks.
        with contextlib.suppress(OSError):
            os.write(2, f"ERROR {reason}\n".encode())
        status.send(StatusEvent(Event.STOPPING, reason))
        os._exit(int(ExitCode.TIMEOUT))

    return on_stuck


def _resume(status: _Status, channel: BrokerChannel) -> None:
    """The broker went away while this tool capsule was serving: wait for the one the
    supervisor restarts and authenticate again, or exit for a restart."""
    log.warning(
        "lost the connection to the broker: waiting up to %g s for it to come back",
        channel_module.RECONNECT_TIMEOUT_S,
    )
    try:
        welcome = channel.reconnect()
    except HelloRejected as exc:
        # Restarting this generation cannot help; a new one says hello from scratch.
        reason = f"the broker refused the reconnection: {exc}"
        log.error("%s", reason)
        _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.STOPPING, reason))
    except BrokerLost as exc:
        log.error("%s", exc)
        _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.STOPPING, str(exc)))
    lifecycle = welcome.get("lifecycle")
    if isinstance(lifecycle, dict):
        # The new broker wants a hook first: a fresh worker runs it on the normal path.
        reason = f"the broker asks for {lifecycle.get('export')} after reconnecting"
        log.warning("%s: exiting for a restart", reason)
        _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.STOPPING, reason))
    log.info("reconnected to the broker (pid %s)", welcome.get("broker_pid"))


def run(launch: WorkerLaunch) -> NoReturn:
    setproctitle(f"astrid-worker: {launch.capsule}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    status = _Status(launch.status_fd)

    def fatal(reason: str) -> NoReturn:
        log.error("%s", reason)
        _exit(status, ExitCode.CONFIG, StatusEvent(Event.FAILED, reason, fatal=True))

    capsule_dir = Path(launch.capsule_dir)
    try:
        manifest = load_manifest(capsule_dir / "Capsule.toml")
        wasm = manifest.component_path(capsule_dir).read_bytes()
    except ManifestError as exc:
        fatal(str(exc))
    except OSError as exc:
        fatal(f"cannot read the capsule's wasm: {exc}")

    has_run = exports_run(wasm)
    info = HelloInfo(launch.capsule, launch.capsule_dir, launch.generation, os.getpid(), has_run)
    channel = BrokerChannel(launch.broker_endpoint, info, launch.secret)
    try:
        channel.hello()
    except HelloRejected as exc:
        fatal(f"the broker refused this capsule: {exc}")
    except BrokerLost as exc:
        _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.FAILED, str(exc)))

    bridge = HostBridge(channel, on_ready=lambda: status.send(StatusEvent(Event.READY)))
    lifecycle = channel.welcome.get("lifecycle")
    if isinstance(lifecycle, dict):
        try:
            outcome = _run_lifecycle(wasm, bridge, lifecycle, status)
        except extism.Error as exc:
            fatal(f"cannot load the capsule's wasm: {exc}")
        except BrokerLost as exc:
            _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.FAILED, str(exc)))
        channel.answer(lifecycle["seq"], outcome.ok, outcome.payload)
        if not outcome.ok:
            fatal(f"lifecycle hook {lifecycle['export']} failed: {outcome.payload!s}")
    timeout_ms = None if has_run or manifest.is_daemon else CALL_TIMEOUT_MS
    try:
        on_stuck = None if timeout_ms is None else _stuck_handler(status, timeout_ms)
        runtime = CapsuleRuntime(wasm, bridge, timeout_ms, on_stuck)
    except extism.Error as exc:
        fatal(f"cannot load the capsule's wasm: {exc}")
    if runtime.exports("run") != has_run:
        fatal("the wasm export pre-scan disagrees with the runtime about `run`")

    status.send(StatusEvent(Event.LOADED, has_run=has_run))
    try:
        if has_run:
            epoch = channel.epoch
            outcome = runtime.invoke("run", b"")
            reason = "run returned" if outcome.ok else f"trap: {outcome.payload!s}"
            if channel.shutdown_reason is not None:
                _exit(status, ExitCode.OK, StatusEvent(Event.STOPPING, channel.shutdown_reason))
            if channel.lost or channel.epoch != epoch:
                # The broker went away under the run loop (it lost its state there): a run
                # cannot resume, a new worker starts it again.
                _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.STOPPING, reason))
            log.error("run loop ended: %s", reason)
            _exit(status, ExitCode.TRAP, StatusEvent(Event.STOPPING, reason))
        status.send(StatusEvent(Event.READY))
        while True:
            try:
                epoch, invocation = channel.next_invocation()
            except BrokerLost:
                _resume(status, channel)
                continue
            outcome = runtime.invoke(invocation.export, invocation.input)
            if not channel.answer(invocation.seq, outcome.ok, outcome.payload, epoch):
                log.warning(
                    "%s (invocation %d) ended while the broker was away, its outcome is "
                    "dropped: %s",
                    invocation.export,
                    invocation.seq,
                    "ok" if outcome.ok else f"trap: {outcome.payload!s}",
                )
    except ShutdownRequested as exc:
        _exit(status, ExitCode.OK, StatusEvent(Event.STOPPING, f"shutdown: {exc}"))
    except BrokerLost as exc:
        _exit(status, ExitCode.TEMPFAIL, StatusEvent(Event.STOPPING, str(exc)))
