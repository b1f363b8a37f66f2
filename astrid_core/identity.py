"""Users and their links to frontend platforms (spec/core.md §3).

Wire forms: :class:`AstridUserId` is an object whose ``public_key`` is ``null`` or the standard
padded base64 of exactly 32 bytes (and, unlike every other optional field, must be present on
input); :class:`FrontendLink` is an object whose fields are all required.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self
from uuid import UUID, uuid4

from astrid_core.serde import (
    Fields,
    SerdeError,
    aware_utc,
    base64_decode_strict,
    base64_encode,
    format_datetime,
    to_str,
    utc_now,
)
from astrid_core.text import strip_unicode_whitespace

__all__ = ["PUBLIC_KEY_LEN", "AstridUserId", "FrontendLink", "normalize_platform"]

#: Length in bytes of :attr:`AstridUserId.public_key` (an ed25519 public key).
PUBLIC_KEY_LEN = 32

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_platform(name: str) -> str:
    """Canonical platform name: Unicode-whitespace trimmed, ASCII letters lowercased.

    Non-ASCII letters are left alone (``"ÄBC"`` gives ``"Äbc"``), unlike :meth:`str.lower`.
    Nothing is truncated.
    """
    return strip_unicode_whitespace(name).translate(_ASCII_LOWER)


def _public_key_from_json(value: Any, what: str) -> bytes:
    text = to_str(value, what)
    try:
        key = base64_decode_strict(text)
    except ValueError as exc:
        raise SerdeError(f"{what}: {exc}") from None
    if len(key) != PUBLIC_KEY_LEN:
        raise SerdeError(f"{what}: public key must be {PUBLIC_KEY_LEN} bytes")
    return key


@dataclass(frozen=True, slots=True)
class AstridUserId:
    """An Astrid user (a struct, despite the name); equality and hash cover every field.

    ``public_key`` is ``None`` or exactly 32 bytes; ``created_at`` must be timezone-aware and
    is stored in UTC. ``str()`` shows the first 8 characters of the id: ``user:3f2a9c1e``, or
    ``Alice(3f2a9c1e)`` with a display name.
    """

    id: UUID
    public_key: bytes | None
    display_name: str | None
    created_at: datetime

    def __post_init__(self) -> None:
        if self.public_key is not None:
            if not isinstance(self.public_key, bytes):
                raise TypeError(
                    f"AstridUserId.public_key must be bytes, got {type(self.public_key).__name__}"
                )
            if len(self.public_key) != PUBLIC_KEY_LEN:
                raise ValueError(f"public key must be {PUBLIC_KEY_LEN} bytes")
        object.__setattr__(
            self, "created_at", aware_utc(self.created_at, "AstridUserId.created_at")
        )

    @classmethod
    def new(cls) -> Self:
        """A random id, no key, no display name, created now."""
        return cls(uuid4(), None, None, utc_now())

    @classmethod
    def default(cls) -> Self:
        """Same as :meth:`new`."""
        return cls.new()

    def with_display_name(self, name: str) -> Self:
        return dataclasses.replace(self, display_name=name)

    def __str__(self) -> str:
        short = str(self.id)[:8]
        if self.display_name is None:
            return f"user:{short}"
        return f"{self.display_name}({short})"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "public_key": None if self.public_key is None else base64_encode(self.public_key),
            "display_name": self.display_name,
            "created_at": format_datetime(self.created_at),
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "AstridUserId") -> Self:
        fields = Fields(value, what)
        raw_key = fields.raw("public_key")  # required, even though it may be null
        return cls(
            id=fields.get_uuid("id"),
            public_key=None
            if raw_key is None
            else _public_key_from_json(raw_key, f"{what}.public_key"),
            display_name=fields.opt_string("display_name"),
            created_at=fields.get_datetime("created_at"),
        )


@dataclass(frozen=True, slots=True)
class FrontendLink:
    """Links a user of a frontend platform to an :class:`AstridUserId`.

    ``platform`` is expected to be normalized already (:func:`normalize_platform`); it is not
    re-normalized here. ``method`` records how the link was made (e.g. ``"admin"``,
    ``"system"``). Storage keys links as ``link/{platform}/{platform_user_id}``.
    """

    platform: str
    platform_user_id: str
    astrid_user_id: UUID
    linked_at: datetime
    method: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "linked_at", aware_utc(self.linked_at, "FrontendLink.linked_at"))

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "platform_user_id": self.platform_user_id,
            "astrid_user_id": str(self.astrid_user_id),
            "linked_at": format_datetime(self.linked_at),
            "method": self.method,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "FrontendLink") -> Self:
        fields = Fields(value, what)
        return cls(
            platform=fields.string("platform"),
            platform_user_id=fields.string("platform_user_id"),
            astrid_user_id=fields.get_uuid("astrid_user_id"),
            linked_at=fields.get_datetime("linked_at"),
            method=fields.string("method"),
        )
