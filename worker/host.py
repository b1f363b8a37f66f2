"""The 48 Astrid host functions, as forwarders to the broker.

Every host function does one thing: read its arguments out of guest memory, send them to the
broker, wait for the answer, and either hand the result back to the guest or make the guest trap
with the broker's error text.

Making the guest trap is the hard part (DESIGN §4.1): a Python exception raised in an Extism host
function does *not* trap, the guest would just see an empty result. So:

* a **value-returning** host function traps synchronously by setting its output slot to a value of
  the wrong type (I32 for the declared I64): the runtime fails the call on the spot;
* a **void** host function has no output to use: it cancels the plugin (epoch interruption) and
  then waits, inside the host call, until a nested call into the Extism kernel fails, which proves
  the trap is armed. The guest then traps at its next function entry or loop back-edge, and no
  cancel can leak into a later invocation;
* in both cases the invocation is **poisoned**: every later host call of the same invocation does
  nothing (value-returning ones trap again at once), and the worker reports the recorded error
  text as the invocation's result even if the guest manages to return normally. So after a
  denied call the guest performs no further effect, and the caller sees the spec's error text.

The same path makes the guest trap when the worker cannot get an answer: the broker went away
(``lost the connection to the broker``), or the invocation's call timeout expired while the host
call was waiting for the broker (Extism cannot interrupt a host call, so the worker gives up on
it; see :meth:`worker.channel.BrokerChannel.call`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import extism
from extism_sys import ffi, lib

from astrid_core.syscalls import BY_NAME, IMPORT_MODULE, SHIM_MODULE, SYSCALLS, Syscall

log = logging.getLogger("astrid.worker")

_CALLBACK_SIGNATURE = (
    "void(ExtismCurrentPlugin*, const ExtismVal*, ExtismSize, ExtismVal*, ExtismSize, void*)"
)
_I32 = lib.ExtismValType_I32
_I64 = extism.ValType.I64
_I32_TYPE = extism.ValType.I32

#: How long a void host function waits for its cancel to take effect before giving up (the
#: invocation stays poisoned either way, so giving up costs CPU time, never correctness).
_CANCEL_CONFIRM_S = 2.0

#: ``shim.__invokeHostFunc`` always takes five i64 arguments after the function index.
_SHIM_ARGS = 5

_SIGNAL_READY = BY_NAME["astrid_signal_ready"].index


class Forwarder(Protocol):
    def call(
        self, op: int, args: list[bytes], deadline: float | None = None
    ) -> tuple[bool, bytes | str]: ...


class _CancelHandle(Protocol):
    def cancel(self) -> bool: ...


class Invocation:
    """State of the guest call in progress."""

    __slots__ = ("deadline", "export", "trap_text")

    def __init__(self, export: str, deadline: float | None = None) -> None:
        self.export = export
        #: End of the call timeout (:func:`time.monotonic`), None without one: a host call
        #: still waiting for the broker then gives up and the guest traps.
        self.deadline = deadline
        self.trap_text: str | None = None

    @property
    def poisoned(self) -> bool:
        return self.trap_text is not None


class HostBridge:
    """Builds the host functions and holds the per-invocation state they share."""

    def __init__(self, forwarder: Forwarder, on_ready: Callable[[], None] | None = None) -> None:
        self._forwarder = forwarder
        self._on_ready = on_ready
        self._ready_reported = False
        self._cancel: _CancelHandle | None = None
        self.current = Invocation("")
        # cffi callbacks must stay referenced for as long as the plugin lives.
        self._callbacks: list[Any] = []

    def attach(self, plugin: extism.Plugin) -> None:
        """Give the bridge the plugin's cancel handle (needed to trap from void functions)."""
        self._cancel = plugin.cancel_handle()

    def begin(self, export: str, deadline: float | None = None) -> Invocation:
        self.current = Invocation(export, deadline)
        return self.current

    # ----------------------------------------------------------------------------------------
    # Registration

    def functions(self) -> list[extism.Function]:
        """All 48 syscalls in ``extism:host/user`` plus the three ``shim`` helpers."""
        functions = [self._syscall_function(syscall) for syscall in SYSCALLS]
        functions.extend(self._shim_functions())
        return functions

    def _syscall_function(self, syscall: Syscall) -> extism.Function:
        op, arity, returns = syscall.index, syscall.arity, syscall.returns
        dispatch = self._dispatch

        @ffi.callback(_CALLBACK_SIGNATURE)  # type: ignore[untyped-decorator]
        def callback(
            plugin: Any, inputs: Any, _n_in: int, outputs: Any, _n_out: int, _d: Any
        ) -> None:
            dispatch(
                plugin, op, [inputs[i].v.i64 for i in range(arity)], outputs if returns else None
            )

        self._callbacks.append(callback)
        return extism.Function(
            IMPORT_MODULE,
            syscall.name,
            [_I64] * arity,
            [_I64] if returns else [],
            callback,
        )

    def _shim_functions(self) -> list[extism.Function]:
        """The dynamic-dispatch helpers QuickJS guests use (syscalls.md §0.5)."""

        @ffi.callback(_CALLBACK_SIGNATURE)  # type: ignore[untyped-decorator]
        def arg_type(_p: Any, inputs: Any, _n: int, outputs: Any, _m: int, _d: Any) -> None:
            index, position = inputs[0].v.i32, inputs[1].v.i32
            syscall = SYSCALLS[index] if 0 <= index < len(SYSCALLS) else None
            outputs[0].v.i32 = 2 if syscall is not None and 0 <= position < syscall.arity else 0

        @ffi.callback(_CALLBACK_SIGNATURE)  # type: ignore[untyped-decorator]
        def return_type(_p: Any, inputs: Any, _n: int, outputs: Any, _m: int, _d: Any) -> None:
            index = inputs[0].v.i32
            syscall = SYSCALLS[index] if 0 <= index < len(SYSCALLS) else None
            outputs[0].v.i32 = 2 if syscall is not None and syscall.returns else 0

        dispatch = self._dispatch

        @ffi.callback(_CALLBACK_SIGNATURE)  # type: ignore[untyped-decorator]
        def invoke(plugin: Any, inputs: Any, _n: int, outputs: Any, _m: int, _d: Any) -> None:
            index = inputs[0].v.i32
            outputs[0].v.i64 = 0
            if not 0 <= index < len(SYSCALLS):
                return  # unknown index: 0, silently (as the reference)
            syscall = SYSCALLS[index]
            offsets = [inputs[1 + i].v.i64 for i in range(syscall.arity)]
            # The shim always has an i64 result, so even void syscalls trap synchronously here.
            dispatch(plugin, index, offsets, outputs, shim=True)

        self._callbacks.extend((arg_type, return_type, invoke))
        i32, i64 = _I32_TYPE, _I64
        return [
            extism.Function(SHIM_MODULE, "__get_function_arg_type", [i32, i32], [i32], arg_type),
            extism.Function(SHIM_MODULE, "__get_function_return_type", [i32], [i32], return_type),
            extism.Function(
                SHIM_MODULE, "__invokeHostFunc", [i32] + [i64] * _SHIM_ARGS, [i64], invoke
            ),
        ]

    # ----------------------------------------------------------------------------------------
    # The call path

    def _dispatch(
        self, plugin: Any, op: int, offsets: list[int], outputs: Any, shim: bool = False
    ) -> None:
        invocation = self.current
        try:
            if invocation.poisoned:
                if outputs is not None:
                    outputs[0].t = _I32
                return
            try:
                args = [_read_block(plugin, offset) for offset in offsets]
            except InvalidOffset as exc:
                self._trap(plugin, invocation, str(exc), outputs)
                return
            ok, payload = self._forwarder.call(op, args, invocation.deadline)
            if not ok:
                assert isinstance(payload, str)
                self._trap(plugin, invocation, payload, outputs)
                return
            assert isinstance(payload, bytes)
            if outputs is not None and (not shim or SYSCALLS[op].returns):
                outputs[0].v.i64 = _write_block(plugin, payload)
            if op == _SIGNAL_READY and not self._ready_reported and self._on_ready is not None:
                self._ready_reported = True
                self._on_ready()
        except BaseException as exc:  # an exception must never escape into cffi
            plain = isinstance(exc, _GuestTrap | ConnectionError)
            text = str(exc) if plain else f"{type(exc).__name__}: {exc}"
            log.debug("host call %s failed in the worker: %s", SYSCALLS[op].name, text)
            self._trap(plugin, invocation, text, outputs)

    def _trap(self, plugin: Any, invocation: Invocation, text: str, outputs: Any) -> None:
        if invocation.trap_text is None:
            invocation.trap_text = text
        if outputs is not None:
            # Wrong result type: the runtime fails the guest's call synchronously.
            outputs[0].t = _I32
            return
        self._cancel_guest(plugin)

    def _cancel_guest(self, plugin: Any) -> None:
        """Arm the epoch trap and wait, inside the host call, until it is effective."""
        if self._cancel is None:
            return
        self._cancel.cancel()
        deadline = time.monotonic() + _CANCEL_CONFIRM_S
        while time.monotonic() < deadline:
            probe = lib.extism_current_plugin_memory_alloc(plugin, 1)
            if probe == 0:
                return  # the nested kernel call trapped: the guest will trap too
            lib.extism_current_plugin_memory_free(plugin, probe)
        log.warning("plugin cancel did not take effect within %.1f s", _CANCEL_CONFIRM_S)


class InvalidOffset(Exception):
    pass


class _GuestTrap(Exception):
    pass


def _read_block(plugin: Any, offset: int) -> bytes:
    if offset == 0:
        return b""
    length = lib.extism_current_plugin_memory_length(plugin, offset)
    if length == 0:
        raise InvalidOffset(f"invalid memory offset: I64({offset})")
    base = lib.extism_current_plugin_memory(plugin)
    return ffi.buffer(base + offset, length)[:]  # type: ignore[no-any-return]


def _write_block(plugin: Any, data: bytes) -> int:
    if not data:
        return 0
    offset = lib.extism_current_plugin_memory_alloc(plugin, len(data))
    if offset == 0:
        raise _GuestTrap(f"out of memory: cannot allocate {len(data)} bytes in guest memory")
    base = lib.extism_current_plugin_memory(plugin)  # re-read: the allocation may grow memory
    ffi.memmove(base + offset, data, len(data))
    return int(offset)
