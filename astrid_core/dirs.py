"""Directory layout: the Astrid home and the project workspace (spec/core.md §8).

:class:`AstridHome` is ``$ASTRID_HOME`` (used as-is) or ``$HOME/.astrid``; it holds keys, logs,
the session socket and token, the databases and the capsules. :class:`WorkspaceDir` is the
project a session works in, found by walking upward from a start directory.

Both are purely lexical: there is no tilde expansion, no canonicalization and no symlink
resolution.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from astrid_core.serde import parse_uuid_strict
from astrid_core.text import strip_unicode_whitespace

__all__ = ["AstridHome", "HomeResolutionError", "WorkspaceDir"]

StrPath = str | os.PathLike[str]

_DIR_MODE = 0o700


class HomeResolutionError(ValueError):
    """The Astrid home could not be resolved from the environment."""


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or ``None`` when it is unset or not valid Unicode.

    :data:`os.environ` represents undecodable bytes as lone surrogates (``surrogateescape``);
    the reference treats such a value as unset.
    """
    value = env.get(name)
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _checked_env_path(name: str, value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise HomeResolutionError(f"{name} must be an absolute path")
    if ".." in path.parts:
        raise HomeResolutionError(f"{name} must not contain '..' path components")
    return path


class AstridHome:
    """The Astrid home directory (``~/.astrid`` or ``$ASTRID_HOME``)."""

    __slots__ = ("_root",)

    def __init__(self, root: StrPath) -> None:
        self._root = Path(root)

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None) -> AstridHome:
        """Resolve the home from ``env`` (default :data:`os.environ`).

        ``ASTRID_HOME``, when set (even to an empty string) and valid Unicode, is the root itself
        and ``HOME`` is not consulted. Otherwise the root is ``$HOME/.astrid``. The chosen value
        must be absolute and free of ``..`` components.

        Raises :class:`HomeResolutionError` when neither variable is usable.
        """
        environ: Mapping[str, str] = os.environ if env is None else env
        astrid_home = _env_value(environ, "ASTRID_HOME")
        if astrid_home is not None:
            return cls(_checked_env_path("ASTRID_HOME", astrid_home))
        home = _env_value(environ, "HOME")
        if home is None:
            raise HomeResolutionError("neither ASTRID_HOME nor HOME environment variable is set")
        return cls(_checked_env_path("HOME", home) / ".astrid")

    @classmethod
    def from_path(cls, path: StrPath) -> AstridHome:
        """A home rooted at ``path``, without any check (meant for tests and tools)."""
        return cls(path)

    def ensure(self) -> None:
        """Create ``keys/``, ``logs/`` and ``sessions/`` (and the root), all mode 0o700.

        The modes are set with chmod, so the umask does not weaken them. No other directory is
        created.
        """
        private_dirs = (self.keys_dir(), self.logs_dir(), self.sessions_dir())
        for directory in private_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self._root, *private_dirs):
            directory.chmod(_DIR_MODE)

    def __repr__(self) -> str:
        return f"AstridHome(root={str(self._root)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AstridHome):
            return NotImplemented
        return self._root == other._root

    def __hash__(self) -> int:
        return hash((AstridHome, self._root))

    # Accessors (spec/core.md §8): each is the root joined with a fixed relative path.

    def root(self) -> Path:
        """The home directory itself."""
        return self._root

    def keys_dir(self) -> Path:
        """``keys/``: key material (0o700)."""
        return self._root / "keys"

    def logs_dir(self) -> Path:
        """``logs/`` (0o700)."""
        return self._root / "logs"

    def user_key_path(self) -> Path:
        """``keys/user.key``: the user's ed25519 secret key."""
        return self._root / "keys" / "user.key"

    def audit_db_path(self) -> Path:
        """``audit.db``."""
        return self._root / "audit.db"

    def capabilities_db_path(self) -> Path:
        """``capabilities.db``."""
        return self._root / "capabilities.db"

    def deferred_db_path(self) -> Path:
        """``deferred.db``."""
        return self._root / "deferred.db"

    def servers_config_path(self) -> Path:
        """``servers.toml``: MCP server configuration."""
        return self._root / "servers.toml"

    def config_path(self) -> Path:
        """``config.toml``."""
        return self._root / "config.toml"

    def sessions_dir(self) -> Path:
        """``sessions/``: socket, token and readiness file (0o700)."""
        return self._root / "sessions"

    def socket_path(self) -> Path:
        """``sessions/system.sock``: the daemon's client socket."""
        return self._root / "sessions" / "system.sock"

    def token_path(self) -> Path:
        """``sessions/system.token``: the session token (0o600)."""
        return self._root / "sessions" / "system.token"

    def ready_path(self) -> Path:
        """``sessions/system.ready``: created once every capsule has loaded."""
        return self._root / "sessions" / "system.ready"

    def state_db_path(self) -> Path:
        """``state.db``."""
        return self._root / "state.db"

    def shared_dir(self) -> Path:
        """``shared/``: the only VFS-readable area of the home (``global://``)."""
        return self._root / "shared"

    def capsules_dir(self) -> Path:
        """``capsules/``: installed capsules."""
        return self._root / "capsules"

    def capsules_cache_dir(self) -> Path:
        """``cache/capsules/``."""
        return self._root / "cache" / "capsules"

    def hooks_dir(self) -> Path:
        """``hooks/``."""
        return self._root / "hooks"

    def gateway_config_path(self) -> Path:
        """``gateway.toml``."""
        return self._root / "gateway.toml"

    def state_dir(self) -> Path:
        """``state/``."""
        return self._root / "state"

    def spark_path(self) -> Path:
        """``spark.toml``."""
        return self._root / "spark.toml"

    def run_dir(self) -> Path:
        """``run/``: runtime sockets of the astrid runtime.

        This is an astrid extension, not part of the reference layout, and :meth:`ensure` does not
        create it.
        """
        return self._root / "run"


