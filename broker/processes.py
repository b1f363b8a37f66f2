"""Host processes that capsules spawn (syscalls.md §2.12 and §5, DESIGN §6.13).

Three parts:

* :class:`HostProcess`: one spawned command. It leads its own process group, its stdin is
  ``/dev/null``, its stdout and stderr are pipes that the broker's loop copies into
  :class:`RingBuffer` s (no reader threads), and a pidfd tells the loop when it exits. When the
  leader exits, whatever is left of its group is SIGKILLed before the leader is reaped: the
  reference runs every command in a bwrap PID namespace, which ends the same way, and as long
  as the leader is not reaped its pid reserves the group id, so the group signal can never hit
  a stranger.
* :class:`ProcessTable`: the kernel-wide table of the processes whose leader is not reaped
  yet. It keeps ``$ASTRID_HOME/state/processes.json`` current for ``astrid ps``/``astrid kill``
  and for the supervisor, which kills the listed groups when the broker dies (see below), and it
  listens on the bus for ``tool_cancel_request`` messages.
* :class:`CapsuleProcesses`: one capsule's side: its background processes (ids from 1, never
  reused, at most :data:`MAX_BACKGROUND_PROCESSES` entries; an exited process keeps its entry,
  and its output, until it is killed, so the memory a capsule can pin stays bounded) and its
  synchronous spawns in flight. When the capsule's session ends, every group it owns is
  SIGKILLed.

Output: 1 MiB per stream of a background process (the oldest bytes go first), decoded lossily
when read. A synchronous spawn keeps the newest :data:`MAX_SYNC_OUTPUT` bytes per stream (the
reference buffers without a cap; an unbounded buffer would let one command exhaust the broker).

How a command is started:

* The environment is built from an allow-list of the broker's own environment
  (:data:`astrid_core.env_policy.DEFAULT_SPAWN_ALLOW`) minus every name
  :func:`~astrid_core.env_policy.is_blocked_spawn_env` blocks and every ``ASTRID_*``, with a
  fixed ``PATH`` (:data:`SAFE_PATH`) and ``HOME`` set to the workspace. The working directory is
  the workspace. A program name without ``/`` is looked up in :data:`SAFE_PATH`, a path with
  ``/`` is taken relative to the workspace; a program that cannot be found or executed is a
  spawn failure (``No such file or directory (os error 2)``, ``Permission denied (os error
  13)``).
* The command runs through ``setpriv --pdeathsig KILL -- <cmd> <args...>``, so it is SIGKILLed
  when the broker dies, even by ``kill -9``. Without ``setpriv`` (util-linux) the command runs
  directly and a warning is logged. Its own children do not inherit the parent-death signal;
  two things kill them when the broker dies: the supervisor kills the groups listed in the table
  file when it sees the broker exit, and, for when the supervisor died too (``kill -9`` of the
  supervisor takes the broker along through its own parent-death signal), the
  :class:`OrphanGuard`.
* The orphan guard is one small helper process per broker (``python -I -S``, its own process
  group, started with the first host process): the broker tells it every group it starts and
  reaps, over a pipe that only the broker holds. When the broker dies, however it dies, the
  pipe reaches its end and the guard SIGKILLs every group still registered whose members it can
  verify (a process of the group created no earlier than its leader), then exits. The command
  itself stays the direct child of the broker and the leader of its group, so its pid, its
  exit status, its signal death and its name in ``astrid ps`` are the command's own.
* There is no sandbox: the reference wraps commands in ``bwrap`` (Linux) or ``sandbox-exec``
  (macOS); neither is available here, so a host process has the broker's user rights, confined
  only by the manifest's ``host_process`` allow-list, the sanitised environment and the process
  group.

Cancellation: a bus message on ``tool.v1.request.cancel`` with payload
``{"type": "tool_cancel_request", "call_ids": [...]}`` (a non-empty list) SIGINTs the group of
every *synchronous* spawn in flight whose ``call_id`` (the ``session_id`` of the caller of the
invocation that spawned it, or null) is in the list or is null, and SIGKILLs it 2 s later if its
leader is still running. Background processes are not tracked for cancellation (as in the
reference): they are meant to outlive the call that started them.

The table file (version 1; written atomically, mode 0600; times are UNIX seconds)::

    {"version": 1,
     "broker": {"pid", "create_time"},
     "processes": [{"pid", "pgid", "capsule", "command", "started_at", "create_time"}]}

``create_time`` is psutil's, so that a reader recognises a reused pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import psutil

from astrid_core.env_policy import DEFAULT_SPAWN_ALLOW, sanitized_environment
from broker.bus import BusMessage
from broker.kernel import Kernel, KernelService
from broker.limits import MAX_GUEST_PAYLOAD_LEN
from broker.sessions import CapsuleSession, SessionExtension

__all__ = [
    "CANCEL_TOPIC",
    "MAX_BACKGROUND_PROCESSES",
    "MAX_BUFFER_BYTES",
    "MAX_SYNC_OUTPUT",
    "SAFE_PATH",
    "SIGKILL_GRACE",
    "TABLE_FILE_NAME",
    "BackgroundLimitReached",
    "CapsuleProcesses",
    "HostProcess",
    "ProcessTable",
    "RingBuffer",
    "SpawnFailed",
    "child_environment",
    "table_path",
]

log = logging.getLogger("astrid.broker")

#: Background processes one capsule may hold (running or exited, until killed).
MAX_BACKGROUND_PROCESSES: Final = 8
#: Per stream of a background process; the oldest bytes are discarded beyond it.
MAX_BUFFER_BYTES: Final = 1024 * 1024
#: Per stream of a synchronous spawn (the reference has no cap; astrid keeps the newest 10 MiB
#: so that a chatty command cannot exhaust the broker's memory).
MAX_SYNC_OUTPUT: Final = MAX_GUEST_PAYLOAD_LEN
#: Between the SIGINT of a cancellation and the SIGKILL of what still runs.
SIGKILL_GRACE: Final = 2.0
#: How long ``kill`` waits for a SIGKILLed leader before answering without its exit status.
KILL_WAIT: Final = 5.0
#: The ``PATH`` of every host process, and where program names are looked up.
SAFE_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
#: ``setpriv`` of util-linux: sets the parent-death signal, then execs the command.
SETPRIV = "/usr/bin/setpriv"
#: How long the broker waits for the orphan guard to exit when it stops.
GUARD_EXIT_WAIT: Final = 2.0
CANCEL_TOPIC: Final = "tool.v1.request.cancel"
TABLE_FILE_NAME: Final = "processes.json"
TABLE_VERSION: Final = 1
_READ_SIZE: Final = 65536


def table_path(state_dir: Path) -> Path:
    """``state/processes.json``."""
    return state_dir / TABLE_FILE_NAME


def child_environment(source: Mapping[str, str], workspace: Path | str) -> dict[str, str]:
    """The environment of a host process (DESIGN §6.13): the allow-listed names of ``source``
    that the spawn blocklist lets through, no ``ASTRID_*``, the safe ``PATH`` and
    ``HOME`` = the workspace."""
    return sanitized_environment(
        source, DEFAULT_SPAWN_ALLOW, fixed={"PATH": SAFE_PATH, "HOME": str(workspace)}
    )


class SpawnFailed(Exception):
    """The command could not be started; ``text`` is worded like Rust's ``io::Error``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @classmethod
    def from_os_error(cls, exc: OSError) -> SpawnFailed:
        if exc.errno is None:
            return cls(str(exc))
        reason = exc.strerror or os.strerror(exc.errno)
        return cls(f"{reason} (os error {exc.errno})")


