"""Host processes (syscalls.md §2.12 and §5, DESIGN §6.13); the machinery is
:mod:`broker.processes`.

Checks run in this order, with these trap texts:

``astrid_spawn_host(request)`` → ``{"stdout", "stderr", "exit_code"}``
    * request over 10 MiB → ``memory allocation of <n> bytes exceeds maximum allowed limit of
      10485760 bytes``; not ``{"cmd": str, "args"?: [str]}`` →
      ``failed to parse process request: <reason>``. JSON escapes in ``cmd``/``args`` are
      accepted (the reference's borrowed-string failure is not reproduced).
    * ``cmd`` not allowed by the manifest's ``host_process`` →
      ``Security Check Failed: capsule '<id>' denied: host process '<cmd>' not declared in
      manifest``.
    * the program cannot be started → ``failed to spawn command: <reason>`` (``No such file or
      directory (os error 2)``, ``Permission denied (os error 13)``, ``nul byte found in
      provided data``); waiting fails → ``failed to execute command: <reason>``.
    * answered when the command is over (the broker's loop is not blocked): ``exit_code`` is -1
      when a signal ended it; if the capsule's session ends first the group is SIGKILLed and the
      result is ``{"stdout":"","stderr":"process cancelled","exit_code":-1}``.

``astrid_spawn_background_host(request)`` → ``{"id": n}``
    * the same parsing; then ``background process limit reached (max 8)`` when the capsule holds
      8 background processes (running or exited, until killed); then the gate; a start failure
      → ``failed to spawn background process: <reason>``. Ids start at 1 and are never reused.

``astrid_read_process_logs_host(request)`` → ``{"stdout", "stderr", "running", "exit_code"}``
    * request over 256 bytes → ``memory allocation of ...``; not ``{"id": u64}`` →
      ``failed to parse read logs request: <reason>``; unknown id →
      ``no background process with id <id>``.
    * drains the buffers (each call returns only new output); the exit code (null after a
      signal) is reported once, later calls answer ``running: false, exit_code: null``.

``astrid_kill_process_host(request)`` → ``{"killed": true, "exit_code", "stdout", "stderr"}``
    * the same checks with ``failed to parse kill request: <reason>``; the entry is removed, its
      buffers drained, then its group SIGKILLed if the leader runs. ``exit_code``: null when
      SIGKILL ended it or an earlier read already reported the exit, else the natural code.

The reference's ``Security Check Failed: No security gate found for host_process capability.``
and ``failed to wrap command in sandbox: ...`` cannot happen here: every capsule has a gate,
and there is no sandbox wrapper (see :mod:`broker.processes`).
"""

from __future__ import annotations

from collections.abc import Awaitable

from astrid_core.serde import Fields, SerdeError, dumps, loads, to_str_list
from broker.errors import SyscallError, guard
from broker.gate import GateDenied
from broker.limits import MAX_GUEST_PAYLOAD_LEN
from broker.processes import (
    MAX_BACKGROUND_PROCESSES,
    BackgroundLimitReached,
    CapsuleProcesses,
    HostProcess,
    SpawnFailed,
)
from broker.sessions import CapsuleSession

#: read_process_logs and kill_process requests.
MAX_ID_REQUEST_LEN = 256


def _process_request(request: bytes) -> tuple[str, list[str]]:
    guard(request, MAX_GUEST_PAYLOAD_LEN)
    try:
        fields = Fields(loads(request), "request")
        cmd = fields.string("cmd")
        args = to_str_list(fields.raw("args"), "request.args") if fields.has("args") else []
    except SerdeError as exc:
        raise SyscallError(f"failed to parse process request: {exc}") from None
    return cmd, args


def _id_request(request: bytes, what: str) -> int:
    guard(request, MAX_ID_REQUEST_LEN)
    try:
        return Fields(loads(request), "request").uint("id")
    except SerdeError as exc:
        raise SyscallError(f"failed to parse {what} request: {exc}") from None


def _check_gate(session: CapsuleSession, cmd: str) -> None:
    try:
        session.gate.check_host_process(cmd)
    except GateDenied as exc:
        raise SyscallError(f"Security Check Failed: {exc}") from None


def _processes(session: CapsuleSession) -> CapsuleProcesses:
    return session.extension(CapsuleProcesses)


def astrid_spawn_host(session: CapsuleSession, request: bytes) -> Awaitable[bytes]:
    cmd, args = _process_request(request)
    _check_gate(session, cmd)
    processes = _processes(session)
    try:
        process = processes.spawn(cmd, args)
    except SpawnFailed as exc:
        raise SyscallError(f"failed to spawn command: {exc.text}") from None
    return _wait(processes, process)


async def _wait(processes: CapsuleProcesses, process: HostProcess) -> bytes:
    try:
        result = await processes.wait(process)
    except OSError as exc:  # pragma: no cover - the loop's reads and waits do not raise
        raise SyscallError(f"failed to execute command: {exc}") from None
    return dumps(result).encode()


def astrid_spawn_background_host(session: CapsuleSession, request: bytes) -> bytes:
    cmd, args = _process_request(request)
    processes = _processes(session)
    try:
        processes.check_limit()
    except BackgroundLimitReached:
        raise SyscallError(
            f"background process limit reached (max {MAX_BACKGROUND_PROCESSES})"
        ) from None
    _check_gate(session, cmd)
    try:
        number = processes.spawn_background(cmd, args)
    except SpawnFailed as exc:
        raise SyscallError(f"failed to spawn background process: {exc.text}") from None
    return dumps({"id": number}).encode()


def astrid_read_process_logs_host(session: CapsuleSession, request: bytes) -> bytes:
    number = _id_request(request, "read logs")
    try:
        result = _processes(session).read_logs(number)
    except KeyError:
        raise SyscallError(f"no background process with id {number}") from None
    return dumps(result).encode()


def astrid_kill_process_host(session: CapsuleSession, request: bytes) -> Awaitable[bytes]:
    number = _id_request(request, "kill")
    processes = _processes(session)
    if number not in processes.background:
        raise SyscallError(f"no background process with id {number}")
    return _kill(processes, number)


async def _kill(processes: CapsuleProcesses, number: int) -> bytes:
    return dumps(await processes.kill(number)).encode()
