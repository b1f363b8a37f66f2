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
import json
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
from broker.kernel import Kernel
from broker.router import WorkerRouter
from broker.sessions import InvocationFailed

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


class ClientServer:
    def __init__(self, kernel: Kernel, router: WorkerRouter) -> None:
        self.kernel = kernel
        self.router = router
        self.token = SessionToken.generate()
        self._server: asyncio.Server | None = None
        self._path: Path | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        home = self.kernel.home
        path = prepare_socket_path(home)
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)
        self._path = path
        self.token.write_to_file(home.token_path())
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
            if sock is None or peer_uid(sock) != os.geteuid():
                log.warning("refused a client connection from another user")
                writer.close()
                return
            if not await server_handshake(reader, writer, self.token):
                return
            client = {"session_id": str(uuid.uuid4()), "user_id": None}
            while True:
                try:
                    payload = await read_frame(reader, MAX_SERVER_FRAME)
                except FrameError as exc:
                    log.warning("closing a client connection: %s", exc)
                    break
                response = await self._respond(payload, client)
                if response is not None:
                    await write_frame(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _respond(self, payload: bytes, client: dict[str, Any]) -> bytes | None:
        request_id: int | str | None = None
        try:
            request = rpc.decode_request(payload)
            request_id = request.id
            result = await self._dispatch(request, client)
        except RpcError as exc:
            return rpc.encode_error(request_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("client request failed")
            return rpc.encode_error(request_id, ErrorCode.INTERNAL_ERROR, f"internal error: {exc}")
        if request_id is None:
            return None  # a notification
        return rpc.encode_result(request_id, result)

    async def _dispatch(self, request: rpc.Request, client: dict[str, Any]) -> Any:
        if request.method == Method.PING:
            return {"pid": os.getpid(), "capsules": self.kernel.sessions.names()}
        if request.method == Method.TOOL_CALL:
            return await self._tool_call(request.params, client)
        raise RpcError(ErrorCode.METHOD_NOT_FOUND, f"unknown method '{request.method}'")

    async def _tool_call(self, params: dict[str, Any], client: dict[str, Any]) -> Any:
        capsule, tool = params.get("capsule"), params.get("tool")
        if not isinstance(capsule, str) or not isinstance(tool, str):
            raise RpcError(ErrorCode.INVALID_PARAMS, "tool.call needs 'capsule' and 'tool' strings")
        arguments = params.get("arguments", {})
        session = self.kernel.sessions.by_name(capsule)
        if session is None:
            raise RpcError(ErrorCode.CAPSULE_UNAVAILABLE, f"capsule '{capsule}' is not running")
        if session.info.has_run:
            raise RpcError(
                ErrorCode.NOT_INVOCABLE,
                f"capsule '{capsule}' is a run-loop capsule; it exposes no callable tools",
            )
        declared = [t.name for t in session.manifest.tools]
        if tool not in declared:
            raise RpcError(
                ErrorCode.NOT_INVOCABLE,
                f"capsule '{capsule}' declares no tool '{tool}' "
                f"(declared: {', '.join(declared) or 'none'})",
            )
        argument_bytes = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False).encode()
        tool_input = json.dumps(
            {"name": tool, "arguments": list(argument_bytes)}, separators=(",", ":")
        ).encode()
        try:
            output = await self.router.invoke(session, "astrid_tool_call", tool_input, client)
        except InvocationFailed as exc:
            raise RpcError(ErrorCode.TRAP, f"astrid_tool_call failed: {exc.text}") from None
        return {"output": output.decode("utf-8", "replace")}
