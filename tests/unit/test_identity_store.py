"""broker.identity_store and the identity syscall handlers, without processes.

The store runs over a real ``state.db`` (KvStore) inside a real Kernel; handler tests call the
syscall functions with real :class:`CapsuleSession` objects whose manifests grant identity levels.
Mirrors the reference's KvIdentityStore unit tests (create/get, resolve normalization, upsert,
unlink, list filter, name index, input rejection) and its CLI root-user bootstrap.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from astrid_core.dirs import AstridHome
from astrid_core.identity import AstridUserId, FrontendLink
from astrid_core.manifest import parse_manifest
from astrid_core.serde import parse_datetime, parse_uuid_strict
from astrid_core.wire import HelloInfo
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.identity_store import (
    NAMESPACE,
    IdentityError,
    IdentityStorageError,
    IdentityStore,
    InvalidInput,
    UserNotFound,
    rfc3339_offset,
)
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.sessions import CapsuleSession
from broker.syscalls.identity import (
    astrid_identity_create_user,
    astrid_identity_link,
    astrid_identity_list_links,
    astrid_identity_resolve,
    astrid_identity_unlink,
    uuid_error,
)

MiB = 1024 * 1024


def new_kernel(root: Path) -> Kernel:
    home = AstridHome.from_path(root / "home")
    home.logs_dir().mkdir(parents=True, exist_ok=True)
    (root / "ws").mkdir(exist_ok=True)
    return Kernel(home, root / "ws", KvStore(home.state_db_path()), b"k" * 32)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    k = new_kernel(tmp_path)
    yield k
    k.close()


@pytest.fixture
def store(kernel: Kernel) -> IdentityStore:
    return kernel.service(IdentityStore)


def rows(kernel: Kernel, prefix: str = "") -> dict[str, bytes]:
    return {
        key: kernel.kv.get(NAMESPACE, key) or b"" for key in kernel.kv.list_keys(NAMESPACE, prefix)
    }


def users_named(kernel: Kernel, name: str) -> list[dict[str, Any]]:
    records = [json.loads(value) for value in rows(kernel, "user/").values()]
    return [r for r in records if r["display_name"] == name]


# --------------------------------------------------------------------------------------------
# Bootstrap


def test_the_service_bootstraps_the_cli_root_user(kernel: Kernel, store: IdentityStore) -> None:
    root = store.resolve("cli", "local")
    assert root is not None
    assert root.display_name == "root"
    assert root.public_key is None
    (link,) = store.list_links(root.id)
    assert (link.platform, link.platform_user_id, link.method) == ("cli", "local", "system")
    assert store.get_user_by_name("root") == root
    assert set(rows(kernel)) == {"user/" + str(root.id), "link/cli/local", "name/root"}


def test_bootstrap_is_idempotent_across_restarts(tmp_path: Path) -> None:
    first = new_kernel(tmp_path)
    root = first.service(IdentityStore).bootstrap()
    assert first.service(IdentityStore).bootstrap() == root  # same service, again
    first.close()
    second = new_kernel(tmp_path)
    try:
        assert second.service(IdentityStore).resolve("cli", "local") == root
        assert len(users_named(second, "root")) == 1
        assert len(rows(second, "link/")) == 1
    finally:
        second.close()


def test_bootstrap_keeps_a_cli_link_that_points_elsewhere(tmp_path: Path) -> None:
    """Only the link is checked, as in the reference."""
    first = new_kernel(tmp_path)
    store = first.service(IdentityStore)
    alice = store.create_user("alice")
    store.link("cli", "local", alice.id, "admin")
    first.close()
    second = new_kernel(tmp_path)
    try:
        assert second.service(IdentityStore).resolve("cli", "local") == alice
        assert len(users_named(second, "root")) == 1
    finally:
        second.close()


def test_bootstrap_relinks_a_new_root_after_the_cli_link_was_removed(tmp_path: Path) -> None:
    first = new_kernel(tmp_path)
    store = first.service(IdentityStore)
    old_root = store.bootstrap()
    assert store.unlink("cli", "local") is True
    first.close()
    second = new_kernel(tmp_path)
    try:
        new_root = second.service(IdentityStore).resolve("cli", "local")
        assert new_root is not None and new_root.id != old_root.id
        assert len(users_named(second, "root")) == 2
    finally:
        second.close()


# --------------------------------------------------------------------------------------------
# Users


def test_create_and_get_user(kernel: Kernel, store: IdentityStore) -> None:
    user = store.create_user("Alice")
    assert user.display_name == "Alice"
    assert store.get_user(user.id) == user
    stored = json.loads(rows(kernel)[f"user/{user.id}"])
    assert list(stored) == ["id", "public_key", "display_name", "created_at"]
    assert stored["public_key"] is None
    assert stored["display_name"] == "Alice"
    assert stored["created_at"].endswith("Z")
    assert AstridUserId.from_json(stored) == user
    assert rows(kernel)["name/Alice"] == str(user.id).encode()


def test_create_user_without_a_name(kernel: Kernel, store: IdentityStore) -> None:
    user = store.create_user(None)
    assert user.display_name is None
    assert json.loads(rows(kernel)[f"user/{user.id}"])["display_name"] is None
    assert list(rows(kernel, "name/")) == ["name/root"]


def test_get_nonexistent_user(store: IdentityStore) -> None:
    assert store.get_user(uuid.uuid4()) is None


def test_name_index_is_trimmed_and_skips_blank_names(kernel: Kernel, store: IdentityStore) -> None:
    padded = store.create_user("  Bob \t")
    assert padded.display_name == "  Bob \t"  # the record keeps the name as given
    blank = store.create_user("   ")
    assert blank.display_name == "   "
    assert sorted(rows(kernel, "name/")) == ["name/Bob", "name/root"]
    assert store.get_user_by_name(" Bob ") == padded
    assert store.get_user_by_name("nobody") is None


def test_name_index_last_writer_wins(store: IdentityStore) -> None:
    store.create_user("Shared")
    second = store.create_user("Shared")
    assert store.get_user_by_name("Shared") == second


@pytest.mark.parametrize("name", ["admin/root", "a\0b", "/"])
def test_display_names_with_slash_or_nul_are_rejected(
    kernel: Kernel, store: IdentityStore, name: str
) -> None:
    before = rows(kernel)
    with pytest.raises(InvalidInput) as info:
        store.create_user(name)
    assert str(info.value) == "invalid input: display_name must not contain '/' or null bytes"
    assert rows(kernel) == before


def test_a_corrupt_record_is_a_storage_error(kernel: Kernel, store: IdentityStore) -> None:
    user = store.create_user("x")
    kernel.kv.set(NAMESPACE, f"user/{user.id}", b"{not json")
    with pytest.raises(IdentityStorageError) as info:
        store.get_user(user.id)
    assert str(info.value).startswith("storage error: serialization error: ")
    kernel.kv.set(NAMESPACE, "name/broken", b"nope")
    with pytest.raises(IdentityStorageError, match=r"^storage error: invalid UUID: "):
        store.get_user_by_name("broken")


# --------------------------------------------------------------------------------------------
# Links


def test_resolve_linked_user(store: IdentityStore) -> None:
    user = store.create_user("Bob")
    store.link("Discord", "12345", user.id, "admin")
    assert store.resolve("discord", "12345") == user


def test_resolve_unlinked_returns_none(store: IdentityStore) -> None:
    assert store.resolve("discord", "99999") is None


def test_resolve_normalizes_the_platform(kernel: Kernel, store: IdentityStore) -> None:
    user = store.create_user(None)
    link = store.link("  DISCORD  ", "abc", user.id, "admin")
    assert link.platform == "discord"
    assert "link/discord/abc" in rows(kernel)
    assert store.resolve("Discord", "abc") == user
    # Only ASCII letters are lowercased; the platform user id is taken as is.
    store.link("ÄPP", " U1 ", user.id, "admin")
    assert "link/Äpp/ U1 " in rows(kernel)
    assert store.resolve("äpp", " U1 ") is None
    assert store.resolve(" ÄPP", " U1 ") == user
    assert store.resolve("ÄPP", "U1") is None


def test_link_stores_the_frontend_link_json(kernel: Kernel, store: IdentityStore) -> None:
    user = store.create_user(None)
    before = datetime.now(UTC)
    link = store.link("telegram", "42", user.id, "admin")
    assert before <= link.linked_at <= datetime.now(UTC)
    stored = json.loads(rows(kernel)["link/telegram/42"])
    assert list(stored) == ["platform", "platform_user_id", "astrid_user_id", "linked_at", "method"]
    assert stored["linked_at"].endswith("Z")
    assert FrontendLink.from_json(stored) == link


def test_link_requires_an_existing_user(kernel: Kernel, store: IdentityStore) -> None:
    missing = uuid.uuid4()
    with pytest.raises(UserNotFound) as info:
        store.link("discord", "123", missing, "admin")
    assert str(info.value) == f"user not found: {missing}"
    assert "link/discord/123" not in rows(kernel)


def test_link_upserts(store: IdentityStore) -> None:
    alice, bob = store.create_user("Alice"), store.create_user("Bob")
    store.link("discord", "123", alice.id, "admin")
    store.link("discord", "123", bob.id, "invite")
    assert store.resolve("discord", "123") == bob
    assert store.list_links(alice.id) == []
    (link,) = store.list_links(bob.id)
    assert link.method == "invite"


def test_a_link_to_a_deleted_user_resolves_to_nothing(kernel: Kernel, store: IdentityStore) -> None:
    user = store.create_user(None)
    store.link("discord", "1", user.id, "admin")
    kernel.kv.delete(NAMESPACE, f"user/{user.id}")
    assert store.resolve("discord", "1") is None


def test_unlink(store: IdentityStore) -> None:
    user = store.create_user(None)
    store.link("telegram", "789", user.id, "admin")
    assert store.unlink("TELEGRAM ", "789") is True
    assert store.resolve("telegram", "789") is None
    assert store.unlink("telegram", "789") is False
    assert store.unlink("discord", "nonexistent") is False


def test_list_links_filters_by_user_in_key_order(store: IdentityStore) -> None:
    alice, bob = store.create_user("Alice"), store.create_user("Bob")
    store.link("telegram", "a2", alice.id, "admin")
    store.link("discord", "b1", bob.id, "admin")
    store.link("discord", "a1", alice.id, "admin")
    store.link("Discord", "a0", alice.id, "admin")
    assert [(k.platform, k.platform_user_id) for k in store.list_links(alice.id)] == [
        ("discord", "a0"),
        ("discord", "a1"),
        ("telegram", "a2"),
    ]
    assert len(store.list_links(bob.id)) == 1
    assert store.list_links(uuid.uuid4()) == []


INVALID = [
    ("", "1", "platform must not be empty"),
    (" \t\u3000", "1", "platform must not be empty"),
    ("a/b", "1", "platform must not contain '/' or null bytes"),
    ("disc\0rd", "1", "platform must not contain '/' or null bytes"),
    ("discord", "", "platform_user_id must not be empty"),
    ("discord", "  ", "platform_user_id must not be empty"),
    ("discord", "123/../../user/456", "platform_user_id must not contain '/' or null bytes"),
    ("discord", "abc\0def", "platform_user_id must not contain '/' or null bytes"),
    ("", "", "platform must not be empty"),  # platform is checked first
    ("a/b", "", "platform must not contain '/' or null bytes"),
]


@pytest.mark.parametrize(("platform", "user", "reason"), INVALID)
def test_invalid_platform_pairs_are_rejected_everywhere(
    store: IdentityStore, platform: str, user: str, reason: str
) -> None:
    someone = store.create_user(None)
    for call in (
        lambda: store.resolve(platform, user),
        lambda: store.unlink(platform, user),
        lambda: store.link(platform, user, someone.id, "admin"),
    ):
        with pytest.raises(InvalidInput) as info:
            call()
        assert str(info.value) == f"invalid input: {reason}"
        assert isinstance(info.value, IdentityError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("method", ["", "  "])
def test_link_rejects_an_empty_method(store: IdentityStore, method: str) -> None:
    user = store.create_user(None)
    with pytest.raises(InvalidInput, match=r"^invalid input: method must not be empty$"):
        store.link("discord", "123", user.id, method)


def test_validation_comes_before_the_user_lookup(store: IdentityStore) -> None:
    with pytest.raises(InvalidInput, match="method must not be empty"):
        store.link("discord", "123", uuid.uuid4(), "")


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "2025-01-02T03:04:05+00:00"),
        (123000, "2025-01-02T03:04:05.123+00:00"),
        (123456, "2025-01-02T03:04:05.123456+00:00"),
    ],
)
def test_rfc3339_offset(micros: int, text: str) -> None:
    value = datetime(2025, 1, 2, 3, 4, 5, micros, tzinfo=UTC)
    assert rfc3339_offset(value) == text
    assert parse_datetime(text) == value


# --------------------------------------------------------------------------------------------
# The Rust uuid crate's parse errors


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "invalid length: expected length 32 for simple format, found 0"),
        ("abc", "invalid length: expected length 32 for simple format, found 3"),
        (
            "not-a-uuid",
            "invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `n` at 1",
        ),
        (
            "{0000000-0000-0000-0000-00000000000g}",
            "invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `g` at 36",
        ),
        (
            "urn:uuid:ä",
            "invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `ä` at 10",
        ),
        (
            "aé-x",
            "invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `é` at 2",
        ),
        (
            "éa-x",
            "invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `é` at 1",
        ),
        ("12-34", "invalid group count: expected 5, found 2"),
        ("{" + "0" * 32 + "}", "invalid group count: expected 5, found 1"),
        (
            "0000000-0000-0000-0000-000000000000",
            "invalid group length in group 0: expected 8, found 7",
        ),
        (
            "00000000-000-0000-0000-000000000000",
            "invalid group length in group 1: expected 4, found 3",
        ),
        (
            "00000000-0000-0000-00000-00000000000",
            "invalid group length in group 3: expected 4, found 5",
        ),
        (
            "00000000-0000-0000-0000-0000000000000",
            "invalid group length in group 4: expected 12, found 13",
        ),
        (
            "urn:uuid:00000000-0000-0000-0000-00000000000",
            "invalid group length in group 4: expected 12, found 20",  # the crate's own quirk
        ),
    ],
)
def test_uuid_error_texts(text: str, error: str) -> None:
    with pytest.raises(ValueError):
        parse_uuid_strict(text)
    assert uuid_error(text) == error


# --------------------------------------------------------------------------------------------
# The handlers

MANIFEST = """
[package]
name = "{name}"
version = "0.1.0"