def _is_dir(path: Path) -> bool:
    # os.path never raises (a permission error reads as "absent"), like Rust's Path::is_dir.
    return os.path.isdir(path)


def _exists(path: Path) -> bool:
    return os.path.exists(path)


class WorkspaceDir:
    """A project workspace: the directory holding ``.astrid/``, ``.git`` or ``ASTRID.md``."""

    __slots__ = ("_project_root",)

    def __init__(self, project_root: StrPath) -> None:
        self._project_root = Path(project_root)

    @classmethod
    def detect(cls, start: StrPath) -> WorkspaceDir:
        """Find the workspace containing ``start`` by walking upward lexically.

        A relative ``start`` is joined to the current directory (not canonicalized). At each
        level, the directory is the workspace if it has a ``.astrid`` directory, a ``.git`` file or
        directory, or an ``ASTRID.md`` file; the nearest such level wins. The walk goes up to
        ``/``; when nothing matches, the absolutized ``start`` is the workspace.
        """
        start_path = Path(start)
        if not start_path.is_absolute():
            try:
                start_path = Path(os.getcwd()) / start_path
            except OSError:
                pass
        directory = start_path
        while True:
            if (
                _is_dir(directory / ".astrid")
                or _exists(directory / ".git")
                or _exists(directory / "ASTRID.md")
            ):
                return cls(directory)
            parent = directory.parent
            if parent == directory:
                return cls(start_path)
            directory = parent

    @classmethod
    def from_path(cls, project_root: StrPath) -> WorkspaceDir:
        """A workspace rooted at ``project_root``, without any check."""
        return cls(project_root)

    def __repr__(self) -> str:
        return f"WorkspaceDir(project_root={str(self._project_root)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkspaceDir):
            return NotImplemented
        return self._project_root == other._project_root

    def __hash__(self) -> int:
        return hash((WorkspaceDir, self._project_root))

    def root(self) -> Path:
        """The project root."""
        return self._project_root

    def dot_astrid(self) -> Path:
        """``<root>/.astrid``."""
        return self._project_root / ".astrid"

    def workspace_id_path(self) -> Path:
        """``<root>/.astrid/workspace-id``."""
        return self.dot_astrid() / "workspace-id"

    def instructions_path(self) -> Path:
        """``<root>/.astrid/ASTRID.md``."""
        return self.dot_astrid() / "ASTRID.md"

    def workspace_id(self) -> uuid.UUID:
        """The workspace's stable id, created on first use.

        An existing ``workspace-id`` file is read, trimmed and parsed (any accepted UUID form) and
        left untouched. If it is missing, unreadable, not UTF-8 or not a UUID, a new v4 UUID is
        written in its place (lower-case hyphenated, no newline, plain write) and returned.
        """
        path = self.workspace_id_path()
        try:
            return parse_uuid_strict(strip_unicode_whitespace(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            pass
        self.dot_astrid().mkdir(parents=True, exist_ok=True)
        new_id = uuid.uuid4()
        path.write_text(str(new_id), encoding="utf-8")
        return new_id

    def ensure(self) -> uuid.UUID:
        """Create ``.astrid/`` and the workspace id if needed; return the id. Idempotent."""
        self.dot_astrid().mkdir(parents=True, exist_ok=True)
        return self.workspace_id()
