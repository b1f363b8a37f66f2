"""The IPC bus without processes: drain rule, lag, payload classification, envelope shape,
delivery by bus matching, subscription indexing and wake-ups, the publish rate limiter.

Ports the reference's unit tests of ``host/ipc.rs`` (drain: 5 messages drained, budget overflow
drops exactly one, a small bus reports lag) and of the payload classification (syscalls.md §7).
The ACL matrix and the ``topic_matches`` table live in ``test_topics.py`` (pure matching) and
``tests/integration/test_ipc_syscalls.py`` (through real publish/subscribe calls).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from astrid_core.dirs import AstridHome
from astrid_core.manifest import parse_manifest
from astrid_core.topics import MAX_BUS_TOPIC_SEGMENTS
from astrid_core.wire import HelloInfo
from broker import capsule_ipc, hooks
from broker.bus import DRAIN_BUDGET, QUEUE_CAPACITY, Bus, BusMessage, Subscription
from broker.capsule_ipc import (
    MAX_PUBLISH_BYTES,
    MAX_PUBLISH_BYTES_PER_SECOND,
    CapsuleIpc,
)
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.ipc_payload import classify, guest_value
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.sessions import CapsuleSession, InvocationFailed
from broker.syscalls import ipc as ipc_syscalls
from broker.syscalls.ipc import MAX_RECV_TIMEOUT_MS
from broker.tools import ToolRequests

MiB = 1024 * 1024
SOURCE = uuid.UUID("12345678-1234-4678-9234-567812345678")
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def message(topic: str = "a.b", data: Any = None) -> BusMessage:
    return BusMessage(topic, classify({"n": 0} if data is None else data), SOURCE)


def topics(messages: list[BusMessage]) -> list[str]:
    return [m.topic for m in messages]


# --------------------------------------------------------------------------------------------
# Drain rule (syscalls.md §3.3)


def test_drain_returns_every_pending_message_in_order() -> None:
    """Mirrors the reference's drain test: 5 messages published, 5 drained."""
    bus = Bus()
    sub = bus.subscribe("t.*")
    for i in range(5):
        bus.publish(message(f"t.{i}", {"i": i}))
    drained = sub.drain()
    assert topics(drained.messages) == [f"t.{i}" for i in range(5)]
    assert [m.payload for m in drained.messages] == [
        {"type": "custom", "data": {"i": i}} for i in range(5)
    ]
    assert (drained.dropped, drained.lagged) == (0, 0)
    empty = sub.drain()
    assert (empty.messages, empty.dropped, empty.lagged) == ([], 0, 0)


def test_budget_overflow_drops_exactly_one_message_and_stops() -> None:
    """Mirrors the reference: the first message over the 10 MiB budget is consumed and lost."""
    bus = Bus()
    sub = bus.subscribe("big")
    big = "x" * (4 * MiB)
    for i in range(4):
        bus.publish(message("big", {"i": i, "blob": big}))
    first = sub.drain()
    # Two 4 MiB payloads fit in 10 MiB; the third does not: it is discarded, the fourth stays.
    assert [m.payload["data"]["i"] for m in first.messages] == [0, 1]
    assert first.dropped == 1
    second = sub.drain()
    assert [m.payload["data"]["i"] for m in second.messages] == [3]
    assert second.dropped == 0


def test_the_budget_counts_serialized_payload_bytes() -> None:
    bus = Bus()
    sub = bus.subscribe("b")
    for _ in range(2):
        bus.publish(message("b", "abcd"))  # {"type":"custom","data":"abcd"} = 31 bytes
    size = len('{"type":"custom","data":"abcd"}')
    assert sub.queue[0].payload_size == size
    drained = sub.drain(budget=2 * size)  # exactly fits
    assert (len(drained.messages), drained.dropped) == (2, 0)
    for _ in range(3):
        bus.publish(message("b", "abcd"))
    drained = sub.drain(budget=2 * size)  # the third would exceed: consumed and dropped
    assert (len(drained.messages), drained.dropped) == (2, 1)
    assert not sub.queue
    bus.publish(message("b", "abcd"))
    drained = sub.drain(budget=size - 1)
    assert (drained.messages, drained.dropped) == ([], 1)
    assert not sub.queue


