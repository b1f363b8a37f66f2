"""The capsules' view of the filesystem: a confined root (the workspace, or ``global://``).

There is no overlay (DESIGN §6.3): capsule writes reach the real directory. Two steps keep
every operation under its root:

1. :func:`resolve` maps a guest path onto a *physical* path, the way the reference's path
   pipeline does (syscalls.md §2.1, step 3): absolute guest paths are re-rooted, the longest
   existing prefix is canonicalized (so in-root symlinks lead to their targets), the rest is
   re-appended as it is, and the result must stay under the canonical root component-wise,
   else :class:`PathEscapesRoot`. The capability gate then judges the physical path.
2. The operations (:func:`exists`, :func:`mkdir`, :func:`readdir`, :func:`stat`,
   :func:`unlink`, :func:`read_file`, :func:`write_file`) never trust that path again: they
   open the root once and walk the physical components relative to it with ``dir_fd`` and
   ``O_NOFOLLOW``, and act on the final component through its parent's descriptor without
   following a symlink there. A directory swapped for a symlink after resolution makes the
   operation fail (:class:`VfsError`) instead of leading it out of the root.

Failures are :class:`VfsError` subclasses whose ``str()`` is the reference's ``VfsError``
display form (``IO error: No such file or directory (os error 2)``, ...).
"""

from __future__ import annotations

import errno
import os
import stat as stat_module
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "ROOT_MESSAGE",
    "FileTooLarge",
    "IoError",
    "Metadata",
    "NotFound",
    "NotSupported",
    "PathEscapesRoot",
    "PermissionDenied",
    "ResolvedPath",
    "SandboxViolation",
    "VfsError",
    "exists",
    "mkdir",
    "read_file",
    "readdir",
    "resolve",
    "stat",
    "unlink",
    "write_file",
]

#: Message of the operations that refuse to act on the root itself.
ROOT_MESSAGE = "Cannot operate on capability root directly"

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: An intermediate component (or a directory operand): a real directory, never a symlink.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``O_NONBLOCK`` keeps a FIFO in the tree from hanging the call; no effect on regular files.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_MODE = 0o666  # less the umask, as Rust's OpenOptions and open(2) do
_DIR_MODE = 0o777

_READ_CHUNK = 64 * 1024


# ------------------------------------------------------------------------------------------
# Errors


class VfsError(Exception):
    """A failed filesystem operation; ``str()`` is the reference's display form."""

    prefix: ClassVar[str] = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.prefix}: {self.message}"


class SandboxViolation(VfsError):
    prefix = "Path resolves outside sandbox boundaries"


class IoError(VfsError):
    """An OS error, rendered like Rust's ``io::Error``: ``<strerror> (os error <n>)``."""

    prefix = "IO error"

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_

    @classmethod
    def from_errno(cls, code: int) -> IoError:
        return cls(f"{os.strerror(code)} (os error {code})", code)

    @classmethod
    def from_os_error(cls, exc: OSError) -> IoError:
        if exc.errno is None:
            return cls(exc.strerror or str(exc))
        return cls.from_errno(exc.errno)


class NotFound(VfsError):
    prefix = "Not found"


class PermissionDenied(VfsError):
    prefix = "Permission denied"


class NotSupported(VfsError):
    prefix = "Not supported"


