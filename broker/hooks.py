"""Interceptors and hooks: bus events and ``astrid_trigger_hook`` delivered to capsules.

* Bus events reach the ``[[interceptor]]`` actions of connected non-run-loop capsules through their
  ``astrid_hook_trigger`` export, fire-and-forget, with at most :data:`MAX_INTERCEPTORS_IN_FLIGHT`
  invocations outstanding per capsule; beyond that an event is dropped for that capsule and
  counted (a bounded backlog instead of an unbounded one). Run-loop capsules receive the same
  events through their auto-subscribed interceptor handles instead (see ``capsule_ipc``).
* ``astrid_trigger_hook`` fans a hook out synchronously to every *other* such capsule and
  collects the JSON answers in completion order (syscalls.md §2.9).

One matching rule everywhere (DESIGN §6.12): an interceptor's ``event`` matches a topic or hook
name by bus matching (``*`` is one segment, a trailing ``*`` one or more).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from astrid_core.capsule_abi import GuestInvocation
from astrid_core.serde import dumps, loads
from astrid_core.topics import bus_matches
from broker.bus import BusMessage
from broker.ipc_payload import guest_value
from broker.kernel import Kernel
from broker.sessions import CapsuleSession, InvocationFailed

log = logging.getLogger("astrid.broker")

HOOK_EXPORT = "astrid_hook_trigger"
#: Interceptor invocations queued or running per capsule.
MAX_INTERCEPTORS_IN_FLIGHT = 4
#: How long ``astrid_trigger_hook`` waits for one capsule's answer. Invocations of a capsule are
#: serialized, so two capsules triggering each other's hooks would otherwise wait forever.
HOOK_TIMEOUT_S = 15.0


def matching_actions(session: CapsuleSession, topic: str) -> Iterator[str]:
    """The interceptor actions of ``session`` whose event matches ``topic``."""
    for interceptor in session.manifest.interceptors:
        if bus_matches(topic, interceptor.event):
            yield interceptor.action


def _invocable(session: CapsuleSession) -> bool:
    return not session.closed and not session.info.has_run


def intercepted(kernel: Kernel, topic: str) -> bool:
    """Whether a bus event on ``topic`` reaches an interceptor of some non-run-loop capsule."""
    return any(
        _invocable(session) and next(matching_actions(session, topic), None) is not None
        for session in kernel.sessions
    )


class InterceptorDispatcher:
    """Delivers every bus event to the matching interceptors of non-run-loop capsules."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._in_flight: dict[CapsuleSession, int] = {}
        self.dropped: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        kernel.bus.add_listener(self.on_message)

    def on_message(self, message: BusMessage) -> None:
        arguments: bytes | None = None
        for session in self.kernel.sessions:
            if not _invocable(session) or not session.manifest.interceptors:
                continue
            for action in matching_actions(session, message.topic):
                if arguments is None:
                    arguments = dumps(guest_value(message.payload)).encode()
                self._dispatch(session, action, arguments)

    def _dispatch(self, session: CapsuleSession, action: str, arguments: bytes) -> None:
        in_flight = self._in_flight.get(session, 0)
        if in_flight >= MAX_INTERCEPTORS_IN_FLIGHT:
            count = self.dropped[session.name] = self.dropped.get(session.name, 0) + 1
            if count == 1 or count % 1000 == 0:
                log.warning(
                    "capsule '%s' is behind on interceptor events: %d dropped", session.name, count
                )
            return
        self._in_flight[session] = in_flight + 1
        data = GuestInvocation(action, arguments).encode()
        task = asyncio.ensure_future(self._run(session, action, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: CapsuleSession, action: str, data: bytes) -> None:
        try:
            await self.kernel.invoke(session, HOOK_EXPORT, data, {})
        except InvocationFailed as exc:
            log.info("interceptor %s of capsule '%s' failed: %s", action, session.name, exc.text)
        finally:
            remaining = self._in_flight.get(session, 1) - 1
            if remaining > 0:
                self._in_flight[session] = remaining
            else:
                self._in_flight.pop(session, None)


async def trigger(kernel: Kernel, caller: CapsuleSession, hook: str, payload: Any) -> list[Any]:
    """Fan ``hook`` out to every other capsule that intercepts it; JSON answers as they come."""
    arguments = dumps(payload).encode()
    pending: list[asyncio.Task[bytes]] = []
    for session in kernel.sessions:
        if session is caller or not _invocable(session):
            continue
        for action in matching_actions(session, hook):
            data = GuestInvocation(action, arguments).encode()
            invocation = kernel.invoke(session, HOOK_EXPORT, data, caller.caller)
            pending.append(asyncio.ensure_future(asyncio.wait_for(invocation, HOOK_TIMEOUT_S)))
    answers: list[Any] = []
    for finished in asyncio.as_completed(pending):
        try:
            output = await finished
        except (InvocationFailed, TimeoutError) as exc:
            log.info("hook %s: a capsule did not answer: %s", hook, exc)
            continue
        if not output:
            continue
        try:
            answers.append(loads(output))
        except ValueError:  # SerdeError, or an integer too long for int()
            log.info("hook %s: dropping a non-JSON answer", hook)
    return answers
