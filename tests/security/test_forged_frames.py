"""Forged frames on the broker's worker socket, from a foreign process (DESIGN §4).

The test connects its own ZeroMQ DEALER to the broker's ROUTER: hellos with guessed secrets,
another capsule's name, an attacker's capsule directory or a stale generation; calls and answers
without a hello; a stolen routing id; answers forged for an invocation in flight. Each is refused
with its documented reply or dropped, and leaves no trace: the victim keeps its session and its
KV, and no namespace appears for the forger.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from astrid_core import rpc, wire
from astrid_core.syscalls import BY_NAME
from astrid_core.wire import Reply, Status
from tests.conftest import copy_capsule
from tests.harness import Client
from tests.security.support import (
    Peer,
    World,
    hello_info,
    namespaces,
    read_namespace,
    start_world,
    stop_world,
)
from tests.syscaller import decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

KV_SET = BY_NAME["astrid_kv_set"].index
KV_GET = BY_NAME["astrid_kv_get"].index
INVALID_SECRET = "hello refused: invalid worker secret"
REAUTH = "not authenticated: send hello first"
FORGER_NS = "capsule:forger"


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("forged")
    world = start_world(
        base,
        capsules["syscaller"],
        {"victim": ""},
        env={"ASTRID_APPROVAL_TIMEOUT_MS": "20000"},
    )
    try:
        world["victim"].run([("astrid_kv_set", [b"secret", b"victim's"])])
        # An attacker's capsule directory: a manifest granting everything.
        evil = copy_capsule(
            capsules["syscaller"],
            base / "evil",
            name="victim",
            extra_toml='[capabilities]\nfs_read = ["*"]\nfs_write = ["*"]\nhost_process = ["sh"]\n',
        )
        assert evil.is_dir()
        # A second copy the test may authenticate as (with the real master key).
        copy_capsule(capsules["syscaller"], base / "caps", name="forger")
        yield world
    finally:
        stop_world(world)


@pytest.fixture
def peer(world: World) -> Iterator[Peer]:
    p = Peer(world.runtime.endpoint)
    yield p
    p.close()


@pytest.fixture
def untouched(world: World) -> Iterator[None]:
    # (capsule:forger is written by the one test that authenticates legitimately as it.)
    before = {ns: read_namespace(world.home, ns) for ns in namespaces(world.home) - {FORGER_NS}}
    yield
    after = {ns: read_namespace(world.home, ns) for ns in namespaces(world.home) - {FORGER_NS}}
    assert after == before
    assert read_namespace(world.home, "capsule:victim")[b"secret"] == b"victim's"
    still_serving(world)


def still_serving(world: World) -> None:
    assert "victim" in world.client.request(rpc.Method.PING, {})["capsules"]
    assert world["victim"].run([("astrid_kv_get", [b"secret"])]) == [b"victim's"]
    assert world.runtime.broker is not None and world.runtime.broker.process.poll() is None


def victim_dir(world: World) -> Path:
    return world.base / "caps" / "victim"


# --------------------------------------------------------------------------------------------
# Hellos


@pytest.mark.parametrize(
    "secret",
    [b"\0" * 32, b"", b"\xff" * 32, b"x" * 31, b"y" * 33, os.urandom(32), os.urandom(64)],
    ids=["zeros", "empty", "ones", "short", "long", "random", "random-64"],
)
def test_a_forged_hello_with_a_guessed_secret(
    world: World, peer: Peer, untouched: None, secret: bytes
) -> None:
    info = hello_info(victim_dir(world), "victim", generation=2)
    assert peer.exchange(wire.encode_hello(1, info, secret)) == Reply(
        1, Status.ERROR, INVALID_SECRET
    )
    # The refused peer is still a stranger.
    assert peer.exchange(wire.encode_call(2, KV_GET, [b"secret"])) == Reply(
        2, Status.REAUTH, REAUTH
    )


def test_a_secret_from_another_master_key(world: World, peer: Peer, untouched: None) -> None:
    info = hello_info(victim_dir(world), "victim", generation=2)
    secret = wire.derive_worker_secret(os.urandom(32), info)
    assert peer.exchange(wire.encode_hello(1, info, secret)).payload == INVALID_SECRET


def test_another_capsules_name_with_its_own_valid_secret(
    world: World, peer: Peer, untouched: None
) -> None:
    """A secret is only good for the capsule, directory and generation it was made for."""
    own = hello_info(world.base / "caps" / "forger", "forger", generation=1)
    secret = wire.derive_worker_secret(world.runtime.master_key, own)
    for claim in (
        hello_info(victim_dir(world), "victim", generation=1),
        hello_info(world.base / "caps" / "forger", "victim", generation=1),
        hello_info(world.base / "caps" / "forger", "forger", generation=2),
    ):
        assert peer.exchange(wire.encode_hello(1, claim, secret)).payload == INVALID_SECRET


def test_a_hello_pointing_at_an_attackers_manifest(
    world: World, peer: Peer, untouched: None
) -> None:
    """The capsule directory is part of what the secret vouches for: a hello naming the victim
    but loading the attacker's all-granting manifest is refused."""
    evil = hello_info(world.base / "evil" / "victim", "victim", generation=2)
    genuine = hello_info(victim_dir(world), "victim", generation=2)
    secret = wire.derive_worker_secret(world.runtime.master_key, genuine)
    assert peer.exchange(wire.encode_hello(1, evil, secret)).payload == INVALID_SECRET


