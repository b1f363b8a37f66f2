"""Host calls through a real broker and a real worker running the syscaller capsule.

Covers the ABI's hardest point (DESIGN §4.1: a host error must trap the guest, for void and
value-returning syscalls alike, and the guest performs no further effect), the syscalls of this
stage with their limits and error texts, and the list of syscalls still pending.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from astrid_core.launch import Event
from astrid_core.rpc import RpcError
from astrid_core.syscalls import SYSCALLS
from broker.dispatch import pending_syscalls
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration


MiB = 1024 * 1024
NO_PUBLISH = (
    "Capsule 'syscaller' has no ipc_publish declarations \u2014 publishing is denied. "
    "Add ipc_publish patterns to Capsule.toml [capabilities]"
)
NO_SUBSCRIBE = (
    "Capsule 'syscaller' has no ipc_subscribe declarations - subscribing is denied. "
    "Add ipc_subscribe patterns to Capsule.toml [capabilities]"
)


class Syscaller:
    def __init__(self, runtime: Runtime, client: Client, name: str = "syscaller") -> None:
        self.runtime = runtime
        self.client = client
        self.name = name

    def run(
        self, calls: Sequence[tuple[str, Sequence[bytes]]], **flags: bool
    ) -> list[bytes | None]:
        arguments = json.loads(script_tool_args(encode_script(calls, **flags)))
        return decode_hex_output(self.client.call_tool(self.name, "run", arguments, timeout=60))

    def trap(self, calls: Sequence[tuple[str, Sequence[bytes]]], **flags: bool) -> str:
        with pytest.raises(RpcError) as info:
            self.run(calls, **flags)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")

    def get(self, key: bytes) -> bytes | None:
        return self.run([("astrid_kv_get", [key])])[0]


@pytest.fixture(scope="module")
def env(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Syscaller]:
    base = tmp_path_factory.mktemp("hc")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    extra = """
[env.greeting]
type = "string"
default = "hello"

