"""Elicitation without processes: the request's field mapping (syscalls.md §2.10), the broker's
service over the kernel bus, and the operator's prompting (supervisor/operator.py)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from astrid_core.dirs import AstridHome
from broker.bus import BusMessage
from broker.elicitations import (
    REQUEST_TOPIC,
    RESPONSE_TOPIC,
    TIMEOUT_ENV,
    TIMEOUT_S,
    ElicitationService,
    ElicitField,
    PendingElicitation,
    timeout_s,
)
from broker.errors import SyscallError
from broker.ipc_payload import classify
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.secrets import SecretStore
from broker.sessions import CapsuleSession
from broker.syscalls.lifecycle import _elicit_field
from supervisor.operator import prompt_field

NIL = uuid.UUID(int=0)
OPERATOR = uuid.uuid4()


# --------------------------------------------------------------------------------------------
# The guest's request → the onboarding field


def field_of(request: str) -> dict[str, Any]:
    return _elicit_field(request.encode()).to_json()


def test_text_field() -> None:
    assert field_of('{"type":"text","key":"app_name","description":"App","default":"demo"}') == {
        "key": "app_name",
        "prompt": "App",
        "description": "App",
        "field_type": "Text",
        "default": "demo",
    }


def test_the_prompt_is_the_key_without_a_description() -> None:
    assert field_of('{"type":"text","key":"app_name"}') == {
        "key": "app_name",
        "prompt": "app_name",
        "field_type": "Text",
    }


def test_an_empty_description_is_still_the_prompt() -> None:
    """The reference's ``description.unwrap_or(key)``: only an absent description falls back."""
    assert field_of('{"type":"text","key":"k","description":""}') == {
        "key": "k",
        "prompt": "",
        "description": "",
        "field_type": "Text",
    }


def test_the_operator_prompt_for_an_empty_prompt_is_the_key() -> None:
    script = Script("v")
    script.ask(field_of('{"type":"text","key":"k","description":""}'))
    assert script.prompts == ["k: "]


def test_secret_field_never_has_options() -> None:
    assert field_of('{"type":"secret","key":"api_key","options":["x"]}') == {
        "key": "api_key",
        "prompt": "api_key",
        "field_type": "Secret",
    }


def test_select_field_lists_its_options_in_order() -> None:
    assert field_of(
        '{"type":"select","key":"mode","description":"Mode","options":["safe","fast","safe"]}'
    ) == {
        "key": "mode",
        "prompt": "Mode",
        "description": "Mode",
        "field_type": {"Enum": ["safe", "fast", "safe"]},
    }


def test_array_field() -> None:
    assert field_of('{"type":"array","key":"relays","default":"wss://x"}') == {
        "key": "relays",
        "prompt": "relays",
        "field_type": "Array",
        "default": "wss://x",
    }


def test_nulls_count_as_omitted() -> None:
    assert field_of('{"type":"text","key":"k","description":null,"default":null}') == {
        "key": "k",
        "prompt": "k",
        "field_type": "Text",
    }


def test_the_field_is_a_valid_elicit_request_payload() -> None:
    """What the broker publishes classifies as the elicit_request variant, not custom."""
    for request in (
        '{"type":"text","key":"k","description":"d","default":"x"}',
        '{"type":"secret","key":"k"}',
        '{"type":"select","key":"k","options":["a"]}',
        '{"type":"array","key":"k"}',
    ):
        payload = {
            "type": "elicit_request",
            "request_id": str(uuid.uuid4()),
            "capsule_id": "cap",
            "field": field_of(request),
        }
        assert classify(payload) == payload


