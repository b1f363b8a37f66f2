"""A synchronous client for the broker's management socket, ``sessions/system.sock``.

Connect, authenticate with the session token (read fresh from ``sessions/system.token`` on every
connection: the broker writes a new one each time it starts), then exchange JSON-RPC requests and
responses (:mod:`astrid_core.rpc`). Every connection problem becomes a :class:`ClientError` with
a message fit for an operator; an error answered by the broker stays an
:class:`~astrid_core.rpc.RpcError`.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from astrid_core import rpc
from astrid_core.dirs import AstridHome
from astrid_core.session import (
    MAX_CLIENT_FRAME,
    HandshakeRejected,
    SessionToken,
    client_handshake,
    recv_frame,
    send_frame,
)

__all__ = ["CLIENT_VERSION", "ClientError", "ClientTimeoutError", "SystemClient", "call_tool"]

CLIENT_VERSION: Final = "astrid-cli/0.1.0"


class ClientError(Exception):
    """The broker cannot be reached or talked to (one line for the operator)."""


class ClientTimeoutError(ClientError):
    """The broker did not answer in time."""


class SystemClient:
    """One authenticated connection to the broker. Use :meth:`connect`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._next_id = 1
        self._notifications: deque[dict[str, Any]] = deque()

    @classmethod
    def connect(
        cls, home: AstridHome, *, timeout: float, client_version: str = CLIENT_VERSION
    ) -> Self:
        """Connect to ``home``'s socket and complete the handshake within ``timeout`` seconds.

        A token file that group or others may read or write is refused (:class:`ClientError`).
        """
        deadline = time.monotonic() + timeout
        path = home.socket_path()
        if not path.exists():
            raise ClientError(f"{_NOT_RUNNING}: no socket at {path}")
        token = _read_token(home.token_path())
        while True:
            try:
                return cls(_handshake(path, token, client_version, deadline))
            except HandshakeRejected as exc:
                # A broker that was just restarted may have replaced the token after we read
                # it: retry once with the new one.
                fresh = _read_token(home.token_path())
                if fresh.to_hex() == token.to_hex():
                    raise ClientError(f"the broker refused the connection: {exc.reason}") from None
                token = fresh

    def request(self, method: str, params: dict[str, Any], *, timeout: float) -> Any:
        """Send one request and return its result; raises RpcError or ClientError."""
        deadline = time.monotonic() + timeout
        request_id = self._next_id
        self._next_id += 1
        try:
            send_frame(
                self._sock, rpc.encode_request(request_id, method, params), _remaining(deadline)
            )
            while True:
                payload = recv_frame(self._sock, MAX_CLIENT_FRAME, _remaining(deadline))
                notification = _notification(payload)
                if notification is not None:
                    self._notifications.append(notification)
                    continue
                response_id, result = rpc.decode_response(payload)
                if response_id == request_id:
                    return result
        except TimeoutError:
            raise ClientTimeoutError(f"no answer from the broker within {timeout:g} s") from None
        except (OSError, ValueError) as exc:
            raise ClientError(f"lost the connection to the broker: {_describe(exc)}") from None

    def next_notification(self, timeout: float | None) -> dict[str, Any] | None:
        """The next notification (``{"method", "params"}``), waiting up to ``timeout`` seconds
        (forever if None); None on timeout. Responses arriving meanwhile are ignored."""
        if self._notifications:
            return self._notifications.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                wait = None if deadline is None else _remaining(deadline)
                payload = recv_frame(self._sock, MAX_CLIENT_FRAME, wait)
                notification = _notification(payload)
                if notification is not None:
                    return notification
        except TimeoutError:
            return None
        except (OSError, ValueError) as exc:
            raise ClientError(f"lost the connection to the broker: {_describe(exc)}") from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def call_tool(home: AstridHome, capsule: str, tool: str, arguments: Any, *, timeout: float) -> str:
    """Invoke ``tool`` of ``capsule`` through the broker; return the tool's output text."""
    deadline = time.monotonic() + timeout
    params = {"capsule": capsule, "tool": tool, "arguments": arguments}
    with SystemClient.connect(home, timeout=timeout) as client:
        try:
            result = client.request(
                rpc.Method.TOOL_CALL, params, timeout=max(0.0, deadline - time.monotonic())
            )
        except ClientTimeoutError:
            raise ClientTimeoutError(f"no answer from the broker within {timeout:g} s") from None
    if isinstance(result, dict) and isinstance(result.get("output"), str):
        return str(result["output"])
    return json.dumps(result)


_NOT_RUNNING = "the astrid broker is not running"


def _read_token(token_path: Path) -> SessionToken:
    try:
        _check_private(token_path)
        return SessionToken.read_from_file(token_path)
    except FileNotFoundError:
        raise ClientError(f"{_NOT_RUNNING}: no session token at {token_path}") from None
    except OSError as exc:
        raise ClientError(f"cannot read the session token {token_path}: {exc}") from None
    except ValueError as exc:
        raise ClientError(f"invalid session token in {token_path}: {exc}") from None


def _handshake(
    path: Path, token: SessionToken, client_version: str, deadline: float
) -> socket.socket:
    """Connect to ``path`` and authenticate; the socket on success. Raises ClientError, or
    HandshakeRejected when the broker refused the token or the version."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_remaining(deadline))
        sock.connect(str(path))
        client_handshake(sock, token, client_version)
    except FileNotFoundError:
        sock.close()
        raise ClientError(f"{_NOT_RUNNING}: no socket at {path}") from None
    except ConnectionRefusedError:
        sock.close()
        raise ClientError(f"{_NOT_RUNNING}: nothing listens on {path}") from None
    except HandshakeRejected:
        sock.close()
        raise
    except (OSError, ValueError) as exc:  # TimeoutError, ConnectionError, FrameError...
        sock.close()
        raise ClientError(f"cannot connect to the broker at {path}: {_describe(exc)}") from None
    return sock


def _check_private(token_path: Path) -> None:
    """Refuse a session token that group or others may read or write (the broker writes it
    0600; anything looser means someone else may hold or have replaced the secret)."""
    mode = stat.S_IMODE(os.stat(token_path).st_mode)
    if mode & 0o077:
        raise ClientError(
            f"insecure permissions on {token_path} ({mode:04o}): "
            "the session token must be private (0600)"
        )


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    return remaining


def _notification(payload: bytes) -> dict[str, Any] | None:
    """The notification in ``payload`` (a JSON-RPC object with a method and no id), or None."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if isinstance(data, dict) and "method" in data and "id" not in data:
        return data
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
