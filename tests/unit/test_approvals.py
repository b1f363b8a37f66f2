"""broker.approvals: allowances (matching, session vs always, per-capsule scope), the timeout
setting, and the request/answer flow over the kernel bus (syscalls.md §2.11, DESIGN §6.7)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from astrid_core.dirs import AstridHome
from broker.approvals import (
    REQUEST_TOPIC,
    RESPONSE_TOPIC,
    TIMEOUT_ENV,
    TIMEOUT_S,
    ApprovalService,
    allowance_covers,
    timeout_s,
)
from broker.bus import BusMessage
from broker.errors import SyscallError
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.sessions import CapsuleSession

NIL = uuid.UUID(int=0)
OPERATOR = uuid.uuid4()


def new_kernel(root: Path) -> Kernel:
    home = AstridHome.from_path(root / "home")
    home.root().mkdir(parents=True, exist_ok=True)
    (root / "ws").mkdir(exist_ok=True)
    return Kernel(home, root / "ws", KvStore(home.state_db_path()), b"k" * 32)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    k = new_kernel(tmp_path)
    yield k
    k.close()


@pytest.fixture
def service(kernel: Kernel) -> ApprovalService:
    return kernel.service(ApprovalService)


def session(name: str) -> CapsuleSession:
    """What the service uses of a session: its name (and identity for the disconnect hook)."""
    return cast(CapsuleSession, SimpleNamespace(name=name))


# --------------------------------------------------------------------------------------------
# Allowance matching: "<action> *" against the resource


@pytest.mark.parametrize(
    "resource",
    [
        "git push",
        "git push origin",
        "git push origin main --force",
        "git push  two spaces",
        "git push \u00e9",
        "git push -m 'quoted'",
        'git push "double"',
        "git push ~/path/with*glob?",
    ],
)
def test_the_action_and_what_extends_it_after_a_space_match(resource: str) -> None:
    assert allowance_covers("git push", resource)


@pytest.mark.parametrize(
    "resource",
    [
        "git pushx",
        "git push-all",
        "git pus",
        "git",
        "",
        " git push",
        "GIT PUSH",
        "git status",
        "git\tpush",
        "sudo git push",
    ],
)
def test_other_resources_do_not_match(resource: str) -> None:
    assert not allowance_covers("git push", resource)


@pytest.mark.parametrize(
    "operator", [";", "&&", "||", "|", "$(", "`", "\n", ">", "<", ">>", "2>&1"]
)
@pytest.mark.parametrize("position", ["end", "middle", "glued"])
def test_shell_operators_never_match(operator: str, position: str) -> None:
    resource = {
        "end": f"git push origin {operator} rm -rf /",
        "middle": f"git push {operator}x y",
        "glued": f"git push origin{operator}",
    }[position]
    assert not allowance_covers("git push", resource)


def test_a_bare_resource_with_an_operator_does_not_match_even_exactly() -> None:
    assert not allowance_covers("a;b", "a;b")
    assert not allowance_covers("echo", "echo hi > /tmp/x")


def test_metacharacters_in_the_action_are_literal() -> None:
    assert allowance_covers("*", "* x")
    assert not allowance_covers("*", "git push")
    assert allowance_covers("ls [ab]", "ls [ab] -l")
    assert not allowance_covers("ls [ab]", "ls a")
    assert not allowance_covers("cmd?", "cmdx")


def test_an_empty_action_covers_nothing_useful() -> None:
    assert not allowance_covers("", "git push")
    assert not allowance_covers("", "x")


# --------------------------------------------------------------------------------------------
# Allowances: session vs always, per capsule


def test_session_and_always_allowances(service: ApprovalService) -> None:
    assert not service.allowed("cap", "git push origin")
    service.allow("cap", "git push", always=False)
    service.allow("cap", "docker run", always=True)
    assert service.allowed("cap", "git push origin")
    assert service.allowed("cap", "docker run nginx")
    assert not service.allowed("cap", "docker build .")
    assert not service.allowed("cap", "git push; reboot")
    # Allowing twice is harmless.
    service.allow("cap", "docker run", always=True)
    service.allow("cap", "git push", always=False)
    rows = service.kernel.kv.connection.execute(
        "SELECT capsule, action FROM approval_allowances"
    ).fetchall()
    assert rows == [("cap", "docker run")]


def test_allowances_are_scoped_to_their_capsule(service: ApprovalService) -> None:
    service.allow("alice", "git push", always=False)
    service.allow("alice", "npm publish", always=True)
    for resource in ("git push", "git push origin", "npm publish", "npm publish --tag x"):
        assert service.allowed("alice", resource)
        assert not service.allowed("bob", resource)
        assert not service.allowed("alice-b", resource)


def test_always_allowances_persist_and_session_ones_do_not(tmp_path: Path) -> None:
    kernel = new_kernel(tmp_path)
    service = kernel.service(ApprovalService)
    service.allow("cap", "docker run", always=True)
    service.allow("cap", "git push", always=False)
    kernel.close()

    kernel = new_kernel(tmp_path)  # a new broker on the same state.db
    try:
        service = kernel.service(ApprovalService)
        assert service.allowed("cap", "docker run alpine")
        assert not service.allowed("cap", "git push origin")
        assert not service.allowed("other", "docker run alpine")
    finally:
        kernel.close()


# --------------------------------------------------------------------------------------------
# The timeout setting


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, TIMEOUT_S),
        ("1500", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("60000", 60.0),
        ("600000", 60.0),  # never beyond the reference's 60 s
        ("", TIMEOUT_S),
        ("soon", TIMEOUT_S),
        ("1.5", TIMEOUT_S),
        (" 250 ", 0.25),
    ],
)
def test_timeout_env(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float) -> None:
    if value is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, value)
    assert timeout_s() == expected


def test_the_default_timeout_is_60_s() -> None:
    assert TIMEOUT_S == 60.0
    assert TIMEOUT_ENV == "ASTRID_APPROVAL_TIMEOUT_MS"


# --------------------------------------------------------------------------------------------
# Requests and answers over the kernel bus


async def until_pending(service: ApprovalService) -> str:
    for _ in range(200):
        if service.pending:
            return next(iter(service.pending))
        await asyncio.sleep(0.005)
    raise AssertionError("no pending request")


def run_request(
    service: ApprovalService,
    name: str,
    action: str,
    resource: str,
    respond: Any = None,
) -> tuple[dict[str, Any], list[BusMessage]]:
    """Run one request; ``respond(service, request_id)`` answers it while it waits."""
    seen: list[BusMessage] = []

    async def main() -> dict[str, Any]:
        watcher = service.kernel.bus.subscribe(REQUEST_TOPIC)
        responses = service.kernel.bus.subscribe(f"{RESPONSE_TOPIC}.*")
        task = asyncio.ensure_future(service.request(session(name), action, resource, "high"))
        if respond is not None:
            request_id = await until_pending(service)
            respond(service, request_id)
        result = await task
        seen.extend(watcher.drain().messages + responses.drain().messages)
        return result

    return asyncio.run(main()), seen


def test_an_approval_answer(service: ApprovalService) -> None:
    def respond(service: ApprovalService, request_id: str) -> None:
        pending = service.pending[request_id]
        assert pending.to_json() == {
            "request_id": request_id,
            "capsule": "cap",
            "action": "git push",
            "resource": "git push origin",
            "risk_level": "high",
            "reason": "Capsule 'cap' requests approval",
            "created_at": pending.created_at,
        }
        service.answer(request_id, "approve", OPERATOR, "looks fine")

    result, seen = run_request(service, "cap", "git push", "git push origin", respond)
    assert result == {"approved": True, "decision": "approve"}
    required, response = seen
    assert required.topic == REQUEST_TOPIC and required.source_id == NIL
    request_id = required.payload["request_id"]
    assert uuid.UUID(request_id).version == 4
    assert required.payload == {
        "type": "approval_required",
        "request_id": request_id,
        "action": "git push",
        "resource": "git push origin",
        "reason": "Capsule 'cap' requests approval",
        "risk_level": "high",
    }
    assert response.topic == f"{RESPONSE_TOPIC}.{request_id}"
    assert response.source_id == OPERATOR
    assert response.payload == {
        "type": "approval_response",
        "request_id": request_id,
        "decision": "approve",
        "reason": "looks fine",
    }
    assert service.pending == {}
    assert not service.allowed("cap", "git push origin")  # approve: no allowance


@pytest.mark.parametrize(
    ("decision", "approved", "allowance"),
    [
        ("approve", True, False),
        ("approve_session", True, True),
        ("approve_always", True, True),
        ("deny", False, False),
    ],
)
def test_decisions(
    service: ApprovalService, decision: str, approved: bool, allowance: bool
) -> None:
    result, _ = run_request(
        service,
        "cap",
        "docker run",
        "docker run x",
        lambda s, rid: s.answer(rid, decision, OPERATOR, None),
    )
    assert result == {"approved": approved, "decision": decision}
    assert service.allowed("cap", "docker run y") is allowance
    assert not service.allowed("other", "docker run y")
    # With an allowance, the next request passes without asking.
    if allowance:
        result, seen = run_request(service, "cap", "anything", "docker run z")
        assert result == {"approved": True, "decision": "allowance"}
        assert seen == []


def test_an_empty_action_leaves_no_allowance(service: ApprovalService) -> None:
    result, _ = run_request(
        service, "cap", "", "x", lambda s, rid: s.answer(rid, "approve_always", OPERATOR, None)
    )
    assert result["approved"] is True
    assert service.kernel.kv.connection.execute(
        "SELECT count(*) FROM approval_allowances"
    ).fetchone() == (0,)


def test_answers_are_checked(service: ApprovalService) -> None:
    with pytest.raises(KeyError):
        service.answer("nope", "approve", OPERATOR, None)

    def respond(service: ApprovalService, request_id: str) -> None:
        with pytest.raises(ValueError):
            service.answer(request_id, "yes", OPERATOR, None)
        service.answer(request_id, "deny", OPERATOR, "")

    result, seen = run_request(service, "cap", "a", "a", respond)
    assert result == {"approved": False, "decision": "deny"}
    assert "reason" not in seen[-1].payload


def test_a_timeout_is_a_denial(service: ApprovalService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "50")
    result, seen = run_request(service, "cap", "a", "a")
    assert result == {"approved": False, "decision": "deny"}
    assert [m.topic for m in seen] == [REQUEST_TOPIC]
    assert service.pending == {}


def test_a_capsule_that_leaves_is_denied(service: ApprovalService) -> None:
    def respond(service: ApprovalService, request_id: str) -> None:
        for hook in service.kernel.on_disconnect:
            hook(session("other"))  # another capsule leaving changes nothing
        assert request_id in service.pending
        for hook in service.kernel.on_disconnect:
            hook(session("cap"))

    result, _ = run_request(service, "cap", "a", "a", respond)
    assert result == {"approved": False, "decision": "deny"}
    assert service.pending == {}


def test_a_foreign_payload_on_the_response_topic_traps(service: ApprovalService) -> None:
    def respond(service: ApprovalService, request_id: str) -> None:
        service.kernel.bus.publish(
            BusMessage(f"{RESPONSE_TOPIC}.{request_id}", {"type": "custom", "data": {}}, OPERATOR)
        )

    with pytest.raises(SyscallError) as info:
        run_request(service, "cap", "a", "a", respond)
    assert info.value.text == "unexpected IPC payload type in approval response"
    assert service.pending == {}


def test_any_decision_string_comes_back_verbatim(service: ApprovalService) -> None:
    def respond(service: ApprovalService, request_id: str) -> None:
        service.kernel.bus.publish(
            BusMessage(
                f"{RESPONSE_TOPIC}.{request_id}",
                {"type": "approval_response", "request_id": request_id, "decision": "Approve"},
                OPERATOR,
            )
        )

    result, _ = run_request(service, "cap", "a", "a", respond)
    assert result == {"approved": False, "decision": "Approve"}
    assert not service.allowed("cap", "a")


def test_a_request_takes_one_answer(service: ApprovalService) -> None:
    def twice(service: ApprovalService, request_id: str) -> None:
        service.answer(request_id, "deny", OPERATOR, None)
        assert service.pending == {}
        with pytest.raises(KeyError):
            service.answer(request_id, "approve_always", OPERATOR, None)

    result, seen = run_request(service, "cap", "a", "a", twice)
    assert result == {"approved": False, "decision": "deny"}
    assert [m.payload["type"] for m in seen] == ["approval_required", "approval_response"]
    assert not service.allowed("cap", "a")
