"""Tests for astrid_core.dirs (spec/core.md §8 and the dirs.rs tests of §12)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core.dirs import AstridHome, HomeResolutionError, WorkspaceDir
from astrid_core.serde import parse_uuid_strict


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- ports of dirs.rs -----------------------------------------------------------------------


def test_astrid_home_resolve_with_env(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_astrid_home_resolve_with_env`."""
    home = AstridHome.resolve({"ASTRID_HOME": str(tmp_path), "HOME": "/nonexistent"})
    assert home.root() == tmp_path


def test_astrid_home_resolve_default() -> None:
    """Mirrors dirs.rs `test_astrid_home_resolve_default`."""
    user_home = os.environ.get("HOME", "/tmp")
    home = AstridHome.resolve({"HOME": user_home})
    assert home.root() == Path(user_home) / ".astrid"


def test_astrid_home_ensure_creates_dirs(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_astrid_home_ensure_creates_dirs`."""
    home = AstridHome.from_path(tmp_path / "astrid")
    home.ensure()
    assert home.keys_dir().is_dir()
    assert home.logs_dir().is_dir()
    assert home.sessions_dir().is_dir()


def test_astrid_home_ensure_sets_permissions(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_astrid_home_ensure_sets_permissions`."""
    home = AstridHome.from_path(tmp_path / "astrid")
    home.ensure()
    assert _mode(home.root()) == 0o700
    assert _mode(home.keys_dir()) == 0o700


def test_astrid_home_rejects_traversal_in_astrid_home() -> None:
    """Mirrors dirs.rs `test_astrid_home_rejects_traversal_in_astrid_home`."""
    with pytest.raises(HomeResolutionError, match=r"'\.\.'"):
        AstridHome.resolve({"ASTRID_HOME": "/tmp/../etc"})


def test_astrid_home_rejects_traversal_in_home() -> None:
    """Mirrors dirs.rs `test_astrid_home_rejects_traversal_in_home`."""
    with pytest.raises(HomeResolutionError, match=r"'\.\.'") as info:
        AstridHome.resolve({"HOME": "/tmp/../etc"})
    assert str(info.value) == "HOME must not contain '..' path components"


def test_astrid_home_rejects_relative_env() -> None:
    """Mirrors dirs.rs `test_astrid_home_rejects_relative_env`."""
    with pytest.raises(HomeResolutionError, match="absolute") as info:
        AstridHome.resolve({"ASTRID_HOME": "relative/path"})
    assert str(info.value) == "ASTRID_HOME must be an absolute path"


def test_astrid_home_rejects_empty_env() -> None:
    """Mirrors dirs.rs `test_astrid_home_rejects_empty_env`."""
    with pytest.raises(HomeResolutionError):
        AstridHome.resolve({"ASTRID_HOME": "", "HOME": "/home/user"})


def test_astrid_home_rejects_relative_home() -> None:
    """Mirrors dirs.rs `test_astrid_home_rejects_relative_home`."""
    with pytest.raises(HomeResolutionError, match="absolute") as info:
        AstridHome.resolve({"HOME": "relative/home"})
    assert str(info.value) == "HOME must be an absolute path"


def test_astrid_home_path_accessors() -> None:
    """Mirrors dirs.rs `test_astrid_home_path_accessors` (and also checks the three it skips)."""
    home = AstridHome.from_path("/tmp/test-astrid")
    root = Path("/tmp/test-astrid")
    expected = {
        "root": root,
        "keys_dir": root / "keys",
        "logs_dir": root / "logs",
        "user_key_path": root / "keys/user.key",
        "audit_db_path": root / "audit.db",
        "capabilities_db_path": root / "capabilities.db",
        "deferred_db_path": root / "deferred.db",
        "servers_config_path": root / "servers.toml",
        "config_path": root / "config.toml",
        "sessions_dir": root / "sessions",
        "socket_path": root / "sessions/system.sock",
        "token_path": root / "sessions/system.token",
        "ready_path": root / "sessions/system.ready",
        "state_db_path": root / "state.db",
        "shared_dir": root / "shared",
        "capsules_dir": root / "capsules",
        "capsules_cache_dir": root / "cache/capsules",
        "hooks_dir": root / "hooks",
        "gateway_config_path": root / "gateway.toml",
        "state_dir": root / "state",
        "spark_path": root / "spark.toml",
    }
    for accessor, path in expected.items():
        assert getattr(home, accessor)() == path, accessor


def test_workspace_detect_with_dot_astrid(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_detect_with_dot_astrid`."""
    (tmp_path / ".astrid").mkdir()
    deep = tmp_path / "src" / "deep"
    deep.mkdir(parents=True)
    assert WorkspaceDir.detect(deep).root() == tmp_path


def test_workspace_detect_with_git(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_detect_with_git`."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "src").mkdir()
    assert WorkspaceDir.detect(tmp_path / "src").root() == tmp_path


def test_workspace_detect_with_astrid_md(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_detect_with_astrid_md`."""
    (tmp_path / "ASTRID.md").write_text("# project\n")
    (tmp_path / "src").mkdir()
    assert WorkspaceDir.detect(tmp_path / "src").root() == tmp_path


def test_workspace_detect_fallback(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_detect_fallback`."""
    isolated = tmp_path / "isolated"
    isolated.mkdir()
    assert WorkspaceDir.from_path(isolated).root() == isolated


def test_workspace_detect_prefers_dot_astrid_over_git(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_detect_prefers_dot_astrid_over_git`."""
    (tmp_path / ".astrid").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "src").mkdir()
    assert WorkspaceDir.detect(tmp_path / "src").root() == tmp_path


def test_workspace_ensure_creates_dirs_and_id(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_ensure_creates_dirs_and_id`."""
    ws = WorkspaceDir.from_path(tmp_path)
    ws.ensure()
    assert ws.dot_astrid().is_dir()
    assert ws.workspace_id_path().is_file()
    parse_uuid_strict(ws.workspace_id_path().read_text().strip())


def test_workspace_id_adopts_existing(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_id_adopts_existing`."""
    ws = WorkspaceDir.from_path(tmp_path)
    ws.dot_astrid().mkdir()
    existing = uuid.uuid4()
    ws.workspace_id_path().write_text(str(existing))
    assert ws.workspace_id() == existing


def test_workspace_id_stable_across_calls(tmp_path: Path) -> None:
    """Mirrors dirs.rs `test_workspace_id_stable_across_calls`."""
    ws = WorkspaceDir.from_path(tmp_path)
    assert ws.workspace_id() == ws.workspace_id()


def test_workspace_path_accessors() -> None:
    """Mirrors dirs.rs `test_workspace_path_accessors`."""
    ws = WorkspaceDir.from_path("/home/user/project")
    assert ws.root() == Path("/home/user/project")
    assert ws.dot_astrid() == Path("/home/user/project/.astrid")
    assert ws.workspace_id_path() == Path("/home/user/project/.astrid/workspace-id")
    assert ws.instructions_path() == Path("/home/user/project/.astrid/ASTRID.md")


# --- AstridHome: further tests --------------------------------------------------------------


def test_resolve_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    assert AstridHome.resolve().root() == tmp_path
    monkeypatch.delenv("ASTRID_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert AstridHome.resolve().root() == tmp_path / ".astrid"


def test_resolve_uses_astrid_home_as_is_without_consulting_home() -> None:
    home = AstridHome.resolve({"ASTRID_HOME": "/srv/astrid", "HOME": "relative"})
    assert home.root() == Path("/srv/astrid")


def test_resolve_requires_a_variable() -> None:
    with pytest.raises(HomeResolutionError) as info:
        AstridHome.resolve({})
    assert str(info.value) == "neither ASTRID_HOME nor HOME environment variable is set"
    assert isinstance(info.value, ValueError)


def test_resolve_treats_non_unicode_values_as_unset() -> None:
    undecodable = os.fsdecode(b"/srv/\xff")  # how os.environ represents invalid UTF-8
    home = AstridHome.resolve({"ASTRID_HOME": undecodable, "HOME": "/home/u"})
    assert home.root() == Path("/home/u/.astrid")
    with pytest.raises(HomeResolutionError, match="neither"):
        AstridHome.resolve({"HOME": undecodable})


def test_resolve_dot_check_is_by_component() -> None:
    assert AstridHome.resolve({"ASTRID_HOME": "/tmp/..."}).root() == Path("/tmp/...")
    assert AstridHome.resolve({"ASTRID_HOME": "/tmp/..x"}).root() == Path("/tmp/..x")
    with pytest.raises(HomeResolutionError, match=r"'\.\.'"):
        AstridHome.resolve({"ASTRID_HOME": "/tmp/a/.."})


def test_resolve_does_not_expand_tilde() -> None:
    with pytest.raises(HomeResolutionError, match="absolute"):
        AstridHome.resolve({"HOME": "~"})


def test_ensure_sets_exact_modes_despite_umask(tmp_path: Path) -> None:
    home = AstridHome.from_path(tmp_path / "a" / "b")
    home.root().mkdir(parents=True, mode=0o777)
    home.root().chmod(0o755)
    old = os.umask(0o002)
    try:
        home.ensure()
    finally:
        os.umask(old)
    for directory in (home.root(), home.keys_dir(), home.logs_dir(), home.sessions_dir()):
        assert _mode(directory) == 0o700, directory
    assert sorted(p.name for p in home.root().iterdir()) == ["keys", "logs", "sessions"]
    home.ensure()  # idempotent


def test_run_dir_extension() -> None:
    assert AstridHome.from_path("/x").run_dir() == Path("/x/run")


def test_value_semantics() -> None:
    assert AstridHome.from_path("/x") == AstridHome.from_path(Path("/x"))
    assert len({AstridHome.from_path("/x"), AstridHome.from_path("/x")}) == 1
    assert repr(AstridHome.from_path("/x")) == "AstridHome(root='/x')"
    assert WorkspaceDir.from_path("/p") == WorkspaceDir.from_path("/p")
    assert repr(WorkspaceDir.from_path("/p")) == "WorkspaceDir(project_root='/p')"


# --- WorkspaceDir: further tests ------------------------------------------------------------


def test_detect_nearer_git_beats_farther_dot_astrid(tmp_path: Path) -> None:
    (tmp_path / ".astrid").mkdir()
    inner = tmp_path / "sub"
    (inner / "src").mkdir(parents=True)
    (inner / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git is a file
    assert WorkspaceDir.detect(inner / "src").root() == inner


def test_detect_ignores_dot_astrid_file(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / ".astrid").write_text("not a directory")
    assert WorkspaceDir.detect(inner).root() == tmp_path


def test_detect_relative_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert WorkspaceDir.detect("a/b").root() == tmp_path


def test_detect_falls_back_to_absolutized_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    start = tmp_path / "x" / "y"
    start.mkdir(parents=True)
    markers = (".astrid", ".git", "ASTRID.md")
    if any((p / m).exists() for p in start.parents for m in markers):
        pytest.skip("a workspace marker exists above the temporary directory")
    assert WorkspaceDir.detect(start).root() == start
    monkeypatch.chdir(tmp_path)
    assert WorkspaceDir.detect("x/y").root() == start


def test_detect_is_lexical(tmp_path: Path) -> None:
    (tmp_path / "proj" / ".git").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "proj" / "link").symlink_to(elsewhere)
    # The walk goes from proj/link up to proj, not from the link's target.
    assert WorkspaceDir.detect(tmp_path / "proj" / "link").root() == tmp_path / "proj"


def test_workspace_id_written_without_newline(tmp_path: Path) -> None:
    ws = WorkspaceDir.from_path(tmp_path)
    ws_id = ws.workspace_id()
    assert ws.workspace_id_path().read_text() == str(ws_id)
    assert ws_id.version == 4


def test_workspace_id_adopts_any_accepted_form(tmp_path: Path) -> None:
    ws = WorkspaceDir.from_path(tmp_path)
    ws.dot_astrid().mkdir()
    existing = uuid.uuid4()
    content = f"  {{{str(existing).upper()}}}\n"
    ws.workspace_id_path().write_text(content)
    assert ws.workspace_id() == existing
    assert ws.workspace_id_path().read_text() == content  # not rewritten


@pytest.mark.parametrize("content", [b"garbage", b"", b"\xff\xfe", b"{" + b"0" * 32 + b"}"])
def test_workspace_id_replaces_invalid_file(tmp_path: Path, content: bytes) -> None:
    ws = WorkspaceDir.from_path(tmp_path)
    ws.dot_astrid().mkdir()
    ws.workspace_id_path().write_bytes(content)
    new_id = ws.workspace_id()
    assert ws.workspace_id_path().read_text() == str(new_id)
    assert ws.workspace_id() == new_id


def test_workspace_ensure_is_idempotent(tmp_path: Path) -> None:
    ws = WorkspaceDir.from_path(tmp_path / "project")
    first = ws.ensure()
    assert ws.ensure() == first
    assert ws.workspace_id() == first


# --- parse_uuid_strict ----------------------------------------------------------------------

SAMPLE = uuid.UUID("0f8c2a9e-5b7d-4c1e-9a3f-123456789abc")


@pytest.mark.parametrize(
    "text",
    [
        "0f8c2a9e5b7d4c1e9a3f123456789abc",
        "0F8C2A9E5B7D4C1E9A3F123456789ABC",
        "0f8c2a9e-5b7d-4c1e-9a3f-123456789abc",
        "0F8C2A9E-5b7d-4C1E-9a3f-123456789ABC",
        "{0f8c2a9e-5b7d-4c1e-9a3f-123456789abc}",
        "urn:uuid:0f8c2a9e-5b7d-4c1e-9a3f-123456789abc",
        "urn:uuid:0F8C2A9E-5B7D-4C1E-9A3F-123456789ABC",
    ],
)
def test_parse_uuid_strict_accepts_the_four_forms(text: str) -> None:
    assert parse_uuid_strict(text) == SAMPLE


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0f8c2a9e5b7d4c1e9a3f123456789ab",
        "{0f8c2a9e5b7d4c1e9a3f123456789abc}",
        "URN:UUID:0f8c2a9e-5b7d-4c1e-9a3f-123456789abc",
        "urn:uuid:0f8c2a9e5b7d4c1e9a3f123456789abc",
        "0f8c2a9e5-b7d-4c1e-9a3f-123456789abc",
        "0f8c2a9e-5b7d-4c1e-9a3f123456789abc-",
        " 0f8c2a9e-5b7d-4c1e-9a3f-123456789abc",
        "0f8c2a9e-5b7d-4c1e-9a3f-123456789abc\n",
        "{0f8c2a9e-5b7d-4c1e-9a3f-123456789abc",
        "0f8c2a9e-5b7d-4c1e-9a3f-123456789abg",
        "０f8c2a9e-5b7d-4c1e-9a3f-123456789abc",  # noqa: RUF001 (full-width digit)
    ],
)
def test_parse_uuid_strict_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="invalid UUID"):
        parse_uuid_strict(text)


@given(st.uuids())
def test_parse_uuid_strict_round_trips(value: uuid.UUID) -> None:
    assert parse_uuid_strict(str(value)) == value
    assert parse_uuid_strict(value.hex.upper()) == value
    assert parse_uuid_strict(f"{{{value}}}") == value
    assert parse_uuid_strict(value.urn) == value
