"""The capsule ABI vocabulary (spec/core.md §6) and guest invocations (spec/syscalls.md §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core.capsule_abi import (
    CapsuleAbiContext,
    CapsuleAbiResult,
    GuestInvocation,
    HttpResponse,
    KeyValuePair,
    LogLevel,
    ToolDefinition,
    ToolInput,
    ToolOutput,
)
from astrid_core.serde import SerdeError, dumps, loads

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "capsule_abi"

AbiValue = (
    LogLevel
    | KeyValuePair
    | CapsuleAbiContext
    | CapsuleAbiResult
    | ToolInput
    | ToolOutput
    | ToolDefinition
    | HttpResponse
    | GuestInvocation
)


def round_trip(value: AbiValue) -> AbiValue:
    """Serialize to JSON text and back, as a Rust peer would see it."""
    return type(value).from_json(loads(dumps(value.to_json())))


# ---------------------------------------------------------------------------------------------
# Ports of capsule_abi.rs (spec/core.md §12, tests 42 to 52)


def test_log_level_round_trip() -> None:
    """Mirrors capsule_abi.rs::log_level_round_trip"""
    for level in (LogLevel.TRACE, LogLevel.DEBUG, LogLevel.INFO, LogLevel.WARN, LogLevel.ERROR):
        assert round_trip(level) is level


def test_log_level_json_format() -> None:
    """Mirrors capsule_abi.rs::log_level_json_format"""
    assert dumps(LogLevel.TRACE.to_json()) == '"trace"'
    assert dumps(LogLevel.ERROR.to_json()) == '"error"'


def test_key_value_pair_round_trip() -> None:
    """Mirrors capsule_abi.rs::key_value_pair_round_trip"""
    kv = KeyValuePair(key="Content-Type", value="application/json")
    assert round_trip(kv) == kv


def test_capsule_abi_context_round_trip() -> None:
    """Mirrors capsule_abi.rs::capsule_abi_context_round_trip"""
    ctx = CapsuleAbiContext(
        event="pre-tool-call",
        session_id="sess-123",
        user_id="user-456",
        data='{"tool":"read_file"}',
    )
    assert round_trip(ctx) == ctx


def test_capsule_abi_context_minimal_round_trip() -> None:
    """Mirrors capsule_abi.rs::capsule_abi_context_minimal_round_trip"""
    ctx = CapsuleAbiContext(event="post-response", session_id="sess-789", user_id=None, data=None)
    assert round_trip(ctx) == ctx


def test_capsule_abi_result_round_trip() -> None:
    """Mirrors capsule_abi.rs::capsule_abi_result_round_trip"""
    cont = CapsuleAbiResult(action="continue", data=None)
    assert round_trip(cont) == cont
    modify = CapsuleAbiResult(action="modify", data='{"patched":true}')
    assert round_trip(modify) == modify


def test_tool_input_round_trip() -> None:
    """Mirrors capsule_abi.rs::tool_input_round_trip"""
    tool_input = ToolInput(name="search", arguments='{"query":"hello"}')
    assert round_trip(tool_input) == tool_input


def test_tool_output_round_trip() -> None:
    """Mirrors capsule_abi.rs::tool_output_round_trip"""
    ok = ToolOutput(content='{"results":["hello world"]}', is_error=False)
    assert round_trip(ok) == ok
    failed = ToolOutput(content="tool failed: file not found", is_error=True)
    assert round_trip(failed) == failed


def test_tool_definition_round_trip() -> None:
    """Mirrors capsule_abi.rs::tool_definition_round_trip"""
    definition = ToolDefinition(
        name="weather",
        description="Get the current weather for a city",
        input_schema='{"type":"object","properties":{"city":{"type":"string"}}}',
    )
    assert round_trip(definition) == definition


def test_http_response_round_trip() -> None:
    """Mirrors capsule_abi.rs::http_response_round_trip"""
    response = HttpResponse(
        status=200,
        headers=(
            KeyValuePair(key="Content-Type", value="text/plain"),
            KeyValuePair(key="X-Request-Id", value="abc-123"),
        ),
        body="OK",
    )
    assert round_trip(response) == response


def test_http_response_empty_round_trip() -> None:
    """Mirrors capsule_abi.rs::http_response_empty_round_trip"""
    response = HttpResponse(status=204, headers=(), body="")
    assert round_trip(response) == response


# ---------------------------------------------------------------------------------------------
# Golden JSON (exact compact bytes, readable by the reference)

GOLDEN_CASES: list[tuple[str, AbiValue]] = [
    ("log_level_trace.json", LogLevel.TRACE),
    ("key_value_pair.json", KeyValuePair("Content-Type", "application/json")),
    (
        "capsule_context.json",
        CapsuleAbiContext("pre-tool-call", "sess-123", "user-456", '{"tool":"read_file"}'),
    ),
    ("capsule_context_minimal.json", CapsuleAbiContext("post-response", "sess-789", None, None)),
    ("capsule_result_continue.json", CapsuleAbiResult("continue", None)),
    ("capsule_result_modify.json", CapsuleAbiResult("modify", '{"patched":true}')),
    ("tool_input.json", ToolInput("search", '{"query":"hello"}')),
    ("tool_output.json", ToolOutput('{"results":["hello world"]}', False)),
    ("tool_output_error.json", ToolOutput("tool failed: file not found", True)),
    (
        "tool_definition.json",
        ToolDefinition(
            "weather",
            "Get the current weather for a city",
            '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}',
        ),
    ),
    (
        "http_response.json",
        HttpResponse(
            200,
            (KeyValuePair("Content-Type", "text/plain"), KeyValuePair("X-Request-Id", "abc-123")),
            "OK",
        ),
    ),
    ("http_response_empty.json", HttpResponse(204, (), "")),
    ("guest_invocation.json", GuestInvocation("greet", b'{"name":"Ada"}')),
]


@pytest.mark.parametrize(("filename", "value"), GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden_json(filename: str, value: AbiValue) -> None:
    golden = (GOLDEN / filename).read_bytes()
    assert dumps(value.to_json()).encode("utf-8") == golden
    assert type(value).from_json(loads(golden)) == value


def test_every_golden_file_is_covered() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(c[0] for c in GOLDEN_CASES)


def test_guest_invocation_golden_encode_decode() -> None:
    golden = (GOLDEN / "guest_invocation.json").read_bytes()
    invocation = GuestInvocation.for_json_arguments("greet", {"name": "Ada"})
    assert invocation.encode() == golden
    assert GuestInvocation.decode(golden) == invocation


# ---------------------------------------------------------------------------------------------
# LogLevel specifics


def test_log_level_record_names() -> None:
    assert [level.record_name for level in LogLevel] == ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("trace", LogLevel.TRACE),
        ("DEBUG", LogLevel.DEBUG),
        ("Info", LogLevel.INFO),
        ("warn", LogLevel.WARN),
        ("WARNING", LogLevel.WARN),
        ("error", LogLevel.ERROR),
        ("Err", LogLevel.ERROR),
        ("", LogLevel.INFO),
        ("fatal", LogLevel.INFO),
        (" warn", LogLevel.INFO),
        ("error\n", LogLevel.INFO),
        ("warnings", LogLevel.INFO),
        # Dotless i upper-cases to "I", but only ASCII letters fold: not "warning".
        ("warn\u0131ng", LogLevel.INFO),
        ("WARN\u0130NG", LogLevel.INFO),
    ],
)
def test_log_level_from_guest_examples(name: str, expected: LogLevel) -> None:
    assert LogLevel.from_guest(name) is expected


KNOWN_GUEST_NAMES = {
    "trace": LogLevel.TRACE,
    "debug": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "warn": LogLevel.WARN,
    "warning": LogLevel.WARN,
    "error": LogLevel.ERROR,
    "err": LogLevel.ERROR,
}


@st.composite
def case_variants(draw: st.DrawFn) -> tuple[str, LogLevel]:
    name = draw(st.sampled_from(sorted(KNOWN_GUEST_NAMES)))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    variant = "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))
    return variant, KNOWN_GUEST_NAMES[name]


@given(case_variants())
def test_log_level_from_guest_is_case_insensitive(case: tuple[str, LogLevel]) -> None:
    variant, expected = case
    assert LogLevel.from_guest(variant) is expected


@given(st.text().filter(lambda s: not (s.isascii() and s.lower() in KNOWN_GUEST_NAMES)))
def test_log_level_from_guest_defaults_to_info(name: str) -> None:
    assert LogLevel.from_guest(name) is LogLevel.INFO


@given(st.text().filter(lambda s: s not in {level.value for level in LogLevel}))
def test_log_level_from_json_rejects_every_other_string(text: str) -> None:
    with pytest.raises(SerdeError, match="LogLevel"):
        LogLevel.from_json(text)


@pytest.mark.parametrize("value", ["warning", "err", "TRACE", "Info", " info", "", None, 1, True])
def test_log_level_from_json_is_strict(value: Any) -> None:
    with pytest.raises(SerdeError, match="LogLevel"):
        LogLevel.from_json(value)


# ---------------------------------------------------------------------------------------------
# Hypothesis round trips

opt_text = st.none() | st.text()
key_value_pairs = st.builds(KeyValuePair, key=st.text(), value=st.text())

ABI_VALUES: st.SearchStrategy[AbiValue] = st.one_of(
    st.sampled_from(LogLevel),
    key_value_pairs,
    st.builds(
        CapsuleAbiContext,
        event=st.text(),
        session_id=st.text(),
        user_id=opt_text,
        data=opt_text,
    ),
    st.builds(CapsuleAbiResult, action=st.text(), data=opt_text),
    st.builds(ToolInput, name=st.text(), arguments=st.text()),
    st.builds(ToolOutput, content=st.text(), is_error=st.booleans()),
    st.builds(ToolDefinition, name=st.text(), description=st.text(), input_schema=st.text()),
    st.builds(
        HttpResponse,
        status=st.integers(0, 65535),
        headers=st.lists(key_value_pairs, max_size=5).map(tuple),
        body=st.text(),
    ),
    st.builds(GuestInvocation, name=st.text(), arguments=st.binary()),
)


@given(ABI_VALUES)
def test_every_type_round_trips_through_json(value: AbiValue) -> None:
    assert round_trip(value) == value


@given(st.text(), st.binary())
def test_guest_invocation_round_trips_arbitrary_bytes(name: str, arguments: bytes) -> None:
    invocation = GuestInvocation(name, arguments)
    encoded = invocation.encode()
    assert GuestInvocation.decode(encoded) == invocation
    assert loads(encoded) == {"name": name, "arguments": list(arguments)}


@given(st.integers().filter(lambda n: not 0 <= n <= 65535))
def test_http_response_rejects_out_of_range_status(status: int) -> None:
    with pytest.raises(SerdeError, match=r"HttpResponse\.status"):
        HttpResponse.from_json({"status": status, "headers": [], "body": ""})
    with pytest.raises(ValueError, match="status"):
        HttpResponse(status)


@given(st.booleans())
def test_http_response_rejects_boolean_status(status: bool) -> None:
    with pytest.raises(SerdeError, match=r"HttpResponse\.status"):
        HttpResponse.from_json({"status": status, "headers": [], "body": ""})
    with pytest.raises(TypeError, match="status"):
        HttpResponse(status)


# ---------------------------------------------------------------------------------------------
# Serde defaults: optional fields, unknown keys


def test_missing_optional_fields_read_as_none() -> None:
    assert CapsuleAbiContext.from_json({"event": "e", "session_id": ""}) == CapsuleAbiContext(
        "e", "", None, None
    )
    assert CapsuleAbiResult.from_json({"action": "block"}) == CapsuleAbiResult("block", None)


def test_none_is_written_as_null() -> None:
    assert dumps(CapsuleAbiContext("e", "s").to_json()) == (
        '{"event":"e","session_id":"s","user_id":null,"data":null}'
    )
    assert dumps(CapsuleAbiResult("continue").to_json()) == '{"action":"continue","data":null}'


def test_unknown_keys_are_ignored() -> None:
    assert ToolInput.from_json({"name": "n", "arguments": "{}", "extra": 1}) == ToolInput("n", "{}")
    assert GuestInvocation.from_json({"name": "n", "arguments": [], "x": None}) == (
        GuestInvocation("n", b"")
    )


def test_non_ascii_is_written_raw() -> None:
    assert dumps(KeyValuePair("ключ", "値").to_json()) == '{"key":"ключ","value":"値"}'
    assert GuestInvocation.for_json_arguments("t", "é").arguments == '"é"'.encode()


def test_http_response_headers_keep_order_and_duplicates() -> None:
    headers = [{"key": "Set-Cookie", "value": "a=1"}, {"key": "Set-Cookie", "value": "b=2"}]
    response = HttpResponse.from_json({"status": 200, "headers": headers, "body": ""})
    assert response.headers == (
        KeyValuePair("Set-Cookie", "a=1"),
        KeyValuePair("Set-Cookie", "b=2"),
    )
    assert response.to_json()["headers"] == headers


def test_constructors_normalize_sequences() -> None:
    kv = KeyValuePair("a", "b")
    response = HttpResponse(200, [kv], "")  # type: ignore[arg-type]
    assert response.headers == (kv,)
    assert hash(response) == hash(HttpResponse(200, (kv,), ""))
    invocation = GuestInvocation("n", bytearray(b"xy"))  # type: ignore[arg-type]
    assert invocation.arguments == b"xy" and type(invocation.arguments) is bytes


def test_guest_invocation_for_json_arguments() -> None:
    invocation = GuestInvocation.for_json_arguments("tool", {"b": [1, 2], "a": None})
    assert invocation == GuestInvocation("tool", b'{"b":[1,2],"a":null}')
    assert loads(invocation.arguments) == {"b": [1, 2], "a": None}
    with pytest.raises(ValueError):
        GuestInvocation.for_json_arguments("tool", float("nan"))


# ---------------------------------------------------------------------------------------------
# Bad input

BAD_INPUT: list[tuple[type[AbiValue], Any, str]] = [
    # not an object
    (KeyValuePair, None, "KeyValuePair must be a JSON object"),
    (KeyValuePair, ["Content-Type", "text/plain"], "KeyValuePair must be a JSON object"),
    (CapsuleAbiContext, "ctx", "CapsuleAbiContext must be a JSON object"),
    (HttpResponse, 200, "HttpResponse must be a JSON object"),
    (GuestInvocation, [], "GuestInvocation must be a JSON object"),
    # missing required fields
    (KeyValuePair, {"key": "k"}, "missing field `value`"),
    (KeyValuePair, {"value": "v"}, "missing field `key`"),
    (CapsuleAbiContext, {"session_id": "s"}, "missing field `event`"),
    (CapsuleAbiContext, {"event": "e"}, "missing field `session_id`"),
    (CapsuleAbiResult, {"data": None}, "missing field `action`"),
    (ToolInput, {"name": "n"}, "missing field `arguments`"),
    (ToolInput, {"arguments": "{}"}, "missing field `name`"),
    (ToolOutput, {"content": "c"}, "missing field `is_error`"),
    (ToolOutput, {"is_error": False}, "missing field `content`"),
    (ToolDefinition, {"name": "n", "description": "d"}, "missing field `input_schema`"),
    (ToolDefinition, {"name": "n", "input_schema": "{}"}, "missing field `description`"),
    (HttpResponse, {"headers": [], "body": ""}, "missing field `status`"),
    (HttpResponse, {"status": 200, "body": ""}, "missing field `headers`"),
    (HttpResponse, {"status": 200, "headers": []}, "missing field `body`"),
    (GuestInvocation, {"name": "n"}, "missing field `arguments`"),
    (GuestInvocation, {"arguments": []}, "missing field `name`"),
    # required fields given as null
    (ToolInput, {"name": None, "arguments": "{}"}, r"ToolInput\.name must be a string"),
    (HttpResponse, {"status": 200, "headers": None, "body": ""}, "headers must be an array"),
    (GuestInvocation, {"name": "n", "arguments": None}, "arguments must be an array"),
    # wrong types
    (KeyValuePair, {"key": 1, "value": "v"}, r"KeyValuePair\.key must be a string"),
    (CapsuleAbiContext, {"event": "e", "session_id": 7}, r"\.session_id must be a string"),
    (CapsuleAbiContext, {"event": "e", "session_id": "", "user_id": 4}, r"\.user_id must be"),
    (CapsuleAbiContext, {"event": "e", "session_id": "", "data": {"tool": "x"}}, r"\.data must"),
    (CapsuleAbiContext, {"event": "e", "session_id": "", "data": ["x"]}, r"\.data must"),
    (CapsuleAbiResult, {"action": "modify", "data": {"patched": True}}, r"\.data must"),
    (CapsuleAbiResult, {"action": "modify", "data": 1}, r"CapsuleAbiResult\.data must"),
    (ToolInput, {"name": "n", "arguments": {"query": "x"}}, r"ToolInput\.arguments must be"),
    (ToolOutput, {"content": "c", "is_error": 0}, r"ToolOutput\.is_error must be a boolean"),
    (ToolOutput, {"content": "c", "is_error": "false"}, r"\.is_error must be a boolean"),
    (ToolOutput, {"content": None, "is_error": True}, r"ToolOutput\.content must be a string"),
    (ToolDefinition, {"name": "n", "description": "d", "input_schema": {}}, r"\.input_schema"),
    (HttpResponse, {"status": "200", "headers": [], "body": ""}, r"\.status must be an integer"),
    (HttpResponse, {"status": 200.0, "headers": [], "body": ""}, r"\.status must be an integer"),
    (HttpResponse, {"status": True, "headers": [], "body": ""}, r"\.status must be an integer"),
    (HttpResponse, {"status": 65536, "headers": [], "body": ""}, r"\.status must be between"),
    (HttpResponse, {"status": -1, "headers": [], "body": ""}, r"\.status must be between"),
    (HttpResponse, {"status": 200, "headers": {"a": "b"}, "body": ""}, "headers must be an array"),
    (HttpResponse, {"status": 200, "headers": [["a", "b"]], "body": ""}, r"headers\[0\] must be"),
    (
        HttpResponse,
        {"status": 200, "headers": [{"key": "a", "value": "b"}, {"key": "c"}], "body": ""},
        r"HttpResponse\.headers\[1\]: missing field `value`",
    ),
    (HttpResponse, {"status": 200, "headers": [], "body": None}, r"\.body must be a string"),
    (GuestInvocation, {"name": 1, "arguments": []}, r"GuestInvocation\.name must be a string"),
    (GuestInvocation, {"name": "n", "arguments": "{}"}, "arguments must be an array"),
    (GuestInvocation, {"name": "n", "arguments": [1, 256]}, r"arguments\[1\] must be between"),
    (GuestInvocation, {"name": "n", "arguments": [-1]}, r"arguments\[0\] must be between"),
    (GuestInvocation, {"name": "n", "arguments": [1.0]}, r"arguments\[0\] must be an integer"),
    (GuestInvocation, {"name": "n", "arguments": [True]}, r"arguments\[0\] must be an integer"),
    (GuestInvocation, {"name": "n", "arguments": ["a"]}, r"arguments\[0\] must be an integer"),
    (GuestInvocation, {"name": "n", "arguments": [None]}, r"arguments\[0\] must be an integer"),
]


@pytest.mark.parametrize(("cls", "value", "message"), BAD_INPUT)
def test_from_json_rejects_bad_input(cls: type[AbiValue], value: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        cls.from_json(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "invalid UTF-8"),
        (b'{"name":"n","arguments":[1,2]', "invalid JSON"),
        (b'{"name":"n","arguments":[NaN]}', "invalid number"),
        (b"[]", "must be a JSON object"),
        ('{"name":"n","arguments":[]}'.encode("utf-16"), "invalid UTF-8"),
        (b'{"name":"n","arguments":[300]}', r"arguments\[0\] must be between"),
    ],
)
def test_guest_invocation_decode_rejects_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        GuestInvocation.decode(data)
