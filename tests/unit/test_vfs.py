"""The confined filesystem of the broker (broker/vfs.py; syscalls.md §2.1, DESIGN §6.3).

Real directories in tmp_path: the resolver (traversal, re-rooting, symlinks in and out of the
root) and the dir-fd operations, including a symlink swapped in after resolution.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from broker import vfs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, with a canary file the sandbox must never touch."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "canary").write_bytes(b"canary")
    return out


def escape(root: Path, requested: str) -> vfs.PathEscapesRoot:
    with pytest.raises(vfs.PathEscapesRoot) as info:
        vfs.resolve(root, requested)
    return info.value


def io_text(code: int) -> str:
    return f"IO error: {os.strerror(code)} (os error {code})"


# ------------------------------------------------------------------------------------------
# Resolution


def test_relative_paths_resolve_under_the_root(root: Path) -> None:
    resolved = vfs.resolve(root, "a/b.txt")
    assert resolved.root == str(root)
    assert resolved.parts == ("a", "b.txt")
    assert resolved.physical == f"{root}/a/b.txt"
    assert resolved.relative == "a/b.txt"


@pytest.mark.parametrize("requested", ["", "/", ".", "./", "//", "a/.."])
def test_the_root_itself(root: Path, requested: str) -> None:
    (root / "a").mkdir()
    resolved = vfs.resolve(root, requested)
    assert resolved.is_root
    assert resolved.physical == str(root)


def test_absolute_paths_are_re_rooted(root: Path) -> None:
    assert vfs.resolve(root, "/etc/passwd").physical == f"{root}/etc/passwd"
    assert vfs.resolve(root, "///etc//./passwd").parts == ("etc", "passwd")


@pytest.mark.parametrize("requested", ["../x", "a/../../x", "..", "../../../../../../etc/passwd"])
def test_traversal_escapes_the_root(root: Path, requested: str) -> None:
    (root / "a").mkdir()
    error = escape(root, requested)
    assert error.requested == requested
    assert not error.physical.startswith(f"{root}/")
    assert error.physical != str(root)


def test_traversal_reports_where_it_led(root: Path) -> None:
    assert escape(root, "../x").physical == f"{root.parent}/x"
    assert escape(root, "..").physical == str(root.parent)
    assert escape(root, "../../../../../../../../../../etc/passwd").physical == "/etc/passwd"


def test_a_sibling_sharing_the_roots_name_prefix_is_outside(root: Path) -> None:
    evil = root.parent / f"{root.name}-evil"
    evil.mkdir()
    assert escape(root, f"../{root.name}-evil/x").physical == f"{evil}/x"


def test_url_encoding_stays_literal(root: Path) -> None:
    resolved = vfs.resolve(root, "%2e%2e/%2e%2e/etc/passwd")
    assert resolved.parts == ("%2e%2e", "%2e%2e", "etc", "passwd")


def test_an_absolute_symlink_out_of_the_root_escapes(root: Path) -> None:
    (root / "etc").symlink_to("/etc")
    assert escape(root, "etc/passwd").physical == "/etc/passwd"
    assert escape(root, "etc").physical == "/etc"


def test_a_relative_symlink_out_of_the_root_escapes(root: Path, outside: Path) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "link").symlink_to("../../outside")
    assert escape(root, "sub/link/canary").physical == f"{outside}/canary"
    assert escape(root, "sub/link/new.txt").physical == f"{outside}/new.txt"


def test_a_symlinked_parent_directory_pointing_outside_escapes(root: Path, outside: Path) -> None:
    (root / "data").symlink_to(outside, target_is_directory=True)
    assert escape(root, "data/canary").physical == f"{outside}/canary"
    assert escape(root, "data/missing/deeper").physical == f"{outside}/missing/deeper"


def test_a_dangling_symlink_pointing_outside_escapes(root: Path, outside: Path) -> None:
    (root / "trap").symlink_to(outside / "not-yet")
    assert escape(root, "trap").physical == f"{outside}/not-yet"


def test_an_in_root_symlink_leads_to_its_target(root: Path) -> None:
    (root / "real").mkdir()
    (root / "real" / "f.txt").write_text("x")
    (root / "alias").symlink_to("real")
    (root / "abs-alias").symlink_to(root / "real" / "f.txt")
    assert vfs.resolve(root, "alias/f.txt").parts == ("real", "f.txt")
    assert vfs.resolve(root, "alias/new/deeper").parts == ("real", "new", "deeper")
    assert vfs.resolve(root, "abs-alias").parts == ("real", "f.txt")


def test_the_root_is_canonicalized(root: Path, tmp_path: Path) -> None:
    (tmp_path / "ws-link").symlink_to(root)
    resolved = vfs.resolve(tmp_path / "ws-link", "f")
    assert resolved.root == str(root)
    assert resolved.physical == f"{root}/f"


def test_a_dotdot_in_a_missing_tail_survives_resolution_but_not_the_operations(
    root: Path, outside: Path
) -> None:
    resolved = vfs.resolve(root, "missing/../../outside/canary")
    assert resolved.parts == ("missing", "..", "..", "outside", "canary")
    with pytest.raises(vfs.SandboxViolation) as info:
        vfs.write_file(resolved, b"pwned")
    assert str(info.value) == (
        "Path resolves outside sandbox boundaries: missing/../../outside/canary"
    )
    for operation in (vfs.mkdir, vfs.readdir, vfs.stat, vfs.unlink, vfs.exists):
        with pytest.raises(vfs.SandboxViolation):
            operation(resolved)
    with pytest.raises(vfs.SandboxViolation):
        vfs.read_file(resolved, 100)
    assert (outside / "canary").read_bytes() == b"canary"
    assert not (root / "missing").exists()


# ------------------------------------------------------------------------------------------
# Operations


def test_error_display_forms() -> None:
    assert str(vfs.SandboxViolation("a/..")) == "Path resolves outside sandbox boundaries: a/.."
    assert str(vfs.IoError.from_errno(errno.ENOENT)) == (
        "IO error: No such file or directory (os error 2)"
    )
    assert str(vfs.NotFound("x")) == "Not found: x"
    assert str(vfs.PermissionDenied("x")) == "Permission denied: x"
    assert str(vfs.NotSupported("x")) == "Not supported: x"
    assert str(vfs.FileTooLarge(11, 10)) == (
        "Permission denied: File too large to read into memory (11 bytes > 10 bytes)"
    )


def test_write_then_read_round_trips(root: Path) -> None:
    path = vfs.resolve(root, "notes/today.txt")
    vfs.write_file(path, b"hello vfs")
    assert (root / "notes" / "today.txt").read_bytes() == b"hello vfs"
    assert vfs.read_file(path, 100) == b"hello vfs"
    vfs.write_file(path, b"hi")  # truncates
    assert vfs.read_file(path, 100) == b"hi"
    vfs.write_file(path, b"")
    assert vfs.read_file(path, 100) == b""


def test_write_makes_missing_parents_only_when_asked(root: Path) -> None:
    path = vfs.resolve(root, "a/b/c.txt")
    with pytest.raises(vfs.IoError) as info:
        vfs.write_file(path, b"x", create_parents=False)
    assert str(info.value) == io_text(errno.ENOENT)
    assert not (root / "a").exists()
    vfs.write_file(path, b"x", create_parents=True)
    assert (root / "a" / "b" / "c.txt").read_bytes() == b"x"


def test_write_to_a_directory_or_the_root_fails(root: Path) -> None:
    (root / "d").mkdir()
    for requested in ("d", ""):
        with pytest.raises(vfs.IoError) as info:
            vfs.write_file(vfs.resolve(root, requested), b"x")
        assert str(info.value) == io_text(errno.EISDIR)


def test_write_through_a_file_as_a_parent_fails(root: Path) -> None:
    (root / "f").write_text("x")
    with pytest.raises(vfs.IoError) as info:
        vfs.write_file(vfs.resolve(root, "f/g.txt"), b"x")
    assert str(info.value) == io_text(errno.EEXIST)


def test_read_limit_is_checked_before_reading(root: Path) -> None:
    (root / "big").write_bytes(b"x" * 11)
    (root / "ok").write_bytes(b"x" * 10)
    with pytest.raises(vfs.FileTooLarge) as info:
        vfs.read_file(vfs.resolve(root, "big"), 10)
    assert str(info.value) == (
        "Permission denied: File too large to read into memory (11 bytes > 10 bytes)"
    )
    assert vfs.read_file(vfs.resolve(root, "ok"), 10) == b"x" * 10


def test_read_errors(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(vfs.IoError) as info:
        vfs.read_file(vfs.resolve(root, "missing"), 10)
    assert str(info.value) == io_text(errno.ENOENT)
    for requested in ("d", ""):
        with pytest.raises(vfs.IoError) as info:
            vfs.read_file(vfs.resolve(root, requested), 1 << 20)
        assert str(info.value) == io_text(errno.EISDIR)


def test_a_nul_byte_in_a_name_is_an_io_error(root: Path) -> None:
    path = vfs.resolve(root, "a\0b")
    assert path.parts == ("a\0b",)
    with pytest.raises(vfs.IoError) as info:
        vfs.write_file(path, b"x")
    assert str(info.value) == "IO error: file name contained an unexpected NUL byte"
    assert os.listdir(root) == []


def test_exists(root: Path) -> None:
    (root / "f").write_text("x")
    (root / "dangling").symlink_to("nowhere")
    assert vfs.exists(vfs.resolve(root, ""))
    assert vfs.exists(vfs.resolve(root, "f"))
    assert not vfs.exists(vfs.resolve(root, "missing"))
    assert not vfs.exists(vfs.resolve(root, "missing/deeper"))
    assert not vfs.exists(vfs.resolve(root, "f/under-a-file"))
    # A dangling in-root link leads to its missing target, which a write then creates.
    dangling = vfs.resolve(root, "dangling")
    assert dangling.parts == ("nowhere",)
    assert not vfs.exists(dangling)
    vfs.write_file(dangling, b"x")
    assert vfs.exists(dangling)
    assert (root / "nowhere").read_bytes() == b"x"


def test_mkdir_is_recursive_and_idempotent(root: Path) -> None:
    path = vfs.resolve(root, "a/b/c")
    vfs.mkdir(path)
    vfs.mkdir(path)
    assert (root / "a" / "b" / "c").is_dir()


def test_mkdir_refuses_the_root_and_existing_files(root: Path) -> None:
    with pytest.raises(vfs.PermissionDenied) as info:
        vfs.mkdir(vfs.resolve(root, "/"))
    assert str(info.value) == "Permission denied: Cannot operate on capability root directly"
    (root / "f").write_text("x")
    for requested in ("f", "f/sub"):
        with pytest.raises(vfs.IoError) as err:
            vfs.mkdir(vfs.resolve(root, requested))
        assert str(err.value) == io_text(errno.EEXIST)


def test_readdir_lists_sorted_names(root: Path) -> None:
    for name in ("b", ".hidden", "a"):
        (root / name).write_text("x")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_text("x")
    assert vfs.readdir(vfs.resolve(root, "")) == [".hidden", "a", "b", "dir"]
    assert vfs.readdir(vfs.resolve(root, "dir")) == ["inner"]


def test_readdir_replaces_undecodable_bytes(root: Path) -> None:
    os.close(os.open(os.path.join(os.fsencode(root), b"bad\xff"), os.O_CREAT | os.O_WRONLY))
    assert vfs.readdir(vfs.resolve(root, "")) == ["bad\ufffd"]


def test_readdir_errors(root: Path) -> None:
    (root / "f").write_text("x")
    with pytest.raises(vfs.IoError) as info:
        vfs.readdir(vfs.resolve(root, "missing"))
    assert str(info.value) == io_text(errno.ENOENT)
    with pytest.raises(vfs.IoError) as info:
        vfs.readdir(vfs.resolve(root, "f"))
    assert str(info.value) == io_text(errno.ENOTDIR)


def test_stat(root: Path) -> None:
    (root / "f").write_bytes(b"12345")
    (root / "d").mkdir()
    os.utime(root / "f", (1_700_000_000.9, 1_700_000_000.9))
    meta = vfs.stat(vfs.resolve(root, "f"))
    assert meta == vfs.Metadata(is_dir=False, is_file=True, size=5, mtime=1_700_000_000)
    assert vfs.stat(vfs.resolve(root, "d")).is_dir
    top = vfs.stat(vfs.resolve(root, ""))
    assert top.is_dir and abs(top.mtime - time.time()) < 60
    with pytest.raises(vfs.IoError) as info:
        vfs.stat(vfs.resolve(root, "missing"))
    assert str(info.value) == io_text(errno.ENOENT)


def test_stat_of_a_file_before_the_epoch_says_zero(root: Path) -> None:
    (root / "old").write_text("x")
    os.utime(root / "old", (-10, -10))
    assert vfs.stat(vfs.resolve(root, "old")).mtime == 0


def test_unlink_removes_files_and_empty_directories(root: Path) -> None:
    (root / "f").write_text("x")
    (root / "empty").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").write_text("x")
    vfs.unlink(vfs.resolve(root, "f"))
    vfs.unlink(vfs.resolve(root, "empty"))
    assert sorted(os.listdir(root)) == ["full"]
    with pytest.raises(vfs.IoError) as info:
        vfs.unlink(vfs.resolve(root, "full"))
    assert str(info.value) == io_text(errno.ENOTEMPTY)
    with pytest.raises(vfs.IoError) as info:
        vfs.unlink(vfs.resolve(root, "missing"))
    assert str(info.value) == io_text(errno.ENOENT)
    with pytest.raises(vfs.PermissionDenied):
        vfs.unlink(vfs.resolve(root, ""))


def test_an_in_root_symlink_is_operated_through_to_its_target(root: Path) -> None:
    (root / "target.txt").write_text("old")
    (root / "link.txt").symlink_to("target.txt")
    path = vfs.resolve(root, "link.txt")
    vfs.write_file(path, b"new")
    assert (root / "target.txt").read_text() == "new"
    assert (root / "link.txt").is_symlink()
    vfs.unlink(path)  # acts on the target, as the reference's resolution makes it
    assert not (root / "target.txt").exists()
    assert (root / "link.txt").is_symlink()


# ------------------------------------------------------------------------------------------
# A symlink swapped in after resolution is never followed


def swap_for_symlink(path: Path, target: Path) -> None:
    path.rename(path.with_name(path.name + ".moved"))
    path.symlink_to(target, target_is_directory=target.is_dir())


def test_a_directory_swapped_for_a_symlink_after_resolution_is_not_followed(
    root: Path, outside: Path
) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "canary").write_text("inside")
    new_file = vfs.resolve(root, "sub/new.txt")
    canary = vfs.resolve(root, "sub/canary")
    new_dir = vfs.resolve(root, "sub/newdir")
    listing = vfs.resolve(root, "sub")
    swap_for_symlink(root / "sub", outside)

    with pytest.raises(vfs.IoError):
        vfs.write_file(new_file, b"pwned")
    with pytest.raises(vfs.IoError):
        vfs.write_file(canary, b"pwned")
    with pytest.raises(vfs.IoError):
        vfs.read_file(canary, 100)
    with pytest.raises(vfs.IoError):
        vfs.mkdir(new_dir)
    with pytest.raises(vfs.IoError):
        vfs.unlink(canary)
    with pytest.raises(vfs.IoError):
        vfs.readdir(listing)
    with pytest.raises(vfs.IoError):
        vfs.stat(canary)
    assert not vfs.exists(canary)

    assert sorted(os.listdir(outside)) == ["canary"]
    assert (outside / "canary").read_bytes() == b"canary"


def test_a_deeper_directory_swapped_for_a_symlink_is_not_followed(
    root: Path, outside: Path
) -> None:
    (root / "a" / "b").mkdir(parents=True)
    path = vfs.resolve(root, "a/b/c/d.txt")
    swap_for_symlink(root / "a" / "b", outside)
    with pytest.raises(vfs.IoError):
        vfs.write_file(path, b"pwned")
    assert sorted(os.listdir(outside)) == ["canary"]


def test_a_final_symlink_swapped_in_is_never_written_through(root: Path, outside: Path) -> None:
    (root / "file.txt").write_text("mine")
    path = vfs.resolve(root, "file.txt")
    swap_for_symlink(root / "file.txt", outside / "canary")

    with pytest.raises(vfs.IoError) as info:
        vfs.write_file(path, b"pwned")
    assert str(info.value) == io_text(errno.ELOOP)
    with pytest.raises(vfs.IoError):
        vfs.read_file(path, 100)
    assert (outside / "canary").read_bytes() == b"canary"

    meta = vfs.stat(path)  # the link itself, not the canary behind it
    assert not meta.is_file and not meta.is_dir
    vfs.unlink(path)  # removes the link, not its target
    assert not (root / "file.txt").is_symlink()
    assert (outside / "canary").read_bytes() == b"canary"


def test_a_final_symlink_to_a_missing_outside_file_is_not_created_through(
    root: Path, outside: Path
) -> None:
    path = vfs.resolve(root, "new.txt")
    (root / "new.txt").symlink_to(outside / "created")
    with pytest.raises(vfs.IoError):
        vfs.write_file(path, b"pwned")
    with pytest.raises(vfs.IoError):
        vfs.mkdir(path)
    assert sorted(os.listdir(outside)) == ["canary"]
