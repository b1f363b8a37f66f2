"""``astrid-supervisor``: ``up`` runs the process tree (in the foreground, or as a daemon with
``--detach``), ``down`` stops a running one, ``status`` says whether one runs (LSB exit codes)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

from astrid_core.dirs import AstridHome, HomeResolutionError, WorkspaceDir
from supervisor.config import (
    ConfigError,
    SupervisorConfig,
    default_config_path,
    load_config,
)
from supervisor.status import ProcState, live_process, read_status, status_path
from supervisor.tree import Supervisor, SupervisorError

__all__ = ["build_parser", "main"]

PROG: Final = "astrid-supervisor"
#: How long ``up --detach`` waits for the daemon to report that the broker is READY.
DETACH_TIMEOUT: Final = 120.0
DEFAULT_DOWN_TIMEOUT: Final = 60.0
#: LSB exit codes of ``status``.
STATUS_RUNNING: Final = 0
STATUS_NOT_RUNNING: Final = 3
STATUS_UNKNOWN: Final = 4


class _CommandError(Exception):
    """An error of ``down``/``status``: one line on stderr, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=formatter,
        description=(
            "The root of the astrid process tree: runs the broker and one worker process per\n"
            "capsule, restarts them when they fail, and stops them all on SIGINT/SIGTERM."
        ),
        epilog=(
            "examples:\n"
            "  astrid-supervisor up\n"
            "  astrid-supervisor up --detach --home /srv/astrid\n"
            "  astrid-supervisor status\n"
            "  astrid-supervisor down"
        ),
    )
    home_help = "the astrid home (overrides $ASTRID_HOME; default: ~/.astrid)"
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = commands.add_parser(
        "up",
        help="start the broker and every capsule, and supervise them",
        formatter_class=formatter,
        description=(
            "Discover the capsules of the workspace (.astrid/capsules) and of the home\n"
            "(capsules/), start the broker, then one worker per capsule in dependency order.\n"
            "Workers that exit are restarted with exponential backoff; one that keeps failing\n"
            "becomes FATAL (see `astrid ps`); one whose resident memory exceeds its limit is\n"
            "killed and restarted. Logs go to stderr and to <home>/logs/: the supervisor's to\n"
            "supervisor.log, each capsule's output to <capsule>.log.\n"
            "\n"
            "Settings come from --config, else <home>/supervisor.toml when it exists, else\n"
            "the built-in defaults (deploy/supervisor.toml documents every key). An invalid\n"
            "file is refused before anything starts.\n"
            "\n"
            "SIGINT, SIGTERM or SIGHUP (or `astrid-supervisor down`) stop the capsules\n"
            "(dependents first), then the broker, each within the grace period before SIGKILL;\n"
            "a second SIGINT kills at once. Operators restart, stop and start single capsules\n"
            "with `astrid restart|stop|start CAPSULE` (through <home>/run/supervisor.sock).\n"
            "\n"
            "--detach runs the tree as a daemon (new session, output to logs/supervisor.log)\n"
            "and returns once the broker is READY, printing the daemon's pid."
        ),
        epilog=(
            "examples:\n"
            "  astrid-supervisor up\n"
            "  astrid-supervisor up --home /srv/astrid --workspace /srv/project --grace 10\n"
            "  astrid-supervisor up --config /etc/astrid/supervisor.toml --detach\n"
            "  ASTRID_HOME=/tmp/astrid astrid-supervisor up"
        ),
    )
    up.add_argument("--home", metavar="DIR", type=Path, help=home_help)
    up.add_argument(
        "--workspace",
        metavar="DIR",
        type=Path,
        help=(
            "the project workspace (default: found upward from the current directory by its "
            ".astrid/, .git or ASTRID.md)"
        ),
    )
    up.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        help="the configuration file (default: <home>/supervisor.toml, if it exists)",
    )
    up.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_seconds,
        help=(
            "how long a process may take to exit after SIGTERM (overrides [supervisor] grace; "
            "default: 5)"
        ),
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return when the tree is up",
    )
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser(
        "down",
        help="stop a running supervisor and wait until it has exited",
        formatter_class=formatter,
        description=(
            "Ask the supervisor of the home to stop (over its control socket; SIGTERM to the\n"
            "pid of its status file if the socket does not answer), then wait until it has\n"
            "exited: capsules stop in reverse dependency order, the broker last. Exits with\n"
            "status 1 if it is still running after --timeout seconds, 0 otherwise (also when\n"
            "nothing was running)."
        ),
        epilog="examples:\n  astrid-supervisor down\n  astrid-supervisor down --timeout 120",
    )
    down.add_argument("--home", metavar="DIR", type=Path, help=home_help)
    down.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_seconds,
        default=DEFAULT_DOWN_TIMEOUT,
        help=f"seconds to wait for the exit (default: {DEFAULT_DOWN_TIMEOUT:g})",
    )
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser(
        "status",
        help="say whether the supervisor runs, since when, and how its capsules are",
        formatter_class=formatter,
        description=(
            "Print whether a supervisor runs for the home: pid, uptime, home, workspace, the\n"
            "broker's state and how many capsules are in each state (from the supervisor's\n"
            "status file and the process table: it works even if the supervisor is wedged).\n"
            "Exit status as for LSB init scripts: 0 running, 3 not running, 4 unknown (the\n"
            "home cannot be determined)."
        ),
        epilog="examples:\n  astrid-supervisor status\n  astrid-supervisor status --json",
    )
    status.add_argument("--home", metavar="DIR", type=Path, help=home_help)
    status.add_argument("--json", action="store_true", help="print a JSON document")
    status.set_defaults(handler=cmd_status)
    return parser


