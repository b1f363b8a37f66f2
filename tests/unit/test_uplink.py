"""Tests for astrid_core.uplink (spec/core.md §4 and the uplink/mod.rs tests of §12)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core.serde import SerdeError, dumps, loads
from astrid_core.text import UNICODE_WHITESPACE, strip_unicode_whitespace
from astrid_core.uplink import (
    MAX_UPLINKS_PER_CAPSULE,
    InboundMessage,
    NativeSource,
    OpenClawSource,
    UplinkCapabilities,
    UplinkDescriptor,
    UplinkError,
    UplinkErrorKind,
    UplinkId,
    UplinkProfile,
    UplinkSource,
    WasmSource,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "uplink"
FIXED_ID = UplinkId.from_uuid(uuid.UUID("6f1c9f8e-2b4a-4c3d-9e8f-0a1b2c3d4e5f"))

CAPABILITY_FLAGS = (
    "can_receive",
    "can_send",
    "can_approve",
    "can_elicit",
    "supports_rich_media",
    "supports_threads",
    "supports_buttons",
)


def roundtrip(value: Any, reader: Callable[[Any], Any]) -> Any:
    return reader(loads(dumps(value.to_json())))


# --- ports of uplink/mod.rs -----------------------------------------------------------------


def test_uplink_id_uniqueness() -> None:
    """Mirrors uplink/mod.rs::uplink_id_uniqueness"""
    assert UplinkId.new() != UplinkId.new()


def test_uplink_id_display_matches_uuid() -> None:
    """Mirrors uplink/mod.rs::uplink_id_display_matches_uuid"""
    u = uuid.uuid4()
    assert str(UplinkId.from_uuid(u)) == str(u)


def test_uplink_id_roundtrip_serde() -> None:
    """Mirrors uplink/mod.rs::uplink_id_roundtrip_serde"""
    uplink_id = UplinkId.new()
    assert roundtrip(uplink_id, UplinkId.from_json) == uplink_id


def test_capabilities_full() -> None:
    """Mirrors uplink/mod.rs::capabilities_full"""
    caps = UplinkCapabilities.full()
    assert all(getattr(caps, flag) is True for flag in CAPABILITY_FLAGS)


def test_capabilities_notify_only() -> None:
    """Mirrors uplink/mod.rs::capabilities_notify_only"""
    caps = UplinkCapabilities.notify_only()
    assert not caps.can_receive
    assert caps.can_send
    assert not caps.can_approve


def test_capabilities_receive_only() -> None:
    """Mirrors uplink/mod.rs::capabilities_receive_only"""
    caps = UplinkCapabilities.receive_only()
    assert caps.can_receive
    assert not caps.can_send
    assert not caps.can_approve


def test_capabilities_default_all_false() -> None:
    """Mirrors uplink/mod.rs::capabilities_default_all_false"""
    caps = UplinkCapabilities.default()
    assert all(getattr(caps, flag) is False for flag in CAPABILITY_FLAGS)


def test_capabilities_serde_roundtrip() -> None:
    """Mirrors uplink/mod.rs::capabilities_serde_roundtrip"""
    caps = UplinkCapabilities.full()
    assert roundtrip(caps, UplinkCapabilities.from_json) == caps


def test_profile_display() -> None:
    """Mirrors uplink/mod.rs::profile_display"""
    assert str(UplinkProfile.CHAT) == "chat"
    assert str(UplinkProfile.INTERACTIVE) == "interactive"
    assert str(UplinkProfile.NOTIFY) == "notify"
    assert str(UplinkProfile.BRIDGE) == "bridge"


def test_source_display() -> None:
    """Mirrors uplink/mod.rs::source_display"""
    assert str(NativeSource()) == "native"
    assert str(WasmSource("foo")) == "wasm(foo)"
    assert str(OpenClawSource("bar")) == "openclaw(bar)"


def test_source_display_truncates_long_capsule_id() -> None:
    """Mirrors uplink/mod.rs::source_display_truncates_long_capsule_id"""
    assert len(str(WasmSource("a" * 128))) == 70


def test_source_new_wasm_valid() -> None:
    """Mirrors uplink/mod.rs::source_new_wasm_valid"""
    assert UplinkSource.new_wasm("my-plugin-1") == WasmSource(capsule_id="my-plugin-1")


def test_source_new_openclaw_valid() -> None:
    """Mirrors uplink/mod.rs::source_new_openclaw_valid"""
    assert UplinkSource.new_openclaw("bridge-42") == OpenClawSource(capsule_id="bridge-42")


def _assert_invalid_capsule_id(capsule_id: str) -> None:
    with pytest.raises(UplinkError) as info:
        UplinkSource.new_wasm(capsule_id)
    assert info.value.kind is UplinkErrorKind.INVALID_CAPSULE_ID


def test_source_new_wasm_rejects_empty() -> None:
    """Mirrors uplink/mod.rs::source_new_wasm_rejects_empty"""
    _assert_invalid_capsule_id("")


def test_source_new_wasm_rejects_uppercase() -> None:
    """Mirrors uplink/mod.rs::source_new_wasm_rejects_uppercase"""
    _assert_invalid_capsule_id("MyPlugin")


def test_source_new_wasm_rejects_leading_hyphen() -> None:
    """Mirrors uplink/mod.rs::source_new_wasm_rejects_leading_hyphen"""
    _assert_invalid_capsule_id("-bad")


def test_source_new_wasm_rejects_trailing_hyphen() -> None:
    """Mirrors uplink/mod.rs::source_new_wasm_rejects_trailing_hyphen"""
    _assert_invalid_capsule_id("bad-")


def test_source_new_wasm_rejects_special_chars() -> None:
    """Mirrors uplink/mod.rs::source_new_wasm_rejects_special_chars"""
    _assert_invalid_capsule_id("path/../traversal")


def test_source_serde_roundtrip_native() -> None:
    """Mirrors uplink/mod.rs::source_serde_roundtrip_native"""
    assert roundtrip(NativeSource(), UplinkSource.from_json) == NativeSource()


def test_source_serde_roundtrip_wasm() -> None:
    """Mirrors uplink/mod.rs::source_serde_roundtrip_wasm"""
    source = UplinkSource.new_wasm("test-plugin")
    assert roundtrip(source, UplinkSource.from_json) == source


def test_source_serde_roundtrip_openclaw() -> None:
    """Mirrors uplink/mod.rs::source_serde_roundtrip_openclaw"""
    source = UplinkSource.new_openclaw("bridge-1")
    assert roundtrip(source, UplinkSource.from_json) == source


def test_descriptor_builder() -> None:
    """Mirrors uplink/mod.rs::descriptor_builder"""
    descriptor = (
        UplinkDescriptor.builder("discord-bot", "discord")
        .source(NativeSource())
        .capabilities(UplinkCapabilities.full())
        .profile(UplinkProfile.CHAT)
        .metadata("version", "1.0")
        .build()
    )
    assert descriptor.name == "discord-bot"
    assert descriptor.platform == "discord"
    assert descriptor.source == NativeSource()
    assert descriptor.capabilities == UplinkCapabilities.full()
    assert descriptor.profile is UplinkProfile.CHAT
    assert descriptor.metadata == {"version": "1.0"}


def test_descriptor_serde_roundtrip() -> None:
    """Mirrors uplink/mod.rs::descriptor_serde_roundtrip"""
    descriptor = (
        UplinkDescriptor.builder("cli", "cli").capabilities(UplinkCapabilities.full()).build()
    )
    back = roundtrip(descriptor, UplinkDescriptor.from_json)
    assert back.id == descriptor.id
    assert back.name == descriptor.name
    assert back.platform == descriptor.platform
    assert back.source == descriptor.source
    assert back.capabilities == descriptor.capabilities
    assert back.profile == descriptor.profile
    assert back.registered_at == descriptor.registered_at
    assert back.metadata == descriptor.metadata
    assert back == descriptor


def test_descriptor_builder_defaults() -> None:
    """Mirrors uplink/mod.rs::descriptor_builder_defaults"""
    descriptor = UplinkDescriptor.builder("test", "test").build()
    assert descriptor.profile is UplinkProfile.CHAT
    assert descriptor.capabilities == UplinkCapabilities.default()
    assert descriptor.source == NativeSource()
    assert descriptor.metadata == {}


def test_inbound_message_builder() -> None:
    """Mirrors uplink/mod.rs::inbound_message_builder"""
    uplink_id = UplinkId.new()
    message = (
        InboundMessage.builder(uplink_id, "discord", "user-123", "hello")
        .context({"key": "value"})
        .thread_id("thread-1")
        .build()
    )
    assert message.uplink_id == uplink_id
    assert message.platform == "discord"
    assert message.platform_user_id == "user-123"
    assert message.content == "hello"
    assert message.thread_id == "thread-1"
    assert message.context["key"] == "value"


def test_inbound_message_serde_roundtrip() -> None:
    """Mirrors uplink/mod.rs::inbound_message_serde_roundtrip"""
    uplink_id = UplinkId.new()
    message = (
        InboundMessage.builder(uplink_id, "telegram", "42", "hi")
        .context({"nested": {"deep": [1, 2, 3]}})
        .build()
    )
    back = roundtrip(message, InboundMessage.from_json)
    assert back.uplink_id == uplink_id
    assert back.context["nested"]["deep"][1] == 2


def test_inbound_message_empty_content() -> None:
    """Mirrors uplink/mod.rs::inbound_message_empty_content"""
    message = InboundMessage.builder(UplinkId.new(), "cli", "", "").build()
    assert message.platform_user_id == ""
    assert message.content == ""


def test_error_display() -> None:
    """Mirrors uplink/mod.rs::error_display"""
    assert str(UplinkError.not_connected()) == "uplink not connected"
    assert str(UplinkError.send_failed("timeout")) == "send failed: timeout"
    assert str(UplinkError.unsupported_operation("rich_media")) == (
        "unsupported operation: rich_media"
    )
    assert str(UplinkError.invalid_capsule_id("bad")) == "invalid capsule id: bad"


def test_profile_from_str_all_variants() -> None:
    """Mirrors uplink/mod.rs::profile_from_str_all_variants"""
    assert UplinkProfile.parse("chat") is UplinkProfile.CHAT
    assert UplinkProfile.parse("interactive") is UplinkProfile.INTERACTIVE
    assert UplinkProfile.parse("notify") is UplinkProfile.NOTIFY
    assert UplinkProfile.parse("bridge") is UplinkProfile.BRIDGE


def test_profile_from_str_case_insensitive() -> None:
    """Mirrors uplink/mod.rs::profile_from_str_case_insensitive"""
    assert UplinkProfile.parse("Chat") is UplinkProfile.CHAT
    assert UplinkProfile.parse("NOTIFY") is UplinkProfile.NOTIFY


def test_profile_from_str_unknown_returns_error() -> None:
    """Mirrors uplink/mod.rs::profile_from_str_unknown_returns_error"""
    with pytest.raises(ValueError, match="unknown uplink profile"):
        UplinkProfile.parse("bogus")


# --- golden JSON ----------------------------------------------------------------------------

FULL_DESCRIPTOR = UplinkDescriptor(
    id=FIXED_ID,
    name="discord-bot",
    platform="discord",
    source=WasmSource("discord-bridge"),
    capabilities=UplinkCapabilities.full(),
    profile=UplinkProfile.INTERACTIVE,
    registered_at=datetime(2025, 1, 2, 3, 4, 5, 120_000, tzinfo=UTC),
    metadata={"version": "1.0"},
)

GOLDEN_CASES: list[tuple[str, Any, Callable[[Any], Any]]] = [
    ("uplink_id.json", FIXED_ID, UplinkId.from_json),
    ("capabilities_full.json", UplinkCapabilities.full(), UplinkCapabilities.from_json),
    (
        "capabilities_notify_only.json",
        UplinkCapabilities.notify_only(),
        UplinkCapabilities.from_json,
    ),
    ("source_native.json", NativeSource(), UplinkSource.from_json),
    ("source_wasm.json", WasmSource("my-plugin-1"), UplinkSource.from_json),
    ("source_open_claw.json", OpenClawSource("bridge-42"), UplinkSource.from_json),
    ("descriptor.json", FULL_DESCRIPTOR, UplinkDescriptor.from_json),
    (
        "inbound_message.json",
        InboundMessage(
            uplink_id=FIXED_ID,
            platform="telegram",
            platform_user_id="12345",
            content="héllo \U0001f44b",
            context={"chat_id": 42, "tags": ["a", "b"]},
            thread_id=None,
            timestamp=datetime(2025, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC),
        ),
        InboundMessage.from_json,
    ),
]


@pytest.mark.parametrize(
    ("name", "value", "reader"), GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES]
)
def test_golden(name: str, value: Any, reader: Callable[[Any], Any]) -> None:
    data = (GOLDEN / name).read_bytes()
    assert dumps(value.to_json()).encode() == data
    assert reader(loads(data)) == value


def test_golden_directory_is_covered() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(c[0] for c in GOLDEN_CASES)


# --- further behaviour ----------------------------------------------------------------------


def test_max_uplinks_per_capsule() -> None:
    assert MAX_UPLINKS_PER_CAPSULE == 32


def test_uplink_id_accessors_and_hash() -> None:
    u = uuid.uuid4()
    uplink_id = UplinkId.from_uuid(u)
    assert uplink_id.as_uuid() == u
    assert UplinkId.from_uuid(u) == uplink_id
    assert len({uplink_id, UplinkId.from_uuid(u), UplinkId.default()}) == 2
    assert uplink_id.to_json() == str(u)


def test_uplink_id_reads_the_four_uuid_forms() -> None:
    u = uuid.UUID("6f1c9f8e-2b4a-4c3d-9e8f-0a1b2c3d4e5f")
    for form in (u.hex, str(u).upper(), "{" + str(u) + "}", "urn:uuid:" + str(u)):
        assert UplinkId.from_json(form) == UplinkId.from_uuid(u)


def test_capabilities_presets_leave_other_flags_false() -> None:
    notify = UplinkCapabilities.notify_only().to_json()
    receive = UplinkCapabilities.receive_only().to_json()
    assert [flag for flag, on in notify.items() if on] == ["can_send"]
    assert [flag for flag, on in receive.items() if on] == ["can_receive"]
    assert list(notify) == list(CAPABILITY_FLAGS)


def test_profile_parse_trims_after_lowercasing() -> None:
    assert UplinkProfile.parse(" chat ") is UplinkProfile.CHAT
    assert UplinkProfile.parse("\u3000Bridge\n") is UplinkProfile.BRIDGE
    with pytest.raises(ValueError) as info:
        UplinkProfile.parse("  BoGuS\t")
    assert str(info.value) == "unknown uplink profile: bogus"


def test_profile_json() -> None:
    assert UplinkProfile.NOTIFY.to_json() == "notify"
    assert UplinkProfile.from_json("bridge") is UplinkProfile.BRIDGE


def test_capsule_id_error_messages() -> None:
    cases = {
        "": "capsule_id must not be empty",
        "MyPlugin": 'capsule_id must start with [a-z0-9], got "MyPlugin"',
        "-bad": 'capsule_id must start with [a-z0-9], got "-bad"',
        "bad-": 'capsule_id must not end with a hyphen, got "bad-"',
        "path/../traversal": "capsule_id contains invalid character '/'",
        "a_b": "capsule_id contains invalid character '_'",
        "éa": 'capsule_id must start with [a-z0-9], got "éa"',
        "aéb": "capsule_id contains invalid character 'é'",
        "-x-": 'capsule_id must start with [a-z0-9], got "-x-"',
    }
    for capsule_id, message in cases.items():
        for make in (UplinkSource.new_wasm, UplinkSource.new_openclaw):
            with pytest.raises(UplinkError) as info:
                make(capsule_id)
            assert info.value.kind is UplinkErrorKind.INVALID_CAPSULE_ID
            assert info.value.detail == message
            assert str(info.value) == f"invalid capsule id: {message}"


def test_capsule_id_error_messages_use_rust_debug_quoting() -> None:
    cases = {
        'A"b\n': 'capsule_id must start with [a-z0-9], got "A\\"b\\n"',
        "-\\\t\r\0": 'capsule_id must start with [a-z0-9], got "-\\\\\\t\\r\\0"',
        "-'\u00a0\u200b\u0301": 'capsule_id must start with [a-z0-9], got "-\'\\u{a0}\\u{200b}\\u{301}"',
        "-é 😀": 'capsule_id must start with [a-z0-9], got "-é 😀"',
        "a'b": "capsule_id contains invalid character '\\''",
        'a"b': "capsule_id contains invalid character '\"'",
        "a\tb": "capsule_id contains invalid character '\\t'",
        "a b": "capsule_id contains invalid character ' '",
        "a\u0301b": "capsule_id contains invalid character '\\u{301}'",
        "a\x7fb": "capsule_id contains invalid character '\\u{7f}'",
        "a\u2028b": "capsule_id contains invalid character '\\u{2028}'",
    }
    for capsule_id, message in cases.items():
        with pytest.raises(UplinkError) as info:
            UplinkSource.new_wasm(capsule_id)
        assert info.value.detail == message


def test_capsule_id_allows_consecutive_hyphens_and_any_length() -> None:
    assert UplinkSource.new_wasm("a--b") == WasmSource("a--b")
    assert UplinkSource.new_openclaw("0" * 1000) == OpenClawSource("0" * 1000)
    assert UplinkSource.new_wasm("7") == WasmSource("7")


def test_direct_construction_and_deserialization_do_not_validate() -> None:
    assert WasmSource("Not Valid!").capsule_id == "Not Valid!"
    assert UplinkSource.from_json({"open_claw": {"capsule_id": "../x"}}) == OpenClawSource("../x")


def test_source_variants_are_distinct() -> None:
    wasm: UplinkSource = WasmSource("x")
    assert wasm != OpenClawSource("x")
    assert NativeSource() == UplinkSource.native()
    assert len({NativeSource(), NativeSource(), WasmSource("x"), OpenClawSource("x")}) == 3
    with pytest.raises(TypeError):
        UplinkSource()  # type: ignore[abstract]


def test_source_display_truncates_on_char_boundary() -> None:
    assert str(OpenClawSource("é" * 40)) == "openclaw(" + "é" * 32 + ")"
    assert str(WasmSource("a" + "😀" * 20)) == "wasm(a" + "😀" * 15 + ")"
    assert str(WasmSource("b" * 64)) == "wasm(" + "b" * 64 + ")"


def test_source_from_json_on_a_variant_class() -> None:
    assert WasmSource.from_json({"wasm": {"capsule_id": "x"}}) == WasmSource("x")
    assert NativeSource.from_json("native") == NativeSource()
    assert NativeSource.from_json({"native": None}) == NativeSource()
    with pytest.raises(SerdeError, match="WasmSource"):
        WasmSource.from_json("native")


def test_builder_normalizes_platform() -> None:
    descriptor = UplinkDescriptor.builder("bot", "  Discord\n").build()
    assert descriptor.platform == "discord"
    # only ASCII letters are lowercased
    assert UplinkDescriptor.builder("bot", "ÀB").build().platform == "Àb"
    message = InboundMessage.builder(UplinkId.new(), "\tTELEGRAM ", "u", "c").build()
    assert message.platform == "telegram"


def test_builder_assigns_fresh_id_and_time() -> None:
    builder = UplinkDescriptor.builder("bot", "x")
    before = datetime.now(UTC)
    first, second = builder.build(), builder.build()
    after = datetime.now(UTC)
    assert first.id != second.id
    assert before <= first.registered_at <= second.registered_at <= after
    assert first.registered_at.tzinfo is not None


def test_builder_metadata_overwrites_and_is_copied() -> None:
    builder = UplinkDescriptor.builder("bot", "x").metadata("k", "1").metadata("j", "2")
    first = builder.build()
    builder.metadata("k", "3")
    assert first.metadata == {"k": "1", "j": "2"}
    assert builder.build().metadata == {"k": "3", "j": "2"}


def test_descriptor_from_json_does_not_renormalize() -> None:
    data = FULL_DESCRIPTOR.to_json() | {"platform": "  DISCORD "}
    assert UplinkDescriptor.from_json(data).platform == "  DISCORD "


def test_descriptor_metadata_may_be_empty_but_not_missing() -> None:
    data = FULL_DESCRIPTOR.to_json() | {"metadata": {}}
    assert UplinkDescriptor.from_json(data).metadata == {}
    del data["metadata"]
    with pytest.raises(SerdeError, match="missing field `metadata`"):
        UplinkDescriptor.from_json(data)


def test_inbound_message_builder_defaults() -> None:
    before = datetime.now(UTC)
    message = InboundMessage.builder(FIXED_ID, "cli", "u", "c").build()
    assert message.context is None
    assert message.thread_id is None
    assert before <= message.timestamp <= datetime.now(UTC)
    assert message.to_json()["context"] is None
    assert message.to_json()["thread_id"] is None


def test_inbound_message_builder_timestamp_and_reads() -> None:
    when = datetime(2024, 6, 1, tzinfo=UTC)
    message = InboundMessage.builder(FIXED_ID, "cli", "u", "c").timestamp(when).build()
    assert message.timestamp == when
    data = message.to_json()
    del data["thread_id"]
    assert InboundMessage.from_json(data).thread_id is None
    data["context"] = None
    assert InboundMessage.from_json(data).context is None
    # relaxed RFC 3339 with an offset is converted to UTC
    data["timestamp"] = "2024-06-01T02:00:00+02:00"
    assert InboundMessage.from_json(data).timestamp == when


def test_uplink_error_is_an_exception_with_kind() -> None:
    error = UplinkError.send_failed("boom")
    assert isinstance(error, Exception)
    assert error.kind is UplinkErrorKind.SEND_FAILED
    assert error.detail == "boom"
    assert UplinkError.not_connected().detail is None
    with pytest.raises(ValueError):
        UplinkError(UplinkErrorKind.NOT_CONNECTED, "x")
    with pytest.raises(ValueError):
        UplinkError(UplinkErrorKind.SEND_FAILED)


# --- bad input ------------------------------------------------------------------------------

BAD_CAPABILITIES = [
    (
        {flag: True for flag in CAPABILITY_FLAGS if flag != "supports_threads"},
        "missing field `supports_threads`",
    ),
    ({flag: True for flag in CAPABILITY_FLAGS} | {"can_send": 1}, "can_send must be a boolean"),
    ({flag: True for flag in CAPABILITY_FLAGS} | {"can_elicit": None}, "can_elicit must be a"),
    ([True] * 7, "must be a JSON object"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CAPABILITIES)
def test_capabilities_reject_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        UplinkCapabilities.from_json(data)


BAD_SOURCES = [
    ({"shell": {"capsule_id": "x"}}, "unknown variant `shell`"),
    ("openclaw", "unknown variant `openclaw`"),
    ("Native", "unknown variant `Native`"),
    ({"wasm": {"capsule_id": "x"}, "native": None}, "exactly one key"),
    ({}, "exactly one key"),
    ("wasm", "UplinkSource.wasm must be a JSON object"),
    ({"wasm": {}}, "missing field `capsule_id`"),
    ({"open_claw": {"capsule_id": 7}}, "UplinkSource.open_claw.capsule_id must be a string"),
    ({"native": {"x": 1}}, "variant `native` takes no data"),
    (None, "expected a variant name"),
    (["native"], "expected a variant name"),
]


@pytest.mark.parametrize(("data", "message"), BAD_SOURCES)
def test_source_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        UplinkSource.from_json(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("Chat", "unknown variant `Chat`"),
        ("", "unknown variant ``"),
        (3, "UplinkProfile must be a string, got a number"),
        ({"chat": None}, "UplinkProfile must be a string, got an object"),
    ],
)
def test_profile_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        UplinkProfile.from_json(data)


@pytest.mark.parametrize("data", [7, None, "not-a-uuid", "6f1c9f8e2b4a-4c3d-9e8f-0a1b2c3d4e5f"])
def test_uplink_id_rejects_bad_input(data: Any) -> None:
    with pytest.raises(SerdeError, match="UplinkId"):
        UplinkId.from_json(data)


def _descriptor_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = FULL_DESCRIPTOR.to_json()
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_descriptor_json(id=...), "UplinkDescriptor: missing field `id`"),
        (_descriptor_json(name=...), "UplinkDescriptor: missing field `name`"),
        (_descriptor_json(source=...), "UplinkDescriptor: missing field `source`"),
        (_descriptor_json(profile=...), "UplinkDescriptor: missing field `profile`"),
        (_descriptor_json(registered_at=...), "missing field `registered_at`"),
        (_descriptor_json(id="x"), "UplinkDescriptor.id"),
        (_descriptor_json(name=None), "UplinkDescriptor.name must be a string"),
        (_descriptor_json(profile="oauth"), "UplinkDescriptor.profile: unknown variant `oauth`"),
        (_descriptor_json(source={"shell": {}}), "UplinkDescriptor.source: unknown variant"),
        (
            _descriptor_json(capabilities={"can_receive": True}),
            "UplinkDescriptor.capabilities: missing field `can_send`",
        ),
        (_descriptor_json(registered_at="2025-01-02T03:04:05"), "UplinkDescriptor.registered_at"),
        (_descriptor_json(registered_at=0), "UplinkDescriptor.registered_at must be a string"),
        (_descriptor_json(metadata={"k": 1}), "UplinkDescriptor.metadata.k must be a string"),
        (_descriptor_json(metadata=[]), "UplinkDescriptor.metadata must be an object"),
        ("descriptor", "UplinkDescriptor must be a JSON object"),
    ],
)
def test_descriptor_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        UplinkDescriptor.from_json(data)


def _message_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = InboundMessage.builder(FIXED_ID, "cli", "u", "c").build().to_json()
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_message_json(context=...), "InboundMessage: missing field `context`"),
        (_message_json(uplink_id=...), "InboundMessage: missing field `uplink_id`"),
        (_message_json(content=...), "InboundMessage: missing field `content`"),
        (_message_json(timestamp=...), "InboundMessage: missing field `timestamp`"),
        (_message_json(platform_user_id=5), "InboundMessage.platform_user_id must be a string"),
        (_message_json(thread_id=1), "InboundMessage.thread_id must be a string"),
        (_message_json(uplink_id="nope"), "InboundMessage.uplink_id"),
    ],
)
def test_inbound_message_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        InboundMessage.from_json(data)


# --- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
utc_datetimes = st.datetimes(timezones=st.just(UTC))
uplink_ids = st.uuids().map(UplinkId.from_uuid)
capabilities = st.builds(UplinkCapabilities, *[st.booleans()] * len(CAPABILITY_FLAGS))
profiles = st.sampled_from(UplinkProfile)
sources = st.one_of(
    st.just(NativeSource()), st.builds(WasmSource, st.text()), st.builds(OpenClawSource, st.text())
)
descriptors = st.builds(
    UplinkDescriptor,
    id=uplink_ids,
    name=st.text(),
    platform=st.text(),
    source=sources,
    capabilities=capabilities,
    profile=profiles,
    registered_at=utc_datetimes,
    metadata=st.dictionaries(st.text(), st.text(), max_size=4),
)
messages = st.builds(
    InboundMessage,
    uplink_id=uplink_ids,
    platform=st.text(),
    platform_user_id=st.text(),
    content=st.text(),
    context=json_values,
    thread_id=st.none() | st.text(),
    timestamp=utc_datetimes,
)


@given(
    st.one_of(
        st.tuples(uplink_ids, st.just(UplinkId.from_json)),
        st.tuples(capabilities, st.just(UplinkCapabilities.from_json)),
        st.tuples(profiles, st.just(UplinkProfile.from_json)),
        st.tuples(sources, st.just(UplinkSource.from_json)),
        st.tuples(descriptors, st.just(UplinkDescriptor.from_json)),
        st.tuples(messages, st.just(InboundMessage.from_json)),
    )
)
def test_every_type_roundtrips_through_json(case: tuple[Any, Callable[[Any], Any]]) -> None:
    value, reader = case
    text = dumps(value.to_json())
    back = reader(loads(text))
    assert back == value
    assert dumps(back.to_json()) == text


@given(st.datetimes(timezones=st.just(UTC)), st.integers(min_value=-23 * 60, max_value=23 * 60))
def test_descriptor_timestamp_offsets_read_as_utc(when: datetime, minutes: int) -> None:
    data = FULL_DESCRIPTOR.to_json()
    offset = timedelta(minutes=minutes)
    try:
        local = when.astimezone(timezone(offset))
    except OverflowError:
        return
    data["registered_at"] = local.isoformat()
    assert UplinkDescriptor.from_json(data).registered_at == when


CAPSULE_ID_ORACLE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
capsule_id_candidates = st.text(
    alphabet=st.sampled_from("az09-_A Z/.é\n") | st.characters(), max_size=12
) | st.from_regex(CAPSULE_ID_ORACLE, fullmatch=True)


@given(capsule_id_candidates)
def test_new_wasm_matches_regex_oracle(capsule_id: str) -> None:
    valid = CAPSULE_ID_ORACLE.fullmatch(capsule_id) is not None
    for make, variant in (
        (UplinkSource.new_wasm, WasmSource),
        (UplinkSource.new_openclaw, OpenClawSource),
    ):
        if valid:
            assert make(capsule_id) == variant(capsule_id)
        else:
            with pytest.raises(UplinkError) as info:
                make(capsule_id)
            assert info.value.kind is UplinkErrorKind.INVALID_CAPSULE_ID
            assert str(info.value).startswith("invalid capsule id: capsule_id ")


@given(st.text(), st.sampled_from([(WasmSource, "wasm"), (OpenClawSource, "openclaw")]))
def test_source_display_truncation(capsule_id: str, variant: tuple[Any, str]) -> None:
    cls, label = variant
    shown = str(cls(capsule_id))
    assert shown.startswith(label + "(")
    assert shown.endswith(")")
    part = shown[len(label) + 1 : -1]
    assert len(part.encode()) <= 64
    assert capsule_id.startswith(part)
    if part != capsule_id:
        # the prefix is the longest that fits: one more character would exceed 64 bytes
        assert len(capsule_id[: len(part) + 1].encode()) > 64


@given(
    st.sampled_from(UplinkProfile),
    st.text(alphabet=UNICODE_WHITESPACE, max_size=3),
    st.text(alphabet=UNICODE_WHITESPACE, max_size=3),
    st.lists(st.booleans(), min_size=11, max_size=11),
)
def test_profile_parse_ignores_case_and_whitespace(
    profile: UplinkProfile, left: str, right: str, upper: list[bool]
) -> None:
    name = "".join(c.upper() if up else c for c, up in zip(profile.value, upper, strict=False))
    assert UplinkProfile.parse(left + name + right) is profile


@given(st.text(max_size=15) | st.sampled_from(["chat", " NOTIFY ", "Bridge\u2003", "\x1fchat"]))
def test_profile_parse_matches_oracle(text: str) -> None:
    expected = strip_unicode_whitespace(text.lower())
    if expected in {"chat", "interactive", "notify", "bridge"}:
        assert UplinkProfile.parse(text).value == expected
    else:
        with pytest.raises(ValueError) as info:
            UplinkProfile.parse(text)
        assert str(info.value) == f"unknown uplink profile: {expected}"


def test_timestamps_must_be_aware_and_are_stored_in_utc() -> None:
    naive = datetime(2025, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="registered_at"):
        UplinkDescriptor(
            FIXED_ID, "n", "p", NativeSource(), UplinkCapabilities(), UplinkProfile.CHAT, naive, {}
        )
    with pytest.raises(ValueError, match="timestamp"):
        InboundMessage.builder(FIXED_ID, "cli", "u", "c").timestamp(naive).build()
    plus_two = timezone(timedelta(hours=2))
    message = (
        InboundMessage.builder(FIXED_ID, "cli", "u", "c")
        .timestamp(datetime(2025, 1, 2, 5, 4, 5, tzinfo=plus_two))
        .build()
    )
    assert message.timestamp.tzinfo is UTC
    assert message.to_json()["timestamp"] == "2025-01-02T03:04:05Z"
