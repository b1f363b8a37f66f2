"""The process tree: one broker and one worker per capsule, supervised by a single-threaded loop.

:class:`Supervisor` discovers the capsules, forks the broker and then the workers in dependency
order, watches their status pipes, restarts them under the restart policy, copies their output
into ``logs/``, keeps ``state/supervisor.json`` current and stops everything on SIGINT/SIGTERM.

Everything happens in one thread around a :class:`selectors.DefaultSelector`: signals arrive
through :func:`signal.set_wakeup_fd`, children report on their status pipes, their output comes
through per-capsule log pipes, operators' requests through the control socket
(``run/supervisor.sock``, :mod:`supervisor.control`), and delays (backoff, readiness, grace
periods, the memory check) are timers on a heap. No thread, ZeroMQ context or wasm engine is
ever created here: forking after any of them hangs children (spec/perf-baselines.md §4b).

The settings come from :class:`~supervisor.config.SupervisorConfig` (``supervisor.toml``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import fcntl
import heapq
import importlib
import itertools
import logging
import os
import secrets
import selectors
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

import psutil
import setproctitle

from astrid_core.dirs import AstridHome
from astrid_core.discovery import discover, order_capsules
from astrid_core.launch import (
    BROKER_ENTRY,
    PRELOAD_MODULES,
    WORKER_ENTRY,
    BrokerLaunch,
    Event,
    ExitCode,
    StatusEvent,
    WorkerLaunch,
)
from astrid_core.logfile import LogFile, utc_timestamp
from astrid_core.wire import HelloInfo, derive_worker_secret
from supervisor.astrid_cli import HOST_TABLE_FILE, read_host_processes
from supervisor.config import (
    DEFAULT_GRACE,
    DEFAULT_READY_TIMEOUT,
    SupervisorConfig,
)
from supervisor.control import ControlServer, Reply, control_socket_path
from supervisor.forking import (
    compile_cache_dir,
    fork_child,
    kill_group,
    write_compile_cache_config,
)
from supervisor.policy import RestartPolicy, RestartTracker
from supervisor.status import (
    BrokerStatus,
    CapsuleStatus,
    ProcState,
    StatusFile,
    SupervisorInfo,
    read_status,
    remove_status,
    status_path,
    write_status,
)

__all__ = [
    "BROKER_READY_TIMEOUT",
    "DEFAULT_GRACE",
    "DEFAULT_READY_TIMEOUT",
    "Supervisor",
    "SupervisorError",
    "kill_host_process_groups",
]

log = logging.getLogger("astrid.supervisor")

BROKER_READY_TIMEOUT: Final = 15.0
#: A log line longer than this is written out in pieces.
MAX_LOG_LINE: Final = 64 * 1024
#: ``sun_path`` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH: Final = 107
#: Endpoint paths at least this long move to a short temporary directory.
LONG_ENDPOINT_PATH: Final = 100
#: How long to wait for processes to disappear after SIGKILL before giving up on them.
KILL_WAIT: Final = 5.0
_MIB: Final = 1024 * 1024
#: Broker stderr lines kept for the error report when it fails to start.
_STDERR_TAIL: Final = 20
_READ_SIZE: Final = 65536
_HANDLED_SIGNALS: Final = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class SupervisorError(Exception):
    """A problem that stops the supervisor; ``details`` are extra lines for the operator."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


