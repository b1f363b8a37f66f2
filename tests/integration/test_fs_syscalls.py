"""The seven filesystem syscalls through a real broker and real workers (syscalls.md §2.1).

Copies of the syscaller capsule with different ``fs_read``/``fs_write`` grants call the
syscalls; every error text of §2.1 is asserted as a trap the caller sees. The workspace is real
(DESIGN §6.3): what a capsule writes is on disk, and what the host put there is readable.
Mirrors the reference's vfs_path_traversal, vfs_legitimate_rw, global_vfs_read and
global_vfs_denied_without_capability.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from astrid_core.rpc import RpcError
from astrid_core.syscalls import BY_NAME
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LIMIT = 10 * MiB

Call = tuple[str, Sequence[bytes | Fill]]

GLOBAL_UNAVAILABLE = (
    "global:// scheme is not available: no ~/.astrid/shared/ directory is configured. "
    "Create the directory and restart the kernel."
)
ROOT_DENIED = "Permission denied: Cannot operate on capability root directly"
ENOENT = "IO error: No such file or directory (os error 2)"

#: Each syscall of the group, the gate check it uses, and its name in "security denied {op}".
OPS = {
    "astrid_fs_exists": ("read", "exists check"),
    "astrid_fs_mkdir": ("write", "mkdir"),
    "astrid_fs_readdir": ("read", "readdir"),
    "astrid_fs_stat": ("read", "stat"),
    "astrid_fs_unlink": ("write", "unlink"),
    "astrid_read_file": ("read", "read_file"),
    "astrid_write_file": ("write", "write_file"),
}


def call(name: str, path: bytes | Fill, content: bytes | Fill = b"x") -> Call:
    """A call of fs syscall ``name`` (write_file gets ``content`` as its second argument)."""
    return (name, [path, content] if BY_NAME[name].arity == 2 else [path])


@dataclass
class Fs:
    runtime: Runtime
    client: Client
    #: Canonical workspace and global roots (the physical paths the gate sees).
    workspace: Path
    shared: Path
    outside: Path

    def run(self, capsule: str, calls: Sequence[Call]) -> list[bytes | None]:
        arguments = json.loads(script_tool_args(encode_script(calls)))
        output = self.client.call_tool(capsule, "run", arguments, timeout=60)
        return decode_hex_output(output)

    def trap(self, capsule: str, calls: Sequence[Call]) -> str:
        with pytest.raises(RpcError) as info:
            self.run(capsule, calls)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")


def _capabilities(read: Sequence[str] = (), write: Sequence[str] = ()) -> str:
    return f"[capabilities]\nfs_read = {json.dumps(list(read))}\nfs_write = {json.dumps(list(write))}\n"


@pytest.fixture(scope="module")
def fs(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fs]:
    base = tmp_path_factory.mktemp("fs")
    home, workspace, outside = base / "home", base / "ws", base / "outside"
    for directory in (home, workspace, outside):
        directory.mkdir()
    (outside / "canary").write_bytes(b"canary")
    real_ws = Path(os.path.realpath(workspace))
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    source, caps = capsules["syscaller"], base / "caps"

    def start(name: str, toml: str = "") -> None:
        runtime.start_worker(copy_capsule(source, caps, name=name, extra_toml=toml))

    # Connected while $ASTRID_HOME/shared does not exist: global:// is not mounted for it.
    start("fs-noglobal", _capabilities(["*", "global://"], ["*", "global://"]))
    shared = home / "shared"
    shared.mkdir()
    (shared / "test-global.txt").write_text("hello from global")
    start("fs-all", _capabilities(["*", "global://"], ["*", "global://"]))
    start("fs-none")
    start("fs-ws", _capabilities(["workspace://"], ["workspace://"]))
    start("fs-star", _capabilities(["*"], ["*"]))
    start("fs-ro", _capabilities(["*"]))
    start("fs-sub", _capabilities(["workspace://sub"], ["workspace://sub"]))
    start("fs-literal", _capabilities([f"{real_ws}/data"], [f"{real_ws}/data"]))
    client = runtime.client()
    yield Fs(runtime, client, real_ws, Path(os.path.realpath(shared)), outside)
    client.close()
    runtime.stop()


# --------------------------------------------------------------------------------------------
# Legitimate use: the real workspace


def test_legitimate_read_write_round_trip(fs: Fs) -> None:
    """Mirrors vfs_legitimate_rw."""
    results = fs.run(
        "fs-all",
        [
            call("astrid_write_file", b"test_rw_legitimate.txt", b"hello vfs"),
            call("astrid_read_file", b"test_rw_legitimate.txt"),
        ],
    )
    assert results == [None, b"hello vfs"]
    assert (fs.workspace / "test_rw_legitimate.txt").read_bytes() == b"hello vfs"


def test_writes_reach_the_real_workspace_with_their_parents(fs: Fs) -> None:
    fs.run(
        "fs-all",
        [
            call("astrid_write_file", b"made/by/capsule.txt", b"v1"),
            call("astrid_write_file", b"/made/by/capsule.txt", b"v2"),  # re-rooted, truncates
            call("astrid_fs_mkdir", b"made/dir/deeper"),
            call("astrid_fs_mkdir", b"made/dir/deeper"),  # already there: fine
        ],
    )
    assert (fs.workspace / "made" / "by" / "capsule.txt").read_bytes() == b"v2"
    assert (fs.workspace / "made" / "dir" / "deeper").is_dir()
    fs.run(
        "fs-all",
        [
            call("astrid_fs_unlink", b"made/by/capsule.txt"),
            call("astrid_fs_unlink", b"made/dir/deeper"),
        ],
    )
    assert not (fs.workspace / "made" / "by" / "capsule.txt").exists()
    assert not (fs.workspace / "made" / "dir" / "deeper").exists()


def test_what_the_host_put_in_the_workspace_is_visible(fs: Fs) -> None:
    host = fs.workspace / "host-dir"
    host.mkdir()
    (host / "b.txt").write_bytes(b"12345")
    (host / "a.txt").write_text("a")
    (host / ".hidden").write_text("h")
    (host / "sub").mkdir()
    os.utime(host / "b.txt", (1_700_000_000, 1_700_000_000))
    exists, missing, listing, file_stat, dir_stat, content = fs.run(
        "fs-all",
        [
            call("astrid_fs_exists", b"host-dir/b.txt"),
            call("astrid_fs_exists", b"host-dir/nope"),
            call("astrid_fs_readdir", b"host-dir"),
            call("astrid_fs_stat", b"host-dir/b.txt"),
            call("astrid_fs_stat", b"host-dir/sub"),
            call("astrid_read_file", b"host-dir/b.txt"),
        ],
    )
    assert exists == b"true"
    assert missing == b""
    assert listing == b'[".hidden","a.txt","b.txt","sub"]'
    assert file_stat == b'{"isDir":false,"mtime":1700000000,"size":5}'
    assert dir_stat is not None and json.loads(dir_stat)["isDir"] is True
    assert list(json.loads(dir_stat)) == ["isDir", "mtime", "size"]
    assert content == b"12345"


def test_the_root_always_exists_and_lists(fs: Fs) -> None:
    (fs.workspace / "root-marker").write_text("x")
    exists, listing = fs.run(
        "fs-all", [call("astrid_fs_exists", b""), call("astrid_fs_readdir", b"/")]
    )
    assert exists == b"true"
    assert listing is not None and "root-marker" in json.loads(listing)


def test_an_in_workspace_symlink_is_followed(fs: Fs) -> None:
    (fs.workspace / "real-target.txt").write_text("through the link")
    (fs.workspace / "alias.txt").symlink_to("real-target.txt")
    assert fs.run("fs-all", [call("astrid_read_file", b"alias.txt")]) == [b"through the link"]


def test_an_empty_file_reads_as_empty(fs: Fs) -> None:
    (fs.workspace / "empty.txt").write_bytes(b"")
    assert fs.run("fs-all", [call("astrid_read_file", b"empty.txt")]) == [b""]


# --------------------------------------------------------------------------------------------
# Escaping the root


def test_path_traversal_escapes_the_root(fs: Fs) -> None:
    """Mirrors vfs_path_traversal."""
    requested = "../../../../../../etc/passwd"
    text = fs.trap("fs-all", [call("astrid_read_file", requested.encode())])
    physical = os.path.realpath(os.path.join(fs.workspace, requested))
    assert text == f"path escapes root boundary: {requested} resolves to {physical}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_refuses_to_escape_before_the_gate(fs: Fs, name: str) -> None:
    # fs-none has no grant at all: the escape is reported, not a denial.
    text = fs.trap("fs-none", [call(name, b"../escaped")])
    assert text == (
        f"path escapes root boundary: ../escaped resolves to {fs.workspace.parent}/escaped"
    )
    assert not (fs.workspace.parent / "escaped").exists()


def test_a_symlink_out_of_the_workspace_escapes(fs: Fs) -> None:
    (fs.workspace / "way-out").symlink_to(fs.outside, target_is_directory=True)
    text = fs.trap("fs-all", [call("astrid_write_file", b"way-out/canary", b"pwned")])
    assert text == (f"path escapes root boundary: way-out/canary resolves to {fs.outside}/canary")
    assert (fs.outside / "canary").read_bytes() == b"canary"


def test_url_encoded_traversal_stays_literal(fs: Fs) -> None:
    fs.run("fs-all", [call("astrid_write_file", b"%2e%2e/pct.txt", b"x")])
    assert (fs.workspace / "%2e%2e" / "pct.txt").read_bytes() == b"x"


def test_a_non_utf8_path_is_the_root(fs: Fs) -> None:
    root_listing, bad_listing, exists = fs.run(
        "fs-all",
        [
            call("astrid_fs_readdir", b""),
            call("astrid_fs_readdir", b"\xff\xfe"),
            call("astrid_fs_exists", b"\xc3"),
        ],
    )
    assert bad_listing == root_listing
    assert exists == b"true"
    assert fs.trap("fs-all", [call("astrid_fs_mkdir", b"\xff")]) == f"mkdir failed: {ROOT_DENIED}"
    assert (
        fs.trap("fs-all", [call("astrid_fs_unlink", b"global://\xff")])
        == f"unlink failed: {ROOT_DENIED}"
    )


# --------------------------------------------------------------------------------------------
# global://


def test_global_read_with_the_capability(fs: Fs) -> None:
    """Mirrors global_vfs_read."""
    assert fs.run("fs-all", [call("astrid_read_file", b"global://test-global.txt")]) == [
        b"hello from global"
    ]


def test_global_read_without_the_capability_is_denied(fs: Fs) -> None:
    """Mirrors global_vfs_denied_without_capability."""
    text = fs.trap("fs-ws", [call("astrid_read_file", b"global://secret.txt")])
    assert text == (
        "security denied read_file: capsule 'fs-ws' denied: read access to "
        f"'{fs.shared}/secret.txt' not declared in manifest"
    )


def test_star_never_covers_global(fs: Fs) -> None:
    text = fs.trap("fs-star", [call("astrid_fs_exists", b"global://test-global.txt")])
    assert text == (
        "security denied exists check: capsule 'fs-star' denied: read access to "
        f"'{fs.shared}/test-global.txt' not declared in manifest"
    )


def test_global_writes_hit_disk_but_need_the_parent(fs: Fs) -> None:
    fs.run("fs-all", [call("astrid_write_file", b"global://from-capsule.txt", b"shared")])
    assert (fs.shared / "from-capsule.txt").read_bytes() == b"shared"
    text = fs.trap("fs-all", [call("astrid_write_file", b"global://no-dir/x.txt", b"x")])
    assert text == f"write_file failed: {ENOENT}"
    assert not (fs.shared / "no-dir").exists()
    fs.run(
        "fs-all",
        [
            call("astrid_fs_mkdir", b"global://made"),
            call("astrid_write_file", b"global://made/x.txt", b"x"),
        ],
    )
    assert (fs.shared / "made" / "x.txt").read_bytes() == b"x"


def test_global_traversal_escapes_the_global_root(fs: Fs) -> None:
    text = fs.trap("fs-all", [call("astrid_read_file", b"global://../state.db")])
    assert text == (
        f"path escapes root boundary: ../state.db resolves to {fs.shared.parent}/state.db"
    )


@pytest.mark.parametrize("name", sorted(OPS))
def test_global_is_unavailable_when_shared_was_missing_at_connect(fs: Fs, name: str) -> None:
    assert fs.trap("fs-noglobal", [call(name, b"global://test-global.txt")]) == GLOBAL_UNAVAILABLE


# --------------------------------------------------------------------------------------------
# The gate: denial per op, and the grant forms


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_is_denied_without_a_grant(fs: Fs, name: str) -> None:
    mode, op = OPS[name]
    text = fs.trap("fs-none", [call(name, b"/some/file.txt")])
    assert text == (
        f"security denied {op}: capsule 'fs-none' denied: {mode} access to "
        f"'{fs.workspace}/some/file.txt' not declared in manifest"
    )
    assert not (fs.workspace / "some").exists()


def test_a_read_grant_does_not_allow_writing(fs: Fs) -> None:
    (fs.workspace / "read-only.txt").write_text("readable")
    assert fs.run("fs-ro", [call("astrid_read_file", b"read-only.txt")]) == [b"readable"]
    text = fs.trap("fs-ro", [call("astrid_write_file", b"read-only.txt", b"x")])
    assert text == (
        "security denied write_file: capsule 'fs-ro' denied: write access to "
        f"'{fs.workspace}/read-only.txt' not declared in manifest"
    )
    assert (fs.workspace / "read-only.txt").read_text() == "readable"


def test_a_workspace_scheme_grant_covers_its_subtree_only(fs: Fs) -> None:
    results = fs.run(
        "fs-sub",
        [
            call("astrid_fs_mkdir", b"sub/inner"),
            call("astrid_write_file", b"sub/inner/f.txt", b"ok"),
            call("astrid_read_file", b"/sub/inner/f.txt"),
            call("astrid_fs_readdir", b"sub"),
        ],
    )
    assert results == [None, None, b"ok", b'["inner"]']
    text = fs.trap("fs-sub", [call("astrid_write_file", b"sub-evil/f.txt", b"x")])
    assert text == (
        "security denied write_file: capsule 'fs-sub' denied: write access to "
        f"'{fs.workspace}/sub-evil/f.txt' not declared in manifest"
    )
    text = fs.trap("fs-sub", [call("astrid_fs_readdir", b"")])
    assert text == (
        "security denied readdir: capsule 'fs-sub' denied: read access to "
        f"'{fs.workspace}' not declared in manifest"
    )


def test_a_literal_absolute_grant_respects_component_boundaries(fs: Fs) -> None:
    fs.run(
        "fs-literal",
        [call("astrid_write_file", b"data/f.txt", b"lit"), call("astrid_fs_stat", b"data")],
    )
    assert (fs.workspace / "data" / "f.txt").read_bytes() == b"lit"
    (fs.workspace / "data-evil").mkdir()
    (fs.workspace / "data-evil" / "f.txt").write_text("no")
    text = fs.trap("fs-literal", [call("astrid_read_file", b"data-evil/f.txt")])
    assert text == (
        "security denied read_file: capsule 'fs-literal' denied: read access to "
        f"'{fs.workspace}/data-evil/f.txt' not declared in manifest"
    )


def test_a_dotdot_left_in_a_missing_tail_is_denied_by_the_gate(fs: Fs) -> None:
    text = fs.trap("fs-all", [call("astrid_write_file", b"nowhere/../dotdot.txt", b"x")])
    assert text == (
        "security denied write_file: capsule 'fs-all' denied: write access to "
        f"'{fs.workspace}/nowhere/../dotdot.txt' not declared in manifest"
    )
    assert not (fs.workspace / "nowhere").exists()
    assert not (fs.workspace / "dotdot.txt").exists()


# --------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("name", sorted(OPS))
def test_a_path_over_4096_bytes_is_refused(fs: Fs, name: str) -> None:
    text = fs.trap("fs-all", [call(name, Fill(ord("p"), 4097))])
    assert text == "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes"


def test_a_4096_byte_path_passes_the_guard(fs: Fs) -> None:
    # Too long a name for the OS: exists swallows the error.
    assert fs.run("fs-all", [call("astrid_fs_exists", Fill(ord("p"), 4096))]) == [b""]


def test_write_content_over_10MiB_is_refused_after_the_path_guard(fs: Fs) -> None:
    text = fs.trap("fs-all", [call("astrid_write_file", b"big.bin", Fill(ord("x"), LIMIT + 1))])
    assert text == (
        "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
    )
    assert not (fs.workspace / "big.bin").exists()
    text = fs.trap(
        "fs-all",
        [call("astrid_write_file", Fill(ord("p"), 4097), Fill(ord("x"), LIMIT + 1))],
    )
    assert text == "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes"


def test_exactly_10MiB_writes_and_reads(fs: Fs) -> None:
    assert fs.run("fs-all", [call("astrid_write_file", b"ten.bin", Fill(ord("z"), LIMIT))]) == [
        None
    ]
    assert (fs.workspace / "ten.bin").read_bytes() == b"z" * LIMIT
    # The read succeeds: what fails is the syscaller's own 1 MiB buffer for its results, after
    # the host call returned (a refused read would trap with "read_file failed: ...").
    text = fs.trap("fs-all", [call("astrid_read_file", b"ten.bin")])
    assert text == "syscaller: results exceed 1 MiB"


def test_a_large_file_round_trips(fs: Fs) -> None:
    data = bytes(range(256)) * 2048  # 512 KiB, every byte value
    (fs.workspace / "large.bin").write_bytes(data)
    assert fs.run("fs-all", [call("astrid_read_file", b"large.bin")]) == [data]


def test_a_file_over_10MiB_is_too_large_to_read(fs: Fs) -> None:
    (fs.workspace / "huge.bin").write_bytes(b"h" * (LIMIT + 1))
    text = fs.trap("fs-all", [call("astrid_read_file", b"huge.bin")])
    assert text == (
        "read_file failed: Permission denied: File too large to read into memory "
        "(10485761 bytes > 10485760 bytes)"
    )


# --------------------------------------------------------------------------------------------
# Operation failures


@pytest.mark.parametrize(
    ("prepare", "calls", "text"),
    [
        (None, [call("astrid_fs_mkdir", b"")], f"mkdir failed: {ROOT_DENIED}"),
        (None, [call("astrid_fs_mkdir", b"global://")], f"mkdir failed: {ROOT_DENIED}"),
        (None, [call("astrid_fs_unlink", b"/")], f"unlink failed: {ROOT_DENIED}"),
        (
            "file",
            [call("astrid_fs_mkdir", b"errs/file.txt")],
            "mkdir failed: IO error: File exists (os error 17)",
        ),
        (None, [call("astrid_fs_readdir", b"errs/missing")], f"readdir failed: {ENOENT}"),
        (
            "file",
            [call("astrid_fs_readdir", b"errs/file.txt")],
            "readdir failed: IO error: Not a directory (os error 20)",
        ),
        (None, [call("astrid_fs_stat", b"errs/missing")], f"stat failed: {ENOENT}"),
        (None, [call("astrid_fs_unlink", b"errs/missing")], f"unlink failed: {ENOENT}"),
        (
            "file",
            [call("astrid_fs_unlink", b"errs")],
            "unlink failed: IO error: Directory not empty (os error 39)",
        ),
        (None, [call("astrid_read_file", b"errs/missing")], f"read_file failed: {ENOENT}"),
        (
            "file",
            [call("astrid_read_file", b"errs")],
            "read_file failed: IO error: Is a directory (os error 21)",
        ),
        (
            "file",
            [call("astrid_write_file", b"errs", b"x")],
            "write_file failed: IO error: Is a directory (os error 21)",
        ),
        (
            "file",
            [call("astrid_write_file", b"errs/file.txt/under", b"x")],
            "write_file failed: IO error: File exists (os error 17)",
        ),
    ],
    ids=[
        "mkdir-root",
        "mkdir-global-root",
        "unlink-root",
        "mkdir-over-file",
        "readdir-missing",
        "readdir-file",
        "stat-missing",
        "unlink-missing",
        "unlink-non-empty",
        "read-missing",
        "read-directory",
        "write-directory",
        "write-under-file",
    ],
)
def test_operation_failures_trap_with_the_spec_text(
    fs: Fs, prepare: str | None, calls: list[Call], text: str
) -> None:
    errs = fs.workspace / "errs"
    errs.mkdir(exist_ok=True)
    if prepare == "file":
        (errs / "file.txt").write_text("x")
    assert fs.trap("fs-all", calls) == text


def test_exists_swallows_operation_errors(fs: Fs) -> None:
    (fs.workspace / "plain.txt").write_text("x")
    assert fs.run(
        "fs-all",
        [call("astrid_fs_exists", b"plain.txt/under"), call("astrid_fs_exists", b"a\0b")],
    ) == [b"", b""]


def test_a_trapped_fs_call_stops_the_guest(fs: Fs) -> None:
    text = fs.trap(
        "fs-all",
        [
            call("astrid_write_file", b"trap-before.txt", b"1"),
            call("astrid_fs_unlink", b""),
            call("astrid_write_file", b"trap-after.txt", b"1"),
        ],
    )
    assert text == f"unlink failed: {ROOT_DENIED}"
    assert (fs.workspace / "trap-before.txt").exists()
    assert not (fs.workspace / "trap-after.txt").exists()
