"""Storage: the five KV syscalls, ``astrid_get_config`` and ``astrid_get_caller`` (§2.4, §2.5)."""

from __future__ import annotations

import json

from broker.errors import SyscallError, guard, lossy, lossy_or_empty, utf8_error_text
from broker.kvstore import StorageError
from broker.limits import MAX_GUEST_PAYLOAD_LEN, MAX_KEY_LEN
from broker.sessions import CapsuleSession


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _utf8_prefix(prefix: bytes, syscall: str) -> str:
    guard(prefix, MAX_KEY_LEN)
    try:
        return prefix.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError(
            f"{syscall} prefix is not valid UTF-8: {utf8_error_text(prefix)}"
        ) from None


def astrid_kv_get(session: CapsuleSession, key: bytes) -> bytes:
    name = lossy_or_empty(guard(key, MAX_KEY_LEN))
    try:
        value = session.kernel.kv.get(session.namespace, name)
    except StorageError as exc:
        raise SyscallError(f"kv_get failed: {exc}") from None
    return b"" if value is None else value


def astrid_kv_set(session: CapsuleSession, key: bytes, value: bytes) -> None:
    name = lossy_or_empty(guard(key, MAX_KEY_LEN))
    guard(value, MAX_GUEST_PAYLOAD_LEN)
    try:
        session.kernel.kv.set(session.namespace, name, value)
    except StorageError as exc:
        raise SyscallError(f"kv_set failed: {exc}") from None


def astrid_kv_delete(session: CapsuleSession, key: bytes) -> None:
    name = lossy_or_empty(guard(key, MAX_KEY_LEN))
    try:
        session.kernel.kv.delete(session.namespace, name)
    except StorageError as exc:
        raise SyscallError(f"kv_delete failed: {exc}") from None


def astrid_kv_list_keys(session: CapsuleSession, prefix: bytes) -> bytes:
    text = _utf8_prefix(prefix, "kv_list_keys")
    try:
        return _json(session.kernel.kv.list_keys(session.namespace, text))
    except StorageError as exc:
        raise SyscallError(f"kv_list_keys failed: {exc}") from None


def astrid_kv_clear_prefix(session: CapsuleSession, prefix: bytes) -> bytes:
    text = _utf8_prefix(prefix, "kv_clear_prefix")
    try:
        return _json(session.kernel.kv.clear_prefix(session.namespace, text))
    except StorageError as exc:
        raise SyscallError(f"kv_clear_prefix failed: {exc}") from None


def astrid_get_config(session: CapsuleSession, key: bytes) -> bytes:
    value = session.config.get(lossy(guard(key, MAX_KEY_LEN)))
    return b"" if value is None else _json(value)


def astrid_get_caller(session: CapsuleSession) -> bytes:
    return _json(session.caller)
