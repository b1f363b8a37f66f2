"""Capsule discovery on real directories, and dependency ordering (kernel.md §1.1, §1.4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astrid_core.discovery import (
    DiscoveredCapsule,
    OrderResult,
    capsule_roots,
    discover,
    order_capsules,
)
from astrid_core.manifest import Capabilities, Dependencies, Manifest, Package


def write_capsule(root: Path, dirname: str | None, name: str, extra: str = "") -> Path:
    """Create ``root/dirname/Capsule.toml`` (``root/Capsule.toml`` when dirname is None)."""
    capsule_dir = root if dirname is None else root / dirname
    capsule_dir.mkdir(parents=True, exist_ok=True)
    (capsule_dir / "Capsule.toml").write_text(
        f'[package]\nname = "{name}"\nversion = "0.1.0"\n{extra}', encoding="utf-8"
    )
    return capsule_dir


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    (ws / ".astrid" / "capsules").mkdir(parents=True)
    return ws


@pytest.fixture
def home_capsules(tmp_path: Path) -> Path:
    home = tmp_path / "home" / ".astrid" / "capsules"
    home.mkdir(parents=True)
    return home


def ws_root(workspace: Path) -> Path:
    return workspace / ".astrid" / "capsules"


# --- discovery -----------------------------------------------------------------------------


def test_discover_scans_workspace_then_home_sorted_by_directory(
    workspace: Path, home_capsules: Path
) -> None:
    write_capsule(ws_root(workspace), "zeta", "zeta")
    write_capsule(ws_root(workspace), "alpha", "alpha")
    write_capsule(home_capsules, "mid", "mid")
    write_capsule(home_capsules, "beta", "beta")

    result = discover(workspace, home_capsules)

    assert [c.name for c in result.capsules] == ["alpha", "zeta", "beta", "mid"]
    assert result.problems == []
    alpha = result.capsules[0]
    assert alpha.dir == ws_root(workspace) / "alpha"
    assert alpha.manifest.path == ws_root(workspace) / "alpha" / "Capsule.toml"


def test_discover_accepts_manifest_directly_in_root(home_capsules: Path) -> None:
    write_capsule(home_capsules, None, "root-capsule")
    write_capsule(home_capsules, "child", "child")

    result = discover(None, home_capsules)

    assert [(c.name, c.dir) for c in result.capsules] == [
        ("root-capsule", home_capsules),
        ("child", home_capsules / "child"),
    ]


def test_discover_is_one_level_deep(home_capsules: Path) -> None:
    write_capsule(home_capsules / "group", "nested", "nested")
    (home_capsules / "empty-dir").mkdir()
    (home_capsules / "stray-file.txt").write_text("not a capsule")

    assert discover(None, home_capsules).capsules == []


def test_discover_missing_roots_are_fine(tmp_path: Path) -> None:
    result = discover(tmp_path / "no-workspace", tmp_path / "no-home")
    assert result.capsules == []
    assert result.problems == []


def test_discover_without_workspace_scans_home_only(tmp_path: Path, home_capsules: Path) -> None:
    write_capsule(home_capsules, "only", "only")
    assert [c.name for c in discover(None, home_capsules).capsules] == ["only"]


def test_discover_records_bad_manifests_and_keeps_going(home_capsules: Path) -> None:
    write_capsule(home_capsules, "good", "good")
    bad_toml = home_capsules / "bad-toml"
    bad_toml.mkdir()
    (bad_toml / "Capsule.toml").write_text("[package\n")
    write_capsule(home_capsules, "bad-version", "bad-version").joinpath("Capsule.toml").write_text(
        '[package]\nname = "bad-version"\nversion = "1.0"\n'
    )

    result = discover(None, home_capsules)

    assert [c.name for c in result.capsules] == ["good"]
    problems = {p.path.parent.name: p.message for p in result.problems}
    assert set(problems) == {"bad-toml", "bad-version"}
    assert "TOML parse error" in problems["bad-toml"]
    assert "invalid version '1.0'" in problems["bad-version"]
    assert all(p.path.name == "Capsule.toml" for p in result.problems)


def test_discover_records_invalid_capsule_ids(home_capsules: Path) -> None:
    write_capsule(home_capsules, "upper", "Upper_Case")

    result = discover(None, home_capsules)

    assert result.capsules == []
    (problem,) = result.problems
    assert "invalid capsule id 'Upper_Case'" in problem.message
    assert str(problem).startswith(str(home_capsules / "upper" / "Capsule.toml"))


def test_discover_duplicate_name_first_workspace_copy_wins(
    workspace: Path, home_capsules: Path
) -> None:
    ws_dir = write_capsule(ws_root(workspace), "shared", "shared")
    home_dir = write_capsule(home_capsules, "shared-copy", "shared")

    result = discover(workspace, home_capsules)

    assert [(c.name, c.dir) for c in result.capsules] == [("shared", ws_dir)]
    (problem,) = result.problems
    assert problem.message == (
        f"duplicate capsule 'shared' at {home_dir} (already found at {ws_dir})"
    )


def test_discover_scans_a_root_only_once_when_workspace_and_home_coincide(
    tmp_path: Path,
) -> None:
    home = tmp_path / ".astrid" / "capsules"
    write_capsule(home, "one", "one")

    result = discover(tmp_path, home)

    assert [c.name for c in result.capsules] == ["one"]
    assert result.problems == []
    assert capsule_roots(tmp_path, home) == [tmp_path / ".astrid" / "capsules"]


def test_discover_unreadable_root_is_a_problem_not_an_error(
    home_capsules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_capsule(home_capsules, "hidden", "hidden")
    real_scandir = os.scandir

    def deny(path: str | os.PathLike[str]) -> object:
        if Path(path) == home_capsules:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", deny)
    result = discover(None, home_capsules)

    assert result.capsules == []
    (problem,) = result.problems
    assert problem.path == home_capsules
    assert "Permission denied" in problem.message


def test_discover_root_that_is_a_file_is_a_problem(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "capsules"
    not_a_dir.write_text("oops")
    result = discover(None, not_a_dir)
    assert result.capsules == []
    assert "cannot read capsule directory" in result.problems[0].message


# --- ordering ------------------------------------------------------------------------------


def make(
    name: str,
    provides: tuple[str, ...] = (),
    requires: tuple[str, ...] = (),
    *,
    uplink: bool = False,
    ipc_publish: tuple[str, ...] = (),
) -> DiscoveredCapsule:
    capsule_dir = Path("/capsules") / name
    manifest = Manifest(
        path=capsule_dir / "Capsule.toml",
        package=Package(name=name, version="0.1.0"),
        dependencies=Dependencies(provides=provides, requires=requires),
        capabilities=Capabilities(uplink=uplink, ipc_publish=ipc_publish),
    )
    return DiscoveredCapsule(name=name, dir=capsule_dir, manifest=manifest)


def names(result: OrderResult) -> list[str]:
    return [c.name for c in result.order]


def pos(result: OrderResult, name: str) -> int:
    return names(result).index(name)


def test_order_empty_and_single() -> None:
    """Mirrors the reference's ``empty_graph`` and ``single_node``."""
    assert names(order_capsules([])) == []
    assert names(order_capsules([make("a")])) == ["a"]


