"""One capsule's plugin: loading it with Extism and running its exports.

Time limits of a tool call (a capsule without ``run`` that is not a daemon), in three layers
(spec/peers.md §1 lesson 7, §5):

1. Extism's ``timeout_ms`` (epoch interruption) traps a guest that computes past
   :data:`CALL_TIMEOUT_MS`; the worker survives it like any other trap.
2. A host call still waiting for the broker when the call timeout expires gives up: the guest
   traps with a timeout text (see :meth:`worker.channel.BrokerChannel.call`).
3. What neither can interrupt (a guest blocked in a WASI sleep, in the Extism kernel, ...) is
   caught by the :class:`Watchdog`: a daemon thread that ends the worker when a call has not
   returned :data:`WATCHDOG_GRACE_S` after its timeout. cffi releases the GIL while the guest
   runs, so the thread runs too; the worker is never forked from, so a thread is safe here.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import extism

from worker.host import HostBridge

log = logging.getLogger("astrid.worker")

#: Linear-memory cap of every capsule: 1024 pages of 64 KiB = 64 MiB.
MEMORY_MAX_PAGES = 1024
#: Wall-clock limit of one call into a capsule that is not a daemon and has no ``run`` export.
CALL_TIMEOUT_MS = 10_000
#: How long past its timeout a call may run before the watchdog ends the worker.
WATCHDOG_GRACE_S = 5.0

#: Called by the watchdog with the export and the seconds it ran; must not return.
StuckHandler = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    #: The guest's output (ok) or the trap text (not ok).
    payload: bytes | str


def plugin_manifest(wasm: bytes, timeout_ms: int | None) -> dict[str, object]:
    """The Extism manifest: the module, the memory cap and (for tool capsules) the timeout."""
    manifest: dict[str, object] = {
        "wasm": [{"data": base64.b64encode(wasm).decode()}],
        "memory": {"max_pages": MEMORY_MAX_PAGES},
    }
    if timeout_ms is not None:
        manifest["timeout_ms"] = timeout_ms
    return manifest


class Watchdog:
    """Calls ``on_stuck(export, seconds)`` from a daemon thread when a call armed with
    :meth:`arm` is not :meth:`disarm` ed within ``limit_s``.

    Cheap on the hot path: arming and disarming take an uncontended lock and wake the thread
    only when it is idle. The thread sleeps until the deadline of the call it saw last; a later
    call's deadline is never earlier, so it re-checks then.
    """

    def __init__(self, limit_s: float, on_stuck: StuckHandler) -> None:
        self.limit_s = limit_s
        self._on_stuck = on_stuck
        self._condition = threading.Condition(threading.Lock())
        self._export: str | None = None
        self._started = 0.0
        self._idle = True
        self._thread: threading.Thread | None = None

    def arm(self, export: str) -> None:
        with self._condition:
            self._export = export
            self._started = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="astrid-watchdog", daemon=True
                )
                self._thread.start()
            elif self._idle:
                self._condition.notify()

    def disarm(self) -> None:
        with self._condition:
            self._export = None

    def _watch(self) -> None:
        with self._condition:
            while True:
                if self._export is None:
                    self._idle = True
                    self._condition.wait()
                    continue
                self._idle = False
                elapsed = time.monotonic() - self._started
                if elapsed < self.limit_s:
                    self._condition.wait(self.limit_s - elapsed)
                    continue
                self._on_stuck(self._export, elapsed)
                return  # pragma: no cover - on_stuck ends the process


class CapsuleRuntime:
    """The capsule's plugin plus the bridge its host functions share.

    With a ``timeout_ms``, every call gets that timeout (Extism's, and the deadline of its host
    calls); with ``on_stuck`` too, a :class:`Watchdog` calls it for a call still running
    :data:`WATCHDOG_GRACE_S` after its timeout.
    """

    def __init__(
        self,
        wasm: bytes,
        bridge: HostBridge,
        timeout_ms: int | None,
        on_stuck: StuckHandler | None = None,
    ) -> None:
        self.bridge = bridge
        self.timeout_ms = timeout_ms
        self.plugin = extism.Plugin(
            plugin_manifest(wasm, timeout_ms), wasi=True, functions=bridge.functions()
        )
        bridge.attach(self.plugin)
        self.watchdog: Watchdog | None = None
        if timeout_ms is not None and on_stuck is not None:
            self.watchdog = Watchdog(timeout_ms / 1000 + WATCHDOG_GRACE_S, on_stuck)

    def exports(self, name: str) -> bool:
        return bool(self.plugin.function_exists(name))

    def invoke(self, export: str, data: bytes) -> Outcome:
        """Call a guest export; a trap recorded by a host function wins over everything else.

        Never raises for what the guest does: a trap (the timeout included) is an outcome.
        """
        deadline = None
        if self.timeout_ms is not None:
            deadline = time.monotonic() + self.timeout_ms / 1000
        invocation = self.bridge.begin(export, deadline)
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.arm(export)
        try:
            output = self.plugin.call(export, data)
        except extism.Error as exc:
            if invocation.trap_text is not None:
                return Outcome(False, invocation.trap_text)
            return Outcome(False, str(exc) or "guest trapped")
        finally:
            if watchdog is not None:
                watchdog.disarm()
        if invocation.trap_text is not None:
            return Outcome(False, invocation.trap_text)
        return Outcome(True, bytes(output))