def test_the_message_that_woke_recv_is_prepended_and_not_counted() -> None:
    bus = Bus()
    sub = bus.subscribe("w")
    for i in range(3):
        bus.publish(message("w", {"i": i}))
    first = sub.queue.popleft()
    size = sub.queue[0].payload_size
    drained = sub.drain(budget=size, first=first)
    assert [m.payload["data"]["i"] for m in drained.messages] == [0, 1]
    assert drained.dropped == 1


def test_lag_is_reported_once_after_the_queue_overflows() -> None:
    """Mirrors the reference's small-bus lag test (there: capacity 128)."""
    bus = Bus()
    sub = bus.subscribe("l", capacity=4)
    for i in range(10):
        bus.publish(message("l", {"i": i}))
    drained = sub.drain()
    assert [m.payload["data"]["i"] for m in drained.messages] == [6, 7, 8, 9]
    assert drained.lagged == 6
    bus.publish(message("l", {"i": 10}))
    again = sub.drain()
    assert again.lagged == 0
    assert len(again.messages) == 1


def test_the_default_queue_holds_1024_messages() -> None:
    bus = Bus()
    sub = bus.subscribe("q")
    assert QUEUE_CAPACITY == 1024
    for i in range(QUEUE_CAPACITY + 7):
        bus.publish(message("q", i))
    drained = sub.drain()
    assert drained.lagged == 7
    assert len(drained.messages) == QUEUE_CAPACITY
    assert drained.messages[0].payload["data"] == 7


def test_a_subscriber_only_lags_behind_matching_traffic() -> None:
    """A deliberate improvement over the reference's single ring: other topics cost nothing."""
    bus = Bus()
    sub = bus.subscribe("mine", capacity=4)
    for i in range(100):
        bus.publish(message("other", i))
    bus.publish(message("mine", "x"))
    drained = sub.drain()
    assert (len(drained.messages), drained.lagged) == (1, 0)


# --------------------------------------------------------------------------------------------
# Payload classification (syscalls.md §2.2 step 9)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "no_such_tag", "x": 1},
        {"x": 1},
        "a bare string",
        42,
        None,
        [1, 2],
        {"type": 5},
        {"type": "user_input"},  # text missing
        {"type": "user_input", "text": 5},
        {"type": "user_input", "text": "hi", "session_id": None},
        {"type": "agent_response", "text": "t"},  # is_final missing
        {"type": "approval_response", "request_id": "r", "decision": "d", "reason": 5},
        {"type": "llm_response", "request_id": "not-a-uuid", "response": {}},
        {"type": "tool_cancel_request", "call_ids": ["a", 1]},
        {"type": "custom"},  # data missing
    ],
    ids=[
        "unknown-tag",
        "missing-tag",
        "bare-string",
        "number",
        "null",
        "array",
        "non-string-tag",
        "user_input-without-text",
        "user_input-text-not-string",
        "user_input-null-session",
        "agent_response-without-is_final",
        "approval_response-bad-reason",
        "llm_response-bad-uuid",
        "tool_cancel_request-bad-ids",
        "custom-without-data",
    ],
)
def test_anything_that_is_not_a_well_formed_variant_becomes_custom(value: Any) -> None:
    assert classify(value) == {"type": "custom", "data": value}


def test_connect_is_a_known_variant() -> None:
    assert classify({"type": "connect"}) == {"type": "connect"}
    assert classify({"type": "connect", "ignored": 1}) == {"type": "connect"}
    assert classify({"type": "disconnect"}) == {"type": "disconnect"}
    assert classify({"type": "disconnect", "reason": "bye"}) == {
        "type": "disconnect",
        "reason": "bye",
    }


def test_custom_with_data_unwraps() -> None:
    assert classify({"type": "custom", "data": {"k": [1]}}) == {
        "type": "custom",
        "data": {"k": [1]},
    }
    assert classify({"type": "custom", "data": None}) == {"type": "custom", "data": None}
    assert classify({"type": "custom", "data": 1, "extra": 2}) == {"type": "custom", "data": 1}