class BackgroundLimitReached(Exception):
    pass


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _check_program(cmd: str, args: Sequence[str], workspace: Path) -> None:
    """Raise :class:`SpawnFailed` unless ``cmd`` names an executable file (as ``execvp`` in the
    workspace with :data:`SAFE_PATH` would find it)."""
    if "\0" in cmd or any("\0" in arg for arg in args):
        raise SpawnFailed("nul byte found in provided data")
    if not cmd:
        raise SpawnFailed.from_os_error(_os_error(errno.ENOENT))
    if "/" in cmd:
        path = workspace / cmd
        if not path.exists():
            raise SpawnFailed.from_os_error(_os_error(errno.ENOENT))
        if path.is_dir() or not os.access(path, os.X_OK):
            raise SpawnFailed.from_os_error(_os_error(errno.EACCES))
        return
    for directory in SAFE_PATH.split(":"):
        candidate = os.path.join(directory, cmd)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return
    raise SpawnFailed.from_os_error(_os_error(errno.ENOENT))


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    the same number the orphan guard reads."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------------------
# The orphan guard

#: The guard's program (``python -I -S -c``). Its stdin is the pipe from the broker, one line
#: per change: ``+ <pgid> <start ticks of the leader>`` or ``- <pgid>``. At the end of the pipe
#: it SIGKILLs every registered group that still has a live (not zombie) member created no
#: earlier than the group's leader (a group id stays reserved while a member lives, so such a
#: group is the original one), until none is left, then exits.
_GUARD_PROGRAM: Final = r"""# astrid orphan guard: kills host process groups when the broker dies
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
groups = {}
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    for line in lines:
        fields = line.split()
        try:
            if len(fields) == 3 and fields[0] == b"+":
                groups[int(fields[1])] = int(fields[2])
            elif len(fields) == 2 and fields[0] == b"-":
                groups.pop(int(fields[1]), None)
        except ValueError:
            pass

def members():
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            state, group, started = fields[0], int(fields[2]), int(fields[19])
        except (OSError, ValueError, IndexError):
            continue
        if state != b"Z" and group in groups and started >= groups[group]:
            found.add(group)
    return found

for _ in range(100):
    live = members() if groups else ()
    if not live:
        break
    for group in live:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.01)
"""


