"""Identifiers and approval primitives shared by every component (spec/core.md §2).

Wire forms (see :mod:`astrid_core.serde` for the shared conventions):

* :class:`AgentId`, :class:`SessionId`, :class:`TokenId`: the bare lowercase hyphenated UUID;
  their ``agent:``/``session:``/``token:`` prefixes exist only in ``str()``.
* :class:`Timestamp`: an RFC 3339 string with ``Z`` (0, 3 or 6 fractional digits); its ``str()``
  is the seconds-only ``YYYY-MM-DDTHH:MM:SSZ``.
* :class:`Permission`, :class:`RiskLevel`, :class:`ApprovalOption`: their snake_case value.
* :class:`ApprovalRequest`, :class:`ApprovalDecision`: objects with the fields in declaration
  order, ``null`` for an absent option.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self
from uuid import UUID, uuid4

from astrid_core.serde import (
    NIL_UUID,
    Fields,
    aware_utc,
    datetime_from_json,
    format_datetime,
    str_enum_from_json,
    to_list,
    utc_now,
    uuid_from_json,
)

__all__ = [
    "AgentId",
    "ApprovalDecision",
    "ApprovalOption",
    "ApprovalRequest",
    "Permission",
    "RiskLevel",
    "SessionId",
    "Timestamp",
    "TokenId",
]


# ---------------------------------------------------------------------------------------------
# UUID-backed identifiers


@dataclass(frozen=True, slots=True)
class _UuidId:
    """A UUID newtype: equal and hashable, deliberately unordered, JSON = the bare UUID."""

    _PREFIX: ClassVar[str] = ""

    uuid: UUID

    @classmethod
    def new(cls) -> Self:
        """A fresh random (v4) identifier."""
        return cls(uuid4())

    @classmethod
    def default(cls) -> Self:
        """Same as :meth:`new`: the default identifier is random, not nil."""
        return cls.new()

    @classmethod
    def from_uuid(cls, value: UUID) -> Self:
        return cls(value)

    def __str__(self) -> str:
        return f"{self._PREFIX}:{self.uuid}"

    def to_json(self) -> str:
        return str(self.uuid)

    @classmethod
    def from_json(cls, value: Any, what: str = "") -> Self:
        return cls(uuid_from_json(value, what or cls.__name__))


@dataclass(frozen=True, slots=True)
class AgentId(_UuidId):
    """Identifies an agent; ``str()`` is ``agent:<uuid>``."""

    _PREFIX: ClassVar[str] = "agent"


@dataclass(frozen=True, slots=True)
class SessionId(_UuidId):
    """Identifies a session; ``str()`` is ``session:<uuid>``.

    :attr:`SYSTEM` (the nil UUID) is the ``source_id`` of the kernel's internal messages.
    """

    _PREFIX: ClassVar[str] = "session"
    SYSTEM: ClassVar[SessionId]


SessionId.SYSTEM = SessionId(NIL_UUID)


@dataclass(frozen=True, slots=True)
class TokenId(_UuidId):
    """Identifies a capability token; ``str()`` is ``token:<uuid>``."""

    _PREFIX: ClassVar[str] = "token"


# ---------------------------------------------------------------------------------------------
# Timestamp


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """A UTC instant: ordered, hashable. Constructed from any aware datetime (converted to UTC).

    JSON is the RFC 3339 form with sub-second digits; ``str()`` drops them:
    ``2025-01-02T03:04:05Z``.
    """

    value: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", aware_utc(self.value, "Timestamp"))

    @classmethod
    def now(cls) -> Self:
        return cls(utc_now())

    @classmethod
    def default(cls) -> Self:
        """Same as :meth:`now`."""
        return cls.now()

    @classmethod
    def from_datetime(cls, value: datetime) -> Self:
        return cls(value)

    def into_inner(self) -> datetime:
        return self.value

    def is_past(self) -> bool:
        """Strictly earlier than now."""
        return self.value < utc_now()

    def is_future(self) -> bool:
        """Strictly later than now."""
        return self.value > utc_now()

    def __str__(self) -> str:
        # ``%Y`` is not zero-padded below year 1000 on every platform: format it explicitly.
        return f"{self.value.year:04d}-{self.value:%m-%dT%H:%M:%S}Z"

    def to_json(self) -> str:
        return format_datetime(self.value)

    @classmethod
    def from_json(cls, value: Any, what: str = "Timestamp") -> Self:
        return cls(datetime_from_json(value, what))


# ---------------------------------------------------------------------------------------------
# Enums


class Permission(enum.StrEnum):
    """An operation on a resource; ``str()`` and JSON are the lowercase name. Not ordered."""

    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"
    DELETE = "delete"
    INVOKE = "invoke"
    LIST = "list"
    CREATE = "create"

    def to_json(self) -> str:
        return self.value

    @classmethod
    def from_json(cls, value: Any, what: str = "Permission") -> Self:
        return str_enum_from_json(cls, value, what)


class RiskLevel(enum.StrEnum):
    """How dangerous an operation is; totally ordered Low < Medium < High < Critical.

    The comparison operators follow declaration order, not the alphabetical order of the
    values that :class:`str` would use. Comparing with anything but a :class:`RiskLevel`
    (plain strings included) raises :class:`TypeError`.
    """

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Position in declaration order: 0 for LOW up to 3 for CRITICAL."""
        return _RISK_RANKS[self]

    @staticmethod
    def _rank_of(other: object) -> int:
        if not isinstance(other, RiskLevel):
            raise TypeError(
                f"RiskLevel can only be ordered against RiskLevel, not {type(other).__name__}"
            )
        return other.rank

    def __lt__(self, other: object) -> bool:
        return self.rank < self._rank_of(other)

    def __le__(self, other: object) -> bool:
        return self.rank <= self._rank_of(other)

    def __gt__(self, other: object) -> bool:
        return self.rank > self._rank_of(other)

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._rank_of(other)

    def requires_approval(self) -> bool:
        """True for HIGH and CRITICAL."""
        return self >= RiskLevel.HIGH

    def requires_dm_verification(self) -> bool:
        """True for CRITICAL only."""
        return self is RiskLevel.CRITICAL

    def to_json(self) -> str:
        return self.value

    @classmethod
    def from_json(cls, value: Any, what: str = "RiskLevel") -> Self:
        return str_enum_from_json(cls, value, what)


