"""The IPC syscalls through a real broker and real workers (syscalls.md §2.2, §2.3, §2.9, §2.14, §3).

Every error text of publish/subscribe/unsubscribe/poll/recv and of the uplink syscalls is seen as a
trap by the calling guest; the reference's ACL matrix runs through real publish and subscribe
calls; envelopes, ordering, lag, blocking recv, run-loop interceptor handles (the ``listener``
capsule), interceptors of tool capsules and ``astrid_trigger_hook`` (the ``hooker`` capsule),
``astrid_check_capsule_capability``, tools over the bus and uplinks on the bus.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astrid_core.dirs import AstridHome
from astrid_core.launch import Event
from astrid_core.rpc import Method, RpcError
from supervisor.client import SystemClient
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
EM = "\u2014"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")

EMPTY_SEGMENTS = (
    "Topic contains empty segments (consecutive dots, leading/trailing dots, or is empty)"
)
PATTERN_EMPTY_SEGMENTS = (
    "Topic pattern contains empty segments (consecutive dots, leading/trailing dots, or is empty)"
)
MID_WILDCARD = (
    "Wildcard `*` is only supported as the last segment (e.g. `foo.bar.*`). "
    "Mid-segment wildcards like `a.*.b` are not supported by the event bus."
)


def no_publish(capsule: str) -> str:
    return (
        f"Capsule '{capsule}' has no ipc_publish declarations {EM} publishing is denied. "
        "Add ipc_publish patterns to Capsule.toml [capabilities]"
    )


def no_subscribe(capsule: str) -> str:
    return (
        f"Capsule '{capsule}' has no ipc_subscribe declarations - subscribing is denied. "
        "Add ipc_subscribe patterns to Capsule.toml [capabilities]"
    )


def publish_denied(capsule: str, topic: str, patterns: str) -> str:
    return (
        f"Capsule '{capsule}' is not allowed to publish to topic '{topic}' {EM} "
        f"declared ipc_publish patterns: {patterns}"
    )


def subscribe_denied(capsule: str, pattern: str, acl: str) -> str:
    return (
        f"Capsule '{capsule}' is not allowed to subscribe to topic '{pattern}' - "
        f"declared ipc_subscribe patterns: {acl}"
    )


Call = tuple[str, Sequence[bytes | Fill]]


def publish(topic: bytes, payload: bytes | Fill) -> Call:
    return ("astrid_ipc_publish", [topic, payload])


def subscribe(pattern: bytes) -> Call:
    return ("astrid_ipc_subscribe", [pattern])


def unsubscribe(handle: bytes) -> Call:
    return ("astrid_ipc_unsubscribe", [handle])


def poll(handle: bytes) -> Call:
    return ("astrid_ipc_poll", [handle])


def recv(handle: bytes, timeout_ms: bytes) -> Call:
    return ("astrid_ipc_recv", [handle, timeout_ms])


def register(name: bytes, platform: bytes, profile: bytes) -> Call:
    return ("astrid_uplink_register", [name, platform, profile])


def send(uplink_id: bytes, user: bytes, content: bytes | Fill) -> Call:
    return ("astrid_uplink_send", [uplink_id, user, content])


def trigger(request: bytes | Fill) -> Call:
    return ("astrid_trigger_hook", [request])


def check(request: bytes | Fill) -> Call:
    return ("astrid_check_capsule_capability", [request])


class Syscaller:
    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def run(self, calls: Sequence[Call], **flags: bool) -> list[bytes | None]:
        arguments = json.loads(script_tool_args(encode_script(calls, **flags)))
        return decode_hex_output(self.client.call_tool(self.name, "run", arguments, timeout=60))

    def value(self, call: Call) -> bytes:
        (result,) = self.run([call])
        assert result is not None
        return result

    def json(self, call: Call) -> Any:
        return json.loads(self.value(call))

    def trap(self, calls: Sequence[Call], **flags: bool) -> str:
        with pytest.raises(RpcError) as info:
            self.run(calls, **flags)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")

    def subscribe(self, pattern: str) -> bytes:
        handle = self.value(subscribe(pattern.encode()))
        assert handle.isdigit(), handle
        return handle

    def poll(self, handle: bytes) -> dict[str, Any]:
        envelope: dict[str, Any] = self.json(poll(handle))
        return envelope


def read_kv(home: Path, capsule: str, key: str) -> bytes | None:
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT value FROM kv WHERE ns = ? AND key = ?", (f"capsule:{capsule}", key.encode())
        ).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


def wait_until(condition: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def operator_publish(client: Client, topic: str, payload: Any) -> int:
    result = client.request(Method.BUS_PUBLISH, {"topic": topic, "payload": payload})
    return int(result["delivered"])


# --------------------------------------------------------------------------------------------
# The module's runtime: one broker, syscaller copies with different grants, hello-tool

PUBLISH_GRANTS = '["test.*", "test.*.*", "demo.*", "alerts.v1.*", "deep.*.*.*.*.*.*.*"]'
SUBSCRIBE_GRANTS = '["test.*", "test.*.*", "demo.*", "tool.v1.execute.*"]'
GRANTED = f"""
[capabilities]
ipc_publish = {PUBLISH_GRANTS}
ipc_subscribe = {SUBSCRIBE_GRANTS}
"""
CAPSULES = {
    "syscaller": "",
    "pubsub": GRANTED.replace("[capabilities]", "[capabilities]\nallow_prompt_injection = true"),
    "peer": GRANTED,
    "subs": '[capabilities]\nipc_subscribe = ["many.*"]\n',
    "acl-a": (
        "[capabilities]\n"
        'ipc_publish = ["registry.v1.*", "exact.topic"]\n'
        'ipc_subscribe = ["registry.v1.*", "foo.*"]\n'
    ),
    "acl-b": '[capabilities]\nipc_subscribe = ["foo.bar"]\n',
    "acl-c": '[capabilities]\nipc_subscribe = ["foo..bar"]\n',
    "uplinker": (
        '[capabilities]\nipc_subscribe = ["uplink.v1.inbound.*"]\n\n'
        '[[uplink]]\nname = "bot"\nplatform = "discord"\nprofile = "chat"\n'
    ),
    "uplimit": "",
    "trailing-": "",
}


@dataclass
class World:
    runtime: Runtime
    client: Client

    @property
    def home(self) -> Path:
        return self.runtime.home

    def __getitem__(self, name: str) -> Syscaller:
        return Syscaller(self.client, name)


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ipc")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    try:
        for name, extra in CAPSULES.items():
            runtime.start_worker(
                copy_capsule(capsules["syscaller"], base / "caps", name=name, extra_toml=extra)
            )
        runtime.start_worker(capsules["hello-tool"])
        client = runtime.client()
        yield World(runtime, client)
        client.close()
    finally:
        runtime.stop()


# --------------------------------------------------------------------------------------------
# ipc_publish: every check, in order


@pytest.mark.parametrize(
    ("capsule", "calls", "text"),
    [
        (
            "pubsub",
            [publish(b"t" * 257, Fill(ord(" "), 5 * MiB + 1))],
            "Topic exceeds maximum allowed length (256 bytes)",
        ),
        # The quota is checked before the empty-ACL denial (reference: publish_large).
        ("syscaller", [publish(b"test.large", Fill(ord("x"), 5 * MiB + 1))], "Payload too large"),
        ("pubsub", [publish(b"test.\xff", b"{}")], "Topic is not valid UTF-8"),
        ("pubsub", [publish(b"", b"{}")], EMPTY_SEGMENTS),
        ("pubsub", [publish(b"test..x", b"{}")], EMPTY_SEGMENTS),
        ("pubsub", [publish(b".test", b"{}")], EMPTY_SEGMENTS),
        ("pubsub", [publish(b"test.", b"{}")], EMPTY_SEGMENTS),
        (
            "pubsub",
            [publish(b"deep.a.b.c.d.e.f.g.h", b"{}")],
            "Topic exceeds maximum allowed segments (8)",
        ),
        ("syscaller", [publish(b"test.x", b"{}")], no_publish("syscaller")),
        (
            "pubsub",
            [publish(b"other.x", b"{}")],
            publish_denied("pubsub", "other.x", PUBLISH_GRANTS),
        ),
        ("pubsub", [publish(b"test.x", b"{not json")], "IPC payload is not valid JSON"),
        ("pubsub", [publish(b"test.x", b"")], "IPC payload is not valid JSON"),
        ("pubsub", [publish(b"test.x", b"\xff")], "IPC payload is not valid JSON"),
        # More digits than Python converts to int (serde_json: "number out of range").
        ("pubsub", [publish(b"test.x", Fill(ord("1"), 5000))], "IPC payload is not valid JSON"),
    ],
    ids=[
        "topic-257",
        "payload-5MiB+1",
        "topic-not-utf8",
        "topic-empty",
        "topic-double-dot",
        "topic-leading-dot",
        "topic-trailing-dot",
        "topic-9-segments",
        "no-declarations",
        "outside-the-grants",
        "payload-not-json",
        "payload-empty",
        "payload-not-utf8",
        "payload-5000-digits",
    ],
)
def test_publish_errors_trap_with_the_spec_text(
    world: World, capsule: str, calls: list[Call], text: str
) -> None:
    assert world[capsule].trap(calls) == text


def test_the_publish_denial_lists_the_grants_as_a_rust_debug_list(world: World) -> None:
    text = world["pubsub"].trap([publish(b"other.x", b"{}")])
    assert text.endswith(
        'declared ipc_publish patterns: ["test.*", "test.*.*", "demo.*", "alerts.v1.*", '
        '"deep.*.*.*.*.*.*.*"]'
    )


def test_a_256_byte_topic_and_8_segments_are_accepted(world: World) -> None:
    pubsub = world["pubsub"]
    topic = b"test." + b"x" * 251
    assert len(topic) == 256
    assert pubsub.run([publish(topic, b"{}")]) == [None]
    assert pubsub.run([publish(b"deep.a.b.c.d.e.f.g", b"1")]) == [None]
    # A 257-byte topic fails on its length before anything else, even for a denied capsule.
    assert world["syscaller"].trap([publish(topic + b"x", b"{}")]) == (
        "Topic exceeds maximum allowed length (256 bytes)"
    )


def test_a_5_MiB_payload_is_accepted(world: World) -> None:
    """5 MiB exactly passes the quota; whitespace is not JSON, so it then fails there."""
    assert world["peer"].trap([publish(b"test.big", Fill(ord(" "), 5 * MiB))]) == (
        "IPC payload is not valid JSON"
    )


def test_the_rate_limit_charges_rejected_publishes_and_resets_after_a_second(
    world: World,
) -> None:
    """10 MiB per second per capsule; bytes count even when a later check rejects them."""
    syscaller = world["uplimit"]  # no grants: every publish is denied after the quota check
    for _attempt in range(3):
        time.sleep(1.1)  # a fresh window
        started = time.monotonic()
        first = syscaller.trap([publish(b"test.x", Fill(ord(" "), 5 * MiB))])
        second = syscaller.trap([publish(b"test.x", Fill(ord(" "), 5 * MiB))])
        third = syscaller.trap([publish(b"test.x", b"{}")])
        if time.monotonic() - started < 0.9:
            break
    else:
        pytest.skip("the machine is too slow to publish 10 MiB within one second")
    assert first == second == no_publish("uplimit")
    assert third == "Rate limit exceeded"
    time.sleep(1.1)
    assert syscaller.trap([publish(b"test.x", b"{}")]) == no_publish("uplimit")


def test_a_capsule_publishing_in_a_loop_hits_the_rate_limit(world: World) -> None:
    payload = json.dumps("x" * (256 * 1024)).encode()
    text = world["peer"].trap([publish(b"test.flood", payload)], repeat=True)
    assert text == "Rate limit exceeded"


# --------------------------------------------------------------------------------------------
# ipc_subscribe: every check, in order


@pytest.mark.parametrize(
    ("capsule", "pattern", "text"),
    [
        ("pubsub", b"t" * 257, "Topic pattern exceeds maximum allowed length (256 bytes)"),
        ("pubsub", b"test.\xff", "Topic pattern is not valid UTF-8"),
        ("pubsub", b"", PATTERN_EMPTY_SEGMENTS),
        ("pubsub", b"a..b", PATTERN_EMPTY_SEGMENTS),
        ("pubsub", b"a.", PATTERN_EMPTY_SEGMENTS),
        ("pubsub", b"a.*.b", MID_WILDCARD),
        ("pubsub", b"*.a", MID_WILDCARD),
        ("pubsub", b"a.*.b.c.d.e.f.g.h", MID_WILDCARD),  # the wildcard check comes first
        ("pubsub", b"a.b.c.d.e.f.g.h.i", "Topic pattern exceeds maximum allowed segments (8)"),
        ("pubsub", b"a.b.c.d.e.f.g.h.*", "Topic pattern exceeds maximum allowed segments (8)"),
        ("syscaller", b"test.x", no_subscribe("syscaller")),
        (
            "pubsub",
            b"other.*",
            subscribe_denied(
                "pubsub", "other.*", '["test.*", "test.*.*", "demo.*", "tool.v1.execute.*"]'
            ),
        ),
    ],
    ids=[
        "pattern-257",
        "pattern-not-utf8",
        "pattern-empty",
        "pattern-double-dot",
        "pattern-trailing-dot",
        "mid-wildcard",
        "leading-wildcard",
        "mid-wildcard-and-9-segments",
        "9-segments",
        "9-segments-trailing-wildcard",
        "no-declarations",
        "outside-the-grants",
    ],
)
def test_subscribe_errors_trap_with_the_spec_text(
    world: World, capsule: str, pattern: bytes, text: str
) -> None:
    assert world[capsule].trap([subscribe(pattern)]) == text


def test_the_129th_subscription_traps_and_handles_are_never_reused(world: World) -> None:
    """Mirrors the reference's subscribe_loop: 128 subscriptions, then a trap."""
    subs = world["subs"]
    handles = subs.run([subscribe(b"many.x")] * 128)
    assert handles == [str(i).encode() for i in range(1, 129)]
    assert subs.trap([subscribe(b"many.x")]) == "Subscription limit reached (128 max per plugin)"
    assert subs.run([unsubscribe(b"128"), subscribe(b"many.y")]) == [None, b"129"]
    assert subs.trap([subscribe(b"many.z")]) == "Subscription limit reached (128 max per plugin)"
    subs.run([unsubscribe(str(i).encode()) for i in (*range(1, 128), 129)])
    assert subs.run([subscribe(b"many.x")]) == [b"130"]


