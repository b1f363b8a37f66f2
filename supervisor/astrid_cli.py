"""The ``astrid`` command line: ``ps``, ``kill``, ``call``, ``restart``/``stop``/``start``, ...

``ps`` and ``kill`` work from the supervisor's status file and psutil alone, so they keep working
when the broker is down; they also cover the host processes that capsules spawned, listed by the
broker in ``state/processes.json``. ``call`` talks to the broker over ``sessions/system.sock``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from astrid_core.dirs import AstridHome, HomeResolutionError
from supervisor.status import StatusFile, live_process, read_status, status_path

__all__ = [
    "HOST_TABLE_FILE",
    "HostProcessEntry",
    "ProcessRow",
    "format_cpu_time",
    "format_rss",
    "format_uptime",
    "main",
    "parse_signal",
    "read_host_processes",
]

PROG: Final = "astrid"
DEFAULT_CALL_TIMEOUT: Final = 60.0


class CliError(Exception):
    """An error for the operator: one line on stderr and exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------------------------
# Formatting helpers


def format_uptime(seconds: float | None) -> str:
    """``3s``, ``4m12s``, ``2h03m``, ``1d04h`` (``-`` when unknown)."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_rss(rss_bytes: int | None) -> str:
    """Resident memory in MiB with one decimal and its unit (``-`` when unknown)."""
    if rss_bytes is None:
        return "-"
    return f"{rss_bytes / (1024 * 1024):.1f}M"


def format_cpu_time(seconds: float | None) -> str:
    """Cumulative CPU time as ``M:SS.cc`` (``0:01.23``), like ``time``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    hundredths = round(max(0.0, seconds) * 100)
    minutes, rest = divmod(hundredths, 6000)
    return f"{minutes}:{rest // 100:02d}.{rest % 100:02d}"


def format_percent(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.1f}"


def parse_signal(text: str) -> signal.Signals:
    """``TERM``, ``SIGTERM``, ``term`` or ``15`` → :data:`signal.SIGTERM`."""
    value = text.strip()
    try:
        if value.isdigit():
            return signal.Signals(int(value))
        name = value.upper()
        if not name.startswith("SIG"):
            name = f"SIG{name}"
        return signal.Signals[name]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid signal: {text!r}") from None


# --------------------------------------------------------------------------------------------
# ps


@dataclass(frozen=True, slots=True)
class ProcessRow:
    name: str
    role: str
    pid: int | None
    state: str
    restarts: int | None
    uptime_s: float | None
    rss_bytes: int | None
    cpu_s: float | None
    cpu_percent: float | None
    last_exit: str | None
    generation: int | None
    #: Host processes only: the capsule that spawned it and its command line.
    capsule: str | None = None
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        document = {
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 3),
            "rss_bytes": self.rss_bytes,
            "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 3),
            "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 2),
            "last_exit": self.last_exit,
            "generation": self.generation,
        }
        if self.role == "host":
            document["capsule"] = self.capsule
            document["command"] = self.command
        return document

    def cells(self) -> list[str]:
        return [
            self.name,
            self.role,
            "-" if self.pid is None else str(self.pid),
            self.state,
            "-" if self.restarts is None else str(self.restarts),
            format_uptime(self.uptime_s),
            format_rss(self.rss_bytes),
            format_cpu_time(self.cpu_s),
            format_percent(self.cpu_percent),
            self.last_exit or "",
        ]


COLUMNS: Final = (
    "NAME",
    "ROLE",
    "PID",
    "STATE",
    "RESTARTS",
    "UPTIME",
    "RSS",
    "CPU",
    "%CPU",
    "LAST EXIT",
)
_RIGHT_ALIGNED: Final = frozenset({"PID", "RESTARTS", "UPTIME", "RSS", "CPU", "%CPU"})


def _row(
    *,
    name: str,
    role: str,
    pid: int | None,
    create_time: float | None,
    started_at: float | None,
    state: str,
    restarts: int | None,
    last_exit: str | None,
    generation: int | None,
    now: float,
) -> ProcessRow:
    process = live_process(pid, create_time)
    rss = cpu = percent = uptime = None
    if process is not None:
        try:
            with process.oneshot():
                rss = process.memory_info().rss
                times = process.cpu_times()
        except Exception:  # the process vanished meanwhile (psutil.Error, OSError)
            process = None
        else:
            cpu = times.user + times.system
            # The supervisor's wall clock at fork time; psutil's create_time is coarser.
            start = started_at if started_at is not None else create_time
            if start is not None:
                uptime = max(0.0, now - start)
                percent = 100.0 * cpu / uptime if uptime > 0 else 0.0
    return ProcessRow(
        name=name,
        role=role,
        pid=pid if process is not None else None,
        state=state,
        restarts=restarts,
        uptime_s=uptime,
        rss_bytes=rss,
        cpu_s=cpu,
        cpu_percent=percent,
        last_exit=last_exit,
        generation=generation,
    )


