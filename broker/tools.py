"""Tools: capsules' ``[[tool]]`` entries made callable (DESIGN §6.11).

A tool is run by invoking the capsule's ``astrid_tool_call`` export with
``{"name": <tool>, "arguments": [<bytes of the JSON arguments>]}``. Two paths lead here:

* ``astrid call CAPSULE TOOL JSON`` (the ``tool.call`` request on ``sessions/system.sock``);
* a ``tool_execute_request`` payload published on ``tool.v1.execute.<tool>``: the broker finds the
  connected capsule that declares ``<tool>``, runs it, and publishes a ``tool_execute_result``
  (``{"call_id","content","is_error"}``) on ``tool.v1.execute.<tool>.result``. A tool's output in
  the SDK's ``{"content","is_error"}`` form is unwrapped into those fields.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from astrid_core.capsule_abi import GuestInvocation, ToolOutput
from astrid_core.serde import loads
from astrid_core.types import SessionId
from broker.bus import BusMessage
from broker.ipc_payload import tool_call_result
from broker.kernel import Kernel
from broker.sessions import CapsuleSession, InvocationFailed

log = logging.getLogger("astrid.broker")

TOOL_EXPORT = "astrid_tool_call"
EXECUTE_TOPIC = "tool.v1.execute"


class ToolUnavailable(Exception):
    """The tool cannot be called; the message says why."""


def declared_tools(session: CapsuleSession) -> list[str]:
    return [tool.name for tool in session.manifest.tools]


def check_callable(session: CapsuleSession, tool: str) -> None:
    if session.info.has_run:
        raise ToolUnavailable(
            f"capsule '{session.name}' is a run-loop capsule; it exposes no callable tools"
        )
    declared = declared_tools(session)
    if tool not in declared:
        raise ToolUnavailable(
            f"capsule '{session.name}' declares no tool '{tool}' "
            f"(declared: {', '.join(declared) or 'none'})"
        )


def find_provider(kernel: Kernel, tool: str) -> CapsuleSession | None:
    """The first connected tool capsule that declares ``tool``."""
    for session in kernel.sessions:
        if not session.info.has_run and tool in declared_tools(session):
            return session
    return None


async def call_tool(
    kernel: Kernel, session: CapsuleSession, tool: str, arguments: Any, caller: dict[str, Any]
) -> bytes:
    """Run ``tool``; returns the guest's output, raises InvocationFailed with the trap text."""
    data = GuestInvocation.for_json_arguments(tool, arguments).encode()
    return await kernel.invoke(session, TOOL_EXPORT, data, caller)


def tool_output(output: bytes) -> tuple[str, bool]:
    """``(content, is_error)`` of a tool's output: its ``{"content","is_error"}`` (the SDK's
    ``ToolOutput``) when it is one, else the output text as content, not an error."""
    try:
        parsed = ToolOutput.from_json(loads(output))
    except ValueError:
        return output.decode("utf-8", "replace"), False
    return parsed.content, parsed.is_error


class ToolRequests:
    """Serves ``tool_execute_request`` messages published on ``tool.v1.execute.<tool>``."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._tasks: set[asyncio.Task[None]] = set()
        kernel.bus.add_listener(self.on_message)

    def on_message(self, message: BusMessage) -> None:
        payload = message.payload
        if payload.get("type") != "tool_execute_request":
            return
        tool = payload["tool_name"]
        if message.topic != f"{EXECUTE_TOPIC}.{tool}":
            return
        task = asyncio.ensure_future(self._execute(payload["call_id"], tool, payload["arguments"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, call_id: str, tool: str, arguments: Any) -> None:
        session = find_provider(self.kernel, tool)
        source = session.uuid if session is not None else SessionId.SYSTEM.uuid
        if session is None:
            content, is_error = f"no running capsule provides tool '{tool}'", True
        else:
            try:
                output = await call_tool(self.kernel, session, tool, arguments, {})
            except InvocationFailed as exc:
                content, is_error = f"astrid_tool_call failed: {exc.text}", True
            else:
                content, is_error = tool_output(output)
        result = {
            "type": "tool_execute_result",
            "call_id": call_id,
            "result": tool_call_result(call_id, content, is_error),
        }
        self.kernel.bus.publish(BusMessage(f"{EXECUTE_TOPIC}.{tool}.result", result, source))
