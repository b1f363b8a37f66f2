"""Install and upgrade hooks (DESIGN §6.4, syscalls.md §8).

When a capsule connects, the broker compares its manifest version with the version recorded in
``state.db`` the last time a hook succeeded:

* never seen → ``astrid_install`` with empty input;
* another version → ``astrid_upgrade`` with ``{"prev_version": "<recorded>"}``.

The hook is announced in the hello's welcome and runs in the worker before anything else (before
``run``, before tool calls), on a plugin without the call timeout; it is the capsule's current
invocation meanwhile, so ``astrid_elicit`` is allowed only then. The version is recorded when the
hook succeeds (or when the capsule does not export it); a hook that traps stops the capsule
(FATAL) and is tried again on the next start.
"""

from __future__ import annotations

from dataclasses import dataclass

from astrid_core.serde import dumps
from broker.kernel import Kernel, KernelService

INSTALL_EXPORT = "astrid_install"
UPGRADE_EXPORT = "astrid_upgrade"
LIFECYCLE_EXPORTS = frozenset({INSTALL_EXPORT, UPGRADE_EXPORT})


@dataclass(frozen=True, slots=True)
class LifecycleCall:
    export: str
    input: bytes


class VersionStore(KernelService):
    """The version of each capsule whose install/upgrade hook last succeeded."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._db = db = kernel.kv.connection
        db.execute(
            "CREATE TABLE IF NOT EXISTS capsule_versions"
            " (capsule TEXT PRIMARY KEY, version TEXT NOT NULL)"
        )

    def installed(self, capsule: str) -> str | None:
        row = self._db.execute(
            "SELECT version FROM capsule_versions WHERE capsule = ?", (capsule,)
        ).fetchone()
        return None if row is None else str(row[0])

    def record(self, capsule: str, version: str) -> None:
        self._db.execute(
            "INSERT INTO capsule_versions (capsule, version) VALUES (?, ?)"
            " ON CONFLICT (capsule) DO UPDATE SET version = excluded.version",
            (capsule, version),
        )


def lifecycle_call(installed: str | None, version: str) -> LifecycleCall | None:
    """The hook to run for a capsule at ``version``, given what was installed before."""
    if installed is None:
        return LifecycleCall(INSTALL_EXPORT, b"")
    if installed != version:
        return LifecycleCall(UPGRADE_EXPORT, dumps({"prev_version": installed}).encode())
    return None
