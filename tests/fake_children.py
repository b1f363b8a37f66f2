"""Stand-ins for the broker and worker entry points, to exercise supervision with real processes.

``broker`` reports READY and idles. ``worker`` behaves according to its capsule's name:

* ``good-*``: prints a few diagnostics, reports READY, idles;
* ``crash-*``: exits with code 1 after 50 ms;
* ``fatal-*``: reports a fatal FAILED and exits with ExitCode.CONFIG;
* ``slow-*``: reports LOADED (has_run) but never READY;
* ``stubborn-*``: like ``good-*`` but ignores SIGTERM (the supervisor must SIGKILL it);
* ``child-*``: like ``good-*`` but also starts a ``sleep`` child in the worker's process group,
  which must die with the group.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from typing import NoReturn

from astrid_core.launch import BrokerLaunch, Event, ExitCode, StatusEvent, WorkerLaunch


def _report(fd: int, event: StatusEvent) -> None:
    os.write(fd, event.encode())


def _idle() -> NoReturn:
    while True:
        time.sleep(3600)


def _leaked_fds() -> list[int]:
    leaked = []
    for fd in range(4, 256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        leaked.append(fd)
    return leaked


def _master_key_state() -> str:
    """Whether the supervisor's master key, inherited with its memory, was wiped in this child."""
    tree = sys.modules.get("supervisor.tree")
    if tree is None:
        return "no supervisor"
    keys = [obj._master_key for obj in gc.get_objects() if isinstance(obj, tree.Supervisor)]
    if not keys:
        return "no supervisor"
    return "zeroed" if all(len(key) == 32 and not any(key) for key in keys) else "NOT zeroed"


def broker(launch: BrokerLaunch) -> NoReturn:
    print(f"fake broker up (endpoint {launch.endpoint}, key {len(launch.master_key)} bytes)")
    print(f"master key: {_master_key_state()}")
    print("fake broker stderr line", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get("FAKE_BROKER_FAIL"):
        _report(launch.status_fd, StatusEvent(Event.FAILED, "cannot bind: test", fatal=True))
        os._exit(ExitCode.CONFIG)
    _report(launch.status_fd, StatusEvent(Event.READY))
    _idle()


def worker(launch: WorkerLaunch) -> NoReturn:
    name = launch.capsule
    fd = launch.status_fd
    if name.startswith(("good-", "stubborn-", "child-")):
        print(f"hello from {name} generation {launch.generation}")
        print(f"leaked fds: {_leaked_fds()}")
        print(f"cache config: {os.environ.get('EXTISM_CACHE_CONFIG')}")
        print(f"pgid is pid: {os.getpgid(0) == os.getpid()}")
        print(f"master key: {_master_key_state()}")
        print(f"{name} stderr", file=sys.stderr)
        sys.stdout.write("partial line without newline")
        sys.stdout.flush()
        sys.stderr.flush()
        if name.startswith("stubborn-"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if name.startswith("child-"):
            subprocess.Popen(["sleep", "3600"])  # stays in the worker's process group
        _report(fd, StatusEvent(Event.READY))
        _idle()
    if name.startswith("crash-"):
        time.sleep(0.05)
        print(f"{name} crashing", file=sys.stderr)
        _report(fd, StatusEvent(Event.STOPPING, "trap: unreachable"))
        sys.exit(ExitCode.TRAP)
    if name.startswith("fatal-"):
        _report(fd, StatusEvent(Event.FAILED, "invalid manifest: test", fatal=True))
        os._exit(ExitCode.CONFIG)
    if name.startswith("slow-"):
        _report(fd, StatusEvent(Event.LOADED, has_run=True))
        _idle()
    print(f"fake worker: no behaviour for {name!r}", file=sys.stderr)
    sys.exit(ExitCode.CONFIG)
