"""The manifest capability gate (kernel.md §2.2, syscalls.md §2.1 and §4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astrid_core.manifest import Capabilities
from broker.gate import (
    CapabilityGate,
    GateDenied,
    host_matches,
    rust_debug_list,
    url_host,
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


@pytest.fixture
def global_root(tmp_path: Path) -> Path:
    g = tmp_path / "shared"
    g.mkdir()
    return g


def gate(
    workspace: Path, global_root: Path | None = None, capsule: str = "x", **caps: object
) -> CapabilityGate:
    return CapabilityGate(capsule, Capabilities(**caps), workspace, global_root)  # type: ignore[arg-type]


def denied(check: object, *args: str) -> str:
    assert callable(check)
    with pytest.raises(GateDenied) as info:
        check(*args)
    return str(info.value)


# --- HTTP ----------------------------------------------------------------------------------


def test_http_exact_host_allowed(workspace: Path) -> None:
    gate(workspace, net=("api.github.com",)).check_http("https://api.github.com/v1/user")


def test_http_subdomain_allowed(workspace: Path) -> None:
    """Mirrors the reference gate test: an entry also allows every subdomain."""
    g = gate(workspace, net=("github.com",))
    g.check_http("https://api.github.com/repos")
    g.check_http("https://deep.api.github.com/")


def test_http_undeclared_host_denied_with_reference_message(workspace: Path) -> None:
    g = gate(workspace, net=("api.github.com",))
    assert denied(g.check_http, "https://evil.com/x") == (
        "capsule 'x' denied: network access to 'https://evil.com/x' not declared in manifest"
    )


def test_http_suffix_without_dot_boundary_denied(workspace: Path) -> None:
    g = gate(workspace, net=("github.com",))
    denied(g.check_http, "https://evilgithub.com/")
    denied(g.check_http, "https://github.com.evil.com/")


def test_http_userinfo_trick_denied(workspace: Path) -> None:
    """Mirrors the reference gate test: the real host behind userinfo is what is checked."""
    g = gate(workspace, net=("allowed.com",))
    denied(g.check_http, "http://allowed.com@127.0.0.1/")
    denied(g.check_http, "http://allowed.com:pw@evil.com/")
    g.check_http("http://user@allowed.com/")


def test_http_star_allows_any_host(workspace: Path) -> None:
    g = gate(workspace, net=("*",))
    g.check_http("https://anything.example/")
    g.check_http("http://127.0.0.1:8080/")


def test_http_port_and_scheme_of_the_url_are_ignored(workspace: Path) -> None:
    g = gate(workspace, net=("api.example.com",))
    g.check_http("https://api.example.com:8443/x")
    g.check_http("ws://api.example.com/socket")


@pytest.mark.parametrize("entry", ["api.example.com:443", "https://api.example.com", ""])
def test_http_entries_with_port_or_scheme_never_match(workspace: Path, entry: str) -> None:
    g = gate(workspace, net=(entry,))
    denied(g.check_http, "https://api.example.com/")
    denied(g.check_http, "https://api.example.com:443/")


def test_http_host_compares_case_insensitively(workspace: Path) -> None:
    gate(workspace, net=("api.example.com",)).check_http("https://API.Example.COM/")
    gate(workspace, net=("API.example.com",)).check_http("https://api.example.com/")


def test_http_ipv6_hosts_compare_in_bracketed_form(workspace: Path) -> None:
    gate(workspace, net=("[::1]",)).check_http("http://[::1]:8080/")
    denied(gate(workspace, net=("::1",)).check_http, "http://[::1]/")


def test_http_without_declarations_denied(workspace: Path) -> None:
    denied(gate(workspace).check_http, "https://example.com/")


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",
        "http://example.com:notaport/",
        "http://allowed.com\\@evil.com/",
        "http://ev%69l.allowed.com/",
        "file:///etc/passwd",
    ],
)
def test_http_malformed_or_hostless_urls_denied(workspace: Path, url: str) -> None:
    g = gate(workspace, net=("allowed.com",))
    assert "not declared in manifest" in denied(g.check_http, url)


def test_url_host() -> None:
    assert url_host("https://API.Example.com:443/x?q=1") == "api.example.com"
    assert url_host("http://[2001:DB8::1]/") == "[2001:db8::1]"
    assert url_host("http://a@b.c/") == "b.c"
    assert url_host("file:///etc/passwd") is None
    assert url_host("data:text/plain,hi") is None
    with pytest.raises(ValueError):
        url_host("http://[::1/")


def test_host_matches() -> None:
    assert host_matches("a.b.c", ["b.c"])
    assert host_matches("b.c", ["b.c"])
    assert not host_matches("ab.c", ["b.c"])
    assert host_matches("anything", ["nope", "*"])
    assert not host_matches("anything", [])
    assert not host_matches("", [""])


# --- filesystem ----------------------------------------------------------------------------


def test_fs_denial_message_matches_reference(workspace: Path) -> None:
    g = gate(workspace, capsule="x")
    assert denied(g.check_file_read, "/p") == (
        "capsule 'x' denied: read access to '/p' not declared in manifest"
    )
    assert denied(g.check_file_write, "/p") == (
        "capsule 'x' denied: write access to '/p' not declared in manifest"
    )


def test_fs_empty_lists_deny_everything(workspace: Path) -> None:
    g = gate(workspace)
    denied(g.check_file_read, str(workspace / "a"))
    denied(g.check_file_write, str(workspace / "a"))


def test_fs_workspace_scheme_alone_is_the_whole_workspace(workspace: Path) -> None:
    """Mirrors the reference's scheme-resolution gate test."""
    g = gate(workspace, fs_read=("workspace://",))
    g.check_file_read(str(workspace))
    g.check_file_read(str(workspace / "deep" / "file.txt"))
    denied(g.check_file_read, "/etc/passwd")
    denied(g.check_file_write, str(workspace / "file.txt"))