[env.from_file]
type = "secret"
"""
    capsule = copy_capsule(capsules["syscaller"], base / "caps", extra_toml=extra)
    (capsule / ".env.json").write_text(json.dumps({"from_file": "s3cret"}))
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    runtime.start_worker(capsule)
    client = runtime.client()
    yield Syscaller(runtime, client)
    client.close()
    runtime.stop()


# --------------------------------------------------------------------------------------------
# The ABI: linking, pending syscalls, traps


def test_a_capsule_importing_all_48_syscalls_links(env: Syscaller) -> None:
    assert env.run([("astrid_clock_ms", [])])[0]


def test_the_broker_implements_every_syscall() -> None:
    assert pending_syscalls() == []
    assert len(SYSCALLS) == 48


def test_after_a_denied_void_call_the_guest_performs_no_further_effect(env: Syscaller) -> None:
    text = env.trap(
        [
            ("astrid_kv_set", [b"void-before", b"1"]),
            ("astrid_ipc_publish", [b"topic", b"{}"]),  # void, denied: no ipc_publish grant
            ("astrid_kv_set", [b"void-after", b"1"]),
        ]
    )
    assert text == NO_PUBLISH
    assert env.get(b"void-before") == b"1"
    assert env.get(b"void-after") == b""


def test_after_a_denied_value_call_the_guest_performs_no_further_effect(env: Syscaller) -> None:
    text = env.trap(
        [
            ("astrid_kv_set", [b"value-before", b"1"]),
            ("astrid_ipc_subscribe", [b"topic"]),  # value-returning, denied: no grant
            ("astrid_kv_set", [b"value-after", b"1"]),
        ]
    )
    assert text == NO_SUBSCRIBE
    assert env.get(b"value-before") == b"1"
    assert env.get(b"value-after") == b""


def test_a_denied_void_call_stops_a_guest_that_loops_forever(env: Syscaller) -> None:
    started = time.monotonic()
    text = env.trap(
        [("astrid_ipc_unsubscribe", [b"77"]), ("astrid_kv_set", [b"loop-after", b"1"])], repeat=True
    )
    assert text == "Subscription handle not found"
    assert env.get(b"loop-after") == b""
    # Functional bound, far from the 10 s call timeout: the trap ended the loop, not the timeout.
    assert time.monotonic() - started < 8


def test_a_denied_void_call_stops_a_guest_spinning_without_host_calls(env: Syscaller) -> None:
    started = time.monotonic()
    text = env.trap([("astrid_kv_set", [b"", b"x"])], spin=True)
    assert text == "kv_set failed: invalid key: key must not be empty"
    assert time.monotonic() - started < 8


def test_a_trap_does_not_leak_into_the_next_invocation(env: Syscaller) -> None:
    env.trap([("astrid_kv_delete", [b""])])
    for _ in range(20):
        assert env.run(
            [("astrid_kv_set", [b"after-trap", b"ok"]), ("astrid_kv_get", [b"after-trap"])]
        ) == [
            None,
            b"ok",
        ]


def test_a_guest_that_spins_forever_hits_the_call_timeout(env: Syscaller) -> None:
    text = env.trap([("astrid_clock_ms", [])], spin=True)
    assert "timeout" in text.lower()
    assert env.run([("astrid_clock_ms", [])])[0]


# --------------------------------------------------------------------------------------------
# KV


def test_kv_round_trips_raw_bytes(env: Syscaller) -> None:
    value = bytes(range(256))
    assert env.run([("astrid_kv_set", [b"raw", value]), ("astrid_kv_get", [b"raw"])]) == [
        None,
        value,
    ]
    assert env.get(b"never-set") == b""
    assert env.run([("astrid_kv_set", [b"empty", b""]), ("astrid_kv_get", [b"empty"])]) == [
        None,
        b"",
    ]


def test_kv_list_clear_and_delete(env: Syscaller) -> None:
    results = env.run(
        [
            ("astrid_kv_set", [b"p/b", b"2"]),
            ("astrid_kv_set", [b"p/a", b"1"]),
            ("astrid_kv_set", [b"p/\xc3\xa4", b"3"]),
            ("astrid_kv_list_keys", [b"p/"]),
            ("astrid_kv_delete", [b"p/b"]),
            ("astrid_kv_delete", [b"p/b"]),
            ("astrid_kv_clear_prefix", [b"p/"]),
            ("astrid_kv_list_keys", [b"p/"]),
        ]
    )
    assert json.loads(results[3] or b"") == ["p/a", "p/b", "p/ä"]
    assert results[6] == b"2"
    assert results[7] == b"[]"


@pytest.mark.parametrize(
    ("calls", "text"),
    [
        (
            [("astrid_kv_set", [b"big", Fill(ord("x"), 10 * MiB + 1)])],
            "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes",
        ),
        (
            [("astrid_kv_get", [b"k" * 4097])],
            "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes",
        ),
        ([("astrid_kv_get", [b""])], "kv_get failed: invalid key: key must not be empty"),
        ([("astrid_kv_get", [b"\xff\xfe"])], "kv_get failed: invalid key: key must not be empty"),
        (
            [("astrid_kv_set", [b"a\0b", b"v"])],
            "kv_set failed: invalid key: key must not contain null bytes",
        ),
        ([("astrid_kv_delete", [b""])], "kv_delete failed: invalid key: key must not be empty"),
        (
            [("astrid_kv_list_keys", [b"\xff"])],
            "kv_list_keys prefix is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
        ),
        (
            [("astrid_kv_clear_prefix", [b"ok\xe2\x82"])],
            "kv_clear_prefix prefix is not valid UTF-8: incomplete utf-8 byte sequence from index 2",
        ),
        (
            [("astrid_kv_clear_prefix", [b"\0"])],
            "kv_clear_prefix failed: invalid key: prefix must not contain null bytes",
        ),
        (
            [("astrid_kv_list_keys", [b"p" * 4097])],
            "memory allocation of 4097 bytes exceeds maximum allowed limit of 4096 bytes",
        ),
    ],
    ids=[
        "value-10MiB+1",
        "key-4097",
        "empty-key",
        "non-utf8-key",
        "nul-key",
        "delete-empty",
        "list-non-utf8",
        "clear-incomplete-utf8",
        "clear-nul",
        "list-prefix-4097",
    ],
)
def test_kv_errors_trap_with_the_spec_text(
    env: Syscaller, calls: list[tuple[str, list[bytes]]], text: str
) -> None:
    assert env.trap(calls) == text


def test_kv_of_one_capsule_is_invisible_to_another(
    env: Syscaller, capsules: dict[str, Path], tmp_path: Path
) -> None:
    env.run([("astrid_kv_set", [b"private", b"mine"])])
    other = copy_capsule(capsules["syscaller"], tmp_path, name="other")
    env.runtime.start_worker(other)
    peer = Syscaller(env.runtime, env.client, "other")
    assert peer.get(b"private") == b""
    assert peer.run([("astrid_kv_list_keys", [b""])]) == [b"[]"]
    assert env.get(b"private") == b"mine"


# --------------------------------------------------------------------------------------------
# Log, clock, config, caller, readiness


def _log_lines(env: Syscaller) -> list[str]:
    return (env.runtime.home / "logs" / "syscaller.log").read_text().splitlines()


def test_log_writes_one_line_per_record_with_mapped_levels(env: Syscaller) -> None:
    env.run(
        [
            ("astrid_log", [b"Warning", b"careful"]),
            ("astrid_log", [b"nonsense", b"two\nlines"]),
            ("astrid_log", [b"err", b"bad \xff byte"]),
        ]
    )
    lines = _log_lines(env)[-3:]
    assert lines[0].endswith(" WARN   syscaller[1] careful")
    assert lines[1].endswith(" INFO   syscaller[1] two\\nlines")
    assert lines[2].endswith(" ERROR  syscaller[1] bad \ufffd byte")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            [b"info", b"m" * 65537],
            "memory allocation of 65537 bytes exceeds maximum allowed limit of 65536 bytes",
        ),
        (
            [b"l" * 65, b"m"],
            "memory allocation of 65 bytes exceeds maximum allowed limit of 64 bytes",
        ),
    ],
    ids=["message-64KiB+1", "level-65"],
)
def test_log_limits(env: Syscaller, args: list[bytes], text: str) -> None:
    """Mirrors the reference's malicious_log_rejected (65 KiB message)."""
    assert env.trap([("astrid_log", args)]) == text