class OrphanGuard:
    """The broker's side of the orphan guard (see the module docstring).

    Started with the first registered group, restarted (with every registered group) if it ever
    exits while the broker runs, closed with the process table. Writes never block the loop: the
    pipe is non-blocking and a guard that stops reading is replaced.
    """

    def __init__(self) -> None:
        self._groups: dict[int, int] = {}
        self._popen: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._pidfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def add(self, pgid: int, start_ticks: int) -> None:
        self._groups[pgid] = start_ticks
        self._send(b"+ %d %d\n" % (pgid, start_ticks))

    def remove(self, pgid: int) -> None:
        if self._groups.pop(pgid, None) is not None:
            self._send(b"- %d\n" % pgid)

    def _send(self, line: bytes) -> None:
        if self._closed:
            return
        if self._fd < 0:
            self._start()  # sends every registered group, this change included
            return
        try:
            os.write(self._fd, line)  # a line is far below PIPE_BUF: all or nothing
        except OSError as exc:
            log.warning("the orphan guard does not listen (%s): replacing it", exc)
            self._stop(wait=0.0)
            self._start()

    def _start(self) -> None:
        if not self._groups:
            return
        read_fd, write_fd = os.pipe()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_PROGRAM],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                env={},
                process_group=0,
            )
        except OSError as exc:
            os.close(write_fd)
            log.error("cannot start the orphan guard: %s", exc)
            return
        finally:
            os.close(read_fd)
        os.set_blocking(write_fd, False)
        self._popen, self._fd = popen, write_fd
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        if self._loop is not None:
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(popen.pid)
                self._loop.add_reader(self._pidfd, self._on_exit)
        lines = b"".join(b"+ %d %d\n" % item for item in self._groups.items())
        try:
            os.write(write_fd, lines)
        except OSError as exc:  # pragma: no cover - a fresh pipe holds 64 KiB
            log.error("cannot register host process groups with the orphan guard: %s", exc)

    def _on_exit(self) -> None:
        """The guard exited while the broker runs (it never should): replace it."""
        code = self._popen.poll() if self._popen is not None else None
        log.warning("the orphan guard exited (status %s): restarting it", code)
        self._stop(wait=0.0)
        self._start()

    def _stop(self, wait: float) -> None:
        if self._pidfd >= 0:
            if self._loop is not None:
                with contextlib.suppress(ValueError, RuntimeError):
                    self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._fd >= 0:
            os.close(self._fd)  # the end of the pipe: the guard cleans up and exits
            self._fd = -1
        popen, self._popen = self._popen, None
        if popen is not None:
            try:
                popen.wait(wait)
            except subprocess.TimeoutExpired:
                popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(0.5)

    def close(self, wait: float = GUARD_EXIT_WAIT) -> None:
        """Let the guard go (it kills the groups still registered) and reap it, bounded."""
        self._closed = True
        self._stop(wait)


