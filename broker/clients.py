"""``sessions/system.sock``: the broker's socket for operators and clients (the ``astrid`` CLI).

Binding follows the reference's boot rules (core.md §7): the path length limit, a symlink at the
path is removed, a live socket means another broker is running, a stale one is replaced, the
``sessions`` directory is 0700, the token is written (0600, atomically) before any client can be
accepted. Every accepted peer must run under our UID and pass the session-token handshake; then
it speaks JSON-RPC (``astrid_core.rpc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from astrid_core import rpc
from astrid_core.dirs import AstridHome
from astrid_core.rpc import ErrorCode, Method, RpcError
from astrid_core.session import (
    MAX_SERVER_FRAME,
    FrameError,
    SessionToken,
    peer_uid,
    read_frame,
    server_handshake,
    write_frame,
)
from broker.approvals import DECISIONS as APPROVAL_DECISIONS
from broker.approvals import ApprovalService
from broker.bus import BusMessage, Subscription
from broker.capsule_ipc import MAX_PUBLISH_BYTES, MAX_SUBSCRIPTIONS
from broker.elicitations import ElicitationService
from broker.errors import SyscallError
from broker.ipc_payload import classify
from broker.kernel import Kernel
from broker.sessions import InvocationFailed
from broker.syscalls.ipc import MAX_TOPIC_LEN, check_pattern_shape, check_topic_shape
from broker.tools import ToolUnavailable, call_tool, check_callable

log = logging.getLogger("astrid.broker")

#: ``sun_path`` holds 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH = 107


class SocketUnavailable(Exception):
    """The client socket cannot be bound; the broker cannot start."""


def prepare_socket_path(home: AstridHome) -> Path:
    path = home.socket_path()
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise SocketUnavailable(
            f"socket path {path} is {size} bytes long, exceeding the platform limit of "
            f"{MAX_SOCKET_PATH} bytes; use a shorter ASTRID_HOME"
        )
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()
        except OSError as exc:
            raise SocketUnavailable(f"cannot check the existing socket {path}: {exc}") from None
        else:
            raise SocketUnavailable(
                f"Another kernel instance is already running on this socket ({path})"
            )
        finally:
            probe.close()
    home.ready_path().unlink(missing_ok=True)
    sessions = home.sessions_dir()
    sessions.mkdir(parents=True, exist_ok=True)
    os.chmod(sessions, 0o700)
    return path


def _invalid(message: str) -> RpcError:
    return RpcError(ErrorCode.INVALID_PARAMS, message)


class _Connection:
    """One authenticated client: its identity on the bus and its subscriptions."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.session_id = uuid.uuid4()
        self.caller: dict[str, Any] = {"session_id": str(self.session_id), "user_id": None}
        self.subscriptions: dict[int, Subscription] = {}
        self._next_subscription = 1
        self._lock = asyncio.Lock()
        self._forwarders: set[asyncio.Task[None]] = set()

    async def send(self, payload: bytes) -> None:
        """Write one frame (responses and notifications share the stream)."""
        async with self._lock:
            await write_frame(self.writer, payload)

    def subscribe(self, subscription: Subscription) -> int:
        number = self._next_subscription
        self._next_subscription += 1
        self.subscriptions[number] = subscription
        task = asyncio.ensure_future(self._forward(number, subscription))
        self._forwarders.add(task)
        task.add_done_callback(self._forwarders.discard)
        return number

    async def _forward(self, number: int, subscription: Subscription) -> None:
        """Push what the subscription receives as ``bus.messages`` notifications."""
        try:
            while not subscription.closed:
                first = await subscription.wait(3600.0)
                if first is None and not subscription.queue:
                    continue
                envelope = subscription.drain(first=first).envelope().decode()
                await self.send(
                    (
                        f'{{"jsonrpc":"2.0","method":"{Method.BUS_MESSAGES}",'
                        f'"params":{{"subscription":{number},"envelope":{envelope}}}}}'
                    ).encode()
                )
        except (ConnectionError, OSError):
            subscription.close()

    def close(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.close()
        self.subscriptions.clear()
        for task in list(self._forwarders):
            task.cancel()


class ClientServer:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.token = SessionToken.generate()
        self._server: asyncio.Server | None = None
        self._path: Path | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        home = self.kernel.home
        path = prepare_socket_path(home)
        # The token first: a client that finds the socket listening must find this broker's
        # token, not the one a killed broker left behind.
        self.token.write_to_file(home.token_path())
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)
        self._path = path
        ready = home.ready_path()
        fd = os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        home = self.kernel.home
        for path in (self._path, home.token_path(), home.ready_path()):
            if path is not None:
                path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            sock = writer.get_extra_info("socket")
            try:
                uid = None if sock is None else peer_uid(sock)
            except OSError as exc:
                log.warning("refused a client connection whose user is unknown: %s", exc)
                writer.close()
                return
            if uid != os.geteuid():
                log.warning("refused a client connection from another user")
                writer.close()
                return
            if not await server_handshake(reader, writer, self.token):
                return
            connection = _Connection(writer)
            try:
                while True:
                    try:
                        payload = await read_frame(reader, MAX_SERVER_FRAME)
                    except FrameError as exc:
                        log.warning("closing a client connection: %s", exc)
                        break
                    response = await self._respond(payload, connection)
                    if response is not None:
                        await connection.send(response)
            finally:
                connection.close()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _respond(self, payload: bytes, connection: _Connection) -> bytes | None:
        request_id: int | str | None = None
        try:
            request = rpc.decode_request(payload)
            request_id = request.id
            result = await self._dispatch(request, connection)
        except RpcError as exc:
            return rpc.encode_error(
                exc.request_id if request_id is None else request_id, exc.code, exc.message
            )
        except Exception as exc:
            log.exception("client request failed")
            return rpc.encode_error(request_id, ErrorCode.INTERNAL_ERROR, f"internal error: {exc}")
        if request_id is None:
            return None  # a notification
        return rpc.encode_result(request_id, result)

    async def _dispatch(self, request: rpc.Request, connection: _Connection) -> Any:
        if request.method == Method.PING:
            return {"pid": os.getpid(), "capsules": self.kernel.sessions.names()}
        if request.method == Method.TOOL_CALL:
            return await self._tool_call(request.params, connection.caller)
        if request.method == Method.BUS_PUBLISH:
            return self._publish(request.params, connection)
        if request.method == Method.BUS_SUBSCRIBE:
            return self._subscribe(request.params, connection)
        if request.method == Method.APPROVALS_LIST:
            approvals = self.kernel.service(ApprovalService).pending.values()
            return {"approvals": [pending.to_json() for pending in approvals]}
        if request.method == Method.APPROVALS_ANSWER:
            return self._answer_approval(request.params, connection)
        if request.method == Method.ELICITATIONS_LIST:
            elicitations = self.kernel.service(ElicitationService).pending.values()
            return {"elicitations": [pending.to_json() for pending in elicitations]}
        if request.method == Method.ELICITATIONS_ANSWER:
            return self._answer_elicitation(request.params, connection)
        raise RpcError(ErrorCode.METHOD_NOT_FOUND, f"unknown method '{request.method}'")

    def _publish(self, params: dict[str, Any], connection: _Connection) -> Any:
        topic = params.get("topic")
        if not isinstance(topic, str) or "payload" not in params:
            raise RpcError(ErrorCode.INVALID_PARAMS, "bus.publish needs 'topic' and 'payload'")
        if len(topic.encode()) > MAX_TOPIC_LEN:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, "Topic exceeds maximum allowed length (256 bytes)"
            )
        try:
            check_topic_shape(topic)
        except SyscallError as exc:
            raise RpcError(ErrorCode.INVALID_PARAMS, exc.text) from None
        message = BusMessage(topic, classify(params["payload"]), connection.session_id)
        if message.payload_size > MAX_PUBLISH_BYTES:
            raise RpcError(ErrorCode.INVALID_PARAMS, "Payload too large")
        return {"topic": topic, "delivered": self.kernel.bus.publish(message)}

    def _subscribe(self, params: dict[str, Any], connection: _Connection) -> Any:
        pattern = params.get("pattern")
        if not isinstance(pattern, str):
            raise RpcError(ErrorCode.INVALID_PARAMS, "bus.subscribe needs a 'pattern' string")
        if len(pattern.encode()) > MAX_TOPIC_LEN:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, "Topic pattern exceeds maximum allowed length (256 bytes)"
            )
        try:
            check_pattern_shape(pattern)
        except SyscallError as exc:
            raise RpcError(ErrorCode.INVALID_PARAMS, exc.text) from None
        if len(connection.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, "Subscription limit reached (128 max per client)"
            )
        return {"subscription": connection.subscribe(self.kernel.bus.subscribe(pattern))}

    def _answer_approval(self, params: dict[str, Any], connection: _Connection) -> Any:
        request_id, decision = params.get("request_id"), params.get("decision")
        reason = params.get("reason")
        if not isinstance(request_id, str) or not isinstance(decision, str):
            raise _invalid("approvals.answer needs 'request_id' and 'decision' strings")
        if reason is not None and not isinstance(reason, str):
            raise _invalid("'reason' must be a string")
        try:
            self.kernel.service(ApprovalService).answer(
                request_id, decision, connection.session_id, reason
            )
        except KeyError:
            raise _invalid(f"no pending approval request '{request_id}'") from None
        except ValueError:
            choices = ", ".join(sorted(APPROVAL_DECISIONS))
            raise _invalid(f"unknown decision '{decision}' (expected one of {choices})") from None
        return {"request_id": request_id, "decision": decision}

    def _answer_elicitation(self, params: dict[str, Any], connection: _Connection) -> Any:
        request_id = params.get("request_id")
        if not isinstance(request_id, str):
            raise _invalid("elicitations.answer needs a 'request_id' string")
        value, values = params.get("value"), params.get("values")
        if value is not None and not isinstance(value, str):
            raise _invalid("'value' must be a string")
        if values is not None and not (
            isinstance(values, list) and all(isinstance(item, str) for item in values)
        ):
            raise _invalid("'values' must be an array of strings")
        try:
            self.kernel.service(ElicitationService).answer(
                request_id, connection.session_id, {"value": value, "values": values}
            )
        except KeyError:
            raise _invalid(f"no pending elicitation '{request_id}'") from None
        return {"request_id": request_id}

    async def _tool_call(self, params: dict[str, Any], client: dict[str, Any]) -> Any:
        capsule, tool = params.get("capsule"), params.get("tool")
        if not isinstance(capsule, str) or not isinstance(tool, str):
            raise RpcError(ErrorCode.INVALID_PARAMS, "tool.call needs 'capsule' and 'tool' strings")
        arguments = params.get("arguments", {})
        session = self.kernel.sessions.by_name(capsule)
        if session is None:
            raise RpcError(ErrorCode.CAPSULE_UNAVAILABLE, f"capsule '{capsule}' is not running")
        try:
            check_callable(session, tool)
        except ToolUnavailable as exc:
            raise RpcError(ErrorCode.NOT_INVOCABLE, str(exc)) from None
        try:
            output = await call_tool(self.kernel, session, tool, arguments, client)
        except InvocationFailed as exc:
            raise RpcError(ErrorCode.TRAP, f"astrid_tool_call failed: {exc.text}") from None
        return {"output": output.decode("utf-8", "replace")}
