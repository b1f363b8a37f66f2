"""Install and upgrade hooks, astrid_elicit and astrid_has_secret through a real broker and real
workers running the lifecycler capsule (tests/capsules/lifecycler).

DESIGN §6.4: the hooks use the capsule's real KV namespace and ``astrid_upgrade`` receives
``{"prev_version": "..."}``; §6.6: secrets live apart from the KV, encrypted at rest;
syscalls.md §2.10 for the texts; §7 (``install_with_elicit``, ``upgrade_records_kv``).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from astrid_core import rpc
from astrid_core.launch import Event
from astrid_core.rpc import RpcError
from astrid_core.session import MAX_CLIENT_FRAME, recv_frame
from broker.secrets import KEY_FILE, load_or_create_key
from tests.conftest import copy_capsule
from tests.harness import Child, Client, Runtime

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NIL = str(uuid.UUID(int=0))
SECRET = "s3cret-Value-7f1c"
ONLY_LIFECYCLE = "elicit is only available during #[install] or #[upgrade] lifecycle hooks"
TIMED_OUT = "elicit request timed out, was cancelled, or response channel closed"

TEXT_FIELD = {
    "key": "app_name",
    "prompt": "Application name",
    "description": "Application name",
    "field_type": "Text",
    "default": "demo",
}
SECRET_FIELD = {
    "key": "api_key",
    "prompt": "API key",
    "description": "API key",
    "field_type": "Secret",
}
SELECT_FIELD = {
    "key": "mode",
    "prompt": "Mode",
    "description": "Mode",
    "field_type": {"Enum": ["fast", "safe"]},
}
ARRAY_FIELD = {"key": "relays", "prompt": "relays", "field_type": "Array"}


# --------------------------------------------------------------------------------------------
# Helpers


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def pending(client: Client) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = client.request("elicitations.list", {})["elicitations"]
    return result


def next_elicitation(client: Client, seen: set[str] | None = None) -> dict[str, Any]:
    """The first pending elicitation not in ``seen`` (waiting for it)."""
    seen = seen if seen is not None else set()

    def fresh() -> dict[str, Any] | None:
        for item in pending(client):
            if item["request_id"] not in seen:
                return item
        return None

    item: dict[str, Any] = wait_until(fresh, what="a pending elicitation")
    seen.add(item["request_id"])
    return item


def answer(client: Client, request_id: str, **response: Any) -> Any:
    return client.request("elicitations.answer", {"request_id": request_id, **response})


def kv(home: Path, capsule: str, key: str) -> bytes | None:
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT value FROM kv WHERE ns = ? AND key = ?", (f"capsule:{capsule}", key.encode())
        ).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


def query(home: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def installed_version(home: Path, capsule: str) -> str | None:
    try:
        rows = query(home, "SELECT version FROM capsule_versions WHERE capsule = ?", capsule)
    except sqlite3.OperationalError:  # no table yet
        return None
    return str(rows[0][0]) if rows else None


def set_version(capsule_dir: Path, version: str) -> None:
    manifest = capsule_dir / "Capsule.toml"
    text = manifest.read_text()
    current = text.split('version = "', 1)[1].split('"', 1)[0]
    manifest.write_text(text.replace(f'version = "{current}"', f'version = "{version}"', 1))


def stop(runtime: Runtime, worker: Child) -> None:
    worker.stop()
    runtime.workers.remove(worker)


def failure(worker: Child) -> str:
    failed = worker.wait_for(Event.FAILED, timeout=30)
    assert failed.fatal, failed
    assert worker.process.wait(10) == 78  # ExitCode.CONFIG: a restart cannot help
    return failed.reason


def tool(client: Client, capsule: str, name: str, arguments: Any) -> str:
    return client.call_tool(capsule, name, arguments)


def tool_trap(client: Client, capsule: str, name: str, arguments: Any) -> str:
    with pytest.raises(RpcError) as info:
        client.call_tool(capsule, name, arguments)
    message = info.value.message
    assert message.startswith("astrid_tool_call failed: "), message
    return message.removeprefix("astrid_tool_call failed: ")


class BusWatcher:
    """A client subscribed to a topic pattern, collecting the ``bus.messages`` it receives."""

    def __init__(self, home: Path, pattern: str) -> None:
        self.client = Client(home)
        self.client.request(rpc.Method.BUS_SUBSCRIBE, {"pattern": pattern})
        self.messages: list[dict[str, Any]] = []

    def collect(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.messages)} of {count}: {self.messages}")
            frame = json.loads(recv_frame(self.client.sock, MAX_CLIENT_FRAME, timeout=remaining))
            if frame.get("method") == rpc.Method.BUS_MESSAGES:
                self.messages += frame["params"]["envelope"]["messages"]
        return self.messages

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[Client]:
    c = runtime.client()
    yield c
    c.close()


@pytest.fixture
def lifecycler(capsules: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the lifecycler capsule (its manifest may be edited)."""
    return copy_capsule(capsules["lifecycler"], tmp_path / "caps")


