"""The management protocol on ``sessions/system.sock``.

After the session-token handshake of :mod:`astrid_core.session`, every frame (4-byte big-endian
length + UTF-8 JSON) is a JSON-RPC 2.0 object: the client sends requests, the broker answers each
with a response carrying the same ``id``. The broker may also send notifications (no ``id``), e.g.
bus events for a subscription.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Final

JSONRPC: Final = "2.0"


class Method(enum.StrEnum):
    #: Invoke a tool of a tool capsule. params: ``{"capsule", "tool", "arguments"}`` (arguments:
    #: any JSON value, default ``{}``); result: ``{"output": <the guest's output as text>}``.
    TOOL_CALL = "tool.call"
    #: Liveness probe. result: ``{"pid": <broker pid>, "capsules": [<connected capsule names>]}``.
    PING = "ping"
    #: Publish on the bus as the operator. params: ``{"topic", "payload"}`` (payload: any JSON,
    #: classified like a guest's); result: ``{"topic", "delivered": <subscriptions reached>}``.
    BUS_PUBLISH = "bus.publish"
    #: Subscribe to a topic pattern. params: ``{"pattern"}``; result: ``{"subscription": <id>}``.
    #: Messages then arrive as ``bus.messages`` notifications.
    BUS_SUBSCRIBE = "bus.subscribe"
    #: Notification (broker → client): ``{"subscription": <id>, "envelope": {"messages": [...],
    #: "dropped": n, "lagged": n}}``, the same envelope ``astrid_ipc_poll`` returns.
    BUS_MESSAGES = "bus.messages"
    #: Pending approval requests. result: ``{"approvals": [{"request_id", "capsule", "action",
    #: "resource", "risk_level", "reason", "created_at"}]}``.
    APPROVALS_LIST = "approvals.list"
    #: Answer one. params: ``{"request_id", "decision": approve|approve_session|approve_always|
    #: deny, "reason"?}``; result: ``{"request_id", "decision"}``.
    APPROVALS_ANSWER = "approvals.answer"
    #: Pending elicitations. result: ``{"elicitations": [{"request_id", "capsule", "field",
    #: "created_at"}]}`` (``field``: key, prompt, description?, field_type, default?).
    ELICITATIONS_LIST = "elicitations.list"
    #: Answer one. params: ``{"request_id", "value"?, "values"?}`` (neither = cancel).
    ELICITATIONS_ANSWER = "elicitations.answer"


class ErrorCode(enum.IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    #: The capsule named in the request is not connected to the broker.
    CAPSULE_UNAVAILABLE = 1001
    #: The capsule does not declare the tool, or cannot be invoked (run-loop capsule).
    NOT_INVOCABLE = 1002
    #: The guest trapped; the message holds the trap text.
    TRAP = 1003


class RpcError(Exception):
    """A JSON-RPC error; ``request_id`` is the id of the request it answers when the decoder
    could read it before failing (so the response can still be attributed)."""

    def __init__(self, code: int, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: int | str | None
    method: str
    params: dict[str, Any]


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encode_request(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    return _dumps({"jsonrpc": JSONRPC, "id": request_id, "method": method, "params": params})


def encode_result(request_id: int | str | None, result: Any) -> bytes:
    return _dumps({"jsonrpc": JSONRPC, "id": request_id, "result": result})


def encode_error(request_id: int | str | None, code: int, message: str) -> bytes:
    return _dumps(
        {"jsonrpc": JSONRPC, "id": request_id, "error": {"code": int(code), "message": message}}
    )


def encode_notification(method: str, params: dict[str, Any]) -> bytes:
    return _dumps({"jsonrpc": JSONRPC, "method": method, "params": params})


def decode_request(payload: bytes) -> Request:
    """Parse a client request; raises :class:`RpcError` with the JSON-RPC error code."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RpcError(ErrorCode.PARSE_ERROR, f"request is not valid JSON: {exc}") from None
    except RecursionError:
        raise RpcError(
            ErrorCode.PARSE_ERROR, "request is not valid JSON: nested too deeply"
        ) from None
    if not isinstance(data, dict) or data.get("jsonrpc") != JSONRPC:
        raise RpcError(ErrorCode.INVALID_REQUEST, "request must be a JSON-RPC 2.0 object")
    method = data.get("method")
    request_id = data.get("id")
    if not isinstance(method, str):
        raise RpcError(ErrorCode.INVALID_REQUEST, "request has no method")
    if request_id is not None and not isinstance(request_id, int | str):
        raise RpcError(ErrorCode.INVALID_REQUEST, "request id must be a number or a string")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise RpcError(ErrorCode.INVALID_PARAMS, "params must be an object", request_id)
    return Request(request_id, method, params)


def decode_response(payload: bytes) -> tuple[int | str | None, Any]:
    """Parse a response: returns ``(id, result)`` or raises :class:`RpcError` for an error."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RpcError(ErrorCode.PARSE_ERROR, f"response is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RpcError(ErrorCode.INVALID_REQUEST, "response must be a JSON object")
    if "error" in data:
        error = data["error"]
        if not isinstance(error, dict):
            raise RpcError(ErrorCode.INTERNAL_ERROR, "malformed error response")
        raise RpcError(int(error.get("code", ErrorCode.INTERNAL_ERROR)), str(error.get("message")))
    return data.get("id"), data.get("result")
