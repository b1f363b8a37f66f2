"""Path escapes: a capsule with full workspace and ``global://`` grants tries to get out.

Every attempt goes through a real ``astrid_*`` filesystem call of the syscaller capsule and
either fails with its documented trap text (syscalls.md §2.1, DESIGN §6.3) or stays confined
under the workspace (absolute and encoded paths are re-rooted or kept literal). After each
attack nothing outside the workspace has changed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.support import Call, World, snapshot, world_fixture
from tests.syscaller import Fill

pytestmark = pytest.mark.integration

FULL = """
[capabilities]
fs_read = ["*", "global://"]
fs_write = ["*", "global://"]
"""
ROOT_DENIED = "Permission denied: Cannot operate on capability root directly"
EISDIR = "IO error: Is a directory (os error 21)"
ENOENT = "IO error: No such file or directory (os error 2)"

#: Each fs syscall with a path, and its name in "<op> failed" / "security denied <op>".
OPS = {
    "astrid_fs_exists": "exists check",
    "astrid_fs_mkdir": "mkdir",
    "astrid_fs_readdir": "readdir",
    "astrid_fs_stat": "stat",
    "astrid_fs_unlink": "unlink",
    "astrid_read_file": "read_file",
    "astrid_write_file": "write_file",
}


def call(name: str, path: bytes | Fill, content: bytes = b"pwned") -> Call:
    return (name, [path, content] if name == "astrid_write_file" else [path])


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("paths")
    outside = base / "outside"
    outside.mkdir()
    (outside / "canary").write_bytes(b"canary")
    (base / "ws-evil").mkdir()  # a sibling whose name starts with the workspace's
    (base / "ws" / "a" / "b").mkdir(parents=True)
    shared = base / "home" / "shared"
    shared.mkdir(parents=True)  # global:// is mounted for capsules that connect after this
    yield from world_fixture(base, capsules["syscaller"], {"fs-all": FULL, "fs-none": ""})


class Outside:
    """Everything the capsules must not touch: the base directory without the workspace and
    the broker's changing files, the global root's parent (``$ASTRID_HOME``) and a few
    absolute targets."""

    def __init__(self, world: World, targets: tuple[Path, ...] = ()) -> None:
        self.world = world
        self.targets = targets
        self.before = self._state()

    def _state(self) -> object:
        base = self.world.base
        home = self.world.home
        return (
            snapshot(base, skip=("ws", "home")),
            snapshot(home / "shared"),
            sorted(os.listdir(home)),
            (home / "sessions" / "system.token").read_bytes(),
            [target.exists() or target.is_symlink() for target in self.targets],
        )

    def unchanged(self) -> None:
        assert self._state() == self.before


def escapes(world: World, requested: str, physical: str | Path) -> str:
    return f"path escapes root boundary: {requested} resolves to {physical}"


# --------------------------------------------------------------------------------------------
# ../


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize(
    "requested",
    ["../escaped", "a/../../escaped", "./../escaped", "a/b/../../../escaped", "..//escaped"],
)
def test_dotdot_out_of_the_workspace(world: World, name: str, requested: str) -> None:
    outside = Outside(world, (world.base / "escaped",))
    text = world["fs-all"].trap([call(name, requested.encode())])
    assert text == escapes(world, requested, world.base / "escaped")
    outside.unchanged()


def test_dotdot_to_the_filesystem_root(world: World) -> None:
    target = Path("/tmp") / f"astrid-escape-{uuid.uuid4().hex}"
    requested = "../" * 40 + str(target).lstrip("/")
    outside = Outside(world, (target,))
    assert world["fs-all"].trap([call("astrid_write_file", requested.encode())]) == escapes(
        world, requested, target
    )
    outside.unchanged()


def test_dotdot_into_a_sibling_sharing_the_workspace_prefix(world: World) -> None:
    outside = Outside(world)
    requested = "../ws-evil/planted.txt"
    text = world["fs-all"].trap([call("astrid_write_file", requested.encode())])
    assert text == escapes(world, requested, world.base / "ws-evil" / "planted.txt")
    outside.unchanged()


def test_dotdot_is_refused_before_the_gate(world: World) -> None:
    """A capsule without any grant learns nothing more than one with every grant."""
    outside = Outside(world)
    text = world["fs-none"].trap([call("astrid_read_file", b"../outside/canary")])
    assert text == escapes(world, "../outside/canary", world.base / "outside" / "canary")
    outside.unchanged()


def test_dotdot_in_a_missing_tail_is_denied_by_the_gate(world: World) -> None:
    outside = Outside(world, (world.base / "escaped",))
    requested = "missing/../../escaped"
    text = world["fs-all"].trap([call("astrid_write_file", requested.encode())])
    # "missing" does not exist, so the tail is kept verbatim and the gate refuses the "..".
    assert text == (
        "security denied write_file: capsule 'fs-all' denied: write access to "
        f"'{world.workspace}/{requested}' not declared in manifest"
    )
    assert not (world.workspace / "missing").exists()
    outside.unchanged()


# --------------------------------------------------------------------------------------------
# Absolute paths


def test_an_absolute_path_is_re_rooted_under_the_workspace(world: World) -> None:
    canary = world.base / "outside" / "canary"
    outside = Outside(world)
    world["fs-all"].run([call("astrid_write_file", str(canary).encode(), b"pwned")])
    assert canary.read_bytes() == b"canary"
    assert (world.workspace / str(canary).lstrip("/")).read_bytes() == b"pwned"
    outside.unchanged()


@pytest.mark.parametrize("requested", ["/etc/passwd", "//etc/passwd", "/./etc//passwd"])
def test_an_absolute_path_never_reads_the_host_file(world: World, requested: str) -> None:
    assert world["fs-all"].trap([call("astrid_read_file", requested.encode())]) == (
        f"read_file failed: {ENOENT}"
    )


def test_an_absolute_path_to_the_session_token_reads_nothing(world: World) -> None:
    token = world.home / "sessions" / "system.token"
    text = world["fs-all"].trap([call("astrid_read_file", str(token).encode())])
    assert text == f"read_file failed: {ENOENT}"


# --------------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize(
    "requested",
    [
        "%2e%2e/encoded.txt",
        "%2e%2e%2fencoded.txt",
        "..%2fencoded.txt",
        "%252e%252e/encoded.txt",
        "..\\encoded.txt",
        "..\\..\\encoded.txt",
        "\uff0e\uff0e/encoded.txt",  # fullwidth full stops
        "\u2024\u2024/encoded.txt",  # one dot leaders
        "..\u2215encoded.txt",  # division slash
        ".. /encoded.txt",
        "... /encoded.txt",
    ],
)
def test_encoded_traversal_stays_a_literal_name(world: World, requested: str) -> None:
    outside = Outside(world, (world.base / "encoded.txt",))
    world["fs-all"].run([call("astrid_write_file", requested.encode(), b"literal")])
    assert (world.workspace / requested).read_bytes() == b"literal"
    outside.unchanged()


@pytest.mark.parametrize(
    "requested",
    [b"\xc0\xae\xc0\xae/escaped", b"\xe0\x80\xae\xe0\x80\xae/escaped", b"..\xff/escaped"],
    ids=["overlong-2", "overlong-3", "invalid-byte"],
)
def test_an_invalid_utf8_path_is_the_root(world: World, requested: bytes) -> None:
    outside = Outside(world, (world.base / "escaped",))
    assert world["fs-all"].trap([call("astrid_write_file", requested)]) == (
        f"write_file failed: {EISDIR}"
    )
    assert world["fs-all"].trap([call("astrid_fs_unlink", requested)]) == (
        f"unlink failed: {ROOT_DENIED}"
    )
    outside.unchanged()


# --------------------------------------------------------------------------------------------
# NUL bytes


@pytest.mark.parametrize("name", sorted(set(OPS) - {"astrid_fs_exists"}))
def test_a_nul_byte_cannot_truncate_a_path(world: World, name: str) -> None:
    (world.workspace / "nul").mkdir(exist_ok=True)
    (world.workspace / "nul" / "kept").write_bytes(b"kept")
    outside = Outside(world)
    text = world["fs-all"].trap([call(name, b"nul/kept\x00.txt")])
    assert text == f"{OPS[name]} failed: IO error: file name contained an unexpected NUL byte"
    assert (world.workspace / "nul" / "kept").read_bytes() == b"kept"
    outside.unchanged()


def test_a_nul_byte_cannot_hide_a_traversal(world: World) -> None:
    outside = Outside(world, (world.base / "escaped",))
    requested = "inside.txt\x00/../../escaped"
    text = world["fs-all"].trap([call("astrid_write_file", requested.encode())])
    assert text == (
        "security denied write_file: capsule 'fs-all' denied: write access to "
        f"'{world.workspace}/{requested}' not declared in manifest"
    )
    assert not (world.workspace / "inside.txt").exists()
    outside.unchanged()


def test_exists_with_a_nul_byte_is_false(world: World) -> None:
    assert world["fs-all"].run([call("astrid_fs_exists", b"nul\x00")]) == [b""]


# --------------------------------------------------------------------------------------------
# Very long paths


@pytest.mark.parametrize("name", sorted(OPS))
def test_a_path_over_4096_bytes_is_refused(world: World, name: str) -> None:
    assert world["fs-all"].trap([call(name, Fill(ord("a"), 4097))]) == (
        "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes"
    )


def test_a_4096_byte_name_is_too_long_for_the_os(world: World) -> None:
    outside = Outside(world)
    assert world["fs-all"].trap([call("astrid_write_file", Fill(ord("a"), 4096))]) == (
        "write_file failed: IO error: File name too long (os error 36)"
    )
    outside.unchanged()


def test_a_long_dotdot_chain_still_escapes(world: World) -> None:
    requested = "../" * 1365  # 4095 bytes
    outside = Outside(world)
    text = world["fs-all"].trap([call("astrid_write_file", requested.encode())])
    assert text.startswith(f"path escapes root boundary: {requested} resolves to /")
    outside.unchanged()


# --------------------------------------------------------------------------------------------
# global:// (the capsule's window on $ASTRID_HOME/shared)


@pytest.mark.parametrize(
    "target",
    ["sessions/system.token", "state.db", "keys", "logs/../sessions/system.token"],
)
def test_global_traversal_into_the_astrid_home(world: World, target: str) -> None:
    outside = Outside(world)
    requested = f"../{target}"
    text = world["fs-all"].trap([call("astrid_read_file", f"global://{requested}".encode())])
    physical = os.path.normpath(world.home / target)
    assert text == escapes(world, requested, physical)
    outside.unchanged()


def test_global_traversal_cannot_overwrite_the_token(world: World) -> None:
    outside = Outside(world)
    requested = "global://../sessions/system.token"
    text = world["fs-all"].trap([call("astrid_write_file", requested.encode(), b"0" * 64)])
    assert text == escapes(world, "../sessions/system.token", world.home / "sessions/system.token")
    outside.unchanged()


def test_an_ungranted_capsule_cannot_use_global(world: World) -> None:
    text = world["fs-none"].trap([call("astrid_read_file", b"global://anything")])
    assert text == (
        "security denied read_file: capsule 'fs-none' denied: read access to "
        f"'{os.path.realpath(world.home / 'shared')}/anything' not declared in manifest"
    )