# --------------------------------------------------------------------------------------------
# The reference's ACL matrix (host/ipc.rs), through real publish and subscribe calls


def test_acl_empty_denies_everything(world: World) -> None:
    syscaller = world["syscaller"]
    assert syscaller.trap([publish(b"a.b", b"1")]) == no_publish("syscaller")
    assert syscaller.trap([subscribe(b"a.b")]) == no_subscribe("syscaller")


def test_acl_exact_entry(world: World) -> None:
    acl = world["acl-a"]
    assert acl.run([publish(b"exact.topic", b"1")]) == [None]
    assert acl.trap([publish(b"exact.other", b"1")]) == publish_denied(
        "acl-a", "exact.other", '["registry.v1.*", "exact.topic"]'
    )
    assert world["acl-b"].subscribe("foo.bar").isdigit()


def test_acl_wildcard_matches_one_segment_only(world: World) -> None:
    acl = world["acl-a"]
    assert acl.run([publish(b"registry.v1.providers", b"1")]) == [None]
    assert acl.trap([publish(b"registry.v1.selection.callback", b"1")]) == publish_denied(
        "acl-a", "registry.v1.selection.callback", '["registry.v1.*", "exact.topic"]'
    )
    assert acl.subscribe("registry.v1.providers").isdigit()
    assert acl.trap([subscribe(b"registry.v1.selection.callback")]) == subscribe_denied(
        "acl-a", "registry.v1.selection.callback", '["registry.v1.*", "foo.*"]'
    )