def test_user_input_gets_the_default_session_and_omits_absent_optionals() -> None:
    assert classify({"type": "user_input", "text": "hi"}) == {
        "type": "user_input",
        "text": "hi",
        "session_id": "default",
    }
    assert classify({"type": "user_input", "text": "hi", "context": None}) == {
        "type": "user_input",
        "text": "hi",
        "session_id": "default",
    }
    out = classify({"context": {"c": 1}, "session_id": "s", "text": "hi", "type": "user_input"})
    assert out == {"type": "user_input", "text": "hi", "session_id": "s", "context": {"c": 1}}
    assert list(out) == ["type", "text", "session_id", "context"]


def test_optional_fields_are_omitted_when_absent_or_null() -> None:
    assert classify({"type": "approval_response", "request_id": "r", "decision": "approve"}) == {
        "type": "approval_response",
        "request_id": "r",
        "decision": "approve",
    }
    assert classify(
        {"type": "approval_response", "request_id": "r", "decision": "d", "reason": None}
    ) == {"type": "approval_response", "request_id": "r", "decision": "d"}
    request_id = "0b8f6d5e-8a55-4e0f-9a43-0c6f5e3c2b1a"
    assert classify({"type": "elicit_response", "request_id": request_id}) == {
        "type": "elicit_response",
        "request_id": request_id,
    }


def test_tool_execute_request_keeps_its_fields() -> None:
    value = {"type": "tool_execute_request", "call_id": "c1", "tool_name": "greet", "arguments": {}}
    assert classify(value) == value


def test_tool_execute_result_normalizes_is_error() -> None:
    out = classify(
        {"type": "tool_execute_result", "call_id": "c", "result": {"call_id": "c", "content": "x"}}
    )
    assert out == {
        "type": "tool_execute_result",
        "call_id": "c",
        "result": {"call_id": "c", "content": "x", "is_error": False},
    }
    bad = {
        "type": "tool_execute_result",
        "call_id": "c",
        "result": {"call_id": "c", "content": "x", "is_error": "yes"},
    }
    assert classify(bad) == {"type": "custom", "data": bad}


def test_raw_json_keeps_its_members() -> None:
    assert classify({"type": "raw_json", "a": 1}) == {"type": "raw_json", "a": 1}


def test_guest_value_unwraps_custom_and_raw_json_only() -> None:
    assert guest_value(classify({"x": 1})) == {"x": 1}
    assert guest_value(classify("s")) == "s"
    assert guest_value(classify({"type": "raw_json", "a": 1})) == {"a": 1}
    assert guest_value(classify({"type": "connect"})) == {"type": "connect"}
    assert guest_value(classify({"type": "user_input", "text": "t"})) == {
        "type": "user_input",
        "text": "t",
        "session_id": "default",
    }


# --------------------------------------------------------------------------------------------
# Envelope shape (syscalls.md §3.3)


