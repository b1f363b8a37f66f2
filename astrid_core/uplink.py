"""Uplinks: the channels through which users reach the runtime (spec/core.md §4).

An uplink is anything that carries messages between a user and the runtime: a Discord bot, a
Telegram bridge, the CLI. It is described by an :class:`UplinkDescriptor` (who registered it,
what it can do, how it behaves) and delivers :class:`InboundMessage` values. Every type here is
wire-compatible with the reference's ``astrid_core::uplink``:

* :class:`UplinkId` is a bare UUID string on the wire;
* :class:`UplinkSource` is an externally tagged enum: ``"native"``,
  ``{"wasm":{"capsule_id":…}}`` or ``{"open_claw":{"capsule_id":…}}``, modelled as the abstract
  base :class:`UplinkSource` with the variants :class:`NativeSource`, :class:`WasmSource` and
  :class:`OpenClawSource`;
* descriptors and messages are plain objects whose fields are written in declaration order.

Trust boundary: :meth:`UplinkSource.new_wasm` / :meth:`UplinkSource.new_openclaw` validate the
capsule id; constructing a variant directly or deserializing one does not. Likewise a
descriptor's ``id`` and ``registered_at`` are meant to be assigned by the server
(:meth:`UplinkDescriptorBuilder.build`), so descriptors should not be deserialized from untrusted
input.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Self

from astrid_core.identity import normalize_platform
from astrid_core.serde import (
    Fields,
    SerdeError,
    aware_utc,
    format_datetime,
    split_tagged,
    str_enum_from_json,
    to_str_map,
    utc_now,
    uuid_from_json,
)
from astrid_core.text import (
    rust_debug_char,
    rust_debug_str,
    strip_unicode_whitespace,
    truncate_to_boundary,
)

__all__ = [
    "MAX_UPLINKS_PER_CAPSULE",
    "InboundMessage",
    "InboundMessageBuilder",
    "NativeSource",
    "OpenClawSource",
    "UplinkCapabilities",
    "UplinkDescriptor",
    "UplinkDescriptorBuilder",
    "UplinkError",
    "UplinkErrorKind",
    "UplinkId",
    "UplinkProfile",
    "UplinkSource",
    "WasmSource",
]

#: Most uplinks one capsule may register. Only a constant: the capsule host enforces it.
MAX_UPLINKS_PER_CAPSULE: Final = 32

#: Bytes of a capsule id shown by :class:`UplinkSource` Display.
_DISPLAY_ID_MAX_BYTES: Final = 64


# ---------------------------------------------------------------------------------------------
# Errors


class UplinkErrorKind(enum.Enum):
    """The variants of :class:`UplinkError`."""

    NOT_CONNECTED = enum.auto()
    SEND_FAILED = enum.auto()
    INVALID_CAPSULE_ID = enum.auto()
    UNSUPPORTED_OPERATION = enum.auto()


_ERROR_PREFIXES: Final = {
    UplinkErrorKind.SEND_FAILED: "send failed",
    UplinkErrorKind.INVALID_CAPSULE_ID: "invalid capsule id",
    UplinkErrorKind.UNSUPPORTED_OPERATION: "unsupported operation",
}


class UplinkError(Exception):
    """An uplink operation failed. Build one with the classmethods; ``kind`` tells which."""

    kind: UplinkErrorKind
    detail: str | None

    def __init__(self, kind: UplinkErrorKind, detail: str | None = None) -> None:
        if (kind is UplinkErrorKind.NOT_CONNECTED) != (detail is None):
            raise ValueError(f"UplinkError {kind.name}: only NOT_CONNECTED comes without detail")
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail

    @classmethod
    def not_connected(cls) -> Self:
        return cls(UplinkErrorKind.NOT_CONNECTED)

    @classmethod
    def send_failed(cls, detail: str) -> Self:
        return cls(UplinkErrorKind.SEND_FAILED, detail)

    @classmethod
    def invalid_capsule_id(cls, detail: str) -> Self:
        return cls(UplinkErrorKind.INVALID_CAPSULE_ID, detail)

    @classmethod
    def unsupported_operation(cls, detail: str) -> Self:
        return cls(UplinkErrorKind.UNSUPPORTED_OPERATION, detail)

    def __str__(self) -> str:
        if self.detail is None:
            return "uplink not connected"
        return f"{_ERROR_PREFIXES[self.kind]}: {self.detail}"

    def __repr__(self) -> str:
        return f"UplinkError({self.kind.name}, {self.detail!r})"


# ---------------------------------------------------------------------------------------------
# Identifiers and flags


@dataclass(frozen=True, slots=True, repr=False)
class UplinkId:
    """A unique uplink id: a random UUID, shown and serialized bare (no prefix)."""

    _uuid: uuid.UUID

    @classmethod
    def new(cls) -> Self:
        return cls(uuid.uuid4())

    @classmethod
    def default(cls) -> Self:
        """A fresh random id, like :meth:`new` (there is no sentinel id)."""
        return cls.new()

    @classmethod
    def from_uuid(cls, value: uuid.UUID) -> Self:
        return cls(value)

    def as_uuid(self) -> uuid.UUID:
        return self._uuid

    def __str__(self) -> str:
        return str(self._uuid)

    def __repr__(self) -> str:
        return f"UplinkId('{self._uuid}')"

    def to_json(self) -> Any:
        return str(self._uuid)

    @classmethod
    def from_json(cls, value: Any, what: str = "UplinkId") -> Self:
        return cls(uuid_from_json(value, what))


@dataclass(frozen=True, slots=True)
class UplinkCapabilities:
    """What an uplink can do. Every flag defaults to ``False``; all seven are required in JSON."""

    can_receive: bool = False
    can_send: bool = False
    can_approve: bool = False
    can_elicit: bool = False
    supports_rich_media: bool = False
    supports_threads: bool = False
    supports_buttons: bool = False

    @classmethod
    def default(cls) -> Self:
        return cls()

    @classmethod
    def full(cls) -> Self:
        return cls(*([True] * len(dataclasses.fields(cls))))

    @classmethod
    def notify_only(cls) -> Self:
        return cls(can_send=True)

    @classmethod
    def receive_only(cls) -> Self:
        return cls(can_receive=True)

    def to_json(self) -> Any:
        return {flag.name: getattr(self, flag.name) for flag in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, value: Any, what: str = "UplinkCapabilities") -> Self:
        fields = Fields(value, what)
        return cls(*(fields.boolean(flag.name) for flag in dataclasses.fields(cls)))


class UplinkProfile(enum.StrEnum):
    """How an uplink behaves; the value is both the JSON string and the Display form."""

    CHAT = "chat"
    INTERACTIVE = "interactive"
    NOTIFY = "notify"
    BRIDGE = "bridge"

    @classmethod
    def parse(cls, text: str) -> UplinkProfile:
        """Parse a profile name case-insensitively, ignoring surrounding whitespace.

        The text is Unicode-lowercased first and trimmed second; an unknown name raises
        ``ValueError("unknown uplink profile: <lowercased trimmed text>")``.
        """
        name = strip_unicode_whitespace(text.lower())
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown uplink profile: {name}") from None

    def to_json(self) -> Any:
        return self.value

    @classmethod
    def from_json(cls, value: Any, what: str = "UplinkProfile") -> Self:
        return str_enum_from_json(cls, value, what)


# ---------------------------------------------------------------------------------------------
# Sources


class UplinkSource(abc.ABC):
    """Where an uplink comes from: :class:`NativeSource`, :class:`WasmSource` or
    :class:`OpenClawSource`.

    Use :meth:`new_wasm` / :meth:`new_openclaw` for capsule ids that come from outside; building
    a variant directly (or deserializing one) skips validation and is for trusted data only.
    """

    __slots__ = ()

    @staticmethod
    def native() -> NativeSource:
        return NativeSource()

    @staticmethod
    def new_wasm(capsule_id: str) -> WasmSource:
        """A WASM capsule source, after validating ``capsule_id``; raises :class:`UplinkError`."""
        _validate_capsule_id(capsule_id)
        return WasmSource(capsule_id)

    @staticmethod
    def new_openclaw(capsule_id: str) -> OpenClawSource:
        """An OpenClaw source, after validating ``capsule_id``; raises :class:`UplinkError`."""
        _validate_capsule_id(capsule_id)
        return OpenClawSource(capsule_id)

    @abc.abstractmethod
    def to_json(self) -> Any: ...

    @classmethod
    def from_json(cls, value: Any, what: str = "UplinkSource") -> Self:
        """Read any variant (called on a variant class, only that variant is accepted)."""
        tag, content = split_tagged(value, what, _SOURCE_TAGS)
        source: UplinkSource
        if tag == "native":
            _expect_unit(content, what, tag)
            source = NativeSource()
        else:
            capsule_id = Fields(content, f"{what}.{tag}").string("capsule_id")
            source = WasmSource(capsule_id) if tag == "wasm" else OpenClawSource(capsule_id)
        if not isinstance(source, cls):
            raise SerdeError(f"{what}: expected {cls.__name__}, got variant `{tag}`")
        return source


@dataclass(frozen=True, slots=True)
class NativeSource(UplinkSource):
    """An uplink built into the runtime (CLI, Discord, …). JSON ``"native"``."""

    def __str__(self) -> str:
        return "native"

    def to_json(self) -> Any:
        return "native"


@dataclass(frozen=True, slots=True)
class WasmSource(UplinkSource):
    """An uplink registered by a WASM capsule. JSON ``{"wasm":{"capsule_id":…}}``; ``str()``
    shows at most 64 bytes of the id."""

    capsule_id: str

    def __str__(self) -> str:
        return f"wasm({truncate_to_boundary(self.capsule_id, _DISPLAY_ID_MAX_BYTES)})"

    def to_json(self) -> Any:
        return {"wasm": {"capsule_id": self.capsule_id}}


@dataclass(frozen=True, slots=True)
class OpenClawSource(UplinkSource):
    """An uplink registered by an OpenClaw bridge. JSON ``{"open_claw":{"capsule_id":…}}``;
    ``str()`` is ``openclaw(<id>)`` with at most 64 bytes of the id."""

    capsule_id: str

    def __str__(self) -> str:
        return f"openclaw({truncate_to_boundary(self.capsule_id, _DISPLAY_ID_MAX_BYTES)})"

    def to_json(self) -> Any:
        return {"open_claw": {"capsule_id": self.capsule_id}}


_SOURCE_TAGS: Final = ("native", "wasm", "open_claw")
_CAPSULE_ID_FIRST: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_CAPSULE_ID_CHARS: Final = _CAPSULE_ID_FIRST | {"-"}


def _validate_capsule_id(capsule_id: str) -> None:
    """The reference's capsule-id rules, checked in its order with its messages."""
    if not capsule_id:
        raise UplinkError.invalid_capsule_id("capsule_id must not be empty")
    if capsule_id[0] not in _CAPSULE_ID_FIRST:
        raise UplinkError.invalid_capsule_id(
            f"capsule_id must start with [a-z0-9], got {rust_debug_str(capsule_id)}"
        )
    if capsule_id.endswith("-"):
        raise UplinkError.invalid_capsule_id(
            f"capsule_id must not end with a hyphen, got {rust_debug_str(capsule_id)}"
        )
    for char in capsule_id:
        if char not in _CAPSULE_ID_CHARS:
            raise UplinkError.invalid_capsule_id(
                f"capsule_id contains invalid character {rust_debug_char(char)}"
            )


