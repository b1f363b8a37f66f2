"""A capsule's Unix sockets: its listeners and accepted streams (syscalls.md §2.6, DESIGN §6.2).

A capsule may bind a real listener at every path its manifest's ``net_bind`` entries name
(:func:`socket_entry_path`). Binding follows the socket rules of core.md §7: the path length
limit, a symlink at the path removed (never followed), a live socket refused, a stale one
replaced, the directories it creates 0700, the socket 0600. Every accepted peer must run under
the broker's effective UID and pass the session-token handshake (the token of
``sessions/system.token``) before it becomes a stream; streams carry length-prefixed frames.

Listeners and streams belong to the capsule's session: when it ends they are closed (no
``client.v1.disconnect`` events then, as in the reference), the socket files removed, and a
pending accept, read or write ends at once (accept and write with ``capsule unloading``, read
with an empty result).

Error texts the reference does not define (all traps):

* ``security denied net_bind: capsule '{id}' denied: socket path '{path}' not declared in
  manifest``: a bind path outside the capsule's ``net_bind`` entries;
* ``socket path {path} is {n} bytes long, exceeding the platform limit of 107 bytes``;
* ``cannot bind {path}: the path exists and is not a socket``;
* ``cannot bind {path}: another listener is running on this socket``;
* ``cannot check the existing socket {path}: {os error}``;
* ``cannot create socket directory {dir}: {os error}``, ``cannot bind {path}: {os error}``;
* ``Invalid listener handle``, ``Listener handle not found`` (a non-empty listener argument of
  accept/poll_accept that is not a u64, or names no listener of the capsule);
* ``session token unavailable: {error}``: the broker's token file cannot be read.

OS errors read like Rust's ``io::Error``: ``Broken pipe (os error 32)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from astrid_core.session import SessionToken, peer_uid, server_handshake
from broker.bus import BusMessage
from broker.errors import SyscallError
from broker.limits import MAX_GUEST_PAYLOAD_LEN
from broker.sessions import CapsuleSession, SessionExtension

log = logging.getLogger("astrid.broker")

__all__ = [
    "ACCEPT_BACKLOG",
    "CONNECTED_TOPIC",
    "DISCONNECT_TOPIC",
    "HEADER_WAIT",
    "MAX_ACTIVE_STREAMS",
    "MAX_FRAME",
    "MAX_SOCKET_PATH",
    "NO_LISTENER",
    "PAYLOAD_TIMEOUT_BASE_MS",
    "POLL_ACCEPT_WAIT",
    "UNIX_SCHEME",
    "CapsuleNet",
    "Listener",
    "Stream",
    "Unloading",
    "allowed_socket_paths",
    "os_error_text",
    "socket_entry_path",
]

#: Authenticated streams a capsule may hold at once.
MAX_ACTIVE_STREAMS = 8
#: Largest frame read or written on a stream.
MAX_FRAME = MAX_GUEST_PAYLOAD_LEN
#: How long ``net_read`` waits for a frame's length prefix before answering "no data yet".
HEADER_WAIT = 0.05
#: A frame's payload must arrive within this many ms plus one ms per KiB.
PAYLOAD_TIMEOUT_BASE_MS = 5000
#: How long ``net_poll_accept`` waits for a connection.
POLL_ACCEPT_WAIT = 0.01
#: ``sun_path`` holds 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Pending connections a listener queues.
ACCEPT_BACKLOG = 128
#: The scheme of a ``net_bind`` entry naming an absolute socket path.
UNIX_SCHEME = "unix://"

CONNECTED_TOPIC = "client.v1.connected"
DISCONNECT_TOPIC = "client.v1.disconnect"
NO_LISTENER = "No CLI Socket Listener available in HostState"

_U64_MAX = 2**64 - 1
_HEADER_SIZE = 4
#: StreamReader buffer limit (flow control only; frames of any allowed size are read).
_READ_LIMIT = 1024 * 1024


class Unloading(Exception):
    """The capsule's session ended while a call was waiting."""


