"""The capsule ABI vocabulary (spec/core.md §6) and the guest-export invocation payload.

The eight types of the WIT package ``astrid:capsule@0.1.0`` cross the WASM boundary as
serde_json text. Their JSON keys are the snake_case field names (not WIT's kebab-case), in the
order of the dataclass fields below; ``Option`` fields are written as ``null`` and read as
``None`` when missing. Several string fields hold JSON *inside a string* (``data``,
``arguments``, ``content``, ``input_schema``); they are carried verbatim and never parsed here.

:class:`GuestInvocation` is the input the kernel hands to the guest exports
``astrid_tool_call``, ``astrid_hook_trigger`` and ``astrid_cron_trigger`` (spec/syscalls.md §8,
§2.9): ``{"name": ..., "arguments": [byte, ...]}``, the arguments being JSON-encoded bytes
written as an array of numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar

from astrid_core.serde import Fields, SerdeError, dumps, loads, to_str, to_uint

__all__ = [
    "CapsuleAbiContext",
    "CapsuleAbiResult",
    "GuestInvocation",
    "HttpResponse",
    "KeyValuePair",
    "LogLevel",
    "ToolDefinition",
    "ToolInput",
    "ToolOutput",
]

_T = TypeVar("_T")

_MAX_U8: Final = 0xFF
_MAX_U16: Final = 0xFFFF


def _to_list(value: Any, what: str, item: Callable[[Any, str], _T]) -> list[_T]:
    """A JSON array whose elements are each converted by ``item`` (named ``what[index]``)."""
    if not isinstance(value, list):
        raise SerdeError(f"{what} must be an array")
    return [item(element, f"{what}[{index}]") for index, element in enumerate(value)]


def _to_byte(value: Any, what: str) -> int:
    return to_uint(value, what, _MAX_U8)


# ---------------------------------------------------------------------------------------------
# LogLevel


class LogLevel(enum.StrEnum):
    """WIT ``enum log-level``; on the wire exactly ``"trace"`` … ``"error"``.

    :meth:`from_json` is strict (``"warning"`` is rejected); the lenient mapping that the
    ``astrid_log`` host function applies to guest-supplied names is :meth:`from_guest`.
    """

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"

    @property
    def record_name(self) -> str:
        """The upper-case name written in log files: ``"TRACE"``, …, ``"WARN"``, ``"ERROR"``."""
        return self.value.upper()

    @classmethod
    def from_guest(cls, name: str) -> LogLevel:
        """Map an ``astrid_log`` level name (spec/syscalls.md §2.5).

        Case-insensitive (ASCII folding); ``warning`` means warn, ``err`` means error, and any
        other name, including the empty string, means info.
        """
        if not name.isascii():
            return cls.INFO
        return _GUEST_NAMES.get(name.lower(), cls.INFO)

    def to_json(self) -> Any:
        return self.value

    @classmethod
    def from_json(cls, value: Any, what: str = "LogLevel") -> Self:
        text = to_str(value, what)
        try:
            return cls(text)
        except ValueError:
            expected = ", ".join(level.value for level in cls)
            raise SerdeError(
                f"{what}: unknown variant {text!r}, expected one of {expected}"
            ) from None


_GUEST_NAMES: Final[dict[str, LogLevel]] = {
    "trace": LogLevel.TRACE,
    "debug": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "warn": LogLevel.WARN,
    "warning": LogLevel.WARN,
    "error": LogLevel.ERROR,
    "err": LogLevel.ERROR,
}


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class KeyValuePair:
    """WIT ``record key-value-pair``: ``{"key","value"}`` (an HTTP header, for instance)."""

    key: str
    value: str

    def to_json(self) -> Any:
        return {"key": self.key, "value": self.value}

    @classmethod
    def from_json(cls, value: Any, what: str = "KeyValuePair") -> Self:
        fields = Fields(value, what)
        return cls(key=fields.string("key"), value=fields.string("value"))


@dataclass(frozen=True, slots=True)
class CapsuleAbiContext:
    """WIT ``record capsule-context``: ``{"event","session_id","user_id","data"}``.

    ``event`` looks like ``"pre-tool-call"``; ``session_id`` is any string (``""`` when there is
    no session); ``data`` is JSON inside a string, or ``None`` for an empty payload.
    """

    event: str
    session_id: str
    user_id: str | None = None
    data: str | None = None

    def to_json(self) -> Any:
        return {
            "event": self.event,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "CapsuleAbiContext") -> Self:
        fields = Fields(value, what)
        return cls(
            event=fields.string("event"),
            session_id=fields.string("session_id"),
            user_id=fields.opt_string("user_id"),
            data=fields.opt_string("data"),
        )


@dataclass(frozen=True, slots=True)
class CapsuleAbiResult:
    """WIT ``record capsule-result``: ``{"action","data"}``.

    ``action`` is free text on the wire; the hooks handler recognizes ``continue``, ``block``,
    ``ask`` and ``modify`` (anything else means continue). ``data`` is JSON inside a string.
    """

    action: str
    data: str | None = None

    def to_json(self) -> Any:
        return {"action": self.action, "data": self.data}

    @classmethod
    def from_json(cls, value: Any, what: str = "CapsuleAbiResult") -> Self:
        fields = Fields(value, what)
        return cls(action=fields.string("action"), data=fields.opt_string("data"))


@dataclass(frozen=True, slots=True)
class ToolInput:
    """WIT ``record tool-input``: ``{"name","arguments"}``; ``arguments`` is JSON in a string."""

    name: str
    arguments: str

    def to_json(self) -> Any:
        return {"name": self.name, "arguments": self.arguments}

    @classmethod
    def from_json(cls, value: Any, what: str = "ToolInput") -> Self:
        fields = Fields(value, what)
        return cls(name=fields.string("name"), arguments=fields.string("arguments"))


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """WIT ``record tool-output``: ``{"content","is_error"}``; both fields are required."""

    content: str
    is_error: bool

    def to_json(self) -> Any:
        return {"content": self.content, "is_error": self.is_error}

    @classmethod
    def from_json(cls, value: Any, what: str = "ToolOutput") -> Self:
        fields = Fields(value, what)
        return cls(content=fields.string("content"), is_error=fields.boolean("is_error"))


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """WIT ``record tool-definition``: ``{"name","description","input_schema"}``.

    ``input_schema`` is a JSON Schema document inside a string.
    """

    name: str
    description: str
    input_schema: str

    def to_json(self) -> Any:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "ToolDefinition") -> Self:
        fields = Fields(value, what)
        return cls(
            name=fields.string("name"),
            description=fields.string("description"),
            input_schema=fields.string("input_schema"),
        )


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """WIT ``record http-response``: ``{"status","headers","body"}``.

    ``status`` is a u16 (0..65535, checked on construction); ``headers`` is an ordered list of
    :class:`KeyValuePair` (repeated names allowed), stored as a tuple.
    """

    status: int
    headers: tuple[KeyValuePair, ...] = ()
    body: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise TypeError(f"HttpResponse.status must be an int, got {self.status!r}")
        if not 0 <= self.status <= _MAX_U16:
            raise ValueError(f"HttpResponse.status must be in 0..65535, got {self.status}")
        if not isinstance(self.headers, tuple):
            object.__setattr__(self, "headers", tuple(self.headers))

    def to_json(self) -> Any:
        return {
            "status": self.status,
            "headers": [header.to_json() for header in self.headers],
            "body": self.body,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "HttpResponse") -> Self:
        fields = Fields(value, what)
        return cls(
            status=fields.uint("status", _MAX_U16),
            headers=tuple(
                fields.get(
                    "headers",
                    lambda raw, where: _to_list(raw, where, KeyValuePair.from_json),
                )
            ),
            body=fields.string("body"),
        )


# ---------------------------------------------------------------------------------------------
# Guest invocations


@dataclass(frozen=True, slots=True)
class GuestInvocation:
    """The input of ``astrid_tool_call``, ``astrid_hook_trigger`` and ``astrid_cron_trigger``.

    On the wire: ``{"name": name, "arguments": [byte, ...]}``, where ``arguments`` are normally
    the UTF-8 bytes of a JSON document (:meth:`for_json_arguments`) but may be any bytes.
    """

    name: str
    arguments: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, bytes):
            object.__setattr__(self, "arguments", bytes(self.arguments))

    @classmethod
    def for_json_arguments(cls, name: str, value: Any) -> Self:
        """An invocation whose arguments are ``value`` as compact JSON (raw UTF-8).

        Raises whatever :func:`astrid_core.serde.dumps` raises for a value that is not JSON
        (``TypeError``, or ``ValueError`` for NaN/infinity).
        """
        return cls(name=name, arguments=dumps(value).encode("utf-8"))

    def to_json(self) -> Any:
        return {"name": self.name, "arguments": list(self.arguments)}

    def encode(self) -> bytes:
        """Compact JSON bytes, as handed to the guest export."""
        return dumps(self.to_json()).encode("utf-8")

    @classmethod
    def from_json(cls, value: Any, what: str = "GuestInvocation") -> Self:
        fields = Fields(value, what)
        return cls(
            name=fields.string("name"),
            arguments=bytes(
                fields.get("arguments", lambda raw, where: _to_list(raw, where, _to_byte))
            ),
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse :meth:`encode` output; the bytes must be UTF-8 JSON. Raises :class:`SerdeError`."""
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerdeError(f"GuestInvocation: invalid UTF-8: {exc}") from None
        return cls.from_json(loads(text))
