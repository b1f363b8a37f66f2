"""Symlink escapes: links planted in the workspace (by the host, or by anything the capsule
does not control) never lead a capsule's filesystem call out of its root.

Through real calls: a symlinked file, a dangling link, a symlinked parent directory, a chain and
a loop, and a directory swapped for a link while the capsule keeps writing through it (atomic
``renameat2(RENAME_EXCHANGE)`` flips in a thread). At the vfs level: a component swapped between
the resolution and the operation.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import vfs
from tests.security.support import Call, Trap, World, snapshot, world_fixture

pytestmark = pytest.mark.integration

FULL = '[capabilities]\nfs_read = ["*"]\nfs_write = ["*"]\n'
ELOOP = f"IO error: {os.strerror(errno.ELOOP)} (os error {errno.ELOOP})"

#: Known bug (reported, not in this suite's files): ``broker.vfs.resolve`` lets the OSError of
#: ``os.path.realpath`` escape when a symlink is replaced between its ``lstat`` and its
#: ``readlink``, and the guest sees an internal error instead of an fs error. Safe (nothing
#: escapes), but not a documented text; see test_a_link_replaced_during_resolution below.
RACE_BUG = "internal broker error: [Errno 22] Invalid argument: "

READERS = ("astrid_read_file", "astrid_fs_stat", "astrid_fs_readdir", "astrid_fs_exists")
WRITERS = ("astrid_write_file", "astrid_fs_mkdir", "astrid_fs_unlink")


def call(name: str, path: str, content: bytes = b"pwned") -> Call:
    return (name, [path.encode(), content] if name == "astrid_write_file" else [path.encode()])


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("links")
    yield from world_fixture(base, capsules["syscaller"], {"fs": FULL})


@pytest.fixture
def outside(world: World, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory outside the root, with a canary; unchanged after the test."""
    directory = world.base / f"outside-{tmp_path.name}"
    directory.mkdir()
    (directory / "canary").write_bytes(b"canary")
    before = snapshot(directory)
    yield directory
    assert snapshot(directory) == before


def escapes(requested: str, physical: Path | str) -> str:
    return f"path escapes root boundary: {requested} resolves to {physical}"


@pytest.mark.parametrize("name", READERS + WRITERS)
def test_a_symlinked_file_pointing_outside(world: World, outside: Path, name: str) -> None:
    link = world.workspace / f"leak-{name}"
    link.symlink_to(outside / "canary")
    text = world["fs"].trap([call(name, link.name)])
    assert text == escapes(link.name, outside / "canary")
    assert link.is_symlink()


def test_a_dangling_symlink_to_a_new_file_outside(world: World, outside: Path) -> None:
    link = world.workspace / "dangle"
    link.symlink_to(outside / "created-by-capsule")
    text = world["fs"].trap([call("astrid_write_file", "dangle")])
    assert text == escapes("dangle", outside / "created-by-capsule")
    assert not (outside / "created-by-capsule").exists()


@pytest.mark.parametrize(
    ("name", "below"),
    [
        ("astrid_write_file", "new.txt"),
        ("astrid_write_file", "canary"),
        ("astrid_fs_mkdir", "sub/deeper"),
        ("astrid_fs_unlink", "canary"),
        ("astrid_read_file", "canary"),
        ("astrid_fs_readdir", ""),
        ("astrid_fs_stat", "canary"),
    ],
)
def test_a_symlinked_parent_directory(world: World, outside: Path, name: str, below: str) -> None:
    door = world.workspace / f"door-{name}-{below.replace('/', '-')}"
    door.symlink_to(outside, target_is_directory=True)
    requested = f"{door.name}/{below}".rstrip("/")
    text = world["fs"].trap([call(name, requested)])
    assert text == escapes(requested, f"{outside}/{below}".rstrip("/"))


def test_a_chain_of_links_leading_out(world: World, outside: Path) -> None:
    (world.workspace / "chain-b").symlink_to(outside, target_is_directory=True)
    (world.workspace / "chain-a").symlink_to("chain-b")
    text = world["fs"].trap([call("astrid_write_file", "chain-a/x.txt")])
    assert text == escapes("chain-a/x.txt", outside / "x.txt")
    assert not (outside / "x.txt").exists()


def test_a_link_to_the_workspace_parent_via_dotdot(world: World, outside: Path) -> None:
    (world.workspace / "up").symlink_to("..", target_is_directory=True)
    requested = f"up/{outside.name}/canary"
    text = world["fs"].trap([call("astrid_write_file", requested)])
    assert text == escapes(requested, outside / "canary")


def test_a_symlink_loop_neither_hangs_nor_escapes(world: World, outside: Path) -> None:
    (world.workspace / "loop-1").symlink_to("loop-2")
    (world.workspace / "loop-2").symlink_to("loop-1")
    started = time.monotonic()
    for name in ("astrid_read_file", "astrid_write_file"):
        text = world["fs"].trap([call(name, "loop-1/x")])
        # ENOTDIR or ELOOP for the read; EEXIST when write_file tries to make the parent.
        assert text.startswith(f"{name.removeprefix('astrid_')} failed: IO error: "), text
    assert time.monotonic() - started < 10


def test_an_in_workspace_link_stays_usable(world: World) -> None:
    """The guard is not a blanket ban: links inside the root work."""
    (world.workspace / "real.txt").write_bytes(b"inside")
    (world.workspace / "alias.txt").symlink_to("real.txt")
    assert world["fs"].run([call("astrid_read_file", "alias.txt")]) == [b"inside"]