# ---------------------------------------------------------------------------------------------
# Externally tagged enums


def _expect_unit(content: Any, what: str, tag: str) -> None:
    """A unit variant: ``"tag"`` or, as serde also accepts, ``{"tag":null}``."""
    if content is not None:
        raise SerdeError(f"{what}: variant `{tag}` takes no data")


# ---------------------------------------------------------------------------------------------
# Descriptors


@dataclass(frozen=True, slots=True)
class UplinkDescriptor:
    """A registered uplink. Build one with :meth:`builder`; ``id`` and ``registered_at`` are
    server-assigned."""

    id: UplinkId
    name: str
    platform: str
    source: UplinkSource
    capabilities: UplinkCapabilities
    profile: UplinkProfile
    registered_at: datetime
    metadata: dict[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "registered_at", aware_utc(self.registered_at, "UplinkDescriptor.registered_at")
        )

    @staticmethod
    def builder(name: str, platform: str) -> UplinkDescriptorBuilder:
        return UplinkDescriptorBuilder(name, platform)

    def to_json(self) -> Any:
        return {
            "id": self.id.to_json(),
            "name": self.name,
            "platform": self.platform,
            "source": self.source.to_json(),
            "capabilities": self.capabilities.to_json(),
            "profile": self.profile.to_json(),
            "registered_at": format_datetime(self.registered_at),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "UplinkDescriptor") -> Self:
        """Read a descriptor as is: the platform is not re-normalized, nothing is validated."""
        fields = Fields(value, what)
        return cls(
            id=fields.get("id", UplinkId.from_json),
            name=fields.string("name"),
            platform=fields.string("platform"),
            source=fields.get("source", UplinkSource.from_json),
            capabilities=fields.get("capabilities", UplinkCapabilities.from_json),
            profile=fields.get("profile", UplinkProfile.from_json),
            registered_at=fields.get_datetime("registered_at"),
            metadata=fields.get("metadata", to_str_map),
        )


