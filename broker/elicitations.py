"""Elicitation: a capsule's install/upgrade hook asks the operator for a value (§2.10).

The request is published on ``astrid.v1.elicit`` (``elicit_request``) and answered on
``astrid.v1.elicit.response.<request_id>`` (``elicit_response``) within 120 s, by ``astrid elicit``
(which prompts, hiding secret input) or any client on the bus. Secrets go to the encrypted
secret store and never back to the guest.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from broker.bus import BusMessage
from broker.errors import SyscallError
from broker.kernel import Kernel, KernelService
from broker.secrets import SecretError, SecretStore
from broker.sessions import CapsuleSession

REQUEST_TOPIC = "astrid.v1.elicit"
RESPONSE_TOPIC = "astrid.v1.elicit.response"
TIMEOUT_S = 120.0
#: Shortens the wait (in ms, never beyond 120 s), for tests (like ``ASTRID_APPROVAL_TIMEOUT_MS``).
TIMEOUT_ENV = "ASTRID_ELICIT_TIMEOUT_MS"
_NIL = uuid.UUID(int=0)


def timeout_s() -> float:
    """How long a request waits for its answer: 120 s, or less if ``TIMEOUT_ENV`` says so."""
    try:
        configured = int(os.environ.get(TIMEOUT_ENV, "")) / 1000
    except ValueError:
        return TIMEOUT_S
    return min(max(configured, 0.0), TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class ElicitField:
    """What the guest asked for (``{"type","key","description"?,"options"?,"default"?}``)."""

    kind: str  # text | secret | select | array
    key: str
    description: str | None
    options: tuple[str, ...]
    default: str | None

    def to_json(self) -> dict[str, Any]:
        """The ``field`` of an ``elicit_request``: the onboarding field schema."""
        field_type: Any = {
            "text": "Text",
            "secret": "Secret",
            "array": "Array",
            "select": {"Enum": list(self.options)},
        }[self.kind]
        # The prompt is the description when there is one (even an empty one), else the key.
        prompt = self.key if self.description is None else self.description
        data: dict[str, Any] = {"key": self.key, "prompt": prompt}
        if self.description is not None:
            data["description"] = self.description
        data["field_type"] = field_type
        if self.default is not None:
            data["default"] = self.default
        return data


@dataclass(eq=False)
class PendingElicitation:
    request_id: str
    capsule: str
    asked: ElicitField
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "capsule": self.capsule,
            "field": self.asked.to_json(),
            "created_at": self.created_at,
        }


class ElicitationService(KernelService):
    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.pending: dict[str, PendingElicitation] = {}
        self._waits: dict[str, asyncio.Future[None]] = {}
        kernel.on_disconnect.append(self._capsule_left)

    async def elicit(self, session: CapsuleSession, request: ElicitField) -> dict[str, Any]:
        request_id = str(uuid.uuid4())
        bus = self.kernel.bus
        subscription = bus.subscribe(f"{RESPONSE_TOPIC}.{request_id}")
        pending = PendingElicitation(request_id, session.name, request)
        self.pending[request_id] = pending
        loop = asyncio.get_running_loop()
        cancelled = self._waits[request_id] = loop.create_future()
        try:
            bus.publish(
                BusMessage(
                    REQUEST_TOPIC,
                    {
                        "type": "elicit_request",
                        "request_id": request_id,
                        "capsule_id": session.name,
                        "field": request.to_json(),
                    },
                    _NIL,
                )
            )
            answer = asyncio.ensure_future(subscription.wait(timeout_s()))
            done, _ = await asyncio.wait({answer, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            message = answer.result() if answer in done else None
            answer.cancel()
        finally:
            subscription.close()
            self.pending.pop(request_id, None)
            self._waits.pop(request_id, None)
        if message is None:
            raise SyscallError(
                "elicit request timed out, was cancelled, or response channel closed"
            )
        response = message.payload
        if response.get("type") != "elicit_response":
            raise SyscallError("unexpected IPC payload type in elicit response")
        value, values = response.get("value"), response.get("values")
        if value is None and values is None:
            raise SyscallError("user cancelled elicit request")
        if request.kind == "secret":
            if not value:
                raise SyscallError("received empty secret value from elicit response")
            try:
                self.kernel.service(SecretStore).set(session.name, request.key, value)
            except SecretError as exc:
                raise SyscallError(f"failed to persist secret: {exc}") from None
            return {"ok": True}
        if request.kind == "array":
            return {"values": values or []}
        return {"value": value or ""}

    def _capsule_left(self, session: CapsuleSession) -> None:
        for request_id, pending in list(self.pending.items()):
            future = self._waits.get(request_id)
            if pending.capsule == session.name and future is not None and not future.done():
                future.set_result(None)

    def answer(self, request_id: str, source: uuid.UUID, response: dict[str, Any]) -> None:
        """Publish an operator's answer (``value``, ``values``, or neither to cancel); a
        request takes one answer (it stops being pending at once)."""
        if request_id not in self.pending:
            raise KeyError(request_id)
        del self.pending[request_id]
        payload: dict[str, Any] = {"type": "elicit_response", "request_id": request_id}
        for name in ("value", "values"):
            if response.get(name) is not None:
                payload[name] = response[name]
        self.kernel.bus.publish(BusMessage(f"{RESPONSE_TOPIC}.{request_id}", payload, source))
