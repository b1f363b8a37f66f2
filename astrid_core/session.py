"""Session authentication and the Unix-socket wire protocol (spec/core.md §7).

The daemon writes a random :class:`SessionToken` to ``sessions/system.token`` (0o600) at boot.
A client connecting to ``sessions/system.sock`` reads that file and proves it can by sending the
token in a :class:`HandshakeRequest`; the daemon answers with a :class:`HandshakeResponse`.

Every message on the socket, handshake and IPC alike, is one frame: a 4-byte big-endian length
followed by that many bytes of UTF-8 JSON. :func:`encode_frame`, :func:`send_frame` /
:func:`recv_frame` (blocking sockets) and :func:`read_frame` / :func:`write_frame` (asyncio
streams) implement the framing; :func:`client_handshake` and :func:`server_handshake` implement
the two sides of the handshake.
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import errno
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol, Self

from astrid_core.text import strip_unicode_whitespace

__all__ = [
    "CLIENT_HANDSHAKE_TIMEOUT",
    "MAX_CLIENT_FRAME",
    "MAX_HANDSHAKE_SIZE",
    "MAX_SERVER_FRAME",
    "PROTOCOL_VERSION",
    "SERVER_HANDSHAKE_TIMEOUT",
    "SERVER_VERSION",
    "FrameError",
    "HandshakeRejected",
    "HandshakeRequest",
    "HandshakeResponse",
    "HandshakeStatus",
    "SessionToken",
    "client_handshake",
    "encode_frame",
    "peer_uid",
    "read_frame",
    "recv_frame",
    "send_frame",
    "server_handshake",
    "write_frame",
]

_log = logging.getLogger(__name__)

#: Version of the handshake and IPC format; the server requires an exact match.
PROTOCOL_VERSION: Final = 1
#: ``server_version`` sent in every :class:`HandshakeResponse`: the reference's astrid-core version.
SERVER_VERSION: Final = "0.2.0"

#: Largest handshake frame (request or response) either side accepts.
MAX_HANDSHAKE_SIZE: Final = 4096
#: Largest IPC frame the server accepts from a client.
MAX_SERVER_FRAME: Final = 10 * 1024 * 1024
#: Largest IPC frame a client accepts from the server.
MAX_CLIENT_FRAME: Final = 50 * 1024 * 1024

#: Per-step timeouts of the handshake, in seconds.
SERVER_HANDSHAKE_TIMEOUT: Final = 5.0
CLIENT_HANDSHAKE_TIMEOUT: Final = 10.0

_TOKEN_BYTES = 32
_TOKEN_HEX_LEN = 2 * _TOKEN_BYTES
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_HEADER = struct.Struct(">I")
_MAX_U8 = 0xFF

StrPath = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------
# Session token


class SessionToken:
    """A 32-byte secret shared by the daemon and its local clients.

    The bytes are never exposed except through :meth:`to_hex`. ``repr()`` is redacted. There is
    deliberately no value equality: ``==`` and ``!=`` raise :class:`TypeError` (so a timing-unsafe
    comparison cannot slip in) and the token is unhashable; compare with :meth:`ct_eq`. It cannot
    be pickled or copied either, so the secret does not leave the process by accident.
    """

    __slots__ = ("_secret",)

    _secret: bytes

    def __init__(self, secret: bytes) -> None:
        """Wrap 32 raw bytes; prefer :meth:`generate`, :meth:`from_hex`, :meth:`read_from_file`."""
        if len(secret) != _TOKEN_BYTES:
            raise ValueError(f"session token must be {_TOKEN_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> Self:
        """A new token from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(_TOKEN_BYTES))

    def to_hex(self) -> str:
        """The 64 lower-case hex digits of the token."""
        return self._secret.hex()

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse 64 hex digits (either case; no whitespace allowed).

        Raises :class:`ValueError` with ``session token hex must be 64 chars, got <n>`` when the
        UTF-8 length ``n`` is wrong, or ``invalid hex digit: 0x<byte>`` naming the first byte that
        is not a hex digit (the first UTF-8 byte of a non-ASCII character).
        """
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) != _TOKEN_HEX_LEN:
            raise ValueError(f"session token hex must be {_TOKEN_HEX_LEN} chars, got {len(raw)}")
        for byte in raw:
            if byte not in _HEX_DIGITS:
                raise ValueError(f"invalid hex digit: 0x{byte:02x}")
        return cls(binascii.unhexlify(raw))

    def write_to_file(self, path: StrPath) -> None:
        """Atomically write the hex token to ``path`` with mode 0o600 and no trailing newline.

        The token goes to ``path.with_suffix(".<pid>.tmp")``, created with mode 0o600 (so there is
        no window where it is readable by others), is fsynced, then renamed over ``path``. The temp
        file is removed if anything fails. The parent directory must exist. The temp file is
        opened with ``O_NOFOLLOW``, so a symlink planted at its name makes the write fail.
        """
        target = Path(path)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                view = memoryview(self.to_hex().encode("ascii"))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise

    @classmethod
    def read_from_file(cls, path: StrPath) -> Self:
        """Read a token written by :meth:`write_to_file`.

        The file must be UTF-8; surrounding Unicode whitespace (a trailing newline, say) is
        ignored. Raises :class:`OSError` if the file cannot be read and :class:`ValueError` if it
        does not hold a token.
        """
        text = Path(path).read_bytes().decode("utf-8")
        return cls.from_hex(strip_unicode_whitespace(text))

    def ct_eq(self, other: SessionToken) -> bool:
        """Constant-time comparison of the two tokens' bytes."""
        return hmac.compare_digest(self._secret, other._secret)

    def __repr__(self) -> str:
        return "SessionToken([REDACTED])"

    def __eq__(self, other: object) -> bool:
        raise TypeError("SessionToken has no == operator; use ct_eq()")

    def __ne__(self, other: object) -> bool:
        raise TypeError("SessionToken has no != operator; use ct_eq()")

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("SessionToken cannot be pickled")


