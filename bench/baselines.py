"""Baselines measured in the same run as the project's figures, interleaved with them.

Each baseline lives in a long-lived driver process (``python -m bench.baselines serve KIND``)
that takes one JSON command per line on stdin and answers one JSON line on stdout, so the
orchestrator can alternate baseline chunks with the project's own measurements: both see the
same machine noise (spec/perf-baselines.md: "variants were measured round-robin").

* ``latency`` driver:
  * ``zmq``: a bare msgpack DEALER/ROUTER round trip to a server process over ``ipc://``, with
    the frames a worker and the broker exchange for kv_get / kv_set / ipc_publish (request
    ``[seq, op, key, value]``, reply ``[seq, 0, result]``; the server answers from a dict).
    Packing and unpacking on both sides are inside the timed region (``perf_counter_ns`` around
    each round trip).
  * ``extism``: the bench capsule in an in-process Extism plugin whose host functions (bare cffi
    callbacks, the mechanism worker/host.py uses) answer from a dict: the same export, the same
    arguments and the same in-guest timing as the forwarded measurement.
* ``fork`` driver: it imported extism, zmq and msgpack like the supervisor (never a plugin:
  §4b) and ``os.fork``s children that load the bench capsule into a plugin (the manifest the
  worker builds) and report on a pipe. ``start``: fork to the report read by the parent.
  ``restart``: SIGKILL of a child to its replacement's report. ``pss``: PSS of the idle children.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from bench.common import (
    BENCH_WASM,
    IPC_TOPIC,
    OPS,
    REPO,
    SYSCALL_INDEX,
    capsule_key,
    ipc_payload,
    kill_tree,
)

# --------------------------------------------------------------------------------------------
# The bench capsule's tool call


def tool_input(arguments: list[int]) -> bytes:
    """The input the broker hands to ``astrid_tool_call`` for tool ``bench``."""
    encoded = json.dumps(arguments, separators=(",", ":")).encode()
    return json.dumps({"name": "bench", "arguments": list(encoded)}, separators=(",", ":")).encode()


def parse_latency_output(text: str) -> tuple[int, list[int]]:
    """``(loop ns, [per-call ns])`` from the capsule's latency-mode output."""
    numbers = [int(x) for x in text.split()]
    return numbers[0], numbers[1:]


def plugin_manifest(wasm: bytes) -> dict[str, Any]:
    """The manifest the worker builds for a tool capsule (worker/runtime.py)."""
    return {
        "wasm": [{"data": base64.b64encode(wasm).decode()}],
        "memory": {"max_pages": 1024},
        "timeout_ms": 10_000,
    }


# --------------------------------------------------------------------------------------------
# ZeroMQ round trip

_QUIT = -99


def zmq_server(endpoint: str) -> None:
    """ROUTER: answers ``[seq, op, args...]`` from a dict, like a broker without the broker."""
    import msgpack
    import zmq

    store: dict[bytes, bytes] = {}
    context = zmq.Context(io_threads=1)
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    print("ready", flush=True)
    get, put = SYSCALL_INDEX["kv_get"], SYSCALL_INDEX["kv_set"]
    try:
        while True:
            identity, raw = sock.recv_multipart()
            frame = msgpack.unpackb(raw, raw=False)
            seq, op = frame[0], frame[1]
            if op == _QUIT:
                break
            if op == get:
                result = store.get(frame[2], b"")
            else:
                if op == put:
                    store[frame[2]] = frame[3]
                result = b""
            sock.send_multipart((identity, msgpack.packb([seq, 0, result])))
    finally:
        sock.close(0)
        context.term()


