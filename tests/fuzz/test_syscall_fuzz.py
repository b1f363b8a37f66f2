"""Fuzzing every syscall's argument parsing through a real capsule: the syscaller capsule (no
grants at all, so every gated call is denied and nothing leaves the capsule's own state) calls
each of the 48 syscalls with random byte arguments of random sizes (random bytes, sizes at every
limit, JSON close to what the syscall parses, paths, handles, topics, deep nesting), one call at a
time and in random sequences.

Properties: the broker answers every call with a result of the right kind or a trap text, never
an internal error or a wire error; nothing blocks (the calls that could: ``ipc_recv`` has no
subscription to wait on, ``net_accept`` no listener, ``spawn_host`` no grant, ``elicit`` is
refused outside lifecycle hooks, ``request_approval`` times out after 100 ms); afterwards the
broker and the capsule still work (a plain ``kv_set``/``kv_get``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from astrid_core.rpc import Method
from astrid_core.syscalls import BY_NAME, SYSCALLS, Syscall
from tests.fuzz.strategies import dumps, json_values, syscall_args
from tests.security.support import Call, Trap, World, broker_alive, start_world, stop_world
from tests.syscaller import Fill

pytestmark = pytest.mark.integration

#: Per-call ceiling: far above any legitimate answer here, far below "hung".
CALL_TIMEOUT = 30.0

#: Texts that mean the broker (or the wire) failed rather than the call.
FORBIDDEN = ("internal broker error", "wire error", "is not implemented yet")


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = start_world(
        tmp_path_factory.mktemp("syscalls"),
        capsules["syscaller"],
        {"syscaller": ""},
        env={"ASTRID_APPROVAL_TIMEOUT_MS": "100", "ASTRID_ALLOW_LOCAL_IPS": None},
    )
    try:
        yield world
    finally:
        stop_world(world)


def _request_for(syscall: Syscall) -> st.SearchStrategy[bytes | Fill]:
    """JSON objects with the fields this syscall reads (random values), so that parsing gets
    past the first check."""
    keys = {
        "astrid_http_request": ["url", "method", "headers", "body"],
        "astrid_spawn_host": ["cmd", "args"],
        "astrid_spawn_background_host": ["cmd", "args"],
        "astrid_read_process_logs_host": ["id"],
        "astrid_kill_process_host": ["id"],
        "astrid_trigger_hook": ["hook", "payload"],
        "astrid_request_approval": ["action", "resource", "risk_level"],
        "astrid_elicit": ["type", "key", "description", "options", "default"],
        "astrid_has_secret": ["key"],
        "astrid_check_capsule_capability": ["source_uuid", "capability"],
        "astrid_identity_resolve": ["platform", "platform_user_id"],
        "astrid_identity_link": ["platform", "platform_user_id", "astrid_user_id", "method"],
        "astrid_identity_unlink": ["platform", "platform_user_id"],
        "astrid_identity_create_user": ["display_name"],
        "astrid_identity_list_links": ["astrid_user_id"],
    }.get(syscall.name, [])
    if not keys:
        return syscall_args
    values = st.one_of(
        st.text(max_size=20),
        st.sampled_from(
            [
                "http://127.0.0.1/",
                "http://10.0.0.1/",
                "file:///etc/passwd",
                "GET",
                "sh",
                "1",
                "00000000-0000-0000-0000-000000000000",
                "allow_prompt_injection",
                "select",
                "text",
            ]
        ),
        st.integers(-1, 2**64),
        json_values,
    )
    return st.fixed_dictionaries({}, optional=dict.fromkeys(keys, values)).map(dumps)


def _args_for(syscall: Syscall) -> st.SearchStrategy[list[bytes | Fill]]:
    # Half of the arguments are requests shaped for this syscall, half anything at all.
    request = _request_for(syscall)
    arg = st.booleans().flatmap(lambda shaped: request if shaped else syscall_args)
    return st.lists(arg, min_size=syscall.arity, max_size=syscall.arity)


def _run(world: World, calls: Sequence[Call]) -> list[bytes | None] | str:
    """The results, or the trap text; asserts the broker-level properties."""
    try:
        results = world["syscaller"].run(calls, timeout=CALL_TIMEOUT)
    except Trap as trap:
        assert not trap.text.startswith(FORBIDDEN), (calls, trap.text)
        return trap.text
    assert len(results) == len(calls)
    for (name, _), result in zip(calls, results, strict=True):
        if BY_NAME[name].returns:
            assert isinstance(result, bytes), (name, result)
        else:
            assert result is None, (name, result)
    return results


def _describe(calls: Sequence[Call]) -> str:
    return ", ".join(
        f"{name}({', '.join(repr(a)[:40] if isinstance(a, bytes) else repr(a) for a in args)})"
        for name, args in calls
    )


@pytest.mark.parametrize("name", [s.name for s in SYSCALLS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_syscall_with_random_arguments(world: World, name: str, data: st.DataObject) -> None:
    syscall = BY_NAME[name]
    args = data.draw(_args_for(syscall), label="args")
    call: Call = (name, args)
    _run(world, [call])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_sequences_of_syscalls(world: World, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 8), label="count")
    calls: list[Call] = []
    for _ in range(count):
        syscall = data.draw(st.sampled_from(SYSCALLS), label="syscall")
        calls.append((syscall.name, data.draw(_args_for(syscall), label="args")))
    note(_describe(calls))
    _run(world, calls)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("astrid_ipc_recv", [b"1", b"18446744073709551615"]),  # no subscription to wait on
        ("astrid_ipc_recv", [b"0", b"60000"]),
        ("astrid_net_accept", [b""]),  # no listener
        ("astrid_net_accept", [b"1"]),
        ("astrid_net_poll_accept", [b""]),
        ("astrid_spawn_host", [b'{"cmd":"sleep","args":["3600"]}']),  # no grant
        ("astrid_spawn_background_host", [b'{"cmd":"sleep","args":["3600"]}']),
        ("astrid_elicit", [b'{"type":"text","key":"k"}']),  # outside a lifecycle hook
        ("astrid_net_read", [b"1"]),
        ("astrid_http_request", [b'{"url":"http://10.255.255.1/"}']),  # no net grant
        ("astrid_write_file", [b"pwned.txt", Fill(ord("x"), 1024)]),  # no fs grant
    ],
)
def test_blocking_and_effectful_calls_are_bounded(
    world: World, name: str, args: list[bytes | Fill]
) -> None:
    outcome = _run(world, [(name, args)])
    assert isinstance(outcome, str), f"{name} was not refused: {outcome!r}"
    assert not (world.runtime.workspace / "pwned.txt").exists()


def test_a_well_formed_approval_request_is_answered_after_its_timeout(world: World) -> None:
    request = b'{"action":"read","resource":"/x","risk_level":"low"}'
    outcome = _run(world, [("astrid_request_approval", [request])])
    assert outcome == [b'{"approved":false,"decision":"deny"}']


def test_the_broker_and_the_capsule_still_work_after_the_fuzz(world: World) -> None:
    assert broker_alive(world.runtime)
    assert "syscaller" in world.client.request(Method.PING, {})["capsules"]
    calls: list[Call] = [
        ("astrid_kv_set", [b"after-fuzz", b"ok"]),
        ("astrid_kv_get", [b"after-fuzz"]),
    ]
    assert world["syscaller"].run(calls) == [None, b"ok"]
