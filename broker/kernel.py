"""The broker's shared state, handed to every syscall handler through its session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from astrid_core.dirs import AstridHome
from astrid_core.logfile import LogFile
from broker.kvstore import KvStore
from broker.sessions import SessionRegistry


@dataclass(eq=False)
class Kernel:
    home: AstridHome
    workspace: Path
    kv: KvStore
    master_key: bytes = field(repr=False)
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    _logs: dict[str, LogFile] = field(default_factory=dict)

    def capsule_log(self, capsule: str) -> LogFile:
        log = self._logs.get(capsule)
        if log is None:
            log = self._logs[capsule] = LogFile(self.home.logs_dir() / f"{capsule}.log")
        return log

    def global_root(self) -> Path | None:
        """``$ASTRID_HOME/shared`` when it exists (the ``global://`` root)."""
        shared = self.home.shared_dir()
        return shared if shared.is_dir() else None

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self.kv.close()
