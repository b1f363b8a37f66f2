"""Forking the broker and the workers, and preparing the environment they inherit.

The supervisor forks (no exec): a forked worker starts with extism, zmq and msgpack already
imported, so it is ready in milliseconds (spec/perf-baselines.md §5). This is only safe because the
supervisor never creates a plugin, a ZeroMQ context or a thread (§4b); the child then starts from a
clean slate set up by :func:`fork_child`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import io
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NoReturn

import platformdirs
import setproctitle

from astrid_core.launch import BrokerLaunch, WorkerLaunch, resolve_entry

__all__ = [
    "CHILD_STATUS_FD",
    "compile_cache_dir",
    "fork_child",
    "kill_group",
    "write_compile_cache_config",
]

#: The status pipe's descriptor in every child (stdin, stdout and stderr are 0, 1 and 2).
CHILD_STATUS_FD: Final = 3

_PR_SET_PDEATHSIG: Final = 1

#: Signals the supervisor handles; blocked around fork so that no handler runs in the child
#: before it has reset them (a handler would write to the supervisor's wakeup pipe).
_SUPERVISOR_SIGNALS: Final = frozenset(
    {signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
)

#: Signals CPython itself ignores at start-up; a child gets them back after the reset so that it
#: behaves like a fresh interpreter (a write to a closed socket raises EPIPE rather than killing
#: the broker).
_PYTHON_IGNORED: Final = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)

#: libc, loaded in the parent (at import) so that the child does not load it after the fork.
_LIBC: ctypes.CDLL | None
try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - no libc to speak of
    _LIBC = None

#: Logging handlers taken away from a child: kept referenced so that no finalizer ever closes a
#: descriptor number the child has since reused.
_DETACHED_HANDLERS: list[logging.Handler] = []


Launch = WorkerLaunch | BrokerLaunch


def fork_child(
    entry: str,
    launch: Launch,
    *,
    stdout_fd: int,
    stderr_fd: int,
    status_fd: int,
    clear: bytearray | None,
) -> int:
    """Fork a child that runs ``entry`` (``module:function``) with ``launch``; return its pid.

    In the child: own process group, SIGKILL when the supervisor dies, default signal handlers,
    stdin from /dev/null, stdout/stderr/status on descriptors 1/2/3 and nothing else open,
    ``clear`` zeroed in place (the master key has no business in a worker), then the entry point.
    The child never returns from here and never runs the parent's atexit handlers.
    """
    for stream in (sys.stdout, sys.stderr):
        # Whatever the parent buffered must not be written a second time by the child.
        with contextlib.suppress(Exception):
            stream.flush()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            _child(
                entry,
                launch,
                stdout_fd=stdout_fd,
                stderr_fd=stderr_fd,
                status_fd=status_fd,
                clear=clear,
                old_mask=old_mask,
            )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        os.setpgid(pid, pid)
    except OSError as exc:
        # The child got there first (EACCES once it ran its entry point) or already died.
        if exc.errno not in (errno.EACCES, errno.ESRCH, errno.EPERM):
            raise
    return pid


def _child(
    entry: str,
    launch: Launch,
    *,
    stdout_fd: int,
    stderr_fd: int,
    status_fd: int,
    clear: bytearray | None,
    old_mask: Iterable[int],
) -> NoReturn:
    try:
        os.setpgid(0, 0)
        _set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != launch.supervisor_pid:
            os._exit(1)  # the supervisor died before the death signal was armed
        _reset_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _setup_descriptors(stdout_fd, stderr_fd, status_fd)
        if isinstance(sys.stdout, io.TextIOWrapper):
            # A pipe now, not the operator's terminal: line buffering keeps the log timely.
            sys.stdout.reconfigure(line_buffering=True)
        _detach_logging()
        if clear is not None:
            clear[:] = bytes(len(clear))
        launch = dataclasses.replace(launch, status_fd=CHILD_STATUS_FD)
        setproctitle.setproctitle(_title(launch))
        resolve_entry(entry)(launch)
    except SystemExit as exc:
        os._exit(_exit_status(exc))
    except BaseException:  # the child must leave through os._exit, whatever happens
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode(errors="backslashreplace"))
        os._exit(1)
    os._exit(0)  # an entry point that returns (it should not) ends the child cleanly


def _exit_status(exc: SystemExit) -> int:
    """The status :func:`sys.exit` would have produced."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(BaseException):
        os.write(2, f"{code}\n".encode(errors="backslashreplace"))
    return 1


def _set_parent_death_signal(sig: int) -> None:
    if _LIBC is None:
        return
    if _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # signals reserved by libc
            signal.signal(sig, signal.SIG_DFL)
    for sig in _PYTHON_IGNORED:
        signal.signal(sig, signal.SIG_IGN)


def _setup_descriptors(stdout_fd: int, stderr_fd: int, status_fd: int) -> None:
    # Move the sources above the targets first: a source may itself be 1, 2 or 3.
    low = CHILD_STATUS_FD + 1
    sources = [_dup_above(fd, low) for fd in (stdout_fd, stderr_fd, status_fd)]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    if devnull != 0:
        os.close(devnull)
    for target, source in zip((1, 2, CHILD_STATUS_FD), sources, strict=True):
        os.dup2(source, target)  # dup2 makes the target inheritable; exec is not used anyway
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _dup_above(fd: int, low: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)


def _detach_logging() -> None:
    """Drop every logging handler inherited from the supervisor (their files are closed now)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers.extend(
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    )
    for logger in loggers:
        _DETACHED_HANDLERS.extend(logger.handlers)
        logger.handlers.clear()


def _title(launch: Launch) -> str:
    if isinstance(launch, WorkerLaunch):
        return f"astrid-worker: {launch.capsule}"
    return "astrid-broker"


def kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group ``pgid``; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The wasmtime compile cache


def compile_cache_dir() -> Path:
    """``<user cache dir>/wasmtime``: the compile cache's configuration and storage."""
    return Path(platformdirs.user_cache_dir("astrid")) / "wasmtime"


def _toml_string(value: str) -> str:
    # A JSON string without non-ASCII escapes is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def write_compile_cache_config(root: Path) -> Path:
    """Write ``<root>/config.toml`` turning wasmtime's disk cache on in ``<root>/cache``.

    Checked with extism-sys 1.41 (wasmtime 49):

    * the ``[cache]`` table takes ``directory`` (and tuning keys); ``enabled`` is rejected as an
      unknown field, which makes every plugin creation fail, so it must not be written;
    * wasmtime's cache cleanup deletes every file it does not know inside ``directory``: the
      configuration must live outside it, or the next worker fails with "No such file or
      directory".

    Extism reads the file named by ``EXTISM_CACHE_CONFIG`` each time a plugin is compiled; the
    caller exports that variable before forking anything.
    """
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = root / "config.toml"
    text = f"[cache]\ndirectory = {_toml_string(str(cache))}\n"
    with contextlib.suppress(OSError):
        if config.read_text(encoding="utf-8") == text:
            return config
    tmp = config.with_name(f".config.toml.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, config)
    return config
