"""The seven filesystem syscalls (syscalls.md §2.1, DESIGN §6.3).

Every call runs the same pipeline: the path argument (at most 4096 bytes; invalid UTF-8 is
the root), ``global://`` selecting ``$ASTRID_HOME/shared`` instead of the workspace, the
symlink-safe resolution of :mod:`broker.vfs` (escaping the root traps), the capability gate on
the physical path, then the operation on the real directory. Reads and writes of whole files
run in a thread so a big file does not hold up the broker's loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from broker import vfs
from broker.errors import SyscallError, guard, lossy_or_empty
from broker.gate import GateDenied
from broker.limits import MAX_GUEST_PAYLOAD_LEN, MAX_PATH_LEN
from broker.sessions import CapsuleSession

_T = TypeVar("_T")

GLOBAL_SCHEME = "global://"
GLOBAL_UNAVAILABLE = (
    "global:// scheme is not available: no ~/.astrid/shared/ directory is configured. "
    "Create the directory and restart the kernel."
)


def _resolve(session: CapsuleSession, raw: bytes, op: str, write: bool) -> vfs.ResolvedPath:
    """The common pipeline up to the operation: decode, pick the root, resolve, gate."""
    path = lossy_or_empty(raw)
    if path.startswith(GLOBAL_SCHEME):
        if session.global_root is None:
            raise SyscallError(GLOBAL_UNAVAILABLE)
        root = session.global_root
        path = path.removeprefix(GLOBAL_SCHEME)
    else:
        root = session.kernel.workspace
    try:
        resolved = vfs.resolve(root, path)
    except vfs.PathEscapesRoot as exc:
        raise SyscallError(
            f"path escapes root boundary: {exc.requested} resolves to {exc.physical}"
        ) from None
    except vfs.VfsError as exc:
        raise SyscallError(f"{op} failed: {exc}") from None
    check = session.gate.check_file_write if write else session.gate.check_file_read
    try:
        check(resolved.physical)
    except GateDenied as exc:
        raise SyscallError(f"security denied {op}: {exc}") from None
    return resolved


def _run(op: str, action: Callable[[], _T]) -> _T:
    try:
        return action()
    except vfs.VfsError as exc:
        raise SyscallError(f"{op} failed: {exc}") from None


async def _in_thread(op: str, action: Callable[[], _T]) -> _T:
    try:
        return await asyncio.to_thread(action)
    except vfs.VfsError as exc:
        raise SyscallError(f"{op} failed: {exc}") from None


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def astrid_fs_exists(session: CapsuleSession, path: bytes) -> bytes:
    resolved = _resolve(session, guard(path, MAX_PATH_LEN), "exists check", write=False)
    try:
        found = vfs.exists(resolved)
    except vfs.VfsError:
        found = False
    return b"true" if found else b""


def astrid_fs_mkdir(session: CapsuleSession, path: bytes) -> None:
    resolved = _resolve(session, guard(path, MAX_PATH_LEN), "mkdir", write=True)
    _run("mkdir", lambda: vfs.mkdir(resolved))


def astrid_fs_readdir(session: CapsuleSession, path: bytes) -> bytes:
    resolved = _resolve(session, guard(path, MAX_PATH_LEN), "readdir", write=False)
    return _json(_run("readdir", lambda: vfs.readdir(resolved)))


def astrid_fs_stat(session: CapsuleSession, path: bytes) -> bytes:
    resolved = _resolve(session, guard(path, MAX_PATH_LEN), "stat", write=False)
    meta = _run("stat", lambda: vfs.stat(resolved))
    return _json({"isDir": meta.is_dir, "mtime": meta.mtime, "size": meta.size})


def astrid_fs_unlink(session: CapsuleSession, path: bytes) -> None:
    resolved = _resolve(session, guard(path, MAX_PATH_LEN), "unlink", write=True)
    _run("unlink", lambda: vfs.unlink(resolved))


def astrid_read_file(session: CapsuleSession, path: bytes) -> Coroutine[Any, Any, bytes]:
    resolved = _resolve(session, guard(path, MAX_PATH_LEN), "read_file", write=False)
    return _in_thread("read_file", lambda: vfs.read_file(resolved, MAX_GUEST_PAYLOAD_LEN))


def astrid_write_file(
    session: CapsuleSession, path: bytes, content: bytes
) -> Coroutine[Any, Any, None]:
    guard(path, MAX_PATH_LEN)
    guard(content, MAX_GUEST_PAYLOAD_LEN)
    is_global = lossy_or_empty(path).startswith(GLOBAL_SCHEME)
    resolved = _resolve(session, path, "write_file", write=True)
    # The workspace gets missing parents made (as the reference's overlay did); global://
    # needs the parent to exist (a plain host VFS there).
    return _in_thread(
        "write_file", lambda: vfs.write_file(resolved, content, create_parents=not is_global)
    )
