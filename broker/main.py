"""Broker process entry point (``astrid_core.launch.BROKER_ENTRY``).

Owns ``state.db``, the worker ROUTER socket and ``sessions/system.sock``. Reports READY on its
status pipe once both sockets are bound; stops cleanly on SIGTERM/SIGINT (sockets, token and
readiness files removed, the database checkpointed and closed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

from setproctitle import setproctitle

from astrid_core.dirs import AstridHome
from astrid_core.launch import BrokerLaunch, Event, ExitCode, StatusEvent
from broker.clients import ClientServer, SocketUnavailable
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.router import WorkerRouter

log = logging.getLogger("astrid.broker")


def _report(fd: int, event: StatusEvent) -> None:
    try:
        os.write(fd, event.encode())
    except OSError:
        pass


async def serve(launch: BrokerLaunch) -> int:
    home = AstridHome.from_path(Path(launch.home))
    home.ensure()
    kernel = Kernel(home, Path(launch.workspace), KvStore(home.state_db_path()), launch.master_key)
    loop = asyncio.get_running_loop()
    router = WorkerRouter(kernel, launch.endpoint)
    router.start(loop)
    clients = ClientServer(kernel, router)
    try:
        await clients.start()
    except (SocketUnavailable, OSError) as exc:
        router.close()
        kernel.close()
        _report(launch.status_fd, StatusEvent(Event.FAILED, str(exc), fatal=True))
        log.error("%s", exc)
        return int(ExitCode.CONFIG)

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    _report(launch.status_fd, StatusEvent(Event.READY))
    log.info("broker ready (pid %d, workers at %s)", os.getpid(), launch.endpoint)
    await stop.wait()

    log.info("broker stopping")
    await clients.close()
    router.close()
    kernel.close()
    return int(ExitCode.OK)


def run(launch: BrokerLaunch) -> NoReturn:
    setproctitle("astrid-broker")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code = asyncio.run(serve(launch))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
