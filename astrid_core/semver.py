"""Minimal Cargo-flavoured semantic versioning.

* :func:`parse_version` accepts full versions only: ``MAJOR.MINOR.PATCH`` with an optional
  ``-pre.release`` and ``+build`` (``1.0`` and ``latest`` are rejected).
* :func:`parse_version_req` accepts Cargo requirement syntax: comma-separated comparators with
  the operators ``^ ~ = > >= < <=``, a bare version meaning ``^``, partial versions (``^0.2``,
  ``>=1``), wildcards (``*``, ``1.*``, ``1.2.x``).

Pre-release versions follow Cargo's rule: a version with a pre-release tag only satisfies a
requirement if some comparator names the same ``MAJOR.MINOR.PATCH`` with a pre-release tag
(so ``>=1.0.0`` does not pick up ``2.0.0-alpha``, but ``>=2.0.0-alpha`` does).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "Comparator",
    "Op",
    "SemverError",
    "Version",
    "VersionReq",
    "parse_version",
    "parse_version_req",
]


class SemverError(ValueError):
    """A version or version requirement string could not be parsed."""


_NUMBER = r"0|[1-9][0-9]*"
_IDENT = r"[0-9A-Za-z-]+"
_VERSION_RE = re.compile(
    rf"(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?"
)
_NUMERIC_RE = re.compile(r"[0-9]+")


def _pre_identifiers(pre: str) -> tuple[int | str, ...]:
    """Split a pre-release string into identifiers, numeric ones as ints."""
    if not pre:
        return ()
    return tuple(int(p) if _NUMERIC_RE.fullmatch(p) else p for p in pre.split("."))


def _pre_key(pre: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Sort key of a pre-release: no pre-release sorts above any pre-release.

    Within pre-releases (semver §11): identifiers compare left to right, numeric below
    alphanumeric, numbers numerically, strings in ASCII order, and a shorter prefix sorts first.
    """
    if not pre:
        return (1, ())
    return (0, tuple((0, i) if isinstance(i, int) else (1, i) for i in _pre_identifiers(pre)))


def _check_pre(pre: str, text: str) -> None:
    for ident in pre.split("."):
        if _NUMERIC_RE.fullmatch(ident) and len(ident) > 1 and ident.startswith("0"):
            raise SemverError(f"invalid leading zero in pre-release identifier of '{text}'")


@dataclass(frozen=True, eq=True)
class Version:
    """A full semantic version. Ordering follows semver precedence, then build metadata."""

    major: int
    minor: int
    patch: int
    pre: str = ""
    build: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += f"-{self.pre}"
        if self.build:
            text += f"+{self.build}"
        return text

    @property
    def is_prerelease(self) -> bool:
        return bool(self.pre)

    def precedence_key(
        self,
    ) -> tuple[int, int, int, tuple[int, tuple[tuple[int, int | str], ...]]]:
        """Key for semver precedence (build metadata ignored)."""
        return (self.major, self.minor, self.patch, _pre_key(self.pre))

    def _sort_key(
        self,
    ) -> tuple[tuple[int, int, int, tuple[int, tuple[tuple[int, int | str], ...]]], str]:
        return (self.precedence_key(), self.build)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._sort_key() < other._sort_key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._sort_key() <= other._sort_key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._sort_key() > other._sort_key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._sort_key() >= other._sort_key()


def parse_version(text: str) -> Version:
    """Parse a full semantic version; raise :class:`SemverError` if it is not one."""
    if not text:
        raise SemverError("empty string, expected a semver version")
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        raise SemverError(
            f"'{text}' is not a valid semantic version (expected MAJOR.MINOR.PATCH "
            "with optional -prerelease and +build)"
        )
    pre = m.group("pre") or ""
    if pre:
        _check_pre(pre, text)
    return Version(
        major=int(m.group("major")),
        minor=int(m.group("minor")),
        patch=int(m.group("patch")),
        pre=pre,
        build=m.group("build") or "",
    )


class Op(enum.StrEnum):
    """Comparison operator of a requirement comparator."""

    EXACT = "="
    GREATER = ">"
    GREATER_EQ = ">="
    LESS = "<"
    LESS_EQ = "<="
    TILDE = "~"
    CARET = "^"
    WILDCARD = "*"  # a partial version with a wildcard component, e.g. ``1.*``


