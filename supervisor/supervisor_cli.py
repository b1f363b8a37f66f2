"""``astrid-supervisor``: ``astrid-supervisor up`` runs the process tree in the foreground."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from astrid_core.dirs import AstridHome, HomeResolutionError, WorkspaceDir
from supervisor.tree import DEFAULT_GRACE, Supervisor, SupervisorError

__all__ = ["build_parser", "main"]

PROG: Final = "astrid-supervisor"


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text!r}")
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
        epilog="examples:\n  astrid-supervisor up\n  astrid-supervisor up --home /srv/astrid",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = commands.add_parser(
        "up",
        help="start the broker and every capsule, and supervise them in the foreground",
        formatter_class=formatter,
        description=(
            "Discover the capsules of the workspace (.astrid/capsules) and of the home\n"
            "(capsules/), start the broker, then one worker per capsule in dependency order.\n"
            "Workers that exit are restarted with exponential backoff; one that keeps failing\n"
            "becomes FATAL (see `astrid ps`). Logs go to stderr and to <home>/logs/: the\n"
            "supervisor's to supervisor.log, each capsule's output to <capsule>.log.\n"
            "\n"
            "SIGINT, SIGTERM or SIGHUP stop the capsules (dependents first), then the broker,\n"
            "each within the grace period before SIGKILL; a second SIGINT kills at once."
        ),
        epilog=(
            "examples:\n"
            "  astrid-supervisor up\n"
            "  astrid-supervisor up --home /srv/astrid --workspace /srv/project --grace 10\n"
            "  ASTRID_HOME=/tmp/astrid astrid-supervisor up"
        ),
    )
    up.add_argument(
        "--home",
        metavar="DIR",
        type=Path,
        help="the astrid home (overrides $ASTRID_HOME; default: ~/.astrid)",
    )
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
        "--grace",
        metavar="SECONDS",
        type=_grace,
        default=DEFAULT_GRACE,
        help=f"how long a process may take to exit after SIGTERM (default: {DEFAULT_GRACE:g})",
    )
    return parser


def _resolve_home(home_arg: Path | None) -> AstridHome:
    if home_arg is not None:
        root = home_arg.absolute()
        # Children (and anything resolving the home from the environment) see the same home.
        os.environ["ASTRID_HOME"] = str(root)
        return AstridHome.from_path(root)
    return AstridHome.resolve()


def cmd_up(args: argparse.Namespace) -> int:
    try:
        home = _resolve_home(args.home)
    except HomeResolutionError as exc:
        raise SupervisorError(f"cannot find the astrid home: {exc}") from None
    if args.workspace is not None:
        workspace = args.workspace.absolute()
        if not workspace.is_dir():
            raise SupervisorError(f"the workspace {workspace} is not a directory")
    else:
        workspace = WorkspaceDir.detect(Path.cwd()).root()
    return Supervisor(home, workspace, grace=args.grace).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_up(args)
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