def run_install(
    runtime: Runtime,
    client: Client,
    capsule_dir: Path,
    app_name: str = "my-app",
    secret: str | None = SECRET,
) -> Child:
    """Start the capsule and answer its install hook's questions through JSON-RPC."""
    worker = runtime.start_worker(capsule_dir, wait=None)
    seen: set[str] = set()
    asked = next_elicitation(client, seen)
    assert asked["field"] == TEXT_FIELD
    answer(client, asked["request_id"], value=app_name)
    asked = next_elicitation(client, seen)
    if secret is not None:
        assert asked["field"] == SECRET_FIELD
        answer(client, asked["request_id"], value=secret)
        asked = next_elicitation(client, seen)
    assert asked["field"] == SELECT_FIELD
    answer(client, asked["request_id"], value="safe")
    asked = next_elicitation(client, seen)
    assert asked["field"] == ARRAY_FIELD
    answer(client, asked["request_id"], values=["wss://relay-a", "wss://relay-b"])
    worker.wait_for(Event.READY)
    return worker


# --------------------------------------------------------------------------------------------
# Install, restart, upgrade


def test_install_elicits_stores_and_records_the_version(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    watcher = BusWatcher(home, "astrid.v1.elicit")
    try:
        worker = runtime.start_worker(lifecycler, wait=None)
        seen: set[str] = set()

        asked = next_elicitation(client, seen)
        assert asked["capsule"] == "lifecycler"
        assert asked["field"] == TEXT_FIELD
        assert abs(asked["created_at"] - time.time()) < 60
        # The hook is waiting: the capsule is not READY, and the version is not recorded yet.
        assert all(e.event != Event.READY for e in worker.read_events(0.2))
        assert installed_version(home, "lifecycler") is None
        assert answer(client, asked["request_id"], value="my-app") == {
            "request_id": asked["request_id"]
        }

        asked = next_elicitation(client, seen)
        assert asked["field"] == SECRET_FIELD
        answer(client, asked["request_id"], value=SECRET)
        asked = next_elicitation(client, seen)
        assert asked["field"] == SELECT_FIELD
        answer(client, asked["request_id"], value="safe")
        asked = next_elicitation(client, seen)
        assert asked["field"] == ARRAY_FIELD
        answer(client, asked["request_id"], values=["wss://relay-a", "wss://relay-b"])
        worker.wait_for(Event.READY)

        # Every question went out on astrid.v1.elicit from the kernel (nil source).
        requests = watcher.collect(4)
        assert [m["topic"] for m in requests] == ["astrid.v1.elicit"] * 4
        assert {m["source_id"] for m in requests} == {NIL}
        payloads = [m["payload"] for m in requests]
        assert [p["type"] for p in payloads] == ["elicit_request"] * 4
        assert [p["capsule_id"] for p in payloads] == ["lifecycler"] * 4
        assert [p["field"] for p in payloads] == [
            TEXT_FIELD,
            SECRET_FIELD,
            SELECT_FIELD,
            ARRAY_FIELD,
        ]
        assert {p["request_id"] for p in payloads} == seen
    finally:
        watcher.close()

    assert pending(client) == []
    # The hook wrote into the capsule's real KV namespace (DESIGN §6.4).
    assert kv(home, "lifecycler", "install_app_name") == b"my-app"
    assert kv(home, "lifecycler", "install_mode") == b"safe"
    assert json.loads(kv(home, "lifecycler", "install_relays") or b"") == {
        "values": ["wss://relay-a", "wss://relay-b"]
    }
    assert kv(home, "lifecycler", "install_ran") == b"true"
    assert kv(home, "lifecycler", "upgrade_ran") is None
    assert installed_version(home, "lifecycler") == "1.0.0"
    # The same values through the capsule's own KV syscalls.
    assert tool(client, "lifecycler", "kv-get", {"key": "install_app_name"}) == "my-app"
    assert tool(client, "lifecycler", "has-secret", {"key": "api_key"}) == '{"exists":true}'
    assert tool(client, "lifecycler", "has-secret", {"key": "other"}) == '{"exists":false}'


def test_the_secret_is_encrypted_and_invisible_to_the_capsules_kv(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    run_install(runtime, client, lifecycler)

    # Not in the capsule's KV: neither as a key the capsule can list nor under the reference's
    # fallback key.
    keys = json.loads(tool(client, "lifecycler", "kv-keys", {"prefix": ""}))
    assert sorted(keys) == ["install_app_name", "install_mode", "install_ran", "install_relays"]
    for key in ("__secret:api_key", "api_key", "secret:api_key"):
        assert tool(client, "lifecycler", "kv-get", {"key": key}) == ""
    assert query(home, "SELECT count(*) FROM kv WHERE key LIKE ?", b"%secret%") == [(0,)]

    # In the secrets table, sealed with AES-GCM; the plaintext is nowhere in the database files.
    rows = query(home, "SELECT capsule, key, nonce, ciphertext FROM secrets")
    assert [(row[0], row[1]) for row in rows] == [("lifecycler", "api_key")]
    _, _, nonce, sealed = rows[0]
    assert SECRET.encode() not in bytes(sealed)
    for path in home.glob("state.db*"):
        assert SECRET.encode() not in path.read_bytes(), path
    key_file = home / "keys" / KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    plain = AESGCM(load_or_create_key(key_file)).decrypt(
        bytes(nonce), bytes(sealed), b"astrid-secret\0lifecycler\0api_key"
    )
    assert plain == SECRET.encode()


def test_a_restart_runs_no_hook_and_a_new_version_runs_the_upgrade(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    worker = run_install(runtime, client, lifecycler)
    stop(runtime, worker)

    # Same version: no hook, READY at once, nothing asked, nothing rewritten.
    worker = runtime.start_worker(lifecycler)
    assert pending(client) == []
    assert kv(home, "lifecycler", "upgrade_ran") is None
    assert kv(home, "lifecycler", "install_app_name") == b"my-app"
    stop(runtime, worker)

    # A version bump: astrid_upgrade with {"prev_version": "1.0.0"} as the SDK expects.
    set_version(lifecycler, "1.1.0")
    worker = runtime.start_worker(lifecycler)
    assert kv(home, "lifecycler", "upgrade_ran") == b"true"
    assert json.loads(kv(home, "lifecycler", "upgrade_input") or b"") == {"prev_version": "1.0.0"}
    assert kv(home, "lifecycler", "upgrade_input") == b'{"prev_version":"1.0.0"}'
    assert installed_version(home, "lifecycler") == "1.1.0"
    # The install hook did not run again.
    assert kv(home, "lifecycler", "install_app_name") == b"my-app"
    assert pending(client) == []
    stop(runtime, worker)

    # And the next restart runs nothing again; a downgrade is another version: upgrade again.
    runtime.start_worker(lifecycler)
    assert installed_version(home, "lifecycler") == "1.1.0"
    stop(runtime, runtime.workers[-1])
    set_version(lifecycler, "0.9.0")
    runtime.start_worker(lifecycler)
    assert kv(home, "lifecycler", "upgrade_input") == b'{"prev_version":"1.1.0"}'
    assert installed_version(home, "lifecycler") == "0.9.0"


def test_a_trapping_hook_stops_the_capsule_and_records_nothing(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    worker = runtime.start_worker(lifecycler, wait=None)
    seen: set[str] = set()
    asked = next_elicitation(client, seen)
    answer(client, asked["request_id"], value="first-try")
    asked = next_elicitation(client, seen)
    answer(client, asked["request_id"], value=SECRET)
    asked = next_elicitation(client, seen)
    assert asked["field"]["key"] == "mode"
    answer(client, asked["request_id"])  # neither value nor values: the operator cancelled

    reason = failure(worker)
    assert reason == "lifecycle hook astrid_install failed: user cancelled elicit request"
    assert installed_version(home, "lifecycler") is None
    # What the hook wrote before the trap stays (no rollback), the rest never happened.
    assert kv(home, "lifecycler", "install_app_name") == b"first-try"
    assert kv(home, "lifecycler", "install_ran") is None
    runtime.workers.remove(worker)
    worker.stop()

    # The next start runs astrid_install again; the secret is known now, so it is not asked.
    run_install(runtime, client, lifecycler, app_name="second-try", secret=None)
    assert kv(home, "lifecycler", "install_app_name") == b"second-try"
    assert kv(home, "lifecycler", "install_ran") == b"true"
    assert installed_version(home, "lifecycler") == "1.0.0"


def test_a_guest_failure_in_the_hook_is_fatal(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    home = runtime.home
    extra = '[env.install_fail]\ntype = "string"\ndefault = "boom"\n'
    capsule = copy_capsule(capsules["lifecycler"], tmp_path / "caps", extra_toml=extra)
    worker = runtime.start_worker(capsule, wait=None)
    reason = failure(worker)
    assert reason.startswith("lifecycle hook astrid_install failed: ")
    assert "lifecycler: install failed: boom" in reason
    assert installed_version(home, "lifecycler") is None
    assert kv(home, "lifecycler", "install_ran") is None
    log = (home / "lifecycler.out").read_text()
    assert "lifecycle hook astrid_install failed" in log


def test_a_hook_waits_without_the_call_timeout(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    """A tool capsule's calls end after 10 s; its install hook may wait longer for the operator."""
    worker = runtime.start_worker(lifecycler, wait=None)
    asked = next_elicitation(client)
    time.sleep(11)
    assert worker.process.poll() is None
    answer(client, asked["request_id"], value="patient")
    seen = {asked["request_id"]}
    responses: list[dict[str, Any]] = [{"value": SECRET}, {"value": "fast"}, {"values": []}]
    for response in responses:
        asked = next_elicitation(client, seen)
        answer(client, asked["request_id"], **response)
    worker.wait_for(Event.READY)
    assert kv(runtime.home, "lifecycler", "install_app_name") == b"patient"
    assert kv(runtime.home, "lifecycler", "install_relays") == b'{"values":[]}'


def call_in_thread(home: Path, capsule: str, name: str, arguments: Any) -> dict[str, Any]:
    """Start a tool call in a thread; the dict gets its "output" or "error" when it ends."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        c = Client(home)
        try:
            outcome["output"] = c.call_tool(capsule, name, arguments, timeout=60)
        except RpcError as exc:
            outcome["error"] = exc.message
        finally:
            c.close()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_invocations_wait_for_the_hook(runtime: Runtime, client: Client, lifecycler: Path) -> None:
    """A tool call that arrives during the install hook runs after it, outside the lifecycle."""
    worker = runtime.start_worker(lifecycler, wait=None)
    seen: set[str] = set()
    asked = next_elicitation(client, seen)
    read_back = call_in_thread(runtime.home, "lifecycler", "kv-get", {"key": "install_app_name"})
    late_elicit = call_in_thread(runtime.home, "lifecycler", "elicit-now", {})
    time.sleep(0.5)
    assert read_back["thread"].is_alive() and late_elicit["thread"].is_alive()
    answer(client, asked["request_id"], value="queued")
    for response in ({"value": SECRET}, {"value": "fast"}, {"values": ["r"]}):
        asked = next_elicitation(client, seen)
        answer(client, asked["request_id"], **response)
    worker.wait_for(Event.READY)
    read_back["thread"].join(30)
    late_elicit["thread"].join(30)
    assert read_back.get("output") == "queued"
    assert late_elicit.get("error") == f"astrid_tool_call failed: {ONLY_LIFECYCLE}"


def test_invocations_queued_behind_a_failing_hook_fail(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    worker = runtime.start_worker(lifecycler, wait=None)
    asked = next_elicitation(client)
    queued = call_in_thread(runtime.home, "lifecycler", "kv-get", {"key": "x"})
    time.sleep(0.3)
    answer(client, asked["request_id"])  # cancel: the hook traps, the worker exits
    failure(worker)
    queued["thread"].join(30)
    assert not queued["thread"].is_alive()
    assert "output" not in queued
    assert "lifecycler" in queued["error"]


def test_capsules_without_hooks_are_recorded_as_installed(
    runtime: Runtime, capsules: dict[str, Path]
) -> None:
    runtime.start_worker(capsules["hello-tool"])
    assert installed_version(runtime.home, "hello-tool") == "0.1.0"


# --------------------------------------------------------------------------------------------
# astrid_elicit: results and error texts


@pytest.fixture(scope="module")
def shared(
    capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, Client, Path]]:
    """One broker for the tests that each start their own renamed copy of the capsule."""
    base = tmp_path_factory.mktemp("lifecycle")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    rt = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    rt.start_broker()
    c = rt.client()
    yield rt, c, base / "caps"
    c.close()
    rt.stop()


def raw_elicit_capsule(
    shared: tuple[Runtime, Client, Path], capsules: dict[str, Path], name: str, request: str
) -> Child:
    """Start a copy whose install hook only passes ``request`` to astrid_elicit."""
    runtime, _, caps = shared
    extra = f"[env.elicit_raw]\ntype = \"string\"\ndefault = '{request}'\n"
    capsule = copy_capsule(capsules["lifecycler"], caps, name=name, extra_toml=extra)
    return runtime.start_worker(capsule, wait=None)


def pending_of(client: Client, capsule: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((p for p in pending(client) if p["capsule"] == capsule), None)

    item: dict[str, Any] = wait_until(find, what=f"an elicitation of {capsule}")
    return item


@pytest.mark.parametrize(
    ("name", "elicit_request", "text"),
    [
        ("lc-bad-json", "{not json", "invalid elicit request JSON: "),
        ("lc-not-object", "[1, 2]", "invalid elicit request JSON: "),
        ("lc-no-key", '{"type":"text"}', "invalid elicit request JSON: "),
        ("lc-unknown-type", '{"type":"number","key":"k"}', "unknown elicit type: number"),
        (
            "lc-select-missing",
            '{"type":"select","key":"k"}',
            "select elicit request requires non-empty options",
        ),
        (
            "lc-select-empty",
            '{"type":"select","key":"k","options":[]}',
            "select elicit request requires non-empty options",
        ),
    ],
)
def test_invalid_elicit_requests_trap(
    shared: tuple[Runtime, Client, Path],
    capsules: dict[str, Path],
    name: str,
    elicit_request: str,
    text: str,
) -> None:
    runtime, client, _ = shared
    worker = raw_elicit_capsule(shared, capsules, name, elicit_request)
    reason = failure(worker)
    assert reason.startswith(f"lifecycle hook astrid_install failed: {text}"), reason
    assert installed_version(runtime.home, name) is None
    assert all(p["capsule"] != name for p in pending(client))


@pytest.mark.parametrize(
    ("name", "elicit_request", "response", "text"),
    [
        ("lc-cancel-text", '{"type":"text","key":"k"}', {}, "user cancelled elicit request"),
        ("lc-cancel-array", '{"type":"array","key":"k"}', {}, "user cancelled elicit request"),
        (
            "lc-empty-secret",
            '{"type":"secret","key":"token"}',
            {"value": ""},
            "received empty secret value from elicit response",
        ),
        (
            "lc-secret-values",
            '{"type":"secret","key":"token"}',
            {"values": ["a"]},
            "received empty secret value from elicit response",
        ),
        (
            "lc-secret-colon",
            '{"type":"secret","key":"a:b"}',
            {"value": "x"},
            "failed to persist secret: invalid secret key or value: "
            "secret key must not contain ':'",
        ),
    ],
)
def test_elicit_answers_that_trap(
    shared: tuple[Runtime, Client, Path],
    capsules: dict[str, Path],
    name: str,
    elicit_request: str,
    response: dict[str, Any],
    text: str,
) -> None:
    runtime, client, _ = shared
    worker = raw_elicit_capsule(shared, capsules, name, elicit_request)
    asked = pending_of(client, name)
    answer(client, asked["request_id"], **response)
    assert failure(worker) == f"lifecycle hook astrid_install failed: {text}"
    assert installed_version(runtime.home, name) is None


def test_an_unexpected_payload_on_the_response_topic_traps(
    shared: tuple[Runtime, Client, Path], capsules: dict[str, Path]
) -> None:
    runtime, client, _ = shared
    name = "lc-wrong-payload"
    worker = raw_elicit_capsule(shared, capsules, name, '{"type":"text","key":"k"}')
    asked = pending_of(client, name)
    published = client.request(
        rpc.Method.BUS_PUBLISH,
        {
            "topic": f"astrid.v1.elicit.response.{asked['request_id']}",
            "payload": {"type": "approval_response", "request_id": "x", "decision": "approve"},
        },
    )
    assert published["delivered"] == 1
    assert failure(worker) == (
        "lifecycle hook astrid_install failed: unexpected IPC payload type in elicit response"
    )
    assert installed_version(runtime.home, name) is None


def test_a_response_published_on_the_bus_answers_like_the_rpc(
    shared: tuple[Runtime, Client, Path], capsules: dict[str, Path]
) -> None:
    """Any client on the bus may answer (an elicit_response on the response topic)."""
    runtime, client, _ = shared
    name = "lc-bus-answer"
    worker = raw_elicit_capsule(shared, capsules, name, '{"type":"text","key":"k"}')
    asked = pending_of(client, name)
    client.request(
        rpc.Method.BUS_PUBLISH,
        {
            "topic": f"astrid.v1.elicit.response.{asked['request_id']}",
            "payload": {
                "type": "elicit_response",
                "request_id": asked["request_id"],
                "value": "from the bus",
            },
        },
    )
    worker.wait_for(Event.READY)
    assert kv(runtime.home, name, "elicit_result") == b'{"value":"from the bus"}'
    assert installed_version(runtime.home, name) == "1.0.0"


@pytest.mark.parametrize(
    ("name", "elicit_request", "response", "result"),
    [
        # text/select: {"value"} ("" when only values came); the host does not check options.
        ("lc-text", '{"type":"text","key":"k"}', {"value": "hi \u00e9"}, {"value": "hi \u00e9"}),
        ("lc-text-values", '{"type":"text","key":"k"}', {"values": ["a"]}, {"value": ""}),
        (
            "lc-select-other",
            '{"type":"select","key":"k","options":["a","b"]}',
            {"value": "zzz"},
            {"value": "zzz"},
        ),
        # array: {"values"} ([] when only a value came).
        ("lc-array", '{"type":"array","key":"k"}', {"values": ["x", "y"]}, {"values": ["x", "y"]}),
        ("lc-array-value", '{"type":"array","key":"k"}', {"value": "x"}, {"values": []}),
        # secret: {"ok": true}, never the value.
        ("lc-secret", '{"type":"secret","key":"token"}', {"value": "tok"}, {"ok": True}),
    ],
)
def test_elicit_results(
    shared: tuple[Runtime, Client, Path],
    capsules: dict[str, Path],
    name: str,
    elicit_request: str,
    response: dict[str, Any],
    result: dict[str, Any],
) -> None:
    runtime, client, _ = shared
    worker = raw_elicit_capsule(shared, capsules, name, elicit_request)
    asked = pending_of(client, name)
    answer(client, asked["request_id"], **response)
    worker.wait_for(Event.READY)
    assert json.loads(kv(runtime.home, name, "elicit_result") or b"") == result


def test_elicit_fields_omit_what_the_request_omits(
    shared: tuple[Runtime, Client, Path], capsules: dict[str, Path]
) -> None:
    _, client, _ = shared
    name = "lc-fields"
    request = '{"type":"select","key":"color","options":["red","green"],"default":"red"}'
    worker = raw_elicit_capsule(shared, capsules, name, request)
    asked = pending_of(client, name)
    assert asked["field"] == {
        "key": "color",
        "prompt": "color",
        "field_type": {"Enum": ["red", "green"]},
        "default": "red",
    }
    answer(client, asked["request_id"], value="green")
    worker.wait_for(Event.READY)


def test_elicit_answer_errors(shared: tuple[Runtime, Client, Path]) -> None:
    _, client, _ = shared
    with pytest.raises(RpcError) as info:
        answer(client, "no-such-request", value="x")
    assert info.value.code == rpc.ErrorCode.INVALID_PARAMS
    assert "no pending elicitation 'no-such-request'" in info.value.message
    with pytest.raises(RpcError) as info:
        client.request("elicitations.answer", {})
    assert info.value.code == rpc.ErrorCode.INVALID_PARAMS
    with pytest.raises(RpcError) as info:
        client.request("elicitations.answer", {"request_id": "x", "values": [1]})
    assert "'values' must be an array of strings" in info.value.message
    with pytest.raises(RpcError) as info:
        client.request("elicitations.answer", {"request_id": "x", "value": 3})
    assert "'value' must be a string" in info.value.message


def test_a_question_takes_one_answer(
    shared: tuple[Runtime, Client, Path], capsules: dict[str, Path]
) -> None:
    runtime, client, _ = shared
    name = "lc-answer-once"
    worker = raw_elicit_capsule(shared, capsules, name, '{"type":"text","key":"k"}')
    asked = pending_of(client, name)
    answer(client, asked["request_id"], value="first")
    with pytest.raises(RpcError) as info:
        answer(client, asked["request_id"], value="second")
    assert f"no pending elicitation '{asked['request_id']}'" in info.value.message
    worker.wait_for(Event.READY)
    assert kv(runtime.home, name, "elicit_result") == b'{"value":"first"}'


def test_a_capsule_that_goes_away_withdraws_its_question(
    shared: tuple[Runtime, Client, Path], capsules: dict[str, Path]
) -> None:
    runtime, client, _ = shared
    name = "lc-goes-away"
    worker = raw_elicit_capsule(shared, capsules, name, '{"type":"text","key":"k"}')
    asked = pending_of(client, name)
    worker.process.kill()
    wait_until(
        lambda: all(p["request_id"] != asked["request_id"] for p in pending(client)),
        what="the question to be withdrawn",
    )
    assert installed_version(runtime.home, name) is None


def test_elicit_times_out(
    capsules: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_ELICIT_TIMEOUT_MS", "1000")
    home, workspace = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    workspace.mkdir()
    rt = Runtime(home, workspace, f"ipc://{tmp_path}/b.ipc")
    rt.start_broker()
    try:
        client = rt.client()
        capsule = copy_capsule(capsules["lifecycler"], tmp_path / "caps")
        worker = rt.start_worker(capsule, wait=None)
        next_elicitation(client)
        assert failure(worker) == f"lifecycle hook astrid_install failed: {TIMED_OUT}"
        assert pending(client) == []
        assert installed_version(home, "lifecycler") is None
        client.close()
    finally:
        rt.stop()


# --------------------------------------------------------------------------------------------
# Outside the hooks: elicit traps, has_secret works


def test_elicit_outside_the_lifecycle_traps(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    run_install(runtime, client, lifecycler)
    assert tool_trap(client, "lifecycler", "elicit-now", {}) == ONLY_LIFECYCLE
    assert tool_trap(client, "lifecycler", "elicit-now", {"type": "secret", "key": "k"}) == (
        ONLY_LIFECYCLE
    )
    assert pending(client) == []
    # The request is validated before the phase is checked.
    assert tool_trap(client, "lifecycler", "elicit-now", {"type": "bogus", "key": "k"}) == (
        "unknown elicit type: bogus"
    )
    assert tool_trap(client, "lifecycler", "elicit-now", {"type": "select", "key": "k"}) == (
        "select elicit request requires non-empty options"
    )
    assert tool_trap(client, "lifecycler", "elicit-now", {"key": "k"}).startswith(
        "invalid elicit request JSON: "
    )
    # The capsule keeps working after the traps.
    assert tool(client, "lifecycler", "has-secret", {"key": "api_key"}) == '{"exists":true}'


def test_has_secret_errors(runtime: Runtime, client: Client, lifecycler: Path) -> None:
    run_install(runtime, client, lifecycler)
    assert tool_trap(client, "lifecycler", "has-secret", "not an object").startswith(
        "invalid has_secret request JSON: "
    )
    assert tool_trap(client, "lifecycler", "has-secret", {"name": "api_key"}).startswith(
        "invalid has_secret request JSON: "
    )
    assert tool_trap(client, "lifecycler", "has-secret", {"key": 7}).startswith(
        "invalid has_secret request JSON: "
    )
    assert tool_trap(client, "lifecycler", "has-secret", {"key": "a:b"}) == (
        "failed to check for secret: invalid secret key or value: secret key must not contain ':'"
    )
    assert tool_trap(client, "lifecycler", "has-secret", {"key": ""}).startswith(
        "failed to check for secret: invalid secret key or value: "
    )
    assert tool_trap(client, "lifecycler", "has-secret", {"key": "k" * 5000}) == (
        "memory allocation of 5010 bytes exceeds maximum allowed limit of 4096 bytes"
    )


def test_secrets_belong_to_their_capsule(
    runtime: Runtime, client: Client, lifecycler: Path, capsules: dict[str, Path], tmp_path: Path
) -> None:
    run_install(runtime, client, lifecycler)
    other = copy_capsule(capsules["lifecycler"], tmp_path / "other", name="lifecycler-b")
    run_install(runtime, client, other, secret="another secret")
    assert query(runtime.home, "SELECT capsule, key FROM secrets ORDER BY capsule") == [
        ("lifecycler", "api_key"),
        ("lifecycler-b", "api_key"),
    ]


# --------------------------------------------------------------------------------------------
# The operator's command: astrid elicit


def astrid(
    home: Path, *args: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "astrid"), "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_astrid_elicit_answers_an_install_hook(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    worker = runtime.start_worker(lifecycler, wait=None)
    next_elicitation(client)  # the hook is asking

    # Text (empty line = the default), secret, select by number, array until an empty line.
    result = astrid(home, "elicit", stdin="\nhunter2-secret\n2\nwss://one\nwss://two\n\n")
    assert result.returncode == 0, result.stderr
    worker.wait_for(Event.READY)
    out = result.stdout
    assert "capsule lifecycler asks for app_name" in out
    assert "Application name [demo]: " in out
    assert "API key (hidden): " in out
    assert "1) fast" in out and "2) safe" in out
    assert "hunter2-secret" not in out
    assert kv(home, "lifecycler", "install_app_name") == b"demo"
    assert kv(home, "lifecycler", "install_mode") == b"safe"
    assert json.loads(kv(home, "lifecycler", "install_relays") or b"") == {
        "values": ["wss://one", "wss://two"]
    }
    assert tool(client, "lifecycler", "has-secret", {"key": "api_key"}) == '{"exists":true}'
    assert installed_version(home, "lifecycler") == "1.0.0"

    result = astrid(home, "elicit")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no pending elicitations"


def test_astrid_elicit_follow_waits_for_questions(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    process = subprocess.Popen(
        [str(BIN / "astrid"), "--home", str(home), "elicit", "--follow", "--timeout", "20"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # subscribed before the capsule asks
        worker = runtime.start_worker(lifecycler, wait=None)
        assert process.stdin is not None
        process.stdin.write("followed\nsecret-two\nfast\n\n")
        process.stdin.flush()
        worker.wait_for(Event.READY)
        assert kv(home, "lifecycler", "install_app_name") == b"followed"
        assert kv(home, "lifecycler", "install_mode") == b"fast"
        assert kv(home, "lifecycler", "install_relays") == b'{"values":[]}'
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_astrid_elicit_end_of_input_cancels(
    runtime: Runtime, client: Client, lifecycler: Path
) -> None:
    home = runtime.home
    worker = runtime.start_worker(lifecycler, wait=None)
    next_elicitation(client)
    result = astrid(home, "elicit", stdin="")
    assert result.returncode == 0, result.stderr
    assert failure(worker) == "lifecycle hook astrid_install failed: user cancelled elicit request"


def test_astrid_elicit_without_a_broker(tmp_path: Path) -> None:
    result = astrid(tmp_path, "elicit")
    assert result.returncode == 1
    assert "the astrid broker is not running" in result.stderr


# --------------------------------------------------------------------------------------------
# Under the real supervisor


class Supervised:
    def __init__(self, tmp_path: Path, capsules: dict[str, Path], config: str = "") -> None:
        self.home = tmp_path / "home"
        workspace = tmp_path / "ws"
        workspace.mkdir()
        copy_capsule(capsules["lifecycler"], self.home / "capsules")
        if config:
            (self.home / "supervisor.toml").write_text(config)
        self.log = (tmp_path / "supervisor.out").open("wb")
        self.process = subprocess.Popen(
            [
                str(BIN / "astrid-supervisor"),
                "up",
                "--home",
                str(self.home),
                "--workspace",
                str(workspace),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def lifecycler(self) -> dict[str, Any]:
        result = astrid(self.home, "ps", "--json")
        if result.returncode != 0:
            return {}
        found = [p for p in json.loads(result.stdout)["processes"] if p["name"] == "lifecycler"]
        return found[0] if found else {}

    def pending(self) -> list[dict[str, Any]]:
        try:
            client = Client(self.home)
        except (OSError, ValueError):  # the broker is not up yet
            return []
        try:
            return pending(client)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def supervised(tmp_path: Path, capsules: dict[str, Path]) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(config: str = "") -> Supervised:
        tree = Supervised(tmp_path, capsules, config)
        started.append(tree)
        return tree

    yield start
    for tree in started:
        tree.stop()


def test_astrid_elicit_answers_a_supervised_install(
    supervised: Callable[..., Supervised],
) -> None:
    tree = supervised()
    wait_until(tree.pending, timeout=30, what="the install hook's first question")
    assert tree.lifecycler()["state"] == "STARTING"
    result = astrid(tree.home, "elicit", stdin="supervised\nkey-123\nfast\nwss://r\n\n")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: tree.lifecycler().get("state") == "READY", what="lifecycler READY")
    assert tree.lifecycler()["restarts"] == 0
    assert kv(tree.home, "lifecycler", "install_app_name") == b"supervised"
    assert kv(tree.home, "lifecycler", "install_relays") == b'{"values":["wss://r"]}'
    assert installed_version(tree.home, "lifecycler") == "1.0.0"
    result = astrid(tree.home, "call", "lifecycler", "has-secret", '{"key":"api_key"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"exists": True}


def test_a_supervised_install_may_wait_longer_than_the_ready_timeout(
    supervised: Callable[..., Supervised],
) -> None:
    tree = supervised("[supervisor]\nready_timeout = 2.0\n")
    first = wait_until(tree.pending, timeout=30, what="the install hook's first question")
    time.sleep(3.5)  # the operator takes longer than ready_timeout to show up
    assert tree.pending() == first, "the question was withdrawn: the worker was restarted"
    result = astrid(tree.home, "elicit", stdin="slow\nkey\nsafe\n\n")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: tree.lifecycler().get("state") == "READY", what="lifecycler READY")
    assert tree.lifecycler()["restarts"] == 0