# --------------------------------------------------------------------------------------------
# up


def _resolve_home(home_arg: Path | None) -> AstridHome:
    if home_arg is not None:
        root = home_arg.absolute()
        # Children (and anything resolving the home from the environment) see the same home.
        os.environ["ASTRID_HOME"] = str(root)
        return AstridHome.from_path(root)
    return AstridHome.resolve()


def _load_config(config_arg: Path | None, home: AstridHome) -> SupervisorConfig:
    if config_arg is not None:
        return load_config(config_arg.absolute(), required=True)
    return load_config(default_config_path(home), required=False)


def cmd_up(args: argparse.Namespace) -> int:
    try:
        home = _resolve_home(args.home)
    except HomeResolutionError as exc:
        raise SupervisorError(f"cannot find the astrid home: {exc}") from None
    config = _load_config(args.config, home)
    if args.workspace is not None:
        workspace = args.workspace.absolute()
        if not workspace.is_dir():
            raise SupervisorError(f"the workspace {workspace} is not a directory")
    else:
        workspace = WorkspaceDir.detect(Path.cwd()).root()
    if not args.detach:
        return Supervisor(home, workspace, config=config, grace=args.grace).run()

    def run(on_running: Callable[[], None]) -> int:
        supervisor = Supervisor(
            home,
            workspace,
            config=config,
            grace=args.grace,
            log_to_stderr=False,
            on_running=on_running,
        )
        return supervisor.run()

    return _detach(home, run)


# --------------------------------------------------------------------------------------------
# up --detach


