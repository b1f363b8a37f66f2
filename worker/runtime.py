"""One capsule's plugin: loading it with Extism and running its exports."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import extism

from worker.host import HostBridge

log = logging.getLogger("astrid.worker")

#: Linear-memory cap of every capsule: 1024 pages of 64 KiB = 64 MiB.
MEMORY_MAX_PAGES = 1024
#: Wall-clock limit of one call into a capsule that is not a daemon and has no ``run`` export.
CALL_TIMEOUT_MS = 10_000


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


class CapsuleRuntime:
    """The capsule's plugin plus the bridge its host functions share."""

    def __init__(self, wasm: bytes, bridge: HostBridge, timeout_ms: int | None) -> None:
        self.bridge = bridge
        self.plugin = extism.Plugin(
            plugin_manifest(wasm, timeout_ms), wasi=True, functions=bridge.functions()
        )
        bridge.attach(self.plugin)

    def exports(self, name: str) -> bool:
        return bool(self.plugin.function_exists(name))

    def invoke(self, export: str, data: bytes) -> Outcome:
        """Call a guest export; a trap recorded by a host function wins over everything else."""
        invocation = self.bridge.begin(export)
        try:
            output = self.plugin.call(export, data)
        except extism.Error as exc:
            if invocation.trap_text is not None:
                return Outcome(False, invocation.trap_text)
            return Outcome(False, str(exc) or "guest trapped")
        if invocation.trap_text is not None:
            return Outcome(False, invocation.trap_text)
        return Outcome(True, bytes(output))