def test_acl_wildcard_allows_subscribing_to_the_wildcard_itself(world: World) -> None:
    acl = world["acl-a"]
    assert acl.subscribe("foo.*").isdigit()
    assert acl.subscribe("foo.bar").isdigit()
    assert acl.subscribe("registry.v1.*").isdigit()
    assert acl.trap([subscribe(b"foo.*.*")]) == MID_WILDCARD
    assert acl.trap([subscribe(b"foo.bar.*")]) == subscribe_denied(
        "acl-a", "foo.bar.*", '["registry.v1.*", "foo.*"]'
    )


def test_acl_exact_entry_does_not_allow_a_wildcard(world: World) -> None:
    assert world["acl-b"].trap([subscribe(b"foo.*")]) == subscribe_denied(
        "acl-b", "foo.*", '["foo.bar"]'
    )


def test_acl_malformed_entry_denies(world: World) -> None:
    acl = world["acl-c"]
    for pattern in ("foo.bar", "foo.*", "foo"):
        assert acl.trap([subscribe(pattern.encode())]) == subscribe_denied(
            "acl-c", pattern, '["foo..bar"]'
        )


def test_a_granted_wildcard_subscription_receives_any_depth(world: World) -> None:
    """The ACL gates the pattern string; delivery uses bus matching (§3.1)."""
    acl = world["acl-a"]
    handle = acl.subscribe("registry.v1.*")
    world["acl-a"].run([publish(b"registry.v1.providers", b"1")])
    operator_publish(world.client, "registry.v1.a.b.c", 2)
    operator_publish(world.client, "registry.v1", 3)
    envelope = acl.poll(handle)
    assert [m["topic"] for m in envelope["messages"]] == [
        "registry.v1.providers",
        "registry.v1.a.b.c",
    ]


# --------------------------------------------------------------------------------------------
# unsubscribe, poll, recv: handle and timeout errors

BAD_HANDLES = [
    (
        b"\xff",
        "Subscription handle is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
    ),
    (
        b"1\xe2\x82",
        "Subscription handle is not valid UTF-8: incomplete utf-8 byte sequence from index 1",
    ),
    (b"", "Invalid subscription handle format: cannot parse integer from empty string"),
    (b"abc", "Invalid subscription handle format: invalid digit found in string"),
    (b" 1", "Invalid subscription handle format: invalid digit found in string"),
    (b"1 ", "Invalid subscription handle format: invalid digit found in string"),
    (b"-1", "Invalid subscription handle format: invalid digit found in string"),
    (b"+", "Invalid subscription handle format: invalid digit found in string"),
    (b"1.0", "Invalid subscription handle format: invalid digit found in string"),
    (
        b"18446744073709551616",
        "Invalid subscription handle format: number too large to fit in target type",
    ),
    (
        b"99999999999999999999x",
        "Invalid subscription handle format: number too large to fit in target type",
    ),
    (b"18446744073709551615", "Subscription handle not found"),
    (b"+999", "Subscription handle not found"),
    (b"0", "Subscription handle not found"),
]
BAD_HANDLE_IDS = [
    "not-utf8",
    "incomplete-utf8",
    "empty",
    "letters",
    "leading-space",
    "trailing-space",
    "negative",
    "plus-only",
    "decimal",
    "u64-overflow",
    "overflow-before-bad-digit",
    "u64-max-unknown",
    "plus-sign-unknown",
    "zero-unknown",
]


@pytest.mark.parametrize(("handle", "text"), BAD_HANDLES, ids=BAD_HANDLE_IDS)
def test_unsubscribe_handle_errors(world: World, handle: bytes, text: str) -> None:
    assert world["peer"].trap([unsubscribe(handle)]) == text


@pytest.mark.parametrize(("handle", "text"), BAD_HANDLES, ids=BAD_HANDLE_IDS)
def test_poll_handle_errors(world: World, handle: bytes, text: str) -> None:
    assert world["peer"].trap([poll(handle)]) == text


@pytest.mark.parametrize(("handle", "text"), BAD_HANDLES, ids=BAD_HANDLE_IDS)
def test_recv_handle_errors(world: World, handle: bytes, text: str) -> None:
    assert world["peer"].trap([recv(handle, b"0")]) == text


def test_a_33_byte_handle_is_refused(world: World) -> None:
    handle = b"1" * 33
    peer = world["peer"]
    assert peer.trap([unsubscribe(handle)]) == "Subscription handle exceeds maximum allowed length"
    assert peer.trap([poll(handle)]) == "Subscription handle exceeds maximum allowed length"
    assert peer.trap([recv(handle, b"0")]) == (
        "memory allocation of 33 bytes exceeds maximum allowed limit of 32 bytes"
    )
    # 32 bytes pass the length check and then fail to parse.
    assert peer.trap([poll(b"1" * 32)]) == (
        "Invalid subscription handle format: number too large to fit in target type"
    )