class _StartReport:
    """The daemon's side of the pipe to the ``up --detach`` command: one JSON line per event."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, document: dict[str, Any], *, last: bool) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, json.dumps(document).encode() + b"\n")
        if last:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def running(self) -> None:
        self.send({"event": "running", "pid": os.getpid()}, last=True)


def _detach(home: AstridHome, run: Callable[[Callable[[], None]], int]) -> int:
    """Run ``run`` in a daemon (double fork, new session, stdio to logs/supervisor.log) and
    wait for its start report: the broker READY, or the error that stopped it."""
    log_path = home.logs_dir() / "supervisor.log"
    try:
        home.ensure()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SupervisorError(f"cannot open {log_path}: {exc.strerror or exc}") from None
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the intermediate child: a new session, then the daemon, then gone
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() == 0:
                _daemon(run, log_fd, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.close(log_fd)
    os.waitpid(pid, 0)
    try:
        return _await_start(read_fd, home, log_path)
    finally:
        os.close(read_fd)


def _daemon(run: Callable[[Callable[[], None]], int], log_fd: int, report_fd: int) -> NoReturn:
    code = 1
    report = _StartReport(report_fd)
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir("/")
        report.send({"event": "forked", "pid": os.getpid()}, last=False)
        code = run(report.running)
    except SupervisorError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        report.send({"event": "error", "error": exc.message, "details": exc.details}, last=True)
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        report.send({"event": "error", "error": str(exc)}, last=True)
    except BaseException as exc:
        traceback.print_exc()
        report.send({"event": "error", "error": f"{type(exc).__name__}: {exc}"}, last=True)
    finally:
        report.send({"event": "exited", "code": code}, last=True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _await_start(fd: int, home: AstridHome, log_path: Path) -> int:
    deadline = time.monotonic() + DETACH_TIMEOUT
    buffer = bytearray()
    daemon_pid: int | None = None
    while True:
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "forked":
                daemon_pid = event.get("pid")
            elif kind == "running":
                print(f"{PROG} running (pid {event.get('pid')}, home {home.root()})")
                return 0
            elif kind == "error":
                details = event.get("details") or []
                raise SupervisorError(str(event.get("error")), [str(d) for d in details])
            elif kind == "exited":
                raise SupervisorError(
                    f"the daemon exited during start-up (status {event.get('code')}); "
                    f"see {log_path}"
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            which = f" (pid {daemon_pid})" if daemon_pid is not None else ""
            raise SupervisorError(
                f"the daemon{which} did not report a start within {DETACH_TIMEOUT:g} s; "
                f"see {log_path} (`{PROG} down` stops it)"
            )
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SupervisorError(f"the daemon exited during start-up; see {log_path}")
        buffer += chunk


# --------------------------------------------------------------------------------------------
# down and status


def _home_for(home_arg: Path | None, code: int) -> AstridHome:
    if home_arg is not None:
        return AstridHome.from_path(home_arg.absolute())
    try:
        return AstridHome.resolve()
    except HomeResolutionError as exc:
        raise _CommandError(f"cannot find the astrid home: {exc}", code) from None


def cmd_down(args: argparse.Namespace) -> int:
    from supervisor.control import ControlError, send_request

    home = _home_for(args.home, 1)
    status = read_status(status_path(home.state_dir()))
    process = None
    if status is not None:
        process = live_process(status.supervisor.pid, status.supervisor.create_time)
    if status is None or process is None:
        print(f"{PROG} is not running (home: {home.root()})")
        return 0
    pid, create_time = status.supervisor.pid, status.supervisor.create_time
    deadline = time.monotonic() + args.timeout
    try:
        answer = send_request(home, {"command": "shutdown"}, timeout=min(5.0, args.timeout))
        asked = answer.get("ok") is True
    except ControlError:
        asked = False
    if not asked:  # the control socket is gone or wedged: the signal still works
        try:
            process.send_signal(signal.SIGTERM)
        except Exception as exc:  # psutil.NoSuchProcess (gone meanwhile), AccessDenied
            if live_process(pid, create_time) is not None:
                raise _CommandError(f"cannot signal {PROG} (pid {pid}): {exc}") from None
    while live_process(pid, create_time) is not None:
        if time.monotonic() >= deadline:
            raise _CommandError(f"{PROG} (pid {pid}) did not stop within {args.timeout:g} s")
        time.sleep(0.05)
    print(f"{PROG} stopped (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from supervisor.astrid_cli import format_uptime

    home = _home_for(args.home, STATUS_UNKNOWN)
    status = read_status(status_path(home.state_dir()))
    process = None
    if status is not None:
        process = live_process(status.supervisor.pid, status.supervisor.create_time)
    if status is None or process is None:
        if args.json:
            print(json.dumps({"running": False, "home": str(home.root())}))
        else:
            print(f"{PROG} is not running (home: {home.root()})")
        return STATUS_NOT_RUNNING
    sup = status.supervisor
    uptime = max(0.0, time.time() - sup.started_at)
    counted = collections.Counter(str(capsule.state) for capsule in status.capsules)
    counts = {str(state): counted.get(str(state), 0) for state in ProcState}
    broker = status.broker
    if args.json:
        document = {
            "running": True,
            "pid": sup.pid,
            "uptime_s": round(uptime, 3),
            "started_at": sup.started_at,
            "home": sup.home,
            "workspace": sup.workspace,
            "broker": {"state": str(broker.state), "pid": broker.pid, "restarts": broker.restarts},
            "capsules": counts,
        }
        print(json.dumps(document, indent=2))
        return STATUS_RUNNING
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "none"
    broker_pid = f", pid {broker.pid}" if broker.pid is not None else ""
    print(f"{PROG} is running (pid {sup.pid}, up {format_uptime(uptime)})")
    print(f"  home:      {sup.home}")
    print(f"  workspace: {sup.workspace}")
    print(f"  broker:    {broker.state}{broker_pid}, restarts {broker.restarts}")
    print(f"  capsules:  {len(status.capsules)} ({summary})")
    return STATUS_RUNNING


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except _CommandError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 1
    except SupervisorError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment refused something (permissions, disk, limits)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
