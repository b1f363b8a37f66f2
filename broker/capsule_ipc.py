"""A capsule's side of the bus: its subscriptions, interceptor handles and publish rate window."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from broker.bus import Subscription
from broker.sessions import CapsuleSession, SessionExtension

#: Live subscriptions per capsule, interceptor handles included.
MAX_SUBSCRIPTIONS = 128
#: Auto-subscribed interceptors of a run-loop capsule.
MAX_AUTO_INTERCEPTORS = 64
#: Largest single publish, and bytes per capsule per one-second window.
MAX_PUBLISH_BYTES = 5 * 1024 * 1024
MAX_PUBLISH_BYTES_PER_SECOND = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class InterceptorHandle:
    handle_id: int
    action: str
    topic: str

    def to_json(self) -> dict[str, Any]:
        return {"handle_id": self.handle_id, "action": self.action, "topic": self.topic}


class TooManyInterceptors(Exception):
    pass


class CapsuleIpc(SessionExtension):
    def __init__(self, session: CapsuleSession) -> None:
        super().__init__(session)
        self.subscriptions: dict[int, Subscription] = {}
        self.interceptor_handles: list[InterceptorHandle] = []
        self._next_handle = 1
        self._window_start = 0.0
        self._window_bytes = 0

    def charge(self, size: int) -> str | None:
        """The rate limiter (checked with the payload length only); the error text or None.

        Bytes are charged even if a later check rejects the publish, as in the reference.
        """
        if size > MAX_PUBLISH_BYTES:
            return "Payload too large"
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_bytes = 0
        if self._window_bytes + size > MAX_PUBLISH_BYTES_PER_SECOND:
            return "Rate limit exceeded"
        self._window_bytes += size
        return None

    def subscribe(self, pattern: str) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self.subscriptions[handle] = self.session.kernel.bus.subscribe(pattern)
        return handle

    def subscribe_interceptors(self) -> None:
        """Auto-subscribe a run-loop capsule's ``[[interceptor]]`` events (handles 1..N)."""
        interceptors = self.session.manifest.interceptors
        if len(interceptors) > MAX_AUTO_INTERCEPTORS:
            raise TooManyInterceptors(
                f"Capsule '{self.session.name}' declares {len(interceptors)} interceptors, "
                f"exceeding the auto-subscribe limit ({MAX_AUTO_INTERCEPTORS})"
            )
        for interceptor in interceptors:
            handle = self.subscribe(interceptor.event)
            self.interceptor_handles.append(
                InterceptorHandle(handle, interceptor.action, interceptor.event)
            )

    def is_interceptor_handle(self, handle: int) -> bool:
        return any(h.handle_id == handle for h in self.interceptor_handles)

    def close(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.close()
        self.subscriptions.clear()