class FileTooLarge(PermissionDenied):
    """A file bigger than the caller's read limit (checked before and during the read)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"File too large to read into memory ({size} bytes > {limit} bytes)")
        self.size = size
        self.limit = limit


class PathEscapesRoot(Exception):
    """The guest path resolves outside its root (``physical`` is where it led)."""

    def __init__(self, requested: str, physical: str) -> None:
        super().__init__(requested, physical)
        self.requested = requested
        self.physical = physical


# ------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    """A guest path mapped under its root.

    ``root`` is the canonical root, ``parts`` the physical path's components below it (empty
    for the root itself; a non-existent tail is kept verbatim, so it may hold ``..``, which
    the gate and the operations refuse).
    """

    root: str
    parts: tuple[str, ...]

    @property
    def physical(self) -> str:
        """The absolute physical path (what the capability gate checks)."""
        return _join(self.root, self.parts)

    @property
    def relative(self) -> str:
        return "/".join(self.parts)

    @property
    def is_root(self) -> bool:
        return not self.parts


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _join(base: str, parts: Sequence[str]) -> str:
    if not parts:
        return base
    return base.rstrip("/") + "/" + "/".join(parts)


def _lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except (OSError, ValueError):
        return False
    return True


#: How often :func:`resolve` starts over when the tree changes while it canonicalizes.
_RESOLVE_ATTEMPTS = 3


def _canonical(base: str, base_parts: list[str], parts: list[str]) -> list[str]:
    """The physical components of ``base``/``parts``: the longest existing prefix
    canonicalized, the rest appended as given. Raises ``OSError`` if the tree races."""
    for keep in range(len(parts), -1, -1):
        candidate = _join(base, parts[:keep])
        if _lexists(candidate):
            return [*_components(os.path.realpath(candidate, strict=False)), *parts[keep:]]
    return [*base_parts, *parts]


def resolve(root: str | os.PathLike[str], requested: str) -> ResolvedPath:
    """Map the guest path ``requested`` under ``root``.

    A leading ``/`` is dropped (absolute paths are re-rooted); the longest prefix that exists
    is canonicalized (following symlinks) and the remaining components are re-appended as
    they are. Raises :class:`PathEscapesRoot` when the result is not under the canonical root
    (``..`` past the root, a symlink leading out).
    """
    base = os.path.realpath(root)
    base_parts = _components(base)
    parts = _components(requested)
    for attempt in range(_RESOLVE_ATTEMPTS):
        try:
            physical = _canonical(base, base_parts, parts)
            break
        except OSError as exc:
            # The tree changed under us (a link swapped for a directory between lstat and
            # readlink): resolve again from scratch; report it only when it keeps happening.
            if attempt == _RESOLVE_ATTEMPTS - 1:
                raise IoError.from_os_error(exc) from None
    if physical[: len(base_parts)] != base_parts:
        raise PathEscapesRoot(requested, "/" + "/".join(physical))
    return ResolvedPath(base, tuple(physical[len(base_parts) :]))


# ------------------------------------------------------------------------------------------
# Confined operations


@dataclass(frozen=True, slots=True)
class Metadata:
    is_dir: bool
    is_file: bool
    size: int
    #: Modification time in whole seconds since the epoch; 0 when before it.
    mtime: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Metadata:
        return cls(
            is_dir=stat_module.S_ISDIR(st.st_mode),
            is_file=stat_module.S_ISREG(st.st_mode),
            size=st.st_size,
            mtime=max(0, st.st_mtime_ns // 1_000_000_000),
        )


@contextmanager
def _os_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise IoError.from_os_error(exc) from None


def _checked(path: ResolvedPath) -> tuple[str, ...]:
    for name in path.parts:
        if name == "..":
            raise SandboxViolation(path.relative)
        if "\0" in name:
            raise IoError("file name contained an unexpected NUL byte")
    return path.parts


def _open_child(fd: int, name: str, create: bool) -> int:
    """Open directory ``name`` in directory ``fd`` without following a symlink.

    With ``create``, a missing directory is made first and an entry that is not a directory
    fails with ``EEXIST``, as a recursive ``mkdir`` reports it.
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    except NotADirectoryError:
        if not create:
            raise
        raise IoError.from_errno(errno.EEXIST) from None
    try:
        os.mkdir(name, _DIR_MODE, dir_fd=fd)
    except FileExistsError:
        pass  # made concurrently; open it below
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except NotADirectoryError:
        raise IoError.from_errno(errno.EEXIST) from None