class UplinkDescriptorBuilder:
    """Builds an :class:`UplinkDescriptor`: native source, no capabilities, chat profile and no
    metadata unless set."""

    __slots__ = ("_capabilities", "_metadata", "_name", "_platform", "_profile", "_source")

    def __init__(self, name: str, platform: str) -> None:
        self._name = name
        self._platform = normalize_platform(platform)
        self._source: UplinkSource = NativeSource()
        self._capabilities = UplinkCapabilities()
        self._profile = UplinkProfile.CHAT
        self._metadata: dict[str, str] = {}

    def source(self, source: UplinkSource) -> Self:
        self._source = source
        return self

    def capabilities(self, capabilities: UplinkCapabilities) -> Self:
        self._capabilities = capabilities
        return self

    def profile(self, profile: UplinkProfile) -> Self:
        self._profile = profile
        return self

    def metadata(self, key: str, value: str) -> Self:
        """Insert one metadata entry, replacing any previous value of ``key``."""
        self._metadata[key] = value
        return self

    def build(self) -> UplinkDescriptor:
        """The descriptor, with a fresh random id and ``registered_at`` set to now."""
        return UplinkDescriptor(
            id=UplinkId.new(),
            name=self._name,
            platform=self._platform,
            source=self._source,
            capabilities=self._capabilities,
            profile=self._profile,
            registered_at=utc_now(),
            metadata=dict(self._metadata),
        )


