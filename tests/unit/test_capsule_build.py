"""Build the C capsules from source and run them under the extism SDK with Python host functions.

The capsules are copied to a temporary directory and built there (once per module), so the
repository tree need not be pre-built. The fake host registers all 48 syscalls in
``extism:host/user`` with the signatures of ``astrid_core.syscalls`` as raw cffi callbacks.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import extism
import pytest
import wasmtime
from extism_sys import ffi, lib

from astrid_core.syscalls import BY_NAME, IMPORT_MODULE, SYSCALLS
from tests.syscaller import (
    Fill,
    decode_hex_output,
    decode_results,
    encode_script,
    script_tool_args,
    tool_call_input,
)

REPO = Path(__file__).resolve().parents[2]


def _load_build_module() -> Any:
    # capsules/build.py is a script, not a package module: load it under a unique name.
    spec = importlib.util.spec_from_file_location("capsule_build", REPO / "capsules" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


capsule_build = _load_build_module()

CAPSULE_SOURCES = {
    "counter": REPO / "capsules" / "examples" / "counter",
    "hello-tool": REPO / "capsules" / "examples" / "hello-tool",
    "syscaller": REPO / "tests" / "capsules" / "syscaller",
}

CALLBACK_TYPE = (
    "void(ExtismCurrentPlugin*, const ExtismVal*, ExtismSize, ExtismVal*, ExtismSize, void*)"
)

Handler = Callable[["FakeHost", list[bytes]], bytes | None]


class FakeHost:
    """All 48 syscalls as Python host functions: records calls, keeps a KV store."""

    def __init__(self, handlers: dict[str, Handler] | None = None) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        #: False: record only the names of calls (the args lists stay empty).
        self.keep_args = True
        self.kv: dict[bytes, bytes] = {}
        self.errors: list[BaseException] = []
        self.handlers: dict[str, Handler] = {
            "astrid_kv_get": lambda host, a: host.kv.get(a[0], b""),
            "astrid_kv_set": lambda host, a: host.kv.__setitem__(a[0], a[1]),
            "astrid_clock_ms": lambda host, a: b"1700000000123",
        }
        self.handlers.update(handlers or {})
        self.cancel: Any = None
        self._callbacks: list[Any] = []
        self.functions = [self._function(s.name, s.arity, s.returns) for s in SYSCALLS]

    def _function(self, name: str, arity: int, returns: bool) -> extism.Function:
        @ffi.callback(CALLBACK_TYPE)  # type: ignore[untyped-decorator]
        def callback(
            current: Any, inputs: Any, n_inputs: int, outputs: Any, n_outputs: int, _data: Any
        ) -> None:
            try:
                memory = lib.extism_current_plugin_memory(current)
                args = []
                for i in range(n_inputs):
                    offset = inputs[i].v.i64
                    length = (
                        lib.extism_current_plugin_memory_length(current, offset) if offset else 0
                    )
                    args.append(bytes(ffi.buffer(memory + offset, length)) if length else b"")
                self.calls.append((name, args if self.keep_args else []))
                handler = self.handlers.get(name)
                result = handler(self, args) if handler else name.encode()
                if n_outputs:
                    offset = 0
                    if result:
                        offset = lib.extism_current_plugin_memory_alloc(current, len(result))
                        memory = lib.extism_current_plugin_memory(current)
                        ffi.memmove(memory + offset, result, len(result))
                    outputs[0].v.i64 = offset
            except BaseException as exc:  # surfaced by the test, not by cffi
                self.errors.append(exc)

        self._callbacks.append(callback)
        i64 = extism.ValType.I64
        return extism.Function(
            IMPORT_MODULE, name, [i64] * arity, [i64] if returns else [], callback
        )

    def plugin(
        self, wasm: bytes, timeout_ms: int | None = None, max_pages: int | None = None
    ) -> extism.Plugin:
        manifest: dict[str, Any] = {"wasm": [{"data": wasm}]}
        if timeout_ms is not None:
            manifest["timeout_ms"] = timeout_ms
        if max_pages is not None:
            manifest["memory"] = {"max_pages": max_pages}
        plugin = extism.Plugin(manifest, wasi=True, functions=self.functions)
        self.cancel = plugin.cancel_handle()
        return plugin

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture(scope="module")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("capsules")
    built = {}
    for name, source in CAPSULE_SOURCES.items():
        dest = root / name
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.wasm"))
        built[name] = capsule_build.build_capsule(dest).read_bytes()
    return built


def tool_input(tool: str, arguments: dict[str, Any]) -> bytes:
    args = list(json.dumps(arguments).encode())
    return json.dumps({"name": tool, "arguments": args}).encode()


# ---- build.py ------------------------------------------------------------------------------


def test_every_capsule_links(wasm: dict[str, bytes]) -> None:
    for name, data in wasm.items():
        host = FakeHost()
        plugin = host.plugin(data)
        export = "run" if name == "counter" else "astrid_tool_call"
        assert plugin.function_exists(export), name


def test_build_is_incremental_and_installs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        CAPSULE_SOURCES["counter"], src / "counter", ignore=shutil.ignore_patterns("*.wasm")
    )
    assert capsule_build.main([str(src)]) == 0
    assert "built counter" in capsys.readouterr().out
    assert capsule_build.main([str(src), "--install", str(tmp_path / "inst")]) == 0
    assert "up to date: counter" in capsys.readouterr().out
    assert (tmp_path / "inst" / "counter" / "Capsule.toml").is_file()
    assert (tmp_path / "inst" / "counter" / "counter.wasm").read_bytes()[:4] == b"\0asm"


def test_build_reports_expected_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_toml = tmp_path / "bad-toml"
    bad_toml.mkdir()
    (bad_toml / "Capsule.toml").write_text("[package\n")
    no_source = tmp_path / "no-source"
    no_source.mkdir()
    (no_source / "Capsule.toml").write_text(
        '[package]\nname = "x"\nversion = "0.1.0"\n[[component]]\nfile = "x.wasm"\n'
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Capsule.toml").write_text(
        '[package]\nname = "broken"\nversion = "0.1.0"\n[[component]]\nfile = "b.wasm"\n'
    )
    (broken / "b.c").write_text("int f(void) { return undeclared; }\n")
    wat = tmp_path / "wat"
    wat.mkdir()
    (wat / "Capsule.toml").write_text(
        '[package]\nname = "wat"\nversion = "0.1.0"\n[[component]]\nfile = "w.wasm"\n'
    )
    (wat / "w.wat").write_text('(module (func (export "f") (result i32) i32.const 0))')

    assert capsule_build.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "invalid TOML" in err
    assert "no source (x.c or x.wat)" in err
    assert "compilation failed" in err and "undeclared" in err
    assert "Traceback" not in err
    assert (wat / "w.wasm").read_bytes()[:4] == b"\0asm"
    assert not (broken / "b.wasm").exists()


# ---- syscaller -----------------------------------------------------------------------------


def test_syscaller_imports_exactly_the_48_syscalls(wasm: dict[str, bytes]) -> None:
    module = wasmtime.Module(wasmtime.Engine(), wasm["syscaller"])
    user: dict[str, wasmtime.FuncType] = {}
    for imp in module.imports:
        if imp.module == IMPORT_MODULE:
            assert imp.name is not None and isinstance(imp.type, wasmtime.FuncType)
            assert imp.name not in user, f"{imp.name} imported twice"
            user[imp.name] = imp.type
        else:
            assert imp.module in ("extism:host/env", "wasi_snapshot_preview1"), imp.module
    assert set(user) == set(BY_NAME)
    for name, functype in user.items():
        syscall = BY_NAME[name]
        assert [str(p) for p in functype.params] == ["i64"] * syscall.arity, name
        assert [str(r) for r in functype.results] == (["i64"] if syscall.returns else []), name


def test_syscaller_kv_round_trip(wasm: dict[str, bytes]) -> None:
    host = FakeHost()
    plugin = host.plugin(wasm["syscaller"])
    script = encode_script(
        [
            ("astrid_kv_set", [b"k", b"v\x00\xff binary"]),
            ("astrid_kv_get", [b"k"]),
            ("astrid_kv_get", [b"missing"]),
            ("astrid_kv_set", [b"empty", b""]),
            ("astrid_kv_get", [b"empty"]),
        ]
    )
    results = decode_results(plugin.call("run_script", script))
    assert results == [None, b"v\x00\xff binary", b"", None, b""]
    assert host.kv == {b"k": b"v\x00\xff binary", b"empty": b""}
    assert host.calls[3] == ("astrid_kv_set", [b"empty", b""])
    assert not host.errors

    # The same script through the tool interface (hex in, hex out).
    out = plugin.call("astrid_tool_call", tool_call_input(script)).decode()
    assert decode_hex_output(out) == results
    assert script_tool_args(script) == json.dumps(script.hex())


def test_syscaller_calls_every_syscall_with_its_arity(wasm: dict[str, bytes]) -> None:
    host = FakeHost()
    # Without a handler a syscall returns its own name; kv_get echoes its key.
    host.handlers = {"astrid_kv_get": lambda host, a: b"kv:" + a[0]}
    plugin = host.plugin(wasm["syscaller"])
    calls = [(s.name, [f"{s.short_name}#{i}".encode() for i in range(s.arity)]) for s in SYSCALLS]
    results = decode_results(plugin.call("run_script", encode_script(calls)))
    assert host.calls == [(name, list(args)) for name, args in calls]
    expected = [
        (b"kv:" + calls[s.index][1][0] if s.name == "astrid_kv_get" else s.name.encode())
        if s.returns
        else None
        for s in SYSCALLS
    ]
    assert results == expected
    assert not host.errors


def test_syscaller_rejects_bad_scripts(wasm: dict[str, bytes]) -> None:
    host = FakeHost()
    plugin = host.plugin(wasm["syscaller"])
    good = encode_script([("astrid_kv_get", [b"k"])])
    bad = [
        bytes([0, 1, 48, 0]),  # unknown index
        bytes([0, 1, 14, 2, 0, 0, 0, 0, 0, 0, 0, 0]),  # kv_get with two args
        good[:-1],  # truncated
        good + b"x",  # trailing bytes
    ]
    for script in bad:
        with pytest.raises(extism.Error, match="syscaller: bad script"):
            plugin.call("run_script", script)
    assert host.calls == []
    with pytest.raises(extism.Error, match="syscaller: bad script"):
        plugin.call("astrid_tool_call", tool_input("run", {"not": "a hex string"}))
    with pytest.raises(extism.Error, match="Unknown tool: nope"):
        plugin.call("astrid_tool_call", tool_input("nope", {}))


def test_syscaller_big_argument(wasm: dict[str, bytes]) -> None:
    host = FakeHost()
    plugin = host.plugin(wasm["syscaller"])
    value = bytes(range(256)) * (10 * 4096) + b"!"  # 10 MiB + 1
    script = encode_script([("astrid_kv_set", [b"big", value])])
    assert decode_results(plugin.call("run_script", script)) == [None]
    assert host.kv[b"big"] == value

    # A Fill argument is generated by the capsule: small enough for the tool interface.
    script = encode_script(
        [
            ("astrid_kv_set", [b"filled", Fill(0x7A, 10 * 1024 * 1024 + 1)]),
            ("astrid_kv_set", [b"e", Fill(1, 0)]),
        ]
    )
    assert len(script) < 32
    out = plugin.call("astrid_tool_call", tool_call_input(script)).decode()
    assert decode_hex_output(out) == [None, None]
    assert host.kv[b"filled"] == b"z" * (10 * 1024 * 1024 + 1)
    assert host.calls[-1] == ("astrid_kv_set", [b"e", b""])


def test_syscaller_repeat_until_cancelled(wasm: dict[str, bytes]) -> None:
    def count(host: FakeHost, args: list[bytes]) -> None:
        if len(host.calls) == 3000:
            host.cancel.cancel()

    host = FakeHost({"astrid_log": count})
    plugin = host.plugin(wasm["syscaller"])
    script = encode_script([("astrid_log", [b"debug", b"tick"])], repeat=True)
    with pytest.raises(extism.Error):
        plugin.call("run_script", script)
    # Cancellation lands asynchronously: a few more iterations may run (and those may see empty
    # arguments: once cancelled, the host can no longer read the kernel's memory).
    assert 3000 <= len(host.calls) < 100_000
    assert all(call == ("astrid_log", [b"debug", b"tick"]) for call in host.calls[:3000])
    assert not host.errors


def test_syscaller_repeat_keeps_memory_flat(wasm: dict[str, bytes]) -> None:
    # 1 MiB per iteration, 150 iterations, 64 MiB of memory: only works because the capsule
    # resets the Extism kernel memory after each iteration.
    value = b"m" * (1 << 20)
    good = 0

    def count(host: FakeHost, args: list[bytes]) -> None:
        nonlocal good
        if len(host.calls) <= 150:
            good += args == [b"k", value]
        if len(host.calls) == 150:
            host.cancel.cancel()

    host = FakeHost({"astrid_kv_set": count})
    host.keep_args = False
    plugin = host.plugin(wasm["syscaller"], max_pages=1024)
    script = encode_script([("astrid_kv_set", [b"k", value])], repeat=True)
    with pytest.raises(extism.Error):
        plugin.call("run_script", script)
    assert good == 150
    assert not host.errors


def test_syscaller_spin_hits_the_timeout(wasm: dict[str, bytes]) -> None:
    host = FakeHost()
    plugin = host.plugin(wasm["syscaller"], timeout_ms=300)
    started = time.monotonic()
    with pytest.raises(extism.Error):
        plugin.call("run_script", encode_script([("astrid_signal_ready", [])], spin=True))
    assert time.monotonic() - started < 5
    assert host.names() == ["astrid_signal_ready"]


# ---- hello-tool ----------------------------------------------------------------------------


def test_hello_tool(wasm: dict[str, bytes]) -> None:
    host = FakeHost()
    plugin = host.plugin(wasm["hello-tool"])

    def call(tool: str, arguments: dict[str, Any]) -> Any:
        return json.loads(plugin.call("astrid_tool_call", tool_input(tool, arguments)))

    assert plugin.call("astrid_tool_call", tool_input("greet", {"name": "Ada"})) == (
        b'{"content":"Hello, Ada!","is_error":false}'
    )
    assert call("greet", {"name": 'Ada "\\" L\u00e9 \U0001f600'}) == {
        "content": 'Hello, Ada "\\" L\u00e9 \U0001f600!',
        "is_error": False,
    }
    assert call("remember", {"value": "blue", "key": "colour"}) == {
        "content": "remembered colour",
        "is_error": False,
    }
    assert host.kv == {b"colour": b"blue"}
    assert call("recall", {"key": "colour"})["content"] == "blue"
    assert call("recall", {"key": "nothing"})["content"] == ""
    assert call("now", {})["content"] == "1700000000123"
    with pytest.raises(extism.Error, match="Unknown tool: frobnicate"):
        plugin.call("astrid_tool_call", tool_input("frobnicate", {}))
    assert host.names() == [
        "astrid_kv_set",
        "astrid_kv_get",
        "astrid_kv_get",
        "astrid_clock_ms",
    ]
    assert not host.errors


# ---- counter -------------------------------------------------------------------------------


def test_counter_run_loop(wasm: dict[str, bytes]) -> None:
    def kv_get(host: FakeHost, args: list[bytes]) -> bytes:
        if host.names().count("astrid_log") == 1:  # second iteration: stop the loop
            host.cancel.cancel()
        return host.kv.get(args[0], b"")

    host = FakeHost({"astrid_kv_get": kv_get})
    host.kv[b"count"] = b"41"
    plugin = host.plugin(wasm["counter"])
    started = time.monotonic()
    with pytest.raises(extism.Error):
        plugin.call("run", b"")
    elapsed = time.monotonic() - started

    # Extism cancellation lands asynchronously (a timer thread bumps the epoch), so the loop may
    # get a few calls further into its second iteration.
    assert host.calls[:7] == [
        ("astrid_kv_get", [b"started"]),
        ("astrid_kv_set", [b"started", b"1"]),
        ("astrid_signal_ready", []),
        ("astrid_kv_get", [b"count"]),
        ("astrid_kv_set", [b"count", b"42"]),
        ("astrid_log", [b"info", b"count is now 42"]),
        ("astrid_kv_get", [b"count"]),
    ]
    # (Calls after the cancel may see empty arguments: the host can no longer read the kernel.)
    assert host.names()[7:] in ([], ["astrid_kv_set"], ["astrid_kv_set", "astrid_log"])
    assert host.kv[b"started"] == b"1"
    # The second iteration starts only after astrid_sleep_ms(1000): WASI sleep really blocks.
    assert 0.95 <= elapsed < 10
    assert not host.errors