@contextmanager
def _directory(path: ResolvedPath, names: Sequence[str], create: bool = False) -> Iterator[int]:
    """A descriptor of the directory ``names`` below the root, walked without symlinks."""
    fd = os.open(path.root, _ROOT_FLAGS)
    try:
        for name in names:
            child = _open_child(fd, name, create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def exists(path: ResolvedPath) -> bool:
    """Whether the path exists (a symlink at the end counts, it is not followed).

    The root always exists. Raises :class:`SandboxViolation` for a ``..`` component.
    """
    names = _checked(path)
    if not names:
        return True
    try:
        with _directory(path, names[:-1]) as fd:
            os.stat(names[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def mkdir(path: ResolvedPath) -> None:
    """Create the directory and its missing parents; an existing directory is fine."""
    names = _checked(path)
    if not names:
        raise PermissionDenied(ROOT_MESSAGE)
    with _os_errors(), _directory(path, names, create=True):
        pass


def readdir(path: ResolvedPath) -> list[str]:
    """Names of the directory's entries, sorted (no ``.``/``..``; undecodable bytes → U+FFFD)."""
    names = _checked(path)
    with _os_errors(), _directory(path, names) as fd:
        entries = os.listdir(fd)
    return sorted(os.fsencode(entry).decode("utf-8", "replace") for entry in entries)


def stat(path: ResolvedPath) -> Metadata:
    """Metadata of the final component (not following a symlink there)."""
    names = _checked(path)
    with _os_errors():
        if not names:
            with _directory(path, ()) as fd:
                return Metadata.from_stat(os.fstat(fd))
        with _directory(path, names[:-1]) as fd:
            return Metadata.from_stat(os.stat(names[-1], dir_fd=fd, follow_symlinks=False))


def unlink(path: ResolvedPath) -> None:
    """Remove a file, a symlink (not its target) or an empty directory."""
    names = _checked(path)
    if not names:
        raise PermissionDenied(ROOT_MESSAGE)
    with _os_errors(), _directory(path, names[:-1]) as fd:
        st = os.stat(names[-1], dir_fd=fd, follow_symlinks=False)
        if stat_module.S_ISDIR(st.st_mode):
            os.rmdir(names[-1], dir_fd=fd)
        else:
            os.unlink(names[-1], dir_fd=fd)


def _read_fd(fd: int, limit: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > limit:
        raise FileTooLarge(size, limit)
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, min(limit + 1 - total, max(size + 1 - total, _READ_CHUNK)))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:  # grew while being read
        raise FileTooLarge(total, limit)
    return b"".join(chunks)


def read_file(path: ResolvedPath, limit: int) -> bytes:
    """The file's content; :class:`FileTooLarge` when it is over ``limit`` bytes.

    The size is checked first (without following a symlink at the end), again on the opened
    file, and while reading (a file growing meanwhile is refused too).
    """
    names = _checked(path)
    with _os_errors():
        if not names:
            raise IoError.from_errno(errno.EISDIR)
        with _directory(path, names[:-1]) as parent:
            size = os.stat(names[-1], dir_fd=parent, follow_symlinks=False).st_size
            if size > limit:
                raise FileTooLarge(size, limit)
            fd = os.open(names[-1], _READ_FLAGS, dir_fd=parent)
        try:
            return _read_fd(fd, limit)
        finally:
            os.close(fd)


def write_file(path: ResolvedPath, data: bytes, create_parents: bool = True) -> None:
    """Create or truncate the file and write ``data``; never through a symlink at the end.

    With ``create_parents`` missing parent directories are made first; otherwise the parent
    must exist.
    """
    names = _checked(path)
    with _os_errors():
        if not names:
            raise IoError.from_errno(errno.EISDIR)
        with _directory(path, names[:-1], create=create_parents) as parent:
            fd = os.open(names[-1], _WRITE_FLAGS, _FILE_MODE, dir_fd=parent)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
