"""The broker's shared state, handed to every syscall handler through its session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from astrid_core.dirs import AstridHome
from astrid_core.logfile import LogFile
from broker.bus import Bus
from broker.kvstore import KvStore
from broker.sessions import CapsuleSession, SessionRegistry


class Invoker(Protocol):
    async def invoke(
        self, session: CapsuleSession, export: str, data: bytes, caller: dict[str, Any]
    ) -> bytes:
        """Run a guest export in the capsule's worker; raises InvocationFailed."""
        ...


SessionHook = Callable[[CapsuleSession], None]


class KernelService:
    """Kernel-wide state of one syscall group (identity store, process table, approvals...).

    Created on first use by :meth:`Kernel.service` and closed when the broker stops.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def close(self) -> None:
        """Release what the service holds; called once, when the broker stops."""


S = TypeVar("S", bound=KernelService)


@dataclass(eq=False)
class Kernel:
    home: AstridHome
    workspace: Path
    kv: KvStore
    master_key: bytes = field(repr=False)
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    bus: Bus = field(default_factory=Bus)
    #: Runs guest exports (the worker router); set when the broker starts.
    invoker: Invoker | None = None
    #: Called after a capsule connected (its session is registered) and after it left.
    on_connect: list[SessionHook] = field(default_factory=list)
    on_disconnect: list[SessionHook] = field(default_factory=list)
    _services: dict[type[KernelService], KernelService] = field(default_factory=dict)

    def service(self, kind: type[S]) -> S:
        """The kernel's ``kind`` service, created on first use."""
        value = self._services.get(kind)
        if value is None:
            value = self._services[kind] = kind(self)
        assert isinstance(value, kind)
        return value

    _logs: dict[str, LogFile] = field(default_factory=dict)

    def capsule_log(self, capsule: str) -> LogFile:
        log = self._logs.get(capsule)
        if log is None:
            log = self._logs[capsule] = LogFile(self.home.logs_dir() / f"{capsule}.log")
        return log

    async def invoke(
        self, session: CapsuleSession, export: str, data: bytes, caller: dict[str, Any]
    ) -> bytes:
        """Run ``export`` of a connected capsule (queued behind its other invocations)."""
        if self.invoker is None:
            raise RuntimeError("the broker has no worker router yet")
        return await self.invoker.invoke(session, export, data, caller)

    def global_root(self) -> Path | None:
        """``$ASTRID_HOME/shared`` when it exists (the ``global://`` root)."""
        shared = self.home.shared_dir()
        return shared if shared.is_dir() else None

    def close(self) -> None:
        services = list(self._services.values())
        self._services.clear()
        for service in reversed(services):
            service.close()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self.kv.close()
