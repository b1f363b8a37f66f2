"""broker.secrets: capsule secrets sealed with AES-GCM in state.db (DESIGN §5, §6.6).

A real ``state.db`` inside a real Kernel; the key file under ``$ASTRID_HOME/keys``.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid_core.dirs import AstridHome
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.secrets import KEY_FILE, SecretError, SecretStore, load_or_create_key, validate_key

PLAIN = "correct horse battery staple \u00e9\u2603"


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
def store(kernel: Kernel) -> SecretStore:
    return kernel.service(SecretStore)


def rows(kernel: Kernel) -> list[tuple[str, str, bytes, bytes]]:
    return [
        (str(c), str(k), bytes(n), bytes(s))
        for c, k, n, s in kernel.kv.connection.execute(
            "SELECT capsule, key, nonce, ciphertext FROM secrets ORDER BY capsule, key"
        )
    ]


# --------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(store: SecretStore) -> None:
    assert store.get("cap", "api_key") is None
    assert store.exists("cap", "api_key") is False
    store.set("cap", "api_key", PLAIN)
    assert store.exists("cap", "api_key") is True
    assert store.get("cap", "api_key") == PLAIN
    # Another capsule, another key: absent.
    assert store.exists("other", "api_key") is False
    assert store.get("other", "api_key") is None
    assert store.exists("cap", "api_key2") is False


def test_set_replaces_with_a_fresh_nonce(kernel: Kernel, store: SecretStore) -> None:
    store.set("cap", "k", "one")
    (_, _, nonce1, sealed1), *_ = rows(kernel)
    store.set("cap", "k", "one")
    ((_, _, nonce2, sealed2),) = rows(kernel)
    assert nonce1 != nonce2 and sealed1 != sealed2
    assert len(nonce2) == 12
    assert len(sealed2) == len(b"one") + 16  # the GCM tag
    store.set("cap", "k", "two")
    assert store.get("cap", "k") == "two"
    assert len(rows(kernel)) == 1


def test_an_empty_value_round_trips(store: SecretStore) -> None:
    store.set("cap", "k", "")
    assert store.exists("cap", "k")
    assert store.get("cap", "k") == ""


def test_secrets_survive_a_new_store_on_the_same_home(tmp_path: Path) -> None:
    kernel = new_kernel(tmp_path)
    kernel.service(SecretStore).set("cap", "token", PLAIN)
    kernel.close()
    kernel = new_kernel(tmp_path)
    try:
        assert kernel.service(SecretStore).get("cap", "token") == PLAIN
    finally:
        kernel.close()


def test_the_plaintext_never_reaches_the_database_files(tmp_path: Path) -> None:
    kernel = new_kernel(tmp_path)
    store = kernel.service(SecretStore)
    store.set("cap", "api_key", PLAIN)
    store.set("cap", "other", PLAIN * 3)
    db_files = list(kernel.home.root().glob("state.db*"))
    assert db_files
    for path in db_files:
        data = path.read_bytes()
        assert PLAIN.encode() not in data, path
        assert b"correct horse" not in data, path
    kernel.kv.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    kernel.close()
    data = (tmp_path / "home" / "state.db").read_bytes()
    assert b"correct horse" not in data
    assert b"api_key" in data  # the key names are not secret
    # Nor in the KV table.
    db = sqlite3.connect(tmp_path / "home" / "state.db")
    try:
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    finally:
        db.close()


# --------------------------------------------------------------------------------------------
# The associated data binds a ciphertext to its capsule and key


def copy_row(kernel: Kernel, capsule: str, key: str, to_capsule: str, to_key: str) -> None:
    kernel.kv.connection.execute(
        "INSERT OR REPLACE INTO secrets (capsule, key, nonce, ciphertext)"
        " SELECT ?, ?, nonce, ciphertext FROM secrets WHERE capsule = ? AND key = ?",
        (to_capsule, to_key, capsule, key),
    )


def test_a_row_copied_to_another_capsule_does_not_decrypt(
    kernel: Kernel, store: SecretStore
) -> None:
    store.set("alice", "token", PLAIN)
    copy_row(kernel, "alice", "token", "mallory", "token")
    assert store.get("mallory", "token") is None
    assert store.get("alice", "token") == PLAIN


def test_a_row_copied_to_another_key_does_not_decrypt(kernel: Kernel, store: SecretStore) -> None:
    store.set("alice", "token", PLAIN)
    copy_row(kernel, "alice", "token", "alice", "token2")
    assert store.get("alice", "token2") is None


def test_a_key_with_a_nul_does_not_stand_for_another(kernel: Kernel, store: SecretStore) -> None:
    """Capsule ids never hold a NUL, so the capsule/key boundary in the binding is unambiguous;
    a key name holding one is just another name."""
    store.set("alice", "b\0c", PLAIN)
    copy_row(kernel, "alice", "b\0c", "alice", "b")
    copy_row(kernel, "alice", "b\0c", "alice", "c")
    assert store.get("alice", "b") is None
    assert store.get("alice", "c") is None
    assert store.get("alice", "b\0c") == PLAIN


def test_a_tampered_ciphertext_or_nonce_does_not_decrypt(
    kernel: Kernel, store: SecretStore
) -> None:
    store.set("cap", "k", PLAIN)
    ((_, _, nonce, sealed),) = rows(kernel)
    db = kernel.kv.connection
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    db.execute("UPDATE secrets SET ciphertext = ? WHERE key = 'k'", (flipped,))
    assert store.get("cap", "k") is None
    db.execute("UPDATE secrets SET ciphertext = ?, nonce = ? WHERE key = 'k'", (sealed, b"\0" * 12))
    assert store.get("cap", "k") is None
    db.execute("UPDATE secrets SET nonce = ? WHERE key = 'k'", (nonce,))
    assert store.get("cap", "k") == PLAIN


def test_another_key_file_cannot_decrypt(tmp_path: Path) -> None:
    kernel = new_kernel(tmp_path)
    kernel.service(SecretStore).set("cap", "k", PLAIN)
    kernel.close()
    key_file = tmp_path / "home" / "keys" / KEY_FILE
    key_file.unlink()
    kernel = new_kernel(tmp_path)
    try:
        assert kernel.service(SecretStore).get("cap", "k") is None  # a new key was made
    finally:
        kernel.close()


# --------------------------------------------------------------------------------------------
# The key file


def test_the_key_file_is_created_0600_once_and_reused(tmp_path: Path) -> None:
    kernel = new_kernel(tmp_path)
    kernel.service(SecretStore)
    kernel.close()
    key_file = tmp_path / "home" / "keys" / KEY_FILE
    info = key_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert info.st_size == 32
    key = key_file.read_bytes()
    assert load_or_create_key(key_file) == key
    kernel = new_kernel(tmp_path)
    kernel.service(SecretStore)
    kernel.close()
    assert key_file.read_bytes() == key
    assert key_file.stat().st_ino == info.st_ino
    # No temporary file is left behind.
    assert sorted(p.name for p in key_file.parent.iterdir()) == [KEY_FILE]


def test_the_key_file_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_key(tmp_path / "keys" / KEY_FILE)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys" / KEY_FILE).stat().st_mode) == 0o600


def test_two_keys_are_different(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a" / KEY_FILE) != load_or_create_key(
        tmp_path / "b" / KEY_FILE
    )


def _load(path: str, queue: multiprocessing.Queue[bytes]) -> None:
    queue.put(load_or_create_key(Path(path)))


def test_concurrent_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / KEY_FILE
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bytes] = context.Queue()
    processes = [context.Process(target=_load, args=(str(path), queue)) for _ in range(8)]
    for process in processes:
        process.start()
    keys = {queue.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(30)
    assert keys == {path.read_bytes()}
    assert sorted(p.name for p in path.parent.iterdir()) == [KEY_FILE]


@pytest.mark.parametrize("content", [b"", b"short", b"x" * 31, b"x" * 33, b"x" * 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=r"does not hold a 32-byte key"):
        load_or_create_key(path)
    assert path.read_bytes() == content  # never replaced


def test_a_bad_key_file_stops_the_store(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True)
    (keys / KEY_FILE).write_bytes(b"nope")
    kernel = new_kernel(tmp_path)
    try:
        with pytest.raises(RuntimeError, match=str(keys / KEY_FILE)):
            kernel.service(SecretStore)
    finally:
        kernel.close()


# --------------------------------------------------------------------------------------------
# Key names


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("a:b", "invalid secret key or value: secret key must not contain ':'"),
        (":", "invalid secret key or value: secret key must not contain ':'"),
        ("__secret:api_key", "invalid secret key or value: secret key must not contain ':'"),
        ("", "invalid secret key or value: secret key must not be empty"),
    ],
)
def test_invalid_key_names(store: SecretStore, key: str, text: str) -> None:
    with pytest.raises(SecretError) as info:
        validate_key(key)
    assert str(info.value) == text
    for call in (
        lambda: store.set("cap", key, "v"),
        lambda: store.exists("cap", key),
        lambda: store.get("cap", key),
    ):
        with pytest.raises(SecretError) as info:
            call()
        assert str(info.value) == text
    assert rows(store.kernel) == []


@pytest.mark.parametrize("key", ["api_key", "API-KEY.v2", "with space", "\u00e9", "k" * 4096])
def test_valid_key_names(store: SecretStore, key: str) -> None:
    validate_key(key)
    store.set("cap", key, "v")
    assert store.get("cap", key) == "v"
