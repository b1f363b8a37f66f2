"""Topics outside the grants: publishing and subscribing past ``ipc_publish``/``ipc_subscribe``,
and wildcards that would widen a grant (syscalls.md §2.2, §3).

Every refused call traps with the reference's text, and nothing reaches the victim's
subscription: its envelope stays empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.support import Call, World, world_fixture

pytestmark = pytest.mark.integration

EM = "\u2014"
MID_WILDCARD = (
    "Wildcard `*` is only supported as the last segment (e.g. `foo.bar.*`). "
    "Mid-segment wildcards like `a.*.b` are not supported by the event bus."
)
PATTERN_EMPTY_SEGMENTS = (
    "Topic pattern contains empty segments (consecutive dots, leading/trailing dots, or is empty)"
)

CAPSULES = {
    # The victim listens on its private topics and on the shared one.
    "victim": '[capabilities]\nipc_publish = ["private.victim"]\n'
    'ipc_subscribe = ["private.*", "app.events", "app.*"]\n',
    # The intruder may only use app.events (and publish to app.*).
    "intruder": '[capabilities]\nipc_publish = ["app.events", "app.*"]\n'
    'ipc_subscribe = ["app.events"]\n',
    "nogrant": "",
}
INTRUDER_PUBLISH = '["app.events", "app.*"]'
INTRUDER_SUBSCRIBE = '["app.events"]'


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("topics"), capsules["syscaller"], CAPSULES)


def publish(topic: str, payload: bytes = b'{"steal":true}') -> Call:
    return ("astrid_ipc_publish", [topic.encode(), payload])


def subscribe(pattern: str) -> Call:
    return ("astrid_ipc_subscribe", [pattern.encode()])


def publish_denied(topic: str) -> str:
    return (
        f"Capsule 'intruder' is not allowed to publish to topic '{topic}' {EM} "
        f"declared ipc_publish patterns: {INTRUDER_PUBLISH}"
    )


def subscribe_denied(pattern: str) -> str:
    return (
        f"Capsule 'intruder' is not allowed to subscribe to topic '{pattern}' - "
        f"declared ipc_subscribe patterns: {INTRUDER_SUBSCRIBE}"
    )


class Listening:
    """The victim's subscription to ``pattern``; :meth:`received` drains it."""

    def __init__(self, world: World, pattern: str) -> None:
        self.world = world
        handle = world["victim"].one(subscribe(pattern))
        assert handle is not None and handle.isdigit()
        self.handle = handle

    def received(self) -> list[dict[str, object]]:
        envelope = self.world["victim"].one(("astrid_ipc_poll", [self.handle]))
        assert envelope is not None
        messages: list[dict[str, object]] = json.loads(envelope)["messages"]
        return messages

    def close(self) -> None:
        self.world["victim"].run([("astrid_ipc_unsubscribe", [self.handle])])


@pytest.fixture
def private(world: World) -> Iterator[Listening]:
    listening = Listening(world, "private.*")
    yield listening
    listening.close()


@pytest.mark.parametrize(
    "topic",
    ["private.victim", "private.x", "astrid.v1.approval.response.x", "app", "app.events.deeper"],
)
def test_publish_outside_the_grants(world: World, private: Listening, topic: str) -> None:
    assert world["intruder"].trap([publish(topic)]) == publish_denied(topic)
    assert private.received() == []


def test_publish_without_any_declaration(world: World, private: Listening) -> None:
    assert world["nogrant"].trap([publish("private.victim")]) == (
        f"Capsule 'nogrant' has no ipc_publish declarations {EM} publishing is denied. "
        "Add ipc_publish patterns to Capsule.toml [capabilities]"
    )
    assert private.received() == []


@pytest.mark.parametrize(
    "pattern",
    ["private.victim", "private.*", "private.victim.*", "*", "app.*", "app.events.*", ">", "#"],
)
def test_subscribe_outside_the_grants(world: World, pattern: str) -> None:
    assert world["intruder"].trap([subscribe(pattern)]) == subscribe_denied(pattern)


def test_subscribe_without_any_declaration(world: World) -> None:
    assert world["nogrant"].trap([subscribe("app.events")]) == (
        "Capsule 'nogrant' has no ipc_subscribe declarations - subscribing is denied. "
        "Add ipc_subscribe patterns to Capsule.toml [capabilities]"
    )


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("app.*.events", MID_WILDCARD),
        ("*.events", MID_WILDCARD),
        ("*.*", MID_WILDCARD),
        ("app..events", PATTERN_EMPTY_SEGMENTS),
        (".app.events", PATTERN_EMPTY_SEGMENTS),
        ("app.events.", PATTERN_EMPTY_SEGMENTS),
        ("app.**", None),
        ("app.e*", None),
        ("app.events\x00.x", None),
    ],
)
def test_wildcards_cannot_widen_a_grant(world: World, pattern: str, text: str | None) -> None:
    assert world["intruder"].trap([subscribe(pattern)]) == (text or subscribe_denied(pattern))


def test_a_literal_star_topic_does_not_fan_out(world: World) -> None:
    """``app.*`` is inside the intruder's publish grant, but as a *topic* the star is literal:
    the victim's ``app.events`` subscription does not receive it."""
    listening = Listening(world, "app.events")
    try:
        world["intruder"].run([publish("app.*")])
        assert listening.received() == []
        world["intruder"].run([publish("app.events", b'{"fine":1}')])  # the control
        assert [m["topic"] for m in listening.received()] == ["app.events"]
    finally:
        listening.close()


@pytest.mark.parametrize("name", ["astrid_ipc_poll", "astrid_ipc_recv", "astrid_ipc_unsubscribe"])
def test_another_capsules_subscription_handle(world: World, private: Listening, name: str) -> None:
    args = [private.handle, b"0"] if name == "astrid_ipc_recv" else [private.handle]
    assert world["intruder"].trap([(name, args)]) == "Subscription handle not found"
    world["victim"].run([publish("private.victim", b'{"own":1}')])
    assert [m["topic"] for m in private.received()] == ["private.victim"]  # still the victim's
