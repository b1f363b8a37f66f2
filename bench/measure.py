"""Measurements taken on a running :class:`bench.tree.Tree`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil

from bench.baselines import Driver, parse_latency_output
from bench.common import OPS, SIZES, VENV_BIN, median, percentile, progress, summary_us
from bench.tree import Client, Tree, uptime

#: The broker limits publishing to 10 MiB per capsule per one-second window (capsule_ipc.py);
#: the benchmark stays well under it.
_PUBLISH_BYTES_PER_S = 4 * 2**20


class Pacer:
    """Keeps one capsule's ipc_publish bytes under the broker's limit: at most
    :data:`_PUBLISH_BYTES_PER_S` bytes in invocations started within any 1.2 s (an invocation
    lasts well under 0.2 s, so no one-second window of the broker sees more than that)."""

    def __init__(self) -> None:
        self._sent: list[tuple[float, int]] = []

    def before(self, nbytes: int) -> None:
        while True:
            now = time.monotonic()
            self._sent = [(t, n) for t, n in self._sent if now - t < 1.2]
            if not self._sent or sum(n for _, n in self._sent) + nbytes <= _PUBLISH_BYTES_PER_S:
                self._sent.append((now, nbytes))
                return
            time.sleep(max(0.001, self._sent[0][0] + 1.2 - now))


def latency_plan(size: int, quick: bool) -> tuple[int, int]:
    """(rounds, calls per round) of one latency cell."""
    if size >= 65536:
        return (4, 20) if quick else (12, 40)
    return (6, 50) if quick else (20, 100)


def _pool(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    samples = [s for chunk in chunks for s in chunk["samples"]]
    return summary_us(samples, sum(c["loop_ns"] for c in chunks), len(samples))


def latency_cell(
    client: Client,
    capsule: str,
    op_name: str,
    size: int,
    *,
    driver: Driver,
    plan: tuple[int, int],
    in_process: bool = True,
    pacer: Pacer | None = None,
) -> dict[str, Any]:
    """Per-call times of ``op_name`` with ``size``-byte payloads, round-robin: a chunk of bare
    DEALER/ROUTER round trips, a chunk of in-process Extism host calls, a forwarded invocation
    (timed inside the guest), and again. Returns the three pooled summaries."""
    rounds, calls = plan
    op = OPS[op_name]
    publish = op_name == "ipc_publish"
    if publish and pacer is not None:
        pacer.before(20 * size)
    client.tool(capsule, [op, size, 20, 0, 0])  # warm-up
    chunks: dict[str, list[dict[str, Any]]] = {"astrid": [], "bare": [], "in_process": []}
    for _ in range(rounds):
        if op_name != "none":
            chunks["bare"].append(driver.request("zmq", op=op_name, size=size, n=calls))
        if in_process:
            chunks["in_process"].append(driver.request("extism", op=op_name, size=size, n=calls))
        if publish and pacer is not None:
            pacer.before(calls * size)
        loop_ns, per_call = parse_latency_output(client.tool(capsule, [op, size, calls, 0, 0]))
        chunks["astrid"].append({"loop_ns": loop_ns, "samples": per_call})
    return {name: _pool(found) for name, found in chunks.items() if found}


def forwarded_cells(
    tree: Tree, quick: bool, driver: Driver, attempt: Callable[[str, Callable[[], Any]], Any]
) -> dict[str, Any]:
    """Area 1: every op and size through the real broker and worker (capsule ``b000``).
    ``attempt`` runs one cell and records its failure without stopping the others."""
    client = tree.client()
    capsule = tree.names[0]
    pacer = Pacer()
    results: dict[str, Any] = {}
    for op_name in ("kv_set", "kv_get", "ipc_publish", "none"):
        for size_name, size in SIZES.items():
            if op_name == "none" and size != 16:
                continue
            progress(f"host calls: {op_name} {size_name}")
            results[f"{op_name} {size_name}"] = attempt(
                f"host calls {op_name} {size_name}",
                partial(
                    latency_cell,
                    client,
                    capsule,
                    op_name,
                    size,
                    driver=driver,
                    plan=latency_plan(size, quick),
                    pacer=pacer,
                ),
            )
    return results


def kv_get_16(tree: Tree, quick: bool, driver: Driver) -> dict[str, Any]:
    """kv_get 16 B on one capsule while the others idle, against the bare round trip (area 7)."""
    client = tree.client()
    capsule = tree.names[0]
    client.tool(capsule, [OPS["kv_set"], 16, 1, 0, 0])
    return latency_cell(
        client,
        capsule,
        "kv_get",
        16,
        driver=driver,
        plan=(6, 100) if quick else (16, 125),
        in_process=False,
    )


def throughput(
    tree: Tree, capsules: list[str], op_name: str, size: int, duration: float
) -> dict[str, Any]:
    """Every capsule in ``capsules`` calls ``op_name`` back to back; the calls that completed
    inside a common window of ``duration`` seconds (after a lead-in that lets every invocation
    arrive) are counted, in the guests, on CLOCK_REALTIME."""
    op = OPS[op_name]
    clients = [tree.client() for _ in capsules]
    if op_name == "kv_get":
        for client, capsule in zip(clients, capsules, strict=True):
            client.tool(capsule, [OPS["kv_set"], size, 1, 0, 0])
    lead_in = 0.5 + 0.02 * len(capsules)
    t_start = time.time_ns() + int(lead_in * 1e9)
    t_end = t_start + int(duration * 1e9)
    outputs: dict[str, str] = {}
    errors: list[str] = []

    def run(client: Client, capsule: str) -> None:
        try:
            outputs[capsule] = client.tool(capsule, [op, size, 0, t_start, t_end], timeout=60)
        except Exception as exc:
            errors.append(f"{capsule}: {exc}")

    threads = [
        threading.Thread(target=run, args=(client, capsule), daemon=True)
        for client, capsule in zip(clients, capsules, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    counted = []
    late = 0
    for text in outputs.values():
        numbers = [int(x) for x in text.split()]
        counted.append(numbers[0])
        if numbers[2] > t_start:
            late += 1
    total = sum(counted)
    return {
        "workers": len(capsules),
        "op": op_name,
        "size": size,
        "window_s": duration,
        "total_calls_per_s": total / duration,
        "per_worker_calls_per_s_median": median([c / duration for c in counted]),
        "workers_started_late": late,
    }


def throughput_runs(
    tree: Tree, capsules: list[str], op_name: str, size: int, *, duration: float, runs: int
) -> dict[str, Any]:
    """:func:`throughput` ``runs`` times; the run with the median total, and all of them."""
    done = [throughput(tree, capsules, op_name, size, duration) for _ in range(runs)]
    ordered = sorted(done, key=lambda r: float(r["total_calls_per_s"]))
    return {
        **ordered[len(ordered) // 2],
        "runs": len(done),
        "all_totals": [r["total_calls_per_s"] for r in done],
    }


def restarts(
    tree: Tree, victims: list[str], fork_driver: Driver, stable_after: float = 10.5
) -> dict[str, Any]:
    """Area 4: SIGKILL each victim once (after it has been up ``stable_after`` s, so the restart
    policy restarts it at once) and read the supervisor's log for the replacement's READY.
    Each kill alternates with a bare fork start and a bare kill/restart of the fork driver."""
    samples: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    kill_to_ready: list[float] = []
    fork_to_ready: list[float] = []
    for name in victims:
        status = tree.status()
        assert status is not None
        entry = next(c for c in status["capsules"] if c["name"] == name)
        wait = stable_after - uptime(entry)
        if wait > 0:
            progress(f"restart: waiting {wait:.1f} s for {name} to be up {stable_after} s")
            time.sleep(wait)
        old_pid = int(entry["pid"])
        bare.append({**fork_driver.request("start"), **fork_driver.request("restart")})
        offset = tree.log_size()
        t_kill = time.time()
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        found = None
        while found is None and time.monotonic() < deadline:
            time.sleep(0.005)
            for when, capsule, pid, fork_ms in tree.ready_lines(offset):
                if capsule == name and pid != old_pid:
                    found = (when, pid, fork_ms)
        if found is None:
            raise RuntimeError(f"{name}: no replacement READY within 10 s")
        exits = [e for e in tree.exit_lines(offset) if e[1] == name]
        kill_to_ready.append((found[0] - t_kill) * 1000)
        fork_to_ready.append(found[2])
        samples.append(
            {
                "capsule": name,
                "kill_to_ready_ms": kill_to_ready[-1],
                "fork_to_ready_ms": fork_to_ready[-1],
                "kill_to_exit_logged_ms": (exits[0][0] - t_kill) * 1000 if exits else None,
                "restart_delay_s": exits[0][3] if exits else None,
            }
        )
        time.sleep(0.1)
    tree.snapshot()
    return {
        "kill_to_ready_ms": {
            "p50": median(kill_to_ready),
            "p90": percentile(kill_to_ready, 90),
        },
        "start_ms": {"p50": median(fork_to_ready), "p90": percentile(fork_to_ready, 90)},
        "samples": samples,
        "bare_samples": bare,
    }


def first_starts(tree: Tree) -> list[float]:
    """fork→READY ms of the first start of every worker (from the supervisor's log)."""
    return [ms for _, name, _, ms in tree.ready_lines() if name != "broker"]


def pss(tree: Tree) -> dict[str, Any]:
    """Area 5: PSS of every worker (and the supervisor's and broker's RSS), in MiB."""
    values = []
    for pid in tree.worker_pids().values():
        try:
            values.append(psutil.Process(pid).memory_full_info().pss / 2**20)
        except psutil.Error:
            continue
    result: dict[str, Any] = {
        "workers": len(values),
        "mean": sum(values) / len(values) if values else None,
        "median": median(values),
        "max": max(values) if values else None,
    }
    for role in ("supervisor", "broker"):
        role_pid = tree.pid_of(role)
        try:
            rss = psutil.Process(role_pid).memory_info().rss if role_pid else None
        except psutil.Error:
            rss = None
        result[f"{role}_rss"] = None if rss is None else rss / 2**20
    return result


_BARE_PS = """
import json, sys, psutil
status = json.load(open(sys.argv[1]))
for entry in status["capsules"]:
    p = psutil.Process(entry["pid"])
    with p.oneshot():
        print(entry["name"], p.pid, p.status(), p.memory_info().rss, sum(p.cpu_times()[:2]))
"""


def ps_time(tree: Tree, runs: int) -> dict[str, Any]:
    """Area 6: ``astrid ps`` end to end (process start to exit), and a bare baseline: a Python
    process that reads the same status file and asks psutil about every worker."""

    def timed(command: list[str]) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, check=False)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{command[:2]} failed: {done.stderr.decode()[-500:]}")
        return elapsed

    astrid = str(VENV_BIN / "astrid")
    home = str(tree.home)
    timed([astrid, "ps", "--home", home])  # warm the page cache
    table = [timed([astrid, "ps", "--home", home]) for _ in range(runs)]
    as_json = [timed([astrid, "ps", "--json", "--home", home]) for _ in range(runs)]
    bare = [timed([sys.executable, "-c", _BARE_PS, str(tree.status_path)]) for _ in range(runs)]
    return {
        "astrid_ps_s": median(table),
        "astrid_ps_json_s": median(as_json),
        "bare_psutil_s": median(bare),
        "runs": runs,
    }
