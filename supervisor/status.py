"""The status file ``state/supervisor.json``, written by the supervisor for ``astrid ps``/``kill``.

The supervisor rewrites it atomically (temporary file + :func:`os.replace`) whenever a state
changes. Readers never trust a pid alone: every process carries its ``create_time`` (from psutil,
read right after the fork) so that a reused pid is recognised (see :func:`live_process`).

Schema (version 1; times are UNIX seconds as floats)::

    {"version": 1,
     "supervisor": {"pid", "create_time", "started_at", "home", "workspace", "endpoint"},
     "broker": {"pid", "create_time", "state", "restarts", "started_at", "last_exit"},
     "capsules": [{"name", "dir", "pid", "create_time", "state", "restarts", "generation",
                   "started_at", "last_exit", "has_run"}]}

``pid``, ``create_time``, ``started_at`` and ``last_exit`` are ``null`` when not applicable
(no process, never exited). ``state`` is one of :class:`ProcState`. ``last_exit`` says how the
last generation ended, and why when the supervisor ended it: ``killed by SIGKILL: memory: RSS
80.2 MiB over the 64 MiB limit``, ``...: not ready within 10 s``, ``...: stopped by the
operator``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

__all__ = [
    "STATUS_VERSION",
    "BrokerStatus",
    "CapsuleStatus",
    "ProcState",
    "StatusFile",
    "SupervisorInfo",
    "live_process",
    "read_status",
    "remove_status",
    "status_path",
    "write_status",
]

STATUS_VERSION: Final = 1
STATUS_FILE_NAME: Final = "supervisor.json"

#: Two readings of one process's create_time agree to well within a clock tick (10 ms).
_CREATE_TIME_TOLERANCE: Final = 0.005


class ProcState(enum.StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"
    STOPPED = "STOPPED"


@dataclass(frozen=True, slots=True)
class SupervisorInfo:
    pid: int
    create_time: float
    started_at: float
    home: str
    workspace: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    pid: int | None = None
    create_time: float | None = None
    state: ProcState = ProcState.STARTING
    restarts: int = 0
    started_at: float | None = None
    last_exit: str | None = None


@dataclass(frozen=True, slots=True)
class CapsuleStatus:
    name: str
    dir: str
    pid: int | None = None
    create_time: float | None = None
    state: ProcState = ProcState.STARTING
    restarts: int = 0
    generation: int = 0
    started_at: float | None = None
    last_exit: str | None = None
    has_run: bool = False


@dataclass(frozen=True, slots=True)
class StatusFile:
    supervisor: SupervisorInfo
    broker: BrokerStatus
    capsules: list[CapsuleStatus] = field(default_factory=list)
    version: int = STATUS_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "supervisor": asdict(self.supervisor),
            "broker": asdict(self.broker),
            "capsules": [asdict(capsule) for capsule in self.capsules],
        }

    def capsule(self, name: str) -> CapsuleStatus | None:
        return next((c for c in self.capsules if c.name == name), None)


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE_NAME


def write_status(path: Path, status: StatusFile) -> None:
    """Replace ``path`` atomically with ``status`` (readers see the old or the new file)."""
    data = json.dumps(status.to_json(), separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_status(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --------------------------------------------------------------------------------------------
# Tolerant reading: a malformed file is "no supervisor"; a malformed field gets its default.


class _MalformedError(ValueError):
    pass


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _float(value: object) -> float | None:
    if type(value) in (int, float):
        return float(value)  # type: ignore[arg-type]
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _state(value: object, default: ProcState) -> ProcState:
    if isinstance(value, str) and value in ProcState.__members__:
        return ProcState(value)
    return default


def _required(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _MalformedError
    return value


def _parse_supervisor(data: object) -> SupervisorInfo:
    if not isinstance(data, Mapping):
        raise _MalformedError
    create_time = _float(data.get("create_time"))
    started_at = _float(data.get("started_at"))
    if create_time is None or started_at is None:
        raise _MalformedError
    return SupervisorInfo(
        pid=_required(data.get("pid"), int),
        create_time=create_time,
        started_at=started_at,
        home=_str(data.get("home")) or "",
        workspace=_str(data.get("workspace")) or "",
        endpoint=_str(data.get("endpoint")) or "",
    )


def _parse_broker(data: object) -> BrokerStatus:
    if not isinstance(data, Mapping):
        return BrokerStatus(state=ProcState.STOPPED)
    return BrokerStatus(
        pid=_int(data.get("pid")),
        create_time=_float(data.get("create_time")),
        state=_state(data.get("state"), ProcState.STOPPED),
        restarts=_int(data.get("restarts")) or 0,
        started_at=_float(data.get("started_at")),
        last_exit=_str(data.get("last_exit")),
    )


def _parse_capsule(data: object) -> CapsuleStatus | None:
    if not isinstance(data, Mapping):
        return None
    name = _str(data.get("name"))
    if not name:
        return None
    return CapsuleStatus(
        name=name,
        dir=_str(data.get("dir")) or "",
        pid=_int(data.get("pid")),
        create_time=_float(data.get("create_time")),
        state=_state(data.get("state"), ProcState.STOPPED),
        restarts=_int(data.get("restarts")) or 0,
        generation=_int(data.get("generation")) or 0,
        started_at=_float(data.get("started_at")),
        last_exit=_str(data.get("last_exit")),
        has_run=data.get("has_run") is True,
    )


def read_status(path: Path) -> StatusFile | None:
    """The status file at ``path``, or ``None`` when it is missing, unreadable or malformed.

    Malformed entries inside an otherwise valid file are skipped (capsules) or read with
    defaults (fields), so that ``astrid ps`` shows what it can.
    """
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(data, dict) or data.get("version") != STATUS_VERSION:
        return None
    try:
        supervisor = _parse_supervisor(data.get("supervisor"))
    except _MalformedError:
        return None
    raw_capsules = data.get("capsules")
    capsules = [
        capsule
        for capsule in map(_parse_capsule, raw_capsules if isinstance(raw_capsules, list) else [])
        if capsule is not None
    ]
    return StatusFile(supervisor, _parse_broker(data.get("broker")), capsules)


def live_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The process ``pid`` if it is alive and is the one that was recorded (same create_time)."""
    if pid is None or create_time is None or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        actual = process.create_time()
    except (psutil.Error, OSError):
        return None
    if abs(actual - create_time) > _CREATE_TIME_TOLERANCE:
        return None
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.Error, OSError):
        return None
    return process