@pytest.mark.parametrize(
    ("timeout", "text"),
    [
        (b"\xff", "Timeout is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0"),
        (b"", "Invalid timeout format: cannot parse integer from empty string"),
        (b"soon", "Invalid timeout format: invalid digit found in string"),
        (b"-5", "Invalid timeout format: invalid digit found in string"),
        (b"1.5", "Invalid timeout format: invalid digit found in string"),
        (b"18446744073709551616", "Invalid timeout format: number too large to fit in target type"),
        (b"1" * 33, "memory allocation of 33 bytes exceeds maximum allowed limit of 32 bytes"),
    ],
    ids=["not-utf8", "empty", "word", "negative", "decimal", "u64-overflow", "33-bytes"],
)
def test_recv_timeout_errors(world: World, timeout: bytes, text: str) -> None:
    peer = world["peer"]
    handle = peer.subscribe("test.timeouts")
    assert peer.trap([recv(handle, timeout)]) == text
    peer.run([unsubscribe(handle)])


def test_unsubscribe_ends_delivery_and_the_handle(world: World) -> None:
    peer = world["peer"]
    handle = peer.subscribe("test.unsub")
    results = peer.run(
        [
            publish(b"test.unsub", b"1"),
            unsubscribe(handle),
            publish(b"test.unsub", b"2"),
        ]
    )
    assert results == [None, None, None]
    assert peer.trap([poll(handle)]) == "Subscription handle not found"
    assert peer.trap([unsubscribe(handle)]) == "Subscription handle not found"
    assert peer.trap([recv(handle, b"0")]) == "Subscription handle not found"


def test_a_tool_capsule_has_no_interceptor_handles(world: World) -> None:
    assert world["peer"].value(("astrid_get_interceptor_handles", [])) == b"[]"


# --------------------------------------------------------------------------------------------
# Envelopes, ordering, lag