def test_a_stale_generation(world: World, peer: Peer, untouched: None) -> None:
    """Even a genuine secret of an earlier generation (an old worker) cannot take over."""
    stale = hello_info(victim_dir(world), "victim", generation=0)
    secret = wire.derive_worker_secret(world.runtime.master_key, stale)
    reply = peer.exchange(wire.encode_hello(1, stale, secret))
    assert reply == Reply(
        1, Status.ERROR, "hello refused: stale generation 0 (generation 1 is running)"
    )


def test_a_hello_with_another_wire_version(world: World, peer: Peer, untouched: None) -> None:
    info = hello_info(victim_dir(world), "victim", generation=2)
    secret = wire.derive_worker_secret(world.runtime.master_key, info)
    reply = peer.exchange(wire.encode_hello(1, info, secret, version=0))
    assert reply.payload == "hello refused: wire version 0 is not supported (this broker speaks 1)"


# --------------------------------------------------------------------------------------------
# Without a hello


@pytest.mark.parametrize(
    "name", ["astrid_kv_set", "astrid_kv_get", "astrid_kv_clear_prefix", "astrid_write_file"]
)
def test_calls_without_a_hello(world: World, peer: Peer, untouched: None, name: str) -> None:
    syscall = BY_NAME[name]
    args = [b"secret", b"pwned"][: syscall.arity] or []
    args += [b""] * (syscall.arity - len(args))
    assert peer.exchange(wire.encode_call(9, syscall.index, args)) == Reply(
        9, Status.REAUTH, REAUTH
    )


def test_answers_and_garbage_without_a_hello_are_dropped(
    world: World, peer: Peer, untouched: None
) -> None:
    for raw in (
        wire.encode_answer(1, True, b"forged"),
        wire.encode_answer(1, False, "forged trap"),
        b"\xc1",
        msgpack.packb({"capsule": "victim"}),
    ):
        peer.send(raw)
    assert peer.receive(500) is None


# --------------------------------------------------------------------------------------------
# Identity theft


def test_a_stolen_routing_id_cannot_hijack_a_session(world: World, untouched: None) -> None:
    """Sessions are bound to the ZeroMQ routing id; a second peer presenting the same id is
    not connected at all (the broker's ROUTER keeps the first), so it can neither act as the
    session nor read its replies."""
    owner = Peer(world.runtime.endpoint, routing_id=b"forger-routing-id")
    thief: Peer | None = None
    try:
        owner.hello(world.runtime, hello_info(world.base / "caps" / "forger", "forger"))
        assert owner.exchange(wire.encode_call(2, KV_SET, [b"mine", b"owner"])).status == Status.OK
        thief = Peer(world.runtime.endpoint, routing_id=b"forger-routing-id")
        thief.send(wire.encode_call(3, KV_SET, [b"mine", b"thief"]))
        assert thief.receive(500) is None
        assert owner.receive(300) is None  # nothing was answered on the thief's behalf either
        assert owner.exchange(wire.encode_call(4, KV_GET, [b"mine"])) == Reply(
            4, Status.OK, b"owner"
        )
    finally:
        owner.close()
        if thief is not None:
            thief.close()
    # The forger's own namespace is the only one it touched.
    assert read_namespace(world.home, "capsule:forger") == {b"mine": b"owner"}


def test_a_forged_answer_cannot_complete_an_invocation(
    world: World, peer: Peer, untouched: None
) -> None:
    """While the victim's tool call is in flight (blocked in ``astrid_request_approval``), a
    foreign peer answers every plausible invocation sequence number; the call still completes
    with the victim's own result, decided by the operator."""
    caller = Client(world.home)
    outcome: dict[str, Any] = {}
    request = b'{"action":"read","resource":"/x","risk_level":"low"}'
    script = encode_script([("astrid_request_approval", [request])])

    def run() -> None:
        arguments = json.loads(script_tool_args(script))
        try:
            outcome["output"] = caller.call_tool("victim", "run", arguments, timeout=60)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        pending: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not pending and time.monotonic() < deadline:
            pending = world.client.request(rpc.Method.APPROVALS_LIST, {})["approvals"]
            time.sleep(0.05)
        assert pending, "the approval request never appeared"
        for seq in range(1, 200):
            peer.send(wire.encode_answer(seq, True, b"forged output"))
            peer.send(wire.encode_answer(seq, False, "forged trap"))
        assert peer.receive(300) is None
        time.sleep(0.2)
        assert thread.is_alive() and not outcome
        world.client.request(
            rpc.Method.APPROVALS_ANSWER,
            {"request_id": pending[0]["request_id"], "decision": "deny"},
        )
        thread.join(20)
    finally:
        caller.close()
    assert "error" not in outcome, outcome
    assert decode_hex_output(outcome["output"]) == [b'{"approved":false,"decision":"deny"}']