[[component]]
file = "x.wasm"

[capabilities]
identity = {levels}
"""


def session(kernel: Kernel, name: str, *levels: str) -> CapsuleSession:
    root = kernel.workspace.parent
    manifest = parse_manifest(
        MANIFEST.format(name=name, levels=json.dumps(list(levels))), root / name / "Capsule.toml"
    )
    return CapsuleSession(
        kernel=kernel,
        identity=name.encode(),
        info=HelloInfo(name, str(root / name), 1, 1, False),
        manifest=manifest,
        config={},
        gate=CapabilityGate(name, manifest.capabilities, kernel.workspace),
        log=kernel.capsule_log(name),
        global_root=None,
    )


def call(handler: Any, s: CapsuleSession, request: Any) -> dict[str, Any]:
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    result: dict[str, Any] = json.loads(handler(s, raw))
    return result


def test_handlers_round_trip(kernel: Kernel) -> None:
    admin = session(kernel, "adm", "admin")
    created = call(astrid_identity_create_user, admin, {"display_name": "Carol"})
    assert list(created) == ["ok", "user_id"]
    user_id = created["user_id"]
    linked = call(
        astrid_identity_link,
        admin,
        {
            "platform": " Matrix ",
            "platform_user_id": "@c",
            "astrid_user_id": user_id,
            "method": "m",
        },
    )
    assert linked["ok"] is True and list(linked) == ["ok", "link"]
    assert list(linked["link"]) == [
        "platform",
        "platform_user_id",
        "astrid_user_id",
        "linked_at",
        "method",
    ]
    assert linked["link"]["platform"] == "matrix"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?\+00:00", linked["link"]["linked_at"]
    )
    assert call(
        astrid_identity_resolve, admin, {"platform": "MATRIX", "platform_user_id": "@c"}
    ) == {
        "found": True,
        "user_id": user_id,
        "display_name": "Carol",
    }
    listed = call(astrid_identity_list_links, admin, {"astrid_user_id": user_id.upper()})
    assert listed == {"ok": True, "links": [linked["link"]]}
    assert call(
        astrid_identity_unlink, admin, {"platform": "matrix", "platform_user_id": "@c"}
    ) == {
        "ok": True,
        "removed": True,
    }
    assert call(
        astrid_identity_resolve, admin, {"platform": "matrix", "platform_user_id": "@c"}
    ) == {"found": False}


def test_resolve_omits_an_absent_display_name(kernel: Kernel) -> None:
    admin = session(kernel, "adm", "admin")
    store = kernel.service(IdentityStore)
    user = store.create_user(None)
    store.link("x", "y", user.id, "m")
    assert call(astrid_identity_resolve, admin, {"platform": "x", "platform_user_id": "y"}) == {
        "found": True,
        "user_id": str(user.id),
    }
    created = call(astrid_identity_create_user, admin, {"display_name": None})
    assert store.get_user(uuid.UUID(created["user_id"])) is not None
    assert call(astrid_identity_create_user, admin, {})["ok"] is True


def test_gate_levels(kernel: Kernel) -> None:
    caps = {
        "none": session(kernel, "none"),
        "res": session(kernel, "res", "resolve"),
        "lnk": session(kernel, "lnk", "link"),
        "adm": session(kernel, "adm", "admin"),
    }
    root = kernel.service(IdentityStore).resolve("cli", "local")
    assert root is not None
    requests = {
        "resolve": (astrid_identity_resolve, {"platform": "cli", "platform_user_id": "local"}),
        "list_links": (astrid_identity_list_links, {"astrid_user_id": str(root.id)}),
        "unlink": (astrid_identity_unlink, {"platform": "nope", "platform_user_id": "x"}),
        "link": (
            astrid_identity_link,
            {
                "platform": "p",
                "platform_user_id": "u",
                "astrid_user_id": str(root.id),
                "method": "m",
            },
        ),
        "create_user": (astrid_identity_create_user, {}),
    }
    allowed = {
        "none": set(),
        "res": {"resolve"},
        "lnk": {"resolve", "link", "unlink", "list_links"},
        "adm": set(requests),
    }
    has = {"none": "[]", "res": '["resolve"]', "lnk": '["link"]', "adm": '["admin"]'}
    for name, s in caps.items():
        for op, (handler, request) in requests.items():
            result = call(handler, s, request)
            if op in allowed[name]:
                assert "error" not in result, (name, op, result)
            else:
                denial = (
                    f"storage error: capsule '{name}' denied: identity operation '{op}' "
                    f"not declared in manifest (has: {has[name]})"
                )
                flag = "found" if op == "resolve" else "ok"
                assert result == {flag: False, "error": denial}


def test_invalid_uuid_is_reported_before_the_gate(kernel: Kernel) -> None:
    none = session(kernel, "none")
    expected = {
        "ok": False,
        "error": "invalid UUID: invalid length: expected length 32 for simple format, found 3",
    }
    assert call(astrid_identity_list_links, none, {"astrid_user_id": "abc"}) == expected
    request = {"platform": "p", "platform_user_id": "u", "astrid_user_id": "abc", "method": "m"}
    assert call(astrid_identity_link, none, request) == expected


@pytest.mark.parametrize(
    ("handler", "op", "request_bytes", "needle"),
    [
        (astrid_identity_resolve, "resolve", b"", "invalid JSON"),
        (
            astrid_identity_resolve,
            "resolve",
            b'{"platform":"x"}',
            "missing field `platform_user_id`",
        ),
        (
            astrid_identity_link,
            "link",
            b'{"platform":"x","platform_user_id":"u","astrid_user_id":"bad"}',
            "missing field `method`",
        ),
        (astrid_identity_unlink, "unlink", b"[1]", "must be a JSON object"),
        (astrid_identity_create_user, "create_user", b'{"display_name":5}', "must be a string"),
        (astrid_identity_list_links, "list_links", b"\xff", "not UTF-8"),
    ],
)
def test_parse_failures_trap(
    kernel: Kernel, handler: Any, op: str, request_bytes: bytes, needle: str
) -> None:
    with pytest.raises(SyscallError) as info:
        handler(session(kernel, "adm", "admin"), request_bytes)
    assert info.value.text.startswith(f"invalid {op} request: ")
    assert needle in info.value.text


def test_oversized_requests_trap(kernel: Kernel) -> None:
    with pytest.raises(SyscallError) as info:
        astrid_identity_resolve(session(kernel, "adm", "admin"), b" " * (10 * MiB + 1))
    assert info.value.text == (
        "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
    )


def test_store_failures_are_encoded(kernel: Kernel) -> None:
    admin = session(kernel, "adm", "admin")
    missing = uuid.uuid4()
    assert call(
        astrid_identity_link,
        admin,
        {"platform": "p", "platform_user_id": "u", "astrid_user_id": str(missing), "method": "m"},
    ) == {"ok": False, "error": f"storage error: user not found: {missing}"}
    assert call(astrid_identity_create_user, admin, {"display_name": "a/b"}) == {
        "ok": False,
        "error": "storage error: invalid input: display_name must not contain '/' or null bytes",
    }
    assert call(astrid_identity_resolve, admin, {"platform": " ", "platform_user_id": "u"}) == {
        "found": False,
        "error": "storage error: invalid input: platform must not be empty",
    }


def test_linked_at_is_recent(kernel: Kernel) -> None:
    admin = session(kernel, "adm", "admin")
    root = kernel.service(IdentityStore).resolve("cli", "local")
    assert root is not None
    linked = call(
        astrid_identity_link,
        admin,
        {"platform": "p", "platform_user_id": "u", "astrid_user_id": str(root.id), "method": "m"},
    )
    when = parse_datetime(linked["link"]["linked_at"])
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)
