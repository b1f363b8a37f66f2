"""The worker ↔ broker wire protocol: round trips, validation and hostile input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core import wire
from astrid_core.syscalls import BY_NAME, SYSCALLS
from astrid_core.wire import (
    Answer,
    Call,
    FrameError,
    Hello,
    HelloInfo,
    Invoke,
    Op,
    Reply,
    Shutdown,
    Status,
)

INFO = HelloInfo("counter", "/capsules/counter", 3, 4242, True)
KEY = b"k" * 32


def test_call_round_trip() -> None:
    syscall = BY_NAME["astrid_kv_set"]
    frame = wire.decode_worker_frame(wire.encode_call(7, syscall.index, [b"key", b"\x00\xff"]))
    assert frame == Call(7, syscall, (b"key", b"\x00\xff"))


def test_every_syscall_round_trips_with_its_arity() -> None:
    for syscall in SYSCALLS:
        args = [bytes([i]) * i for i in range(syscall.arity)]
        frame = wire.decode_worker_frame(wire.encode_call(1, syscall.index, args))
        assert isinstance(frame, Call)
        assert frame.syscall is syscall and list(frame.args) == args


def test_hello_round_trip_and_secret() -> None:
    secret = wire.derive_worker_secret(KEY, INFO)
    frame = wire.decode_worker_frame(wire.encode_hello(1, INFO, secret))
    assert frame == Hello(1, wire.WIRE_VERSION, INFO, secret)
    assert wire.verify_worker_secret(KEY, INFO, secret)
    assert "secret" not in repr(frame)


@pytest.mark.parametrize(
    "claim",
    [
        HelloInfo("other", INFO.capsule_dir, INFO.generation, INFO.pid, INFO.has_run),
        HelloInfo(INFO.capsule, "/elsewhere", INFO.generation, INFO.pid, INFO.has_run),
        HelloInfo(INFO.capsule, INFO.capsule_dir, INFO.generation + 1, INFO.pid, INFO.has_run),
    ],
)
def test_a_secret_only_vouches_for_its_own_capsule_dir_and_generation(claim: HelloInfo) -> None:
    secret = wire.derive_worker_secret(KEY, INFO)
    assert not wire.verify_worker_secret(KEY, claim, secret)


def test_a_secret_from_another_master_key_is_refused() -> None:
    secret = wire.derive_worker_secret(b"x" * 32, INFO)
    assert not wire.verify_worker_secret(KEY, INFO, secret)


def test_answer_round_trips() -> None:
    assert wire.decode_worker_frame(wire.encode_answer(9, True, b"out")) == Answer(9, True, b"out")
    assert wire.decode_worker_frame(wire.encode_answer(9, False, "trap")) == Answer(
        9, False, "trap"
    )


def test_broker_frames_round_trip() -> None:
    assert wire.decode_broker_frame(wire.encode_ok(4, b"r")) == Reply(4, Status.OK, b"r")
    assert wire.decode_broker_frame(wire.encode_error(4, "no")) == Reply(4, Status.ERROR, "no")
    assert wire.decode_broker_frame(wire.encode_reply(4, Status.REAUTH, "who?")) == Reply(
        4, Status.REAUTH, "who?"
    )
    invoke = wire.decode_broker_frame(wire.encode_invoke(5, "astrid_tool_call", b"{}", {"a": 1}))
    assert invoke == Invoke(5, "astrid_tool_call", b"{}", {"a": 1})
    assert wire.decode_broker_frame(wire.encode_shutdown("bye")) == Shutdown("bye")


def test_welcome_round_trip() -> None:
    assert wire.decode_welcome(wire.encode_welcome({"capsule_uuid": "x"})) == {"capsule_uuid": "x"}
    with pytest.raises(FrameError):
        wire.decode_welcome(b"\xc1")


def test_control_ops_never_collide_with_syscall_indices() -> None:
    assert all(op < 0 for op in Op)


# --------------------------------------------------------------------------------------------
# Malformed and hostile frames: a clear error, answered when the sequence number is known.


def _error(raw: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        wire.decode_worker_frame(raw)
    return info.value


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\xc1", "not a msgpack value"),
        (b"", "not a msgpack value"),
        (msgpack.packb({"seq": 1}), "expected an array"),
        (msgpack.packb([1]), "expected an array"),
        (msgpack.packb(["1", 0, b"x"]), "sequence number"),
        (msgpack.packb([-1, 0, b"x"]), "sequence number"),
        (msgpack.packb([True, 0, b"x"]), "sequence number"),
        (msgpack.packb([2**64 - 1, 0, b"x"]), "sequence number"),
    ],
)
def test_unattributable_frames_have_no_sequence_number(raw: bytes, fragment: str) -> None:
    error = _error(raw)
    assert fragment in error.message
    assert error.seq is None


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ([5, "kv_get", b"x"], "op must be an integer"),
        ([5, 48, b"x"], "unknown op 48"),
        ([5, -99], "unknown op -99"),
        ([5, BY_NAME["astrid_kv_set"].index, b"k"], "astrid_kv_set expects 2 arguments, got 1"),
        ([5, BY_NAME["astrid_clock_ms"].index, b"x"], "astrid_clock_ms expects 0 arguments, got 1"),
        ([5, BY_NAME["astrid_kv_get"].index], "astrid_kv_get expects 1 argument, got 0"),
        (
            [5, BY_NAME["astrid_kv_get"].index, "key"],
            "argument 0 (key) of astrid_kv_get must be bytes",
        ),
        ([5, BY_NAME["astrid_kv_get"].index, None], "must be bytes, got NoneType"),
        ([5, int(Op.HELLO), 1, {}], "malformed hello"),
        ([5, int(Op.HELLO), 1, {"capsule": "x"}, b"s"], "missing"),
        ([5, int(Op.HELLO), "1", INFO.to_wire(), b"s"], "version must be an integer"),
        ([5, int(Op.HELLO), 1, dict(INFO.to_wire(), pid="1"), b"s"], "wrong field types"),
        ([5, int(Op.HELLO), 1, INFO.to_wire(), "secret"], "expected an info map and a secret"),
        ([5, int(Op.ANSWER), 0], "malformed answer"),
        ([5, int(Op.ANSWER), 3, b""], "malformed answer"),
        ([5, int(Op.ANSWER), 0, "text"], "carries bytes"),
        ([5, int(Op.ANSWER), 1, b"bytes"], "carries the error text"),
    ],
)
def test_malformed_frames_name_the_problem_and_keep_their_seq(
    frame: list[object], fragment: str
) -> None:
    error = _error(msgpack.packb(frame))
    assert fragment in error.message
    assert error.seq == 5


def test_oversized_frames_are_refused_before_decoding() -> None:
    error = _error(b"\x00" * (wire.MAX_FRAME_BYTES + 1))
    assert "exceeds" in error.message


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ([1, 3, b"x"], "unknown status 3"),
        ([1, 0, "text"], "must be bytes"),
        ([1, 1, b"bytes"], "must be text"),
        ([1, int(Op.INVOKE), "export"], "malformed invoke"),
        ([1, int(Op.INVOKE), "e", "not bytes", {}], "malformed invoke"),
        ([1, int(Op.HELLO)], "unknown op"),
    ],
)
def test_malformed_broker_frames(frame: list[object], fragment: str) -> None:
    with pytest.raises(FrameError) as info:
        wire.decode_broker_frame(msgpack.packb(frame))
    assert fragment in info.value.message


# --------------------------------------------------------------------------------------------
# Fuzzing: whatever bytes arrive, the decoders either return a frame or raise FrameError.

_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=16)
    | st.text(max_size=16)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=256))
def test_worker_decoder_never_crashes_on_random_bytes(raw: bytes) -> None:
    try:
        wire.decode_worker_frame(raw)
    except FrameError:
        pass


@given(st.lists(_msgpack_values, max_size=7))
def test_worker_decoder_never_crashes_on_random_arrays(frame: list[object]) -> None:
    try:
        decoded = wire.decode_worker_frame(msgpack.packb(frame))
    except FrameError:
        return
    assert isinstance(decoded, Call | Hello | Answer)


@given(st.lists(_msgpack_values, max_size=7))
def test_broker_decoder_never_crashes_on_random_arrays(frame: list[object]) -> None:
    try:
        wire.decode_broker_frame(msgpack.packb(frame))
    except FrameError:
        pass
