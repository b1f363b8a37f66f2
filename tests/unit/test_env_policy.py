"""Tests for astrid_core.env_policy (spec/core.md §9 and the env_policy.rs tests of §12)."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from astrid_core.env_policy import (
    BLOCKED_EXACT,
    BLOCKED_PREFIXES,
    DEFAULT_SPAWN_ALLOW,
    is_blocked_spawn_env,
    sanitized_environment,
)

KELVIN_SIGN = "\u212a"
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)

# --- ports of env_policy.rs -----------------------------------------------------------------


def test_exact_matches_are_blocked() -> None:
    """Mirrors env_policy.rs `exact_matches_are_blocked`."""
    for name in (
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "DYLD_LIBRARY_PATH",
        "DYLD_FRAMEWORK_PATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PERL5LIB",
        "RUBYLIB",
        "BASH_ENV",
        "ENV",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "OPENSSL_CONF",
        "TMPDIR",
        "TEMP",
        "TMP",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ):
        assert is_blocked_spawn_env(name), name


def test_case_insensitive_matching() -> None:
    """Mirrors env_policy.rs `case_insensitive_matching`."""
    for name in ("ld_preload", "Ld_Preload", "node_options", "pythonpath", "home"):
        assert is_blocked_spawn_env(name), name


def test_prefix_blocking() -> None:
    """Mirrors env_policy.rs `prefix_blocking`."""
    for name in (
        "LD_DEBUG",
        "LD_SOMETHING_NEW",
        "DYLD_PRINT_LIBRARIES",
        "DYLD_FORCE_FLAT_NAMESPACE",
        "npm_config_registry",
        "npm_config_cache",
        "NPM_CONFIG_PREFIX",
    ):
        assert is_blocked_spawn_env(name), name


def test_safe_vars_are_allowed() -> None:
    """Mirrors env_policy.rs `safe_vars_are_allowed`."""
    for name in ("CUSTOM_VAR", "MY_APP_ENV", "LDFLAGS", "LANG", "USER", "SHELL", "TERM", "EDITOR"):
        assert not is_blocked_spawn_env(name), name


# --- further tests --------------------------------------------------------------------------


def test_blocklist_is_the_reference_list() -> None:
    assert len(BLOCKED_EXACT) == 32
    assert {"HOME", "PATH", "ASTRID_HOME", "ASTRID_SOCKET_PATH", "ASTRID_SESSION_TOKEN"} <= (
        BLOCKED_EXACT
    )
    assert BLOCKED_PREFIXES == ("ld_", "dyld_", "npm_config_")
    for name in BLOCKED_EXACT:
        assert is_blocked_spawn_env(name)


def test_edge_cases() -> None:
    assert not is_blocked_spawn_env("")
    assert not is_blocked_spawn_env("ENVIRONMENT")
    assert not is_blocked_spawn_env(" PATH")
    assert not is_blocked_spawn_env("PATH ")
    assert not is_blocked_spawn_env("LD")
    assert is_blocked_spawn_env("LD_")
    assert not is_blocked_spawn_env("ASTRID_DEBUG")  # only ASTRID_HOME & co are on the list


def test_kelvin_sign_is_not_folded() -> None:
    name = f"JD{KELVIN_SIGN}_JAVA_OPTIONS"
    assert name.lower() == "jdk_java_options"  # what a naive str.lower() check would block
    assert not is_blocked_spawn_env(name)


def _case_variant(name: str, flips: list[bool]) -> str:
    return "".join(
        ch.swapcase() if ch in string.ascii_letters and flip else ch
        for ch, flip in zip(name, flips + [False] * len(name), strict=False)
    )


@given(st.sampled_from(sorted(BLOCKED_EXACT)), st.lists(st.booleans(), max_size=32))
def test_any_ascii_case_variant_of_a_blocked_name_is_blocked(name: str, flips: list[bool]) -> None:
    assert is_blocked_spawn_env(_case_variant(name, flips))


@given(
    st.sampled_from(BLOCKED_PREFIXES),
    st.lists(st.booleans(), max_size=16),
    st.text(max_size=20),
)
def test_any_ascii_case_variant_of_a_prefix_is_blocked(
    prefix: str, flips: list[bool], suffix: str
) -> None:
    assert is_blocked_spawn_env(_case_variant(prefix, flips) + suffix)


@given(
    st.sampled_from(sorted(name for name in BLOCKED_EXACT if "K" in name)),
    st.lists(st.booleans(), max_size=32),
)
def test_kelvin_sign_variants_are_not_folded(name: str, flips: list[bool]) -> None:
    variant = _case_variant(name, flips).replace("K", KELVIN_SIGN).replace("k", KELVIN_SIGN)
    prefix_match = variant.lower().startswith(BLOCKED_PREFIXES)
    # DYLD_FRAMEWORK_PATH is still caught by the dyld_ prefix; the others must pass.
    assert is_blocked_spawn_env(variant) == prefix_match


@given(st.text(max_size=24))
def test_blocking_depends_only_on_ascii_case_fold(key: str) -> None:
    ascii_upper = key.translate(_ASCII_UPPER)
    assert is_blocked_spawn_env(key) == is_blocked_spawn_env(ascii_upper)
    expected = ascii_upper in BLOCKED_EXACT or ascii_upper.startswith(
        tuple(p.upper() for p in BLOCKED_PREFIXES)
    )
    assert is_blocked_spawn_env(key) == expected


def test_sanitized_environment_filters_and_sets_fixed() -> None:
    source = {
        "PATH": "/evil/bin",
        "HOME": "/home/u",
        "USER": "u",
        "LANG": "C.UTF-8",
        "LD_PRELOAD": "/evil.so",
        "ASTRID_DEBUG": "1",
        "astrid_token": "x",
        "SECRET": "s",
        "TERM": "xterm",
    }
    allow = [*DEFAULT_SPAWN_ALLOW, "LD_PRELOAD", "ASTRID_DEBUG", "astrid_token"]
    env = sanitized_environment(source, allow, fixed={"PATH": "/usr/bin:/bin"})
    assert env == {"USER": "u", "LANG": "C.UTF-8", "TERM": "xterm", "PATH": "/usr/bin:/bin"}


def test_sanitized_environment_allow_list_is_exact() -> None:
    env = sanitized_environment({"user": "a", "USER": "b"}, ["USER"])
    assert env == {"USER": "b"}
    assert sanitized_environment({"USER": "b"}, iter(())) == {}


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=8)), st.data())
def test_sanitized_environment_never_leaks_blocked_names(
    source: dict[str, str], data: st.DataObject
) -> None:
    allow = data.draw(st.lists(st.sampled_from(sorted(source) or [""])))
    env = sanitized_environment(source, allow)
    for name, value in env.items():
        assert name in allow
        assert source[name] == value
        assert not is_blocked_spawn_env(name)
        assert not name.translate(_ASCII_UPPER).startswith("ASTRID_")