def test_message_json_has_the_reference_field_order() -> None:
    msg = BusMessage(
        "a.b",
        classify({"k": "ü"}),
        SOURCE,
        datetime(2025, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
    )
    text = msg.json()
    assert text == (
        '{"topic":"a.b","payload":{"type":"custom","data":{"k":"ü"}},"signature":null,'
        '"source_id":"12345678-1234-4678-9234-567812345678",'
        '"timestamp":"2025-01-02T03:04:05.123Z"}'
    )
    assert json.loads(text) == msg.to_json()
    assert list(json.loads(text)) == ["topic", "payload", "signature", "source_id", "timestamp"]


@pytest.mark.parametrize(
    ("micros", "suffix"), [(0, "Z"), (120000, ".120Z"), (123456, ".123456Z"), (1, ".000001Z")]
)
def test_timestamps_are_rfc3339_utc_with_z(micros: int, suffix: str) -> None:
    stamp = datetime(2025, 6, 7, 8, 9, 10, micros, tzinfo=UTC)
    text = json.loads(BusMessage("t", classify(1), SOURCE, stamp).json())["timestamp"]
    assert text == "2025-06-07T08:09:10" + suffix
    assert RFC3339_Z.match(text)


def test_a_fresh_message_is_stamped_now_in_utc() -> None:
    before = datetime.now(UTC)
    stamp = json.loads(message().json())["timestamp"]
    assert RFC3339_Z.match(stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= parsed <= datetime.now(UTC)


def test_envelope_is_messages_dropped_lagged() -> None:
    bus = Bus()
    sub = bus.subscribe("e", capacity=1)
    bus.publish(message("e", 1))
    bus.publish(message("e", 2))
    raw = sub.drain().envelope()
    data = json.loads(raw)
    assert list(data) == ["messages", "dropped", "lagged"]
    assert data["dropped"] == 0 and data["lagged"] == 1
    assert [m["payload"] for m in data["messages"]] == [{"type": "custom", "data": 2}]
    assert sub.drain().envelope() == b'{"messages":[],"dropped":0,"lagged":0}'


# --------------------------------------------------------------------------------------------
# Delivery by bus matching, indexing


def test_a_trailing_wildcard_matches_one_or_more_segments() -> None:
    bus = Bus()
    sub = bus.subscribe("a.b.*")
    for topic in ("a.b", "a.b.c", "a.b.c.d", "a.x.c", "a", "a.bc.d"):
        bus.publish(message(topic))
    assert topics(sub.drain().messages) == ["a.b.c", "a.b.c.d"]


def test_a_bare_wildcard_matches_single_segment_topics_only() -> None:
    bus = Bus()
    sub = bus.subscribe("*")
    for topic in ("a", "a.b", "b"):
        bus.publish(message(topic))
    assert topics(sub.drain().messages) == ["a", "b"]


def test_a_mid_pattern_wildcard_matches_exactly_one_segment() -> None:
    """Only interceptor auto-subscriptions can have one (guest patterns cannot)."""
    bus = Bus()
    sub = bus.subscribe("a.*.c")
    for topic in ("a.b.c", "a.b.b.c", "a.c", "a.x.c.d", "a.x.c"):
        bus.publish(message(topic))
    assert topics(sub.drain().messages) == ["a.b.c", "a.x.c"]


def test_topics_deeper_than_20_segments_never_match() -> None:
    bus = Bus()
    deep = ".".join(["s"] * (MAX_BUS_TOPIC_SEGMENTS + 1))
    ok = ".".join(["s"] * MAX_BUS_TOPIC_SEGMENTS)
    wildcard = bus.subscribe("s.*")
    exact_deep = bus.subscribe(deep)
    exact_ok = bus.subscribe(ok)
    assert bus.publish(message(deep)) == 0
    assert bus.publish(message(ok)) == 2
    assert topics(wildcard.drain().messages) == [ok]
    assert exact_deep.drain().messages == []
    assert topics(exact_ok.drain().messages) == [ok]


def test_exact_and_wildcard_subscriptions_are_indexed_apart() -> None:
    bus = Bus()
    exact = bus.subscribe("a.b")
    twin = bus.subscribe("a.b")
    wild = bus.subscribe("a.*")
    assert len(bus) == 3
    assert bus.publish(message("a.b")) == 3
    assert bus.publish(message("a.c")) == 1
    assert bus.publish(message("a.b.c")) == 1
    assert topics(exact.drain().messages) == ["a.b"]
    assert topics(twin.drain().messages) == ["a.b"]
    assert topics(wild.drain().messages) == ["a.b", "a.c", "a.b.c"]
    exact.close()
    assert len(bus) == 2
    assert bus.publish(message("a.b")) == 2
    twin.close()
    wild.close()
    assert len(bus) == 0
    assert bus.publish(message("a.b")) == 0
    exact.close()  # closing twice is harmless


def test_publishing_order_is_kept_per_subscription_and_listeners_see_everything() -> None:
    bus = Bus()
    seen: list[str] = []
    bus.add_listener(lambda m: seen.append(m.topic))
    sub = bus.subscribe("o.*")
    for i in range(50):
        bus.publish(message(f"o.{i % 7}"))
    bus.publish(message("elsewhere"))
    assert topics(sub.drain().messages) == [f"o.{i % 7}" for i in range(50)]
    assert seen == [*(f"o.{i % 7}" for i in range(50)), "elsewhere"]


def test_a_message_is_serialized_once_and_shared() -> None:
    bus = Bus()
    subs = [bus.subscribe("s") for _ in range(3)]
    msg = message("s")
    bus.publish(msg)
    drained = [s.drain().messages[0] for s in subs]
    assert all(m is msg for m in drained)
    assert msg.json() is msg.json()


# --------------------------------------------------------------------------------------------
# Waiting


def test_wait_returns_a_pending_message_at_once() -> None:
    async def main() -> None:
        bus = Bus()
        sub = bus.subscribe("w")
        bus.publish(message("w", 1))
        got = await sub.wait(10)
        assert got is not None and got.payload["data"] == 1
        assert await sub.wait(0) is None

    asyncio.run(main())


def test_a_publish_wakes_a_waiter() -> None:
    async def main() -> None:
        bus = Bus()
        sub = bus.subscribe("w.*")
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, bus.publish, message("w.x", "hello"))
        started = loop.time()
        got = await sub.wait(10)
        assert got is not None and got.topic == "w.x"
        assert loop.time() - started < 5

    asyncio.run(main())


def test_wait_times_out_with_none() -> None:
    async def main() -> None:
        sub = Bus().subscribe("w")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await sub.wait(0.1) is None
        assert 0.09 <= loop.time() - started < 5

    asyncio.run(main())


def test_close_wakes_a_waiter_and_leaves_the_bus() -> None:
    async def main() -> None:
        bus = Bus()
        sub = bus.subscribe("w")
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, sub.close)
        started = loop.time()
        assert await sub.wait(30) is None
        assert loop.time() - started < 5
        assert sub.closed and len(bus) == 0
        assert await sub.wait(30) is None  # a closed subscription never waits

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Rate limiter (syscalls.md §2.2 step 2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(capsule_ipc.time, "monotonic", fake)
    return fake


def limiter() -> CapsuleIpc:
    return CapsuleIpc(None)  # type: ignore[arg-type]  # charge() needs no session


def test_limits_are_the_references() -> None:
    assert MAX_PUBLISH_BYTES == 5_242_880
    assert MAX_PUBLISH_BYTES_PER_SECOND == 10_485_760
    assert DRAIN_BUDGET == 10_485_760
    assert MAX_RECV_TIMEOUT_MS == 60_000


def test_a_payload_over_5_MiB_is_too_large(clock: Clock) -> None:
    ipc = limiter()
    assert ipc.charge(5 * MiB + 1) == "Payload too large"
    assert ipc.charge(5 * MiB) is None


def test_10_MiB_per_second_window(clock: Clock) -> None:
    ipc = limiter()
    assert ipc.charge(5 * MiB) is None
    clock.now += 0.5
    assert ipc.charge(5 * MiB) is None
    assert ipc.charge(1) == "Rate limit exceeded"
    assert ipc.charge(0) is None  # exactly 10 MiB is allowed
    clock.now += 0.499
    assert ipc.charge(1) == "Rate limit exceeded"
    clock.now += 0.001  # one second after the window started
    assert ipc.charge(10 * MiB - 5 * MiB) is None
    assert ipc.charge(5 * MiB) is None
    assert ipc.charge(1) == "Rate limit exceeded"


def test_a_rejected_publish_is_not_charged(clock: Clock) -> None:
    ipc = limiter()
    assert ipc.charge(5 * MiB + 1) == "Payload too large"
    assert ipc.charge(5 * MiB) is None
    assert ipc.charge(5 * MiB) is None


# --------------------------------------------------------------------------------------------
# Handlers called directly (a real kernel and session, no processes)

MANIFEST = """
[package]
name = "{name}"
version = "0.1.0"

[[component]]
file = "x.wasm"
{extra}
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    home = AstridHome.from_path(tmp_path / "home")
    home.logs_dir().mkdir(parents=True, exist_ok=True)
    (tmp_path / "ws").mkdir()
    k = Kernel(home, tmp_path / "ws", KvStore(home.state_db_path()), b"k" * 32)
    yield k
    k.close()


def make_session(kernel: Kernel, name: str = "cap", extra: str = "") -> CapsuleSession:
    root = kernel.workspace.parent
    manifest = parse_manifest(MANIFEST.format(name=name, extra=extra), root / name / "Capsule.toml")
    session = CapsuleSession(
        kernel=kernel,
        identity=name.encode(),
        info=HelloInfo(name, str(root / name), 1, 1, False),
        manifest=manifest,
        config={},
        gate=CapabilityGate(name, manifest.capabilities, kernel.workspace),
        log=kernel.capsule_log(name),
        global_root=None,
    )
    kernel.sessions.add(session)
    return session


def test_bytes_are_charged_even_when_a_later_check_rejects_the_publish(
    kernel: Kernel, clock: Clock
) -> None:
    session = make_session(kernel)  # no ipc_publish grant: every publish is denied
    for _ in range(2):
        with pytest.raises(SyscallError) as denied:
            ipc_syscalls.astrid_ipc_publish(session, b"t", b" " * (5 * MiB))
        assert "has no ipc_publish declarations" in denied.value.text
    with pytest.raises(SyscallError) as limited:
        ipc_syscalls.astrid_ipc_publish(session, b"t", b"{}")
    assert limited.value.text == "Rate limit exceeded"
    clock.now += 1
    with pytest.raises(SyscallError) as again:
        ipc_syscalls.astrid_ipc_publish(session, b"t", b"{}")
    assert "has no ipc_publish declarations" in again.value.text


def test_publish_stamps_the_capsule_instance_uuid(kernel: Kernel) -> None:
    session = make_session(kernel, extra='[capabilities]\nipc_publish = ["t.*"]\n')
    sub = kernel.bus.subscribe("t.*")
    ipc_syscalls.astrid_ipc_publish(session, b"t.x", b'{"a":1}')
    (msg,) = sub.drain().messages
    assert msg.source_id == session.uuid
    assert msg.payload == {"type": "custom", "data": {"a": 1}}


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [
        (b"0", 0.0),
        (b"250", 0.25),
        (b"60000", 60.0),
        (b"60001", 60.0),
        (b"18446744073709551615", 60.0),
    ],
)
def test_recv_clamps_the_timeout_at_60_seconds(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch, timeout: bytes, seconds: float
) -> None:
    session = make_session(kernel, extra='[capabilities]\nipc_subscribe = ["t.*"]\n')
    handle = ipc_syscalls.astrid_ipc_subscribe(session, b"t.*")
    waited: list[float] = []

    async def fake_wait(self: Subscription, timeout: float) -> BusMessage | None:
        waited.append(timeout)
        return None

    monkeypatch.setattr(Subscription, "wait", fake_wait)
    envelope = asyncio.run(ipc_syscalls.astrid_ipc_recv(session, handle, timeout))
    assert waited == [seconds]
    assert json.loads(envelope) == {"messages": [], "dropped": 0, "lagged": 0}


def test_recv_with_timeout_0_behaves_like_poll(kernel: Kernel) -> None:
    session = make_session(
        kernel, extra='[capabilities]\nipc_subscribe = ["t.*"]\nipc_publish = ["t.*"]\n'
    )
    handle = ipc_syscalls.astrid_ipc_subscribe(session, b"t.*")
    for i in range(3):
        ipc_syscalls.astrid_ipc_publish(session, f"t.{i}".encode(), str(i).encode())

    async def main() -> bytes:
        return await ipc_syscalls.astrid_ipc_recv(session, handle, b"0")

    data = json.loads(asyncio.run(main()))
    assert [m["topic"] for m in data["messages"]] == ["t.0", "t.1", "t.2"]
    assert asyncio.run(main()) == b'{"messages":[],"dropped":0,"lagged":0}'


def test_closing_the_session_ends_its_subscriptions(kernel: Kernel) -> None:
    session = make_session(kernel, extra='[capabilities]\nipc_subscribe = ["t.*"]\n')
    for _ in range(3):
        ipc_syscalls.astrid_ipc_subscribe(session, b"t.*")
    assert len(kernel.bus) == 3
    session.close_extensions()
    assert len(kernel.bus) == 0


# --------------------------------------------------------------------------------------------
# hooks.trigger with a scripted invoker (the fan-out behind astrid_trigger_hook)


class ScriptedInvoker:
    """Answers each capsule's hook invocation after a delay with a fixed output or a failure."""

    def __init__(self, answers: dict[str, tuple[float, bytes | None]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, bytes]] = []

    async def invoke(
        self, session: CapsuleSession, export: str, data: bytes, caller: dict[str, Any]
    ) -> bytes:
        self.calls.append((session.name, export, data))
        delay, output = self.answers[session.name]
        await asyncio.sleep(delay)
        if output is None:
            raise InvocationFailed(f"{session.name} trapped")
        return output


INTERCEPT_PING = '[[interceptor]]\nevent = "hook.*"\naction = "ping"\n'


def test_trigger_collects_json_answers_in_completion_order(kernel: Kernel) -> None:
    caller = make_session(kernel, "caller", INTERCEPT_PING)
    for name in ("slow", "fast", "empty", "text", "huge", "trap"):
        make_session(kernel, name, INTERCEPT_PING)
    run_loop = make_session(kernel, "runner", INTERCEPT_PING)
    run_loop.info = HelloInfo("runner", run_loop.info.capsule_dir, 1, 1, True)
    make_session(kernel, "other", '[[interceptor]]\nevent = "else.*"\naction = "x"\n')
    invoker = ScriptedInvoker(
        {
            "slow": (0.2, b'{"who":"slow"}'),
            "fast": (0.0, b'{"who":"fast"}'),
            "empty": (0.0, b""),
            "text": (0.0, b"not json"),
            "huge": (0.0, b"1" * 5000),
            "trap": (0.0, None),
        }
    )
    kernel.invoker = invoker
    answers = asyncio.run(hooks.trigger(kernel, caller, "hook.ping.deep", {"p": [1]}))
    assert answers == [{"who": "fast"}, {"who": "slow"}]
    assert sorted(name for name, _, _ in invoker.calls) == [
        "empty",
        "fast",
        "huge",
        "slow",
        "text",
        "trap",
    ]
    _, export, data = invoker.calls[0]
    assert export == "astrid_hook_trigger"
    assert json.loads(data) == {"name": "ping", "arguments": list(b'{"p":[1]}')}
    assert asyncio.run(hooks.trigger(kernel, caller, "nobody.listens", None)) == []


# --------------------------------------------------------------------------------------------
# Tools over the bus (DESIGN §6.11) with a scripted invoker


@pytest.mark.parametrize(
    ("output", "content", "is_error"),
    [
        (b'{"content":"Hello!","is_error":false}', "Hello!", False),
        (b'{"content":"bad input","is_error":true}', "bad input", True),
        (b"plain text", "plain text", False),
        (b'{"content":"no flag"}', '{"content":"no flag"}', False),
        (None, "astrid_tool_call failed: tooler trapped", True),
    ],
    ids=["tool-output", "tool-output-error", "plain", "not-a-tool-output", "trap"],
)
def test_tool_execute_request_publishes_the_result(
    kernel: Kernel, output: bytes | None, content: str, is_error: bool
) -> None:
    session = make_session(
        kernel,
        "tooler",
        '[[tool]]\nname = "greet"\ndescription = "d"\ninput_schema = { type = "object" }\n',
    )
    kernel.invoker = ScriptedInvoker({"tooler": (0.0, output)})
    results = kernel.bus.subscribe("tool.v1.execute.greet.result")

    async def main() -> list[BusMessage]:
        ToolRequests(kernel)
        request = {"type": "tool_execute_request", "call_id": "c", "tool_name": "greet"}
        kernel.bus.publish(
            BusMessage("tool.v1.execute.greet", classify({**request, "arguments": {}}), SOURCE)
        )
        got = await results.wait(5)
        return [] if got is None else [got]

    (message,) = asyncio.run(main())
    assert message.source_id == session.uuid
    assert message.payload == {
        "type": "tool_execute_result",
        "call_id": "c",
        "result": {"call_id": "c", "content": content, "is_error": is_error},
    }
