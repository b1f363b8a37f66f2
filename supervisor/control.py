"""The supervisor's control socket, ``$ASTRID_HOME/run/supervisor.sock``, and its client.

The supervisor serves it from its own selector loop: the listening socket and every connection
are non-blocking, no thread is involved. The socket is 0600 in the 0700 ``run/`` directory, and
every connection is checked with ``SO_PEERCRED``: only processes of the supervisor's own UID are
served.

The protocol is one JSON object per line each way. A request is ``{"command": NAME, ...}`` (an
``"id"`` member is echoed back); the answer is ``{"ok": true, ...}`` or
``{"ok": false, "error": TEXT}``. Requests of one connection are answered in order, one at a
time: an answer may take a while (``restart`` answers when the new worker is READY), and the
next request of that connection waits for it; other connections are not held up.

Commands (implemented by the supervisor, see ``supervisor.tree``): ``status``, ``restart``,
``stop`` and ``start`` (with ``"capsule": NAME``), ``shutdown``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from astrid_core.dirs import AstridHome
from astrid_core.session import peer_uid

__all__ = [
    "CONTROL_SOCKET_NAME",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_REQUEST_SIZE",
    "ControlError",
    "ControlServer",
    "ControlTimeoutError",
    "NotRunningError",
    "Reply",
    "control_socket_path",
    "send_request",
]

log = logging.getLogger("astrid.supervisor")

CONTROL_SOCKET_NAME: Final = "supervisor.sock"
#: Longest request line; a longer one is answered with an error and the connection closed.
MAX_REQUEST_SIZE: Final = 64 * 1024
#: Connections served at once; more are refused (answered with an error and closed).
MAX_CONNECTIONS: Final = 64
#: A connection with no request in flight is closed after this many seconds of silence.
IDLE_TIMEOUT: Final = 60.0
#: Answers not yet written beyond this size mean a client that does not read: it is dropped.
MAX_PENDING_OUTPUT: Final = 4 * 1024 * 1024
_READ_SIZE: Final = 65536
#: ``sun_path`` holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107

#: Sends one answer (a JSON object) to the client of one request. Calling it again, or after
#: the connection closed, does nothing.
Reply = Callable[[dict[str, Any]], None]
#: The supervisor's side: called with each well-formed request and the function to answer it.
Handler = Callable[[dict[str, Any], Reply], None]


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], _Cancellable]


def control_socket_path(home: AstridHome) -> Path:
    return home.run_dir() / CONTROL_SOCKET_NAME


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# --------------------------------------------------------------------------------------------
# Server


class _Connection:
    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        #: The request being answered (its id), or None.
        self.busy = False
        self.read_closed = False
        self.closed = False
        self.events = selectors.EVENT_READ
        self.idle_timer: _Cancellable | None = None

    def fileno(self) -> int:
        return self.sock.fileno()


class ControlServer:
    """Serves the control socket at ``path`` from ``selector``.

    ``handler`` gets every request that is a JSON object with a string ``command``; anything
    else is answered here. ``call_later(delay, callback)`` schedules the idle timeouts on the
    owner's timer heap. Registered callbacks take no argument (the owner's loop calls
    ``key.data()``).
    """

    def __init__(
        self,
        path: Path,
        selector: selectors.BaseSelector,
        handler: Handler,
        *,
        call_later: CallLater,
    ) -> None:
        self.path = path
        self._selector = selector
        self._handler = handler
        self._call_later = call_later
        self._listener: socket.socket | None = None
        self._connections: set[_Connection] = set()
        self._uid = os.geteuid()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def open(self) -> None:
        """Bind and listen (replacing a stale socket file: the caller holds the home's lock)."""
        path = self.path
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise OSError(
                errno.ENAMETOOLONG,
                f"the control socket path {path} is longer than {_MAX_SOCKET_PATH} bytes",
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # the socket file is born 0600
            try:
                listener.bind(os.fspath(path))
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        """Stop listening, drop every connection (after a last non-blocking flush), unlink."""
        for connection in list(self._connections):
            self._flush(connection)
            self._close(connection)
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener)
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # ---------------------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next wakeup
                log.warning("control socket: cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            try:
                uid = peer_uid(sock)
            except OSError as exc:
                log.warning("control socket: cannot identify a peer: %s", exc)
                sock.close()
                continue
            if uid != self._uid:
                log.warning("control socket: refused a connection from uid %d", uid)
                self._refuse(sock, f"permission denied: uid {uid} may not control this supervisor")
                continue
            if len(self._connections) >= MAX_CONNECTIONS:
                log.warning("control socket: too many connections, refused one")
                self._refuse(sock, "too many control connections; try again later")
                continue
            connection = _Connection(self, sock)
            self._connections.add(connection)
            self._selector.register(sock, selectors.EVENT_READ, lambda c=connection: self._io(c))
            self._arm_idle(connection)

    @staticmethod
    def _refuse(sock: socket.socket, error: str) -> None:
        with contextlib.suppress(OSError):
            sock.send(_encode({"ok": False, "error": error}))
        sock.close()

    def _arm_idle(self, connection: _Connection) -> None:
        if connection.idle_timer is not None:
            connection.idle_timer.cancel()
        connection.idle_timer = self._call_later(IDLE_TIMEOUT, lambda: self._idle(connection))

    def _idle(self, connection: _Connection) -> None:
        connection.idle_timer = None
        if connection.closed:
            return
        if connection.busy or connection.outbuf:
            self._arm_idle(connection)
            return
        self._close(connection)

    def _io(self, connection: _Connection) -> None:
        if connection.closed:
            return
        if connection.outbuf:
            self._flush(connection)
        if not connection.closed and not connection.read_closed:
            self._read(connection)
        self._after_io(connection)

    def _read(self, connection: _Connection) -> None:
        while True:
            try:
                chunk = connection.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(connection)
                return
            if not chunk:
                connection.read_closed = True
                break
            connection.inbuf += chunk
            if len(connection.inbuf) > MAX_REQUEST_SIZE:
                break  # enough to work on; the rest stays in the socket for now
        self._arm_idle(connection)
        self._next_request(connection)

    def _next_request(self, connection: _Connection) -> None:
        """Take the next complete line, if no request is being answered, and handle it."""
        while not connection.busy and not connection.closed:
            newline = connection.inbuf.find(b"\n")
            if newline < 0:
                if len(connection.inbuf) > MAX_REQUEST_SIZE:
                    connection.inbuf.clear()
                    self._send(
                        connection,
                        {"ok": False, "error": f"request longer than {MAX_REQUEST_SIZE} bytes"},
                    )
                    connection.read_closed = True  # nothing sensible can follow
                    self._selector_events(connection)
                return
            line = bytes(connection.inbuf[:newline])
            del connection.inbuf[: newline + 1]
            if line.strip():
                self._handle(connection, line)

    def _handle(self, connection: _Connection, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            self._send(connection, {"ok": False, "error": f"malformed request: {exc}"})
            return
        if not isinstance(request, dict):
            self._send(connection, {"ok": False, "error": "malformed request: not a JSON object"})
            return
        request_id = request.get("id")
        command = request.get("command")
        if not isinstance(command, str):
            self._send(
                connection,
                {"ok": False, "error": "malformed request: no string 'command'"},
                request_id,
            )
            return
        connection.busy = True
        answered = False

        def reply(answer: dict[str, Any]) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            connection.busy = False
            if connection.closed:
                return
            self._send(connection, answer, request_id)
            self._next_request(connection)
            self._after_io(connection)

        try:
            self._handler(request, reply)
        except Exception as exc:  # a bug must not take the supervisor down
            log.exception("control request %r failed", command)
            reply({"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"})

    def _send(
        self, connection: _Connection, answer: dict[str, Any], request_id: Any = None
    ) -> None:
        if request_id is not None and "id" not in answer:
            answer = {**answer, "id": request_id}
        try:
            data = _encode(answer)
        except (TypeError, ValueError) as exc:
            log.error("control socket: cannot encode an answer: %s", exc)
            data = _encode({"ok": False, "error": "internal error: unencodable answer"})
        connection.outbuf += data
        if len(connection.outbuf) > MAX_PENDING_OUTPUT:
            log.warning("control socket: dropping a client that does not read its answers")
            self._close(connection)
            return
        self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        while connection.outbuf and not connection.closed:
            try:
                sent = connection.sock.send(connection.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EPIPE, ECONNRESET: the client is gone
                self._close(connection)
                return
            del connection.outbuf[:sent]
        self._selector_events(connection)

    def _after_io(self, connection: _Connection) -> None:
        if connection.closed:
            return
        if connection.read_closed and not connection.busy and not connection.outbuf:
            self._close(connection)
            return
        self._selector_events(connection)

    def _selector_events(self, connection: _Connection) -> None:
        if connection.closed:
            return
        # No more reading while a request is answered and a full request's worth is queued:
        # a client that floods its connection is held back by its own socket buffer.
        backlog = connection.busy and len(connection.inbuf) > MAX_REQUEST_SIZE
        events = 0 if connection.read_closed or backlog else selectors.EVENT_READ
        if connection.outbuf:
            events |= selectors.EVENT_WRITE
        if events == connection.events:
            return
        previous, connection.events = connection.events, events
        callback = lambda c=connection: self._io(c)  # noqa: E731
        if not previous:
            self._selector.register(connection.sock, events, callback)
        elif events:
            self._selector.modify(connection.sock, events, callback)
        else:
            # Nothing to read or write now: the answer's completion wakes the connection.
            self._selector.unregister(connection.sock)

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._connections.discard(connection)
        if connection.idle_timer is not None:
            connection.idle_timer.cancel()
            connection.idle_timer = None
        if connection.events:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(connection.sock)
        connection.sock.close()


# --------------------------------------------------------------------------------------------
# Client


class ControlError(Exception):
    """The supervisor cannot be asked (one line for the operator)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotRunningError(ControlError):
    """Nobody listens on the control socket."""


class ControlTimeoutError(ControlError):
    """The supervisor did not answer in time (the request may still be carried out)."""


def send_request(home: AstridHome, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Send ``request`` to the supervisor of ``home`` and return its answer (``ok`` or not).

    Raises :class:`NotRunningError` when no supervisor listens, :class:`ControlError` when the
    exchange fails or takes longer than ``timeout`` seconds.
    """
    path = control_socket_path(home)
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunningError(
                f"astrid-supervisor is not running (home: {home.root()})"
            ) from None
        except PermissionError:
            raise ControlError(
                f"cannot reach astrid-supervisor at {path}: permission denied "
                "(run this as the user the supervisor runs as)"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot reach astrid-supervisor at {path}: {exc}") from None
        buffer = bytearray()
        try:
            sock.sendall(_encode(request))
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(_READ_SIZE)
                if not chunk:
                    raise ControlError("astrid-supervisor closed the connection without answering")
                buffer += chunk
        except TimeoutError:
            raise ControlTimeoutError(
                f"astrid-supervisor did not answer within {timeout:g} s"
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            raise ControlError(
                "astrid-supervisor closed the connection without answering"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot talk to astrid-supervisor: {exc}") from None
    finally:
        sock.close()
    line = bytes(buffer[: buffer.index(b"\n")])
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError(f"astrid-supervisor sent a malformed answer: {line[:200]!r}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlError(f"astrid-supervisor sent a malformed answer: {line[:200]!r}")
    return answer
