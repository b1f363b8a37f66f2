"""Hostile and malformed peers on the broker's worker socket.

A foreign process (this test) connects its own DEALER to the broker's ROUTER and sends garbage,
forged hellos, unauthenticated calls, wrong arities and unknown ops. Each gets a clear error or
is dropped and logged; none crashes the broker, and a real worker keeps being served.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from astrid_core import wire
from astrid_core.syscalls import BY_NAME
from astrid_core.wire import HelloInfo, Reply, Status
from tests.harness import Runtime
from tests.syscaller import decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration


class Peer:
    """A raw DEALER connected to the broker, outside any worker."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, raw: bytes) -> None:
        self.socket.send(raw)

    def receive(self, timeout_ms: int = 3000) -> Reply | None:
        if not self.socket.poll(timeout_ms):
            return None
        frame = wire.decode_broker_frame(self.socket.recv())
        assert isinstance(frame, Reply)
        return frame

    def exchange(self, raw: bytes) -> Reply:
        self.send(raw)
        reply = self.receive()
        assert reply is not None, "the broker did not answer"
        return reply

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def worker_runtime(runtime: Runtime, capsules: dict[str, Path]) -> Iterator[Runtime]:
    runtime.start_worker(capsules["syscaller"])
    yield runtime


@pytest.fixture
def peer(runtime: Runtime) -> Iterator[Peer]:
    p = Peer(runtime.endpoint)
    yield p
    p.close()


def _still_serving(runtime: Runtime) -> None:
    client = runtime.client()
    try:
        assert "syscaller" in client.request("ping", {})["capsules"]
        script = encode_script([("astrid_kv_set", [b"k", b"v"]), ("astrid_kv_get", [b"k"])])
        output = client.call_tool("syscaller", "run", json.loads(script_tool_args(script)))
        assert decode_hex_output(output) == [None, b"v"]
    finally:
        client.close()
    assert runtime.broker is not None and runtime.broker.process.poll() is None


def _hello(
    runtime: Runtime, info: HelloInfo, key: bytes | None = None, version: int = wire.WIRE_VERSION
) -> bytes:
    secret = wire.derive_worker_secret(key or runtime.master_key, info)
    return wire.encode_hello(1, info, secret, version)


def _info(
    capsule_dir: Path, name: str = "syscaller", generation: int = 1, pid: int | None = None
) -> HelloInfo:
    return HelloInfo(name, str(capsule_dir), generation, os.getpid() if pid is None else pid, False)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1\xc1", b"garbage" * 100, msgpack.packb({"op": 1}), msgpack.packb(["x", 1])],
    ids=["empty", "invalid-msgpack", "text", "map", "string-seq"],
)
def test_unattributable_garbage_is_dropped(worker_runtime: Runtime, peer: Peer, raw: bytes) -> None:
    peer.send(raw)
    assert peer.receive(300) is None
    _still_serving(worker_runtime)


def test_multipart_messages_are_dropped(worker_runtime: Runtime, peer: Peer) -> None:
    peer.socket.send_multipart([b"a", b"b", b"c"])
    assert peer.receive(300) is None
    _still_serving(worker_runtime)


def test_an_unauthenticated_call_is_told_to_say_hello(worker_runtime: Runtime, peer: Peer) -> None:
    reply = peer.exchange(wire.encode_call(5, BY_NAME["astrid_kv_get"].index, [b"k"]))
    assert reply == Reply(5, Status.REAUTH, "not authenticated: send hello first")
    _still_serving(worker_runtime)


def test_an_answer_from_an_unauthenticated_peer_is_dropped(
    worker_runtime: Runtime, peer: Peer
) -> None:
    peer.send(wire.encode_answer(1, True, b"forged"))
    assert peer.receive(300) is None
    _still_serving(worker_runtime)