# --------------------------------------------------------------------------------------------
# Output buffers


class RingBuffer:
    """The output of one stream, capped at ``capacity`` bytes: the oldest bytes are discarded."""

    __slots__ = ("_data", "capacity", "discarded")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a ring buffer needs a positive capacity")
        self.capacity = capacity
        self._data = bytearray()
        #: Bytes dropped because the buffer was full (since it was created).
        self.discarded = 0

    def write(self, chunk: bytes) -> None:
        if len(chunk) >= self.capacity:
            self.discarded += len(self._data) + len(chunk) - self.capacity
            self._data[:] = chunk[-self.capacity :]
            return
        self._data += chunk
        excess = len(self._data) - self.capacity
        if excess > 0:
            del self._data[:excess]
            self.discarded += excess

    def drain(self) -> bytes:
        """Everything held, removed from the buffer."""
        data = bytes(self._data)
        self._data.clear()
        return data

    def __len__(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------------------------
# One process


class HostProcess:
    """A spawned command: the leader of its own process group, and its two output streams.

    ``returncode`` stays None until the loop has reaped the leader (``-N`` after signal N).
    While it is None, the leader's pid (a zombie at worst) reserves the group id, so
    :meth:`signal_group` is always safe; afterwards it does nothing.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout_fd: int,
        stderr_fd: int,
        *,
        table: ProcessTable,
        capsule: str,
        argv: Sequence[str],
        call_id: str | None,
        background: bool,
        capacity: int,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._popen = popen
        self._table = table
        self.pid = popen.pid
        self.pgid = popen.pid
        self.capsule = capsule
        self.command = shlex.join(argv)
        self.call_id = call_id
        self.background = background
        self.started_at = time.time()
        self.create_time = _create_time(self.pid)
        self.stdout = RingBuffer(capacity)
        self.stderr = RingBuffer(capacity)
        self.returncode: int | None = None
        #: The exit status was reported by ``read_process_logs`` (it is reported once).
        self.exit_reported = False
        #: The owner gave up on the process (its session ended): no result is expected.
        self.abandoned = False
        self._exited = asyncio.Event()
        self._eof = asyncio.Event()
        self._streams: dict[int, RingBuffer] = {stdout_fd: self.stdout, stderr_fd: self.stderr}
        for fd in self._streams:
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._on_readable, fd)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # pragma: no cover - Linux < 5.3; fall back to polling the leader
            self._pidfd = -1
            self.loop.call_later(0.05, self._poll_exit)
        else:
            self.loop.add_reader(self._pidfd, self._on_exit)

    def __repr__(self) -> str:
        return f"<HostProcess {self.pid} of {self.capsule}: {self.command}>"

    @property
    def running(self) -> bool:
        """The leader is not reaped yet."""
        return self.returncode is None

    # -- signals -----------------------------------------------------------------------------

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the process group while the leader is not reaped."""
        if self.returncode is not None:
            return False
        return _killpg(self.pgid, sig)

    # -- output ------------------------------------------------------------------------------

    def _on_readable(self, fd: int) -> None:
        self._read(fd, _READ_SIZE)

    def _read(self, fd: int, budget: int) -> None:
        buffer = self._streams.get(fd)
        if buffer is None:
            return
        while budget > 0:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("cannot read the output of %r: %s", self, exc)
                self._close_stream(fd)
                return
            if not chunk:
                self._close_stream(fd)
                return
            buffer.write(chunk)
            budget -= len(chunk)

    def pump(self) -> None:
        """Copy whatever the pipes hold now into the buffers (up to what a buffer can keep)."""
        for fd, buffer in list(self._streams.items()):
            self._read(fd, buffer.capacity + _READ_SIZE)

    def _close_stream(self, fd: int) -> None:
        if self._streams.pop(fd, None) is None:
            return
        with contextlib.suppress(ValueError, RuntimeError):
            self.loop.remove_reader(fd)
        os.close(fd)
        if not self._streams:
            self._eof.set()

    def close_streams(self) -> None:
        """Stop reading the output (what the pipes still hold is lost)."""
        for fd in list(self._streams):
            self._close_stream(fd)

    # -- exit --------------------------------------------------------------------------------

    def _leader_exited(self) -> bool:
        """Whether the leader exited (without reaping it)."""
        if self._pidfd >= 0:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            return bool(poller.poll(0))
        try:  # pragma: no cover - only without pidfds
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self.pid, flags) is not None
        except ChildProcessError:  # pragma: no cover
            return True

    def _poll_exit(self) -> None:  # pragma: no cover - only without pidfds
        if self.returncode is not None:
            return
        if self._leader_exited():
            self._reap()
        elif not self.loop.is_closed():
            self.loop.call_later(0.05, self._poll_exit)

    def _on_exit(self) -> None:
        """The pidfd is readable: the leader exited (a zombie until reaped here)."""
        self._close_pidfd()
        self._reap()

    def refresh(self) -> None:
        """Notice an exit that the loop has not handled yet (a non-blocking check)."""
        if self.returncode is None and self._leader_exited():
            self._close_pidfd()
            self._reap()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ValueError, RuntimeError):
                self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _reap(self, timeout: float | None = None) -> None:
        if self.returncode is not None:
            return
        # The group does not outlive its leader: kill the rest while the leader, a zombie,
        # still reserves the group id.
        _killpg(self.pgid, signal.SIGKILL)
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        self.returncode = code
        self._exited.set()
        self._table.forget(self)

    async def wait_exit(self, timeout: float | None = None) -> bool:
        """Wait until the leader is reaped; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._exited.wait()
        except TimeoutError:
            return False
        return True

    async def finished(self) -> None:
        """Wait until the leader is reaped and both streams are at their end."""
        await self._exited.wait()
        await self._eof.wait()

    # -- ends --------------------------------------------------------------------------------

    def abandon(self) -> None:
        """The owner is gone: SIGKILL the group, stop reading; the loop reaps the leader."""
        self.abandoned = True
        self.signal_group(signal.SIGKILL)
        self.close_streams()

    def close_now(self, timeout: float) -> None:
        """At broker shutdown: SIGKILL the group and reap the leader (blocking, bounded)."""
        self.abandoned = True
        self.signal_group(signal.SIGKILL)
        self.close_streams()
        self._close_pidfd()
        self._reap(timeout)

    # -- results -----------------------------------------------------------------------------

    @property
    def exit_code(self) -> int | None:
        """The exit code, or None when the leader was killed by a signal or is not reaped."""
        code = self.returncode
        return code if code is not None and code >= 0 else None

    def table_entry(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pgid": self.pgid,
            "capsule": self.capsule,
            "command": self.command,
            "started_at": self.started_at,
            "create_time": self.create_time,
        }


# --------------------------------------------------------------------------------------------
# The kernel-wide table


class ProcessTable(KernelService):
    """Every host process whose leader is not reaped yet, the table file, the cancel listener."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._processes: dict[int, HostProcess] = {}
        self.path = table_path(kernel.home.state_dir())
        self._broker = {"pid": os.getpid(), "create_time": _create_time(os.getpid())}
        self._closed = False
        self._setpriv_warned = False
        self.guard = OrphanGuard()
        kernel.bus.add_listener(self._on_bus_message)

    def __iter__(self) -> Iterator[HostProcess]:
        return iter(list(self._processes.values()))

    def __len__(self) -> int:
        return len(self._processes)

    # -- spawning ----------------------------------------------------------------------------

    def _launcher(self) -> list[str]:
        if os.access(SETPRIV, os.X_OK):
            return [SETPRIV, "--pdeathsig", "KILL", "--"]
        if not self._setpriv_warned:
            self._setpriv_warned = True
            log.warning(
                "%s is missing (util-linux): host processes are started without a parent-death "
                "signal and survive a broker killed with SIGKILL until the supervisor cleans up",
                SETPRIV,
            )
        return []

    def spawn(
        self,
        session: CapsuleSession,
        cmd: str,
        args: Sequence[str],
        *,
        background: bool,
        capacity: int,
    ) -> HostProcess:
        """Start ``cmd args...`` for ``session``'s capsule; raises :class:`SpawnFailed`."""
        if self._closed:
            raise SpawnFailed("the broker is shutting down")
        workspace = self.kernel.workspace
        _check_program(cmd, args, workspace)
        caller_session = session.caller.get("session_id")
        call_id = caller_session if isinstance(caller_session, str) else None
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            popen = subprocess.Popen(
                [*self._launcher(), cmd, *args],
                stdin=subprocess.DEVNULL,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd=workspace,
                env=child_environment(os.environ, workspace),
                process_group=0,
            )
        except OSError as exc:
            for fd in (stdout_r, stderr_r):
                os.close(fd)
            raise SpawnFailed.from_os_error(exc) from None
        except ValueError as exc:  # pragma: no cover - NUL bytes are refused above
            for fd in (stdout_r, stderr_r):
                os.close(fd)
            raise SpawnFailed(str(exc)) from None
        finally:
            os.close(stdout_w)
            os.close(stderr_w)
        process = HostProcess(
            popen,
            stdout_r,
            stderr_r,
            table=self,
            capsule=session.name,
            argv=[cmd, *args],
            call_id=call_id,
            background=background,
            capacity=capacity,
        )
        self._processes[process.pid] = process
        ticks = _start_ticks(process.pid)
        if ticks is not None:
            self.guard.add(process.pgid, ticks)
        self._write()
        log.log(
            logging.INFO if background else logging.DEBUG,
            "capsule '%s' started host process %d%s: %s",
            session.name,
            process.pid,
            " in the background" if background else "",
            process.command,
        )
        return process

    def forget(self, process: HostProcess) -> None:
        """The leader was reaped."""
        if self._processes.pop(process.pid, None) is process:
            self.guard.remove(process.pgid)
            if not self._closed:
                self._write()

    # -- the table file ----------------------------------------------------------------------

    def _write(self) -> None:
        document = {
            "version": TABLE_VERSION,
            "broker": self._broker,
            "processes": [process.table_entry() for process in self._processes.values()],
        }
        data = json.dumps(document, separators=(",", ":")).encode()
        path = self.path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    # -- cancellation ------------------------------------------------------------------------

    def _on_bus_message(self, message: BusMessage) -> None:
        if self._closed or message.topic != CANCEL_TOPIC:
            return
        payload = message.payload
        if payload.get("type") != "tool_cancel_request":
            return
        call_ids = payload.get("call_ids")
        if not isinstance(call_ids, list) or not call_ids:
            return
        wanted = {call_id for call_id in call_ids if isinstance(call_id, str)}
        try:
            self.cancel(wanted)
        except Exception:  # a listener must never make the publisher fail
            log.exception("cancelling host processes failed")

    def cancel(self, call_ids: set[str]) -> list[HostProcess]:
        """SIGINT the synchronous spawns of ``call_ids`` (and those without a call id), then
        SIGKILL the ones still running :data:`SIGKILL_GRACE` seconds later."""
        targets = []
        for process in self._processes.values():
            if process.background or not process.running:
                continue
            if process.call_id is not None and process.call_id not in call_ids:
                continue
            session = self.kernel.sessions.by_name(process.capsule)
            if session is None or not session.manifest.capabilities.host_process:
                continue
            targets.append(process)
        if not targets:
            return []
        for process in targets:
            log.info("cancelling host process %d of capsule '%s'", process.pid, process.capsule)
            process.signal_group(signal.SIGINT)
        targets[0].loop.call_later(SIGKILL_GRACE, self._kill_survivors, targets)
        return targets

    def _kill_survivors(self, targets: list[HostProcess]) -> None:
        for process in targets:
            process.refresh()
            if process.signal_group(signal.SIGKILL):
                log.info(
                    "host process %d of capsule '%s' ignored SIGINT: SIGKILL",
                    process.pid,
                    process.capsule,
                )

    # -- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill and reap every remaining process (bounded), remove the table file."""
        self._closed = True
        deadline = time.monotonic() + 2.0
        for process in list(self._processes.values()):
            process.close_now(max(0.0, deadline - time.monotonic()))
        self._processes.clear()
        self.guard.close()  # kills whatever of a group the bounded reaping left behind
        with contextlib.suppress(OSError):
            self.path.unlink()