def test_order_independent_capsules_keep_input_order() -> None:
    """Mirrors ``no_dependencies_preserves_all`` (and checks the order, too)."""
    result = order_capsules([make("x"), make("y"), make("z")])
    assert names(result) == ["x", "y", "z"]
    assert result.providers == {"x": [], "y": [], "z": []}
    assert result.warnings == []
    assert result.cycle is None


def test_order_provider_before_consumer() -> None:
    """Mirrors ``capability_edge``."""
    result = order_capsules(
        [make("b", requires=("topic:foo",)), make("a", provides=("topic:foo",))]
    )
    assert names(result) == ["a", "b"]
    assert result.providers == {"a": [], "b": ["a"]}


def test_order_wildcard_requirement() -> None:
    """Mirrors ``wildcard_requires``."""
    result = order_capsules(
        [
            make("b", requires=("topic:llm.stream.*",)),
            make("a", provides=("topic:llm.stream.anthropic",)),
        ]
    )
    assert names(result) == ["a", "b"]


def test_order_all_providers_before_consumer() -> None:
    """Mirrors ``all_providers_ordered_before_consumer``."""
    result = order_capsules(
        [
            make("c", requires=("topic:llm.stream.*",)),
            make("a", provides=("topic:llm.stream.anthropic",)),
            make("b", provides=("topic:llm.stream.openai",)),
        ]
    )
    assert pos(result, "a") < pos(result, "c")
    assert pos(result, "b") < pos(result, "c")
    assert result.providers["c"] == ["a", "b"]