@pytest.mark.parametrize(
    ("request_text", "text"),
    [
        ("", "invalid elicit request JSON: "),
        ("{", "invalid elicit request JSON: "),
        ("[]", "invalid elicit request JSON: "),
        ('{"key":"k"}', "invalid elicit request JSON: "),
        ('{"type":"text"}', "invalid elicit request JSON: "),
        ('{"type":1,"key":"k"}', "invalid elicit request JSON: "),
        ('{"type":"select","key":"k","options":"a"}', "invalid elicit request JSON: "),
        ('{"type":"select","key":"k","options":[1]}', "invalid elicit request JSON: "),
        ('{"type":"text","key":"k","default":5}', "invalid elicit request JSON: "),
        ('{"type":"Text","key":"k"}', "unknown elicit type: Text"),
        ('{"type":"","key":"k"}', "unknown elicit type: "),
        ('{"type":"select","key":"k"}', "select elicit request requires non-empty options"),
        (
            '{"type":"select","key":"k","options":[]}',
            "select elicit request requires non-empty options",
        ),
        (
            '{"type":"select","key":"k","options":null}',
            "select elicit request requires non-empty options",
        ),
    ],
)
def test_invalid_requests(request_text: str, text: str) -> None:
    with pytest.raises(SyscallError) as info:
        _elicit_field(request_text.encode())
    assert info.value.text.startswith(text), info.value.text


def test_the_request_size_limit() -> None:
    big = b'{"type":"text","key":"' + b"k" * (10 * 1024 * 1024) + b'"}'
    with pytest.raises(SyscallError) as info:
        _elicit_field(big)
    assert info.value.text == (
        f"memory allocation of {len(big)} bytes exceeds maximum allowed limit of 10485760 bytes"
    )


def test_pending_elicitation_json() -> None:
    asked = ElicitField("text", "k", None, (), None)
    pending = PendingElicitation("rid", "cap", asked, created_at=12.5)
    assert pending.to_json() == {
        "request_id": "rid",
        "capsule": "cap",
        "field": {"key": "k", "prompt": "k", "field_type": "Text"},
        "created_at": 12.5,
    }


# --------------------------------------------------------------------------------------------
# The service: publish, wait, result by type


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


def session(name: str = "cap") -> CapsuleSession:
    return cast(CapsuleSession, SimpleNamespace(name=name))


def elicit(
    kernel: Kernel, request: str, respond: Callable[[ElicitationService, str], None] | None
) -> tuple[dict[str, Any], list[BusMessage]]:
    service = kernel.service(ElicitationService)

    async def main() -> dict[str, Any]:
        requests = kernel.bus.subscribe(REQUEST_TOPIC)
        task = asyncio.ensure_future(service.elicit(session(), _elicit_field(request.encode())))
        if respond is not None:
            for _ in range(200):
                if service.pending:
                    break
                await asyncio.sleep(0.005)
            respond(service, next(iter(service.pending)))
        try:
            return await task
        finally:
            seen.extend(requests.drain().messages)

    seen: list[BusMessage] = []
    return asyncio.run(main()), seen


def answer(**response: Any) -> Callable[[ElicitationService, str], None]:
    return lambda service, request_id: service.answer(request_id, OPERATOR, response)


@pytest.mark.parametrize(
    ("request_text", "response", "result"),
    [
        ('{"type":"text","key":"k"}', {"value": "v"}, {"value": "v"}),
        ('{"type":"text","key":"k"}', {"value": ""}, {"value": ""}),
        ('{"type":"text","key":"k"}', {"values": ["a"]}, {"value": ""}),
        ('{"type":"select","key":"k","options":["a"]}', {"value": "b"}, {"value": "b"}),
        ('{"type":"array","key":"k"}', {"values": ["a", "b"]}, {"values": ["a", "b"]}),
        ('{"type":"array","key":"k"}', {"values": []}, {"values": []}),
        ('{"type":"array","key":"k"}', {"value": "a"}, {"values": []}),
        ('{"type":"secret","key":"token"}', {"value": "s3"}, {"ok": True}),
    ],
)
def test_results_by_type(
    kernel: Kernel, request_text: str, response: dict[str, Any], result: dict[str, Any]
) -> None:
    got, seen = elicit(kernel, request_text, answer(**response))
    assert got == result
    (published,) = seen
    assert published.topic == REQUEST_TOPIC
    assert published.source_id == NIL
    payload = published.payload
    assert payload["type"] == "elicit_request"
    assert payload["capsule_id"] == "cap"
    assert uuid.UUID(payload["request_id"]).version == 4
    assert payload["field"] == field_of(request_text)
    assert kernel.service(ElicitationService).pending == {}