def os_error_text(exc: BaseException) -> str:
    """An error as Rust's ``io::Error`` displays it: ``<strerror> (os error <n>)``."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return f"{os.strerror(code)} (os error {code})"
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Which paths a capsule may bind


def socket_entry_path(entry: str, home_root: Path) -> Path | None:
    """The socket path a ``net_bind`` entry (or a bind argument) names, or None.

    ``unix://<absolute path>`` and a bare absolute path name that path; a relative path (bare or
    after ``unix://``) is relative to ``home_root`` (``$ASTRID_HOME``). Duplicate slashes, ``.``
    components and a trailing slash are ignored. An empty entry, another scheme, a NUL byte or a
    ``..`` component names nothing.
    """
    text = entry.removeprefix(UNIX_SCHEME)
    if not text or "\0" in text or (text == entry and "://" in entry):
        return None
    if ".." in text.split("/"):
        return None
    path = Path(os.path.normpath(text if text.startswith("/") else f"{home_root}/{text}"))
    return None if path == Path("/") else path


def allowed_socket_paths(entries: Iterable[str], home_root: Path) -> tuple[Path, ...]:
    """The socket paths ``net_bind`` entries allow, in manifest order, without duplicates."""
    paths: list[Path] = []
    for entry in entries:
        path = socket_entry_path(entry, home_root)
        if path is not None and path not in paths:
            paths.append(path)
    return tuple(paths)


# --------------------------------------------------------------------------------------------
# Listener files


def _check_failed(path: Path, exc: BaseException) -> SyscallError:
    return SyscallError(f"cannot check the existing socket {path}: {os_error_text(exc)}")


async def _clear_path(path: Path) -> None:
    """Make room for a new socket at ``path`` (core.md §7 boot steps 2 and 3)."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there (binding reports a bad directory)
    except OSError as exc:
        raise _check_failed(path, exc) from None
    if stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the link itself, never its target
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SyscallError(f"cannot bind {path}: the path exists and is not a socket")
    loop = asyncio.get_running_loop()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        async with asyncio.timeout(1.0):
            await loop.sock_connect(probe, str(path))
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: nobody listens on it
        return
    except FileNotFoundError:
        return
    except OSError as exc:  # TimeoutError included: something holds it but does not answer
        raise _check_failed(path, exc) from None
    finally:
        probe.close()
    raise SyscallError(f"cannot bind {path}: another listener is running on this socket")


def _make_parents(directory: Path) -> None:
    """Create the missing directories of ``directory``, each 0700 (existing ones untouched)."""
    missing: list[Path] = []
    current = directory
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # the umask may have removed nothing, but never adds
        except FileExistsError:
            continue
        except OSError as exc:
            raise SyscallError(
                f"cannot create socket directory {path}: {os_error_text(exc)}"
            ) from None


def _restrict_socket(path: Path) -> tuple[int, int]:
    """chmod the socket file at ``path`` to 0600 without following a symlink put there.

    Returns the file's ``(st_dev, st_ino)`` so it is removed later only if it is still ours.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode):
            raise OSError(errno.ENOTSOCK, os.strerror(errno.ENOTSOCK))
        os.chmod(f"/proc/self/fd/{fd}", 0o600)
    finally:
        os.close(fd)
    return info.st_dev, info.st_ino


class Listener:
    """A bound, listening Unix socket of one capsule."""

    def __init__(self, handle: int, path: Path, sock: socket.socket, file_id: tuple[int, int]):
        self.handle = handle
        self.path = path
        self.sock = sock
        self.closed = False
        self._file_id = file_id
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._waiters: set[asyncio.Future[None]] = set()
        self._armed = False

    @classmethod
    async def bind(cls, handle: int, path: Path) -> Listener:
        size = len(os.fsencode(path))
        if size > MAX_SOCKET_PATH:
            raise SyscallError(
                f"socket path {path} is {size} bytes long, exceeding the platform limit of "
                f"{MAX_SOCKET_PATH} bytes"
            )
        await _clear_path(path)
        _make_parents(path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(str(path))
            try:
                file_id = _restrict_socket(path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            sock.listen(ACCEPT_BACKLOG)
        except OSError as exc:
            sock.close()
            raise SyscallError(f"cannot bind {path}: {os_error_text(exc)}") from None
        log.info("listening on %s", path)
        return cls(handle, path, sock, file_id)

    def _wake(self) -> None:
        self._disarm()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _disarm(self) -> None:
        if self._armed:
            self._armed = False
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                self._loop.remove_reader(self._fd)

    async def next_connection(self, timeout: float | None) -> socket.socket | None:
        """The next pending connection, waiting up to ``timeout`` s (None: without limit).

        Returns None on timeout; raises :class:`Unloading` if the listener is closed first, and
        ``OSError`` when accepting fails.
        """
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.closed:
                raise Unloading
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                pass
            else:
                return conn
            if deadline is not None and loop.time() >= deadline:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            if not self._armed:
                loop.add_reader(self._fd, self._wake)
                self._armed = True
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)
                if not self._waiters:
                    self._disarm()

    def close(self) -> None:
        """Stop listening, remove the socket file (if it is still ours), wake every waiter."""
        if self.closed:
            return
        self.closed = True
        self._disarm()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Unloading())
        self.sock.close()
        try:
            info = os.lstat(self.path)
        except OSError:
            return
        if (info.st_dev, info.st_ino) == self._file_id:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


# --------------------------------------------------------------------------------------------
# Streams


@dataclass(eq=False)
class Stream:
    """An authenticated connection: length-prefixed frames both ways."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    read_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def close(self, graceful: bool = True) -> None:
        """Close the connection, flushing what is still buffered first.

        With ``graceful=False`` buffered data is discarded instead, so a peer that stopped
        reading cannot keep the connection (and a blocked write) alive.
        """
        transport = self.writer.transport
        if graceful or transport.get_write_buffer_size() == 0:
            transport.close()
        else:
            transport.abort()

    def io_error_text(self, exc: BaseException) -> str:
        """The OS error behind a failed read or write (asyncio may report a generic one)."""
        cause = self.reader.exception()
        if isinstance(cause, OSError) and cause.errno:
            return os_error_text(cause)
        return os_error_text(exc)


