"""Capsule discovery and dependency ordering.

:func:`discover` finds every ``Capsule.toml`` in the workspace and user capsule directories;
it never raises for a bad capsule, it records a :class:`DiscoveryProblem` instead.
:func:`order_capsules` orders the result so that providers start before the capsules that
``require`` what they provide (Kahn's algorithm), then moves uplink capsules to the front.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from astrid_core.manifest import (
    MANIFEST_FILE_NAME,
    Manifest,
    ManifestError,
    load_manifest,
    validate_capsule_id,
)
from astrid_core.topics import capability_matches

__all__ = [
    "WORKSPACE_CAPSULES_DIR",
    "DiscoveredCapsule",
    "DiscoveryProblem",
    "DiscoveryResult",
    "OrderResult",
    "capsule_roots",
    "discover",
    "order_capsules",
]

#: Capsule directory relative to a workspace root.
WORKSPACE_CAPSULES_DIR = Path(".astrid") / "capsules"


@dataclass(frozen=True)
class DiscoveredCapsule:
    """A capsule found on disk with a valid manifest and capsule id."""

    name: str
    dir: Path
    manifest: Manifest


@dataclass(frozen=True)
class DiscoveryProblem:
    """A capsule (or root) that was skipped, and why."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class DiscoveryResult:
    """What :func:`discover` found: capsules in scan order, and skipped entries."""

    capsules: list[DiscoveredCapsule] = field(default_factory=list)
    problems: list[DiscoveryProblem] = field(default_factory=list)


def capsule_roots(workspace: Path | None, home_capsules: Path) -> list[Path]:
    """The roots :func:`discover` scans, in order, without duplicates of the same directory."""
    candidates = [] if workspace is None else [workspace / WORKSPACE_CAPSULES_DIR]
    candidates.append(home_capsules)
    roots: list[Path] = []
    seen: set[str] = set()
    for root in candidates:
        real = os.path.realpath(root)
        if real not in seen:
            seen.add(real)
            roots.append(root)
    return roots


def _capsule_dirs(root: Path, problems: list[DiscoveryProblem]) -> Iterator[Path]:
    """Capsule directories of one root: the root itself, then subdirectories by name."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as e:
        problems.append(DiscoveryProblem(root, f"cannot read capsule directory: {e}"))
        return
    if (root / MANIFEST_FILE_NAME).is_file():
        yield root
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir and (Path(entry.path) / MANIFEST_FILE_NAME).is_file():
            yield Path(entry.path)


def discover(workspace: Path | None, home_capsules: Path) -> DiscoveryResult:
    """Find capsules under ``<workspace>/.astrid/capsules`` and then ``home_capsules``.

    Each root is scanned one level deep: a ``Capsule.toml`` directly in the root (capsule
    directory = the root), then every immediate subdirectory holding one, sorted by name.
    Missing roots are skipped silently. A manifest that fails to load, an invalid capsule id,
    an unreadable root, or a second capsule with an already-found name is recorded as a
    problem; the first capsule of a name (the workspace one) wins.
    """
    result = DiscoveryResult()
    by_name: dict[str, DiscoveredCapsule] = {}
    for root in capsule_roots(workspace, home_capsules):
        for capsule_dir in _capsule_dirs(root, result.problems):
            manifest_path = capsule_dir / MANIFEST_FILE_NAME
            try:
                manifest = load_manifest(manifest_path)
                validate_capsule_id(manifest.package.name)
            except (ManifestError, ValueError) as e:
                result.problems.append(DiscoveryProblem(manifest_path, str(e)))
                continue
            name = manifest.package.name
            first = by_name.get(name)
            if first is not None:
                result.problems.append(
                    DiscoveryProblem(
                        manifest_path,
                        f"duplicate capsule '{name}' at {capsule_dir} "
                        f"(already found at {first.dir})",
                    )
                )
                continue
            capsule = DiscoveredCapsule(name=name, dir=capsule_dir, manifest=manifest)
            by_name[name] = capsule
            result.capsules.append(capsule)
    return result


@dataclass
class OrderResult:
    """The start order of a set of capsules.

    ``providers`` maps every capsule name to the names of the capsules it must wait for
    (the providers of its ``requires`` that come before it in ``order``); ``cycle`` lists the
    capsules caught in a dependency cycle, in which case ``order`` falls back to input order
    (still with uplinks first).
    """

    order: list[DiscoveredCapsule]
    warnings: list[str] = field(default_factory=list)
    cycle: list[str] | None = None
    providers: dict[str, list[str]] = field(default_factory=dict)


def order_capsules(capsules: Sequence[DiscoveredCapsule]) -> OrderResult:
    """Order capsules by their ``requires``/``provides`` graph, uplinks first.

    For every ``requires`` entry of a capsule, every *other* capsule whose effective provides
    match it (:func:`~astrid_core.topics.capability_matches`) must start first. A requirement
    nobody provides produces a warning and is otherwise ignored. Independent capsules keep
    their input order. On a cycle, the capsules involved are reported and the input order is
    used. Finally capsules with ``[capabilities] uplink = true`` are moved to the front,
    keeping their relative order.
    """
    count = len(capsules)
    provides = [c.manifest.effective_provides() for c in capsules]
    # depends_on[i]: indices that must start before i (insertion-ordered, no duplicates).
    depends_on: list[dict[int, None]] = [{} for _ in range(count)]
    warnings: list[str] = []
    for i, capsule in enumerate(capsules):
        for requirement in capsule.manifest.dependencies.requires:
            matched = False
            for j in range(count):
                if j != i and any(capability_matches(requirement, p) for p in provides[j]):
                    depends_on[i][j] = None
                    matched = True
            if not matched:
                warnings.append(
                    f"capsule '{capsule.name}' requires '{requirement}' but no other capsule "
                    "provides it; loading it anyway"
                )

    dependents: list[list[int]] = [[] for _ in range(count)]
    in_degree = [len(d) for d in depends_on]
    for i in range(count):
        for j in depends_on[i]:
            dependents[j].append(i)

    queue = deque(i for i in range(count) if in_degree[i] == 0)
    sorted_indices: list[int] = []
    while queue:
        i = queue.popleft()
        sorted_indices.append(i)
        for k in dependents[i]:
            in_degree[k] -= 1
            if in_degree[k] == 0:
                queue.append(k)

    cycle: list[str] | None = None
    if len(sorted_indices) != count:
        cycle = [capsules[i].name for i in range(count) if in_degree[i] > 0]
        warnings.append(
            f"dependency cycle detected (involved nodes): {', '.join(cycle)}; "
            "falling back to discovery order"
        )
        sorted_indices = list(range(count))

    uplinks = [i for i in sorted_indices if capsules[i].manifest.capabilities.uplink]
    others = [i for i in sorted_indices if not capsules[i].manifest.capabilities.uplink]
    final = uplinks + others
    position = {i: pos for pos, i in enumerate(final)}
    providers = {
        capsules[i].name: [capsules[j].name for j in depends_on[i] if position[j] < position[i]]
        for i in final
    }
    return OrderResult(
        order=[capsules[i] for i in final],
        warnings=warnings,
        cycle=cycle,
        providers=providers,
    )