def test_fs_workspace_subpath(workspace: Path) -> None:
    g = gate(workspace, fs_write=("workspace://src",))
    g.check_file_write(str(workspace / "src"))
    g.check_file_write(str(workspace / "src" / "main.py"))
    denied(g.check_file_write, str(workspace / "docs" / "x"))


def test_fs_prefix_collision_is_not_a_match(workspace: Path) -> None:
    """Mirrors the reference's ``/workspace-evil`` prefix-collision test: prefixes match at
    component boundaries only."""
    literal = gate(workspace, fs_read=(str(workspace),))
    denied(literal.check_file_read, f"{workspace}-evil/secret")
    denied(literal.check_file_read, f"{workspace}-evil")
    literal.check_file_read(str(workspace / "src-evil" / "x"))
    scheme = gate(workspace, fs_read=("workspace://src",))
    denied(scheme.check_file_read, str(workspace / "src-evil" / "x"))
    scheme.check_file_read(str(workspace / "src" / "x"))


def test_fs_dotdot_component_is_rejected(workspace: Path) -> None:
    """Mirrors the reference gate test: any ``..`` component denies, even under a prefix."""
    g = gate(workspace, fs_read=("workspace://",), fs_write=("/",))
    denied(g.check_file_read, f"{workspace}/src/../../etc/passwd")
    denied(g.check_file_read, f"{workspace}/..")
    denied(g.check_file_write, f"{workspace}/../x")
    g.check_file_read(f"{workspace}/.../file")
    g.check_file_read(f"{workspace}/..hidden")


def test_fs_star_is_confined_to_the_workspace(workspace: Path, global_root: Path) -> None:
    """Mirrors the reference's ``wildcard confined to workspace`` gate test."""
    g = gate(workspace, global_root, fs_read=("*",), fs_write=("*",))
    g.check_file_read(str(workspace / "anything"))
    g.check_file_write(str(workspace))
    denied(g.check_file_read, "/etc/passwd")
    denied(g.check_file_read, str(global_root / "file"))
    denied(g.check_file_write, f"{workspace}-evil/x")


def test_fs_global_scheme_resolves_against_global_root(workspace: Path, global_root: Path) -> None:
    g = gate(workspace, global_root, fs_read=("global://",), fs_write=("global://cache",))
    g.check_file_read(str(global_root / "test-global.txt"))
    g.check_file_write(str(global_root / "cache" / "x"))
    denied(g.check_file_write, str(global_root / "other"))
    denied(g.check_file_read, str(workspace / "x"))


def test_fs_global_scheme_dropped_without_global_root(workspace: Path, global_root: Path) -> None:
    """Mirrors the reference gate test: with no global root a ``global://`` entry is dropped."""
    g = gate(workspace, None, fs_read=("global://", "workspace://"))
    denied(g.check_file_read, str(global_root / "secret.txt"))
    g.check_file_read(str(workspace / "ok.txt"))
    assert g.global_root is None


def test_fs_literal_prefixes(workspace: Path) -> None:
    """A literal ``/`` allows every absolute path; relative entries never match, and the
    gate only ever allows absolute (physical) paths."""
    g = gate(workspace, fs_read=("/",), fs_write=("relative/dir",))
    denied(g.check_file_read, "relative/file")
    g.check_file_read("/anything/at/all")
    denied(g.check_file_write, str(workspace / "relative" / "dir" / "x"))
    denied(g.check_file_write, "relative/dir/x")