# --------------------------------------------------------------------------------------------
# The extension


class CapsuleNet(SessionExtension):
    """The listeners and streams of one capsule session."""

    def __init__(self, session: CapsuleSession) -> None:
        super().__init__(session)
        self.listeners: dict[int, Listener] = {}
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self._next_listener = 1
        self._next_stream = 1
        self._handshaking: set[asyncio.StreamWriter] = set()

    # -- listeners ---------------------------------------------------------------------------

    def allowed_paths(self) -> tuple[Path, ...]:
        return allowed_socket_paths(
            self.session.manifest.capabilities.net_bind, self.session.kernel.home.root()
        )

    def bind_path(self, requested: str) -> Path:
        """The path a bind argument names, if the manifest allows it (empty: the first one)."""
        allowed = self.allowed_paths()
        if not requested:
            if allowed:
                return allowed[0]
        else:
            path = socket_entry_path(requested, self.session.kernel.home.root())
            if path is not None and path in allowed:
                return path
        raise SyscallError(
            f"security denied net_bind: capsule '{self.session.name}' denied: socket path "
            f"'{requested}' not declared in manifest"
        )

    async def bind(self, path: Path) -> int:
        """Listen at ``path``; returns the listener's handle (the same one if already bound)."""
        for handle, listener in self.listeners.items():
            if listener.path == path:
                return handle
        if self.closed:
            raise Unloading
        handle = self._next_listener
        listener = await Listener.bind(handle, path)
        if self.closed:
            listener.close()
            raise Unloading
        self._next_listener += 1
        self.listeners[handle] = listener
        return handle

    def listener(self, handle: int | None) -> Listener:
        """The listener ``handle`` names; None means the capsule's only (first bound) one."""
        if handle is None:
            if not self.listeners:
                raise SyscallError(NO_LISTENER)
            return next(iter(self.listeners.values()))
        listener = self.listeners.get(handle)
        if listener is None:
            raise SyscallError("Listener handle not found")
        return listener

    # -- accepting ---------------------------------------------------------------------------

    def check_capacity(self) -> None:
        count = len(self.streams)
        if count >= MAX_ACTIVE_STREAMS:
            raise SyscallError(f"connection cap reached ({count}/{MAX_ACTIVE_STREAMS})")

    def _token(self) -> SessionToken:
        path = self.session.kernel.home.token_path()
        try:
            return SessionToken.read_from_file(path)
        except OSError as exc:
            raise SyscallError(f"session token unavailable: {os_error_text(exc)}") from None
        except ValueError as exc:
            raise SyscallError(f"session token unavailable: {exc}") from None

    async def _authenticate(self, conn: socket.socket) -> Stream | None:
        """Check the peer's UID and run the handshake; None if the peer was dropped."""
        try:
            uid: int | None = peer_uid(conn)
        except OSError:
            uid = None
        if uid != os.geteuid():
            log.warning(
                "capsule '%s': dropped a connection from uid %s (not ours)", self.session.name, uid
            )
            conn.close()
            return None
        try:
            token = self._token()
        except SyscallError:
            conn.close()
            raise
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=_READ_LIMIT)
        except OSError as exc:
            conn.close()
            log.warning("capsule '%s': dropped a connection: %s", self.session.name, exc)
            return None
        self._handshaking.add(writer)
        try:
            authenticated = await server_handshake(reader, writer, token)
        finally:
            self._handshaking.discard(writer)
        if self.closed:
            writer.transport.abort()
            raise Unloading
        if not authenticated:
            log.warning("capsule '%s': a client failed the handshake", self.session.name)
            return None
        return Stream(reader, writer)

    def _adopt(self, stream: Stream) -> int:
        """Register an authenticated stream and announce it; returns its id."""
        try:
            self.check_capacity()
            if self._next_stream > _U64_MAX:
                raise SyscallError("stream handle ID space exhausted")
        except SyscallError:
            stream.close()
            raise
        stream_id = self._next_stream
        self._next_stream += 1
        self.streams[stream_id] = stream
        self.session.kernel.bus.publish(
            BusMessage(CONNECTED_TOPIC, {"type": "connect"}, self.session.uuid)
        )
        return stream_id

    async def accept(self, listener: Listener) -> int:
        """Wait (without limit) for a client that passes the checks; returns its stream id.

        Raises :class:`Unloading` if the session ends first and ``SyscallError`` with the OS
        error text if the listener fails.
        """
        while True:
            try:
                conn = await listener.next_connection(None)
            except OSError as exc:
                raise SyscallError(os_error_text(exc)) from None
            assert conn is not None
            stream = await self._authenticate(conn)
            if stream is not None:
                return self._adopt(stream)

    async def poll_accept(self, listener: Listener) -> int | None:
        """Accept at most one pending client within :data:`POLL_ACCEPT_WAIT`; None otherwise."""
        if len(self.streams) >= MAX_ACTIVE_STREAMS:
            return None
        try:
            conn = await listener.next_connection(POLL_ACCEPT_WAIT)
        except OSError as exc:
            raise SyscallError(f"accept error: {os_error_text(exc)}") from None
        if conn is None:
            return None
        stream = await self._authenticate(conn)
        if stream is None:
            return None
        if len(self.streams) >= MAX_ACTIVE_STREAMS:
            stream.close()
            return None
        return self._adopt(stream)

    # -- streams -----------------------------------------------------------------------------

    def stream(self, stream_id: int) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise SyscallError("Stream handle not found")
        return stream

    async def read(self, stream_id: int) -> bytes:
        """One frame's payload; empty when no length prefix arrives within :data:`HEADER_WAIT`.

        Bytes of a prefix that arrived only in part stay buffered for the next read.
        """
        stream = self.stream(stream_id)
        reader = stream.reader
        async with stream.read_lock:
            try:
                async with asyncio.timeout(HEADER_WAIT):
                    header = await reader.readexactly(_HEADER_SIZE)
            except TimeoutError:
                return b""
            except asyncio.IncompleteReadError:
                if self.closed:
                    return b""
                raise SyscallError("socket read error: early eof") from None
            except OSError as exc:
                if self.closed:
                    return b""
                raise SyscallError(f"socket read error: {stream.io_error_text(exc)}") from None
            size = int.from_bytes(header, "big")
            if size > MAX_FRAME:
                raise SyscallError("Payload too large (max 10MB)")
            timeout = (PAYLOAD_TIMEOUT_BASE_MS + size // 1024) / 1000
            try:
                async with asyncio.timeout(timeout):
                    payload = await reader.readexactly(size)
            except TimeoutError:
                if self.closed:
                    return b""
                raise SyscallError("Payload read timed out") from None
            except asyncio.IncompleteReadError:
                if self.closed:
                    return b""
                raise SyscallError("socket payload read error: early eof") from None
            except OSError as exc:
                if self.closed:
                    return b""
                raise SyscallError(
                    f"socket payload read error: {stream.io_error_text(exc)}"
                ) from None
        return b"" if self.closed else payload

    async def write(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` as one frame and wait until it is handed to the OS."""
        stream = self.stream(stream_id)
        async with stream.write_lock:
            writer = stream.writer
            try:
                writer.write(len(data).to_bytes(_HEADER_SIZE, "big"))
                writer.write(data)
                await writer.drain()
            except (OSError, RuntimeError) as exc:
                if self.closed:
                    raise Unloading from None
                raise SyscallError(stream.io_error_text(exc)) from None
        if self.closed:
            raise Unloading

    def close_stream(self, stream_id: int) -> bool:
        """Close a stream; False if there was none with that id."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return False
        stream.close()
        self.session.kernel.bus.publish(
            BusMessage(
                DISCONNECT_TOPIC,
                {"type": "disconnect", "reason": "stream_closed"},
                self.session.uuid,
            )
        )
        return True

    # -- the end of the session --------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        listeners = list(self.listeners.values())
        self.listeners.clear()
        for listener in listeners:
            listener.close()
        for writer in list(self._handshaking):
            writer.transport.abort()
        self._handshaking.clear()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.close(graceful=False)