def test_a_secret_goes_to_the_store_not_to_the_kv(kernel: Kernel) -> None:
    got, _ = elicit(kernel, '{"type":"secret","key":"token"}', answer(value="s3cr3t"))
    assert got == {"ok": True}
    assert kernel.service(SecretStore).get("cap", "token") == "s3cr3t"
    assert kernel.kv.connection.execute("SELECT count(*) FROM kv").fetchone() == (0,)


@pytest.mark.parametrize(
    ("request_text", "respond", "text"),
    [
        ('{"type":"text","key":"k"}', answer(), "user cancelled elicit request"),
        ('{"type":"array","key":"k"}', answer(), "user cancelled elicit request"),
        (
            '{"type":"secret","key":"k"}',
            answer(value=""),
            "received empty secret value from elicit response",
        ),
        (
            '{"type":"secret","key":"k"}',
            answer(values=["x"]),
            "received empty secret value from elicit response",
        ),
        (
            '{"type":"secret","key":"a:b"}',
            answer(value="x"),
            "failed to persist secret: invalid secret key or value: "
            "secret key must not contain ':'",
        ),
        (
            '{"type":"secret","key":""}',
            answer(value="x"),
            "failed to persist secret: invalid secret key or value: secret key must not be empty",
        ),
        (
            '{"type":"text","key":"k"}',
            lambda service, rid: service.kernel.bus.publish(
                BusMessage(f"{RESPONSE_TOPIC}.{rid}", {"type": "custom", "data": 1}, OPERATOR)
            ),
            "unexpected IPC payload type in elicit response",
        ),
    ],
)
def test_answers_that_trap(
    kernel: Kernel,
    request_text: str,
    respond: Callable[[ElicitationService, str], None],
    text: str,
) -> None:
    with pytest.raises(SyscallError) as info:
        elicit(kernel, request_text, respond)
    assert info.value.text == text
    assert kernel.service(ElicitationService).pending == {}


def test_a_timeout_traps(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "30")
    with pytest.raises(SyscallError) as info:
        elicit(kernel, '{"type":"text","key":"k"}', None)
    assert info.value.text == (
        "elicit request timed out, was cancelled, or response channel closed"
    )


def test_a_capsule_that_leaves_cancels_its_question(kernel: Kernel) -> None:
    def leave(service: ElicitationService, request_id: str) -> None:
        for hook in kernel.on_disconnect:
            hook(session("other"))
        assert request_id in service.pending
        for hook in kernel.on_disconnect:
            hook(session("cap"))

    with pytest.raises(SyscallError) as info:
        elicit(kernel, '{"type":"text","key":"k"}', leave)
    assert info.value.text.startswith("elicit request timed out, was cancelled")


def test_answering_an_unknown_request(kernel: Kernel) -> None:
    with pytest.raises(KeyError):
        kernel.service(ElicitationService).answer("nope", OPERATOR, {"value": "x"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 120.0), ("1000", 1.0), ("0", 0.0), ("999999", 120.0), ("x", 120.0)],
)
def test_timeout_env(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float) -> None:
    if value is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, value)
    assert timeout_s() == expected
    assert TIMEOUT_S == 120.0


# --------------------------------------------------------------------------------------------
# The operator's prompts (supervisor/operator.py)


