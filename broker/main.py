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
from broker.cron import CronScheduler
from broker.hooks import InterceptorDispatcher
from broker.identity_store import IdentityStore
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.router import WorkerRouter
from broker.tools import ToolRequests

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
    kernel.service(IdentityStore)  # the root user and its cli/local link (kernel.md §3.2 step 10)
    loop = asyncio.get_running_loop()
    router = WorkerRouter(kernel, launch.endpoint)
    kernel.invoker = router
    InterceptorDispatcher(kernel)
    ToolRequests(kernel)
    router.start(loop)
    cron = kernel.service(CronScheduler)
    cron.start()
    clients = ClientServer(kernel)
    try:
        await clients.start()
    except (SocketUnavailable, OSError) as exc:
        await cron.aclose()
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
    await cron.aclose()
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
