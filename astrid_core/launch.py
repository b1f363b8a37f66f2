"""How the supervisor starts the broker and the workers, and how they report back.

The supervisor never imports the broker or worker packages statically (packages only share
``astrid_core``): it pre-imports their modules by name before forking, so that a forked worker
is ready in milliseconds, and calls the entry point named here in the child. Everything a child
needs is handed over in its memory at fork time: the launch record below, including secrets.

Each child reports to the supervisor over a status pipe (``status_fd``) with one JSON object per
line; see :class:`StatusEvent`.
"""

from __future__ import annotations

import enum
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

#: Entry points, ``module:function``; the function takes the launch record and never returns.
WORKER_ENTRY: Final = "worker.main:run"
BROKER_ENTRY: Final = "broker.main:run"

#: Modules the supervisor imports before it forks anything. Importing them starts no thread and
#: creates no ZeroMQ context or wasm engine (forking after either hangs children).
PRELOAD_MODULES: Final = ("extism", "zmq", "msgpack", "worker.main")


class ExitCode(enum.IntEnum):
    """Exit codes of broker and worker processes (the supervisor's restart policy reads them)."""

    OK = 0
    #: The guest trapped in ``run`` (or ``run`` returned): restart under the policy.
    TRAP = 1
    #: Lost the broker and no broker answered within the reconnection bound, or could not reach
    #: it at start: restart under the policy.
    TEMPFAIL = 75
    #: The worker's watchdog ended it: a guest call ran past its call timeout plus a grace
    #: period (a guest blocked where Extism cannot interrupt it, e.g. in a WASI sleep); the
    #: status reason names the export. Restart under the policy (as ``timeout(1)`` does, 124).
    TIMEOUT = 124
    #: Refused for a reason a restart cannot fix (invalid manifest or wasm, missing
    #: configuration, refused hello): FATAL until an operator acts.
    CONFIG = 78


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    capsule: str
    capsule_dir: str
    generation: int
    broker_endpoint: str
    secret: bytes = field(repr=False)
    status_fd: int
    supervisor_pid: int


@dataclass(frozen=True, slots=True)
class BrokerLaunch:
    home: str
    workspace: str
    endpoint: str
    master_key: bytes = field(repr=False)
    status_fd: int
    supervisor_pid: int


class Event(enum.StrEnum):
    #: Worker: about to run a lifecycle hook (``reason`` names it), which may wait for an
    #: operator's answer: the supervisor pauses the readiness timeout until ``LOADED``.
    HOOK = "hook"
    #: Worker: plugin instantiated (``has_run`` says whether it exports ``run``).
    LOADED = "loaded"
    #: Worker: ready to serve (tool capsules after loading, run loops after signal_ready).
    #: Broker: bound and serving.
    READY = "ready"
    #: A start failed; ``fatal`` means restarting cannot help.
    FAILED = "failed"
    #: The process is about to exit on its own (``reason`` says why).
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class StatusEvent:
    event: Event
    reason: str = ""
    fatal: bool = False
    has_run: bool = False

    def encode(self) -> bytes:
        data: dict[str, Any] = {"event": str(self.event)}
        if self.reason:
            data["reason"] = self.reason
        if self.fatal:
            data["fatal"] = True
        if self.has_run:
            data["has_run"] = True
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> StatusEvent:
        """Parse one status line; raises ValueError on anything unexpected."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("status line is not an object")
        event = Event(data["event"])
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("status reason is not a string")
        return cls(event, reason, bool(data.get("fatal", False)), bool(data.get("has_run", False)))


def resolve_entry(entry: str) -> Callable[[Any], NoReturn]:
    """Import ``module:function`` and return the function."""
    module_name, _, function_name = entry.partition(":")
    module = importlib.import_module(module_name)
    function: Callable[[Any], NoReturn] = getattr(module, function_name)
    return function
