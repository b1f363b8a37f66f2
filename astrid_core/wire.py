"""The worker ↔ broker wire protocol (DESIGN §4).

Transport: one ZeroMQ DEALER per worker, one ROUTER in the broker, ``ipc://`` under a 0700
runtime directory. Every ZeroMQ message is a single frame holding one msgpack array.

Worker → broker::

    [seq, op, arg...]                   a syscall: op = index in the frozen syscall table (0..47),
                                        each arg the raw bytes the guest passed
    [seq, HELLO, version, info, secret] authentication, first frame of every connection
    [seq, ANSWER, status, payload]      the result of an invocation (seq = the broker's seq)

Broker → worker::

    [seq, status, payload]              the answer to a call or a hello: status OK with the result
                                        bytes, ERROR with the error text (the guest traps with it),
                                        REAUTH when the broker does not know this connection
    [seq, INVOKE, export, input, ctx]   run a guest export (tool call, hook, cron, lifecycle)
    [0, SHUTDOWN, reason]               stop: fail the pending call and exit

Control ops are negative so that they can never collide with a syscall index (syscall indices
only ever grow). Everything a peer sends is validated here; a frame that cannot be attributed to
a sequence number is dropped by the receiver (and logged), every other malformed frame gets an
ERROR answer naming the problem.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from astrid_core.syscalls import Syscall, by_index

#: Version of this protocol. A hello with another version is refused.
WIRE_VERSION: Final = 1

#: Largest sequence number (sequence numbers are unsigned 63-bit so msgpack keeps them as int).
MAX_SEQ: Final = 2**63 - 1

#: Largest frame either side accepts (guest memory is capped at 64 MiB; arguments cannot exceed it).
MAX_FRAME_BYTES: Final = 80 * 1024 * 1024


class Op(enum.IntEnum):
    """Control operations (negative: syscall ops are the non-negative table indices)."""

    HELLO = -1
    ANSWER = -2
    INVOKE = -3
    SHUTDOWN = -4


class Status(enum.IntEnum):
    """Status of an answer."""

    OK = 0
    ERROR = 1
    REAUTH = 2


class FrameError(ValueError):
    """A frame that breaks the protocol. ``seq`` is set when the frame can still be answered."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.seq = seq


# --------------------------------------------------------------------------------------------
# Decoded frames


@dataclass(frozen=True, slots=True)
class Call:
    """A syscall forwarded by a worker."""

    seq: int
    syscall: Syscall
    args: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """What a worker claims about itself in its hello (the secret vouches for it)."""

    capsule: str
    capsule_dir: str
    generation: int
    pid: int
    has_run: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "capsule": self.capsule,
            "dir": self.capsule_dir,
            "generation": self.generation,
            "pid": self.pid,
            "has_run": self.has_run,
        }


@dataclass(frozen=True, slots=True)
class Hello:
    seq: int
    version: int
    info: HelloInfo
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's answer to an invocation."""

    seq: int
    ok: bool
    payload: bytes | str


WorkerFrame = Call | Hello | Answer


@dataclass(frozen=True, slots=True)
class Reply:
    """The broker's answer to a call or hello."""

    seq: int
    status: Status
    payload: bytes | str


@dataclass(frozen=True, slots=True)
class Invoke:
    """The broker asks the worker to run a guest export."""

    seq: int
    export: str
    input: bytes
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Shutdown:
    reason: str


BrokerFrame = Reply | Invoke | Shutdown


# --------------------------------------------------------------------------------------------
# Encoding

_packb = msgpack.packb


def encode_call(seq: int, op: int, args: tuple[bytes, ...] | list[bytes]) -> bytes:
    return _packb([seq, op, *args])  # type: ignore[no-any-return]


def encode_hello(seq: int, info: HelloInfo, secret: bytes, version: int = WIRE_VERSION) -> bytes:
    return _packb([seq, int(Op.HELLO), version, info.to_wire(), secret])  # type: ignore[no-any-return]


def encode_answer(seq: int, ok: bool, payload: bytes | str) -> bytes:
    status = Status.OK if ok else Status.ERROR
    return _packb([seq, int(Op.ANSWER), int(status), payload])  # type: ignore[no-any-return]


def encode_reply(seq: int, status: Status, payload: bytes | str) -> bytes:
    return _packb([seq, int(status), payload])  # type: ignore[no-any-return]


def encode_ok(seq: int, result: bytes) -> bytes:
    return _packb([seq, 0, result])  # type: ignore[no-any-return]


def encode_error(seq: int, text: str) -> bytes:
    return _packb([seq, 1, text])  # type: ignore[no-any-return]


def encode_invoke(seq: int, export: str, data: bytes, context: dict[str, Any]) -> bytes:
    return _packb([seq, int(Op.INVOKE), export, data, context])  # type: ignore[no-any-return]


def encode_shutdown(reason: str) -> bytes:
    return _packb([0, int(Op.SHUTDOWN), reason])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Decoding