def describe_exit(status: int) -> str:
    """``exit code N`` or ``killed by SIGNAME`` for a :func:`os.waitpid` status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}"


# --------------------------------------------------------------------------------------------
# Timers


@dataclass(eq=False, slots=True)
class _Timer:
    deadline: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class _Timers:
    """A heap of deadlines on the monotonic clock."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Timer]] = []
        self._counter = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.deadline, next(self._counter), timer))
        return timer

    def timeout(self, now: float) -> float | None:
        """Seconds until the next live deadline (None: no timer)."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - now)

    def run_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()


# --------------------------------------------------------------------------------------------
# Logs


class _LogPipe:
    """One child output stream (stdout or stderr) copied line by line into a log file.

    The pipe lives as long as the supervisor: each new generation of the process gets the same
    write end, so nothing written around a restart is lost, and no EOF ever has to be handled.
    """

    def __init__(self, stream: str, sink: LogFile, owner: _Proc, *, keep_tail: bool) -> None:
        self.stream = stream
        self.sink = sink
        self.owner = owner
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._partial = bytearray()
        self.tail: collections.deque[str] | None = (
            collections.deque(maxlen=_STDERR_TAIL) if keep_tail else None
        )

    def drain(self) -> None:
        """Read everything available and write out the complete lines."""
        while True:
            try:
                chunk = os.read(self.read_fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("cannot read %s output of %s: %s", self.stream, self.owner.name, exc)
                return
            if not chunk:
                return
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        buffer = self._partial
        buffer += chunk
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            self._emit(buffer[start:newline])
            start = newline + 1
        del buffer[:start]
        while len(buffer) >= MAX_LOG_LINE:
            self._emit(buffer[:MAX_LOG_LINE])
            del buffer[:MAX_LOG_LINE]

    def flush_partial(self) -> None:
        """Write out an unterminated last line (the process that wrote it is gone)."""
        if self._partial:
            self._emit(self._partial)
            self._partial.clear()

    def _emit(self, raw: bytes | bytearray) -> None:
        line = bytes(raw).decode("utf-8", errors="backslashreplace").removesuffix("\r")
        try:
            self.sink.write_record(self.stream, self.owner.tag, line)
        except OSError as exc:
            log.warning("cannot write to %s: %s", self.sink.path, exc)
        if self.tail is not None:
            self.tail.append(line)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------------------------
# Supervised processes


@dataclass(eq=False)
class _Proc:
    """A supervised process (the broker or one worker) across its generations."""

    name: str
    role: str
    tracker: RestartTracker
    #: None until first started (a worker waiting for its providers).
    state: ProcState | None = None
    pid: int | None = None
    create_time: float | None = None
    started_at: float | None = None
    started_mono: float = 0.0
    restarts: int = 0
    generation: int = 0
    last_exit: str | None = None
    #: The last reason a status event gave (FAILED, STOPPING), for the exit report.
    reason: str = ""
    #: Why the supervisor ended this generation (readiness timeout, memory, operator); it takes
    #: precedence over ``reason`` in the exit report.
    kill_reason: str | None = None
    fatal_reason: str | None = None
    stopping: bool = False
    #: Stopped by an operator: not restarted, not started with the others, until started again.
    held: bool = False
    #: What an operator asked for while the process still runs: "stop" or "restart" at its exit.
    pending_op: str | None = None
    #: Operators' requests answered when the process is next READY (or fails to be).
    ready_waiters: list[_ReadyWaiter] = field(default_factory=list)
    #: Operators' requests answered when the process has exited.
    exit_waiters: list[Reply] = field(default_factory=list)
    #: The psutil handle of the current generation (RSS samples).
    ps: psutil.Process | None = None
    #: The worker's RSS limit in MiB (None: no limit).
    rss_limit: float | None = None
    status_fd: int | None = None
    status_buffer: bytearray = field(default_factory=bytearray)
    ready_timer: _Timer | None = None
    restart_timer: _Timer | None = None
    kill_timer: _Timer | None = None
    stdout: _LogPipe | None = None
    stderr: _LogPipe | None = None

    @property
    def tag(self) -> str:
        return f"{self.name}[{self.generation}]"

    @property
    def started(self) -> bool:
        """Whether it was ever forked (a worker may wait for its providers, or be held)."""
        return self.generation > 0

    def cancel_timers(self) -> None:
        for timer in (self.ready_timer, self.restart_timer, self.kill_timer):
            if timer is not None:
                timer.cancel()
        self.ready_timer = self.restart_timer = self.kill_timer = None


@dataclass(frozen=True, slots=True)
class _ReadyWaiter:
    reply: Reply
    #: "started" or "restarted", for the answer.
    verb: str
    previous_pid: int | None


@dataclass(eq=False)
class _Worker(_Proc):
    capsule_dir: Path = Path()
    providers: list[str] = field(default_factory=list)
    has_run: bool = False


# --------------------------------------------------------------------------------------------
# The supervisor


_P = TypeVar("_P", bound=_Proc)


class _Phase(enum.Enum):
    STARTING = "starting"  # waiting for the first broker READY
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"


class Supervisor:
    """The root of the process tree (``astrid-supervisor up``).

    ``config`` holds the settings of ``supervisor.toml``; ``grace`` (how long a process may
    take to exit after SIGTERM), ``ready_timeout`` (how long a worker may take to report READY),
    ``policy`` (every capsule's restart policy, before the configuration's per-capsule
    overrides) and ``broker_policy`` override it when given. ``broker_entry``/``worker_entry``
    name the functions the children run (tests substitute fakes); ``preload`` the modules
    imported before any fork; ``on_running`` is called once, when the broker is first READY
    (``astrid-supervisor up --detach`` reports the start then).
    """

    def __init__(
        self,
        home: AstridHome,
        workspace: Path,
        *,
        config: SupervisorConfig | None = None,
        grace: float | None = None,
        ready_timeout: float | None = None,
        broker_ready_timeout: float = BROKER_READY_TIMEOUT,
        policy: RestartPolicy | None = None,
        broker_policy: RestartPolicy | None = None,
        broker_entry: str = BROKER_ENTRY,
        worker_entry: str = WORKER_ENTRY,
        preload: Sequence[str] = PRELOAD_MODULES,
        cache_dir: Path | None = None,
        log_to_stderr: bool = True,
        on_running: Callable[[], None] | None = None,
    ) -> None:
        config = config or SupervisorConfig()
        if policy is not None:
            config = dataclasses.replace(config, restart=policy)
        grace = config.grace if grace is None else grace
        ready_timeout = config.ready_timeout if ready_timeout is None else ready_timeout
        if grace < 0 or ready_timeout <= 0 or broker_ready_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.home = home
        self.workspace = workspace
        self.config = config
        self.grace = grace
        self.ready_timeout = ready_timeout
        self.broker_ready_timeout = broker_ready_timeout
        self.policy = config.restart
        self.broker_policy = broker_policy or config.broker_restart
        self.memory_check_interval = config.memory_check_interval
        self.on_running = on_running
        self.broker_entry = broker_entry
        self.worker_entry = worker_entry
        self.preload = tuple(preload)
        self.cache_dir = cache_dir
        self.log_to_stderr = log_to_stderr

        self._pid = os.getpid()
        self._phase = _Phase.STARTING
        self._error: SupervisorError | None = None
        self._timers = _Timers()
        self._selector: selectors.BaseSelector | None = None
        self._signal_r = self._signal_w = -1
        self._old_handlers: dict[int, _SignalHandler] = {}
        self._log_handlers: list[logging.Handler] = []
        self._log_files: list[LogFile] = []
        self._master_key = bytearray()
        self._endpoint = ""
        self._endpoint_tmpdir: Path | None = None
        self._status_path = status_path(home.state_dir())
        self._lock_fd = -1
        self._status_dirty = False
        self._started_at = 0.0
        self._create_time = 0.0
        self._broker: _Proc | None = None
        self._workers: list[_Worker] = []
        self._by_name: dict[str, _Worker] = {}
        self._dependents: dict[str, list[str]] = {}
        self._start_order: list[_Worker] = []
        self._by_pid: dict[int, _Proc] = {}
        self._control: ControlServer | None = None
        self._memory_timer: _Timer | None = None

    # ---------------------------------------------------------------------------------------
    # Public entry point

    def run(self) -> int:
        """Run the tree until a stop signal; return 0, or raise :class:`SupervisorError`."""
        try:
            self._setup()
            self._start_broker()
            self._loop()
        finally:
            self._teardown()
        if self._error is not None:
            raise self._error
        return 0

    # ---------------------------------------------------------------------------------------
    # Start-up

    def _setup(self) -> None:
        home = self.home
        socket_path = home.socket_path()
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise SupervisorError(
                f"socket path too long: {socket_path} is {len(os.fsencode(socket_path))} bytes, "
                f"the limit is {MAX_SOCKET_PATH}; choose a shorter --home"
            )
        try:
            home.ensure()
            for directory in (home.state_dir(), home.run_dir()):
                directory.mkdir(mode=0o700, exist_ok=True)
                directory.chmod(0o700)
        except OSError as exc:
            raise SupervisorError(f"cannot prepare the astrid home {home.root()}: {exc}") from None
        self._lock_home()
        setproctitle.setproctitle("astrid-supervisor")
        self._setup_logging()
        self._started_at = time.time()
        self._create_time = psutil.Process(self._pid).create_time()
        log.info(
            "astrid-supervisor starting (pid %d, home %s, workspace %s)",
            self._pid,
            home.root(),
            self.workspace,
        )
        config_path = self.config.path
        log.info(
            "configuration: %s", config_path if config_path is not None else "built-in defaults"
        )
        self._setup_compile_cache()
        self._preload()
        self._selector = selectors.DefaultSelector()
        self._discover()
        self._endpoint = self._make_endpoint()
        self._master_key = bytearray(secrets.token_bytes(32))
        self._setup_signals()
        self._open_control()
        self._broker = self._new_proc(_Proc, "broker", "broker", self.broker_policy)
        self._status_dirty = True
        self._flush_status()

    def _lock_home(self) -> None:
        """Hold ``run/supervisor.lock`` for life: one supervisor per home."""
        path = self.home.run_dir() / "supervisor.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            running = read_status(self._status_path)
            holder = f" (pid {running.supervisor.pid})" if running is not None else ""
            raise SupervisorError(
                f"another astrid-supervisor{holder} is already running for {self.home.root()}"
            ) from None
        self._lock_fd = fd

    def _setup_logging(self) -> None:
        formatter = _LogFormatter()
        handlers: list[logging.Handler] = [_FdHandler(self._open_log("supervisor.log"))]
        if self.log_to_stderr:
            handlers.append(logging.StreamHandler(sys.stderr))
        for handler in handlers:
            handler.setFormatter(formatter)
            log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        self._log_handlers = handlers

    def _open_log(self, file_name: str) -> LogFile:
        sink = LogFile(self.home.logs_dir() / file_name)
        self._log_files.append(sink)
        return sink

    def _setup_compile_cache(self) -> None:
        cache_dir = self.cache_dir or compile_cache_dir()
        try:
            config = write_compile_cache_config(cache_dir)
        except OSError as exc:
            log.warning("wasm compile cache disabled: cannot write its configuration: %s", exc)
            os.environ["EXTISM_CACHE_CONFIG"] = ""
            return
        os.environ["EXTISM_CACHE_CONFIG"] = str(config)
        log.info("wasm compile cache: %s", cache_dir)

    def _preload(self) -> None:
        for module in self.preload:
            try:
                importlib.import_module(module)
            except Exception as exc:
                # Not fatal here: a child that needs the module reports the failure itself.
                log.warning("cannot preload %s: %s: %s", module, type(exc).__name__, exc)

    def _discover(self) -> None:
        result = discover(self.workspace, self.home.capsules_dir())
        for problem in result.problems:
            log.warning("capsule skipped: %s: %s", problem.path, problem.message)
        ordering = order_capsules(result.capsules)
        for warning in ordering.warnings:
            log.warning("%s", warning)
        for capsule in ordering.order:
            if capsule.name in ("broker", "supervisor"):
                log.warning(
                    "capsule %s shares logs/%s.log with the %s's own output",
                    capsule.name,
                    capsule.name,
                    capsule.name,
                )
            providers = [] if ordering.cycle else ordering.providers.get(capsule.name, [])
            policy = self.config.policy_for(capsule.name)
            worker = self._new_proc(_Worker, capsule.name, "worker", policy)
            worker.capsule_dir = capsule.dir
            worker.rss_limit = self.config.rss_limit_for(capsule.name)
            worker.providers = [p for p in providers if p != capsule.name]
            self._workers.append(worker)
            self._by_name[capsule.name] = worker
        self._dependents = {worker.name: [] for worker in self._workers}
        for worker in self._workers:
            for provider in worker.providers:
                if provider in self._dependents:
                    self._dependents[provider].append(worker.name)
        for name in self.config.capsules:
            if name not in self._by_name:
                log.warning(
                    "the configuration has settings for %r, which is not a discovered capsule",
                    name,
                )
        if self._workers:
            log.info(
                "%d capsule(s), start order: %s",
                len(self._workers),
                ", ".join(worker.name for worker in self._workers),
            )
        else:
            log.warning(
                "no capsules found (looked in %s and %s)",
                self.workspace / ".astrid" / "capsules",
                self.home.capsules_dir(),
            )

    def _new_proc(self, kind: type[_P], name: str, role: str, policy: RestartPolicy) -> _P:
        """A supervised process with its log file and persistent log pipes."""
        proc = kind(name=name, role=role, tracker=RestartTracker(policy))
        sink = self._open_log(f"{name}.log")
        proc.stdout = _LogPipe("STDOUT", sink, proc, keep_tail=False)
        proc.stderr = _LogPipe("STDERR", sink, proc, keep_tail=proc.role == "broker")
        assert self._selector is not None
        for pipe in (proc.stdout, proc.stderr):
            self._selector.register(pipe.read_fd, selectors.EVENT_READ, pipe.drain)
        return proc

    def _make_endpoint(self) -> str:
        path = self.home.run_dir() / "broker.ipc"
        if len(os.fsencode(path)) >= LONG_ENDPOINT_PATH:
            self._endpoint_tmpdir = Path(tempfile.mkdtemp(prefix="astrid-"))
            self._endpoint_tmpdir.chmod(0o700)
            path = self._endpoint_tmpdir / "broker.ipc"
            log.info("the broker endpoint moved to %s (the home's run/ path is too long)", path)
        return f"ipc://{path}"

    def _open_control(self) -> None:
        assert self._selector is not None
        server = ControlServer(
            control_socket_path(self.home),
            self._selector,
            self._on_control,
            call_later=self._timers.call_later,
        )
        try:
            server.open()
        except OSError as exc:
            raise SupervisorError(f"cannot open the control socket {server.path}: {exc}") from None
        self._control = server

    def _setup_signals(self) -> None:
        assert self._selector is not None
        self._signal_r, self._signal_w = os.pipe()
        for fd in (self._signal_r, self._signal_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for sig in _HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, _ignore_signal)
        self._selector.register(self._signal_r, selectors.EVENT_READ, self._on_signals)

    # ---------------------------------------------------------------------------------------
    # The loop

    def _loop(self) -> None:
        assert self._selector is not None
        while self._phase != _Phase.DONE:
            timeout = self._timers.timeout(time.monotonic())
            for key, _ in self._selector.select(timeout):
                key.data()
            self._timers.run_due(time.monotonic())
            self._flush_status()

    def _on_signals(self) -> None:
        try:
            data = os.read(self._signal_r, 512)
        except BlockingIOError:
            data = b""
        # Reaping on every wakeup also covers a SIGCHLD lost to a full wakeup pipe.
        self._reap()
        for number in data:
            if number in _STOP_SIGNALS:
                self._on_stop_signal(signal.Signals(number))

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._phase == _Phase.STOPPING:
            # A second Ctrl-C means "now"; a repeated SIGTERM (from a process manager that signals
            # the whole group, say) does not cut the grace periods short.
            if sig == signal.SIGINT:
                log.warning("SIGINT during shutdown: killing every process now")
                self._kill_all()
            else:
                log.info("%s received: already shutting down", sig.name)
            return
        if self._phase == _Phase.DONE:
            return
        log.info("%s received: shutting down", sig.name)
        self._begin_shutdown()

    # ---------------------------------------------------------------------------------------
    # Starting processes

    def _start_broker(self) -> None:
        broker = self._broker
        assert broker is not None
        broker.restart_timer = None
        if self._phase in (_Phase.STOPPING, _Phase.DONE):
            return
        generation = self._next_generation(broker)
        status_r, status_w = os.pipe()
        launch = BrokerLaunch(
            home=str(self.home.root()),
            workspace=str(self.workspace),
            endpoint=self._endpoint,
            master_key=bytes(self._master_key),
            status_fd=status_w,
            supervisor_pid=self._pid,
        )
        self._fork(
            broker,
            generation=generation,
            entry=self.broker_entry,
            launch=launch,
            status_r=status_r,
            status_w=status_w,
            clear=None,
        )
        del launch
        if broker.pid is not None:
            broker.ready_timer = self._timers.call_later(
                self.broker_ready_timeout, lambda: self._on_ready_timeout(broker)
            )

    def _start_worker(self, worker: _Worker) -> None:
        worker.restart_timer = None
        if self._phase != _Phase.RUNNING:
            return
        if worker not in self._start_order:
            self._start_order.append(worker)
        generation = self._next_generation(worker)
        status_r, status_w = os.pipe()
        capsule_dir = str(worker.capsule_dir)
        secret = derive_worker_secret(
            bytes(self._master_key),
            HelloInfo(
                capsule=worker.name,
                capsule_dir=capsule_dir,
                generation=generation,
                pid=0,
                has_run=False,
            ),
        )
        launch = WorkerLaunch(
            capsule=worker.name,
            capsule_dir=capsule_dir,
            generation=generation,
            broker_endpoint=self._endpoint,
            secret=secret,
            status_fd=status_w,
            supervisor_pid=self._pid,
        )
        worker.has_run = False
        self._fork(
            worker,
            generation=generation,
            entry=self.worker_entry,
            launch=launch,
            status_r=status_r,
            status_w=status_w,
            clear=self._master_key,
        )
        if worker.pid is not None:
            self._arm_ready_timer(worker)

    def _arm_ready_timer(self, worker: _Worker) -> None:
        worker.ready_timer = self._timers.call_later(
            self.ready_timeout, lambda: self._on_ready_timeout(worker)
        )

    @staticmethod
    def _next_generation(proc: _Proc) -> int:
        """Count a restart (not the first start); generations are ``restarts + 1``."""
        if proc.started:
            proc.restarts += 1
        return proc.restarts + 1

    def _fork(
        self,
        proc: _Proc,
        *,
        generation: int,
        entry: str,
        launch: BrokerLaunch | WorkerLaunch,
        status_r: int,
        status_w: int,
        clear: bytearray | None,
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        proc.generation = generation
        proc.state = ProcState.STARTING
        proc.reason = ""
        proc.kill_reason = None
        proc.fatal_reason = None
        proc.stopping = False
        proc.pending_op = None
        proc.started_at = time.time()
        proc.started_mono = time.monotonic()
        proc.tracker.on_start(proc.started_mono)
        self._status_dirty = True
        try:
            pid = fork_child(
                entry,
                launch,
                stdout_fd=proc.stdout.write_fd,
                stderr_fd=proc.stderr.write_fd,
                status_fd=status_w,
                clear=clear,
            )
        except OSError as exc:
            os.close(status_r)
            os.close(status_w)
            log.error("cannot fork %s: %s", proc.tag, exc)
            self._after_exit(proc, f"fork failed: {exc}", ExitCode.TEMPFAIL)
            return
        os.close(status_w)
        os.set_blocking(status_r, False)
        proc.pid = pid
        proc.ps = _ps_process(pid)
        proc.create_time = _create_time(proc.ps)
        proc.status_fd = status_r
        proc.status_buffer.clear()
        self._by_pid[pid] = proc
        assert self._selector is not None
        self._selector.register(status_r, selectors.EVENT_READ, lambda: self._read_status(proc))
        log.info("%s started (pid %d)", proc.tag, pid)

    def _start_eligible(self) -> None:
        """Start every waiting worker whose providers are READY (or will never be)."""
        if self._phase != _Phase.RUNNING:
            return
        for worker in self._workers:
            if worker.started or worker.held:
                continue
            states = {p: self._by_name[p].state for p in worker.providers if p in self._by_name}
            if any(
                state not in (ProcState.READY, ProcState.FATAL, ProcState.STOPPED)
                for state in states.values()
            ):
                continue
            for provider, state in states.items():
                if state != ProcState.READY:
                    log.warning(
                        "starting %s although its provider %s is %s", worker.name, provider, state
                    )
            self._start_worker(worker)

    # ---------------------------------------------------------------------------------------
    # Status events

    def _read_status(self, proc: _Proc, *, reap_on_eof: bool = True) -> None:
        fd = proc.status_fd
        if fd is None:
            return
        eof = False
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("cannot read the status pipe of %s: %s", proc.tag, exc)
                eof = True
                break
            if not chunk:
                eof = True
                break
            proc.status_buffer += chunk
        buffer = proc.status_buffer
        while (newline := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if line.strip():
                self._on_status_line(proc, line)
        if eof:
            self._close_status(proc)
            if reap_on_eof:
                self._reap()  # the child is most likely gone

    def _close_status(self, proc: _Proc) -> None:
        fd, proc.status_fd = proc.status_fd, None
        if fd is None:
            return
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        proc.status_buffer.clear()

    def _on_status_line(self, proc: _Proc, line: bytes) -> None:
        try:
            event = StatusEvent.decode(line)
        except (ValueError, KeyError) as exc:
            log.warning("%s sent a malformed status line (%s): %r", proc.tag, exc, line[:200])
            return
        if event.event == Event.HOOK:
            # A hook may wait for the operator (elicitations, approvals): no readiness limit
            # while it runs; LOADED re-arms it.
            if proc.ready_timer is not None:
                proc.ready_timer.cancel()
                proc.ready_timer = None
            log.info("%s is running its %s hook: readiness timeout paused", proc.tag, event.reason)
        elif event.event == Event.LOADED:
            if isinstance(proc, _Worker):
                proc.has_run = event.has_run
                self._status_dirty = True
                if (
                    proc.ready_timer is None
                    and proc.state == ProcState.STARTING
                    and proc.pid is not None
                    and not proc.stopping
                ):
                    self._arm_ready_timer(proc)
        elif event.event == Event.READY:
            self._on_ready(proc)
        elif event.event == Event.FAILED:
            proc.reason = event.reason
            if event.fatal:
                proc.fatal_reason = event.reason or "fatal failure"
                if not proc.stopping:
                    proc.state = ProcState.FATAL
                    self._status_dirty = True
                log.error("%s failed: %s", proc.tag, proc.fatal_reason)
                if proc is self._broker and self._phase == _Phase.STARTING:
                    self._fail(f"broker failed to start: {proc.fatal_reason}", proc)
                else:
                    self._start_eligible()
            else:
                log.warning("%s failed: %s", proc.tag, event.reason)
        elif event.event == Event.STOPPING:
            proc.reason = event.reason

    def _on_ready(self, proc: _Proc) -> None:
        if proc.state != ProcState.STARTING or proc.pid is None:
            return
        if proc.ready_timer is not None:
            proc.ready_timer.cancel()
            proc.ready_timer = None
        proc.state = ProcState.READY
        self._status_dirty = True
        elapsed_ms = (time.monotonic() - proc.started_mono) * 1000
        log.info("%s READY (pid %d) in %.1f ms", proc.name, proc.pid, elapsed_ms)
        waiters, proc.ready_waiters = proc.ready_waiters, []
        for waiter in waiters:
            waiter.reply(self._ready_answer(proc, waiter))
        if proc is self._broker and self._phase == _Phase.STARTING:
            self._phase = _Phase.RUNNING
            self._arm_memory_check()
            self._notify_running()
        self._start_eligible()

    def _notify_running(self) -> None:
        callback, self.on_running = self.on_running, None
        if callback is None:
            return
        try:
            callback()
        except Exception as exc:  # the tree runs on whether or not someone hears of it
            log.warning("cannot report the start: %s", exc)

    def _on_ready_timeout(self, proc: _Proc) -> None:
        proc.ready_timer = None
        if proc.state != ProcState.STARTING or proc.pid is None or proc.stopping:
            return
        limit = self.broker_ready_timeout if proc is self._broker else self.ready_timeout
        proc.kill_reason = f"not ready within {limit:g} s"
        log.error("%s %s: killing it", proc.tag, proc.kill_reason)
        kill_group(proc.pid, signal.SIGKILL)

    # ---------------------------------------------------------------------------------------
    # Memory limits

    def _arm_memory_check(self) -> None:
        if self._memory_timer is not None or self._phase != _Phase.RUNNING:
            return
        if any(worker.rss_limit is not None for worker in self._workers):
            self._memory_timer = self._timers.call_later(
                self.memory_check_interval, self._check_memory
            )

    def _check_memory(self) -> None:
        """Sample every worker's RSS; SIGKILL the group of a worker over its limit."""
        self._memory_timer = None
        if self._phase != _Phase.RUNNING:
            return
        for worker in self._workers:
            limit = worker.rss_limit
            process = worker.ps
            if limit is None or process is None or worker.pid is None:
                continue
            if worker.stopping or worker.kill_reason is not None:
                continue
            try:
                rss = process.memory_info().rss
            except (psutil.Error, OSError):
                continue  # exiting: the reaper will see it
            if rss <= limit * _MIB:
                continue
            worker.kill_reason = f"memory: RSS {rss / _MIB:.1f} MiB over the {limit:g} MiB limit"
            log.error("%s %s: killing it", worker.tag, worker.kill_reason)
            kill_group(worker.pid, signal.SIGKILL)
        self._arm_memory_check()

    # ---------------------------------------------------------------------------------------
    # Operator control (run/supervisor.sock)

    _COMMANDS: Final = ("restart", "shutdown", "start", "status", "stop")

    def _on_control(self, request: dict[str, Any], reply: Reply) -> None:
        command = request["command"]
        if command == "status":
            config = self.config.path
            reply(
                {
                    "ok": True,
                    "status": self._snapshot().to_json(),
                    "config": str(config) if config is not None else None,
                }
            )
            return
        if command == "shutdown":
            reply({"ok": True, "message": "shutting down", "pid": self._pid})
            if self._phase not in (_Phase.STOPPING, _Phase.DONE):
                log.info("shutdown requested on the control socket: shutting down")
                self._begin_shutdown()
            return
        if command not in ("restart", "stop", "start"):
            expected = ", ".join(self._COMMANDS)
            reply({"ok": False, "error": f"unknown command {command!r} (expected: {expected})"})
            return
        name = request.get("capsule")
        if not isinstance(name, str) or not name:
            reply({"ok": False, "error": f"{command} needs a capsule name ('capsule')"})
            return
        worker = self._by_name.get(name)
        if worker is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            reply({"ok": False, "error": f"no capsule named {name!r} (known: {known})"})
            return
        if self._phase == _Phase.STARTING:
            reply(
                {
                    "ok": False,
                    "error": "the supervisor is still starting (the broker is not READY yet); "
                    "try again in a moment",
                }
            )
            return
        if self._phase != _Phase.RUNNING:
            reply({"ok": False, "error": "the supervisor is shutting down"})
            return
        log.info("%s %s requested on the control socket", command, name)
        if command == "restart":
            self._operator_restart(worker, reply)
        elif command == "stop":
            self._operator_stop(worker, reply)
        else:
            self._operator_start(worker, reply)

    def _operator_restart(self, worker: _Worker, reply: Reply) -> None:
        """SIGTERM, grace, SIGKILL to the group, then start at once; FATAL and the restart
        window are forgotten. Answered when the new generation is READY (or fails)."""
        worker.ready_waiters.append(_ReadyWaiter(reply, "restarted", worker.pid))
        self._release(worker)
        if worker.pid is None:
            self._start_now(worker)
            return
        worker.pending_op = "restart"
        if not worker.stopping:
            worker.kill_reason = "restarted by the operator"
            self._terminate(worker)

    def _operator_stop(self, worker: _Worker, reply: Reply) -> None:
        """Stop the worker and keep it STOPPED (its dependents run on). Answered at its exit."""
        worker.held = True
        if worker.restart_timer is not None:
            worker.restart_timer.cancel()
            worker.restart_timer = None
        if worker.pid is not None:
            worker.pending_op = "stop"
            worker.exit_waiters.append(reply)
            if not worker.stopping:
                worker.kill_reason = "stopped by the operator"
                self._terminate(worker)
            return
        previous = worker.state or "waiting for its providers"
        worker.state = ProcState.STOPPED
        self._status_dirty = True
        log.info("%s is STOPPED (it was %s)", worker.name, previous)
        reply(
            {
                "ok": True,
                "message": f"{worker.name} was not running ({previous}); it stays STOPPED",
                "capsule": worker.name,
                "state": str(worker.state),
            }
        )
        self._start_eligible()

    def _operator_start(self, worker: _Worker, reply: Reply) -> None:
        """Start a STOPPED, FATAL or BACKOFF capsule now. Answered when it is READY (or fails)."""
        if worker.pid is not None and worker.pending_op is None:
            reply(
                {
                    "ok": True,
                    "message": (
                        f"{worker.name} is already running ({worker.state}, pid {worker.pid})"
                    ),
                    "capsule": worker.name,
                    "state": str(worker.state),
                    "pid": worker.pid,
                }
            )
            return
        worker.ready_waiters.append(_ReadyWaiter(reply, "started", None))
        self._release(worker)
        if worker.pid is not None:
            worker.pending_op = "restart"  # still stopping: start it again at its exit
            return
        self._start_now(worker)

    def _release(self, worker: _Worker) -> None:
        """An operator takes responsibility: forget FATAL, the hold and the failure history."""
        worker.held = False
        worker.fatal_reason = None
        worker.tracker.reset()

    def _start_now(self, worker: _Worker) -> None:
        if worker.restart_timer is not None:
            worker.restart_timer.cancel()
            worker.restart_timer = None
        self._start_worker(worker)

    def _ready_answer(self, proc: _Proc, waiter: _ReadyWaiter) -> dict[str, Any]:
        was = ""
        if waiter.previous_pid is not None and waiter.previous_pid != proc.pid:
            was = f", was {waiter.previous_pid}"
        return {
            "ok": True,
            "message": f"{waiter.verb} {proc.name}: READY (pid {proc.pid}{was})",
            "capsule": proc.name,
            "state": str(proc.state),
            "pid": proc.pid,
            "restarts": proc.restarts,
            "generation": proc.generation,
        }

    # ---------------------------------------------------------------------------------------
    # Exits

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self._by_pid.pop(pid, None)
            if proc is not None and proc.pid == pid:
                self._on_exit(proc, status)

    def _on_exit(self, proc: _Proc, status: int) -> None:
        # Whatever the process reported or printed before it died belongs to this generation.
        self._read_status(proc, reap_on_eof=False)
        self._close_status(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.drain()
                pipe.flush_partial()
        text = describe_exit(status)
        reason = proc.kill_reason or proc.reason
        if reason:
            text = f"{text}: {reason}"
        proc.pid = None
        proc.ps = None
        proc.create_time = None
        proc.cancel_timers()
        code = os.waitstatus_to_exitcode(status)
        if proc is self._broker:
            self._kill_host_processes()
        self._after_exit(proc, text, code)

    def _kill_host_processes(self) -> None:
        """The broker exited: no host process it started may outlive it.

        Their leaders had a parent-death SIGKILL, but their own children did not; the broker's
        table file names the groups (a broker that stopped cleanly removed it).
        """
        try:
            killed = kill_host_process_groups(self.home.state_dir())
        except Exception as exc:  # never let the cleanup take the supervisor down
            log.error("cannot clean up the broker's host processes: %s", exc)
            return
        if killed:
            log.warning(
                "killed %d host process group(s) left by the broker: %s",
                len(killed),
                ", ".join(map(str, killed)),
            )

    def _after_exit(self, proc: _Proc, text: str, code: int) -> None:
        proc.last_exit = text
        self._status_dirty = True
        try:
            self._decide_after_exit(proc, text, code)
        finally:
            self._answer_after_exit(proc, text)

    def _decide_after_exit(self, proc: _Proc, text: str, code: int) -> None:
        operation, proc.pending_op = proc.pending_op, None
        if self._phase in (_Phase.STOPPING, _Phase.DONE):
            if proc.state != ProcState.FATAL:
                proc.state = ProcState.STOPPED
            log.info("%s stopped (%s)", proc.tag, text)
            self._advance_shutdown()
            return
        if proc is self._broker and self._phase == _Phase.STARTING:
            self._fail(f"broker failed to start: {text}", proc)
            return
        if isinstance(proc, _Worker) and operation == "stop":
            proc.state = ProcState.STOPPED
            log.info("%s stopped by the operator (%s)", proc.tag, text)
            self._start_eligible()  # dependents still waiting for it start without it
            return
        if isinstance(proc, _Worker) and operation == "restart":
            log.info("%s stopped (%s); restarting it", proc.tag, text)
            self._start_worker(proc)
            return
        if code == ExitCode.CONFIG or proc.fatal_reason is not None:
            self._set_fatal(proc, text)
            return
        decision = proc.tracker.on_exit(time.monotonic())
        if not decision.restart:
            proc.last_exit = f"{text}; {decision.fatal_reason}"
            self._set_fatal(proc, proc.last_exit)
            return
        proc.state = ProcState.BACKOFF
        log.warning("%s exited (%s); restarting in %.2f s", proc.tag, text, decision.delay)
        proc.restart_timer = self._timers.call_later(decision.delay, lambda: self._restart(proc))

    def _answer_after_exit(self, proc: _Proc, text: str) -> None:
        """Answer the operators waiting on this exit, and those waiting for a READY that a
        process which exited (and was not started again at once) will not reach."""
        stop_waiters, proc.exit_waiters = proc.exit_waiters, []
        for reply in stop_waiters:
            reply(
                {
                    "ok": True,
                    "message": f"stopped {proc.name} ({text})",
                    "capsule": proc.name,
                    "state": str(proc.state),
                    "last_exit": text,
                }
            )
        if proc.pid is not None and proc.state == ProcState.STARTING:
            return  # started again: the READY waiters wait for the new generation
        ready_waiters, proc.ready_waiters = proc.ready_waiters, []
        for waiter in ready_waiters:
            waiter.reply(
                {
                    "ok": False,
                    "error": (
                        f"{proc.name} exited before it was READY ({text}); it is {proc.state} now"
                    ),
                    "capsule": proc.name,
                    "state": str(proc.state),
                    "last_exit": text,
                }
            )

    def _restart(self, proc: _Proc) -> None:
        if isinstance(proc, _Worker):
            self._start_worker(proc)
        else:
            self._start_broker()

    def _set_fatal(self, proc: _Proc, text: str) -> None:
        proc.state = ProcState.FATAL
        self._status_dirty = True
        log.error("%s is FATAL: %s", proc.name, text)
        if proc is self._broker:
            self._fail(f"the broker is FATAL: {text}", None)
        else:
            self._start_eligible()

    def _fail(self, message: str, proc: _Proc | None) -> None:
        """Give up: record the error and stop the whole tree."""
        details: list[str] = []
        if proc is not None and proc.stderr is not None:
            proc.stderr.drain()
            if proc.stderr.tail:
                details = [f"{proc.name} stderr: {line}" for line in proc.stderr.tail]
        if self._error is None:
            self._error = SupervisorError(message, details)
        log.error("%s", message)
        self._begin_shutdown()

    # ---------------------------------------------------------------------------------------
    # Shutdown

    def _begin_shutdown(self) -> None:
        if self._phase in (_Phase.STOPPING, _Phase.DONE):
            return
        self._phase = _Phase.STOPPING
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None
        for proc in self._all_procs():
            self._refuse_waiters(proc, "the supervisor is shutting down")
            if proc.restart_timer is not None:
                proc.restart_timer.cancel()
                proc.restart_timer = None
            if proc.pid is None and proc.state != ProcState.FATAL:
                proc.state = ProcState.STOPPED
        self._status_dirty = True
        self._advance_shutdown()

    def _advance_shutdown(self) -> None:
        """Stop what can be stopped now: dependents before providers, the broker last."""
        if self._phase != _Phase.STOPPING:
            return
        for worker in reversed(self._start_order):
            if worker.pid is None or worker.stopping:
                continue
            if any(self._by_name[d].pid is not None for d in self._dependents[worker.name]):
                continue
            self._terminate(worker)
        if any(worker.pid is not None for worker in self._workers):
            return
        broker = self._broker
        if broker is not None and broker.pid is not None:
            if not broker.stopping:
                self._terminate(broker)
            return
        self._phase = _Phase.DONE

    def _terminate(self, proc: _Proc) -> None:
        assert proc.pid is not None
        proc.stopping = True
        log.info("stopping %s (pid %d)", proc.tag, proc.pid)
        kill_group(proc.pid, signal.SIGTERM)
        if proc.kill_timer is not None:
            proc.kill_timer.cancel()
        proc.kill_timer = self._timers.call_later(self.grace, lambda: self._grace_expired(proc))

    def _grace_expired(self, proc: _Proc) -> None:
        proc.kill_timer = None
        if proc.pid is None:
            return
        log.warning("%s did not stop within %g s: SIGKILL", proc.tag, self.grace)
        kill_group(proc.pid, signal.SIGKILL)
        self._expect_death(proc)

    def _expect_death(self, proc: _Proc) -> None:
        """After a SIGKILL: give up on the process if it is not reaped within KILL_WAIT."""
        if proc.kill_timer is not None:
            proc.kill_timer.cancel()
        proc.kill_timer = self._timers.call_later(KILL_WAIT, lambda: self._kill_failed(proc))

    def _kill_failed(self, proc: _Proc) -> None:
        proc.kill_timer = None
        if proc.pid is None:
            return
        log.error("%s (pid %d) survived SIGKILL for %g s; giving up", proc.tag, proc.pid, KILL_WAIT)
        self._by_pid.pop(proc.pid, None)
        proc.pid = None
        self._advance_shutdown()

    def _kill_all(self) -> None:
        for proc in self._all_procs():
            if proc.pid is not None:
                proc.stopping = True
                kill_group(proc.pid, signal.SIGKILL)
                self._expect_death(proc)

    @staticmethod
    def _refuse_waiters(proc: _Proc, error: str, *, exits_too: bool = False) -> None:
        waiters, proc.ready_waiters = proc.ready_waiters, []
        for waiter in waiters:
            waiter.reply({"ok": False, "error": error, "capsule": proc.name})
        if exits_too:
            replies, proc.exit_waiters = proc.exit_waiters, []
            for reply in replies:
                reply({"ok": False, "error": error, "capsule": proc.name})

    def _all_procs(self) -> list[_Proc]:
        procs: list[_Proc] = list(self._workers)
        if self._broker is not None:
            procs.append(self._broker)
        return procs

    def _teardown(self) -> None:
        """Leave nothing behind: no process, no pipe, no status file, no temporary directory."""
        survivors = [proc for proc in self._all_procs() if proc.pid is not None]
        for proc in survivors:
            assert proc.pid is not None
            kill_group(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while self._by_pid and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
                continue
            exited = self._by_pid.pop(pid, None)
            if exited is not None:
                self._on_exit(exited, status)
        for proc in self._all_procs():
            self._refuse_waiters(proc, "the supervisor stopped", exits_too=True)
        if self._control is not None:
            self._control.close()
            self._control = None
        for proc in self._all_procs():
            self._close_status(proc)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.drain()
                    pipe.flush_partial()
                    pipe.close()
        if self._signal_w >= 0:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            for fd in (self._signal_r, self._signal_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._signal_r = self._signal_w = -1
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._lock_fd >= 0:  # the status file is ours only while we hold the lock
            remove_status(self._status_path)
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._endpoint_tmpdir is not None:
            shutil.rmtree(self._endpoint_tmpdir, ignore_errors=True)
            self._endpoint_tmpdir = None
        self._master_key[:] = bytes(len(self._master_key))
        if self._log_handlers:
            log.info("astrid-supervisor stopped")
        for log_handler in self._log_handlers:
            log.removeHandler(log_handler)
        self._log_handlers = []
        for sink in self._log_files:
            sink.close()
        self._log_files = []

    # ---------------------------------------------------------------------------------------
    # Status file

    def _flush_status(self) -> None:
        if not self._status_dirty or self._phase == _Phase.DONE:
            return
        self._status_dirty = False
        try:
            write_status(self._status_path, self._snapshot())
        except OSError as exc:
            log.warning("cannot write %s: %s", self._status_path, exc)

    def _snapshot(self) -> StatusFile:
        broker = self._broker
        broker_status = (
            BrokerStatus(
                pid=broker.pid,
                create_time=broker.create_time,
                state=broker.state or ProcState.STARTING,
                restarts=broker.restarts,
                started_at=broker.started_at,
                last_exit=broker.last_exit,
            )
            if broker is not None
            else BrokerStatus()
        )
        return StatusFile(
            supervisor=SupervisorInfo(
                pid=self._pid,
                create_time=self._create_time,
                started_at=self._started_at,
                home=str(self.home.root()),
                workspace=str(self.workspace),
                endpoint=self._endpoint,
            ),
            broker=broker_status,
            capsules=[
                CapsuleStatus(
                    name=worker.name,
                    dir=str(worker.capsule_dir),
                    pid=worker.pid,
                    create_time=worker.create_time,
                    state=worker.state or ProcState.STARTING,
                    restarts=worker.restarts,
                    generation=worker.generation,
                    started_at=worker.started_at,
                    last_exit=worker.last_exit,
                    has_run=worker.has_run,
                )
                for worker in self._workers
            ],
        )


#: psutil computes create_time from clock ticks (10 ms): a child can share its parent's.
_TICK: Final = 0.011


def _same_process(pid: int, create_time: float) -> bool:
    """Whether ``pid`` is still the process that had ``create_time`` (a zombie counts)."""
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < _TICK / 2
    except (psutil.Error, OSError):
        return False


def kill_host_process_groups(state_dir: Path) -> list[int]:
    """SIGKILL the host process groups listed in ``state_dir/processes.json``, remove the file,
    and return the groups signalled.

    Only verified groups are killed: the entry's leader is still the recorded process (same pid
    and psutil create_time; a zombie counts), or, when the leader is gone (its parent-death
    signal killed it with the broker), some process of the group was created no earlier than
    the leader and no later than now. The broker lists a leader until it reaps it, so the group
    id stayed reserved until the broker died; a stranger reusing it would have been created
    after that, and while a member of the original group lives the id cannot be reused at all.
    Call it as soon as the broker's exit is seen. Stale entries are ignored.
    """
    path = state_dir / HOST_TABLE_FILE
    entries = read_host_processes(path)
    own_group = os.getpgrp()
    verified: set[int] = set()
    pending: dict[int, float] = {}  # group id -> the leader's create_time
    for entry in entries:
        if entry.create_time is None or entry.pgid in (own_group, os.getpid()):
            continue
        if entry.pid == entry.pgid and _same_process(entry.pid, entry.create_time):
            verified.add(entry.pgid)
        else:
            pending[entry.pgid] = min(pending.get(entry.pgid, entry.create_time), entry.create_time)
    if pending:
        # "Now" on psutil's clock (boot time + time since boot), which may differ from
        # time.time() by up to a second.
        now = psutil.boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME) + _TICK
        for process in psutil.process_iter(["create_time"]):
            try:
                group = os.getpgid(process.pid)
            except OSError:
                continue
            since = pending.get(group)
            created = process.info.get("create_time")
            if since is not None and created is not None and since - _TICK <= created <= now:
                verified.add(group)
    killed = [group for group in sorted(verified) if kill_group(group, signal.SIGKILL)]
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return killed


def _ps_process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.Error, OSError):
        return None


def _create_time(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        return process.create_time()
    except (psutil.Error, OSError):
        return None


def _ignore_signal(signum: int, frame: object) -> None:
    """Signal handler: the wakeup fd carries the signal number to the loop."""


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return f"{utc_timestamp(record.created)} {record.levelname} {message}"


class _FdHandler(logging.Handler):
    """Writes each record to a :class:`LogFile` (one unbuffered append per record)."""

    def __init__(self, sink: LogFile) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", errors="backslashreplace")
            self.sink.write(data)
        except Exception:
            self.handleError(record)
