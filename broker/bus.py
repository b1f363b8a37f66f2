"""The IPC bus: topics, subscriptions, bounded queues (syscalls.md §3).

Every message is serialized once (its ``IpcMessage`` JSON, cached) and shared by every
subscription it reaches. Each subscription is a bounded queue: when a subscriber falls more than
:data:`QUEUE_CAPACITY` messages behind, the oldest are discarded and counted, and the count is
reported (then reset) as ``lagged`` by the next poll or recv. Unlike the reference's single
broadcast ring, a subscriber only lags behind the traffic that matches it.

Delivery uses bus matching (``astrid_core.topics.bus_matches``); publishing never blocks and never
fails for lack of receivers; order is the global publish order, kept per subscription.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from astrid_core.serde import dumps, format_datetime, utc_now
from astrid_core.topics import MAX_BUS_TOPIC_SEGMENTS, bus_matches

#: Messages a subscription holds before it starts losing the oldest (the reference's bus size).
QUEUE_CAPACITY = 1024
#: Most payload bytes one poll or recv returns (MAX_GUEST_PAYLOAD_LEN).
DRAIN_BUDGET = 10 * 1024 * 1024


@dataclass(eq=False, slots=True)
class BusMessage:
    """An ``IpcMessage``: topic, tagged payload, kernel-stamped source and time."""

    topic: str
    payload: dict[str, Any]
    source_id: uuid.UUID
    timestamp: datetime = field(default_factory=utc_now)
    _json: str | None = None
    _payload_json: str | None = None

    @property
    def payload_json(self) -> str:
        if self._payload_json is None:
            self._payload_json = dumps(self.payload)
        return self._payload_json

    @property
    def payload_size(self) -> int:
        """The size of the serialized payload (what the drain budget counts)."""
        return len(self.payload_json.encode())

    def json(self) -> str:
        """``{"topic","payload","signature","source_id","timestamp"}``, serialized once."""
        if self._json is None:
            self._json = (
                f'{{"topic":{dumps(self.topic)},"payload":{self.payload_json},'
                f'"signature":null,"source_id":"{self.source_id}",'
                f'"timestamp":"{format_datetime(self.timestamp)}"}}'
            )
        return self._json

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "payload": self.payload,
            "signature": None,
            "source_id": str(self.source_id),
            "timestamp": format_datetime(self.timestamp),
        }


@dataclass(frozen=True, slots=True)
class Drained:
    messages: list[BusMessage]
    dropped: int
    lagged: int

    def envelope(self) -> bytes:
        """``{"messages":[...],"dropped":n,"lagged":n}`` (syscalls.md §3.3)."""
        body = ",".join(message.json() for message in self.messages)
        return f'{{"messages":[{body}],"dropped":{self.dropped},"lagged":{self.lagged}}}'.encode()


class Subscription:
    """One subscriber's cursor on the bus: a bounded queue of matching messages."""

    __slots__ = ("_bus", "_waiter", "capacity", "closed", "lagged", "pattern", "queue")

    def __init__(self, bus: Bus, pattern: str, capacity: int = QUEUE_CAPACITY) -> None:
        self._bus = bus
        self.pattern = pattern
        self.capacity = capacity
        self.queue: deque[BusMessage] = deque()
        self.lagged = 0
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, message: BusMessage) -> None:
        if len(self.queue) >= self.capacity:
            self.queue.popleft()
            self.lagged += 1
        self.queue.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self, budget: int = DRAIN_BUDGET, first: BusMessage | None = None) -> Drained:
        """Take pending messages in order while their payloads fit in ``budget`` bytes.

        The first message that would exceed the budget is consumed and discarded
        (``dropped = 1``) and draining stops. ``first`` (the message that woke a recv) is
        prepended and not counted against the budget.
        """
        messages = [first] if first is not None else []
        dropped = 0
        used = 0
        queue = self.queue
        while queue:
            size = queue[0].payload_size
            if used + size > budget:
                queue.popleft()
                dropped = 1
                break
            used += size
            messages.append(queue.popleft())
        lagged, self.lagged = self.lagged, 0
        return Drained(messages, dropped, lagged)

    async def wait(self, timeout: float) -> BusMessage | None:
        """The next message, waiting up to ``timeout`` seconds; None on timeout or close."""
        if self.queue:
            return self.queue.popleft()
        if timeout <= 0 or self.closed:
            return None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            return None
        finally:
            self._waiter = None
        return self.queue.popleft() if self.queue else None

    def close(self) -> None:
        """Leave the bus; a pending wait returns at once."""
        if self.closed:
            return
        self.closed = True
        self._bus.remove(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


Listener = Callable[[BusMessage], None]


class Bus:
    """The kernel-wide bus. Exact patterns are indexed by topic; wildcard patterns are scanned."""

    def __init__(self) -> None:
        self._exact: dict[str, list[Subscription]] = {}
        self._wildcard: list[Subscription] = []
        self._listeners: list[Listener] = []

    def subscribe(self, pattern: str, capacity: int = QUEUE_CAPACITY) -> Subscription:
        subscription = Subscription(self, pattern, capacity)
        if "*" in pattern.split("."):
            self._wildcard.append(subscription)
        else:
            self._exact.setdefault(pattern, []).append(subscription)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        pattern = subscription.pattern
        if "*" in pattern.split("."):
            if subscription in self._wildcard:
                self._wildcard.remove(subscription)
            return
        subscribers = self._exact.get(pattern)
        if subscribers is not None and subscription in subscribers:
            subscribers.remove(subscription)
            if not subscribers:
                del self._exact[pattern]

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` for every message published (kernel-side consumers)."""
        self._listeners.append(listener)

    def publish(self, message: BusMessage) -> int:
        """Deliver to every matching subscription; returns how many it reached."""
        topic = message.topic
        reached = 0
        # Bus matching never matches a topic deeper than MAX_BUS_TOPIC_SEGMENTS, exact or not.
        if topic.count(".") >= MAX_BUS_TOPIC_SEGMENTS:
            for listener in self._listeners:
                listener(message)
            return 0
        for subscription in self._exact.get(topic, ()):
            subscription.deliver(message)
            reached += 1
        if self._wildcard:
            for subscription in self._wildcard:
                if bus_matches(topic, subscription.pattern):
                    subscription.deliver(message)
                    reached += 1
        for listener in self._listeners:
            listener(message)
        return reached

    def __len__(self) -> int:
        return len(self._wildcard) + sum(len(s) for s in self._exact.values())
