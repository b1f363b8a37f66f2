"""The KV store in ``state.db`` (SQLite, WAL mode).

One table holds every namespace (``capsule:<id>`` for capsules, ``system:identity``, ...). Keys are
UTF-8 text stored as BLOBs so that SQLite orders and range-scans them bytewise (the reference's
persistent store lists keys in byte order). Values are raw bytes (DESIGN §6.1).

Durability: every write is its own transaction, committed before the broker acknowledges it. With
WAL and ``synchronous=NORMAL`` a committed transaction survives a kill -9 of any process (it may
only be lost with the machine's power).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class StorageError(Exception):
    """Errors with the reference's ``StorageError`` display forms (``invalid key: ...``)."""


def _validate_key(key: str) -> bytes:
    if not key:
        raise StorageError("invalid key: key must not be empty")
    if "\0" in key:
        raise StorageError("invalid key: key must not contain null bytes")
    return key.encode()


def _prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class KvStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv ("
            " ns TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,"
            " PRIMARY KEY (ns, key)) WITHOUT ROWID"
        )

    @property
    def connection(self) -> sqlite3.Connection:
        """The shared connection (other broker stores keep their own tables in ``state.db``)."""
        return self._db

    def get(self, namespace: str, key: str) -> bytes | None:
        row = self._db.execute(
            "SELECT value FROM kv WHERE ns = ? AND key = ?", (namespace, _validate_key(key))
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, namespace: str, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO kv (ns, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
            (namespace, _validate_key(key), value),
        )

    def delete(self, namespace: str, key: str) -> None:
        self._db.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (namespace, _validate_key(key)))

    def _range(self, prefix: str) -> tuple[str, tuple[object, ...]]:
        lower = prefix.encode()
        upper = _prefix_upper_bound(lower)
        if upper is None:
            return "ns = ? AND key >= ?", (lower,)
        return "ns = ? AND key >= ? AND key < ?", (lower, upper)

    def list_keys(self, namespace: str, prefix: str) -> list[str]:
        """Keys under ``prefix`` in byte order (an empty prefix lists the whole namespace)."""
        where, bounds = self._range(prefix)
        query = f"SELECT key FROM kv WHERE {where} ORDER BY key"  # noqa: S608 (fixed clauses)
        rows = self._db.execute(query, (namespace, *bounds))
        keys = []
        for (raw,) in rows:
            try:
                keys.append(bytes(raw).decode("utf-8"))
            except UnicodeDecodeError:
                continue  # not reachable through the ABI; skipped like the reference
        return keys

    def clear_prefix(self, namespace: str, prefix: str) -> int:
        if "\0" in prefix:
            raise StorageError("invalid key: prefix must not contain null bytes")
        where, bounds = self._range(prefix)
        cursor = self._db.execute(f"DELETE FROM kv WHERE {where}", (namespace, *bounds))  # noqa: S608
        return cursor.rowcount

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
