"""Capsule secrets, encrypted at rest (DESIGN §5, §6.6).

Secrets live apart from the capsule's KV namespace (``astrid_kv_get`` can never read them): in the
``secrets`` table of ``state.db``, each value sealed with AES-256-GCM under a key kept in
``$ASTRID_HOME/keys/secrets.key`` (32 random bytes, mode 0600, created on first use). The
associated data binds each ciphertext to its capsule and key name, so a row copied to another
capsule or name does not decrypt.
"""

from __future__ import annotations

import contextlib
import os
import secrets as random
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.kernel import Kernel, KernelService

KEY_FILE = "secrets.key"
_NONCE_BYTES = 12


class SecretError(ValueError):
    """A key or value the store refuses; the message is the reference's display text."""


def validate_key(key: str) -> None:
    if not key:
        raise SecretError("invalid secret key or value: secret key must not be empty")
    if ":" in key:
        raise SecretError("invalid secret key or value: secret key must not contain ':'")


def load_or_create_key(path: Path) -> bytes:
    """The store's key: read it, or create it atomically with mode 0600."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, random.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path} does not hold a 32-byte key")
    return key


class SecretStore(KernelService):
    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._db = kernel.kv.connection
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS secrets (capsule TEXT NOT NULL, key TEXT NOT NULL,"
            " nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, PRIMARY KEY (capsule, key))"
        )
        self._aead = AESGCM(load_or_create_key(kernel.home.keys_dir() / KEY_FILE))

    @staticmethod
    def _associated(capsule: str, key: str) -> bytes:
        return f"astrid-secret\0{capsule}\0{key}".encode()

    def set(self, capsule: str, key: str, value: str) -> None:
        validate_key(key)
        nonce = random.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), self._associated(capsule, key))
        self._db.execute(
            "INSERT INTO secrets (capsule, key, nonce, ciphertext) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (capsule, key) DO UPDATE"
            " SET nonce = excluded.nonce, ciphertext = excluded.ciphertext",
            (capsule, key, nonce, sealed),
        )

    def exists(self, capsule: str, key: str) -> bool:
        validate_key(key)
        row = self._db.execute(
            "SELECT 1 FROM secrets WHERE capsule = ? AND key = ?", (capsule, key)
        ).fetchone()
        return row is not None

    def get(self, capsule: str, key: str) -> str | None:
        """The secret's value (for the broker's own use, e.g. ``[env]``); None if absent or
        if it does not decrypt (a tampered row)."""
        validate_key(key)
        row = self._db.execute(
            "SELECT nonce, ciphertext FROM secrets WHERE capsule = ? AND key = ?", (capsule, key)
        ).fetchone()
        if row is None:
            return None
        try:
            plain = self._aead.decrypt(bytes(row[0]), bytes(row[1]), self._associated(capsule, key))
        except InvalidTag:
            return None
        return plain.decode("utf-8", "replace")