def test_a_64KiB_log_message_is_accepted(env: Syscaller) -> None:
    env.run([("astrid_log", [b"info", b"m" * 65536])])


def test_a_10MiB_value_is_accepted(env: Syscaller) -> None:
    env.run([("astrid_kv_set", [b"big", Fill(ord("y"), 10 * MiB)])])
    (length,) = env.run([("astrid_kv_list_keys", [b"big"])])
    assert length == b'["big"]'


def test_clock_ms_is_wall_clock_milliseconds(env: Syscaller) -> None:
    before = time.time_ns() // 1_000_000
    (value,) = env.run([("astrid_clock_ms", [])])
    after = time.time_ns() // 1_000_000
    assert value is not None and value.isdigit()
    assert before <= int(value) <= after


def test_get_config_returns_json_strings(env: Syscaller) -> None:
    """Mirrors the reference's env_config_injection: default, injected (.env.json), missing."""
    socket_path, greeting, from_file, missing = env.run(
        [
            ("astrid_get_config", [b"ASTRID_SOCKET_PATH"]),
            ("astrid_get_config", [b"greeting"]),
            ("astrid_get_config", [b"from_file"]),
            ("astrid_get_config", [b"missing_key"]),
        ]
    )
    assert socket_path is not None
    assert json.loads(socket_path) == str(env.runtime.home / "sessions" / "system.sock")
    assert greeting == b'"hello"'
    assert from_file == b'"s3cret"'
    assert missing == b""


def test_get_caller_names_the_invoking_session(env: Syscaller) -> None:
    (caller,) = env.run([("astrid_get_caller", [])])
    data = json.loads(caller or b"")
    assert set(data) == {"session_id", "user_id"}
    assert len(data["session_id"]) == 36


def test_signal_ready_is_a_no_op_for_tool_capsules(env: Syscaller) -> None:
    assert env.run([("astrid_signal_ready", []), ("astrid_signal_ready", [])]) == [None, None]


def test_missing_configuration_refuses_the_capsule(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    extra = (
        '[env.api_key]\ntype = "secret"\n\n[env.mode]\ntype = "string"\nenum_values = ["a", "b"]\n'
    )
    capsule = copy_capsule(
        capsules["syscaller"], tmp_path / "caps", name="needs-config", extra_toml=extra
    )
    worker = runtime.start_worker(capsule, wait=Event.FAILED)
    failed = worker.wait_for(Event.FAILED)
    assert failed.fatal
    assert "Missing required environment variables: api_key, mode" in failed.reason
    assert worker.process.wait(10) == 78


# --------------------------------------------------------------------------------------------
# The QuickJS `shim` namespace: the same syscalls, reached by index


@pytest.fixture(scope="module")
def shim(env: Syscaller, capsules: dict[str, Path]) -> Syscaller:
    env.runtime.start_worker(capsules["shim"])
    return Syscaller(env.runtime, env.client, "shim")


def test_shim_reports_signatures_and_dispatches_by_index(shim: Syscaller) -> None:
    before = time.time_ns() // 1_000_000
    output = shim.client.call_tool("shim", "probe", {})
    # arg_type(log, 1) = 2, arg_type(log, 2) = 0, return_type(log) = 0, return_type(clock) = 2,
    # arg_type(unknown) = 0, invoke(unknown) = 0 silently; then the clock through index 34.
    assert output[:6] == "200200"
    assert int(output[6:]) >= before


def test_shim_void_syscalls_trap_synchronously(shim: Syscaller) -> None:
    with pytest.raises(RpcError) as info:
        shim.client.call_tool("shim", "void", {})
    assert (
        info.value.message
        == "astrid_tool_call failed: Capsule 'shim' has no ipc_publish declarations \u2014 "
        "publishing is denied. Add ipc_publish patterns to Capsule.toml [capabilities]"
    )


def test_shim_void_syscalls_run(shim: Syscaller) -> None:
    assert shim.client.call_tool("shim", "log", {}) == ""
    log = (shim.runtime.home / "logs" / "shim.log").read_text().splitlines()
    assert log[-1].endswith(" WARN   shim[1] from the shim")
