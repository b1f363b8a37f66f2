"""Shared helpers of the benchmark: paths, progress lines, statistics, tables, machine facts."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import psutil

REPO: Final = Path(__file__).resolve().parent.parent
BENCH_DIR: Final = REPO / "bench"
RESULTS_DIR: Final = BENCH_DIR / "results"
BENCH_CAPSULE_DIR: Final = BENCH_DIR / "capsules" / "benchcap"
BENCH_WASM: Final = BENCH_CAPSULE_DIR / "benchcap.wasm"
VENV_BIN: Final = Path(sys.executable).parent

#: Operations of the bench capsule (bench/capsules/benchcap/benchcap.c).
OPS: Final = {"kv_get": 0, "kv_set": 1, "ipc_publish": 2, "none": 3}
#: The payload sizes of the host-call cells.
SIZES: Final = {"16 B": 16, "1 KiB": 1024, "64 KiB": 65536}
#: Syscall indices (astrid_core/syscalls.py order) the bare round trip mimics.
SYSCALL_INDEX: Final = {"kv_get": 14, "kv_set": 15, "ipc_publish": 7}
#: The key the capsule uses for a payload size (16 bytes, see make_key in benchcap.c).
IPC_TOPIC: Final = b"bench.load"

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with the time since the run started."""
    print(f"[bench {time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def capsule_key(size: int) -> bytes:
    digits = str(size).encode()
    return b"k" + b"0" * (15 - len(digits)) + digits


def ipc_payload(size: int) -> bytes:
    """A JSON string of exactly ``size`` bytes (the broker requires JSON payloads)."""
    return b'"' + b"x" * (size - 2) + b'"'


# --------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary_us(samples_ns: Sequence[float], loop_ns: float, calls: int) -> dict[str, Any]:
    """p50/p99 in µs of per-call samples and the sequential rate of the loops that made them."""
    return {
        "p50_us": percentile(samples_ns, 50) / 1000,
        "p99_us": percentile(samples_ns, 99) / 1000,
        "mean_us": (sum(samples_ns) / len(samples_ns) / 1000) if samples_ns else math.nan,
        "calls_per_s": calls / (loop_ns / 1e9) if loop_ns > 0 else math.nan,
        "samples": len(samples_ns),
    }


# --------------------------------------------------------------------------------------------
# Formatting


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table: thousands separators, ``-`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    if math.isnan(value) or math.isnan(baseline):
        return None
    return value / baseline


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def met(flag: bool | None) -> str:
    if flag is None:
        return "-"
    return "**yes**" if flag else "**NO**"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Machine and versions


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import zmq  # imported here: the orchestrator never creates a context

    packages = {
        name: _version(name)
        for name in ("astrid", "extism", "extism-sys", "pyzmq", "msgpack", "psutil", "rich")
    }
    packages["libzmq"] = zmq.zmq_version()
    return {
        "cpu_model": _cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": packages,
    }


# --------------------------------------------------------------------------------------------
# Child processes


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (each may lead its own process group)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes that still exist (same pid and create time), zombies excluded."""
    left = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
    return left


def own_descendants() -> list[psutil.Process]:
    """Live descendants of this process (the leak check at the end of the run)."""
    return alive(descendants(os.getpid()))