def test_order_unsatisfied_requirement_warns_and_still_loads() -> None:
    """Mirrors ``unsatisfied_requirement_still_succeeds``."""
    result = order_capsules([make("a"), make("b", requires=("topic:missing",))])
    assert names(result) == ["a", "b"]
    (warning,) = result.warnings
    assert "'b'" in warning
    assert "topic:missing" in warning
    assert result.cycle is None


def test_order_capsule_does_not_satisfy_its_own_requirement() -> None:
    result = order_capsules([make("self", provides=("topic:x",), requires=("topic:x",))])
    assert names(result) == ["self"]
    assert len(result.warnings) == 1
    assert result.providers == {"self": []}


def test_order_two_node_cycle_reported_and_input_order_kept() -> None:
    """Mirrors ``cycle_detected``."""
    result = order_capsules(
        [
            make("a", provides=("topic:x",), requires=("topic:y",)),
            make("b", provides=("topic:y",), requires=("topic:x",)),
        ]
    )
    assert result.cycle == ["a", "b"]
    assert names(result) == ["a", "b"]
    assert any("dependency cycle detected" in w for w in result.warnings)
    # The fallback order cannot honour both edges; only edges that agree with it remain,
    # so a supervisor waiting on providers cannot deadlock.
    assert result.providers == {"a": [], "b": ["a"]}


def test_order_three_node_cycle_reported() -> None:
    """Mirrors ``three_node_cycle``."""
    result = order_capsules(
        [
            make("a", provides=("topic:x",), requires=("topic:z",)),
            make("b", provides=("topic:y",), requires=("topic:x",)),
            make("c", provides=("topic:z",), requires=("topic:y",)),
        ]
    )
    assert result.cycle is not None
    assert sorted(result.cycle) == ["a", "b", "c"]
    assert names(result) == ["a", "b", "c"]


def test_order_cycle_lists_only_nodes_left_with_dependencies() -> None:
    result = order_capsules(
        [
            make("free"),
            make("a", provides=("topic:x",), requires=("topic:y",)),
            make("b", provides=("topic:y",), requires=("topic:x",)),
        ]
    )
    assert result.cycle == ["a", "b"]
    assert names(result) == ["free", "a", "b"]


def test_order_diamond() -> None:
    """Mirrors ``diamond_dependency_via_capabilities``."""
    result = order_capsules(
        [
            make("d", provides=("topic:d",), requires=("topic:b", "topic:c")),
            make("b", provides=("topic:b",), requires=("topic:a",)),
            make("c", provides=("topic:c",), requires=("topic:a",)),
            make("a", provides=("topic:a",)),
        ]
    )
    assert names(result) == ["a", "b", "c", "d"]
    assert result.providers == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_order_auto_derived_provides_create_edges() -> None:
    """Auto-derived provides (from ``ipc_publish``) satisfy ``requires``, as in the
    reference's auto-derive toposort tests."""
    result = order_capsules(
        [
            make("consumer", requires=("topic:llm.stream.anthropic",)),
            make("producer", ipc_publish=("llm.stream.*",)),
        ]
    )
    assert names(result) == ["producer", "consumer"]
    assert result.warnings == []


def test_order_uplinks_first_keeping_relative_order() -> None:
    result = order_capsules(
        [
            make("plain-1"),
            make("uplink-1", uplink=True, provides=("uplink:cli",)),
            make("consumer", requires=("uplink:cli",)),
            make("uplink-2", uplink=True),
            make("plain-2"),
        ]
    )
    # Kahn's queue is seeded with the independent capsules in input order; "consumer" joins
    # it once its provider is done, i.e. after them.
    assert names(result) == ["uplink-1", "uplink-2", "plain-1", "plain-2", "consumer"]
    assert result.providers["consumer"] == ["uplink-1"]


def test_order_uplinks_first_also_after_cycle_fallback() -> None:
    result = order_capsules(
        [
            make("a", provides=("topic:x",), requires=("topic:y",)),
            make("b", provides=("topic:y",), requires=("topic:x",)),
            make("up", uplink=True),
        ]
    )
    assert result.cycle == ["a", "b"]
    assert names(result) == ["up", "a", "b"]


def test_order_works_on_discovered_capsules(home_capsules: Path) -> None:
    write_capsule(
        home_capsules, "a-consumer", "a-consumer", '[dependencies]\nrequires = ["tool:search"]\n'
    )
    write_capsule(
        home_capsules,
        "b-provider",
        "b-provider",
        '[[tool]]\nname = "search"\ndescription = "d"\ninput_schema = {}\n',
    )
    result = order_capsules(discover(None, home_capsules).capsules)
    assert names(result) == ["b-provider", "a-consumer"]
