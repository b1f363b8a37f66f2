"""The manifest capability gate.

One :class:`CapabilityGate` per loaded capsule, built from its ``[capabilities]``. The manifest
was approved by the user when the capsule was installed, so whatever it declares is allowed
and everything else is denied. Each ``check_*`` method returns ``None`` when the operation is
allowed and raises :class:`GateDenied` otherwise; the exception text is the reason exactly as
the reference words it (handlers prefix it, e.g. ``security denied read_file: <reason>``).

Filesystem checks take the *physical* absolute path produced by the broker's path resolver
(paths already confined to the workspace or global root, symlinks resolved).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Sequence

from astrid_core.manifest import Capabilities
from astrid_core.text import rust_debug_list

__all__ = [
    "IDENTITY_LEVELS",
    "IDENTITY_OPERATIONS",
    "CapabilityGate",
    "GateDenied",
    "host_matches",
    "rust_debug_list",
    "url_host",
]

#: Identity capability levels, lowest first; a level implies every lower one.
IDENTITY_LEVELS: tuple[str, ...] = ("resolve", "link", "admin")

#: Level each identity operation requires.
IDENTITY_OPERATIONS: dict[str, str] = {
    "resolve": "resolve",
    "link": "link",
    "unlink": "link",
    "list_links": "link",
    "create_user": "admin",
}

_WORKSPACE_SCHEME = "workspace://"
_GLOBAL_SCHEME = "global://"


class GateDenied(Exception):
    """The manifest does not declare the capability an operation needs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def url_host(url: str) -> str | None:
    """The host of ``url`` as the gate compares it, or None when the URL has no host.

    The host is lowercased; an IPv6 literal keeps its brackets (``[::1]``); userinfo is not
    part of the host (``http://allowed@127.0.0.1/`` has host ``127.0.0.1``). Raises
    ``ValueError`` for URLs that cannot be parsed.
    """
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.hostname
    if not host:
        return None
    # Backslashes, whitespace, control characters and '%'-escapes have no place in a host
    # name; a URL using them is ambiguous between parsers, so refuse it outright.
    if any(ch in host for ch in "\\%") or any(not ch.isprintable() or ch.isspace() for ch in host):
        raise ValueError(f"invalid host in URL {url!r}")
    _ = parts.port  # raises ValueError for an invalid port
    return f"[{host}]" if ":" in host else host


def host_matches(host: str, entries: Iterable[str]) -> bool:
    """Whether ``host`` is allowed by some ``net`` entry.

    An entry allows a host if it is ``*``, equals the host, or the host is a subdomain of it
    (ends with ``.<entry>``). Entries compare case-insensitively; empty entries allow nothing;
    entries carrying a port or scheme never match a host.
    """
    for raw in entries:
        entry = raw.lower()
        if entry == "*":
            return True
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _parts(path: str) -> list[str]:
    """Components of a POSIX path: ``/`` first when absolute, ``.`` and empty ones dropped."""
    comps = [c for c in path.split("/") if c not in ("", ".")]
    return ["/", *comps] if path.startswith("/") else comps


def _under(path_parts: Sequence[str], prefix_parts: Sequence[str]) -> bool:
    """Component-wise prefix test (``/ws-evil`` is not under ``/ws``)."""
    return tuple(path_parts[: len(prefix_parts)]) == tuple(prefix_parts)


def _join_root(root: str, suffix: str) -> str:
    """``root/suffix``, keeping an absolute-looking suffix under the root."""
    return f"{root.rstrip('/')}/{suffix}"