@dataclass(frozen=True)
class Comparator:
    """One comparator of a requirement; ``minor``/``patch`` are None when left out."""

    op: Op
    major: int
    minor: int | None = None
    patch: int | None = None
    pre: str = ""

    def __str__(self) -> str:
        parts = [str(self.major)]
        if self.minor is not None:
            parts.append(str(self.minor))
            if self.patch is not None:
                parts.append(str(self.patch))
        text = ".".join(parts)
        if self.pre:
            text += f"-{self.pre}"
        if self.op is Op.WILDCARD:
            return text + ".*"
        return f"{self.op.value}{text}"

    def matches(self, v: Version) -> bool:
        """Whether ``v`` satisfies this comparator alone (pre-release rule not applied)."""
        minor, patch = self.minor, self.patch
        if self.op in (Op.EXACT, Op.WILDCARD):
            if minor is None:
                return v.major == self.major
            if patch is None:
                return (v.major, v.minor) == (self.major, minor)
            return v.precedence_key() == self._full_key(minor, patch)
        if self.op is Op.TILDE:
            if minor is None:
                return v.major == self.major
            if (v.major, v.minor) != (self.major, minor):
                return False
            return patch is None or v.precedence_key() >= self._full_key(minor, patch)
        if self.op is Op.CARET:
            return self._matches_caret(v)
        return self._matches_ordering(v)

    def _full_key(
        self, minor: int, patch: int
    ) -> tuple[int, int, int, tuple[int, tuple[tuple[int, int | str], ...]]]:
        return (self.major, minor, patch, _pre_key(self.pre))

    def _matches_caret(self, v: Version) -> bool:
        minor, patch = self.minor, self.patch
        if v.major != self.major:
            return False
        if minor is None:
            return True
        if patch is None:
            return v.minor >= minor if self.major > 0 else v.minor == minor
        key = v.precedence_key()
        if self.major > 0:
            return key >= self._full_key(minor, patch)
        if minor > 0:
            return v.minor == minor and key >= self._full_key(minor, patch)
        return v.minor == minor and v.patch == patch and key >= self._full_key(minor, patch)

    def _matches_ordering(self, v: Version) -> bool:
        minor, patch = self.minor, self.patch
        if minor is None:
            order = (v.major > self.major) - (v.major < self.major)
        elif patch is None:
            have, want = (v.major, v.minor), (self.major, minor)
            order = (have > want) - (have < want)
        else:
            key, bound = v.precedence_key(), self._full_key(minor, patch)
            order = (key > bound) - (key < bound)
        match self.op:
            case Op.GREATER:
                return order > 0
            case Op.GREATER_EQ:
                return order >= 0
            case Op.LESS:
                return order < 0
            case Op.LESS_EQ:
                return order <= 0
        raise AssertionError(f"unexpected operator {self.op}")  # pragma: no cover


_COMPARATOR_RE = re.compile(
    r"(?P<op>>=|<=|=|>|<|~|\^)?\s*"
    r"(?P<major>[0-9]+|[*xX])"
    r"(?:\.(?P<minor>[0-9]+|[*xX]))?"
    r"(?:\.(?P<patch>[0-9]+|[*xX]))?"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?"
)


def _number(part: str, text: str) -> int:
    if len(part) > 1 and part.startswith("0"):
        raise SemverError(f"invalid leading zero in '{text}'")
    return int(part)


def _parse_comparator(text: str) -> Comparator | None:
    """Parse one comparator; None means "matches any version" (a bare ``*``)."""
    m = _COMPARATOR_RE.fullmatch(text)
    if m is None:
        raise SemverError(f"unexpected character in comparator '{text}'")
    op_text = m.group("op")
    parts = [m.group("major"), m.group("minor"), m.group("patch")]
    given = [p for p in parts if p is not None]
    wild = [p in ("*", "x", "X") for p in given]
    pre = m.group("pre") or ""
    if any(wild):
        first = wild.index(True)
        if not all(wild[first:]):
            raise SemverError(f"unexpected version component after a wildcard in '{text}'")
        if pre:
            raise SemverError(f"unexpected pre-release after a wildcard in '{text}'")
        if op_text is not None and op_text != "=":
            raise SemverError(f"unexpected wildcard after operator '{op_text}' in '{text}'")
        if first == 0:
            return None
        numbers = [_number(p, text) for p in given[:first]]
        return Comparator(
            Op.WILDCARD,
            numbers[0],
            numbers[1] if len(numbers) > 1 else None,
            None,
        )
    if pre:
        if len(given) < 3:
            raise SemverError(f"a pre-release requires a full version in '{text}'")
        _check_pre(pre, text)
    numbers = [_number(p, text) for p in given]
    return Comparator(
        Op(op_text) if op_text is not None else Op.CARET,
        numbers[0],
        numbers[1] if len(numbers) > 1 else None,
        numbers[2] if len(numbers) > 2 else None,
        pre,
    )


@dataclass(frozen=True)
class VersionReq:
    """A parsed version requirement: every comparator must match."""

    text: str
    comparators: tuple[Comparator, ...]

    def __str__(self) -> str:
        return self.text

    def matches(self, version: Version) -> bool:
        """Whether ``version`` satisfies the requirement (Cargo's pre-release rule applied)."""
        if not all(c.matches(version) for c in self.comparators):
            return False
        if not version.pre:
            return True
        return any(
            c.pre and (c.major, c.minor, c.patch) == (version.major, version.minor, version.patch)
            for c in self.comparators
        )


def parse_version_req(text: str) -> VersionReq:
    """Parse a Cargo-style requirement such as ``>=0.1, <0.3`` or ``^0.2``."""
    stripped = text.strip()
    if not stripped:
        raise SemverError("empty string, expected a semver version requirement")
    comparators: list[Comparator] = []
    for raw in stripped.split(","):
        part = raw.strip()
        if not part:
            raise SemverError(f"empty comparator in requirement '{text}'")
        comparator = _parse_comparator(part)
        if comparator is not None:
            comparators.append(comparator)
    return VersionReq(text=stripped, comparators=tuple(comparators))