def test_unlinking_a_link_never_touches_its_target(world: World, outside: Path) -> None:
    """An in-root link whose target is outside: unlink escapes (not followed, not removed)."""
    link = world.workspace / "to-canary"
    link.symlink_to(outside / "canary")
    assert world["fs"].trap([call("astrid_fs_unlink", "to-canary")]) == escapes(
        "to-canary", outside / "canary"
    )
    assert link.is_symlink()


# --------------------------------------------------------------------------------------------
# Swap races


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_a_directory_swapped_for_a_link_while_the_capsule_writes(
    world: World, outside: Path
) -> None:
    sub, swap = world.workspace / "race", world.workspace / "race-swap"
    sub.mkdir()
    (sub / "canary").write_bytes(b"decoy")
    swap.symlink_to(outside, target_is_directory=True)
    try:
        _exchange(sub, swap)
        _exchange(sub, swap)
    except OSError as exc:
        pytest.skip(f"renameat2(RENAME_EXCHANGE) is not available here: {exc}")
    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            _exchange(sub, swap)
            flips += 1

    script = [call("astrid_write_file", "race/canary", b"pwned")] * 5 + [
        call("astrid_read_file", "race/canary")
    ] * 5
    outcomes: dict[str, int] = {}
    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                results = world["fs"].run(script)
            except Trap as trap:
                text = trap.text
                assert text.startswith(
                    (
                        escapes("race/canary", outside / "canary"),
                        "write_file failed: IO error: ",
                        "read_file failed: IO error: ",
                        RACE_BUG,
                    )
                ), text
                outcomes[text.split(":")[0]] = outcomes.get(text.split(":")[0], 0) + 1
            else:
                assert all(value in (None, b"pwned", b"decoy") for value in results)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
    finally:
        stop.set()
        thread.join(5)
    assert flips > 0
    # Whatever interleaving happened, the canary outside was neither read nor written (the
    # fixture checks the directory), and the decoy inside only ever held our own data.
    for directory in (sub, swap):
        if directory.is_dir() and not directory.is_symlink():
            assert (directory / "canary").read_bytes() in (b"decoy", b"pwned")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "root"
    (directory / "sub").mkdir(parents=True)
    (directory / "sub" / "file.txt").write_bytes(b"inside")
    return directory


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    (directory / "file.txt").write_bytes(b"canary")
    before = snapshot(directory)
    yield directory
    assert snapshot(directory) == before


def _swap_for_link(root: Path, name: str, target: Path) -> None:
    (root / name).rename(root / f"{name}.parked")
    (root / name).symlink_to(target, target_is_directory=target.is_dir())


@pytest.mark.parametrize(
    "operation",
    [
        lambda p: vfs.write_file(p, b"pwned"),
        lambda p: vfs.write_file(p, b"pwned", create_parents=False),
        lambda p: vfs.read_file(p, 1024),
        vfs.stat,
        vfs.unlink,
        vfs.mkdir,
        vfs.readdir,
    ],
    ids=["write", "write-no-parents", "read", "stat", "unlink", "mkdir", "readdir"],
)
def test_a_parent_swapped_after_resolution(
    root: Path, elsewhere: Path, operation: Callable[[vfs.ResolvedPath], object]
) -> None:
    resolved = vfs.resolve(root, "sub/file.txt")
    assert resolved.physical == f"{os.path.realpath(root)}/sub/file.txt"
    _swap_for_link(root, "sub", elsewhere)
    with pytest.raises(vfs.VfsError):
        operation(resolved)


@pytest.mark.parametrize(
    "operation",
    [lambda p: vfs.write_file(p, b"pwned"), lambda p: vfs.read_file(p, 1024)],
    ids=["write", "read"],
)
def test_a_final_component_swapped_after_resolution(
    root: Path, elsewhere: Path, operation: Callable[[vfs.ResolvedPath], object]
) -> None:
    resolved = vfs.resolve(root, "sub/file.txt")
    _swap_for_link(root / "sub", "file.txt", elsewhere / "file.txt")
    with pytest.raises(vfs.IoError) as info:
        operation(resolved)
    assert str(info.value) == ELOOP


def test_unlink_of_a_swapped_final_component_removes_only_the_link(
    root: Path, elsewhere: Path
) -> None:
    resolved = vfs.resolve(root, "sub/file.txt")
    _swap_for_link(root / "sub", "file.txt", elsewhere / "file.txt")
    vfs.unlink(resolved)
    assert not (root / "sub" / "file.txt").is_symlink()
    assert (root / "sub" / "file.txt.parked").read_bytes() == b"inside"


def test_a_link_replaced_during_resolution(
    root: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of the swap test, made deterministic: the link is swapped back for the real
    directory between realpath's lstat (it saw a link) and its readlink."""
    _swap_for_link(root, "sub", elsewhere)
    real_readlink = os.readlink

    def racing_readlink(path: Any, *args: Any, **kwargs: Any) -> str:
        if os.fspath(path).endswith("/sub") and os.path.islink(root / "sub"):
            (root / "sub").unlink()
            (root / "sub.parked").rename(root / "sub")
        return str(real_readlink(path, *args, **kwargs))

    monkeypatch.setattr(os, "readlink", racing_readlink)
    try:
        resolved = vfs.resolve(root, "sub/file.txt")
    except (vfs.VfsError, vfs.PathEscapesRoot):
        return  # a clean refusal is fine
    assert resolved.physical.startswith(f"{os.path.realpath(root)}/")
