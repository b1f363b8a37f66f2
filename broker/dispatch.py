"""The dispatch table: syscall index → handler, generated from ``astrid_core.syscalls``.

The handler of ``astrid_<x>`` is the function of that name in ``broker/syscalls/<group>.py``.
A syscall whose handler does not exist yet answers with the trap
``"<name> is not implemented yet"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from astrid_core.syscalls import SYSCALLS, Syscall
from broker.errors import SyscallError

Handler = Callable[..., bytes | Awaitable[bytes | None] | None]


def _not_implemented(syscall: Syscall) -> Handler:
    text = f"{syscall.name} is not implemented yet"

    def handler(_session: Any, *_args: bytes) -> None:
        raise SyscallError(text)

    handler.__name__ = syscall.name
    handler.not_implemented = True  # type: ignore[attr-defined]
    return handler


def find_handler(syscall: Syscall) -> Handler | None:
    module = importlib.import_module(f"broker.syscalls.{syscall.group.value}")
    handler: Handler | None = getattr(module, syscall.name, None)
    return handler


def build_table() -> tuple[Handler, ...]:
    return tuple(find_handler(s) or _not_implemented(s) for s in SYSCALLS)


def pending_syscalls() -> list[str]:
    """Names of the syscalls that have no handler yet."""
    return [s.name for s in SYSCALLS if find_handler(s) is None]
