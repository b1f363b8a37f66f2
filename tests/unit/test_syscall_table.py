"""The syscall table against the ABI seed (astrid-sys) and the frozen order of syscalls.md §0.5."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from astrid_core.syscalls import BY_NAME, SYSCALLS, Group, by_index

SEED = Path(__file__).resolve().parent.parent / "data" / "astrid-sys.txt"

# syscalls.md §0.5, the reference kernel's ALL table (frozen; new functions are appended).
FROZEN_ORDER = """
fs_exists fs_mkdir fs_readdir fs_stat fs_unlink read_file write_file ipc_publish ipc_subscribe
ipc_unsubscribe ipc_poll ipc_recv uplink_register uplink_send kv_get kv_set kv_delete kv_list_keys
kv_clear_prefix get_config get_caller http_request trigger_hook log cron_schedule cron_cancel
spawn_host net_bind_unix net_accept net_read net_write elicit has_secret signal_ready clock_ms
get_interceptor_handles request_approval identity_resolve identity_link identity_unlink
identity_create_user identity_list_links check_capsule_capability spawn_background_host
read_process_logs_host kill_process_host net_close_stream net_poll_accept
""".split()

# syscalls.md §0.6: number of i64 parameters and whether an i64 is returned.
SIGNATURES = {
    "fs_exists": (1, True), "fs_mkdir": (1, False), "fs_readdir": (1, True),
    "fs_stat": (1, True), "fs_unlink": (1, False), "read_file": (1, True),
    "write_file": (2, False), "ipc_publish": (2, False), "ipc_subscribe": (1, True),
    "ipc_unsubscribe": (1, False), "ipc_poll": (1, True), "ipc_recv": (2, True),
    "uplink_register": (3, True), "uplink_send": (3, True), "kv_get": (1, True),
    "kv_set": (2, False), "kv_delete": (1, False), "kv_list_keys": (1, True),
    "kv_clear_prefix": (1, True), "get_config": (1, True), "get_caller": (0, True),
    "net_bind_unix": (1, True), "net_accept": (1, True), "net_read": (1, True),
    "net_write": (2, False), "net_close_stream": (1, False), "net_poll_accept": (1, True),
    "http_request": (1, True), "log": (2, False), "cron_schedule": (3, False),
    "cron_cancel": (1, False), "trigger_hook": (1, True), "clock_ms": (0, True),
    "elicit": (1, True), "has_secret": (1, True), "request_approval": (1, True),
    "spawn_host": (1, True), "signal_ready": (0, False), "get_interceptor_handles": (0, True),
    "identity_resolve": (1, True), "identity_link": (1, True), "identity_unlink": (1, True),
    "identity_create_user": (1, True), "identity_list_links": (1, True),
    "check_capsule_capability": (1, True), "spawn_background_host": (1, True),
    "read_process_logs_host": (1, True), "kill_process_host": (1, True),
}  # fmt: skip


def seed_groups() -> dict[str, list[str]]:
    """``{"Filesystem": ["astrid_fs_exists", ...], ...}`` from the ABI seed."""
    groups: dict[str, list[str]] = {}
    for line in SEED.read_text().splitlines():
        match = re.match(r"^(\w+) \((\d+)\) (astrid_.*)$", line)
        if match:
            names = re.findall(r"astrid_\w+", match.group(3))
            assert len(names) == int(match.group(2)), line
            groups[match.group(1)] = names
    return groups


def test_every_name_of_the_abi_seed_is_in_the_table() -> None:
    names = [name for group in seed_groups().values() for name in group]
    assert len(names) == 48
    assert sorted(names) == sorted(BY_NAME)


def test_groups_follow_the_abi_seed() -> None:
    for abi_group, names in seed_groups().items():
        for name in names:
            assert BY_NAME[name].group.abi_group == abi_group, name


def test_index_order_matches_the_frozen_kernel_table() -> None:
    assert [s.name for s in SYSCALLS] == [f"astrid_{n}" for n in FROZEN_ORDER]
    assert [s.index for s in SYSCALLS] == list(range(48))


def test_arity_and_result_kind_match_the_wasm_signatures() -> None:
    for syscall in SYSCALLS:
        assert (syscall.arity, syscall.returns) == SIGNATURES[syscall.short_name], syscall.name


def test_exactly_thirteen_syscalls_are_void() -> None:
    assert sum(not s.returns for s in SYSCALLS) == 13


@pytest.mark.parametrize(
    ("index", "name"),
    [
        (0, "astrid_fs_exists"),
        (27, "astrid_net_bind_unix"),
        (28, "astrid_net_accept"),
        (42, "astrid_check_capsule_capability"),
        (46, "astrid_net_close_stream"),
        (47, "astrid_net_poll_accept"),
    ],
)
def test_index_stability(index: int, name: str) -> None:
    """Mirrors the reference's host/mod.rs index-stability tests."""
    syscall = by_index(index)
    assert syscall is not None and syscall.name == name


@pytest.mark.parametrize("index", [48, 1000, -1])
def test_indices_outside_the_table_resolve_to_nothing(index: int) -> None:
    assert by_index(index) is None


def test_every_group_has_a_broker_module() -> None:
    root = Path(__file__).resolve().parents[2] / "broker" / "syscalls"
    for group in Group:
        assert (root / f"{group.value}.py").is_file(), group


def test_wasm_signature_text() -> None:
    assert BY_NAME["astrid_kv_set"].wasm_signature == "(i64, i64) -> ()"
    assert BY_NAME["astrid_clock_ms"].wasm_signature == "() -> (i64)"
