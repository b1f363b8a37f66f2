"""The kernel-wide identity store: Astrid users and their links to frontend platforms.

Kept in ``state.db`` through the KV store, namespace ``system:identity`` (syscalls.md §2.13),
with the reference's key scheme:

* ``user/{uuid}``: the JSON of an :class:`~astrid_core.identity.AstridUserId`;
* ``link/{platform}/{platform_user_id}``: the JSON of a :class:`~astrid_core.identity.FrontendLink`
  (``platform`` normalized: trimmed, ASCII letters lowercased);
* ``name/{display_name}``: the user's UUID as text, a best-effort index (last writer wins).

``platform`` and ``platform_user_id`` must not be blank and must not contain ``/`` or NUL (they
are key components); ``method`` must not be blank; a display name must not contain ``/`` or NUL.
Failures raise :class:`IdentityError` whose text is the reference's ``IdentityError`` display
(``invalid input: platform must not be empty``, ``user not found: {uuid}``,
``storage error: ...``).

Created with the broker (``kernel.service(IdentityStore)``), the store bootstraps the CLI root
user (kernel.md §3.2 step 10): unless ``cli``/``local`` already resolves, it creates the user
``root`` and links ``cli``/``local`` to it with method ``system``. This is idempotent across
restarts on the same ``state.db``.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from astrid_core.identity import AstridUserId, FrontendLink, normalize_platform
from astrid_core.serde import SerdeError, dumps, format_datetime, loads, parse_uuid_strict
from astrid_core.text import strip_unicode_whitespace
from broker.kernel import KernelService
from broker.kvstore import StorageError

if TYPE_CHECKING:
    from broker.kernel import Kernel

__all__ = [
    "CLI_PLATFORM",
    "CLI_USER",
    "NAMESPACE",
    "ROOT_DISPLAY_NAME",
    "SYSTEM_METHOD",
    "IdentityError",
    "IdentityStorageError",
    "IdentityStore",
    "InvalidInput",
    "UserNotFound",
    "rfc3339_offset",
]

#: KV namespace of the identity store.
NAMESPACE: Final = "system:identity"
#: The CLI root user's link and name (created at first start).
CLI_PLATFORM: Final = "cli"
CLI_USER: Final = "local"
ROOT_DISPLAY_NAME: Final = "root"
SYSTEM_METHOD: Final = "system"

_USER_PREFIX: Final = "user/"
_LINK_PREFIX: Final = "link/"
_NAME_PREFIX: Final = "name/"


class IdentityError(ValueError):
    """An identity operation failed; ``str()`` is the reference's ``IdentityError`` text."""


