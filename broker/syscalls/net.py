"""Handlers of the ``net`` syscall group: Unix-socket listeners and streams (syscalls.md §2.6).

With DESIGN §6.2 overriding the reference: ``astrid_net_bind_unix(path)`` binds a real listener
at a path the manifest's ``net_bind`` entries allow (an empty path means the first of them, the
capsule's ``ASTRID_SOCKET_PATH``) and returns its handle (decimal, from 1); an empty listener
argument of ``net_accept``/``net_poll_accept`` means the capsule's only (first bound) listener.
The state lives in :class:`broker.capsule_net.CapsuleNet`; its module docstring lists the error
texts this port adds.
"""

from __future__ import annotations

from broker.capsule_net import CapsuleNet, Listener, Unloading
from broker.errors import SyscallError, guard, utf8_error_text
from broker.gate import GateDenied
from broker.limits import MAX_GUEST_PAYLOAD_LEN, MAX_PATH_LEN
from broker.sessions import CapsuleSession

#: Largest stream or listener handle argument.
MAX_HANDLE_LEN = 1024

_U64_MAX = 2**64 - 1


def _net(session: CapsuleSession) -> CapsuleNet:
    return session.extension(CapsuleNet)


def _text(raw: bytes) -> str:
    """A string argument read like Extism's ``memory_str``: invalid UTF-8 traps."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError(utf8_error_text(raw)) from None


def _parse_u64(text: str) -> int | None:
    """Rust's ``str::parse::<u64>``: an optional ``+`` and ASCII digits; None if malformed."""
    digits = text[1:] if text.startswith("+") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(digits)
    return value if value <= _U64_MAX else None


def _stream_id(raw: bytes) -> int:
    value = _parse_u64(_text(guard(raw, MAX_HANDLE_LEN)))
    if value is None:
        raise SyscallError("Invalid stream handle")
    return value


def _listener(session: CapsuleSession, raw: bytes) -> tuple[CapsuleNet, int | None]:
    """The capsule's net state and the listener handle argument (None when empty)."""
    text = _text(guard(raw, MAX_HANDLE_LEN))
    if not text:
        return _net(session), None
    value = _parse_u64(text)
    if value is None:
        raise SyscallError("Invalid listener handle")
    return _net(session), value


async def astrid_net_bind_unix(session: CapsuleSession, path: bytes) -> bytes:
    try:
        session.gate.check_net_bind()
    except GateDenied as exc:
        raise SyscallError(f"security denied net_bind: {exc}") from None
    requested = _text(guard(path, MAX_PATH_LEN))
    net = _net(session)
    try:
        handle = await net.bind(net.bind_path(requested))
    except Unloading:
        raise SyscallError("capsule unloading") from None
    return str(handle).encode()


async def astrid_net_accept(session: CapsuleSession, listener: bytes) -> bytes:
    net, handle = _listener(session, listener)
    net.check_capacity()
    chosen: Listener = net.listener(handle)
    try:
        stream_id = await net.accept(chosen)
    except Unloading:
        raise SyscallError("capsule unloading") from None
    return str(stream_id).encode()


async def astrid_net_poll_accept(session: CapsuleSession, listener: bytes) -> bytes:
    net, handle = _listener(session, listener)
    chosen = net.listener(handle)
    try:
        stream_id = await net.poll_accept(chosen)
    except Unloading:
        return b""
    return b"" if stream_id is None else str(stream_id).encode()


async def astrid_net_read(session: CapsuleSession, stream: bytes) -> bytes:
    stream_id = _stream_id(stream)
    return await _net(session).read(stream_id)


async def astrid_net_write(session: CapsuleSession, stream: bytes, data: bytes) -> None:
    stream_id = _stream_id(stream)
    guard(data, MAX_GUEST_PAYLOAD_LEN)
    try:
        await _net(session).write(stream_id, data)
    except Unloading:
        raise SyscallError("capsule unloading") from None


def astrid_net_close_stream(session: CapsuleSession, stream: bytes) -> None:
    _net(session).close_stream(_stream_id(stream))