def test_fs_roots_are_canonicalised_once(tmp_path: Path, workspace: Path) -> None:
    link = tmp_path / "ws-link"
    link.symlink_to(workspace)
    g = gate(link, fs_read=("workspace://", "*"))
    assert g.workspace_root == os.path.realpath(workspace)
    g.check_file_read(str(workspace.resolve() / "file"))


def test_fs_trailing_slashes_and_dot_components_normalised(workspace: Path) -> None:
    g = gate(workspace, fs_read=("workspace://src/",))
    g.check_file_read(f"{workspace}/src")
    g.check_file_read(f"{workspace}//src/./x")


# --- host processes ------------------------------------------------------------------------


def test_host_process_exact_or_entry_followed_by_space(workspace: Path) -> None:
    g = gate(workspace, host_process=("git", "npx -y"))
    g.check_host_process("git")
    g.check_host_process("git status")
    g.check_host_process("npx -y server")
    denied(g.check_host_process, "gitk")
    denied(g.check_host_process, "/usr/bin/git")
    denied(g.check_host_process, "npx")


def test_host_process_denial_message(workspace: Path) -> None:
    g = gate(workspace, host_process=("npx",))
    assert denied(g.check_host_process, "python3") == (
        "capsule 'x' denied: host process 'python3' not declared in manifest"
    )


def test_host_process_empty_entry_allows_nothing(workspace: Path) -> None:
    g = gate(workspace, host_process=("",))
    denied(g.check_host_process, "")
    denied(g.check_host_process, " sh")


# --- net_bind ------------------------------------------------------------------------------


def test_net_bind_requires_a_non_empty_entry(workspace: Path) -> None:
    """Mirrors the reference gate test: an empty ``net_bind`` string does not count."""
    assert denied(gate(workspace).check_net_bind) == (
        "capsule 'x' denied: net_bind not declared in manifest"
    )
    denied(gate(workspace, net_bind=("",)).check_net_bind)
    gate(workspace, net_bind=("", "unix:///tmp/astrid.sock")).check_net_bind()


# --- identity ------------------------------------------------------------------------------

ALL_OPS = ["resolve", "link", "unlink", "list_links", "create_user"]


@pytest.mark.parametrize(
    ("declared", "allowed"),
    [
        ((), []),
        (("resolve",), ["resolve"]),
        (("link",), ["resolve", "link", "unlink", "list_links"]),
        (("admin",), ALL_OPS),
        (("resolve", "admin"), ALL_OPS),
        (("superuser",), []),
    ],
)
def test_identity_hierarchy(workspace: Path, declared: tuple[str, ...], allowed: list[str]) -> None:
    """Mirrors the reference's identity-hierarchy gate test: admin ⊃ link ⊃ resolve."""
    g = gate(workspace, identity=declared)
    for op in ALL_OPS:
        if op in allowed:
            g.check_identity(op)
        else:
            denied(g.check_identity, op)


def test_identity_denial_message_lists_declared_levels(workspace: Path) -> None:
    g = gate(workspace, identity=("resolve",))
    assert denied(g.check_identity, "link") == (
        "capsule 'x' denied: identity operation 'link' not declared in manifest "
        '(has: ["resolve"])'
    )
    assert denied(gate(workspace).check_identity, "resolve").endswith("(has: [])")


def test_identity_unknown_operation_denied(workspace: Path) -> None:
    denied(gate(workspace, identity=("admin",)).check_identity, "delete_everything")


# --- helpers -------------------------------------------------------------------------------


def test_rust_debug_list_formatting() -> None:
    assert rust_debug_list([]) == "[]"
    assert rust_debug_list(["a.*", "b.c"]) == '["a.*", "b.c"]'
    assert rust_debug_list(['q"uote', "back\\slash", "new\nline", "tab\t"]) == (
        '["q\\"uote", "back\\\\slash", "new\\nline", "tab\\t"]'
    )
    assert rust_debug_list(["\x01", "é"]) == '["\\u{1}", "é"]'


def test_gate_denied_str_is_the_reason() -> None:
    error = GateDenied("capsule 'x' denied: something")
    assert str(error) == "capsule 'x' denied: something"
    assert error.reason == "capsule 'x' denied: something"


def test_fs_scheme_suffix_cannot_leave_its_root(workspace: Path) -> None:
    g = gate(workspace, fs_read=("workspace:///etc", "workspace://../outside"))
    g.check_file_read(str(workspace / "etc" / "passwd"))
    denied(g.check_file_read, "/etc/passwd")
    denied(g.check_file_read, f"{workspace}/../outside/x")
    denied(g.check_file_read, str(workspace.parent / "outside" / "x"))
