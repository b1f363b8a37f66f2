"""Environment security policy for spawned host processes (spec/core.md §9, DESIGN §6.13).

:func:`is_blocked_spawn_env` decides whether untrusted configuration (hook configs, MCP server
manifests, capsule manifests) may set a variable on a child process. The list is kept identical to
the reference's for parity, even where it could be extended.

Matching is ASCII-only and case-insensitive: only ``A-Z``/``a-z`` are folded, so a non-ASCII
character such as KELVIN SIGN (U+212A), which :meth:`str.lower` would turn into ``k``, is compared
literally. Keys are not trimmed; the empty key is allowed.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping

__all__ = [
    "BLOCKED_EXACT",
    "BLOCKED_PREFIXES",
    "DEFAULT_SPAWN_ALLOW",
    "is_blocked_spawn_env",
    "sanitized_environment",
]

#: The 32 names that are blocked exactly (ASCII case-insensitively).
BLOCKED_EXACT: frozenset[str] = frozenset(
    {
        # Core
        "HOME",
        "PATH",
        "ASTRID_HOME",
        # Linux dynamic linker
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        # macOS dynamic linker
        "DYLD_INSERT_LIBRARIES",
        "DYLD_LIBRARY_PATH",
        "DYLD_FRAMEWORK_PATH",
        # Node
        "NODE_OPTIONS",
        "NODE_PATH",
        # Python
        "PYTHONPATH",
        "PYTHONSTARTUP",
        # Perl / Ruby
        "PERL5LIB",
        "RUBYLIB",
        # Shell startup
        "BASH_ENV",
        "ENV",
        # Java
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        # TLS trust
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        # OpenSSL
        "OPENSSL_CONF",
        # Temporary directories
        "TMPDIR",
        "TEMP",
        "TMP",
        # Proxies
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        # Daemon access
        "ASTRID_SOCKET_PATH",
        "ASTRID_SESSION_TOKEN",
    }
)

#: Prefixes (in ASCII lower case) that block every name starting with them.
BLOCKED_PREFIXES: tuple[str, ...] = ("ld_", "dyld_", "npm_config_")

#: The variables the reference's hook runner lets a child inherit. Note that ``PATH``, ``HOME``,
#: ``TMPDIR``, ``TMP`` and ``TEMP`` are on the blocklist, so :func:`sanitized_environment` drops
#: them again; give the child a safe ``PATH`` through its ``fixed`` argument.
DEFAULT_SPAWN_ALLOW: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "SHELL",
    "TERM",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TMP",
    "TEMP",
)

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_BLOCKED_EXACT_FOLDED = frozenset(name.translate(_ASCII_LOWER) for name in BLOCKED_EXACT)
_ASTRID_PREFIX_FOLDED = "astrid_"


def _ascii_lower(s: str) -> str:
    """Lower-case ``A-Z`` only, leaving every other character (non-ASCII included) unchanged."""
    return s.translate(_ASCII_LOWER)


def is_blocked_spawn_env(key: str) -> bool:
    """Whether untrusted configuration must not set ``key`` on a spawned process."""
    folded = _ascii_lower(key)
    return folded in _BLOCKED_EXACT_FOLDED or folded.startswith(BLOCKED_PREFIXES)


def sanitized_environment(
    source: Mapping[str, str],
    allow: Iterable[str],
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the environment of a spawned host process (DESIGN §6.13).

    1. Keep only the entries of ``source`` whose name is in ``allow`` (exact, case-sensitive).
    2. Drop every name that :func:`is_blocked_spawn_env` blocks, and every name that starts with
       ``ASTRID_`` (ASCII case-insensitively), so no daemon detail leaks to the child.
    3. Set the entries of ``fixed`` on top. They are trusted values chosen by the caller and are
       not filtered: this is how a caller gives the child a safe ``PATH``, which step 2 always
       removes because ``PATH`` (like ``HOME`` and the temp-directory variables) is blocked.
    """
    allowed = frozenset(allow)
    env = {
        name: value
        for name, value in source.items()
        if name in allowed
        and not is_blocked_spawn_env(name)
        and not _ascii_lower(name).startswith(_ASTRID_PREFIX_FOLDED)
    }
    if fixed is not None:
        env.update(fixed)
    return env