# ---------------------------------------------------------------------------------------------
# Inbound messages


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a user sent through an uplink. ``context`` holds any JSON value."""

    uplink_id: UplinkId
    platform: str
    platform_user_id: str
    content: str
    context: Any
    thread_id: str | None
    timestamp: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp", aware_utc(self.timestamp, "InboundMessage.timestamp"))

    @staticmethod
    def builder(
        uplink_id: UplinkId, platform: str, platform_user_id: str, content: str
    ) -> InboundMessageBuilder:
        return InboundMessageBuilder(uplink_id, platform, platform_user_id, content)

    def to_json(self) -> Any:
        return {
            "uplink_id": self.uplink_id.to_json(),
            "platform": self.platform,
            "platform_user_id": self.platform_user_id,
            "content": self.content,
            "context": self.context,
            "thread_id": self.thread_id,
            "timestamp": format_datetime(self.timestamp),
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "InboundMessage") -> Self:
        """Read a message; the ``context`` key is required (``null`` allowed)."""
        fields = Fields(value, what)
        return cls(
            uplink_id=fields.get("uplink_id", UplinkId.from_json),
            platform=fields.string("platform"),
            platform_user_id=fields.string("platform_user_id"),
            content=fields.string("content"),
            context=fields.raw("context"),
            thread_id=fields.opt_string("thread_id"),
            timestamp=fields.get_datetime("timestamp"),
        )


class InboundMessageBuilder:
    """Builds an :class:`InboundMessage`: normalized platform, ``null`` context, no thread and a
    timestamp taken when the builder is created, unless set."""

    __slots__ = (
        "_content",
        "_context",
        "_platform",
        "_platform_user_id",
        "_thread_id",
        "_timestamp",
        "_uplink_id",
    )

    def __init__(
        self, uplink_id: UplinkId, platform: str, platform_user_id: str, content: str
    ) -> None:
        self._uplink_id = uplink_id
        self._platform = normalize_platform(platform)
        self._platform_user_id = platform_user_id
        self._content = content
        self._context: Any = None
        self._thread_id: str | None = None
        self._timestamp = utc_now()

    def context(self, context: Any) -> Self:
        self._context = context
        return self

    def thread_id(self, thread_id: str | None) -> Self:
        self._thread_id = thread_id
        return self

    def timestamp(self, timestamp: datetime) -> Self:
        self._timestamp = timestamp
        return self

    def build(self) -> InboundMessage:
        return InboundMessage(
            uplink_id=self._uplink_id,
            platform=self._platform,
            platform_user_id=self._platform_user_id,
            content=self._content,
            context=self._context,
            thread_id=self._thread_id,
            timestamp=self._timestamp,
        )
