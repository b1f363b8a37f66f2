"""Approvals: ``astrid_request_approval`` and the operator's answers (syscalls.md §2.11).

A request is published on ``astrid.v1.approval`` (``approval_required``) and answered on
``astrid.v1.approval.response.<request_id>`` (``approval_response``) within 60 s, by an operator
(``astrid approvals`` / ``astrid approve`` / ``astrid deny``) or by any client on the bus. No
answer in time is a denial, not an error.

``approve_session`` and ``approve_always`` leave an allowance ``"<action> *"``: a later request
of the same capsule whose resource is the action, or starts with the action and a space, is
approved at once (``decision: "allowance"``), unless the resource holds a shell operator.
Allowances belong to the capsule that obtained them (DESIGN §6.7); session allowances last until
the broker stops, ``always`` allowances are kept in ``state.db``.
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
from broker.sessions import CapsuleSession

REQUEST_TOPIC = "astrid.v1.approval"
RESPONSE_TOPIC = "astrid.v1.approval.response"
TIMEOUT_S = 60.0
#: Shortens the wait (in ms, never beyond 60 s), for tests and impatient deployments.
TIMEOUT_ENV = "ASTRID_APPROVAL_TIMEOUT_MS"


def timeout_s() -> float:
    """How long a request waits for its answer: 60 s, or less if ``TIMEOUT_ENV`` says so."""
    try:
        configured = int(os.environ.get(TIMEOUT_ENV, "")) / 1000
    except ValueError:
        return TIMEOUT_S
    return min(max(configured, 0.0), TIMEOUT_S)


APPROVING = frozenset({"approve", "approve_session", "approve_always"})
DECISIONS = frozenset({*APPROVING, "deny"})
_SHELL_OPERATORS = (";", "&&", "||", "|", "$(", "`", "\n", ">", "<")
_NIL = uuid.UUID(int=0)


def allowance_covers(action: str, resource: str) -> bool:
    """Whether the allowance ``"<action> *"`` approves ``resource``."""
    if any(operator in resource for operator in _SHELL_OPERATORS):
        return False
    return resource == action or resource.startswith(action + " ")


@dataclass(eq=False)
class PendingApproval:
    request_id: str
    capsule: str
    action: str
    resource: str
    risk_level: str
    reason: str
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "capsule": self.capsule,
            "action": self.action,
            "resource": self.resource,
            "risk_level": self.risk_level,
            "reason": self.reason,
            "created_at": self.created_at,
        }


class ApprovalService(KernelService):
    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._db = kernel.kv.connection
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS approval_allowances (capsule TEXT NOT NULL,"
            " action TEXT NOT NULL, PRIMARY KEY (capsule, action))"
        )
        self._session_allowances: dict[str, set[str]] = {}
        self.pending: dict[str, PendingApproval] = {}
        self._waits: dict[str, asyncio.Future[None]] = {}
        kernel.on_disconnect.append(self._capsule_left)

    # -----------------------------------------------------------------------------------------
    # Allowances

    def _actions(self, capsule: str) -> set[str]:
        stored = self._db.execute(
            "SELECT action FROM approval_allowances WHERE capsule = ?", (capsule,)
        ).fetchall()
        return {str(row[0]) for row in stored} | self._session_allowances.get(capsule, set())

    def allowed(self, capsule: str, resource: str) -> bool:
        return any(allowance_covers(action, resource) for action in self._actions(capsule))

    def allow(self, capsule: str, action: str, *, always: bool) -> None:
        if always:
            self._db.execute(
                "INSERT OR IGNORE INTO approval_allowances (capsule, action) VALUES (?, ?)",
                (capsule, action),
            )
        else:
            self._session_allowances.setdefault(capsule, set()).add(action)

    # -----------------------------------------------------------------------------------------
    # Requests

    async def request(
        self, session: CapsuleSession, action: str, resource: str, risk_level: str
    ) -> dict[str, Any]:
        if self.allowed(session.name, resource):
            return {"approved": True, "decision": "allowance"}
        request_id = str(uuid.uuid4())
        bus = self.kernel.bus
        subscription = bus.subscribe(f"{RESPONSE_TOPIC}.{request_id}")
        pending = PendingApproval(
            request_id,
            session.name,
            action,
            resource,
            risk_level,
            f"Capsule '{session.name}' requests approval",
        )
        self.pending[request_id] = pending
        try:
            payload = {"type": "approval_required", **pending.to_json()}
            del payload["capsule"], payload["created_at"]
            bus.publish(BusMessage(REQUEST_TOPIC, payload, _NIL))
            message = await self._wait(request_id, subscription.wait(timeout_s()))
        finally:
            subscription.close()
            self.pending.pop(request_id, None)
            self._waits.pop(request_id, None)
        if message is None:
            return {"approved": False, "decision": "deny"}
        response = message.payload
        if response.get("type") != "approval_response":
            raise SyscallError("unexpected IPC payload type in approval response")
        decision = str(response.get("decision", ""))
        if decision in ("approve_session", "approve_always") and action:
            self.allow(session.name, action, always=decision == "approve_always")
        return {"approved": decision in APPROVING, "decision": decision}

    async def _wait(self, request_id: str, waiting: Any) -> BusMessage | None:
        """Wait for the answer; a capsule that goes away cancels its pending requests."""
        loop = asyncio.get_running_loop()
        cancelled = self._waits[request_id] = loop.create_future()
        answer = asyncio.ensure_future(waiting)
        done, _ = await asyncio.wait({answer, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            result: BusMessage | None = answer.result()
            return result
        answer.cancel()
        return None

    def _capsule_left(self, session: CapsuleSession) -> None:
        for request_id, pending in list(self.pending.items()):
            future = self._waits.get(request_id)
            if pending.capsule == session.name and future is not None and not future.done():
                future.set_result(None)

    def answer(self, request_id: str, decision: str, source: uuid.UUID, reason: str | None) -> None:
        """Publish an operator's answer; raises KeyError/ValueError for bad input.

        A request takes one answer: it stops being pending at once, so that a second answer
        (say, an approval right after a denial) is refused instead of reported as done.
        """
        if request_id not in self.pending:
            raise KeyError(request_id)
        if decision not in DECISIONS:
            raise ValueError(decision)
        del self.pending[request_id]
        payload: dict[str, Any] = {
            "type": "approval_response",
            "request_id": request_id,
            "decision": decision,
        }
        if reason:
            payload["reason"] = reason
        self.kernel.bus.publish(BusMessage(f"{RESPONSE_TOPIC}.{request_id}", payload, source))