class Script:
    """Scripted answers; EOFError when they run out. Records every prompt."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []
        self.secret_prompts: list[str] = []

    def read_line(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)

    def read_secret(self, prompt: str) -> str:
        self.secret_prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)

    def ask(self, field: dict[str, Any], capsule: str = "cap") -> tuple[dict[str, Any], str]:
        out = io.StringIO()
        response = prompt_field(capsule, field, self.read_line, self.read_secret, out)
        return response, out.getvalue()


TEXT = {"key": "app_name", "prompt": "Application name", "field_type": "Text", "default": "demo"}


def test_text_answer() -> None:
    script = Script("my-app")
    response, out = script.ask(TEXT)
    assert response == {"value": "my-app"}
    assert script.prompts == ["Application name [demo]: "]
    assert out.startswith("capsule cap asks for app_name\n")


def test_text_empty_answer_takes_the_default() -> None:
    assert Script("").ask(TEXT)[0] == {"value": "demo"}


def test_text_empty_answer_without_a_default_is_empty() -> None:
    field = {"key": "k", "prompt": "k", "field_type": "Text"}
    script = Script("")
    assert script.ask(field)[0] == {"value": ""}
    assert script.prompts == ["k: "]


def test_text_keeps_spaces() -> None:
    assert Script("  spaced  ").ask(TEXT)[0] == {"value": "  spaced  "}


def test_the_description_is_shown_when_it_differs_from_the_prompt() -> None:
    field = {"key": "k", "prompt": "Name", "description": "Your full name", "field_type": "Text"}
    _, out = Script("x").ask(field)
    assert "capsule cap asks for k (Your full name)\n" in out
    field = {"key": "k", "prompt": "Name", "description": "Name", "field_type": "Text"}
    _, out = Script("x").ask(field)
    assert "(Name)" not in out


def test_the_prompt_falls_back_to_the_key() -> None:
    script = Script("v")
    script.ask({"key": "token", "field_type": "Text"})
    assert script.prompts == ["token: "]


def test_secret_uses_the_hidden_reader() -> None:
    script = Script("hunter2")
    response, out = script.ask({"key": "api_key", "prompt": "API key", "field_type": "Secret"})
    assert response == {"value": "hunter2"}
    assert script.secret_prompts == ["API key (hidden): "]
    assert script.prompts == []
    assert "hunter2" not in out


def test_secret_ignores_a_default() -> None:
    field = {"key": "k", "prompt": "k", "field_type": "Secret", "default": "d"}
    assert Script("").ask(field)[0] == {"value": ""}


SELECT = {"key": "mode", "prompt": "Mode", "field_type": {"Enum": ["fast", "safe", "slow"]}}


def test_select_by_number() -> None:
    response, out = Script("2").ask(SELECT)
    assert response == {"value": "safe"}
    assert "  1) fast\n  2) safe\n  3) slow\n" in out


def test_select_by_name() -> None:
    assert Script("slow").ask(SELECT)[0] == {"value": "slow"}
    assert Script(" fast ").ask(SELECT)[0] == {"value": "fast"}


def test_select_asks_again_until_the_answer_is_an_option() -> None:
    script = Script("0", "4", "medium", "", "3")
    response, out = script.ask(SELECT)
    assert response == {"value": "slow"}
    assert len(script.prompts) == 5
    assert out.count("choose 1 to 3 or type an option") == 4


def test_select_default() -> None:
    field = dict(SELECT, default="safe")
    script = Script("")
    assert script.ask(field)[0] == {"value": "safe"}
    assert script.prompts == ["Mode [safe]: "]


def test_array_until_an_empty_line() -> None:
    script = Script("wss://a", "wss://b", "", "not read")
    response, out = script.ask({"key": "relays", "prompt": "relays", "field_type": "Array"})
    assert response == {"values": ["wss://a", "wss://b"]}
    assert script.prompts == ["  item 1: ", "  item 2: ", "  item 3: "]
    assert script.lines == ["not read"]
    assert "one item per line, an empty line to finish" in out


def test_array_empty() -> None:
    assert Script("").ask({"key": "r", "field_type": "Array"})[0] == {"values": []}


@pytest.mark.parametrize(
    "field",
    [
        TEXT,
        {"key": "k", "field_type": "Secret"},
        SELECT,
        {"key": "k", "field_type": "Array"},
    ],
)
def test_end_of_input_cancels(field: dict[str, Any]) -> None:
    response, out = Script().ask(field)
    assert response == {}
    assert out.endswith("\n")


def test_end_of_input_in_the_middle_of_an_array_cancels() -> None:
    assert Script("a", "b").ask({"key": "k", "field_type": "Array"})[0] == {}


def test_a_question_takes_one_answer(kernel: Kernel) -> None:
    def twice(service: ElicitationService, request_id: str) -> None:
        service.answer(request_id, OPERATOR, {"value": "first"})
        assert service.pending == {}
        with pytest.raises(KeyError):
            service.answer(request_id, OPERATOR, {"value": "second"})

    assert elicit(kernel, '{"type":"text","key":"k"}', twice)[0] == {"value": "first"}
