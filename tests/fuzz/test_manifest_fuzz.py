"""Fuzzing ``Capsule.toml``: whatever a capsule author (or an attacker who can drop a capsule
directory) writes, the manifest decoder returns a :class:`Manifest` or raises
:class:`ManifestError`; discovery records a problem instead of raising; and a real broker asked
to admit a worker for such a capsule answers the hello (welcome or ``hello refused``) and keeps
serving.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrid_core import wire
from astrid_core.discovery import discover, order_capsules
from astrid_core.manifest import Manifest, ManifestError, load_manifest, parse_manifest
from astrid_core.rpc import Method
from astrid_core.wire import Status
from tests.fuzz.strategies import manifest_documents, toml_documents
from tests.security.support import Peer, World, hello_info, world_fixture

PATH = Path("/capsules/fuzzed/Capsule.toml")
SEQS = itertools.count(100)

GOOD = """
[package]
name = "fuzzed"
version = "0.1.0"

[[component]]
file = "fuzzed.wasm"
"""


def parses_or_refuses(text: str) -> Manifest | None:
    try:
        manifest = parse_manifest(text, PATH)
    except ManifestError as exc:
        assert exc.path == PATH
        assert str(exc).startswith(f"invalid manifest {PATH}: ")
        return None
    assert isinstance(manifest, Manifest)
    return manifest


@settings(max_examples=300, deadline=None)
@given(manifest_documents)
def test_manifest_shaped_documents(text: str) -> None:
    tomllib.loads(text)  # the generator writes valid TOML
    parses_or_refuses(text)


@settings(max_examples=150, deadline=None)
@given(toml_documents)
def test_arbitrary_toml_documents(text: str) -> None:
    tomllib.loads(text)
    parses_or_refuses(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutations_of_a_good_manifest(data: st.DataObject) -> None:
    text = GOOD
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = data.draw(st.text(max_size=6) | st.sampled_from(["[", "]", '"', "=", "\n", "[["]))
        if action == "insert":
            text = text[:position] + chunk + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + len(chunk) :]
        else:
            text = text[:position] + chunk + text[position + len(chunk) :]
    parses_or_refuses(text)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_a_manifest_file_of_random_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "Capsule.toml"
    path.write_bytes(raw)
    try:
        load_manifest(path)
    except ManifestError as exc:
        assert exc.path == path


#: A 1 KiB Capsule.toml nested deeper than tomllib's recursion allows.
DEEP = ["x = " + "[" * 600 + "]" * 600, "x = " + "{b = " * 500 + "1" + "}" * 500]


@pytest.mark.parametrize("nested", DEEP, ids=["arrays", "inline-tables"])
def test_deep_nesting_is_a_manifest_error(nested: str) -> None:
    parses_or_refuses(GOOD + nested + "\n")


def test_discovery_records_a_deeply_nested_manifest_as_a_problem(tmp_path: Path) -> None:
    """(Otherwise ``astrid-supervisor up`` would die with a traceback: no capsule starts.)"""
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "Capsule.toml").write_text(GOOD + DEEP[0] + "\n")
    result = discover(None, tmp_path)
    assert [problem.path.parent.name for problem in result.problems] == ["deep"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.from_regex(r"[a-z]{1,6}", fullmatch=True), manifest_documents), max_size=5
    )
)
def test_discovery_never_raises(
    tmp_path_factory: pytest.TempPathFactory, capsules: list[tuple[str, str]]
) -> None:
    root = tmp_path_factory.mktemp("discover")
    for name, text in capsules:
        directory = root / name
        directory.mkdir(exist_ok=True)
        (directory / "Capsule.toml").write_text(text)
    result = discover(None, root)
    order_capsules(result.capsules)
    assert len(result.capsules) + len(result.problems) >= len({name for name, _ in capsules})


# --------------------------------------------------------------------------------------------
# Through a real broker: the hello of a worker for a fuzzed capsule


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(
        tmp_path_factory.mktemp("manifest"), capsules["syscaller"], {"syscaller": ""}
    )


@pytest.fixture(scope="module")
def peer(world: World) -> Iterator[Peer]:
    p = Peer(world.runtime.endpoint)
    yield p
    p.close()


@pytest.mark.integration
@settings(max_examples=60, deadline=None)
@given(st.one_of(manifest_documents, toml_documents, st.text(max_size=200)))
def test_the_broker_answers_a_hello_for_any_manifest(world: World, peer: Peer, text: str) -> None:
    # A fresh directory each time: a hello naming the running session's own directory (same
    # generation and pid) resumes that session without reading the manifest again.
    seq = next(SEQS)
    directory = world.base / f"fuzzed-{seq}"
    directory.mkdir()
    (directory / "Capsule.toml").write_text(text)
    info = hello_info(directory, "fuzzed")
    secret = wire.derive_worker_secret(world.runtime.master_key, info)
    reply = peer.exchange(wire.encode_hello(seq, info, secret))
    assert reply.seq == seq, (reply, text)
    if reply.status == Status.OK:
        assert parses_or_refuses(text) is not None
        assert isinstance(reply.payload, bytes)
        lifecycle = wire.decode_welcome(reply.payload).get("lifecycle")
        if lifecycle is not None:
            peer.send(wire.encode_answer(int(lifecycle["seq"]), True, b""))
    else:
        assert reply.status == Status.ERROR
        assert str(reply.payload).startswith("hello refused: "), reply
    assert world.runtime.broker is not None and world.runtime.broker.process.poll() is None


@pytest.mark.integration
def test_the_broker_refuses_a_hello_for_a_deeply_nested_manifest(world: World, peer: Peer) -> None:
    directory = world.base / "deep"
    directory.mkdir(exist_ok=True)
    (directory / "Capsule.toml").write_text(GOOD.replace("fuzzed", "deep") + DEEP[0] + "\n")
    info = hello_info(directory, "deep")
    peer.send(wire.encode_hello(7, info, wire.derive_worker_secret(world.runtime.master_key, info)))
    reply = peer.receive(1500)
    # Whatever the outcome, kick the ROUTER so that the rest of the module is not stalled.
    Peer(world.runtime.endpoint).send(wire.encode_call(1, 0, [b""]))
    assert reply is not None, "the hello was never answered"
    assert str(reply.payload).startswith("hello refused: invalid manifest")


@pytest.mark.integration
def test_the_broker_still_serves_after_the_manifests(world: World) -> None:
    assert "syscaller" in world.client.request(Method.PING, {})["capsules"]
    assert world["syscaller"].run([("astrid_kv_set", [b"k", b"v"]), ("astrid_kv_get", [b"k"])]) == [
        None,
        b"v",
    ]
    assert os.path.exists(world.home / "sessions" / "system.sock")
