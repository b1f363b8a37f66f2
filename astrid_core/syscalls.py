"""The Astrid syscall table: the 48 host functions of the capsule ABI.

This is the single source of truth that both sides are generated from: the worker registers one
Extism host function per entry (with the wasm signature derived from ``params`` and ``returns``),
the broker maps each entry onto its handler in ``broker/syscalls/<group>.py``, and the wire
protocol identifies a call by the entry's ``index``.

The index order is frozen (it is the reference kernel's ``ALL`` table, used by the QuickJS ``shim``
namespace and by our wire protocol); new functions may only be appended.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType

#: Extism namespace every syscall is imported from.
IMPORT_MODULE = "extism:host/user"

#: Namespace of the three dynamic-dispatch helpers used by QuickJS (extism js-pdk) guests.
SHIM_MODULE = "shim"


class Group(enum.StrEnum):
    """Broker-side handler module of a syscall (``broker/syscalls/<value>.py``).

    These follow the groups of the ABI (``astrid-sys``): Filesystem, IPC (with uplinks), Storage
    (KV, config, caller), Network (split into Unix sockets and HTTP), Identity, Process,
    Lifecycle, System.
    """

    FS = "fs"
    IPC = "ipc"
    KV = "kv"
    NET = "net"
    HTTP = "http"
    IDENTITY = "identity"
    PROCESS = "process"
    LIFECYCLE = "lifecycle"
    SYSTEM = "system"

    @property
    def abi_group(self) -> str:
        """The group name used by the ABI documentation (``astrid-sys``)."""
        return _ABI_GROUP_NAMES[self]


_ABI_GROUP_NAMES = {
    Group.FS: "Filesystem",
    Group.IPC: "IPC",
    Group.KV: "Storage",
    Group.NET: "Network",
    Group.HTTP: "Network",
    Group.IDENTITY: "Identity",
    Group.PROCESS: "Process",
    Group.LIFECYCLE: "Lifecycle",
    Group.SYSTEM: "System",
}


@dataclass(frozen=True, slots=True)
class Syscall:
    """One host function of the ABI.

    Every parameter is an ``i64`` Extism memory offset of a byte block; a function that returns a
    value returns one ``i64`` offset (0 = empty bytes); a void function has no wasm result.
    """

    index: int
    name: str
    params: tuple[str, ...]
    returns: bool
    group: Group

    @property
    def arity(self) -> int:
        return len(self.params)

    @property
    def short_name(self) -> str:
        """The name without the ``astrid_`` prefix (``kv_get``)."""
        return self.name.removeprefix("astrid_")

    @property
    def wasm_signature(self) -> str:
        """The wasm function type, e.g. ``(i64, i64) -> ()``."""
        params = ", ".join("i64" for _ in self.params)
        result = "i64" if self.returns else ""
        return f"({params}) -> ({result})"


def _s(index: int, name: str, params: tuple[str, ...], returns: bool, group: Group) -> Syscall:
    return Syscall(index, f"astrid_{name}", params, returns, group)


_R, _V = True, False

#: All syscalls in frozen index order.
SYSCALLS: tuple[Syscall, ...] = (
    _s(0, "fs_exists", ("path",), _R, Group.FS),
    _s(1, "fs_mkdir", ("path",), _V, Group.FS),
    _s(2, "fs_readdir", ("path",), _R, Group.FS),
    _s(3, "fs_stat", ("path",), _R, Group.FS),
    _s(4, "fs_unlink", ("path",), _V, Group.FS),
    _s(5, "read_file", ("path",), _R, Group.FS),
    _s(6, "write_file", ("path", "content"), _V, Group.FS),
    _s(7, "ipc_publish", ("topic", "payload"), _V, Group.IPC),
    _s(8, "ipc_subscribe", ("topic",), _R, Group.IPC),
    _s(9, "ipc_unsubscribe", ("handle",), _V, Group.IPC),
    _s(10, "ipc_poll", ("handle",), _R, Group.IPC),
    _s(11, "ipc_recv", ("handle", "timeout_ms"), _R, Group.IPC),
    _s(12, "uplink_register", ("name", "platform", "profile"), _R, Group.IPC),
    _s(13, "uplink_send", ("uplink_id", "platform_user_id", "content"), _R, Group.IPC),
    _s(14, "kv_get", ("key",), _R, Group.KV),
    _s(15, "kv_set", ("key", "value"), _V, Group.KV),
    _s(16, "kv_delete", ("key",), _V, Group.KV),
    _s(17, "kv_list_keys", ("prefix",), _R, Group.KV),
    _s(18, "kv_clear_prefix", ("prefix",), _R, Group.KV),
    _s(19, "get_config", ("key",), _R, Group.KV),
    _s(20, "get_caller", (), _R, Group.KV),
    _s(21, "http_request", ("request",), _R, Group.HTTP),
    _s(22, "trigger_hook", ("request",), _R, Group.SYSTEM),
    _s(23, "log", ("level", "message"), _V, Group.SYSTEM),
    _s(24, "cron_schedule", ("name", "schedule", "payload"), _V, Group.SYSTEM),
    _s(25, "cron_cancel", ("name",), _V, Group.SYSTEM),
    _s(26, "spawn_host", ("request",), _R, Group.PROCESS),
    _s(27, "net_bind_unix", ("path",), _R, Group.NET),
    _s(28, "net_accept", ("listener",), _R, Group.NET),
    _s(29, "net_read", ("stream",), _R, Group.NET),
    _s(30, "net_write", ("stream", "data"), _V, Group.NET),
    _s(31, "elicit", ("request",), _R, Group.LIFECYCLE),
    _s(32, "has_secret", ("request",), _R, Group.LIFECYCLE),
    _s(33, "signal_ready", (), _V, Group.LIFECYCLE),
    _s(34, "clock_ms", (), _R, Group.SYSTEM),
    _s(35, "get_interceptor_handles", (), _R, Group.LIFECYCLE),
    _s(36, "request_approval", ("request",), _R, Group.SYSTEM),
    _s(37, "identity_resolve", ("request",), _R, Group.IDENTITY),
    _s(38, "identity_link", ("request",), _R, Group.IDENTITY),
    _s(39, "identity_unlink", ("request",), _R, Group.IDENTITY),
    _s(40, "identity_create_user", ("request",), _R, Group.IDENTITY),
    _s(41, "identity_list_links", ("request",), _R, Group.IDENTITY),
    _s(42, "check_capsule_capability", ("request",), _R, Group.LIFECYCLE),
    _s(43, "spawn_background_host", ("request",), _R, Group.PROCESS),
    _s(44, "read_process_logs_host", ("request",), _R, Group.PROCESS),
    _s(45, "kill_process_host", ("request",), _R, Group.PROCESS),
    _s(46, "net_close_stream", ("stream",), _V, Group.NET),
    _s(47, "net_poll_accept", ("listener",), _R, Group.NET),
)

#: Name → syscall.
BY_NAME: MappingProxyType[str, Syscall] = MappingProxyType({s.name: s for s in SYSCALLS})

#: Largest arity of any syscall (the ``shim`` dispatcher passes up to five arguments).
MAX_ARITY = max(s.arity for s in SYSCALLS)


def by_index(index: int) -> Syscall | None:
    """The syscall with this index, or ``None`` (negative and out-of-range indices included)."""
    if 0 <= index < len(SYSCALLS):
        return SYSCALLS[index]
    return None


def _check_table() -> None:
    for position, syscall in enumerate(SYSCALLS):
        if syscall.index != position:  # pragma: no cover - guards edits of the table
            raise AssertionError(f"{syscall.name} has index {syscall.index} at {position}")


_check_table()