def test_subscribe_publish_poll_in_one_call_and_the_envelope(world: World) -> None:
    pubsub = world["pubsub"]
    before = time.time()
    results = pubsub.run(
        [
            subscribe(b"test.*"),
            publish(b"test.env", b'{"hello":"world","n":[1,2.5,null]}'),
            publish(b"test.env", b'"a bare string"'),
            publish(b"test.env", b'{"type":"user_input","text":"hi"}'),
            publish(b"test.env", b'{"type":"custom","data":{"inner":true}}'),
            publish(b"test.env", b'{"type":"connect"}'),
            publish(b"test.env", b'{"type":"user_input"}'),
            publish(b"test.env", b'{"source_id":"forged","signature":"forged"}'),
            publish(b"test.other.deeper", b"1"),  # "test.*" matches one or more segments
        ]
    )
    handle = results[0]
    assert handle is not None
    envelope = json.loads(pubsub.value(poll(handle)))
    after = time.time()
    assert list(envelope) == ["messages", "dropped", "lagged"]
    assert (envelope["dropped"], envelope["lagged"]) == (0, 0)
    messages = envelope["messages"]
    assert [m["topic"] for m in messages] == ["test.env"] * 7 + ["test.other.deeper"]
    assert [m["payload"] for m in messages] == [
        {"type": "custom", "data": {"hello": "world", "n": [1, 2.5, None]}},
        {"type": "custom", "data": "a bare string"},
        {"type": "user_input", "text": "hi", "session_id": "default"},
        {"type": "custom", "data": {"inner": True}},
        {"type": "connect"},
        {"type": "custom", "data": {"type": "user_input"}},
        {"type": "custom", "data": {"source_id": "forged", "signature": "forged"}},
        {"type": "custom", "data": 1},
    ]
    for m in messages:
        assert list(m) == ["topic", "payload", "signature", "source_id", "timestamp"]
        assert m["signature"] is None
        assert UUID_RE.match(m["source_id"]) and m["source_id"] != NIL_UUID
        assert RFC3339_Z.match(m["timestamp"]), m["timestamp"]
        stamp = time.mktime(time.strptime(m["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert before - 2 <= stamp <= after + 2
    assert len({m["source_id"] for m in messages}) == 1
    # Nothing left: a second poll is empty.
    assert pubsub.value(poll(handle)) == b'{"messages":[],"dropped":0,"lagged":0}'
    pubsub.run([unsubscribe(handle)])


def test_source_id_is_the_publishing_capsule_instance(world: World) -> None:
    pubsub, peer = world["pubsub"], world["peer"]
    handle = pubsub.subscribe("test.source")
    pubsub.run([publish(b"test.source", b"1"), publish(b"test.source", b"2")])
    peer.run([publish(b"test.source", b"3")])
    operator_publish(world.client, "test.source", 4)
    messages = pubsub.poll(handle)["messages"]
    pubsub.run([unsubscribe(handle)])
    ids = [m["source_id"] for m in messages]
    assert [m["payload"]["data"] for m in messages] == [1, 2, 3, 4]
    assert ids[0] == ids[1]
    assert ids[2] != ids[0]
    assert ids[3] not in (ids[0], ids[2])
    assert all(UUID_RE.match(i) for i in ids)


def test_order_is_the_publish_order(world: World) -> None:
    pubsub, peer = world["pubsub"], world["peer"]
    handle = pubsub.subscribe("test.*")
    peer.run([publish(f"test.o{i % 3}".encode(), str(i).encode()) for i in range(200)])
    pubsub.run([publish(b"test.o9", b"200")])
    messages = pubsub.poll(handle)["messages"]
    pubsub.run([unsubscribe(handle)])
    assert [m["payload"]["data"] for m in messages] == list(range(201))
    assert [m["topic"] for m in messages[:4]] == ["test.o0", "test.o1", "test.o2", "test.o0"]


def test_a_subscriber_more_than_1024_messages_behind_reports_lag(world: World) -> None:
    peer = world["peer"]
    handle = peer.subscribe("test.lag")
    for i in range(1030):
        operator_publish(world.client, "test.lag", i)
    envelope = peer.poll(handle)
    assert envelope["lagged"] == 6
    assert envelope["dropped"] == 0
    assert [m["payload"]["data"] for m in envelope["messages"]] == list(range(6, 1030))
    operator_publish(world.client, "test.lag", "next")
    again = peer.poll(handle)
    assert again["lagged"] == 0
    assert [m["payload"]["data"] for m in again["messages"]] == ["next"]
    peer.run([unsubscribe(handle)])


def test_a_drain_over_10_MiB_drops_exactly_one_message(world: World) -> None:
    """Payloads totalling more than the 10 MiB budget: the first one over it is discarded.

    The 8 MiB envelope of the first poll does not fit the syscaller's 1 MiB results buffer (the
    capsule fails after the poll completed), so the second poll shows what the first left.
    """
    peer = world["peer"]
    handle = peer.subscribe("test.budget")
    blob = "x" * (4 * MiB)
    for i in range(3):
        operator_publish(world.client, "test.budget", {"i": i, "blob": blob})
    operator_publish(world.client, "test.budget", {"i": 3})
    assert peer.trap([poll(handle)]) == "syscaller: results exceed 1 MiB"
    rest = peer.poll(handle)
    assert [m["payload"]["data"]["i"] for m in rest["messages"]] == [3]
    assert (rest["dropped"], rest["lagged"]) == (0, 0)
    peer.run([unsubscribe(handle)])


# --------------------------------------------------------------------------------------------
# ipc_recv: waiting


def test_recv_timeout_is_honoured(world: World) -> None:
    peer = world["peer"]
    handle = peer.subscribe("test.quiet")
    started = time.monotonic()
    (envelope,) = peer.run([recv(handle, b"400")])
    elapsed = time.monotonic() - started
    assert envelope == b'{"messages":[],"dropped":0,"lagged":0}'
    assert elapsed >= 0.39
    started = time.monotonic()
    assert peer.run([recv(handle, b"0")]) == [b'{"messages":[],"dropped":0,"lagged":0}']
    assert time.monotonic() - started < 5
    peer.run([unsubscribe(handle)])


def test_recv_returns_a_pending_message_at_once_with_the_rest(world: World) -> None:
    peer = world["peer"]
    handle = peer.subscribe("test.pending")
    peer.run([publish(b"test.pending", b"1"), publish(b"test.pending", b"2")])
    started = time.monotonic()
    envelope = json.loads(peer.value(recv(handle, b"30000")))
    assert time.monotonic() - started < 10
    assert [m["payload"]["data"] for m in envelope["messages"]] == [1, 2]
    peer.run([unsubscribe(handle)])


def test_recv_wakes_when_another_capsule_publishes_and_the_broker_keeps_serving(
    world: World,
) -> None:
    waiter = world["pubsub"]
    handle = waiter.subscribe("test.wake")
    outcome: dict[str, Any] = {}

    def wait() -> None:
        client = world.runtime.client()
        try:
            started = time.monotonic()
            outcome["result"] = Syscaller(client, "pubsub").run([recv(handle, b"8000")])
            outcome["elapsed"] = time.monotonic() - started
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            client.close()

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.5)
    # While pubsub waits, other capsules' calls and the operator are served.
    peer = world["peer"]
    assert peer.run([("astrid_clock_ms", [])])[0]
    assert world.client.request(Method.PING, {})["capsules"]
    assert "elapsed" not in outcome
    peer.run([publish(b"test.wake", b'{"wake":"up"}')])
    thread.join(20)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    (raw,) = outcome["result"]
    envelope = json.loads(raw)
    assert [m["payload"] for m in envelope["messages"]] == [
        {"type": "custom", "data": {"wake": "up"}}
    ]
    assert 0.4 <= outcome["elapsed"] < 6
    waiter.run([unsubscribe(handle)])


# --------------------------------------------------------------------------------------------
# astrid_check_capsule_capability


def _source_ids(world: World) -> dict[str, str]:
    pubsub = world["pubsub"]
    handle = pubsub.subscribe("test.who")
    pubsub.run([publish(b"test.who", b'"pubsub"')])
    world["peer"].run([publish(b"test.who", b'"peer"')])
    messages = pubsub.poll(handle)["messages"]
    pubsub.run([unsubscribe(handle)])
    return {m["payload"]["data"]: m["source_id"] for m in messages}


def test_check_capsule_capability(world: World) -> None:
    ids = _source_ids(world)
    asker = world["syscaller"]

    def allowed(source: str, capability: str = "allow_prompt_injection") -> Any:
        request = json.dumps({"source_uuid": source, "capability": capability}).encode()
        return asker.json(check(request))

    assert allowed(ids["pubsub"]) == {"allowed": True}
    assert allowed(ids["peer"]) == {"allowed": False}
    assert allowed(ids["pubsub"], "net") == {"allowed": False}
    assert allowed(ids["pubsub"], "") == {"allowed": False}
    assert allowed(str(uuid.uuid4())) == {"allowed": False}
    assert allowed(NIL_UUID) == {"allowed": False}
    assert allowed("not-a-uuid") == {"allowed": False}
    # The capsule itself may ask about itself; no capability is needed to ask.
    pubsub_request = json.dumps(
        {"source_uuid": ids["pubsub"], "capability": "allow_prompt_injection"}
    )
    assert world["pubsub"].json(check(pubsub_request.encode())) == {"allowed": True}


@pytest.mark.parametrize(
    "request_bytes",
    [b"", b"{", b"[]", b'{"source_uuid":"x"}', b'{"source_uuid":1,"capability":"c"}'],
    ids=["empty", "truncated", "array", "missing-capability", "uuid-not-string"],
)
def test_check_capsule_capability_rejects_bad_requests(world: World, request_bytes: bytes) -> None:
    text = world["syscaller"].trap([check(request_bytes)])
    assert text.startswith("invalid capability check request: "), text


def test_check_capsule_capability_request_limit(world: World) -> None:
    assert world["syscaller"].trap([check(Fill(ord(" "), 1025))]) == (
        "memory allocation of 1025 bytes exceeds maximum allowed limit of 1024 bytes"
    )
    request = json.dumps({"source_uuid": NIL_UUID, "capability": "allow_prompt_injection"})
    request += " " * (1024 - len(request))
    assert world["syscaller"].json(check(request.encode())) == {"allowed": False}


# --------------------------------------------------------------------------------------------
# Tools over the bus (DESIGN §6.11)


def _operator(world: World) -> SystemClient:
    return SystemClient.connect(AstridHome.from_path(world.home), timeout=10)


def _next_messages(client: SystemClient, timeout: float = 15) -> list[dict[str, Any]]:
    notification = client.next_notification(timeout)
    assert notification is not None, "no bus.messages notification"
    assert notification["method"] == Method.BUS_MESSAGES
    messages: list[dict[str, Any]] = notification["params"]["envelope"]["messages"]
    return messages


def test_a_tool_execute_request_runs_the_tool_and_publishes_the_result(world: World) -> None:
    with _operator(world) as operator:
        operator.request(
            Method.BUS_SUBSCRIBE, {"pattern": "tool.v1.execute.greet.result"}, timeout=10
        )
        request = {
            "type": "tool_execute_request",
            "call_id": "call-1",
            "tool_name": "greet",
            "arguments": {"name": "bus"},
        }
        operator.request(
            Method.BUS_PUBLISH, {"topic": "tool.v1.execute.greet", "payload": request}, timeout=10
        )
        (message,) = _next_messages(operator)
    assert message["topic"] == "tool.v1.execute.greet.result"
    payload = message["payload"]
    assert payload["type"] == "tool_execute_result"
    assert payload["call_id"] == "call-1"
    result = payload["result"]
    assert result["call_id"] == "call-1"
    assert result == {"call_id": "call-1", "content": "Hello, bus!", "is_error": False}
    assert UUID_RE.match(message["source_id"])


def test_a_capsule_can_request_a_tool_over_the_bus(world: World) -> None:
    pubsub = world["pubsub"]
    handle = pubsub.subscribe("tool.v1.execute.*")
    operator_publish(
        world.client,
        "tool.v1.execute.greet",
        {"type": "tool_execute_request", "call_id": "c2", "tool_name": "greet", "arguments": {}},
    )
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(m["topic"].endswith(".result") for m in results):
        results += json.loads(pubsub.value(recv(handle, b"2000")))["messages"]
    pubsub.run([unsubscribe(handle)])
    assert [m["topic"] for m in results] == [
        "tool.v1.execute.greet",
        "tool.v1.execute.greet.result",
    ]
    result = results[1]["payload"]["result"]
    assert (result["content"], result["is_error"]) == ("Hello, world!", False)


def test_an_unknown_tool_answers_an_error_result(world: World) -> None:
    with _operator(world) as operator:
        operator.request(Method.BUS_SUBSCRIBE, {"pattern": "tool.v1.execute.*"}, timeout=10)
        request = {
            "type": "tool_execute_request",
            "call_id": "c3",
            "tool_name": "nope",
            "arguments": {},
        }
        operator.request(
            Method.BUS_PUBLISH, {"topic": "tool.v1.execute.nope", "payload": request}, timeout=10
        )
        seen: list[dict[str, Any]] = []
        while not any(m["topic"] == "tool.v1.execute.nope.result" for m in seen):
            seen += _next_messages(operator)
    result = next(m for m in seen if m["topic"] == "tool.v1.execute.nope.result")
    assert result["payload"]["result"]["is_error"] is True
    assert "nope" in result["payload"]["result"]["content"]
    assert result["source_id"] == NIL_UUID


def test_a_trapping_tool_answers_an_error_result(world: World) -> None:
    with _operator(world) as operator:
        operator.request(
            Method.BUS_SUBSCRIBE, {"pattern": "tool.v1.execute.run.result"}, timeout=10
        )
        request = {
            "type": "tool_execute_request",
            "call_id": "c4",
            "tool_name": "run",
            "arguments": "zz",  # not a hex script: the syscaller traps
        }
        operator.request(
            Method.BUS_PUBLISH, {"topic": "tool.v1.execute.run", "payload": request}, timeout=10
        )
        (message,) = _next_messages(operator)
    result = message["payload"]["result"]
    assert result["is_error"] is True
    assert result["content"].startswith("astrid_tool_call failed: ")


# --------------------------------------------------------------------------------------------
# Uplinks (§2.3, DESIGN §6.9)


def test_uplink_register_returns_a_uuid_and_refuses_duplicates(world: World) -> None:
    uplinker = world["uplinker"]
    first = uplinker.value(register(b"reg", b"  Telegram ", b"HUMAN"))
    assert UUID_RE.match(first.decode())
    assert uplinker.trap([register(b"reg", b"telegram", b"chat")]) == (
        "capsule uplinker: duplicate uplink name and platform"
    )
    second = uplinker.value(register(b"reg", b"slack", b"notify"))
    assert second != first
    # The name is not validated: empty is fine.
    assert UUID_RE.match(uplinker.value(register(b"", b"slack", b"bridge")).decode())


@pytest.mark.parametrize(
    ("profile", "shown"),
    [(b"loud", '"loud"'), (b" chat", '" chat"'), (b"", '""'), (b'say "hi"', '"say \\"hi\\""')],
    ids=["unknown", "untrimmed", "empty", "quotes"],
)
def test_uplink_register_refuses_an_unknown_profile(
    world: World, profile: bytes, shown: str
) -> None:
    assert world["uplinker"].trap([register(b"p", b"x", profile)]) == (
        f"invalid uplink profile: {shown} (expected: chat, interactive, notify, bridge, human)"
    )


def test_uplink_register_argument_limits(world: World) -> None:
    uplinker = world["uplinker"]
    too_long = "memory allocation of 513 bytes exceeds maximum allowed limit of 512 bytes"
    assert uplinker.trap([register(b"n" * 513, b"x", b"chat")]) == too_long
    assert uplinker.trap([register(b"n", b"x" * 513, b"chat")]) == too_long
    assert uplinker.trap([register(b"n", b"x", b"c" * 513)]) == too_long
    assert UUID_RE.match(uplinker.value(register(b"n" * 512, b"x", b"chat")).decode())


def test_uplink_register_limit_is_32_per_capsule(world: World) -> None:
    uplimit = world["uplimit"]
    ids = uplimit.run([register(f"u{i}".encode(), b"p", b"chat") for i in range(32)])
    assert len(set(ids)) == 32
    assert uplimit.trap([register(b"u32", b"p", b"chat")]) == (
        "capsule uplimit: uplink registration limit reached"
    )


def test_uplink_register_needs_an_uplink_capsule_id(world: World) -> None:
    text = world["trailing-"].trap([register(b"n", b"p", b"chat")])
    assert text.startswith("failed to create uplink source for capsule trailing-: "), text


def test_uplink_send_errors(world: World) -> None:
    uplinker = world["uplinker"]
    assert uplinker.trap([send(b"u" * 129, b"user", b"hi")]) == (
        "memory allocation of 129 bytes exceeds maximum allowed limit of 128 bytes"
    )
    assert uplinker.trap([send(b"u" * 65, b"user", b"hi")]) == "uplink_id too long"
    assert uplinker.trap([send(b"not-a-uuid", b"user", b"hi")]).startswith("invalid uplink_id: ")
    assert uplinker.trap([send(b"", b"user", b"hi")]).startswith("invalid uplink_id: ")
    stranger = str(uuid.uuid4())
    assert uplinker.trap([send(stranger.encode(), b"user", b"hi")]) == (
        f"uplink {stranger} not registered by capsule uplinker"
    )
    uplink_id = uplinker.value(register(b"limits", b"discord", b"chat"))
    assert uplinker.trap([send(uplink_id, b"u" * 513, b"hi")]) == (
        "memory allocation of 513 bytes exceeds maximum allowed limit of 512 bytes"
    )
    assert uplinker.trap([send(uplink_id, b"user", Fill(ord("c"), MiB + 1))]) == (
        "memory allocation of 1048577 bytes exceeds maximum allowed limit of 1048576 bytes"
    )


def test_uplink_send_without_an_inbound_channel(world: World) -> None:
    syscaller = world["syscaller"]  # any capsule may register; only [[uplink]] capsules send
    uplink_id = syscaller.value(register(b"side", b"irc", b"chat"))
    assert syscaller.trap([send(uplink_id, b"user", b"hi")]) == (
        "capsule syscaller has no inbound channel"
    )
    # Another capsule's uplink is not ours.
    assert world["uplinker"].trap([send(uplink_id, b"user", b"hi")]) == (
        f"uplink {uplink_id.decode()} not registered by capsule uplinker"
    )


def test_uplink_send_publishes_the_inbound_message_on_the_bus(world: World) -> None:
    uplinker = world["uplinker"]
    uplink_id = uplinker.value(register(b"bot", b" Discord", b"interactive"))
    # Nobody listens: the message is dropped.
    assert uplinker.json(send(uplink_id, b"user-1", b"lost")) == {"ok": False, "dropped": True}
    handle = uplinker.subscribe("uplink.v1.inbound.*")
    before = time.time()
    results = uplinker.run(
        [
            send(uplink_id, b"user-1", "héllo".encode()),
            send(uplink_id, b"\xff", b"\xfe"),  # invalid UTF-8 becomes the empty string
            poll(handle),
        ]
    )
    assert [json.loads(r or b"") for r in results[:2]] == [{"ok": True}, {"ok": True}]
    envelope = json.loads(results[2] or b"")
    first, second = envelope["messages"]
    assert first["topic"] == "uplink.v1.inbound.discord"
    assert first["payload"]["type"] == "custom"
    inbound = first["payload"]["data"]
    assert list(inbound) == [
        "uplink_id",
        "platform",
        "platform_user_id",
        "content",
        "context",
        "thread_id",
        "timestamp",
    ]
    assert inbound["uplink_id"] == uplink_id.decode()
    assert inbound["platform"] == "discord"
    assert inbound["platform_user_id"] == "user-1"
    assert inbound["content"] == "héllo"
    assert inbound["context"] is None and inbound["thread_id"] is None
    assert RFC3339_Z.match(inbound["timestamp"])
    assert (
        time.mktime(time.strptime(inbound["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - (time.timezone)
        >= before - 2
    )
    assert (
        second["payload"]["data"]["platform_user_id"],
        second["payload"]["data"]["content"],
    ) == (
        "",
        "",
    )
    uplinker.run([unsubscribe(handle)])
    assert uplinker.json(send(uplink_id, b"user-1", b"again")) == {"ok": False, "dropped": True}


# --------------------------------------------------------------------------------------------
# Run-loop interceptors: the listener capsule


LISTENER_HANDLES = [
    {"handle_id": 1, "action": "on_demo", "topic": "demo.*"},
    {"handle_id": 2, "action": "on_alert", "topic": "alerts.v1.*"},
]


def _kv_count(home: Path, capsule: str, key: str) -> int:
    value = read_kv(home, capsule, key)
    return int(value) if value else 0


def test_listener_receives_its_interceptor_events_by_bus_matching(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    runtime.start_worker(capsules["listener"])
    home = runtime.home
    handles = wait_until(lambda: read_kv(home, "listener", "handles"), what="KV handles")
    assert json.loads(handles) == LISTENER_HANDLES
    assert handles == json.dumps(LISTENER_HANDLES, separators=(",", ":")).encode()
    client = runtime.client()
    try:
        assert operator_publish(client, "demo.one", {"n": 1}) == 1
        assert operator_publish(client, "demo.two.deeper", {"n": 2}) == 1
        assert operator_publish(client, "demo", {"n": 0}) == 0
        assert operator_publish(client, "alerts.v1.fire", {"type": "user_input", "text": "!"}) == 1
        assert operator_publish(client, "alerts.v2.fire", {"n": 0}) == 0
        wait_until(lambda: _kv_count(home, "listener", "count:on_demo") == 2, what="2 demo events")
        wait_until(lambda: _kv_count(home, "listener", "count:on_alert") == 1, what="1 alert")
        last_alert = json.loads(read_kv(home, "listener", "last:on_alert") or b"")
        (alert,) = last_alert["messages"]
        assert alert["topic"] == "alerts.v1.fire"
        assert alert["payload"] == {"type": "user_input", "text": "!", "session_id": "default"}
        last_demo = json.loads(read_kv(home, "listener", "last:on_demo") or b"")
        assert last_demo["messages"][-1]["topic"] == "demo.two.deeper"
        assert last_demo["messages"][-1]["payload"] == {"type": "custom", "data": {"n": 2}}
        time.sleep(0.5)  # nothing else arrives
        assert _kv_count(home, "listener", "count:on_demo") == 2
    finally:
        client.close()


def test_unsubscribing_an_interceptor_handle_traps_and_ends_the_run_loop(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    worker = runtime.start_worker(capsules["listener"])
    wait_until(lambda: read_kv(runtime.home, "listener", "handles"), what="KV handles")
    client = runtime.client()
    try:
        operator_publish(client, "alerts.v1.cmd", {"cmd": "unsubscribe-interceptor"})
    finally:
        client.close()
    stopping = worker.wait_for(Event.STOPPING, timeout=20)
    assert stopping.reason == "trap: Cannot unsubscribe a runtime-owned interceptor handle"
    assert _kv_count(runtime.home, "listener", "count:on_alert") == 1


def test_interceptor_handles_count_toward_the_subscription_limit(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    worker = runtime.start_worker(capsules["listener"])
    wait_until(lambda: read_kv(runtime.home, "listener", "handles"), what="KV handles")
    client = runtime.client()
    try:
        operator_publish(client, "demo.cmd", {"cmd": "subscribe-many"})
    finally:
        client.close()
    stopping = worker.wait_for(Event.STOPPING, timeout=20)
    assert stopping.reason == "trap: Subscription limit reached (128 max per plugin)"
    assert read_kv(runtime.home, "listener", "subscribed") == b"126"


def _more_interceptors(count: int) -> str:
    return "".join(
        f'[[interceptor]]\nevent = "extra.e{i}"\naction = "extra{i}"\n\n' for i in range(count)
    )


def test_64_interceptors_are_auto_subscribed_65_refuse_the_capsule(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    ok = copy_capsule(
        capsules["listener"], tmp_path / "caps", name="many", extra_toml=_more_interceptors(62)
    )
    runtime.start_worker(ok)
    handles = json.loads(wait_until(lambda: read_kv(runtime.home, "many", "handles")))
    assert [h["handle_id"] for h in handles] == list(range(1, 65))
    assert handles[-1] == {"handle_id": 64, "action": "extra61", "topic": "extra.e61"}
    too_many = copy_capsule(
        capsules["listener"], tmp_path / "caps", name="too-many", extra_toml=_more_interceptors(63)
    )
    worker = runtime.start_worker(too_many, wait=Event.FAILED)
    failed = worker.wait_for(Event.FAILED)
    assert failed.fatal
    assert (
        "Capsule 'too-many' declares 65 interceptors, exceeding the auto-subscribe limit (64)"
        in failed.reason
    )


# --------------------------------------------------------------------------------------------
# Interceptors of tool capsules and astrid_trigger_hook: the hooker capsule


@dataclass
class Hooks:
    runtime: Runtime
    client: Client
    caller: Syscaller

    def kv(self, capsule: str, key: str) -> bytes | None:
        return read_kv(self.runtime.home, capsule, key)

    def count(self, capsule: str, action: str) -> int:
        return _kv_count(self.runtime.home, capsule, f"count:{action}")

    def trigger(self, hook: str, payload: Any = None) -> Any:
        request = json.dumps({"hook": hook, "payload": payload}).encode()
        return self.caller.json(trigger(request))


#: The first hooker answers slowly, so completion order differs from registration order.
SLOW_MS = 700


@pytest.fixture(scope="module")
def hooks(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    base = tmp_path_factory.mktemp("hooks")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    try:
        slow = copy_capsule(capsules["hooker"], base / "caps")
        (slow / ".env.json").write_text(json.dumps({"delay_ms": str(SLOW_MS)}))
        runtime.start_worker(slow)
        fast = copy_capsule(capsules["hooker"], base / "caps", name="hooker-b")
        (fast / ".env.json").write_text(json.dumps({"capsule_name": "hooker-b"}))
        runtime.start_worker(fast)
        # The caller intercepts hook.ping itself: it must be left out of its own trigger.
        caller = copy_capsule(
            capsules["syscaller"],
            base / "caps",
            name="caller",
            extra_toml=(
                '[capabilities]\nipc_publish = ["demo.*"]\n\n'
                '[[interceptor]]\nevent = "hook.ping"\naction = "ping"\n'
            ),
        )
        runtime.start_worker(caller)
        runtime.start_worker(capsules["listener"])  # a run-loop capsule: never invoked
        runtime.start_worker(
            copy_capsule(
                capsules["syscaller"],
                base / "caps",
                name="bridge",
                extra_toml='[[uplink]]\nname = "b"\nplatform = "matrix"\nprofile = "bridge"\n',
            )
        )
        client = runtime.client()
        yield Hooks(runtime, client, Syscaller(client, "caller"))
        client.close()
    finally:
        runtime.stop()


def test_a_bus_event_reaches_a_tool_capsules_interceptor_with_the_guest_bytes(
    hooks: Hooks,
) -> None:
    operator_publish(hooks.client, "demo.x", {"k": "v", "n": [1, 2]})
    for capsule in ("hooker", "hooker-b"):
        wait_until(lambda c=capsule: hooks.count(c, "on_demo") >= 1, what=f"{capsule} on_demo")
        assert json.loads(hooks.kv(capsule, "args:on_demo") or b"") == {"k": "v", "n": [1, 2]}


def test_interceptor_payloads_custom_unwrapped_others_tagged_deep_topics_match(
    hooks: Hooks,
) -> None:
    base = hooks.count("hooker-b", "on_demo")
    operator_publish(hooks.client, "demo.a.b", {"type": "custom", "data": "plain"})
    wait_until(lambda: hooks.count("hooker-b", "on_demo") == base + 1, what="custom event")
    assert hooks.kv("hooker-b", "args:on_demo") == b'"plain"'
    operator_publish(hooks.client, "demo.y", {"type": "user_input", "text": "hi"})
    wait_until(lambda: hooks.count("hooker-b", "on_demo") == base + 2, what="user_input event")
    assert json.loads(hooks.kv("hooker-b", "args:on_demo") or b"") == {
        "type": "user_input",
        "text": "hi",
        "session_id": "default",
    }
    operator_publish(hooks.client, "demo", {"n": 0})  # "demo.*" needs one more segment
    operator_publish(hooks.client, "hook.ping.extra", 1)
    time.sleep(0.5)
    assert hooks.count("hooker-b", "on_demo") == base + 2


def test_a_capsule_publish_reaches_interceptors(hooks: Hooks) -> None:
    base = hooks.count("hooker-b", "on_demo")
    hooks.caller.run([publish(b"demo.from-capsule", b"1")])
    wait_until(lambda: hooks.count("hooker-b", "on_demo") == base + 1, what="event")
    assert hooks.kv("hooker-b", "args:on_demo") == b"1"


def test_an_uplink_message_consumed_by_an_interceptor_counts_as_delivered(hooks: Hooks) -> None:
    bridge = Syscaller(hooks.client, "bridge")
    uplink_id = bridge.value(register(b"b", b"matrix", b"bridge"))
    assert bridge.json(send(uplink_id, b"@alice", b"hi hooker")) == {"ok": True}
    # (The slow hooker may be behind on earlier events and drop this one: only the fast one counts.)
    wait_until(lambda: hooks.count("hooker-b", "inbound") >= 1, what="hooker-b inbound")
    inbound = json.loads(hooks.kv("hooker-b", "args:inbound") or b"")
    assert (inbound["uplink_id"], inbound["platform"]) == (uplink_id.decode(), "matrix")
    assert (inbound["platform_user_id"], inbound["content"]) == ("@alice", "hi hooker")


def test_trigger_hook_answers_in_completion_order_without_the_caller(hooks: Hooks) -> None:
    started = time.monotonic()
    answers = hooks.trigger("hook.ping", {"x": [1, 2]})
    elapsed = time.monotonic() - started
    assert answers == [
        {"capsule": "hooker-b", "action": "ping"},
        {"capsule": "hooker", "action": "ping"},
    ]
    assert elapsed < 8  # the caller (which intercepts hook.ping too) was not invoked
    for capsule in ("hooker", "hooker-b"):
        assert json.loads(hooks.kv(capsule, "args:ping") or b"") == {"x": [1, 2]}


def test_trigger_hook_passes_any_payload_as_json_bytes(hooks: Hooks) -> None:
    hooks.trigger("hook.ping", "text")
    assert hooks.kv("hooker-b", "args:ping") == b'"text"'
    hooks.trigger("hook.ping", None)
    assert hooks.kv("hooker-b", "args:ping") == b"null"
    hooks.trigger("hook.ping", {"type": "custom", "data": 1})  # not unwrapped: hooks are not IPC
    assert json.loads(hooks.kv("hooker-b", "args:ping") or b"") == {"type": "custom", "data": 1}


@pytest.mark.parametrize(
    "hook", ["hook.silent", "hook.broken", "hook.trap", "nobody.listens", "hook"]
)
def test_trigger_hook_skips_empty_non_json_and_failed_answers(hooks: Hooks, hook: str) -> None:
    action = hook.removeprefix("hook.")
    before = hooks.count("hooker-b", action)
    assert hooks.trigger(hook, {"p": 1}) == []
    if hook in ("hook.silent", "hook.broken", "hook.trap"):
        assert hooks.count("hooker-b", action) == before + 1  # it did run


def test_trigger_hook_matches_interceptors_by_the_bus_rule(hooks: Hooks) -> None:
    """DESIGN §6.12: one matching rule; the run-loop listener (demo.*) is never invoked."""
    answers = hooks.trigger("demo.a.b")
    assert sorted(a["capsule"] for a in answers) == ["hooker", "hooker-b"]
    assert {a["action"] for a in answers} == {"on_demo"}


@pytest.mark.parametrize(
    "request_bytes",
    [b"", b"not json", b"[]", b'{"payload":1}', b'{"hook":5,"payload":1}'],
    ids=["empty", "not-json", "array", "missing-hook", "hook-not-string"],
)
def test_trigger_hook_rejects_bad_requests(hooks: Hooks, request_bytes: bytes) -> None:
    text = hooks.caller.trap([trigger(request_bytes)])
    assert text.startswith("invalid trigger request: "), text


def test_trigger_hook_request_limit(hooks: Hooks) -> None:
    assert hooks.caller.trap([trigger(Fill(ord(" "), MiB + 1))]) == (
        "memory allocation of 1048577 bytes exceeds maximum allowed limit of 1048576 bytes"
    )
    payload = "y" * (MiB - 64)
    request = json.dumps({"hook": "hook.silent", "payload": payload})
    assert len(request) <= MiB
    assert hooks.trigger("hook.silent", payload) == []
    assert hooks.kv("hooker-b", "args:silent") == json.dumps(payload).encode()