class InvalidInput(IdentityError):
    """Input validation failed: ``invalid input: {reason}``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid input: {reason}")
        self.reason = reason


class UserNotFound(IdentityError):
    """The user a link should point to does not exist: ``user not found: {uuid}``."""

    def __init__(self, user_id: uuid.UUID) -> None:
        super().__init__(f"user not found: {user_id}")
        self.user_id = user_id


class IdentityStorageError(IdentityError):
    """The KV store failed or holds a record that does not decode: ``storage error: {inner}``."""

    def __init__(self, inner: str) -> None:
        super().__init__(f"storage error: {inner}")
        self.inner = inner


def rfc3339_offset(value: datetime) -> str:
    """chrono's ``to_rfc3339()``: like the serde form but with ``+00:00`` instead of ``Z``
    (``2025-01-02T03:04:05.123+00:00``; 0, 3, 6 fractional digits as needed)."""
    return format_datetime(value).removesuffix("Z") + "+00:00"


def _validate_non_empty(value: str, field: str) -> None:
    if not strip_unicode_whitespace(value):
        raise InvalidInput(f"{field} must not be empty")


def _validate_key_component(value: str, field: str) -> None:
    _validate_non_empty(value, field)
    if "/" in value or "\0" in value:
        raise InvalidInput(f"{field} must not contain '/' or null bytes")


def _user_key(user_id: uuid.UUID) -> str:
    return f"{_USER_PREFIX}{user_id}"


def _link_key(platform: str, platform_user_id: str) -> str:
    return f"{_LINK_PREFIX}{platform}/{platform_user_id}"


def _name_key(name: str) -> str:
    return f"{_NAME_PREFIX}{name}"


class IdentityStore(KernelService):
    """Users and platform links in ``state.db`` (see the module docstring).

    All operations are synchronous (one short SQLite transaction each) and run on the broker's
    loop, which serializes them.
    """

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.kv = kernel.kv
        self.bootstrap()

    # -- raw KV access ----------------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        try:
            return self.kv.get(NAMESPACE, key)
        except (StorageError, sqlite3.Error) as exc:
            raise IdentityStorageError(str(exc)) from None

    def _set(self, key: str, value: bytes) -> None:
        try:
            self.kv.set(NAMESPACE, key, value)
        except (StorageError, sqlite3.Error) as exc:
            raise IdentityStorageError(str(exc)) from None

    def _delete(self, key: str) -> None:
        try:
            self.kv.delete(NAMESPACE, key)
        except (StorageError, sqlite3.Error) as exc:
            raise IdentityStorageError(str(exc)) from None

    def _keys(self, prefix: str) -> list[str]:
        try:
            return self.kv.list_keys(NAMESPACE, prefix)
        except (StorageError, sqlite3.Error) as exc:
            raise IdentityStorageError(str(exc)) from None

    def _get_link(self, key: str) -> FrontendLink | None:
        raw = self._get(key)
        if raw is None:
            return None
        try:
            return FrontendLink.from_json(loads(raw))
        except (SerdeError, ValueError, TypeError) as exc:
            raise IdentityStorageError(f"serialization error: {exc}") from None

    # -- users ------------------------------------------------------------------------------

    def create_user(self, display_name: str | None = None) -> AstridUserId:
        """Create a user (random id, no key, created now) and return it.

        A display name is indexed under ``name/{trimmed name}`` unless it is blank; a name with
        ``/`` or NUL is rejected (``invalid input: display_name must not contain '/' or null
        bytes``). Names are not unique: the index points at the last user created with it.
        """
        user = AstridUserId.new()
        if display_name is not None:
            if "/" in display_name or "\0" in display_name:
                raise InvalidInput("display_name must not contain '/' or null bytes")
            user = user.with_display_name(display_name)
        self._set(_user_key(user.id), dumps(user.to_json()).encode())
        if display_name is not None:
            name = strip_unicode_whitespace(display_name)
            if name:
                self._set(_name_key(name), str(user.id).encode())
        return user

    def get_user(self, user_id: uuid.UUID) -> AstridUserId | None:
        raw = self._get(_user_key(user_id))
        if raw is None:
            return None
        try:
            return AstridUserId.from_json(loads(raw))
        except (SerdeError, ValueError, TypeError) as exc:
            raise IdentityStorageError(f"serialization error: {exc}") from None

    def get_user_by_name(self, name: str) -> AstridUserId | None:
        """The user last created with display name ``name`` (compared trimmed), if any."""
        raw = self._get(_name_key(strip_unicode_whitespace(name)))
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IdentityStorageError(f"invalid UUID bytes: {exc}") from None
        try:
            user_id = parse_uuid_strict(text)
        except ValueError as exc:
            raise IdentityStorageError(f"invalid UUID: {exc}") from None
        return self.get_user(user_id)

    # -- links ------------------------------------------------------------------------------

    def resolve(self, platform: str, platform_user_id: str) -> AstridUserId | None:
        """The user ``platform``/``platform_user_id`` is linked to; None without a link (or when
        the linked user no longer exists)."""
        _validate_key_component(platform, "platform")
        _validate_key_component(platform_user_id, "platform_user_id")
        link = self._get_link(_link_key(normalize_platform(platform), platform_user_id))
        return None if link is None else self.get_user(link.astrid_user_id)

    def link(
        self, platform: str, platform_user_id: str, astrid_user_id: uuid.UUID, method: str
    ) -> FrontendLink:
        """Link ``platform``/``platform_user_id`` to an existing user, replacing any link the
        pair had (upsert); ``linked_at`` is now."""
        _validate_key_component(platform, "platform")
        _validate_key_component(platform_user_id, "platform_user_id")
        _validate_non_empty(method, "method")
        if self.get_user(astrid_user_id) is None:
            raise UserNotFound(astrid_user_id)
        normalized = normalize_platform(platform)
        link = FrontendLink(
            platform=normalized,
            platform_user_id=platform_user_id,
            astrid_user_id=astrid_user_id,
            linked_at=datetime.now(UTC),
            method=method,
        )
        self._set(_link_key(normalized, platform_user_id), dumps(link.to_json()).encode())
        return link

    def unlink(self, platform: str, platform_user_id: str) -> bool:
        """Remove the pair's link; whether there was one."""
        _validate_key_component(platform, "platform")
        _validate_key_component(platform_user_id, "platform_user_id")
        key = _link_key(normalize_platform(platform), platform_user_id)
        existed = self._get(key) is not None
        if existed:
            self._delete(key)
        return existed

    def list_links(self, astrid_user_id: uuid.UUID) -> list[FrontendLink]:
        """Every link to the user, in key order (``link/{platform}/{platform_user_id}``)."""
        links = []
        for key in self._keys(_LINK_PREFIX):
            link = self._get_link(key)
            if link is not None and link.astrid_user_id == astrid_user_id:
                links.append(link)
        return links

    # -- boot -------------------------------------------------------------------------------

    def bootstrap(self) -> AstridUserId:
        """Make sure ``cli``/``local`` resolves (kernel.md §3.2 step 10); return its user.

        When it does not, a new user ``root`` is created and linked with method ``system``. As in
        the reference, only the link is checked: a ``root`` user left without its link (e.g.
        after a capsule unlinked ``cli``/``local``) is not reused.
        """
        user = self.resolve(CLI_PLATFORM, CLI_USER)
        if user is not None:
            return user
        user = self.create_user(ROOT_DISPLAY_NAME)
        self.link(CLI_PLATFORM, CLI_USER, user.id, SYSTEM_METHOD)
        return user
