"""Pieces of the broker that need no process: config resolution, capsule logs, log levels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astrid_core.capsule_abi import LogLevel
from astrid_core.logfile import LogFile, capsule_tag, format_record
from astrid_core.manifest import parse_manifest
from broker.config import MissingConfig, preload_env_file, resolve_config
from broker.dispatch import build_table, pending_syscalls
from broker.errors import SyscallError, guard, utf8_error_text
from broker.kvstore import KvStore

MANIFEST = """
[package]
name = "cfg"
version = "0.1.0"

[[component]]
file = "cfg.wasm"

[env.plain]
type = "string"
default = "default_value"

[env.number]
type = "string"
default = 42

[env.secret_key]
type = "secret"

[env.choice]
type = "string"
enum_values = ["a", "b"]
default = "a"

[env.ASTRID_SOCKET_PATH]
type = "string"
"""


@pytest.fixture
def kv(tmp_path: Path) -> KvStore:
    store = KvStore(tmp_path / "state.db")
    yield store  # type: ignore[misc]
    store.close()


def test_config_resolution_follows_kv_then_default(kv: KvStore, tmp_path: Path) -> None:
    """Mirrors the reference's wasm_env_e2e env_config_injection."""
    manifest = parse_manifest(MANIFEST, tmp_path / "Capsule.toml")
    kv.set("capsule:cfg", "secret_key", b"injected_value")
    kv.set("capsule:cfg", "choice", b"b")
    config = resolve_config(manifest, kv, "capsule:cfg", Path("/h/sessions/system.sock"))
    assert config == {
        "ASTRID_SOCKET_PATH": "/h/sessions/system.sock",
        "plain": "default_value",
        "number": "42",
        "secret_key": "injected_value",
        "choice": "b",
    }


def test_missing_config_names_every_key(kv: KvStore, tmp_path: Path) -> None:
    manifest = parse_manifest(MANIFEST, tmp_path / "Capsule.toml")
    kv.set("capsule:cfg", "choice", b"\xff")
    with pytest.raises(MissingConfig) as info:
        resolve_config(manifest, kv, "capsule:cfg", Path("/s"))
    assert str(info.value) == "Missing required environment variables: secret_key, choice"


def test_env_json_is_preloaded_into_kv(kv: KvStore, tmp_path: Path) -> None:
    (tmp_path / ".env.json").write_text(json.dumps({"secret_key": "from-file", "bad": 1}))
    preload_env_file(kv, "capsule:cfg", tmp_path)
    assert kv.get("capsule:cfg", "secret_key") == b"from-file"
    assert kv.get("capsule:cfg", "bad") is None
    (tmp_path / ".env.json").write_text("{not json")
    preload_env_file(kv, "capsule:cfg", tmp_path)  # ignored with a warning


def test_log_records_are_single_lines(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "logs" / "cap.log")
    log.write_record("INFO", capsule_tag("cap", 2), "two\nlines\r")
    log.close()
    line = (tmp_path / "logs" / "cap.log").read_text()
    assert line.endswith(" INFO   cap[2] two\\nlines\\r\n")
    assert line.count("\n") == 1
    assert (
        format_record("WARN", "c[1]", "m", when=0.5) == b"1970-01-01T00:00:00.500Z WARN   c[1] m\n"
    )
    assert format_record("STDERR", "c[1]", "bad \udcff").endswith(b"STDERR c[1] bad \\udcff\n")


@pytest.mark.parametrize(
    ("given", "level"),
    [("TRACE", "TRACE"), ("debug", "DEBUG"), ("Warning", "WARN"), ("warn", "WARN"),
     ("err", "ERROR"), ("ERROR", "ERROR"), ("info", "INFO"), ("loud", "INFO"), ("", "INFO")],
)  # fmt: skip
def test_log_levels(given: str, level: str) -> None:
    assert LogLevel.from_guest(given).record_name == level


def test_guard_text() -> None:
    guard(b"x" * 4, 4)
    with pytest.raises(
        SyscallError,
        match=r"^memory allocation of 5 bytes exceeds maximum allowed limit of 4 bytes$",
    ):
        guard(b"x" * 5, 4)


def test_utf8_error_text_mirrors_rust() -> None:
    assert utf8_error_text(b"ab\xff") == "invalid utf-8 sequence of 1 bytes from index 2"
    assert utf8_error_text(b"a\xe2\x82") == "incomplete utf-8 byte sequence from index 1"


def test_every_syscall_has_a_dispatch_entry() -> None:
    table = build_table()
    assert len(table) == 48
    assert "astrid_kv_get" not in pending_syscalls()
