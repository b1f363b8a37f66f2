"""Versions and Cargo-style version requirements."""

from __future__ import annotations

import itertools

import pytest

from astrid_core.semver import (
    Op,
    SemverError,
    Version,
    parse_version,
    parse_version_req,
)

# --- versions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.2.0", Version(0, 2, 0)),
        ("1.0.0-alpha.1", Version(1, 0, 0, pre="alpha.1")),
        ("1.2.3+build.5", Version(1, 2, 3, build="build.5")),
        ("1.2.3-rc.1+sha.abc", Version(1, 2, 3, pre="rc.1", build="sha.abc")),
        ("10.20.30", Version(10, 20, 30)),
        ("1.0.0-x-y-z.--", Version(1, 0, 0, pre="x-y-z.--")),
    ],
)
def test_parse_version_accepts_full_versions(text: str, expected: Version) -> None:
    version = parse_version(text)
    assert version == expected
    assert str(version) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.0",
        "1",
        "latest",
        "v1.0.0",
        "01.0.0",
        "1.02.0",
        "1.0.0-",
        "1.0.0-01",
        "1.0.0-a..b",
        "1.0.0+",
        " 1.0.0",
        "1.0.0.0",
    ],
)
def test_parse_version_rejects_partial_and_malformed(text: str) -> None:
    with pytest.raises(SemverError):
        parse_version(text)


def test_semver_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="not a valid semantic version"):
        parse_version("latest")


def test_version_precedence_follows_semver_spec() -> None:
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    versions = [parse_version(v) for v in chain]
    assert sorted(reversed(versions)) == versions
    for lower, higher in itertools.pairwise(versions):
        assert lower < higher
        assert higher > lower
        assert lower <= higher
        assert higher >= lower


def test_version_build_metadata_does_not_change_precedence() -> None:
    a, b = parse_version("1.0.0+a"), parse_version("1.0.0+b")
    assert a.precedence_key() == b.precedence_key()
    assert a != b


# --- requirements --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "version", "expected"),
    [
        # caret (explicit and bare)
        ("^1.2.3", "1.2.3", True),
        ("^1.2.3", "1.9.0", True),
        ("^1.2.3", "2.0.0", False),
        ("^1.2.3", "1.2.2", False),
        ("1.2.3", "1.5.0", True),
        ("^0.2.3", "0.2.9", True),
        ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.3", True),
        ("^0.0.3", "0.0.4", False),
        ("^0.2", "0.2.0", True),
        ("^0.2", "0.2.7", True),
        ("^0.2", "0.3.0", False),
        ("^1.2", "1.9.0", True),
        ("^1.2", "1.1.0", False),
        ("^0.0", "0.0.9", True),
        ("^0.0", "0.1.0", False),
        ("^1", "1.99.0", True),
        ("^1", "2.0.0", False),
        ("0.2", "0.2.0", True),
        # tilde
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        ("~1.2", "1.2.0", True),
        ("~1.2", "1.3.0", False),
        ("~1", "1.9.9", True),
        ("~1", "2.0.0", False),
        # exact
        ("=1.2.3", "1.2.3", True),
        ("=1.2.3", "1.2.4", False),
        ("=1.2", "1.2.5", True),
        ("=1", "1.5.5", True),
        ("=1", "2.0.0", False),
        # ordering, full and partial
        (">1.2.3", "1.2.4", True),
        (">1.2.3", "1.2.3", False),
        (">1.2", "1.2.9", False),
        (">1.2", "1.3.0", True),
        (">1", "1.9.0", False),
        (">1", "2.0.0", True),
        (">=0.1", "0.2.0", True),
        (">=0.1.0", "0.2.0", True),
        (">=1", "0.9.9", False),
        (">= 1.2.3", "1.2.3", True),
        ("<1.2.3", "1.2.2", True),
        ("<1.2.3", "1.2.3", False),
        ("<1.2", "1.1.9", True),
        ("<1.2", "1.2.0", False),
        ("<1", "0.9.0", True),
        ("<=1.2.3", "1.2.3", True),
        ("<=1.2", "1.2.9", True),
        ("<=1.2", "1.3.0", False),
        ("<=1", "1.9.9", True),
        ("<=1", "2.0.0", False),
        # combinations and wildcards
        (">=0.1, <0.3", "0.2.0", True),
        (">=0.1, <0.2", "0.2.0", False),
        (">= 0.1.0 , < 1.0.0", "0.2.0", True),
        ("*", "0.2.0", True),
        ("1.*", "1.4.0", True),
        ("1.*", "2.0.0", False),
        ("1.2.*", "1.2.9", True),
        ("1.2.x", "1.3.0", False),
        ("=1.*", "1.0.0", True),
    ],
)
def test_requirement_matching(req: str, version: str, expected: bool) -> None:
    assert parse_version_req(req).matches(parse_version(version)) is expected


@pytest.mark.parametrize(
    ("req", "version", "expected"),
    [
        (">=1.0.0", "2.0.0-alpha", False),
        ("^1.0.0", "1.1.0-beta", False),
        ("*", "1.0.0-alpha", False),
        (">=1.0.0-alpha", "1.0.0-beta", True),
        (">=1.0.0-alpha", "1.0.1-beta", False),
        ("^1.0.0-alpha", "1.0.0", True),
        ("^1.0.0-alpha", "1.0.0-alpha.2", True),
        ("=1.0.0-alpha", "1.0.0-alpha", True),
        ("=1.0.0-alpha", "1.0.0-beta", False),
        (">1.0.0-alpha, <2", "1.0.0-alpha.1", True),
        ("<1.0.0", "1.0.0-rc.1", False),
    ],
)
def test_prerelease_versions_need_a_prerelease_comparator_on_the_same_version(
    req: str, version: str, expected: bool
) -> None:
    """Cargo's rule: ``>=1.0.0`` does not pick up ``2.0.0-alpha``."""
    assert parse_version_req(req).matches(parse_version(version)) is expected


def test_build_metadata_is_ignored_when_matching() -> None:
    assert parse_version_req("=1.0.0").matches(parse_version("1.0.0+build"))


def test_bare_version_is_a_caret_requirement() -> None:
    req = parse_version_req("0.2")
    assert [c.op for c in req.comparators] == [Op.CARET]
    assert str(req) == "0.2"
    assert str(req.comparators[0]) == "^0.2"


@pytest.mark.parametrize(
    "req",
    [
        "",
        "   ",
        "latest",
        ">=",
        "1.0,",
        ",1.0",
        ">=1.0 <2.0",
        "=>1.0",
        "1.*.3",
        ">=1.*",
        "1.0-alpha",
        "^01.0",
        "1.0.0-01",
        "v1.0.0",
    ],
)
def test_parse_version_req_rejects_malformed(req: str) -> None:
    with pytest.raises(SemverError):
        parse_version_req(req)
