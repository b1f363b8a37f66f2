"""astrid_request_approval end to end: a real broker, the lifecycler capsule asking, and the
operator answering with the real ``astrid approvals`` / ``approve`` / ``deny`` commands.

syscalls.md §2.11 (texts, sanitization, decisions, timeout ⇒ deny), DESIGN §6.7 (allowances are
scoped to the capsule that obtained them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from astrid_core import rpc
from astrid_core.launch import Event
from astrid_core.rpc import RpcError
from astrid_core.session import MAX_CLIENT_FRAME, recv_frame
from tests.conftest import copy_capsule
from tests.harness import Child, Client, Runtime

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NIL = str(uuid.UUID(int=0))


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def astrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "astrid"), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def install(runtime: Runtime, capsule_dir: Path, name: str | None = None) -> Child:
    """Start the capsule and get its install hook through with throwaway answers."""
    worker = runtime.start_worker(capsule_dir, name=name, wait=None)
    client = runtime.client()
    try:
        deadline = time.monotonic() + 20
        while not any(e.event == Event.READY for e in worker.read_events(0.05)):
            assert time.monotonic() < deadline, worker.events
            assert all(e.event != Event.FAILED for e in worker.events), worker.events
            for asked in client.request("elicitations.list", {})["elicitations"]:
                kind = asked["field"]["field_type"]
                response: dict[str, Any] = {"values": []} if kind == "Array" else {"value": "x"}
                client.request(
                    "elicitations.answer", {"request_id": asked["request_id"], **response}
                )
    finally:
        client.close()
    return worker


@dataclass
class Env:
    runtime: Runtime
    client: Client
    caps: Path
    asking: list[Asking] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.runtime.home

    def approvals(self) -> list[dict[str, Any]]:
        result = astrid(self.home, "approvals", "--json")
        assert result.returncode == 0, result.stderr
        approvals: list[dict[str, Any]] = json.loads(result.stdout)["approvals"]
        return approvals

    def ask(self, arguments: Any, capsule: str = "lifecycler", tool: str = "approve") -> Asking:
        """Call the tool in a thread (it blocks until the operator answers)."""
        asking = Asking()

        def call() -> None:
            client = Client(self.home)
            try:
                asking.output = client.call_tool(capsule, tool, arguments, timeout=60)
            except RpcError as exc:
                asking.error = exc
            finally:
                client.close()

        asking.thread = threading.Thread(target=call, daemon=True)
        asking.thread.start()
        self.asking[:] = [asking]
        return asking

    def request_of(
        self, capsule: str = "lifecycler", action: str | None = None, cli: bool = True
    ) -> dict[str, Any]:
        """The pending request of ``capsule`` (for ``action``), as ``astrid approvals`` shows it
        (or ``approvals.list``, without ``cli``)."""

        def find() -> dict[str, Any] | None:
            for asking in self.asking:
                if asking.done() and asking.error is not None:
                    raise AssertionError(f"the tool call failed: {asking.error.message}")
            listed = (
                self.approvals() if cli else self.client.request("approvals.list", {})["approvals"]
            )
            for item in listed:
                if item["capsule"] == capsule and (action is None or item["action"] == action):
                    return item
            return None

        item: dict[str, Any] = wait_until(find, what=f"an approval request of {capsule}")
        return item


@dataclass
class Asking:
    thread: threading.Thread | None = None
    output: str | None = None
    error: RpcError | None = None

    def result(self, timeout: float = 30) -> Any:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the tool call did not return"
        if self.error is not None:
            raise self.error
        assert self.output is not None
        return json.loads(self.output)

    def done(self) -> bool:
        assert self.thread is not None
        return not self.thread.is_alive()


@pytest.fixture(scope="module")
def env(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("approvals")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ASTRID_APPROVAL_TIMEOUT_MS", raising=False)
        runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
        runtime.start_broker()
    caps = base / "caps"
    install(runtime, copy_capsule(capsules["lifecycler"], caps))
    client = runtime.client()
    yield Env(runtime, client, caps)
    client.close()
    runtime.stop()


def call(env: Env, arguments: Any, tool: str = "approve", capsule: str = "lifecycler") -> Any:
    """A request that must be answered without asking (allowance)."""
    return json.loads(env.client.call_tool(capsule, tool, arguments, timeout=30))


def trap(env: Env, arguments: Any, tool: str = "request-raw") -> str:
    with pytest.raises(RpcError) as info:
        env.client.call_tool("lifecycler", tool, arguments, timeout=30)
    message = info.value.message
    assert message.startswith("astrid_tool_call failed: "), message
    return message.removeprefix("astrid_tool_call failed: ")


def request(action: str, resource: str, risk_level: str = "high") -> dict[str, str]:
    return {"action": action, "resource": resource, "risk_level": risk_level}


# --------------------------------------------------------------------------------------------
# Answering with the CLI while the capsule waits


def test_approve_once_with_the_cli(env: Env) -> None:
    asking = env.ask(request("git push", "git push origin main"))
    pending = env.request_of(action="git push")
    assert not asking.done()
    assert uuid.UUID(pending["request_id"]).version == 4
    assert pending == {
        "request_id": pending["request_id"],
        "capsule": "lifecycler",
        "action": "git push",
        "resource": "git push origin main",
        "risk_level": "high",
        "reason": "Capsule 'lifecycler' requests approval",
        "created_at": pending["created_at"],
    }
    assert abs(pending["created_at"] - time.time()) < 30

    result = astrid(env.home, "approve", pending["request_id"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"approved {pending['request_id']} (approve)"
    assert asking.result() == {"approved": True, "decision": "approve"}
    assert env.approvals() == []

    # "approve" leaves no allowance: the same request asks again.
    asking = env.ask(request("git push", "git push origin main"))
    pending = env.request_of(action="git push")
    result = astrid(env.home, "deny", pending["request_id"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"denied {pending['request_id']}"
    assert asking.result() == {"approved": False, "decision": "deny"}


def test_the_table_lists_pending_requests(env: Env) -> None:
    asking = env.ask(request("table check", "table check --all", "medium"))
    pending = env.request_of(action="table check")
    result = astrid(env.home, "approvals")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "CAPSULE", "RISK", "AGE", "ACTION", "RESOURCE"]
    (row,) = [r for r in rows if pending["request_id"] in r]
    assert row.split()[:3] == [pending["request_id"], "lifecycler", "medium"]
    assert row.endswith("table check --all")
    astrid(env.home, "deny", pending["request_id"])
    assert asking.result()["decision"] == "deny"
    result = astrid(env.home, "approvals")
    assert result.stdout.strip() == "no pending approval requests"


def test_approve_session_leaves_an_allowance_for_the_action(env: Env) -> None:
    asking = env.ask(request("docker run", "docker run nginx"))
    pending = env.request_of(action="docker run")
    result = astrid(env.home, "approve", pending["request_id"], "--session")
    assert result.returncode == 0, result.stderr
    assert "(approve_session)" in result.stdout
    assert asking.result() == {"approved": True, "decision": "approve_session"}

    # The same capsule's later requests for that action pass at once, without asking...
    allowance = {"approved": True, "decision": "allowance"}
    assert call(env, request("docker run", "docker run redis")) == allowance
    assert call(env, request("anything", "docker run")) == allowance  # "X *" also matches X
    assert call(env, request("docker run", "docker run -it --rm alpine sh")) == allowance
    assert env.approvals() == []

    # ...but not other commands, nor ones that carry a shell operator.
    for resource in (
        "docker runx",
        "docker build .",
        "docker run x; rm -rf /",
        "docker run x && curl evil",
        "docker run x | sh",
        "docker run $(whoami)",
        "docker run `id`",
        "docker run x > /etc/passwd",
        "docker run x < /etc/shadow",
        "docker run x || true",
    ):
        asking = env.ask(request("docker run", resource))
        pending = env.request_of(action="docker run", cli=False)
        assert pending["resource"] == resource
        env.client.request(
            "approvals.answer", {"request_id": pending["request_id"], "decision": "deny"}
        )
        assert asking.result() == {"approved": False, "decision": "deny"}, resource


def test_approve_always_is_scoped_to_the_capsule(
    env: Env, capsules: dict[str, Path], tmp_path: Path
) -> None:
    asking = env.ask(request("npm publish", "npm publish --tag next"))
    pending = env.request_of(action="npm publish")
    result = astrid(env.home, "approve", pending["request_id"], "--always", "--reason", "ok")
    assert result.returncode == 0, result.stderr
    assert "(approve_always)" in result.stdout
    assert asking.result() == {"approved": True, "decision": "approve_always"}
    assert call(env, request("npm publish", "npm publish")) == {
        "approved": True,
        "decision": "allowance",
    }

    # A renamed copy of the same capsule still has to ask (DESIGN §6.7).
    other = copy_capsule(capsules["lifecycler"], tmp_path / "caps", name="lifecycler-b")
    worker = install(env.runtime, other)
    try:
        asking = env.ask(request("npm publish", "npm publish"), capsule="lifecycler-b")
        pending = env.request_of(capsule="lifecycler-b")
        assert pending["reason"] == "Capsule 'lifecycler-b' requests approval"
        astrid(env.home, "deny", pending["request_id"])
        assert asking.result() == {"approved": False, "decision": "deny"}
    finally:
        worker.stop()
        env.runtime.workers.remove(worker)

    # "always" outlives the capsule's worker: a restarted lifecycler is still allowed.
    assert call(env, request("npm publish", "npm publish --dry-run")) == {
        "approved": True,
        "decision": "allowance",
    }


def test_a_timeout_is_a_denial(
    capsules: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_APPROVAL_TIMEOUT_MS", "1500")
    home, workspace = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    workspace.mkdir()
    runtime = Runtime(home, workspace, f"ipc://{tmp_path}/b.ipc")
    runtime.start_broker()
    try:
        install(runtime, copy_capsule(capsules["lifecycler"], tmp_path / "caps"))
        client = runtime.client()
        started = time.monotonic()
        output = client.call_tool("lifecycler", "approve", request("rm", "rm -rf build"))
        elapsed = time.monotonic() - started
        assert json.loads(output) == {"approved": False, "decision": "deny"}
        assert 1.4 <= elapsed < 8, elapsed
        result = astrid(home, "approvals", "--json")
        assert json.loads(result.stdout) == {"approvals": []}
        client.close()
    finally:
        runtime.stop()


def test_unknown_request_ids_are_a_clear_cli_error(env: Env) -> None:
    for args in (
        ("approve", "no-such-id"),
        ("approve", "no-such-id", "--always"),
        ("deny", "no-such-id", "--reason", "x"),
    ):
        result = astrid(env.home, *args)
        assert result.returncode == 1, result
        assert result.stderr.strip() == "astrid: no pending approval request 'no-such-id'"
        assert result.stdout == ""


def test_the_cli_without_a_broker(tmp_path: Path) -> None:
    for args in (("approvals",), ("approve", "x"), ("deny", "x")):
        result = astrid(tmp_path, *args)
        assert result.returncode == 1
        assert "the astrid broker is not running" in result.stderr


def test_approve_options_are_exclusive(env: Env) -> None:
    result = astrid(env.home, "approve", "x", "--session", "--always")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


# --------------------------------------------------------------------------------------------
# The request and its answer on the bus


class Watcher:
    def __init__(self, home: Path, *patterns: str) -> None:
        self.client = Client(home)
        for pattern in patterns:
            self.client.request(rpc.Method.BUS_SUBSCRIBE, {"pattern": pattern})
        self.messages: list[dict[str, Any]] = []

    def collect(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, self.messages
            frame = json.loads(recv_frame(self.client.sock, MAX_CLIENT_FRAME, timeout=remaining))
            if frame.get("method") == rpc.Method.BUS_MESSAGES:
                self.messages += frame["params"]["envelope"]["messages"]
        return self.messages

    def close(self) -> None:
        self.client.close()


def test_request_and_answer_travel_on_the_bus(env: Env) -> None:
    watcher = Watcher(env.home, "astrid.v1.approval", "astrid.v1.approval.response.*")
    try:
        asking = env.ask(request("kubectl apply", "kubectl apply -f prod.yaml", "critical"))
        (required,) = watcher.collect(1)
        assert required["topic"] == "astrid.v1.approval"
        assert required["source_id"] == NIL
        payload = required["payload"]
        request_id = payload["request_id"]
        assert payload == {
            "type": "approval_required",
            "request_id": request_id,
            "action": "kubectl apply",
            "resource": "kubectl apply -f prod.yaml",
            "reason": "Capsule 'lifecycler' requests approval",
            "risk_level": "critical",
        }
        result = astrid(env.home, "deny", request_id, "--reason", "not on a Friday")
        assert result.returncode == 0, result.stderr
        assert asking.result() == {"approved": False, "decision": "deny"}
        _, response = watcher.collect(2)
        assert response["topic"] == f"astrid.v1.approval.response.{request_id}"
        assert response["source_id"] != NIL  # the operator's session, not the kernel
        assert response["payload"] == {
            "type": "approval_response",
            "request_id": request_id,
            "decision": "deny",
            "reason": "not on a Friday",
        }
    finally:
        watcher.close()


def test_any_client_may_answer_on_the_bus(env: Env) -> None:
    asking = env.ask(request("terraform apply", "terraform apply"))
    pending = env.request_of(action="terraform apply")
    env.client.request(
        rpc.Method.BUS_PUBLISH,
        {
            "topic": f"astrid.v1.approval.response.{pending['request_id']}",
            "payload": {
                "type": "approval_response",
                "request_id": pending["request_id"],
                "decision": "maybe",
            },
        },
    )
    # Only approve/approve_session/approve_always approve; the decision comes back verbatim.
    assert asking.result() == {"approved": False, "decision": "maybe"}


def test_an_unexpected_payload_on_the_response_topic_traps(env: Env) -> None:
    asking = env.ask(request("helm install", "helm install x"))
    pending = env.request_of(action="helm install")
    env.client.request(
        rpc.Method.BUS_PUBLISH,
        {
            "topic": f"astrid.v1.approval.response.{pending['request_id']}",
            "payload": {"decision": "approve"},
        },
    )
    with pytest.raises(RpcError) as info:
        asking.result()
    assert info.value.message == (
        "astrid_tool_call failed: unexpected IPC payload type in approval response"
    )


def test_the_rpc_refuses_unknown_decisions(env: Env) -> None:
    asking = env.ask(request("make deploy", "make deploy"))
    pending = env.request_of(action="make deploy")
    with pytest.raises(RpcError) as info:
        env.client.request(
            "approvals.answer", {"request_id": pending["request_id"], "decision": "yes"}
        )
    assert info.value.code == rpc.ErrorCode.INVALID_PARAMS
    assert "unknown decision 'yes'" in info.value.message
    with pytest.raises(RpcError) as info:
        env.client.request("approvals.answer", {"request_id": pending["request_id"]})
    assert info.value.code == rpc.ErrorCode.INVALID_PARAMS
    assert not asking.done()
    env.client.request(
        "approvals.answer",
        {"request_id": pending["request_id"], "decision": "approve", "reason": "fine"},
    )
    assert asking.result() == {"approved": True, "decision": "approve"}


# --------------------------------------------------------------------------------------------
# Error texts and sanitization


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("{not json", "invalid approval request JSON: "),
        ("[]", "invalid approval request JSON: "),
        ('{"action":"a","resource":"b"}', "invalid approval request JSON: "),
        ('{"action":"a","resource":1,"risk_level":"low"}', "invalid approval request JSON: "),
        ("", "invalid approval request JSON: "),
    ],
)
def test_invalid_requests_trap(env: Env, raw: str, text: str) -> None:
    assert trap(env, raw).startswith(text)


def test_an_action_over_256_characters_traps(env: Env) -> None:
    assert trap(env, request("a" * 257, "r"), tool="approve") == (
        "approval request action exceeds maximum length (257 > 256)"
    )
    # Counted before trimming, in characters.
    assert trap(env, request(" " + "b" * 256, "r"), tool="approve") == (
        "approval request action exceeds maximum length (257 > 256)"
    )
    assert trap(env, request("\u00e9" * 300, "r"), tool="approve") == (
        "approval request action exceeds maximum length (300 > 256)"
    )
    assert env.approvals() == []


def test_requests_are_sanitized(env: Env) -> None:
    """Trimmed, control characters removed, capped: 256 / 1024 / 64 characters."""
    action = "  \x07deploy\x00 \u00e9" + "x" * 240 + "\x1b  "
    resource = "\tdeploy\r\n" + "r" * 2000 + "\x7f"
    risk = " \u0085HIGH" + "!" * 100
    asking = env.ask(request(action, resource, risk))
    pending = env.request_of(capsule="lifecycler")
    assert pending["action"] == "deploy \u00e9" + "x" * 240
    assert pending["resource"] == "deploy" + "r" * 1018
    assert len(pending["resource"]) == 1024
    assert pending["risk_level"] == "HIGH" + "!" * 60
    astrid(env.home, "deny", pending["request_id"])
    assert asking.result() == {"approved": False, "decision": "deny"}

    # A 256-character action is accepted.
    asking = env.ask(request("y" * 256, "y" * 256, "low"))
    pending = env.request_of(capsule="lifecycler")
    assert pending["action"] == "y" * 256
    astrid(env.home, "deny", pending["request_id"])
    assert asking.result()["approved"] is False


def test_an_empty_action_leaves_no_allowance(env: Env) -> None:
    asking = env.ask(request("  ", "echo hi"))
    pending = env.request_of(capsule="lifecycler")
    assert pending["action"] == ""
    astrid(env.home, "approve", pending["request_id"], "--session")
    assert asking.result() == {"approved": True, "decision": "approve_session"}
    asking = env.ask(request("", "echo hi"))
    pending = env.request_of(capsule="lifecycler")
    astrid(env.home, "deny", pending["request_id"])
    assert asking.result()["decision"] == "deny"


def test_the_allowance_uses_the_sanitized_action(env: Env) -> None:
    asking = env.ask(request(" git\x00 fetch\n", "git fetch origin"))
    pending = env.request_of(action="git fetch")
    astrid(env.home, "approve", pending["request_id"], "--session")
    assert asking.result()["decision"] == "approve_session"
    assert call(env, request("git fetch", "git fetch --all")) == {
        "approved": True,
        "decision": "allowance",
    }
    # Resources are sanitized before matching too: control characters vanish.
    assert call(env, request("git fetch", "git fetch\x00 upstream")) == {
        "approved": True,
        "decision": "allowance",
    }


def test_a_wildcard_action_is_literal(env: Env) -> None:
    asking = env.ask(request("*", "* everything"))
    pending = env.request_of(action="*")
    astrid(env.home, "approve", pending["request_id"], "--session")
    assert asking.result()["decision"] == "approve_session"
    asking = env.ask(request("ls", "ls -la"))
    pending = env.request_of(action="ls")
    astrid(env.home, "deny", pending["request_id"])
    assert asking.result()["decision"] == "deny"


def test_a_request_is_answered_once(env: Env) -> None:
    asking = env.ask(request("double answer", "double answer"))
    pending = env.request_of(action="double answer")
    env.client.request(
        "approvals.answer", {"request_id": pending["request_id"], "decision": "deny"}
    )
    with pytest.raises(RpcError) as info:
        env.client.request(
            "approvals.answer", {"request_id": pending["request_id"], "decision": "approve"}
        )
    assert f"no pending approval request '{pending['request_id']}'" in info.value.message
    assert asking.result() == {"approved": False, "decision": "deny"}


def test_a_capsule_that_goes_away_withdraws_its_request(
    env: Env, capsules: dict[str, Path], tmp_path: Path
) -> None:
    other = copy_capsule(capsules["lifecycler"], tmp_path / "caps", name="lifecycler-gone")
    worker = install(env.runtime, other)
    env.runtime.workers.remove(worker)
    try:
        asking = env.ask(request("fly", "fly away"), capsule="lifecycler-gone")
        pending = env.request_of(capsule="lifecycler-gone")
        worker.process.kill()
        wait_until(
            lambda: all(a["request_id"] != pending["request_id"] for a in env.approvals()),
            what="the request to be withdrawn",
        )
        with pytest.raises(RpcError) as info:
            asking.result()
        assert "lifecycler-gone" in info.value.message
        result = astrid(env.home, "approve", pending["request_id"])
        assert result.returncode == 1
        assert f"no pending approval request '{pending['request_id']}'" in result.stderr
    finally:
        worker.stop()