def test_a_forged_hello_with_a_guessed_secret_is_refused(
    worker_runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    info = _info(capsules["syscaller"])
    reply = peer.exchange(wire.encode_hello(1, info, b"\0" * 32))
    assert reply == Reply(1, Status.ERROR, "hello refused: invalid worker secret")
    reply = peer.exchange(_hello(worker_runtime, info, key=os.urandom(32)))
    assert reply.payload == "hello refused: invalid worker secret"
    _still_serving(worker_runtime)


def test_a_secret_for_one_capsule_does_not_open_another(
    worker_runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    genuine = _info(capsules["syscaller"], generation=7)
    secret = wire.derive_worker_secret(worker_runtime.master_key, genuine)
    claim = _info(capsules["hello-tool"], name="hello-tool", generation=7)
    reply = peer.exchange(wire.encode_hello(1, claim, secret))
    assert reply.payload == "hello refused: invalid worker secret"


def test_a_hello_with_another_wire_version_is_refused(
    worker_runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    reply = peer.exchange(
        _hello(worker_runtime, _info(capsules["syscaller"], generation=9), version=99)
    )
    assert reply.status == Status.ERROR
    assert reply.payload == "hello refused: wire version 99 is not supported (this broker speaks 1)"
    _still_serving(worker_runtime)


def test_a_stale_generation_cannot_take_over(
    worker_runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    reply = peer.exchange(_hello(worker_runtime, _info(capsules["syscaller"], generation=0)))
    assert reply.payload == "hello refused: stale generation 0 (generation 1 is running)"
    _still_serving(worker_runtime)


def test_a_hello_for_a_directory_without_that_capsule_is_refused(
    runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    info = _info(capsules["hello-tool"], name="syscaller")
    reply = peer.exchange(_hello(runtime, info))
    assert reply.status == Status.ERROR
    assert "names 'hello-tool', not 'syscaller'" in str(reply.payload)
    reply = peer.exchange(
        _hello(runtime, _info(capsules["syscaller"].parent / "nowhere", name="nowhere"))
    )
    assert "hello refused: invalid manifest" in str(reply.payload)
    reply = peer.exchange(_hello(runtime, _info(capsules["syscaller"], name="Bad_Name")))
    assert "invalid capsule id 'Bad_Name'" in str(reply.payload)


def test_a_hello_for_a_process_that_does_not_exist_is_refused(
    runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    reply = peer.exchange(_hello(runtime, _info(capsules["syscaller"], pid=2**22 + 12345)))
    assert reply.payload == f"hello refused: no process with pid {2**22 + 12345}"


def test_an_authenticated_peer_gets_wire_errors_with_its_seq(
    runtime: Runtime, peer: Peer, capsules: dict[str, Path]
) -> None:
    assert peer.exchange(_hello(runtime, _info(capsules["syscaller"]))).status == Status.OK
    kv_set = BY_NAME["astrid_kv_set"].index
    cases = [
        (msgpack.packb([11, kv_set, b"k"]), "wire error: astrid_kv_set expects 2 arguments, got 1"),
        (msgpack.packb([12, 99, b"k"]), "wire error: unknown op 99"),
        (msgpack.packb([13, -42]), "wire error: unknown op -42"),
        (
            msgpack.packb([14, kv_set, "k", b"v"]),
            "wire error: argument 0 (key) of astrid_kv_set must be bytes, got str",
        ),
        (
            msgpack.packb([15, "kv_set", b"k"]),
            "wire error: malformed frame: the op must be an integer",
        ),
    ]
    for raw, text in cases:
        seq = msgpack.unpackb(raw)[0]
        assert peer.exchange(raw) == Reply(seq, Status.ERROR, text)
    # The connection is still good for real calls.
    reply = peer.exchange(wire.encode_call(20, kv_set, [b"wire", b"ok"]))
    assert reply == Reply(20, Status.OK, b"")
    reply = peer.exchange(wire.encode_call(21, BY_NAME["astrid_kv_get"].index, [b"wire"]))
    assert reply == Reply(21, Status.OK, b"ok")
