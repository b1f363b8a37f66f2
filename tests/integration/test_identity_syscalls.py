"""The five identity syscalls through a real broker and real workers (syscalls.md §2.13).

Copies of the syscaller capsule with different ``[capabilities] identity`` grants call the
syscalls. Asserted: every result shape, every error text (traps for unparsable requests, encoded
``error`` fields for the UUID check, the gate and the store), the grant hierarchy
``resolve`` ⊂ ``link`` ⊂ ``admin``, the CLI root user bootstrapped at first start
(kernel.md §3.2 step 10) and not duplicated by a restart, and persistence in ``state.db``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astrid_core.rpc import RpcError
from tests.conftest import copy_capsule
from tests.harness import Client, Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LINKED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00")
LINK_KEYS = ["platform", "platform_user_id", "astrid_user_id", "linked_at", "method"]

Call = tuple[str, Sequence[bytes | Fill]]


def request(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def denial(capsule: str, op: str, has: str) -> str:
    return (
        f"storage error: capsule '{capsule}' denied: identity operation '{op}' "
        f"not declared in manifest (has: {has})"
    )


@dataclass
class Identity:
    runtime: Runtime
    client: Client

    def run(self, capsule: str, calls: Sequence[Call]) -> list[bytes | None]:
        arguments = json.loads(script_tool_args(encode_script(calls)))
        output = self.client.call_tool(capsule, "run", arguments, timeout=60)
        return decode_hex_output(output)

    def call(self, capsule: str, op: str, value: Any) -> Any:
        (result,) = self.run(capsule, [(f"astrid_identity_{op}", [request(value)])])
        assert result is not None
        return json.loads(result)

    def trap(self, capsule: str, calls: Sequence[Call]) -> str:
        with pytest.raises(RpcError) as info:
            self.run(capsule, calls)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")

    # Shorthands

    def resolve(self, capsule: str, platform: str, user: str) -> Any:
        return self.call(capsule, "resolve", {"platform": platform, "platform_user_id": user})

    def link(self, capsule: str, platform: str, user: str, astrid_user_id: str, method: str) -> Any:
        return self.call(
            capsule,
            "link",
            {
                "platform": platform,
                "platform_user_id": user,
                "astrid_user_id": astrid_user_id,
                "method": method,
            },
        )

    def unlink(self, capsule: str, platform: str, user: str) -> Any:
        return self.call(capsule, "unlink", {"platform": platform, "platform_user_id": user})

    def create_user(self, capsule: str, display_name: Any = ...) -> Any:
        body = {} if display_name is ... else {"display_name": display_name}
        return self.call(capsule, "create_user", body)

    def list_links(self, capsule: str, astrid_user_id: str) -> Any:
        return self.call(capsule, "list_links", {"astrid_user_id": astrid_user_id})

    def root_id(self) -> str:
        found = self.resolve("id-admin", "cli", "local")
        assert found["found"] is True
        return str(found["user_id"])


def _grant(*levels: str) -> str:
    return f"[capabilities]\nidentity = {json.dumps(list(levels))}\n"


CAPSULES = {
    "id-none": "",
    "id-resolve": _grant("resolve"),
    "id-link": _grant("link"),
    "id-admin": _grant("admin"),
    "id-mixed": _grant("resolve", "admin"),
}


@pytest.fixture(scope="module")
def env(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    base = tmp_path_factory.mktemp("identity")
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    runtime.start_broker()
    for name, toml in CAPSULES.items():
        runtime.start_worker(copy_capsule(capsules["syscaller"], base / "caps", name, toml))
    client = runtime.client()
    yield Identity(runtime, client)
    client.close()
    runtime.stop()


def db_rows(home: Path) -> dict[str, bytes]:
    """The ``system:identity`` rows of ``state.db`` (read directly, not through the broker)."""
    db = sqlite3.connect(home / "state.db")
    try:
        found = db.execute("SELECT key, value FROM kv WHERE ns = 'system:identity' ORDER BY key")
        return {bytes(key).decode(): bytes(value) for key, value in found}
    finally:
        db.close()


def root_users(rows: dict[str, bytes]) -> list[str]:
    users = [json.loads(v) for k, v in rows.items() if k.startswith("user/")]
    return [u["id"] for u in users if u["display_name"] == "root"]


# --------------------------------------------------------------------------------------------
# The CLI root user


def test_the_root_user_and_cli_link_exist_at_first_start(env: Identity) -> None:
    found = env.resolve("id-admin", "cli", "local")
    assert list(found) == ["found", "user_id", "display_name"]
    assert found["found"] is True
    assert found["display_name"] == "root"
    links = env.list_links("id-admin", found["user_id"])
    assert links["ok"] is True
    (link,) = links["links"]
    assert list(link) == LINK_KEYS
    assert (link["platform"], link["platform_user_id"], link["method"]) == (
        "cli",
        "local",
        "system",
    )
    assert link["astrid_user_id"] == found["user_id"]
    assert LINKED_AT.fullmatch(link["linked_at"]), link["linked_at"]
    # Platform normalization applies to lookups of the root link too.
    assert env.resolve("id-resolve", "  CLI ", "local") == found


def test_the_broker_bootstraps_the_root_user_before_any_syscall(runtime: Runtime) -> None:
    rows = db_rows(runtime.home)
    (root,) = root_users(rows)
    assert set(rows) == {f"user/{root}", "link/cli/local", "name/root"}
    assert json.loads(rows["link/cli/local"])["method"] == "system"
    assert rows["name/root"] == root.encode()


def test_restarts_keep_the_data_and_do_not_duplicate_the_root_user(
    runtime: Runtime, capsules: dict[str, Path], tmp_path: Path
) -> None:
    capsule = copy_capsule(capsules["syscaller"], tmp_path / "caps", "id-admin", _grant("admin"))

    def connect() -> Identity:
        runtime.start_worker(capsule)
        return Identity(runtime, runtime.client())

    def restart(env: Identity) -> None:
        env.client.close()
        for worker in runtime.workers:
            worker.stop()
        runtime.workers.clear()
        assert runtime.broker is not None
        runtime.broker.stop()
        runtime.start_broker()

    first = connect()
    root = first.root_id()
    dave = first.create_user("id-admin", "Dave")["user_id"]
    first.link("id-admin", "Discord", "d1", dave, "admin")
    first.link("id-admin", "discord", "gone", dave, "admin")
    assert first.unlink("id-admin", "discord", "gone") == {"ok": True, "removed": True}
    restart(first)

    second = connect()
    assert second.root_id() == root
    assert second.resolve("id-admin", "discord", "d1") == {
        "found": True,
        "user_id": dave,
        "display_name": "Dave",
    }
    assert second.resolve("id-admin", "discord", "gone") == {"found": False}
    assert [link["platform_user_id"] for link in second.list_links("id-admin", dave)["links"]] == [
        "d1"
    ]
    restart(second)

    third = connect()
    assert third.root_id() == root
    third.client.close()
    rows = db_rows(runtime.home)
    assert root_users(rows) == [root]
    assert [key for key in rows if key.startswith("link/")] == ["link/cli/local", "link/discord/d1"]
    assert rows["name/Dave"] == dave.encode()


# --------------------------------------------------------------------------------------------
# Results


def test_create_user_returns_a_new_uuid(env: Identity) -> None:
    first = env.create_user("id-admin", "Erin")
    assert list(first) == ["ok", "user_id"] and first["ok"] is True
    second = env.create_user("id-admin")  # display_name absent
    third = env.create_user("id-admin", None)  # display_name null
    ids = {first["user_id"], second["user_id"], third["user_id"]}
    assert len(ids) == 3
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", i) for i in ids)


def test_link_result_and_resolve(env: Identity) -> None:
    user = env.create_user("id-admin", "Frank")["user_id"]
    result = env.link("id-admin", "  TeleGram ", "f-1", user.upper(), "invite")
    assert list(result) == ["ok", "link"] and result["ok"] is True
    link = result["link"]
    assert list(link) == LINK_KEYS
    assert link["platform"] == "telegram"
    assert link["platform_user_id"] == "f-1"
    assert link["astrid_user_id"] == user
    assert link["method"] == "invite"
    assert LINKED_AT.fullmatch(link["linked_at"]), link["linked_at"]
    assert env.resolve("id-resolve", "telegram", "f-1") == {
        "found": True,
        "user_id": user,
        "display_name": "Frank",
    }
    # The platform user id is not normalized.
    assert env.resolve("id-resolve", "telegram", "F-1") == {"found": False}


def test_resolve_omits_an_absent_display_name(env: Identity) -> None:
    user = env.create_user("id-admin")["user_id"]
    env.link("id-admin", "matrix", "@anon", user, "admin")
    assert env.resolve("id-resolve", "matrix", "@anon") == {"found": True, "user_id": user}


def test_link_is_an_upsert(env: Identity) -> None:
    grace = env.create_user("id-admin", "Grace")["user_id"]
    heidi = env.create_user("id-admin", "Heidi")["user_id"]
    env.link("id-link", "slack", "u1", grace, "admin")
    env.link("id-link", "slack", "u1", heidi, "system")
    assert env.resolve("id-link", "slack", "u1")["user_id"] == heidi
    assert env.list_links("id-link", grace) == {"ok": True, "links": []}
    (link,) = env.list_links("id-link", heidi)["links"]
    assert link["method"] == "system"


def test_unlink_reports_whether_a_link_was_removed(env: Identity) -> None:
    user = env.create_user("id-admin")["user_id"]
    env.link("id-link", "irc", "nick", user, "admin")
    assert env.unlink("id-link", "IRC", "nick") == {"ok": True, "removed": True}
    assert env.unlink("id-link", "irc", "nick") == {"ok": True, "removed": False}
    assert env.resolve("id-link", "irc", "nick") == {"found": False}


def test_list_links_is_in_key_order(env: Identity) -> None:
    user = env.create_user("id-admin", "Ivan")["user_id"]
    for platform, pid in [("zulip", "a"), ("discord", "b"), ("Discord", "a"), ("email", "x")]:
        assert env.link("id-link", platform, pid, user, "admin")["ok"] is True
    links = env.list_links("id-link", user)
    assert list(links) == ["ok", "links"]
    assert [(k["platform"], k["platform_user_id"]) for k in links["links"]] == [
        ("discord", "a"),
        ("discord", "b"),
        ("email", "x"),
        ("zulip", "a"),
    ]
    assert all(list(k) == LINK_KEYS and LINKED_AT.fullmatch(k["linked_at"]) for k in links["links"])


def test_a_list_for_an_unknown_user_is_empty(env: Identity) -> None:
    assert env.list_links("id-link", "00000000-0000-0000-0000-000000000000") == {
        "ok": True,
        "links": [],
    }


# --------------------------------------------------------------------------------------------
# The grant hierarchy: resolve ⊂ link ⊂ admin


def _all_ops(env: Identity, capsule: str, user: str) -> dict[str, Any]:
    return {
        "resolve": env.resolve(capsule, "cli", "local"),
        "link": env.link(capsule, "hier", capsule, user, "admin"),
        "unlink": env.unlink(capsule, "hier", "nobody"),
        "list_links": env.list_links(capsule, user),
        "create_user": env.create_user(capsule, "made-by-" + capsule),
    }


@pytest.mark.parametrize(
    ("capsule", "has", "allowed"),
    [
        ("id-none", "[]", set()),
        ("id-resolve", '["resolve"]', {"resolve"}),
        ("id-link", '["link"]', {"resolve", "link", "unlink", "list_links"}),
        ("id-admin", '["admin"]', {"resolve", "link", "unlink", "list_links", "create_user"}),
        (
            "id-mixed",
            '["resolve", "admin"]',
            {"resolve", "link", "unlink", "list_links", "create_user"},
        ),
    ],
)
def test_grant_hierarchy(env: Identity, capsule: str, has: str, allowed: set[str]) -> None:
    root = env.root_id()
    results = _all_ops(env, capsule, root)
    for op, result in results.items():
        flag = "found" if op == "resolve" else "ok"
        if op in allowed:
            assert result[flag] is True, (op, result)
            assert "error" not in result
        else:
            assert result == {flag: False, "error": denial(capsule, op, has)}, op
    if "link" in allowed:
        assert env.resolve("id-admin", "hier", capsule)["user_id"] == root
    else:
        assert env.resolve("id-admin", "hier", capsule) == {"found": False}


def test_a_denied_create_user_creates_nothing(env: Identity) -> None:
    before = db_rows(env.runtime.home)
    assert env.create_user("id-link", "Mallory") == {
        "ok": False,
        "error": denial("id-link", "create_user", '["link"]'),
    }
    after = db_rows(env.runtime.home)
    assert "name/Mallory" not in after
    assert len([k for k in after if k.startswith("user/")]) == len(
        [k for k in before if k.startswith("user/")]
    )


# --------------------------------------------------------------------------------------------
# Error texts


def test_invalid_uuids_are_reported_before_the_gate(env: Identity) -> None:
    # id-none may not link or list: the UUID check still answers first.
    assert env.link("id-none", "p", "u", "not-a-uuid", "m") == {
        "ok": False,
        "error": "invalid UUID: invalid character: expected an optional prefix of `urn:uuid:` "
        "followed by [0-9a-fA-F-], found `n` at 1",
    }
    assert env.list_links("id-none", "1234") == {
        "ok": False,
        "error": "invalid UUID: invalid length: expected length 32 for simple format, found 4",
    }
    assert env.list_links("id-admin", "00000000-0000-0000-0000-00000000000") == {
        "ok": False,
        "error": "invalid UUID: invalid group length in group 4: expected 12, found 11",
    }


@pytest.mark.parametrize(
    ("platform", "user", "reason"),
    [
        ("", "1", "platform must not be empty"),
        ("  ", "1", "platform must not be empty"),
        ("a/b", "1", "platform must not contain '/' or null bytes"),
        ("a\0b", "1", "platform must not contain '/' or null bytes"),
        ("discord", "", "platform_user_id must not be empty"),
        ("discord", "\t", "platform_user_id must not be empty"),
        ("discord", "1/../../user/2", "platform_user_id must not contain '/' or null bytes"),
        ("discord", "1\x002", "platform_user_id must not contain '/' or null bytes"),
    ],
)
def test_invalid_platform_pairs(env: Identity, platform: str, user: str, reason: str) -> None:
    text = f"storage error: invalid input: {reason}"
    root = env.root_id()
    assert env.resolve("id-admin", platform, user) == {"found": False, "error": text}
    assert env.link("id-admin", platform, user, root, "admin") == {"ok": False, "error": text}
    assert env.unlink("id-admin", platform, user) == {"ok": False, "error": text}


def test_link_errors(env: Identity) -> None:
    root = env.root_id()
    for method in ("", "   "):
        assert env.link("id-link", "p", "u", root, method) == {
            "ok": False,
            "error": "storage error: invalid input: method must not be empty",
        }
    missing = "3f2a9c1e-7d4b-4e8a-b5c6-d7e8f9a0b1c2"
    assert env.link("id-link", "p", "u", missing.upper(), "admin") == {
        "ok": False,
        "error": f"storage error: user not found: {missing}",
    }
    assert env.resolve("id-link", "p", "u") == {"found": False}


@pytest.mark.parametrize("name", ["a/b", "nul\0name"])
def test_create_user_rejects_slash_and_nul(env: Identity, name: str) -> None:
    assert env.create_user("id-admin", name) == {
        "ok": False,
        "error": "storage error: invalid input: display_name must not contain '/' or null bytes",
    }


@pytest.mark.parametrize(
    ("op", "raw", "needle"),
    [
        ("resolve", b"", "invalid JSON"),
        ("resolve", b'{"platform":"cli"}', "missing field `platform_user_id`"),
        (
            "link",
            b'{"platform":"p","platform_user_id":"u","astrid_user_id":"x"}',
            "missing field `method`",
        ),
        (
            "link",
            b'{"platform":"p","platform_user_id":"u","astrid_user_id":7,"method":"m"}',
            "must be a string",
        ),
        ("unlink", b"[]", "must be a JSON object"),
        ("unlink", b'{"platform":"p"', "invalid JSON"),
        ("create_user", b'{"display_name":42}', "must be a string"),
        ("create_user", b"\xff", "not UTF-8"),
        ("list_links", b"{}", "missing field `astrid_user_id`"),
        ("list_links", b"null", "must be a JSON object"),
    ],
)
def test_unparsable_requests_trap(env: Identity, op: str, raw: bytes, needle: str) -> None:
    # Even a capsule without any identity grant: parsing comes first.
    text = env.trap("id-none", [(f"astrid_identity_{op}", [raw])])
    assert text.startswith(f"invalid {op} request: "), text
    assert needle in text


@pytest.mark.parametrize("op", ["resolve", "link", "unlink", "create_user", "list_links"])
def test_request_size_limit(env: Identity, op: str) -> None:
    name = f"astrid_identity_{op}"
    assert env.trap("id-admin", [(name, [Fill(ord(" "), 10 * MiB + 1)])]) == (
        "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
    )
    # Exactly 10 MiB passes the guard (and then fails to parse: it is only whitespace).
    text = env.trap("id-admin", [(name, [Fill(ord(" "), 10 * MiB)])])
    assert text.startswith(f"invalid {op} request: ")


def test_a_trap_stops_the_script(env: Identity) -> None:
    """A parse trap aborts the guest: the create_user after it never runs."""
    text = env.trap(
        "id-admin",
        [
            ("astrid_identity_resolve", [b"{"]),
            ("astrid_identity_create_user", [request({"display_name": "never"})]),
        ],
    )
    assert text.startswith("invalid resolve request: ")
    assert "name/never" not in db_rows(env.runtime.home)


def test_encoded_errors_do_not_stop_the_script(env: Identity) -> None:
    results = env.run(
        "id-resolve",
        [
            ("astrid_identity_create_user", [b"{}"]),
            (
                "astrid_identity_resolve",
                [request({"platform": "cli", "platform_user_id": "local"})],
            ),
        ],
    )
    assert json.loads(results[0] or b"") == {
        "ok": False,
        "error": denial("id-resolve", "create_user", '["resolve"]'),
    }
    assert json.loads(results[1] or b"")["found"] is True