# --------------------------------------------------------------------------------------------
# Host processes: the broker's table file


#: The broker's table of host processes, in ``state/``.
HOST_TABLE_FILE: Final = "processes.json"
_HOST_TABLE_VERSION: Final = 1
#: Longest command shown in the NAME column (the JSON ``command`` field has all of it).
_HOST_NAME_WIDTH: Final = 48


@dataclass(frozen=True, slots=True)
class HostProcessEntry:
    """One entry of ``state/processes.json``: the leader of a host process group."""

    pid: int
    pgid: int
    capsule: str
    command: str
    started_at: float | None
    create_time: float | None


def _json_number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def read_host_processes(path: Path) -> list[HostProcessEntry]:
    """The entries of the broker's process table at ``path``; [] when it is missing or malformed
    (malformed entries are skipped). Entries are not verified: see :func:`live_process`."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("version") != _HOST_TABLE_VERSION:
        return []
    raw = data.get("processes")
    entries = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        pid, pgid = item.get("pid"), item.get("pgid", item.get("pid"))
        capsule, command = item.get("capsule"), item.get("command")
        if type(pid) is not int or type(pgid) is not int or pid <= 0 or pgid <= 1:
            continue
        if not isinstance(capsule, str) or not isinstance(command, str):
            continue
        entries.append(
            HostProcessEntry(
                pid=pid,
                pgid=pgid,
                capsule=capsule,
                command=command,
                started_at=_json_number(item.get("started_at")),
                create_time=_json_number(item.get("create_time")),
            )
        )
    return entries


def _host_table(home: AstridHome) -> list[HostProcessEntry]:
    return read_host_processes(home.state_dir() / HOST_TABLE_FILE)


def _host_name(command: str) -> str:
    if len(command) > _HOST_NAME_WIDTH:
        command = command[: _HOST_NAME_WIDTH - 1] + "\u2026"
    return f"  \u21b3 {command}"


def _host_rows(hosts: Sequence[HostProcessEntry], now: float) -> dict[str, list[ProcessRow]]:
    """Rows of the live host processes, by capsule (entries whose pid is gone are skipped)."""
    rows: dict[str, list[ProcessRow]] = {}
    for entry in hosts:
        row = _row(
            name=_host_name(entry.command),
            role="host",
            pid=entry.pid,
            create_time=entry.create_time,
            started_at=entry.started_at,
            state="RUNNING",
            restarts=None,
            last_exit=None,
            generation=None,
            now=now,
        )
        if row.pid is not None:
            rows.setdefault(entry.capsule, []).append(
                replace(row, capsule=entry.capsule, command=entry.command)
            )
    return rows


def collect_rows(
    status: StatusFile, now: float | None = None, hosts: Sequence[HostProcessEntry] = ()
) -> list[ProcessRow]:
    """One row for the supervisor, the broker and every capsule, sampled from psutil, each
    capsule followed by the live host processes of ``hosts`` that it spawned."""
    now = time.time() if now is None else now
    sup = status.supervisor
    broker = status.broker
    rows = [
        _row(
            name="astrid-supervisor",
            role="supervisor",
            pid=sup.pid,
            create_time=sup.create_time,
            started_at=sup.started_at,
            state="RUNNING",
            restarts=None,
            last_exit=None,
            generation=None,
            now=now,
        ),
        _row(
            name="broker",
            role="broker",
            pid=broker.pid,
            create_time=broker.create_time,
            started_at=broker.started_at,
            state=str(broker.state),
            restarts=broker.restarts,
            last_exit=broker.last_exit,
            generation=broker.restarts + 1,
            now=now,
        ),
    ]
    host_rows = _host_rows(hosts, now) if hosts else {}
    for capsule in status.capsules:
        rows.append(
            _row(
                name=capsule.name,
                role="worker",
                pid=capsule.pid,
                create_time=capsule.create_time,
                started_at=capsule.started_at,
                state=str(capsule.state),
                restarts=capsule.restarts,
                last_exit=capsule.last_exit,
                generation=capsule.generation or None,
                now=now,
            )
        )
        rows.extend(host_rows.pop(capsule.name, ()))
    for orphans in host_rows.values():  # capsules the status file does not know (any more)
        rows.extend(orphans)
    return rows


def render_plain(rows: Sequence[ProcessRow]) -> str:
    """An aligned plain-text table (for pipes and files)."""
    table = [list(COLUMNS), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = []
    for line in table:
        cells = [
            cell.rjust(width) if column in _RIGHT_ALIGNED else cell.ljust(width)
            for column, cell, width in zip(COLUMNS, line, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


_STATE_STYLES: Final = {
    "RUNNING": "green",
    "READY": "green",
    "STARTING": "yellow",
    "BACKOFF": "yellow",
    "FATAL": "bold red",
    "STOPPED": "dim",
}


def _print_rich(rows: Sequence[ProcessRow]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    all_cells = [row.cells() for row in rows]
    widths = [
        max([len(column), *(len(cells[index]) for cells in all_cells)])
        for index, column in enumerate(COLUMNS)
    ]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, width in zip(COLUMNS, widths, strict=True):
        if column == "LAST EXIT":  # the one column that wraps in a narrow terminal
            table.add_column(column, overflow="fold", min_width=len(column))
        else:
            table.add_column(
                column,
                justify="right" if column in _RIGHT_ALIGNED else "left",
                no_wrap=True,
                min_width=width,
            )
    for row, cells in zip(rows, all_cells, strict=True):
        markup = [escape(cell) for cell in cells]
        style = _STATE_STYLES.get(row.state)
        if style:
            markup[3] = f"[{style}]{markup[3]}[/]"
        table.add_row(*markup)
    console = Console()
    # Two spaces between columns; below this width rich would drop columns rather than wrap.
    fixed = sum(widths[:-1]) + 2 * (len(COLUMNS) - 1)
    if console.width < fixed + len(COLUMNS[-1]):
        console = Console(width=fixed + widths[-1])  # let the terminal wrap the lines instead
    console.print(table)


@dataclass(eq=False)
class TreeNode:
    """One process of ``astrid ps --tree`` and the processes drawn beneath it."""

    row: ProcessRow
    children: list[TreeNode] = field(default_factory=list)


def process_tree(rows: Sequence[ProcessRow]) -> TreeNode | None:
    """The rows of :func:`collect_rows` as a tree: the supervisor, beneath it the broker and the
    workers, beneath each worker the host processes its capsule spawned (beneath the broker, the
    host processes of capsules the status file does not know)."""
    root = broker = None
    workers: dict[str, TreeNode] = {}
    hosts: list[ProcessRow] = []
    for row in rows:
        if row.role == "supervisor":
            root = TreeNode(row)
        elif row.role == "host":
            hosts.append(row)
        else:
            node = TreeNode(row)
            if row.role == "broker":
                broker = node
            else:
                workers[row.name] = node
    if root is None:
        return None
    if broker is not None:
        root.children.append(broker)
    root.children.extend(workers.values())
    for row in hosts:
        parent = workers.get(row.capsule or "") or broker or root
        parent.children.append(TreeNode(row))
    return root


def _tree_fields(row: ProcessRow) -> list[tuple[str, str]]:
    """The label of a tree node as (field, text) pairs; unknown values are left out."""
    name = row.command if row.role == "host" and row.command is not None else row.name
    fields = [("name", name), ("state", row.state)]
    if row.pid is not None:
        fields.append(("pid", f"pid {row.pid}"))
    if row.uptime_s is not None:
        fields.append(("uptime", f"up {format_uptime(row.uptime_s)}"))
    if row.rss_bytes is not None:
        fields.append(("rss", f"rss {format_rss(row.rss_bytes)} MiB"))
    if row.cpu_s is not None:
        fields.append(("cpu", f"cpu {format_cpu_time(row.cpu_s)}"))
    if row.restarts:
        fields.append(("restarts", f"restarts {row.restarts}"))
    if row.last_exit:
        fields.append(("last_exit", f"last exit: {row.last_exit}"))
    return fields


def tree_label(row: ProcessRow) -> str:
    return "  ".join(text for _, text in _tree_fields(row))


def render_tree_plain(root: TreeNode) -> str:
    """The tree as indented plain text (two spaces per level), for pipes and files."""
    lines: list[str] = []

    def walk(node: TreeNode, depth: int) -> None:
        lines.append("  " * depth + tree_label(node.row))
        for child in node.children:
            walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def _print_rich_tree(root: TreeNode) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.tree import Tree

    def label(row: ProcessRow) -> str:
        parts = []
        for kind, text in _tree_fields(row):
            markup = escape(text)
            if kind == "name":
                markup = f"[bold]{markup}[/]"
            elif kind == "state" and (style := _STATE_STYLES.get(row.state)):
                markup = f"[{style}]{markup}[/]"
            elif kind == "last_exit":
                markup = f"[dim]{markup}[/]"
            parts.append(markup)
        return "  ".join(parts)

    def add(branch: Tree, node: TreeNode) -> None:
        for child in node.children:
            add(branch.add(label(child.row)), child)

    tree = Tree(label(root.row), guide_style="dim")
    add(tree, root)
    Console().print(tree)


def _require_running(home: AstridHome) -> StatusFile:
    status = read_status(status_path(home.state_dir()))
    if status is None or live_process(status.supervisor.pid, status.supervisor.create_time) is None:
        raise CliError(f"astrid-supervisor is not running (home: {home.root()})")
    return status


def cmd_ps(home: AstridHome, args: argparse.Namespace) -> int:
    try:
        status = _require_running(home)
    except CliError:
        if args.json:
            print(json.dumps({"running": False, "home": str(home.root())}))
            return 1
        raise
    rows = collect_rows(status, hosts=_host_table(home))
    if args.json:
        document = {
            "running": True,
            "home": status.supervisor.home,
            "workspace": status.supervisor.workspace,
            "processes": [row.to_json() for row in rows],
        }
        print(json.dumps(document, indent=2))
    elif args.tree:
        root = process_tree(rows)
        assert root is not None  # collect_rows always starts with the supervisor
        if sys.stdout.isatty():
            _print_rich_tree(root)
        else:
            print(render_tree_plain(root))
    elif sys.stdout.isatty():
        _print_rich(rows)
    else:
        print(render_plain(rows))
    return 0


# --------------------------------------------------------------------------------------------
# kill


@dataclass(frozen=True, slots=True)
class KillTarget:
    pid: int
    create_time: float
    #: "worker counter", "broker", "astrid-supervisor", "host process 'sleep 30' of capsule x"
    description: str


def resolve_kill_target(
    status: StatusFile, target: str, hosts: Sequence[HostProcessEntry] = ()
) -> KillTarget:
    """The tree member ``target`` names (a capsule name, or a pid of the supervisor, the broker,
    a worker or a host process of ``hosts``); raises :class:`CliError`."""
    sup = status.supervisor
    if target.isdigit():
        pid = int(target)
        candidates = [
            (sup.pid, sup.create_time, "astrid-supervisor"),
            (status.broker.pid, status.broker.create_time, "broker"),
            *((c.pid, c.create_time, f"worker {c.name}") for c in status.capsules),
            *(
                (h.pid, h.create_time, f"host process '{h.command}' of capsule {h.capsule}")
                for h in hosts
            ),
        ]
        for candidate_pid, create_time, description in candidates:
            if (
                candidate_pid == pid
                and create_time is not None
                and live_process(pid, create_time) is not None
            ):
                return KillTarget(pid, create_time, description)
        raise CliError(
            f"refusing to signal pid {pid}: it is not part of the astrid tree (see `astrid ps`)"
        )
    capsule = status.capsule(target)
    if capsule is None:
        known = ", ".join(sorted(c.name for c in status.capsules)) or "none"
        raise CliError(f"no capsule named {target!r} (known: {known})")
    if (
        capsule.pid is None
        or capsule.create_time is None
        or live_process(capsule.pid, capsule.create_time) is None
    ):
        raise CliError(f"capsule {target!r} has no running worker (state {capsule.state})")
    return KillTarget(capsule.pid, capsule.create_time, f"worker {capsule.name}")


def cmd_kill(home: AstridHome, args: argparse.Namespace) -> int:
    status = _require_running(home)
    target = resolve_kill_target(status, args.target, _host_table(home))
    sig: signal.Signals = args.signal
    process = live_process(target.pid, target.create_time)
    if process is None:
        raise CliError(f"{target.description} (pid {target.pid}) is gone")
    try:
        process.send_signal(sig)
    except Exception as exc:  # psutil.NoSuchProcess / AccessDenied
        raise CliError(f"cannot signal {target.description} (pid {target.pid}): {exc}") from None
    print(f"sent {sig.name} to {target.description} (pid {target.pid})")
    return 0


# --------------------------------------------------------------------------------------------
# logs


def cmd_logs(home: AstridHome, args: argparse.Namespace) -> int:
    from supervisor.logs import LogsError, show_logs

    if args.previous and args.follow:
        args.parser.error("--previous cannot be combined with -f: that generation has ended")
    try:
        return show_logs(
            home,
            args.capsule,
            lines=args.lines,
            since=args.since,
            previous=args.previous,
            follow=args.follow,
        )
    except LogsError as exc:
        raise CliError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# call


def cmd_call(home: AstridHome, args: argparse.Namespace) -> int:
    from astrid_core.rpc import RpcError
    from supervisor.client import ClientError, call_tool

    try:
        output = call_tool(home, args.capsule, args.tool, args.arguments, timeout=args.timeout)
    except ClientError as exc:
        raise CliError(str(exc)) from None
    except RpcError as exc:
        raise CliError(exc.message) from None
    sys.stdout.write(output if output.endswith("\n") else output + "\n")
    return 0


def cmd_pub(home: AstridHome, args: argparse.Namespace) -> int:
    from astrid_core.rpc import Method, RpcError
    from supervisor.client import ClientError, SystemClient

    try:
        with SystemClient.connect(home, timeout=args.timeout) as client:
            result = client.request(
                Method.BUS_PUBLISH,
                {"topic": args.topic, "payload": args.payload},
                timeout=args.timeout,
            )
    except ClientError as exc:
        raise CliError(str(exc)) from None
    except RpcError as exc:
        raise CliError(exc.message) from None
    delivered = result.get("delivered", 0) if isinstance(result, dict) else 0
    noun = "subscription" if delivered == 1 else "subscriptions"
    print(f"published to {args.topic} ({delivered} {noun} reached)")
    return 0


def cmd_sub(home: AstridHome, args: argparse.Namespace) -> int:
    from astrid_core.rpc import Method, RpcError
    from supervisor.client import ClientError, SystemClient

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    received = 0
    try:
        with SystemClient.connect(home, timeout=10.0) as client:
            client.request(Method.BUS_SUBSCRIBE, {"pattern": args.pattern}, timeout=10.0)
            while args.count is None or received < args.count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                notification = client.next_notification(remaining)
                if notification is None:
                    break
                if notification.get("method") != Method.BUS_MESSAGES:
                    continue
                envelope = notification.get("params", {}).get("envelope", {})
                for message in envelope.get("messages", []):
                    print(json.dumps(message, ensure_ascii=False), flush=True)
                    received += 1
                    if args.count is not None and received >= args.count:
                        break
                lost = envelope.get("lagged", 0) + envelope.get("dropped", 0)
                if lost:
                    print(
                        f"{PROG}: {lost} message(s) lost: this subscriber fell behind",
                        file=sys.stderr,
                    )
    except ClientError as exc:
        raise CliError(str(exc)) from None
    except RpcError as exc:
        raise CliError(exc.message) from None
    if args.count is not None and received < args.count:
        raise CliError(
            f"timed out after {args.timeout:g} s with {received} of {args.count} messages"
        )
    return 0


def _operator_call(action: Any) -> Any:
    """Run a request to the broker, turning its errors into one line for the operator."""
    from astrid_core.rpc import RpcError
    from supervisor.client import ClientError

    try:
        return action()
    except ClientError as exc:
        raise CliError(str(exc)) from None
    except RpcError as exc:
        raise CliError(exc.message) from None


def cmd_approvals(home: AstridHome, args: argparse.Namespace) -> int:
    from supervisor.operator import list_approvals, render_approvals

    approvals = _operator_call(lambda: list_approvals(home))
    if args.json:
        print(json.dumps({"approvals": approvals}, ensure_ascii=False))
    elif not approvals:
        print("no pending approval requests")
    else:
        print(render_approvals(approvals))
    return 0


def cmd_approve(home: AstridHome, args: argparse.Namespace) -> int:
    from supervisor.operator import APPROVE_DECISIONS, answer_approval

    decision = APPROVE_DECISIONS[args.scope]
    _operator_call(lambda: answer_approval(home, args.request_id, decision, args.reason))
    print(f"approved {args.request_id} ({decision})")
    return 0


def cmd_deny(home: AstridHome, args: argparse.Namespace) -> int:
    from supervisor.operator import answer_approval

    _operator_call(lambda: answer_approval(home, args.request_id, "deny", args.reason))
    print(f"denied {args.request_id}")
    return 0


def cmd_elicit(home: AstridHome, args: argparse.Namespace) -> int:
    from supervisor.operator import answer_elicitations

    answered = _operator_call(
        lambda: answer_elicitations(home, follow=args.follow, timeout=args.timeout)
    )
    if not answered and not args.follow:
        print("no pending elicitations")
    return 0


# --------------------------------------------------------------------------------------------
# restart, stop, start: requests to the supervisor's control socket

DEFAULT_CONTROL_TIMEOUT: Final = 60.0


def _control(home: AstridHome, command: str, capsule: str, timeout: float) -> int:
    from supervisor.control import (
        ControlError,
        ControlTimeoutError,
        NotRunningError,
        send_request,
    )

    try:
        answer = send_request(home, {"command": command, "capsule": capsule}, timeout=timeout)
    except NotRunningError:
        raise CliError(f"astrid-supervisor is not running (home: {home.root()})") from None
    except ControlTimeoutError:
        raise CliError(
            f"no answer within {timeout:g} s; the {command} of {capsule} may still be under way "
            "(see `astrid ps`)"
        ) from None
    except ControlError as exc:
        raise CliError(exc.message) from None
    if not answer["ok"]:
        raise CliError(str(answer.get("error") or f"{command} {capsule}: refused"))
    print(answer.get("message") or f"{command} {capsule}: done")
    return 0


def cmd_restart(home: AstridHome, args: argparse.Namespace) -> int:
    return _control(home, "restart", args.capsule, args.timeout)


def cmd_stop(home: AstridHome, args: argparse.Namespace) -> int:
    return _control(home, "stop", args.capsule, args.timeout)


def cmd_start(home: AstridHome, args: argparse.Namespace) -> int:
    return _control(home, "start", args.capsule, args.timeout)


# --------------------------------------------------------------------------------------------
# Argument parsing


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


_FORMATTER = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_FORMATTER,
        description="Inspect and control a running astrid tree (supervisor, broker, workers).",
        epilog=(
            "examples:\n"
            "  astrid ps                          show every process of the tree\n"
            "  astrid kill counter --signal KILL  kill the worker of capsule 'counter'\n"
            "  astrid restart counter             restart it (also when FATAL)\n"
            '  astrid call echo say \'{"text": "hi"}\'\n'
            "\n"
            "The home is --home, else $ASTRID_HOME, else ~/.astrid."
        ),
    )
    home_help = "the astrid home of the tree (default: $ASTRID_HOME, else ~/.astrid)"
    parser.add_argument("--home", metavar="DIR", type=Path, help=home_help)
    # Also accepted after the command (``astrid ps --home DIR``); SUPPRESS keeps a --home given
    # before the command from being overwritten by the subcommand's default.
    home_after = argparse.ArgumentParser(add_help=False)
    home_after.add_argument(
        "--home", metavar="DIR", type=Path, default=argparse.SUPPRESS, help=home_help
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ps = commands.add_parser(
        "ps",
        parents=[home_after],
        help="list the supervisor, the broker, the capsule workers and their host processes",
        formatter_class=_FORMATTER,
        description=(
            "List every process of the tree with its state, restarts, uptime, resident memory,\n"
            "CPU time (cumulative user+system) and lifetime average %CPU, and the reason of its\n"
            "last exit. The host processes a capsule spawned are listed under it (role host).\n"
            "Works from the supervisor's status file and psutil alone: the broker\n"
            "does not need to be up. Exits with status 1 when the supervisor is not running."
        ),
        epilog=(
            "examples:\n"
            "  astrid ps\n"
            "  astrid ps --tree\n"
            "  astrid ps --json | jq '.processes[] | .name'"
        ),
    )
    ps_format = ps.add_mutually_exclusive_group()
    ps_format.add_argument(
        "--json", action="store_true", help="print a JSON document instead of a table"
    )
    ps_format.add_argument(
        "--tree",
        action="store_true",
        help="draw the tree: supervisor, broker and workers, host processes under their capsule",
    )
    ps.set_defaults(handler=cmd_ps)

    kill = commands.add_parser(
        "kill",
        parents=[home_after],
        help="send a signal to a worker, the broker or the supervisor",
        formatter_class=_FORMATTER,
        description=(
            "Send a signal to a member of the tree: TARGET is a capsule name (its worker) or the\n"
            "pid of the supervisor, the broker, a worker or a host process as shown by\n"
            "`astrid ps`. Any other pid is refused. A killed worker is restarted by the\n"
            "supervisor under its policy."
        ),
        epilog=(
            "examples:\n"
            "  astrid kill counter                 SIGTERM to the worker of 'counter'\n"
            "  astrid kill counter --signal KILL   SIGKILL (also: SIGKILL, kill, 9)\n"
            "  astrid kill 12345 --signal HUP      a pid listed by `astrid ps`"
        ),
    )
    kill.add_argument("target", metavar="TARGET", help="a capsule name or a pid of the tree")
    kill.add_argument(
        "--signal",
        "-s",
        metavar="SIG",
        type=parse_signal,
        default=signal.SIGTERM,
        help="signal name or number (default: TERM)",
    )
    kill.set_defaults(handler=cmd_kill)

    from supervisor.logs import DEFAULT_LINES, non_negative_int, parse_since

    logs = commands.add_parser(
        "logs",
        parents=[home_after],
        help="print the log of a capsule, the broker or the supervisor",
        formatter_class=_FORMATTER,
        description=(
            "Print the last records of logs/CAPSULE.log: the capsule's astrid_log records and its\n"
            "worker's stdout/stderr, one line each (time, level, capsule[generation], message),\n"
            "read across the rotated files (CAPSULE.log.1 ...). CAPSULE may also be `broker` or\n"
            "`supervisor`. --previous shows the generation before the current one (the worker\n"
            "that crashed) of the supervisor's current or last run. -f keeps printing what is\n"
            "appended, across rotations, until Ctrl-C."
        ),
        epilog=(
            "examples:\n"
            "  astrid logs counter                 the last 100 records\n"
            "  astrid logs counter -f -n 10        the last 10, then follow\n"
            "  astrid logs counter --previous      the crashed worker's last records\n"
            "  astrid logs broker --since 10m      the broker's records of the last 10 minutes"
        ),
    )
    logs.add_argument("capsule", metavar="CAPSULE", help="a capsule name, broker or supervisor")
    logs.add_argument("-f", "--follow", action="store_true", help="print new records as they come")
    logs.add_argument(
        "-n",
        "--lines",
        metavar="N",
        type=non_negative_int,
        default=DEFAULT_LINES,
        help=f"print the last N records, 0 for all (default: {DEFAULT_LINES})",
    )
    logs.add_argument(
        "--previous",
        "-p",
        action="store_true",
        help="the records of the generation before the current one",
    )
    logs.add_argument(
        "--since",
        metavar="TIME",
        type=parse_since,
        help="only records from TIME on: 30s, 10m, 2h, 1d ago or an ISO time (local unless Z)",
    )
    logs.set_defaults(handler=cmd_logs, parser=logs)

    call = commands.add_parser(
        "call",
        parents=[home_after],
        help="call a tool of a capsule through the broker",
        formatter_class=_FORMATTER,
        description=(
            "Invoke TOOL of CAPSULE with the JSON arguments and print the tool's output.\n"
            "Needs a running broker (sessions/system.sock). A trap in the capsule is reported\n"
            "on stderr with exit status 1."
        ),
        epilog=(
            "examples:\n"
            '  astrid call echo say \'{"text": "hello"}\'\n'
            "  astrid call counter increment --timeout 5"
        ),
    )
    call.add_argument("capsule", metavar="CAPSULE", help="the capsule that provides the tool")
    call.add_argument("tool", metavar="TOOL", help="the tool's name")
    call.add_argument(
        "arguments",
        metavar="JSON",
        nargs="?",
        default="{}",
        help="the tool's arguments as a JSON value (default: {})",
    )
    call.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=DEFAULT_CALL_TIMEOUT,
        help=f"seconds to wait for the answer (default: {DEFAULT_CALL_TIMEOUT:g})",
    )
    call.set_defaults(handler=cmd_call, parser=call)

    pub = commands.add_parser(
        "pub",
        parents=[home_after],
        help="publish a message on the IPC bus",
        formatter_class=_FORMATTER,
        description=(
            "Publish JSON on TOPIC as the operator. The payload is classified like a capsule's\n"
            "(a known `type` tag such as user_input stays that variant, anything else becomes\n"
            "custom data). Subscribers whose pattern matches TOPIC receive it."
        ),
        epilog=(
            "examples:\n"
            '  astrid pub demo.greeting \'{"hello": "world"}\'\n'
            '  astrid pub user.v1.prompt \'{"type": "user_input", "text": "hi"}\''
        ),
    )
    pub.add_argument("topic", metavar="TOPIC", help="dot-separated topic, e.g. demo.greeting")
    pub.add_argument("payload", metavar="JSON", help="the payload, any JSON value")
    pub.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=10.0,
        help="seconds to wait for the broker (default: 10)",
    )
    pub.set_defaults(handler=cmd_pub, parser=pub)

    sub = commands.add_parser(
        "sub",
        parents=[home_after],
        help="print messages published on the IPC bus",
        formatter_class=_FORMATTER,
        description=(
            "Subscribe to PATTERN and print every message as one JSON line (topic, payload,\n"
            "source_id, timestamp). `*` matches one segment; a trailing `*` matches one or more.\n"
            "Stops after --count messages or --timeout seconds (exit 1 if --count was not\n"
            "reached), or on Ctrl-C. Lost messages (a slow subscriber) are reported on stderr."
        ),
        epilog=(
            "examples:\n"
            "  astrid sub 'demo.*'\n"
            "  astrid sub 'tool.v1.execute.*' --count 1 --timeout 30"
        ),
    )
    sub.add_argument("pattern", metavar="PATTERN", help="topic pattern, e.g. demo.*")
    sub.add_argument("--count", "-n", metavar="N", type=_positive_int, help="stop after N messages")
    sub.add_argument("--timeout", metavar="S", type=_positive_float, help="stop after S seconds")
    sub.set_defaults(handler=cmd_sub, parser=sub)

    approvals = commands.add_parser(
        "approvals",
        parents=[home_after],
        help="list the approval requests capsules are waiting on",
        formatter_class=_FORMATTER,
        description=(
            "List pending astrid_request_approval requests: id, capsule, risk level, age,\n"
            "action and resource. A request that gets no answer within 60 s is denied."
        ),
        epilog="examples:\n  astrid approvals\n  astrid approvals --json",
    )
    approvals.add_argument("--json", action="store_true", help="print a JSON document")
    approvals.set_defaults(handler=cmd_approvals)

    approve = commands.add_parser(
        "approve",
        parents=[home_after],
        help="approve a pending request",
        formatter_class=_FORMATTER,
        description=(
            "Approve request ID once, for the rest of the broker's run (--session), or always\n"
            "(--always, kept in state.db). The last two let the same capsule's later requests\n"
            "for that action through without asking."
        ),
        epilog=(
            "examples:\n"
            "  astrid approve 4f6c...\n"
            "  astrid approve 4f6c... --always --reason 'trusted deploy'"
        ),
    )
    approve.add_argument("request_id", metavar="ID", help="the request id from `astrid approvals`")
    scope = approve.add_mutually_exclusive_group()
    scope.add_argument(
        "--session",
        dest="scope",
        action="store_const",
        const="session",
        help="also approve this action for the capsule until the broker stops",
    )
    scope.add_argument(
        "--always",
        dest="scope",
        action="store_const",
        const="always",
        help="also approve this action for the capsule from now on",
    )
    approve.add_argument("--reason", metavar="TEXT", help="a note passed to the capsule")
    approve.set_defaults(handler=cmd_approve, scope="once")

    deny = commands.add_parser(
        "deny",
        parents=[home_after],
        help="deny a pending request",
        formatter_class=_FORMATTER,
        description="Deny approval request ID.",
        epilog="examples:\n  astrid deny 4f6c... --reason 'not now'",
    )
    deny.add_argument("request_id", metavar="ID", help="the request id from `astrid approvals`")
    deny.add_argument("--reason", metavar="TEXT", help="a note passed to the capsule")
    deny.set_defaults(handler=cmd_deny)

    elicit = commands.add_parser(
        "elicit",
        parents=[home_after],
        help="answer the questions of capsules' install and upgrade hooks",
        formatter_class=_FORMATTER,
        description=(
            "Prompt for every value a capsule's install or upgrade hook is waiting on (secret\n"
            "input is not echoed; choices are numbered; lists end with an empty line; an empty\n"
            "answer takes the default; end of input cancels). With --follow, keep answering\n"
            "new requests until --timeout or Ctrl-C."
        ),
        epilog="examples:\n  astrid elicit\n  astrid elicit --follow --timeout 300",
    )
    elicit.add_argument("--follow", action="store_true", help="keep waiting for new requests")
    elicit.add_argument(
        "--timeout", metavar="S", type=_positive_float, help="with --follow: stop after S seconds"
    )
    elicit.set_defaults(handler=cmd_elicit)

    control_timeout_help = (
        f"seconds to wait for the supervisor's answer (default: {DEFAULT_CONTROL_TIMEOUT:g})"
    )
    control_commands = (
        (
            "restart",
            cmd_restart,
            "restart a capsule's worker (also a FATAL one)",
            "Stop the worker of CAPSULE (SIGTERM to its process group, SIGKILL after the grace\n"
            "period) and start it again at once, whatever its state: a FATAL or STOPPED capsule\n"
            "starts too, and its restart history is forgotten. Waits until the new worker is\n"
            "READY; exit status 1 if it fails first. Needs the running supervisor.",
            "examples:\n  astrid restart counter\n  astrid restart counter --timeout 120",
        ),
        (
            "stop",
            cmd_stop,
            "stop a capsule's worker and keep it stopped",
            "Stop the worker of CAPSULE (SIGTERM to its process group, SIGKILL after the grace\n"
            "period) and keep it STOPPED: it is not restarted until `astrid start` or\n"
            "`astrid restart`. Capsules that depend on it keep running. Waits until the worker\n"
            "has exited.",
            "examples:\n  astrid stop counter",
        ),
        (
            "start",
            cmd_start,
            "start a STOPPED or FATAL capsule",
            "Start the worker of a STOPPED or FATAL capsule (or of one waiting in BACKOFF) now,\n"
            "with its restart history forgotten. Waits until it is READY; exit status 1 if it\n"
            "fails first. A capsule that is already running is left alone (exit status 0).",
            "examples:\n  astrid start counter",
        ),
    )
    for name, handler, summary, description, epilog in control_commands:
        command = commands.add_parser(
            name,
            parents=[home_after],
            help=summary,
            formatter_class=_FORMATTER,
            description=description,
            epilog=epilog,
        )
        command.add_argument("capsule", metavar="CAPSULE", help="the capsule's name")
        command.add_argument(
            "--timeout",
            metavar="S",
            type=_positive_float,
            default=DEFAULT_CONTROL_TIMEOUT,
            help=control_timeout_help,
        )
        command.set_defaults(handler=handler)
    return parser


def resolve_home(home_arg: Path | None) -> AstridHome:
    if home_arg is not None:
        return AstridHome.from_path(home_arg.absolute())
    try:
        return AstridHome.resolve()
    except HomeResolutionError as exc:
        raise CliError(f"cannot find the astrid home: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "call":
        try:
            args.arguments = json.loads(args.arguments)
        except ValueError as exc:
            args.parser.error(f"invalid JSON arguments: {exc}")
    if args.command == "pub":
        try:
            args.payload = json.loads(args.payload)
        except ValueError as exc:
            args.parser.error(f"invalid JSON payload: {exc}")
    try:
        home = resolve_home(args.home)
        code: int = args.handler(home, args)
    except CliError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``astrid ps | head``): no traceback at interpreter exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
