"""Fuzzing the worker ↔ broker wire (DESIGN §4): the decoders of :mod:`astrid_core.wire`, then a
real broker fed random frames from a foreign DEALER, unauthenticated and authenticated.

Properties: a decoder returns a well-typed frame or raises :class:`FrameError`; the broker
answers every attributable frame (a stranger never gets ``OK``), never reports an internal error,
answers a probe sent after the garbage (no hang), and afterwards still serves a real worker and
``ping``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astrid_core import wire
from astrid_core.rpc import Method
from astrid_core.syscalls import BY_NAME, SYSCALLS
from astrid_core.wire import Answer, Call, FrameError, Hello, Invoke, Op, Reply, Shutdown, Status
from tests.conftest import copy_capsule
from tests.fuzz.strategies import msgpack_values, small_syscall_args
from tests.security.support import Peer, World, hello_info, world_fixture
from tests.syscaller import Fill

KV_GET = BY_NAME["astrid_kv_get"].index
PROBE_SEQ = 2**62

ops = st.one_of(
    st.sampled_from([s.index for s in SYSCALLS]),
    st.sampled_from([int(op) for op in Op]),
    st.integers(-(2**63), 2**64 - 1),
    msgpack_values,
)
seqs = st.one_of(
    st.integers(0, 2**16), st.just(wire.MAX_SEQ), st.integers(-(2**63), 2**64 - 1), msgpack_values
)


def _arg(value: bytes | Fill) -> bytes:
    return bytes(value) if isinstance(value, Fill) else value


#: Frames that look like calls: mostly the right shape, with random arguments.
call_frames = st.builds(
    lambda syscall, args, extra: msgpack.packb(
        [0, syscall.index, *[_arg(a) for a in args[: syscall.arity]], *extra]
    ),
    st.sampled_from(SYSCALLS),
    st.lists(small_syscall_args, min_size=3, max_size=3),
    st.lists(msgpack_values, max_size=1) | st.just([]),
)
hello_frames = st.builds(
    lambda version, info, secret: msgpack.packb([0, int(Op.HELLO), version, info, secret]),
    st.integers(-2, 3) | msgpack_values,
    st.fixed_dictionaries(
        {},
        optional={
            "capsule": st.text(max_size=12) | msgpack_values,
            "dir": st.text(max_size=20) | msgpack_values,
            "generation": st.integers(-1, 2**64 - 1) | msgpack_values,
            "pid": st.integers(-1, 2**32) | msgpack_values,
            "has_run": st.booleans() | msgpack_values,
        },
    )
    | msgpack_values,
    st.binary(max_size=40) | msgpack_values,
)
answer_frames = st.builds(
    lambda seq, status, payload: msgpack.packb([seq, int(Op.ANSWER), status, payload]),
    seqs,
    st.integers(-1, 3) | msgpack_values,
    msgpack_values,
)
array_frames = st.builds(
    lambda seq, op, rest: msgpack.packb([seq, op, *rest]),
    seqs,
    ops,
    st.lists(msgpack_values, max_size=4),
)

#: Any frame a foreign process could send.
frames = st.one_of(
    st.binary(max_size=200),
    st.lists(msgpack_values, max_size=6).map(msgpack.packb),
    array_frames,
    call_frames,
    hello_frames,
    answer_frames,
)


# --------------------------------------------------------------------------------------------
# The decoders


def _check_worker_frame(raw: bytes) -> None:
    try:
        frame = wire.decode_worker_frame(raw)
    except FrameError as exc:
        assert exc.seq is None or (type(exc.seq) is int and 0 <= exc.seq <= wire.MAX_SEQ)
        return
    if isinstance(frame, Call):
        assert len(frame.args) == frame.syscall.arity
        assert all(type(arg) is bytes for arg in frame.args)
    elif isinstance(frame, Hello):
        assert type(frame.version) is int and type(frame.secret) is bytes
        assert type(frame.info.capsule) is str and type(frame.info.generation) is int
    else:
        assert isinstance(frame, Answer)
        assert type(frame.payload) is (bytes if frame.ok else str)


@settings(max_examples=200, deadline=None)
@given(frames)
def test_the_worker_frame_decoder(raw: bytes) -> None:
    _check_worker_frame(raw)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_worker_frame_decoder_on_mutated_valid_frames(data: st.DataObject) -> None:
    syscall = data.draw(st.sampled_from(SYSCALLS))
    raw = bytearray(
        wire.encode_call(data.draw(st.integers(0, 2**40)), syscall.index, [b"ab"] * syscall.arity)
    )
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw)))
        raw[position : position + data.draw(st.integers(0, 2))] = data.draw(st.binary(max_size=3))
    _check_worker_frame(bytes(raw))


@settings(max_examples=150, deadline=None)
@given(st.one_of(frames, st.lists(msgpack_values, max_size=6).map(msgpack.packb)))
def test_the_broker_frame_decoder(raw: bytes) -> None:
    try:
        frame = wire.decode_broker_frame(raw)
    except FrameError:
        return
    assert isinstance(frame, Reply | Invoke | Shutdown)
    if isinstance(frame, Reply):
        assert type(frame.payload) is (bytes if frame.status == Status.OK else str)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100) | msgpack_values.map(msgpack.packb))
def test_the_welcome_decoder(raw: bytes) -> None:
    try:
        welcome = wire.decode_welcome(raw)
    except FrameError:
        return
    assert isinstance(welcome, dict)


def test_deeply_nested_frames_are_frame_errors() -> None:
    for depth in (100, 10_000, 1_000_000):
        raw = b"\x91" * depth + b"\xc0"  # fixarray of one element, nested
        with pytest.raises(FrameError):
            wire.decode_worker_frame(raw)
        with pytest.raises(FrameError):
            wire.decode_broker_frame(raw)
    huge = b"\xdd" + struct.pack(">I", 2**32 - 1)  # array32 announcing 4 billion items
    with pytest.raises(FrameError):
        wire.decode_worker_frame(huge)


# --------------------------------------------------------------------------------------------
# A real broker


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("wire")
    copy_capsule(capsules["syscaller"], base / "caps", name="forger")
    yield from world_fixture(
        base, capsules["syscaller"], {"syscaller": ""}, env={"ASTRID_APPROVAL_TIMEOUT_MS": "100"}
    )


@pytest.fixture(scope="module")
def stranger(world: World) -> Iterator[Peer]:
    peer = Peer(world.runtime.endpoint)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def forger(world: World) -> Iterator[Peer]:
    """A foreign process that authenticated as capsule ``forger`` (no grants) with the real
    master key: what a compromised worker could send."""
    peer = Peer(world.runtime.endpoint)
    peer.hello(world.runtime, hello_info(world.base / "caps" / "forger", "forger"))
    yield peer
    peer.close()


def _until_probe(peer: Peer, probe: bytes) -> list[object]:
    """Send ``probe`` (a kv_get with seq PROBE_SEQ) and collect every frame until its reply."""
    peer.send(probe)
    received: list[object] = []
    while True:
        frame = peer.receive_frame(10_000)
        assert frame is not None, "the broker stopped answering (no reply to the probe)"
        if isinstance(frame, Reply) and frame.seq == PROBE_SEQ:
            return received
        received.append(frame)


def _probe() -> bytes:
    return wire.encode_call(PROBE_SEQ, KV_GET, [b"probe"])


@pytest.mark.integration
@settings(max_examples=80, deadline=None)
@given(st.lists(frames, min_size=1, max_size=5))
def test_random_frames_from_a_stranger(world: World, stranger: Peer, batch: list[bytes]) -> None:
    for raw in batch:
        stranger.send(raw)
    for frame in _until_probe(stranger, _probe()):
        assert isinstance(frame, Reply), frame
        assert frame.status in (Status.ERROR, Status.REAUTH), frame
        assert not str(frame.payload).startswith("internal"), frame


@pytest.mark.integration
@settings(max_examples=100, deadline=None)
@given(st.lists(frames, min_size=1, max_size=5))
def test_random_frames_from_an_authenticated_peer(
    world: World, forger: Peer, batch: list[bytes]
) -> None:
    for raw in batch:
        forger.send(raw)
    for frame in _until_probe(forger, _probe()):
        if isinstance(frame, Invoke):  # e.g. a cron job the frames scheduled
            forger.send(wire.encode_answer(frame.seq, False, "not a real worker"))
            continue
        assert isinstance(frame, Reply), frame
        assert frame.status in (Status.OK, Status.ERROR), frame
        if frame.status == Status.ERROR:
            assert "internal broker error" not in str(frame.payload), frame


@pytest.mark.integration
def test_the_broker_still_serves_a_worker_after_the_frames(world: World, forger: Peer) -> None:
    forger.receive_frame(300)  # late answers of blocking calls, if any
    assert world.runtime.broker is not None and world.runtime.broker.process.poll() is None
    assert "syscaller" in world.client.request(Method.PING, {})["capsules"]
    calls = [("astrid_kv_set", [b"after", b"fuzz"]), ("astrid_kv_get", [b"after"])]
    assert world["syscaller"].run(calls) == [None, b"fuzz"]