# ---------------------------------------------------------------------------------------------
# Handshake messages


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _JsonObject(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs, so duplicates can be detected."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON number: {name}")


def _load_object(
    data: str | bytes | bytearray,
    what: str,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Parse ``data`` as one JSON object and return its known fields.

    Like serde_json: input bytes must be UTF-8, ``NaN``/``Infinity`` are not JSON, a known field
    given twice is an error, a missing required field is an error, unknown keys are ignored.
    """
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    try:
        parsed = json.loads(text, object_pairs_hook=_JsonObject, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    if not isinstance(parsed, _JsonObject):
        raise ValueError(f"{what} must be a JSON object")
    known = frozenset(required) | frozenset(optional)
    result: dict[str, Any] = {}
    for key, value in parsed:
        if key in known:
            if key in result:
                raise ValueError(f"{what}: duplicate field {key!r}")
            result[key] = value
    for key in required:
        if key not in result:
            raise ValueError(f"{what}: missing field {key!r}")
    return result


def _check_u8(what: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: {name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= _MAX_U8:
        raise ValueError(f"{what}: {name} must be in 0..255, got {value}")
    return value


def _check_str(what: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: {name} must be a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """First frame from a client: ``{"token","protocol_version","client_version"}``.

    ``token`` is the hex token exactly as sent (it is parsed by the server). ``repr()`` redacts it.
    """

    token: str
    protocol_version: int
    client_version: str

    def __post_init__(self) -> None:
        _check_str("HandshakeRequest", "token", self.token)
        _check_u8("HandshakeRequest", "protocol_version", self.protocol_version)
        _check_str("HandshakeRequest", "client_version", self.client_version)

    def __repr__(self) -> str:
        return (
            f"HandshakeRequest(token=[REDACTED], protocol_version={self.protocol_version!r}, "
            f"client_version={self.client_version!r})"
        )

    def to_json(self) -> str:
        """Compact JSON, fields in wire order."""
        return _dumps(
            {
                "token": self.token,
                "protocol_version": self.protocol_version,
                "client_version": self.client_version,
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes | bytearray) -> Self:
        """Parse and validate a request; raises :class:`ValueError` on any problem.

        All three fields are required; ``protocol_version`` must be an integer in 0..255 (a JSON
        float such as ``1.0`` or a boolean is rejected); unknown keys are ignored.
        """
        what = "HandshakeRequest"
        obj = _load_object(data, what, ("token", "protocol_version", "client_version"))
        return cls(
            token=_check_str(what, "token", obj["token"]),
            protocol_version=_check_u8(what, "protocol_version", obj["protocol_version"]),
            client_version=_check_str(what, "client_version", obj["client_version"]),
        )


class HandshakeStatus(enum.StrEnum):
    """Outcome of a handshake, ``"ok"`` or ``"error"`` on the wire."""

    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """The daemon's answer: ``{"status","protocol_version","server_version"[,"reason"]}``.

    ``reason`` is omitted from the JSON when it is ``None``.
    """

    status: HandshakeStatus
    protocol_version: int
    server_version: str
    reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, HandshakeStatus):
            raise ValueError(f"HandshakeResponse: invalid status {self.status!r}")
        _check_u8("HandshakeResponse", "protocol_version", self.protocol_version)
        _check_str("HandshakeResponse", "server_version", self.server_version)
        if self.reason is not None:
            _check_str("HandshakeResponse", "reason", self.reason)

    @classmethod
    def ok(cls) -> Self:
        """A successful response from this server."""
        return cls(HandshakeStatus.OK, PROTOCOL_VERSION, SERVER_VERSION)

    @classmethod
    def error(cls, reason: str) -> Self:
        """A rejection from this server, with a human-readable reason."""
        return cls(HandshakeStatus.ERROR, PROTOCOL_VERSION, SERVER_VERSION, reason)

    def is_ok(self) -> bool:
        """Whether the handshake succeeded."""
        return self.status is HandshakeStatus.OK

    def to_json(self) -> str:
        """Compact JSON, fields in wire order, ``reason`` only when set."""
        obj: dict[str, Any] = {
            "status": self.status.value,
            "protocol_version": self.protocol_version,
            "server_version": self.server_version,
        }
        if self.reason is not None:
            obj["reason"] = self.reason
        return _dumps(obj)

    @classmethod
    def from_json(cls, data: str | bytes | bytearray) -> Self:
        """Parse and validate a response; raises :class:`ValueError` on any problem.

        ``reason`` may be missing or ``null``; the other fields are required.
        """
        what = "HandshakeResponse"
        obj = _load_object(
            data, what, ("status", "protocol_version", "server_version"), ("reason",)
        )
        reason = obj.get("reason")
        if reason is not None:
            reason = _check_str(what, "reason", reason)
        status = obj["status"]
        if not isinstance(status, str):
            raise ValueError(f"{what}: invalid status {status!r}")
        try:
            parsed_status = HandshakeStatus(status)
        except ValueError:
            raise ValueError(f"{what}: invalid status {status!r}") from None
        return cls(
            status=parsed_status,
            protocol_version=_check_u8(what, "protocol_version", obj["protocol_version"]),
            server_version=_check_str(what, "server_version", obj["server_version"]),
            reason=reason,
        )


# ---------------------------------------------------------------------------------------------
# Framing


class FrameError(ValueError):
    """A frame is malformed or larger than the receiver allows."""


def _check_frame_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {max_size} bytes")


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One frame: the 4-byte big-endian payload length, then the payload."""
    size = len(payload)
    if size > 0xFFFF_FFFF:
        raise FrameError(f"frame payload of {size} bytes does not fit a 32-bit length")
    return _HEADER.pack(size) + bytes(payload)


def send_frame(
    sock: socket.socket, payload: bytes | bytearray | memoryview, timeout: float | None = None
) -> None:
    """Send one frame on a blocking socket.

    With ``timeout``, the whole frame must be sent within that many seconds (the socket's timeout
    is left at that value); otherwise the socket's own timeout applies.
    """
    if timeout is not None:
        sock.settimeout(timeout)
    sock.sendall(encode_frame(payload))


def _recv_exactly(sock: socket.socket, size: int, what: str, timeout: float | None) -> bytes:
    """Receive exactly ``size`` bytes; with ``timeout``, all of them within that many seconds."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while received < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out reading {what}")
            sock.settimeout(remaining)
        count = sock.recv_into(view[received:])
        if count == 0:
            raise ConnectionError(
                f"connection closed while reading {what} ({received} of {size} bytes)"
            )
        received += count
    return bytes(buffer)


def recv_frame(sock: socket.socket, max_size: int, timeout: float | None = None) -> bytes:
    """Receive one frame's payload from a blocking socket.

    Raises :class:`FrameError` when the announced length exceeds ``max_size`` (the payload is not
    read), :class:`ConnectionError` when the peer closes the connection first, and
    :class:`TimeoutError` on a timeout. With ``timeout``, the length prefix and the payload each
    get that many seconds; otherwise the socket's own timeout applies to every ``recv``.
    """
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size, "frame length", timeout))
    _check_frame_size(size, max_size)
    return _recv_exactly(sock, size, "frame payload", timeout)


async def read_frame(
    reader: asyncio.StreamReader, max_size: int, timeout: float | None = None
) -> bytes:
    """Read one frame's payload from an asyncio stream.

    Raises :class:`FrameError` when the announced length exceeds ``max_size`` (the payload is not
    read), :class:`ConnectionError` when the stream ends first, and :class:`TimeoutError` when
    ``timeout`` is given and the length prefix or the payload takes longer than that.
    """
    async with asyncio.timeout(timeout):
        header = await _read_exactly(reader, _HEADER.size, "frame length")
    (size,) = _HEADER.unpack(header)
    _check_frame_size(size, max_size)
    async with asyncio.timeout(timeout):
        return await _read_exactly(reader, size, "frame payload")


async def _read_exactly(reader: asyncio.StreamReader, size: int, what: str) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError(
            f"connection closed while reading {what} ({len(exc.partial)} of {size} bytes)"
        ) from None


async def write_frame(
    writer: asyncio.StreamWriter,
    payload: bytes | bytearray | memoryview,
    timeout: float | None = None,
) -> None:
    """Write one frame to an asyncio stream and wait until it is flushed (within ``timeout``)."""
    writer.write(encode_frame(payload))
    async with asyncio.timeout(timeout):
        await writer.drain()


# ---------------------------------------------------------------------------------------------
# Handshake


class HandshakeRejected(Exception):
    """The daemon answered the handshake with ``status == "error"``."""

    def __init__(self, response: HandshakeResponse) -> None:
        self.response = response
        self.reason = response.reason
        super().__init__(f"Daemon rejected connection: {response.reason or 'unknown error'}")


def client_handshake(
    sock: socket.socket, token: SessionToken, client_version: str
) -> HandshakeResponse:
    """Authenticate a connected blocking socket to the daemon (client side, spec §7 steps 15-17).

    Sends the token at :data:`PROTOCOL_VERSION`, allowing 10 s for each step, and reads a response
    of at most :data:`MAX_HANDSHAKE_SIZE` bytes. The server's versions are not checked. The
    socket's original timeout is restored afterwards.

    Raises :class:`HandshakeRejected` if the daemon refuses, :class:`FrameError` or
    :class:`ValueError` for a malformed response, and :class:`ConnectionError` /
    :class:`TimeoutError` when the connection fails.
    """
    request = HandshakeRequest(
        token=token.to_hex(), protocol_version=PROTOCOL_VERSION, client_version=client_version
    )
    original_timeout = sock.gettimeout()
    try:
        send_frame(sock, request.to_json().encode("utf-8"), timeout=CLIENT_HANDSHAKE_TIMEOUT)
        payload = recv_frame(sock, MAX_HANDSHAKE_SIZE, timeout=CLIENT_HANDSHAKE_TIMEOUT)
    finally:
        sock.settimeout(original_timeout)
    response = HandshakeResponse.from_json(payload)
    if not response.is_ok():
        raise HandshakeRejected(response)
    return response


def _version_mismatch_reason(client_version: int) -> str:
    return (
        f"Protocol version mismatch (client={client_version}, server={PROTOCOL_VERSION}). "
        "Restart the daemon with `astrid daemon restart`."
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(SERVER_HANDSHAKE_TIMEOUT):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        pass


async def server_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: SessionToken
) -> bool:
    """Authenticate a freshly accepted client (server side, spec §7 steps 8-11).

    Returns ``True`` when the client presented ``token`` at :data:`PROTOCOL_VERSION`; the ``ok``
    response has then been sent and the stream is ready for IPC frames. Otherwise returns
    ``False`` after closing ``writer``:

    * a frame over :data:`MAX_HANDSHAKE_SIZE`, a request that does not parse, a timeout (5 s per
      read or write step) or a broken connection: closed without a response;
    * a different protocol version (checked first, so the reply reveals nothing about the token):
      an ``error`` response naming both versions;
    * a malformed or wrong token: an ``error`` response ``authentication failed``, identical in
      both cases; the comparison is constant-time.

    The peer-credential check (step 7, see :func:`peer_uid`) is the caller's job, before this.
    """
    try:
        payload = await read_frame(reader, MAX_HANDSHAKE_SIZE, timeout=SERVER_HANDSHAKE_TIMEOUT)
        request = HandshakeRequest.from_json(payload)
    except (ValueError, OSError, TimeoutError) as exc:  # FrameError and JSON errors included
        _log.debug("dropping client before the handshake: %s", exc)
        await _close(writer)
        return False

    if request.protocol_version != PROTOCOL_VERSION:
        response = HandshakeResponse.error(_version_mismatch_reason(request.protocol_version))
        _log.warning(
            "rejecting client: protocol version %d, expected %d",
            request.protocol_version,
            PROTOCOL_VERSION,
        )
    else:
        try:
            presented: SessionToken | None = SessionToken.from_hex(request.token)
        except ValueError:
            presented = None
        if presented is not None and presented.ct_eq(token):
            response = HandshakeResponse.ok()
        else:
            response = HandshakeResponse.error("authentication failed")
            _log.warning("rejecting client: authentication failed")

    try:
        await write_frame(
            writer, response.to_json().encode("utf-8"), timeout=SERVER_HANDSHAKE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        _log.debug("could not send the handshake response: %s", exc)
        await _close(writer)
        return False

    if not response.is_ok():
        await _close(writer)
        return False
    _log.info("client authenticated (client_version=%r)", request.client_version[:64])
    return True


# ---------------------------------------------------------------------------------------------
# Peer credentials


class _SupportsGetsockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


_UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


def peer_uid(sock: _SupportsGetsockopt) -> int:
    """The effective UID of the process at the other end of a connected Unix socket.

    Uses ``SO_PEERCRED`` (Linux). ``sock`` may be a :class:`socket.socket` or the transport socket
    of an asyncio stream (``writer.get_extra_info("socket")``). Raises :class:`OSError` (as for
    a failed ``getsockopt``; ``ENOPROTOOPT`` where ``SO_PEERCRED`` does not exist).
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        raise OSError(errno.ENOPROTOOPT, "SO_PEERCRED is not available on this platform")
    raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)