# --------------------------------------------------------------------------------------------
# One capsule's processes


class CapsuleProcesses(SessionExtension):
    """A capsule's background processes and synchronous spawns in flight."""

    def __init__(self, session: CapsuleSession) -> None:
        super().__init__(session)
        self.table = session.kernel.service(ProcessTable)
        self.background: dict[int, HostProcess] = {}
        self._next_id = 1
        self._in_flight: set[HostProcess] = set()

    # -- synchronous -------------------------------------------------------------------------

    def spawn(self, cmd: str, args: Sequence[str]) -> HostProcess:
        """Start a synchronous command; raises :class:`SpawnFailed`."""
        process = self.table.spawn(
            self.session, cmd, args, background=False, capacity=MAX_SYNC_OUTPUT
        )
        self._in_flight.add(process)
        return process

    async def wait(self, process: HostProcess) -> dict[str, Any]:
        """``{"stdout", "stderr", "exit_code"}`` once the command is over; the cancelled result
        if the capsule's session ended first."""
        try:
            await process.finished()
        finally:
            self._in_flight.discard(process)
        if process.abandoned:
            return {"stdout": "", "stderr": "process cancelled", "exit_code": -1}
        code = process.returncode
        return {
            "stdout": _lossy(process.stdout.drain()),
            "stderr": _lossy(process.stderr.drain()),
            "exit_code": code if code is not None and code >= 0 else -1,
        }

    # -- background --------------------------------------------------------------------------

    def check_limit(self) -> None:
        if len(self.background) >= MAX_BACKGROUND_PROCESSES:
            raise BackgroundLimitReached

    def spawn_background(self, cmd: str, args: Sequence[str]) -> int:
        """Start a background command and return its id; raises :class:`SpawnFailed`."""
        self.check_limit()
        process = self.table.spawn(
            self.session, cmd, args, background=True, capacity=MAX_BUFFER_BYTES
        )
        number = self._next_id
        self._next_id += 1
        self.background[number] = process
        return number

    def read_logs(self, number: int) -> dict[str, Any]:
        """Drain the buffers of background process ``number``; raises KeyError."""
        process = self.background[number]
        process.refresh()
        process.pump()
        stdout, stderr = process.stdout.drain(), process.stderr.drain()
        if process.running:
            running, exit_code = True, None
        elif not process.exit_reported:
            process.exit_reported = True
            running, exit_code = False, process.exit_code
        else:
            running, exit_code = False, None
        return {
            "stdout": _lossy(stdout),
            "stderr": _lossy(stderr),
            "running": running,
            "exit_code": exit_code,
        }

    async def kill(self, number: int) -> dict[str, Any]:
        """Remove background process ``number``, drain its buffers, SIGKILL its group if its
        leader is not reaped; raises KeyError."""
        process = self.background.pop(number)
        process.pump()
        stdout, stderr = process.stdout.drain(), process.stderr.drain()
        process.close_streams()
        reported = process.exit_reported
        if process.running:
            process.signal_group(signal.SIGKILL)
            if not await process.wait_exit(KILL_WAIT):
                log.warning("%r did not die within %g s of SIGKILL", process, KILL_WAIT)
        log.info("capsule '%s' killed host process %d", self.session.name, process.pid)
        return {
            "killed": True,
            "exit_code": None if reported else process.exit_code,
            "stdout": _lossy(stdout),
            "stderr": _lossy(stderr),
        }

    # -- the end of the session --------------------------------------------------------------

    def close(self) -> None:
        for process in [*self._in_flight, *self.background.values()]:
            if process.running:
                log.info(
                    "capsule '%s' left: killing host process %d (%s)",
                    self.session.name,
                    process.pid,
                    process.command,
                )
            process.abandon()
        self.background.clear()


def _lossy(data: bytes) -> str:
    return data.decode("utf-8", "replace")