_RISK_RANKS: dict[RiskLevel, int] = {level: rank for rank, level in enumerate(RiskLevel)}


class ApprovalOption(enum.StrEnum):
    """The five answers to an approval request.

    The value is the JSON form (``allow_once``); ``str()`` and ``format()`` give the display
    text (``Allow Once``, also available as :meth:`display`), unlike a plain StrEnum, because
    Display and serialization differ in the reference.
    """

    ALLOW_ONCE = "allow_once"
    ALLOW_SESSION = "allow_session"
    #: Persisted in the workspace's state.db.
    ALLOW_WORKSPACE = "allow_workspace"
    #: Mints a capability token.
    ALLOW_ALWAYS = "allow_always"
    DENY = "deny"

    def display(self) -> str:
        return _APPROVAL_OPTION_DISPLAY[self]

    def __str__(self) -> str:
        return self.display()

    def __format__(self, format_spec: str) -> str:
        return format(self.display(), format_spec)

    def to_json(self) -> str:
        return self.value

    @classmethod
    def from_json(cls, value: Any, what: str = "ApprovalOption") -> Self:
        return str_enum_from_json(cls, value, what)


_APPROVAL_OPTION_DISPLAY: dict[ApprovalOption, str] = {
    ApprovalOption.ALLOW_ONCE: "Allow Once",
    ApprovalOption.ALLOW_SESSION: "Allow Session",
    ApprovalOption.ALLOW_WORKSPACE: "Allow Workspace",
    ApprovalOption.ALLOW_ALWAYS: "Allow Always",
    ApprovalOption.DENY: "Deny",
}

#: Every tier in the order :meth:`ApprovalRequest.new` offers them.
_ALL_OPTIONS: tuple[ApprovalOption, ...] = tuple(ApprovalOption)


# ---------------------------------------------------------------------------------------------
# Approval request and decision


def _options_from_json(value: Any, what: str) -> tuple[ApprovalOption, ...]:
    return tuple(to_list(value, what, ApprovalOption.from_json))


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A question put to the user before a risky operation.

    The reference type has no equality; the Python one compares all fields (useful in tests).
    ``options`` is a tuple (immutable); JSON writes it as an array.
    """

    request_id: UUID
    operation: str
    description: str
    risk_level: RiskLevel = RiskLevel.MEDIUM
    resource: str | None = None
    options: tuple[ApprovalOption, ...] = _ALL_OPTIONS

    @classmethod
    def new(cls, operation: str, description: str) -> Self:
        """A random request id, MEDIUM risk, no resource, all five options."""
        return cls(uuid4(), operation, description)

    def with_risk_level(self, risk_level: RiskLevel) -> Self:
        return dataclasses.replace(self, risk_level=risk_level)

    def with_resource(self, resource: str) -> Self:
        return dataclasses.replace(self, resource=resource)

    def with_options(self, options: Iterable[ApprovalOption]) -> Self:
        """Replace the whole list of offered options."""
        return dataclasses.replace(self, options=tuple(options))

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": str(self.request_id),
            "operation": self.operation,
            "description": self.description,
            "risk_level": self.risk_level.to_json(),
            "resource": self.resource,
            "options": [option.to_json() for option in self.options],
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "ApprovalRequest") -> Self:
        fields = Fields(value, what)
        return cls(
            request_id=fields.get_uuid("request_id"),
            operation=fields.string("operation"),
            description=fields.string("description"),
            risk_level=fields.get("risk_level", RiskLevel.from_json),
            resource=fields.opt_string("resource"),
            options=fields.get("options", _options_from_json),
        )


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """The user's answer to an :class:`ApprovalRequest`.

    Nothing checks that ``decision`` was among the options offered. ``decided_at`` must be
    timezone-aware and is stored in UTC.
    """

    request_id: UUID
    decision: ApprovalOption
    decided_at: datetime
    reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "decided_at", aware_utc(self.decided_at, "ApprovalDecision.decided_at")
        )

    @classmethod
    def new(cls, request_id: UUID, decision: ApprovalOption) -> Self:
        """Decided now, without a reason."""
        return cls(request_id, decision, utc_now())

    def with_reason(self, reason: str) -> Self:
        return dataclasses.replace(self, reason=reason)

    def is_approved(self) -> bool:
        """True for every option except DENY."""
        return self.decision is not ApprovalOption.DENY

    def creates_capability(self) -> bool:
        """True only for ALLOW_ALWAYS: the security interceptor then mints a token."""
        return self.decision is ApprovalOption.ALLOW_ALWAYS

    def creates_workspace_allowance(self) -> bool:
        """True only for ALLOW_WORKSPACE."""
        return self.decision is ApprovalOption.ALLOW_WORKSPACE

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": str(self.request_id),
            "decision": self.decision.to_json(),
            "decided_at": format_datetime(self.decided_at),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "ApprovalDecision") -> Self:
        fields = Fields(value, what)
        return cls(
            request_id=fields.get_uuid("request_id"),
            decision=fields.get("decision", ApprovalOption.from_json),
            decided_at=fields.get_datetime("decided_at"),
            reason=fields.opt_string("reason"),
        )
