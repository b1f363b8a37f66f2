"""Another capsule's KV: every key a capsule names lives in its own ``capsule:<id>`` namespace
(syscalls.md §2.4), whatever the key looks like.

The victim stores a secret; the intruder tries namespace-looking keys, separators, NUL bytes,
invalid UTF-8, long keys and prefix operations. ``state.db`` is then read directly: the victim's
namespace is byte for byte what it was, and the intruder wrote only into its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.support import (
    Call,
    World,
    namespaces,
    read_namespace,
    start_world,
    stop_world,
)
from tests.syscaller import Fill

pytestmark = pytest.mark.integration

VICTIM = {b"secret": b"victim's secret", b"api/token": b"tok", b"capsule:x": b"literal"}

ATTACK_KEYS = [
    b"capsule:victim:secret",
    b"capsule:victim/secret",
    b"capsule:victim\x1fsecret",
    b"capsule:victim",
    b"victim:secret",
    b"victim/secret",
    b"../victim/secret",
    b"../capsule:victim/secret",
    b"%00capsule:victim:secret",
    b"system:identity",
    b"\xef\xbb\xbfsecret",  # BOM + secret
    b"SECRET",
    b"secret ",
]


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("kv")
    world = start_world(base, capsules["syscaller"], {"victim": "", "intruder": ""})
    try:
        world["victim"].run([("astrid_kv_set", [key, value]) for key, value in VICTIM.items()])
        yield world
    finally:
        stop_world(world)


@pytest.fixture
def untouched(world: World) -> Iterator[None]:
    """After the test, the victim's namespace (and every namespace but the intruder's) is
    exactly as before."""
    before = {ns: read_namespace(world.home, ns) for ns in namespaces(world.home)}
    yield
    after = {ns: read_namespace(world.home, ns) for ns in namespaces(world.home)}
    before.pop("capsule:intruder", None)
    after.pop("capsule:intruder", None)
    assert after == before
    assert read_namespace(world.home, "capsule:victim") == VICTIM


@pytest.mark.parametrize("key", ATTACK_KEYS)
def test_reading_another_capsules_key(world: World, untouched: None, key: bytes) -> None:
    assert world["intruder"].run([("astrid_kv_get", [key])]) == [b""]


@pytest.mark.parametrize("key", ATTACK_KEYS)
def test_writing_and_deleting_another_capsules_key(
    world: World, untouched: None, key: bytes
) -> None:
    results = world["intruder"].run(
        [("astrid_kv_set", [key, b"pwned"]), ("astrid_kv_get", [key]), ("astrid_kv_delete", [key])]
    )
    assert results == [None, b"pwned", None]  # its own key of that name


def test_a_key_with_a_nul_byte(world: World, untouched: None) -> None:
    for call in (
        ("astrid_kv_get", [b"secret\x00"]),
        ("astrid_kv_set", [b"capsule:victim\x00secret", b"pwned"]),
        ("astrid_kv_delete", [b"\x00"]),
    ):
        assert world["intruder"].trap([call]) == (
            f"{call[0].removeprefix('astrid_')} failed: invalid key: key must not contain null bytes"
        )
    assert world["intruder"].trap([("astrid_kv_clear_prefix", [b"capsule:victim\x00"])]) == (
        "kv_clear_prefix failed: invalid key: prefix must not contain null bytes"
    )


def test_a_key_that_is_not_utf8(world: World, untouched: None) -> None:
    # Invalid UTF-8 reads as the empty key, which is refused.
    assert world["intruder"].trap([("astrid_kv_set", [b"\xffsecret", b"pwned"])]) == (
        "kv_set failed: invalid key: key must not be empty"
    )
    assert (
        world["intruder"]
        .trap([("astrid_kv_list_keys", [b"\xff"])])
        .startswith("kv_list_keys prefix is not valid UTF-8: ")
    )


@pytest.mark.parametrize("name", ["astrid_kv_get", "astrid_kv_delete", "astrid_kv_list_keys"])
def test_a_key_over_4096_bytes(world: World, untouched: None, name: str) -> None:
    assert world["intruder"].trap([(name, [Fill(ord("k"), 4097)])]) == (
        "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes"
    )


def test_a_4096_byte_key_stays_in_its_namespace(world: World, untouched: None) -> None:
    key = b"capsule:victim:" + b"s" * (4096 - len(b"capsule:victim:"))
    calls: list[Call] = [("astrid_kv_set", [key, b"long"]), ("astrid_kv_get", [key])]
    assert world["intruder"].run(calls) == [None, b"long"]
    assert read_namespace(world.home, "capsule:intruder")[key] == b"long"
    world["intruder"].run([("astrid_kv_delete", [key])])


@pytest.mark.parametrize("prefix", [b"", b"capsule:", b"capsule:victim", b"s", b"api/"])
def test_listing_another_capsules_keys(world: World, untouched: None, prefix: bytes) -> None:
    listed = world["intruder"].one(("astrid_kv_list_keys", [prefix]))
    assert listed is not None
    assert not set(json.loads(listed)) & {key.decode() for key in VICTIM}


@pytest.mark.parametrize("prefix", [b"", b"capsule:", b"capsule:victim", b"s"])
def test_clearing_another_capsules_keys(world: World, untouched: None, prefix: bytes) -> None:
    world["intruder"].run([("astrid_kv_set", [b"capsule:victim-mine", b"x"])])
    cleared = world["intruder"].one(("astrid_kv_clear_prefix", [prefix]))
    assert cleared is not None and int(cleared) <= 1


def test_the_victim_still_reads_its_own(world: World) -> None:
    assert world["victim"].run([("astrid_kv_get", [b"secret"])]) == [b"victim's secret"]