class CapabilityGate:
    """The manifest gate of one capsule.

    ``workspace_root`` and ``global_root`` are canonicalised once here (``os.path.realpath``)
    so the resolved ``fs_read``/``fs_write`` prefixes compare against the canonical physical
    paths the broker's resolver produces. Without a global root, ``global://`` entries are
    dropped (the capsule cannot reach global paths at all).
    """

    def __init__(
        self,
        capsule_id: str,
        capabilities: Capabilities,
        workspace_root: str | os.PathLike[str],
        global_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.capsule_id = capsule_id
        self.capabilities = capabilities
        self.workspace_root = os.path.realpath(workspace_root)
        self.global_root = None if global_root is None else os.path.realpath(global_root)
        self._fs_read = self._resolve_specs(capabilities.fs_read)
        self._fs_write = self._resolve_specs(capabilities.fs_write)

    def _resolve_specs(self, specs: Iterable[str]) -> tuple[tuple[str, ...], ...]:
        """Turn path specs into component prefixes (``*`` means the workspace root)."""
        resolved: list[tuple[str, ...]] = []
        for spec in specs:
            if spec == "*":
                prefix = self.workspace_root
            elif spec.startswith(_WORKSPACE_SCHEME):
                prefix = _join_root(self.workspace_root, spec.removeprefix(_WORKSPACE_SCHEME))
            elif spec.startswith(_GLOBAL_SCHEME):
                if self.global_root is None:
                    continue
                prefix = _join_root(self.global_root, spec.removeprefix(_GLOBAL_SCHEME))
            else:
                prefix = spec
            resolved.append(tuple(_parts(prefix)))
        return tuple(resolved)

    def _deny(self, what: str) -> GateDenied:
        return GateDenied(f"capsule '{self.capsule_id}' denied: {what}")

    # -- network ----------------------------------------------------------------------------

    def check_http(self, url: str) -> None:
        """Allow an HTTP request to ``url`` if its host is covered by a ``net`` entry."""
        try:
            host: str | None = url_host(url) or ""
        except ValueError:
            host = None  # unparsable: never allowed
        if host is None or not host_matches(host, self.capabilities.net):
            raise self._deny(f"network access to '{url}' not declared in manifest")

    def check_net_bind(self) -> None:
        """Allow the Unix-socket listener if ``net_bind`` has at least one non-empty entry."""
        if not any(self.capabilities.net_bind):
            raise self._deny("net_bind not declared in manifest")

    # -- filesystem -------------------------------------------------------------------------

    def _check_path(self, path: str, prefixes: tuple[tuple[str, ...], ...], mode: str) -> None:
        # Only absolute physical paths without a ".." component can be allowed.
        parts = _parts(path)
        if (
            path.startswith("/")
            and ".." not in parts
            and any(_under(parts, prefix) for prefix in prefixes)
        ):
            return
        raise self._deny(f"{mode} access to '{path}' not declared in manifest")

    def check_file_read(self, path: str) -> None:
        """Allow reading (read, exists, stat, readdir) the physical path ``path``."""
        self._check_path(path, self._fs_read, "read")

    def check_file_write(self, path: str) -> None:
        """Allow writing (write, mkdir, unlink) the physical path ``path``."""
        self._check_path(path, self._fs_write, "write")

    # -- processes --------------------------------------------------------------------------

    def check_host_process(self, cmd: str) -> None:
        """Allow spawning ``cmd`` if it equals a ``host_process`` entry or starts with
        ``<entry> ``."""
        if not any(
            entry and (cmd == entry or cmd.startswith(entry + " "))
            for entry in self.capabilities.host_process
        ):
            raise self._deny(f"host process '{cmd}' not declared in manifest")

    # -- identity ---------------------------------------------------------------------------

    def check_identity(self, op: str) -> None:
        """Allow identity operation ``op`` (``resolve``, ``link``, ``unlink``, ``list_links``,
        ``create_user``) if a declared level is at least the one it requires
        (``admin`` ⊃ ``link`` ⊃ ``resolve``)."""
        declared = self.capabilities.identity
        required = IDENTITY_OPERATIONS.get(op)
        if required is not None:
            need = IDENTITY_LEVELS.index(required)
            if any(
                level in IDENTITY_LEVELS and IDENTITY_LEVELS.index(level) >= need
                for level in declared
            ):
                return
        raise self._deny(
            f"identity operation '{op}' not declared in manifest (has: {rust_debug_list(declared)})"
        )
