"""IPC payloads: classification of what a guest publishes (syscalls.md §2.2 step 9).

A published JSON value becomes one of the tagged payload variants when it is an object whose
``type`` is a known tag and whose fields have that variant's shape (defaults filled in, e.g.
``session_id: "default"`` for ``user_input``; absent optional fields omitted); anything else (an
unknown or missing tag, a non-object, a known tag with malformed fields) becomes
``{"type": "custom", "data": <the whole value>}``. ``{"type": "custom", "data": X}`` stays custom
with ``data`` X.

Payloads are kept as JSON-ready dicts in normalized form: ``type`` first, then the variant's
fields in declaration order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from astrid_core.serde import SerdeError, parse_uuid_strict

_MISSING = object()


class _Shape(Exception):
    """The value does not have the variant's shape."""


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_uuid_strict(value)
    except ValueError:
        return False
    return True


def _is_any(_value: Any) -> bool:
    return True


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_onboarding_field(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        _fields(value, _ONBOARDING_FIELD)
    except _Shape:
        return False
    field_type = value["field_type"]
    if field_type in ("Text", "Secret", "Array"):
        return True
    return (
        isinstance(field_type, dict)
        and list(field_type) == ["Enum"]
        and _is_str_list(field_type["Enum"])
    )


def _is_onboarding_fields(value: Any) -> bool:
    return isinstance(value, list) and all(_is_onboarding_field(item) for item in value)


def _is_selection_options(value: Any) -> bool:
    if not isinstance(value, list):
        return False
    try:
        for item in value:
            if not isinstance(item, dict):
                return False
            _fields(item, _SELECTION_OPTION)
    except _Shape:
        return False
    return True


def _is_tool_call_result(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("call_id"), str)
        and isinstance(value.get("content"), str)
        and isinstance(value.get("is_error", False), bool)
    )


def tool_call_result(call_id: str, content: str, is_error: bool) -> dict[str, Any]:
    """A ``ToolCallResult``: ``{"call_id","content","is_error"}``."""
    return {"call_id": call_id, "content": content, "is_error": is_error}


Check = Callable[[Any], bool]
#: (name, check, default): default _MISSING = required; None = optional, omitted when absent.
Field = tuple[str, Check, Any]

_ONBOARDING_FIELD: tuple[Field, ...] = (
    ("key", _is_str, _MISSING),
    ("prompt", _is_str, _MISSING),
    ("description", _is_str, None),
    ("field_type", _is_any, _MISSING),
    ("default", _is_str, None),
)
_SELECTION_OPTION: tuple[Field, ...] = (
    ("id", _is_str, _MISSING),
    ("label", _is_str, _MISSING),
    ("description", _is_str, None),
)

#: The known variants and their fields, in declaration order.
VARIANTS: Mapping[str, tuple[Field, ...]] = {
    "user_input": (
        ("text", _is_str, _MISSING),
        ("session_id", _is_str, "default"),
        ("context", _is_any, None),
    ),
    "agent_response": (
        ("text", _is_str, _MISSING),
        ("is_final", _is_bool, _MISSING),
        ("session_id", _is_str, "default"),
    ),
    "approval_required": (
        ("request_id", _is_str, _MISSING),
        ("action", _is_str, _MISSING),
        ("resource", _is_str, _MISSING),
        ("reason", _is_str, _MISSING),
        ("risk_level", _is_str, _MISSING),
    ),
    "approval_response": (
        ("request_id", _is_str, _MISSING),
        ("decision", _is_str, _MISSING),
        ("reason", _is_str, None),
    ),
    "onboarding_required": (
        ("capsule_id", _is_str, _MISSING),
        ("fields", _is_onboarding_fields, _MISSING),
    ),
    "llm_request": (
        ("request_id", _is_uuid, _MISSING),
        ("model", _is_str, _MISSING),
        ("messages", _is_list, _MISSING),
        ("tools", _is_list, _MISSING),
        ("system", _is_str, _MISSING),
    ),
    "llm_stream_event": (("request_id", _is_uuid, _MISSING), ("event", _is_any, _MISSING)),
    "llm_response": (("request_id", _is_uuid, _MISSING), ("response", _is_object, _MISSING)),
    "tool_execute_request": (
        ("call_id", _is_str, _MISSING),
        ("tool_name", _is_str, _MISSING),
        ("arguments", _is_any, _MISSING),
    ),
    "tool_execute_result": (
        ("call_id", _is_str, _MISSING),
        ("result", _is_tool_call_result, _MISSING),
    ),
    "tool_cancel_request": (("call_ids", _is_str_list, _MISSING),),
    "selection_required": (
        ("request_id", _is_str, _MISSING),
        ("title", _is_str, _MISSING),
        ("options", _is_selection_options, _MISSING),
        ("callback_topic", _is_str, _MISSING),
    ),
    "elicit_request": (
        ("request_id", _is_uuid, _MISSING),
        ("capsule_id", _is_str, _MISSING),
        ("field", _is_onboarding_field, _MISSING),
    ),
    "elicit_response": (
        ("request_id", _is_uuid, _MISSING),
        ("value", _is_str, None),
        ("values", _is_str_list, None),
    ),
    "connect": (),
    "disconnect": (("reason", _is_str, None),),
    "custom": (("data", _is_any, _MISSING),),
}


def _fields(value: Mapping[str, Any], fields: tuple[Field, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, check, default in fields:
        item = value.get(name, _MISSING)
        if item is _MISSING or (item is None and default is None):
            if default is _MISSING:
                raise _Shape(name)
            if default is not None:
                out[name] = default
            continue
        if not check(item):
            raise _Shape(name)
        out[name] = item
    return out


def custom(data: Any) -> dict[str, Any]:
    return {"type": "custom", "data": data}


def classify(value: Any) -> dict[str, Any]:
    """The normalized tagged payload of a published JSON value."""
    if isinstance(value, dict):
        tag = value.get("type")
        if tag == "raw_json":
            return dict(value)
        fields = VARIANTS.get(tag) if isinstance(tag, str) else None
        if fields is not None:
            try:
                payload = {"type": tag, **_fields(value, fields)}
            except _Shape:
                pass
            else:
                if tag == "tool_execute_result":
                    result = payload["result"]
                    payload["result"] = tool_call_result(
                        result["call_id"], result["content"], result.get("is_error", False)
                    )
                return payload
    return custom(value)


def guest_value(payload: Mapping[str, Any]) -> Any:
    """What an interceptor receives: custom/raw_json unwrapped, other variants whole."""
    tag = payload.get("type")
    if tag == "custom":
        return payload.get("data")
    if tag == "raw_json":
        return {key: item for key, item in payload.items() if key != "type"}
    return dict(payload)


def expect(payload: Mapping[str, Any], tag: str) -> dict[str, Any]:
    """The fields of a payload that must be ``tag``; raises SerdeError otherwise."""
    if payload.get("type") != tag:
        raise SerdeError(f"expected a {tag} payload, got {payload.get('type')!r}")
    return dict(payload)
