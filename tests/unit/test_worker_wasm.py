"""The worker's pre-scan of a module's exports (does it export `run`?)."""

from __future__ import annotations

import wasmtime

from worker.wasm import exported_functions, exports_run


def _module(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def test_finds_exported_functions() -> None:
    wasm = _module(
        '(module (func (export "run")) (func (export "astrid_tool_call"))'
        ' (memory (export "memory") 1))'
    )
    assert exported_functions(wasm) == {"run", "astrid_tool_call"}
    assert exports_run(wasm)


def test_a_global_named_run_is_not_a_run_function() -> None:
    """Mirrors the reference's run-export pre-scan test."""
    wasm = _module('(module (global (export "run") i32 (i32.const 0)) (func (export "other")))')
    assert not exports_run(wasm)


def test_a_corrupt_binary_counts_as_exporting_run() -> None:
    """Mirrors the reference: a corrupt binary defaults to 'has run' (no timeout)."""
    assert exports_run(b"not a wasm binary")
    assert exports_run(b"\0asm\x01\0\0\0\x07\xff\xff")
