"""Elicitation: an MCP server asking the user for input (spec/core.md §5).

Two flows exist. An :class:`ElicitationRequest` asks for a value described by an
:class:`ElicitationSchema` (free text, a secret, a choice, a yes/no) and is answered by an
:class:`ElicitationResponse`. An :class:`UrlElicitationRequest` sends the user to a URL (OAuth,
payment, …) and is answered by an :class:`UrlElicitationResponse`.

Every type is wire-compatible with the reference's ``astrid_core::elicitation``. The two
data-carrying enums are externally tagged and modelled as an abstract base with one dataclass per
variant:

* :class:`ElicitationSchema`: :class:`TextSchema` ``{"text":{…}}``, :class:`SecretSchema`
  ``{"secret":{…}}``, :class:`SelectSchema` ``{"select":{…}}``, :class:`ConfirmSchema`
  ``{"confirm":{…}}``;
* :class:`ElicitationAction`: :class:`SubmitAction` ``{"submit":{"value":…}}``,
  :class:`CancelAction` ``"cancel"``, :class:`DismissAction` ``"dismiss"``.

Note the wire spelling of :attr:`UrlElicitationType.OAUTH`: ``"o_auth"``.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

from astrid_core.serde import (
    Fields,
    SerdeError,
    split_tagged,
    str_enum_from_json,
    to_list,
    to_str_map,
    to_uint,
    uuid_to_json,
)

__all__ = [
    "CancelAction",
    "ConfirmSchema",
    "DismissAction",
    "ElicitationAction",
    "ElicitationRequest",
    "ElicitationResponse",
    "ElicitationSchema",
    "SecretSchema",
    "SelectOption",
    "SelectSchema",
    "SubmitAction",
    "TextSchema",
    "UrlElicitationRequest",
    "UrlElicitationResponse",
    "UrlElicitationType",
]


# ---------------------------------------------------------------------------------------------
# Schemas


@dataclass(frozen=True, slots=True)
class SelectOption:
    """One choice of a :class:`SelectSchema`."""

    value: str
    label: str
    description: str | None = None

    @classmethod
    def new(cls, value: str, label: str) -> Self:
        return cls(value, label)

    def with_description(self, description: str) -> Self:
        return dataclasses.replace(self, description=description)

    def to_json(self) -> Any:
        return {"value": self.value, "label": self.label, "description": self.description}

    @classmethod
    def from_json(cls, value: Any, what: str = "SelectOption") -> Self:
        fields = Fields(value, what)
        return cls(
            value=fields.string("value"),
            label=fields.string("label"),
            description=fields.opt_string("description"),
        )


class ElicitationSchema(abc.ABC):
    """The kind of input requested: :class:`TextSchema`, :class:`SecretSchema`,
    :class:`SelectSchema` or :class:`ConfirmSchema`."""

    __slots__ = ()

    @abc.abstractmethod
    def to_json(self) -> Any: ...

    @classmethod
    def from_json(cls, value: Any, what: str = "ElicitationSchema") -> Self:
        """Read any variant (called on a variant class, only that variant is accepted)."""
        tag, content = split_tagged(value, what, _SCHEMA_TAGS)
        fields = Fields(content, f"{what}.{tag}")
        schema: ElicitationSchema
        if tag == "text":
            schema = TextSchema(
                placeholder=fields.opt_string("placeholder"),
                max_length=fields.opt("max_length", to_uint),
            )
        elif tag == "secret":
            schema = SecretSchema(placeholder=fields.opt_string("placeholder"))
        elif tag == "select":
            options = fields.get("options", lambda v, w: to_list(v, w, SelectOption.from_json))
            schema = SelectSchema(options=tuple(options), multiple=fields.boolean("multiple"))
        else:
            schema = ConfirmSchema(default=fields.boolean("default"))
        if not isinstance(schema, cls):
            raise SerdeError(f"{what}: expected {cls.__name__}, got variant `{tag}`")
        return schema


@dataclass(frozen=True, slots=True)
class TextSchema(ElicitationSchema):
    """Free text, optionally with a placeholder and a maximum length (a non-negative int)."""

    placeholder: str | None = None
    max_length: int | None = None

    def to_json(self) -> Any:
        return {"text": {"placeholder": self.placeholder, "max_length": self.max_length}}


@dataclass(frozen=True, slots=True)
class SecretSchema(ElicitationSchema):
    """A secret (password, API key) that the frontend should not echo."""

    placeholder: str | None = None

    def to_json(self) -> Any:
        return {"secret": {"placeholder": self.placeholder}}


@dataclass(frozen=True, slots=True)
class SelectSchema(ElicitationSchema):
    """A choice among ``options``; ``multiple`` allows several. Options are stored as a tuple."""

    options: tuple[SelectOption, ...]
    multiple: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))

    def to_json(self) -> Any:
        return {
            "select": {
                "options": [option.to_json() for option in self.options],
                "multiple": self.multiple,
            }
        }


@dataclass(frozen=True, slots=True)
class ConfirmSchema(ElicitationSchema):
    """A yes/no question with its default answer."""

    default: bool

    def to_json(self) -> Any:
        return {"confirm": {"default": self.default}}


_SCHEMA_TAGS: Final = ("text", "secret", "select", "confirm")


# ---------------------------------------------------------------------------------------------
# Requests and responses


@dataclass(frozen=True, slots=True)
class ElicitationRequest:
    """An MCP server (``server_name``) asks the user for input described by ``schema``."""

    request_id: uuid.UUID
    server_name: str
    schema: ElicitationSchema
    message: str
    required: bool

    @classmethod
    def new(cls, server_name: str, message: str) -> Self:
        """A required free-text request with a fresh random id."""
        return cls(uuid.uuid4(), server_name, TextSchema(), message, required=True)

    def with_schema(self, schema: ElicitationSchema) -> Self:
        return dataclasses.replace(self, schema=schema)

    def optional(self) -> Self:
        """The same request, marked as not required (the user may dismiss it)."""
        return dataclasses.replace(self, required=False)

    def to_json(self) -> Any:
        return {
            "request_id": uuid_to_json(self.request_id),
            "server_name": self.server_name,
            "schema": self.schema.to_json(),
            "message": self.message,
            "required": self.required,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "ElicitationRequest") -> Self:
        fields = Fields(value, what)
        return cls(
            request_id=fields.get_uuid("request_id"),
            server_name=fields.string("server_name"),
            schema=fields.get("schema", ElicitationSchema.from_json),
            message=fields.string("message"),
            required=fields.boolean("required"),
        )


class ElicitationAction(abc.ABC):
    """What the user did: :class:`SubmitAction`, :class:`CancelAction` or
    :class:`DismissAction` (meant for optional requests)."""

    __slots__ = ()

    @abc.abstractmethod
    def to_json(self) -> Any: ...

    @classmethod
    def from_json(cls, value: Any, what: str = "ElicitationAction") -> Self:
        """Read any variant (called on a variant class, only that variant is accepted)."""
        tag, content = split_tagged(value, what, _ACTION_TAGS)
        action: ElicitationAction
        if tag == "submit":
            action = SubmitAction(Fields(content, f"{what}.submit").raw("value"))
        elif content is not None:  # serde also accepts a unit variant as {"cancel":null}
            raise SerdeError(f"{what}: variant `{tag}` takes no data")
        else:
            action = CancelAction() if tag == "cancel" else DismissAction()
        if not isinstance(action, cls):
            raise SerdeError(f"{what}: expected {cls.__name__}, got variant `{tag}`")
        return action


@dataclass(frozen=True, slots=True)
class SubmitAction(ElicitationAction):
    """The user submitted ``value`` (any JSON value, ``None`` for null)."""

    value: Any

    def to_json(self) -> Any:
        return {"submit": {"value": self.value}}


@dataclass(frozen=True, slots=True)
class CancelAction(ElicitationAction):
    """The user cancelled."""

    def to_json(self) -> Any:
        return "cancel"


@dataclass(frozen=True, slots=True)
class DismissAction(ElicitationAction):
    """The user dismissed an optional request."""

    def to_json(self) -> Any:
        return "dismiss"


_ACTION_TAGS: Final = ("submit", "cancel", "dismiss")


@dataclass(frozen=True, slots=True)
class ElicitationResponse:
    """The answer to the :class:`ElicitationRequest` with id ``request_id``."""

    request_id: uuid.UUID
    action: ElicitationAction

    @classmethod
    def submit(cls, request_id: uuid.UUID, value: Any) -> Self:
        return cls(request_id, SubmitAction(value))

    @classmethod
    def cancel(cls, request_id: uuid.UUID) -> Self:
        return cls(request_id, CancelAction())

    @classmethod
    def dismiss(cls, request_id: uuid.UUID) -> Self:
        return cls(request_id, DismissAction())

    def to_json(self) -> Any:
        return {"request_id": uuid_to_json(self.request_id), "action": self.action.to_json()}

    @classmethod
    def from_json(cls, value: Any, what: str = "ElicitationResponse") -> Self:
        fields = Fields(value, what)
        return cls(
            request_id=fields.get_uuid("request_id"),
            action=fields.get("action", ElicitationAction.from_json),
        )


# ---------------------------------------------------------------------------------------------
# URL elicitation


class UrlElicitationType(enum.StrEnum):
    """Why the user is sent to a URL. The value is the JSON string (note ``"o_auth"``)."""

    OAUTH = "o_auth"
    PAYMENT = "payment"
    CREDENTIALS = "credentials"
    EXTERNAL = "external"

    def to_json(self) -> Any:
        return self.value

    @classmethod
    def from_json(cls, value: Any, what: str = "UrlElicitationType") -> Self:
        return str_enum_from_json(cls, value, what)


@dataclass(frozen=True, slots=True)
class UrlElicitationRequest:
    """An MCP server asks the user to complete a flow at ``url`` (OAuth, payment, …)."""

    request_id: uuid.UUID
    server_name: str
    url: str
    message: str
    elicitation_type: UrlElicitationType

    @classmethod
    def new(cls, server_name: str, url: str, message: str) -> Self:
        """An OAuth request with a fresh random id."""
        return cls(uuid.uuid4(), server_name, url, message, UrlElicitationType.OAUTH)

    def with_type(self, elicitation_type: UrlElicitationType) -> Self:
        return dataclasses.replace(self, elicitation_type=elicitation_type)

    def to_json(self) -> Any:
        return {
            "request_id": uuid_to_json(self.request_id),
            "server_name": self.server_name,
            "url": self.url,
            "message": self.message,
            "elicitation_type": self.elicitation_type.to_json(),
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "UrlElicitationRequest") -> Self:
        fields = Fields(value, what)
        return cls(
            request_id=fields.get_uuid("request_id"),
            server_name=fields.string("server_name"),
            url=fields.string("url"),
            message=fields.string("message"),
            elicitation_type=fields.get("elicitation_type", UrlElicitationType.from_json),
        )


@dataclass(frozen=True, slots=True)
class UrlElicitationResponse:
    """Whether the URL flow of request ``request_id`` completed, with optional callback data
    and error text.

    The constructors are :meth:`new_completed` and :meth:`new_not_completed` (the reference's
    ``completed(id)`` / ``not_completed(id)``): a classmethod cannot share the name of the
    ``completed`` field.
    """

    request_id: uuid.UUID
    completed: bool
    callback_data: dict[str, str] | None = None
    error: str | None = None

    @classmethod
    def new_completed(cls, request_id: uuid.UUID) -> Self:
        return cls(request_id, completed=True)

    @classmethod
    def new_not_completed(cls, request_id: uuid.UUID) -> Self:
        return cls(request_id, completed=False)

    def with_callback_data(self, callback_data: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, callback_data=dict(callback_data))

    def to_json(self) -> Any:
        return {
            "request_id": uuid_to_json(self.request_id),
            "completed": self.completed,
            "callback_data": None if self.callback_data is None else dict(self.callback_data),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, value: Any, what: str = "UrlElicitationResponse") -> Self:
        fields = Fields(value, what)
        return cls(
            request_id=fields.get_uuid("request_id"),
            completed=fields.boolean("completed"),
            callback_data=fields.opt("callback_data", to_str_map),
            error=fields.opt_string("error"),
        )