class RoundTrip:
    """The client side of the bare round trip (and its server process)."""

    def __init__(self) -> None:
        import zmq

        self._tmp = tempfile.mkdtemp(prefix="abz")
        endpoint = f"ipc://{self._tmp}/rt.ipc"
        self._server = subprocess.Popen(
            [sys.executable, "-m", "bench.baselines", "zmq-server", endpoint],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self._server.stdout is not None
        self._server.stdout.readline()
        self._context = zmq.Context(io_threads=1)
        self._sock = self._context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._seq = 0
        # The stored values kv_get answers with.
        for size in (16, 1024, 65536):
            self.chunk("kv_set", size, 1, warmup=0)

    def chunk(self, op_name: str, size: int, n: int, warmup: int = 20) -> dict[str, Any]:
        import msgpack

        op = SYSCALL_INDEX[op_name]
        if op_name == "kv_get":
            args = [capsule_key(size)]
        elif op_name == "kv_set":
            args = [capsule_key(size), b"v" * size]
        else:
            args = [IPC_TOPIC, ipc_payload(size)]
        sock, packb, unpackb = self._sock, msgpack.packb, msgpack.unpackb
        perf = time.perf_counter_ns
        samples: list[int] = []
        loop_start = perf()
        for i in range(warmup + n):
            if i == warmup:
                loop_start = perf()
            self._seq += 1
            t0 = perf()
            sock.send(packb([self._seq, op, *args]))
            reply = unpackb(sock.recv(), raw=False)
            t1 = perf()
            if reply[0] != self._seq:
                raise RuntimeError("round trip out of order")
            if i >= warmup:
                samples.append(t1 - t0)
        return {"loop_ns": perf() - loop_start, "samples": samples}

    def close(self) -> None:
        import msgpack

        with contextlib.suppress(Exception):
            self._sock.send(msgpack.packb([0, _QUIT]))
        self._sock.close(0)
        self._context.term()
        try:
            self._server.wait(5)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        with contextlib.suppress(OSError):
            os.unlink(f"{self._tmp}/rt.ipc")
        with contextlib.suppress(OSError):
            os.rmdir(self._tmp)


# --------------------------------------------------------------------------------------------
# In-process Extism host call


def host_functions(store: dict[bytes, bytes]) -> tuple[list[Any], list[Any]]:
    """Raw cffi host functions for the three imports of the bench capsule, answering from
    ``store`` and reading and writing guest memory as worker/host.py does. Returns the
    functions and the callbacks (which must stay referenced while the plugin lives)."""
    import extism
    from extism_sys import ffi, lib

    signature = (
        "void(ExtismCurrentPlugin*, const ExtismVal*, ExtismSize, ExtismVal*, ExtismSize, void*)"
    )

    def read(plugin: Any, offset: int) -> bytes:
        if offset == 0:
            return b""
        length = lib.extism_current_plugin_memory_length(plugin, offset)
        base = lib.extism_current_plugin_memory(plugin)
        return ffi.buffer(base + offset, length)[:]  # type: ignore[no-any-return]

    def write(plugin: Any, data: bytes) -> int:
        if not data:
            return 0
        offset = lib.extism_current_plugin_memory_alloc(plugin, len(data))
        base = lib.extism_current_plugin_memory(plugin)
        ffi.memmove(base + offset, data, len(data))
        return int(offset)

    @ffi.callback(signature)  # type: ignore[untyped-decorator]
    def kv_get(plugin: Any, inputs: Any, _n: int, outputs: Any, _m: int, _d: Any) -> None:
        outputs[0].v.i64 = write(plugin, store.get(read(plugin, inputs[0].v.i64), b""))

    @ffi.callback(signature)  # type: ignore[untyped-decorator]
    def kv_set(plugin: Any, inputs: Any, _n: int, _outputs: Any, _m: int, _d: Any) -> None:
        store[read(plugin, inputs[0].v.i64)] = read(plugin, inputs[1].v.i64)

    @ffi.callback(signature)  # type: ignore[untyped-decorator]
    def ipc_publish(plugin: Any, inputs: Any, _n: int, _outputs: Any, _m: int, _d: Any) -> None:
        store[read(plugin, inputs[0].v.i64)] = read(plugin, inputs[1].v.i64)

    i64 = extism.ValType.I64
    module = "extism:host/user"
    functions = [
        extism.Function(module, "astrid_kv_get", [i64], [i64], kv_get),
        extism.Function(module, "astrid_kv_set", [i64, i64], [], kv_set),
        extism.Function(module, "astrid_ipc_publish", [i64, i64], [], ipc_publish),
    ]
    return functions, [kv_get, kv_set, ipc_publish]


class InProcess:
    """The bench capsule in a plugin of this process, host functions answering from a dict."""

    def __init__(self) -> None:
        import extism

        self._store: dict[bytes, bytes] = {}
        functions, self._callbacks = host_functions(self._store)
        manifest = plugin_manifest(BENCH_WASM.read_bytes())
        self._plugin = extism.Plugin(manifest, wasi=True, functions=functions)
        for size in (16, 1024, 65536):
            self.chunk("kv_set", size, 1)

    def chunk(self, op_name: str, size: int, n: int) -> dict[str, Any]:
        out = self._plugin.call("astrid_tool_call", tool_input([OPS[op_name], size, n, 0, 0]))
        loop_ns, samples = parse_latency_output(bytes(out).decode())
        return {"loop_ns": loop_ns, "samples": samples}


# --------------------------------------------------------------------------------------------
# Bare fork + plugin load

_PR_SET_PDEATHSIG = 1


def _cache_config() -> str:
    """A wasmtime disk-cache configuration of the bench's own (warm after the priming child)."""
    import platformdirs

    root = Path(platformdirs.user_cache_dir("astrid-bench")) / "wasmtime"
    (root / "cache").mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(f"[cache]\ndirectory = {json.dumps(str(root / 'cache'))}\n")
    return str(config)


class ForkLoader:
    """Forks children that load the bench capsule into a plugin and idle."""

    def __init__(self) -> None:
        os.environ["EXTISM_CACHE_CONFIG"] = _cache_config()
        # What the supervisor preloads (astrid_core.launch.PRELOAD_MODULES), minus the worker.
        import extism  # noqa: F401
        import msgpack  # noqa: F401
        import zmq  # noqa: F401

        self._wasm = BENCH_WASM.read_bytes()
        self._r, self._w = os.pipe()
        self.children: list[int] = []
        # Prime the compile cache in a child (this process never compiles anything: §4b).
        pid = self._fork(stay=False)
        self._wait_report(60)
        os.waitpid(pid, 0)

    def _fork(self, *, stay: bool) -> int:
        pid = os.fork()
        if pid != 0:
            return pid
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            import extism

            functions, _keep = host_functions({})
            _plugin = extism.Plugin(plugin_manifest(self._wasm), wasi=True, functions=functions)
            os.write(self._w, b"R")
            while stay:
                signal.pause()
        except BaseException:
            os._exit(1)
        os._exit(0)

    def _wait_report(self, timeout: float = 10.0) -> None:
        ready, _, _ = select.select([self._r], [], [], timeout)
        if not ready or os.read(self._r, 1) != b"R":
            raise RuntimeError("the forked loader did not report")

    def start(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.children.append(self._fork(stay=True))
        self._wait_report()
        return {"start_ms": (time.monotonic() - t0) * 1000}

    def restart(self) -> dict[str, Any]:
        if not self.children:
            self.start()
        victim = self.children.pop()
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)
        t1 = time.monotonic()
        self.children.append(self._fork(stay=True))
        self._wait_report()
        t2 = time.monotonic()
        return {"kill_to_ready_ms": (t2 - t0) * 1000, "reaped_to_ready_ms": (t2 - t1) * 1000}

    def pss(self) -> dict[str, Any]:
        import psutil

        values = []
        for pid in self.children:
            with contextlib.suppress(psutil.Error):
                values.append(psutil.Process(pid).memory_full_info().pss / 2**20)
        return {"pss_mib": values}

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        self.children.clear()


# --------------------------------------------------------------------------------------------
# The driver protocol


def serve(kind: str) -> None:
    """Answer JSON commands from stdin, one per line, until ``{"cmd": "quit"}`` or EOF."""
    handlers: dict[str, Any] = {}
    closers: list[Any] = []
    if kind == "latency":
        round_trip = RoundTrip()
        closers.append(round_trip.close)
        in_process = InProcess()
        handlers["zmq"] = lambda c: round_trip.chunk(c["op"], c["size"], c["n"])
        handlers["extism"] = lambda c: in_process.chunk(c["op"], c["size"], c["n"])
    else:
        loader = ForkLoader()
        closers.append(loader.close)
        handlers["start"] = lambda c: loader.start()
        handlers["restart"] = lambda c: loader.restart()
        handlers["pss"] = lambda c: loader.pss()
    out = sys.stdout
    try:
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            try:
                answer = handlers[command["cmd"]](command)
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        for close in closers:
            close()


class Driver:
    """The orchestrator's handle on a ``serve`` process."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.baselines", "serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} baseline driver exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.kind} baseline driver: {answer['error']}")
        return answer

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                assert self._process.stdin is not None
                self._process.stdin.write('{"cmd": "quit"}\n')
                self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                kill_tree(self._process.pid)
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("mode", choices=["serve", "zmq-server"])
    parser.add_argument("arg", help="serve: latency or fork; zmq-server: the endpoint")
    args = parser.parse_args()
    if args.mode == "zmq-server":
        zmq_server(args.arg)
    else:
        serve(args.arg)


if __name__ == "__main__":
    main()
