"""The KV store in state.db: namespaces, key rules, ordering, prefixes and durability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker.kvstore import KvStore, StorageError


@pytest.fixture
def kv(tmp_path: Path) -> KvStore:
    store = KvStore(tmp_path / "state.db")
    yield store  # type: ignore[misc]
    store.close()


def test_values_are_raw_bytes(kv: KvStore) -> None:
    kv.set("capsule:a", "k", b"\x00\xffhi")
    assert kv.get("capsule:a", "k") == b"\x00\xffhi"
    kv.set("capsule:a", "empty", b"")
    assert kv.get("capsule:a", "empty") == b""
    assert kv.get("capsule:a", "absent") is None


def test_namespaces_are_isolated(kv: KvStore) -> None:
    kv.set("capsule:a", "k", b"a")
    kv.set("capsule:b", "k", b"b")
    assert kv.get("capsule:a", "k") == b"a"
    assert kv.list_keys("capsule:b", "") == ["k"]
    assert kv.clear_prefix("capsule:a", "") == 1
    assert kv.get("capsule:b", "k") == b"b"


def test_overwrite_and_idempotent_delete(kv: KvStore) -> None:
    kv.set("n", "k", b"1")
    kv.set("n", "k", b"2")
    assert kv.get("n", "k") == b"2"
    kv.delete("n", "k")
    kv.delete("n", "k")
    assert kv.get("n", "k") is None


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "invalid key: key must not be empty"),
        ("a\0b", "invalid key: key must not contain null bytes"),
    ],
)
def test_key_validation(kv: KvStore, key: str, message: str) -> None:
    for operation in (
        lambda: kv.get("n", key),
        lambda: kv.set("n", key, b""),
        lambda: kv.delete("n", key),
    ):
        with pytest.raises(StorageError, match=message):
            operation()


def test_list_keys_in_byte_order_with_prefix(kv: KvStore) -> None:
    for key in ["b", "a/2", "a/10", "a", "ä", "a/1", "z"]:
        kv.set("n", key, b"")
    assert kv.list_keys("n", "") == sorted(
        ["b", "a/2", "a/10", "a", "ä", "a/1", "z"], key=str.encode
    )
    assert kv.list_keys("n", "a/") == ["a/1", "a/10", "a/2"]
    assert kv.list_keys("n", "q") == []


def test_clear_prefix_counts_and_rejects_nul(kv: KvStore) -> None:
    for key in ["x1", "x2", "y"]:
        kv.set("n", key, b"")
    assert kv.clear_prefix("n", "x") == 2
    assert kv.list_keys("n", "") == ["y"]
    with pytest.raises(StorageError, match="invalid key: prefix must not contain null bytes"):
        kv.clear_prefix("n", "\0")


def test_prefix_of_highest_code_points(kv: KvStore) -> None:
    kv.set("n", "\U0010ffffa", b"")
    kv.set("n", "\U0010ffff", b"")
    assert kv.list_keys("n", "\U0010ffff") == ["\U0010ffff", "\U0010ffffa"]


def test_committed_writes_are_visible_to_another_connection(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "state.db")
    store.set("capsule:a", "k", b"v")
    reader = sqlite3.connect(tmp_path / "state.db")
    assert reader.execute(
        "SELECT value FROM kv WHERE ns='capsule:a' AND key=?", (b"k",)
    ).fetchone() == (b"v",)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reader.close()
    store.close()