def _unpack(raw: bytes) -> list[Any]:
    if len(raw) > MAX_FRAME_BYTES:
        raise FrameError(f"malformed frame: {len(raw)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        frame = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise FrameError(f"malformed frame: not a msgpack value ({type(exc).__name__})") from None
    if not isinstance(frame, list) or len(frame) < 2:
        raise FrameError("malformed frame: expected an array [seq, op, ...]")
    seq = frame[0]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise FrameError("malformed frame: the sequence number must be a non-negative integer")
    if type(frame[1]) is not int:
        raise FrameError("malformed frame: the op must be an integer", seq)
    return frame


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def decode_worker_frame(raw: bytes) -> WorkerFrame:
    """Decode and validate a frame sent by a worker; raises :class:`FrameError`."""
    frame = _unpack(raw)
    seq: int = frame[0]
    op: int = frame[1]
    if op >= 0:
        syscall = by_index(op)
        if syscall is None:
            raise FrameError(f"unknown op {op}", seq)
        args = frame[2:]
        if len(args) != syscall.arity:
            raise FrameError(
                f"{syscall.name} expects {_plural(syscall.arity, 'argument')}, got {len(args)}",
                seq,
            )
        for position, arg in enumerate(args):
            if type(arg) is not bytes:
                raise FrameError(
                    f"argument {position} ({syscall.params[position]}) of {syscall.name} "
                    f"must be bytes, got {type(arg).__name__}",
                    seq,
                )
        return Call(seq, syscall, tuple(args))
    if op == Op.HELLO:
        return _decode_hello(seq, frame)
    if op == Op.ANSWER:
        if len(frame) != 4 or frame[2] not in (Status.OK, Status.ERROR):
            raise FrameError("malformed answer: expected [seq, ANSWER, 0|1, payload]", seq)
        ok = frame[2] == Status.OK
        payload = frame[3]
        if ok and type(payload) is not bytes:
            raise FrameError("malformed answer: a successful answer carries bytes", seq)
        if not ok and type(payload) is not str:
            raise FrameError("malformed answer: a failed answer carries the error text", seq)
        return Answer(seq, ok, payload)
    raise FrameError(f"unknown op {op}", seq)


def _decode_hello(seq: int, frame: list[Any]) -> Hello:
    if len(frame) != 5:
        raise FrameError("malformed hello: expected [seq, HELLO, version, info, secret]", seq)
    version, info, secret = frame[2], frame[3], frame[4]
    if type(version) is not int:
        raise FrameError("malformed hello: the version must be an integer", seq)
    if not isinstance(info, dict) or type(secret) is not bytes:
        raise FrameError("malformed hello: expected an info map and a secret", seq)
    try:
        capsule = info["capsule"]
        capsule_dir = info["dir"]
        generation = info["generation"]
        pid = info["pid"]
        has_run = info["has_run"]
    except KeyError as missing:
        raise FrameError(f"malformed hello: missing {missing}", seq) from None
    if not (
        type(capsule) is str
        and type(capsule_dir) is str
        and type(generation) is int
        and type(pid) is int
        and type(has_run) is bool
    ):
        raise FrameError("malformed hello: wrong field types", seq)
    return Hello(seq, version, HelloInfo(capsule, capsule_dir, generation, pid, has_run), secret)


def decode_broker_frame(raw: bytes) -> BrokerFrame:
    """Decode and validate a frame sent by the broker; raises :class:`FrameError`."""
    frame = _unpack(raw)
    seq: int = frame[0]
    op: int = frame[1]
    if op >= 0:
        if op not in (Status.OK, Status.ERROR, Status.REAUTH) or len(frame) != 3:
            raise FrameError(f"malformed reply: unknown status {op}", seq)
        status = Status(op)
        payload = frame[2]
        if status == Status.OK and type(payload) is not bytes:
            raise FrameError("malformed reply: a result must be bytes", seq)
        if status != Status.OK and type(payload) is not str:
            raise FrameError("malformed reply: an error must be text", seq)
        return Reply(seq, status, payload)
    if op == Op.INVOKE:
        if (
            len(frame) != 5
            or type(frame[2]) is not str
            or type(frame[3]) is not bytes
            or not isinstance(frame[4], dict)
        ):
            raise FrameError("malformed invoke: expected [seq, INVOKE, export, input, ctx]", seq)
        return Invoke(seq, frame[2], frame[3], frame[4])
    if op == Op.SHUTDOWN:
        reason = frame[2] if len(frame) > 2 and type(frame[2]) is str else "shutdown"
        return Shutdown(reason)
    raise FrameError(f"unknown op {op}", seq)


def encode_welcome(welcome: dict[str, Any]) -> bytes:
    """The payload of a successful hello reply: a msgpack map (e.g. ``capsule_uuid``)."""
    return _packb(welcome)  # type: ignore[no-any-return]


def decode_welcome(payload: bytes) -> dict[str, Any]:
    try:
        welcome = msgpack.unpackb(payload, raw=False)
    except Exception as exc:
        raise FrameError(f"malformed welcome ({type(exc).__name__})") from None
    if not isinstance(welcome, dict):
        raise FrameError("malformed welcome: not a map")
    return welcome


# --------------------------------------------------------------------------------------------
# Worker secrets


def derive_worker_secret(master_key: bytes, info: HelloInfo) -> bytes:
    """The secret a worker presents in its hello.

    The supervisor derives it before forking the worker and hands it over in the child's memory
    (never through the environment); the broker, which holds the same master key, recomputes it
    from the hello's claims. A worker can therefore only authenticate as the capsule, directory
    and generation it was started for.
    """
    message = "\0".join(
        ("astrid-worker", info.capsule, info.capsule_dir, str(info.generation))
    ).encode()
    return hmac.new(master_key, message, hashlib.sha256).digest()


def verify_worker_secret(master_key: bytes, info: HelloInfo, secret: bytes) -> bool:
    return hmac.compare_digest(derive_worker_secret(master_key, info), secret)
