"""Topic validity, ACL matching, bus matching and capability matching."""

from __future__ import annotations

import pytest

from astrid_core.topics import (
    MAX_BUS_TOPIC_SEGMENTS,
    acl_matches,
    bus_matches,
    capability_matches,
    has_valid_segments,
    split_capability,
)

# --- has_valid_segments ----------------------------------------------------------------------


@pytest.mark.parametrize("s", ["a", "a.b", "a.b.c", "*", "a.*.b", "tool.v1.request.cancel"])
def test_has_valid_segments_accepts_valid(s: str) -> None:
    """Mirrors the reference's ``has_valid_segments_accepts_valid``."""
    assert has_valid_segments(s)


@pytest.mark.parametrize("s", ["", ".", "..", "a..b", ".a", "a.", ".a.b", "a.b.", "a...b"])
def test_has_valid_segments_rejects_empty_segments(s: str) -> None:
    """Mirrors the reference's ``has_valid_segments_rejects_invalid``."""
    assert not has_valid_segments(s)


# --- ACL matching (the reference's topic_matches) ------------------------------------------

ACL_TABLE = [
    # (topic, pattern, expected) — the reference's topic_matches unit-test table
    ("user.prompt", "user.prompt", True),
    ("llm.stream.anthropic", "llm.stream.anthropic", True),
    ("tool.execute.search.result", "tool.execute.*.result", True),
    ("tool.execute.code-run.result", "tool.execute.*.result", True),
    ("tool.execute.result", "tool.execute.*.result", False),
    ("user.prompt", "llm.stream.anthropic", False),
    ("user.prompt.extra", "user.prompt", False),
    ("user", "user.prompt", False),
    ("ping", "ping", True),
    ("ping", "pong", False),
    ("foo.bar.baz", "*.bar.baz", True),
    ("foo.bar.baz", "foo.bar.*", True),
    ("a.b.c", "*.b.*", True),
    ("x.b.z", "*.b.*", True),
    ("x.c.z", "*.b.*", False),
    # a pattern `*` matches exactly one segment, a literal `*` included
    ("foo.*", "foo.*", True),
    ("foo.a.b", "foo.*", False),
    ("foo", "foo.*", False),
]


@pytest.mark.parametrize(("topic", "pattern", "expected"), ACL_TABLE)
def test_acl_matches_table(topic: str, pattern: str, expected: bool) -> None:
    """Mirrors the reference's ``topic_matches`` table (exact, wildcards, segment counts)."""
    assert acl_matches(topic, pattern) is expected


@pytest.mark.parametrize(
    ("topic", "pattern"),
    [
        ("a..b", "a.*.b"),
        ("a.x.b", "a..b"),
        (".a.b", "*.a.b"),
        ("x.a.b", ".a.b"),
        ("a.b.", "a.b.*"),
        ("a.b.x", "a.b."),
        (".", "*.*"),
        ("", ""),
        ("", "a"),
        ("a", ""),
    ],
)
def test_acl_matches_rejects_empty_segments_on_either_side(topic: str, pattern: str) -> None:
    """Mirrors the reference's ``empty_segments_rejected``."""
    assert not acl_matches(topic, pattern)


def _acl_allows(acl: list[str], topic: str) -> bool:
    """The broker's ACL rule: fail closed on an empty list, else any entry ACL-matches."""
    return bool(acl) and any(acl_matches(topic, entry) for entry in acl)


@pytest.mark.parametrize(
    ("acl", "requested", "expected"),
    [
        ([], "foo.bar", False),
        (["foo.bar"], "foo.bar", True),
        (["registry.v1.*"], "registry.v1.providers", True),
        (["registry.v1.*"], "registry.v1.selection.callback", False),
        (["foo.*"], "foo.*", True),
        (["foo.*"], "foo.bar", True),
        (["foo.bar"], "foo.*", False),
        (["foo..bar"], "foo..bar", False),
        (["foo..bar"], "foo.x.bar", False),
        (["a.b", "c.*"], "c.d", True),
    ],
)
def test_ipc_acl_matrix(acl: list[str], requested: str, expected: bool) -> None:
    """Mirrors the ACL matrix of the reference's ``host/ipc.rs`` unit tests: an empty ACL
    denies, exact entries allow, a wildcard entry does not widen depth, an exact entry cannot
    be widened to a wildcard subscription, a malformed entry never matches."""
    assert _acl_allows(acl, requested) is expected


# --- bus matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "pattern", "expected"),
    [
        ("a.b.c", "a.b.*", True),
        ("a.b.c.d", "a.b.*", True),
        ("a.b", "a.b.*", False),
        ("a.x.c", "a.*.c", True),
        ("a.x.c.d", "a.*.c", False),
        ("a.x.c.d", "a.*.*", True),
        ("z.b.c", "*.b.*", True),
        ("z.q.c", "*.b.*", False),
        ("single", "*", True),
        ("two.segments", "*", False),
        ("foo.v1.a.b.c", "foo.v1.*", True),
        ("exact.topic", "exact.topic", True),
        ("exact.topic.more", "exact.topic", False),
        ("a..b", "a.*", False),
        ("a.b", "a..*", False),
    ],
)
def test_bus_matches_table(topic: str, pattern: str, expected: bool) -> None:
    """Bus rule: trailing ``.*`` = one or more segments; otherwise equal count."""
    assert bus_matches(topic, pattern) is expected


def test_bus_matches_ignores_topics_deeper_than_limit() -> None:
    deepest = ".".join(["s"] * MAX_BUS_TOPIC_SEGMENTS)
    too_deep = ".".join(["s"] * (MAX_BUS_TOPIC_SEGMENTS + 1))
    assert bus_matches(deepest, "s.*")
    assert not bus_matches(too_deep, "s.*")
    assert not bus_matches(too_deep, too_deep)


def test_bus_and_acl_rules_differ_on_trailing_wildcard() -> None:
    """The documented discrepancy: ACL ``foo.*`` is one segment, bus ``foo.*`` any depth."""
    assert bus_matches("foo.a.b", "foo.*")
    assert not acl_matches("foo.a.b", "foo.*")


# --- capability matching -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "provided", "expected"),
    [
        ("topic:foo.bar", "topic:foo.bar", True),
        ("topic:llm.stream.*", "topic:llm.stream.anthropic", True),
        ("topic:llm.request.generate.anthropic", "topic:llm.request.generate.*", True),
        ("topic:foo", "tool:foo", False),
        ("topic:a.b", "topic:a.b.c", False),
        ("topic:a.b.c", "topic:a.b", False),
        ("foo", "foo", True),
        ("foo", "bar", False),
        ("topic:*.stream", "topic:llm.*", True),
        ("topic:llm.*.anthropic", "topic:llm.stream.anthropic", True),
        ("topic:llm.*.anthropic", "topic:llm.stream.openai", False),
        ("topic:", "topic:", True),
        ("topic:", "tool:", False),
        ("llm:claude", "llm:claude", True),
        ("uplink:*", "uplink:telegram", True),
    ],
)
def test_capability_matches_table(requirement: str, provided: str, expected: bool) -> None:
    """Mirrors the reference's ``capability_matches_*`` toposort tests (exact, wildcard on
    either side, prefix mismatch, segment count, strings without prefix)."""
    assert capability_matches(requirement, provided) is expected


def test_split_capability_without_prefix_has_empty_prefix() -> None:
    assert split_capability("topic:a.b") == ("topic", "a.b")
    assert split_capability("a.b") == ("", "a.b")
    assert split_capability("tool:x:y") == ("tool", "x:y")
