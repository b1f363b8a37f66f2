"""``make bench``: run every benchmark, print one Markdown table per area, write the results.

    python -m bench.run [--quick] [--scales 1,10,100,200,500] [--skip-supervisord]

Progress lines go to stderr, the tables to stdout; ``bench/results/latest.json`` gets every
figure with the date and the machine, ``bench/results/latest.md`` the tables. See
bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import psutil

from bench import measure, supervisord
from bench.baselines import Driver
from bench.common import (
    BENCH_WASM,
    RESULTS_DIR,
    SIZES,
    fmt,
    fmt_ratio,
    machine_info,
    markdown_table,
    median,
    met,
    own_descendants,
    percentile,
    progress,
    ratio,
)
from bench.tree import Tree

T = TypeVar("T")

#: DESIGN.md §9.
TARGETS = {
    "hostcall": 1.3,  # forwarded kv_get 16 B p50 ≤ 1.3 x bare DEALER/ROUTER round trip
    "publish": 20_000.0,  # ipc_publish msgs/s, one worker
    "start_ms": 20.0,
    "restart_ms": 30.0,
    "pss_mib": 8.0,
    "ps_s": 0.5,
}


class Run:
    def __init__(self, quick: bool, scales: list[int], skip_supervisord: bool) -> None:
        self.quick = quick
        self.scales = scales
        self.skip_supervisord = skip_supervisord
        self.errors: list[str] = []
        self.leftovers: list[str] = []
        self.results: dict[str, Any] = {"trees": {}}
        self.latency: Driver | None = None
        self.forks: Driver | None = None

    def attempt(self, what: str, action: Callable[[], T]) -> T | None:
        """Run one measurement; a failure is recorded and reported, and the run goes on."""
        try:
            return action()
        except Exception as exc:
            progress(f"FAILED: {what}: {exc}")
            traceback.print_exc(file=sys.stderr)
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return None

    # ----------------------------------------------------------------------------------------

    def supervisord(self) -> None:
        if self.skip_supervisord:
            return
        self.results["supervisord"] = self.attempt(
            "supervisord", lambda: supervisord.measure(5 if self.quick else 10)
        )
        if self.results["supervisord"]:
            self.leftovers += ["supervisord child"] * self.results["supervisord"]["leftovers"]

    def tree(self, n: int) -> None:
        latency, forks = self.latency, self.forks
        assert latency is not None and forks is not None
        entry: dict[str, Any] = {}
        self.results["trees"][str(n)] = entry
        tree = Tree(n)
        quick = self.quick
        duration = 1.5 if quick else 2.0
        runs = 1 if quick else 3
        entry["load_avg_before"] = os.getloadavg()
        try:
            tree.start()
            entry["start_all_ready_s"] = tree.start_seconds
            entry["first_start_ms"] = measure.first_starts(tree)
            if n == 10:
                entry["forwarded"] = measure.forwarded_cells(tree, quick, latency, self.attempt)
                progress(f"tree of {n}: ipc_publish throughput")
                time.sleep(1.2)  # a fresh publish-rate window of the broker for b000
                entry["publish"] = [
                    self.attempt(
                        f"ipc_publish throughput x{k}",
                        partial(
                            measure.throughput_runs,
                            tree,
                            tree.names[:k],
                            "ipc_publish",
                            16,
                            duration=duration,
                            runs=runs,
                        ),
                    )
                    for k in (1, 8)
                ]
            if n == 100:
                progress(f"tree of {n}: broker throughput")
                entry["broker_throughput"] = [
                    self.attempt(
                        f"broker throughput x{k}",
                        partial(
                            measure.throughput_runs,
                            tree,
                            tree.names[:k],
                            "kv_get",
                            16,
                            duration=duration,
                            runs=runs,
                        ),
                    )
                    for k in (1, 8, 64)
                ]
            progress(f"tree of {n}: kv_get 16 B latency")
            entry["kv_get_16"] = self.attempt(
                f"kv_get 16 B with {n}", lambda: measure.kv_get_16(tree, quick, latency)
            )
            progress(f"tree of {n}: PSS")
            entry["pss"] = self.attempt(f"PSS with {n}", lambda: measure.pss(tree))
            progress(f"tree of {n}: astrid ps")
            runs = 5 if n == 200 and not quick else 3
            entry["ps"] = self.attempt(f"astrid ps with {n}", lambda: measure.ps_time(tree, runs))
            if n in (10, 100):
                victims = tree.names[: min(n, 5 if quick else 10)]
                progress(f"tree of {n}: kill -9 and restart of {len(victims)} workers")
                entry["restarts"] = self.attempt(
                    f"restarts with {n}", lambda: measure.restarts(tree, victims, forks)
                )
        except Exception as exc:
            progress(f"FAILED: tree of {n}: {exc}")
            traceback.print_exc(file=sys.stderr)
            self.errors.append(f"tree of {n}: {type(exc).__name__}: {exc}")
        finally:
            entry["load_avg_after"] = os.getloadavg()
            tree.__exit__(None, None, None)
            self.leftovers += tree.leftovers
            entry["leftovers"] = tree.leftovers

    # ----------------------------------------------------------------------------------------

    def execute(self) -> None:
        started = time.monotonic()
        self.results["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.results["machine"] = machine_info()
        self.results["load_average_at_start"] = os.getloadavg()
        self.results["quick"] = self.quick
        self.results["bench_capsule_bytes"] = BENCH_WASM.stat().st_size
        try:
            self.supervisord()
            progress("starting the baseline drivers")
            self.latency = Driver("latency")
            self.forks = Driver("fork")
            for n in self.scales:
                self.tree(n)
            forks = self.forks
            self.results["baseline_fork_pss"] = self.attempt(
                "bare fork PSS", lambda: forks.request("pss")
            )
        finally:
            for driver in (self.latency, self.forks):
                if driver is not None:
                    driver.close()
            left = own_descendants()
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    self.leftovers.append(f"{proc.pid} {proc.name()}")
                    proc.kill()
        if self.results.get("supervisord"):
            self.results["machine"]["packages"]["supervisor (supervisord)"] = self.results[
                "supervisord"
            ]["version"]
        self.results["load_average_at_end"] = os.getloadavg()
        self.results["duration_s"] = time.monotonic() - started
        self.results["errors"] = self.errors
        self.results["leftover_processes"] = self.leftovers


# --------------------------------------------------------------------------------------------
# Tables


def _get(data: Any, *path: Any) -> Any:
    for key in path:
        if data is None:
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _pair(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return f"{fmt(cell['p50_us'])} / {fmt(cell['p99_us'])}"


def _load(entry: dict[str, Any]) -> str:
    before, after = entry.get("load_avg_before"), entry.get("load_avg_after")
    if not before or not after:
        return "-"
    return f"{before[0]:.1f} / {after[0]:.1f}"


def _p50_p90(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{fmt(median(values))} ({fmt(percentile(values, 90))})"


class _Tables:
    """The Markdown tables of one run, and the verdict on each DESIGN §9 target."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.trees: dict[str, Any] = results["trees"]
        self.out: list[str] = []
        self.verdicts: list[dict[str, Any]] = []
        self.restart_ms: list[float] = []

    def verdict(self, what: str, target: str, value: str, ok: bool | None) -> bool | None:
        self.verdicts.append({"what": what, "target": target, "value": value, "met": ok})
        return ok

    def table(self, title: str, headers: list[str], rows: list[list[str]], note: str = "") -> None:
        self.out.append(f"### {title}\n")
        self.out.append(markdown_table(headers, rows))
        self.out.append(f"\n{note}\n" if note else "")

    def build(self) -> str:
        self.hostcalls()
        self.publish()
        self.broker()
        self.starts()
        self.memory()
        self.ps()
        self.scaling()
        self.supervisord()
        self.table(
            "Targets (DESIGN.md §9)",
            ["target", "required", "measured", "met"],
            [[v["what"], v["target"], v["value"], met(v["met"])] for v in self.verdicts],
        )
        return "\n".join(self.out)

    # ----------------------------------------------------------------------------------------

    def hostcalls(self) -> None:
        forwarded = _get(self.trees, "10", "forwarded")
        rows = []
        for op in ("kv_get", "kv_set", "ipc_publish"):
            for size_name in SIZES:
                cell = _get(forwarded, f"{op} {size_name}")
                ours, bare, local = (_get(cell, k) for k in ("astrid", "bare", "in_process"))
                r_bare = ratio(_get(ours, "p50_us"), _get(bare, "p50_us"))
                r_local = ratio(_get(ours, "p50_us"), _get(local, "p50_us"))
                target, ok = "-", None
                if (op, size_name) == ("kv_get", "16 B"):
                    target = f"p50 ≤ {TARGETS['hostcall']}x bare"
                    ok = self.verdict(
                        "forwarded kv_get 16 B, p50 ÷ bare DEALER/ROUTER round trip p50",
                        f"≤ {TARGETS['hostcall']}",
                        fmt_ratio(r_bare),
                        None if r_bare is None else r_bare <= TARGETS["hostcall"],
                    )
                rows.append(
                    [
                        op,
                        size_name,
                        target,
                        _pair(bare),
                        _pair(local),
                        _pair(ours),
                        fmt(_get(ours, "calls_per_s")),
                        fmt_ratio(r_bare),
                        fmt_ratio(r_local),
                        met(ok),
                    ]
                )
        timing = _get(forwarded, "none 16 B", "astrid", "p50_us")
        self.table(
            "1. Forwarded host call (capsule 1 of a tree of 10, real broker and worker)",
            [
                "call",
                "payload",
                "target",
                "baseline: bare DEALER/ROUTER p50 / p99 µs",
                "baseline: in-process Extism p50 / p99 µs",
                "astrid p50 / p99 µs",
                "astrid calls/s",
                "astrid ÷ bare (p50)",
                "astrid ÷ in-process (p50)",
                "met",
            ],
            rows,
            "The three variants were measured round-robin in chunks. astrid and in-process: "
            "per-call times taken inside the guest (WASI monotonic clock around each call; the "
            f"timing itself costs {fmt(timing, 2)} µs); bare: perf_counter_ns around each round "
            "trip. calls/s = calls ÷ the guest's loop time (one worker, sequential calls).",
        )

    def _bare_rate(self, key: str) -> float | None:
        value = _get(self.trees, "10", "forwarded", key, "bare", "calls_per_s")
        return None if value is None else float(value)

    def publish(self) -> None:
        bare_rate = self._bare_rate("ipc_publish 16 B")
        rows = []
        one = [i for i in _get(self.trees, "10", "publish") or [] if i and i["workers"] == 1]
        if not one:
            self.verdict(
                "ipc_publish throughput, one worker",
                f"≥ {TARGETS['publish']:,.0f} msgs/s",
                "not measured",
                None,
            )
        for item in _get(self.trees, "10", "publish") or []:
            if not item:
                continue
            k, value = item["workers"], item["total_calls_per_s"]
            target, ok = "-", None
            if k == 1:
                target = f"≥ {TARGETS['publish']:,.0f} msgs/s"
                ok = self.verdict(
                    "ipc_publish throughput, one worker",
                    target,
                    f"{value:,.0f} msgs/s",
                    value >= TARGETS["publish"],
                )
            rows.append(
                [
                    str(k),
                    target,
                    fmt(bare_rate),
                    fmt(value),
                    fmt(item["per_worker_calls_per_s_median"]),
                    fmt_ratio(ratio(value, bare_rate)),
                    met(ok),
                ]
            )
        self.table(
            "2. ipc_publish throughput (16 B payloads, tree of 10)",
            [
                "publishing workers",
                "target",
                "baseline: bare DEALER/ROUTER sync round trips/s",
                "astrid msgs/s (total)",
                "per worker (median)",
                "astrid ÷ baseline",
                "met",
            ],
            rows,
            "Each worker publishes back to back for the whole window; the calls that started "
            "and ended inside the common window are counted in the guests (CLOCK_REALTIME).",
        )

    def broker(self) -> None:
        bare_rate = self._bare_rate("kv_get 16 B")
        rows = [
            [
                str(item["workers"]),
                fmt(bare_rate),
                fmt(item["total_calls_per_s"]),
                fmt(item["per_worker_calls_per_s_median"]),
                fmt_ratio(ratio(item["total_calls_per_s"], bare_rate)),
            ]
            for item in _get(self.trees, "100", "broker_throughput") or []
            if item
        ]
        self.table(
            "3. Broker throughput (kv_get 16 B, busy workers in a tree of 100)",
            [
                "busy workers",
                "baseline: bare DEALER/ROUTER sync round trips/s (one client)",
                "astrid host calls/s (total)",
                "per worker (median)",
                "astrid ÷ baseline",
            ],
            rows,
            "No DESIGN §9 target; for context.",
        )

    def starts(self) -> None:
        start_ms: list[float] = []
        bare_start: list[float] = []
        bare_restart: list[float] = []
        for n in ("10", "100"):
            for sample in _get(self.trees, n, "restarts", "samples") or []:
                self.restart_ms.append(sample["kill_to_ready_ms"])
                start_ms.append(sample["fork_to_ready_ms"])
            for sample in _get(self.trees, n, "restarts", "bare_samples") or []:
                bare_start.append(sample["start_ms"])
                bare_restart.append(sample["kill_to_ready_ms"])
        start_p50 = median(start_ms) if start_ms else None
        restart_p50 = median(self.restart_ms) if self.restart_ms else None
        ok_start = self.verdict(
            "worker start to READY, p50",
            f"≤ {TARGETS['start_ms']:.0f} ms",
            f"{fmt(start_p50)} ms",
            None if start_p50 is None else start_p50 <= TARGETS["start_ms"],
        )
        ok_restart = self.verdict(
            "kill -9 of a worker to its replacement READY, p50",
            f"≤ {TARGETS['restart_ms']:.0f} ms",
            f"{fmt(restart_p50)} ms",
            None if restart_p50 is None else restart_p50 <= TARGETS["restart_ms"],
        )
        rows = [
            [
                f"worker start to READY, fork→READY ({len(start_ms)} starts)",
                f"≤ {TARGETS['start_ms']:.0f} ms",
                _p50_p90(bare_start),
                _p50_p90(start_ms),
                fmt_ratio(ratio(start_p50, median(bare_start) if bare_start else None)),
                met(ok_start),
            ],
            [
                f"kill -9 → replacement READY ({len(self.restart_ms)} kills)",
                f"≤ {TARGETS['restart_ms']:.0f} ms",
                _p50_p90(bare_restart),
                _p50_p90(self.restart_ms),
                fmt_ratio(ratio(restart_p50, median(bare_restart) if bare_restart else None)),
                met(ok_restart),
            ],
        ]
        first = _get(self.trees, "1", "first_start_ms")
        if first:
            rows.append(
                [
                    "first start of a newly installed capsule (tree of 1)",
                    "-",
                    _p50_p90(bare_start),
                    _p50_p90(first),
                    fmt_ratio(ratio(median(first), median(bare_start) if bare_start else None)),
                    "-",
                ]
            )
        self.table(
            "4. Worker start and restart (small capsule, warm compile cache), ms p50 (p90)",
            ["what", "target", "baseline: bare os.fork + plugin load", "astrid", "ratio", "met"],
            rows,
            "astrid: the supervisor's log. `READY (pid N) in X ms` is its fork→READY time; "
            "kill→READY is the log time of that line minus the time of the kill (the log has "
            "millisecond resolution). Workers were killed one at a time after 10 s of uptime, so "
            "the restart policy restarts them at once. Each kill alternated with a bare start and "
            "a bare kill/restart of the baseline driver.",
        )

    def memory(self) -> None:
        bare = _get(self.results, "baseline_fork_pss", "pss_mib") or []
        base = sum(bare) / len(bare) if bare else None
        rows = []
        for n, entry in self.trees.items():
            value = _get(entry, "pss", "mean")
            ok = None if value is None else value <= TARGETS["pss_mib"]
            if n == "100":
                self.verdict(
                    "idle worker PSS (mean, 100 workers running)",
                    f"≤ {TARGETS['pss_mib']:.0f} MiB",
                    f"{fmt(value, 2)} MiB",
                    ok,
                )
            rows.append(
                [
                    n,
                    f"≤ {TARGETS['pss_mib']:.0f} MiB",
                    fmt(base, 2),
                    fmt(value, 2),
                    fmt(_get(entry, "pss", "max"), 2),
                    fmt_ratio(ratio(value, base)),
                    met(ok),
                ]
            )
        self.table(
            "5. Idle worker memory (PSS, MiB)",
            [
                "workers running",
                "target",
                f"baseline: bare fork + plugin load, mean of {len(bare)} idle children",
                "astrid mean",
                "astrid max",
                "ratio",
                "met",
            ],
            rows,
        )

    def ps(self) -> None:
        ps200 = _get(self.trees, "200", "ps")
        value, bare = _get(ps200, "astrid_ps_s"), _get(ps200, "bare_psutil_s")
        ok = self.verdict(
            "`astrid ps` with 200 capsules",
            f"≤ {TARGETS['ps_s']} s",
            f"{fmt(value, 3)} s",
            None if value is None else value <= TARGETS["ps_s"],
        )
        as_json = _get(ps200, "astrid_ps_json_s")
        rows = [
            [
                "`astrid ps`",
                f"≤ {TARGETS['ps_s']} s",
                fmt(bare, 3),
                fmt(value, 3),
                fmt_ratio(ratio(value, bare)),
                met(ok),
            ],
            [
                "`astrid ps --json`",
                "-",
                fmt(bare, 3),
                fmt(as_json, 3),
                fmt_ratio(ratio(as_json, bare)),
                "-",
            ],
        ]
        self.table(
            "6. `astrid ps` with 200 real capsules (s, median, process start to exit)",
            [
                "command",
                "target",
                "baseline: python + psutil over the same status file",
                "astrid",
                "ratio",
                "met",
            ],
            rows,
        )

    def scaling(self) -> None:
        rows = []
        for n, entry in self.trees.items():
            ours, bare = _get(entry, "kv_get_16", "astrid"), _get(entry, "kv_get_16", "bare")
            rows.append(
                [
                    n,
                    fmt(entry.get("start_all_ready_s")),
                    _pair(bare),
                    _pair(ours),
                    fmt_ratio(ratio(_get(ours, "p50_us"), _get(bare, "p50_us"))),
                    fmt(_get(entry, "pss", "mean"), 2),
                    fmt(_get(entry, "ps", "astrid_ps_s"), 3),
                    fmt(_get(entry, "pss", "supervisor_rss")),
                    fmt(_get(entry, "pss", "broker_rss")),
                    _load(entry),
                ]
            )
        self.table(
            "7. Scaling with the number of capsules (one worker busy, the others idle)",
            [
                "capsules",
                "tree start to all READY (s)",
                "bare round trip p50 / p99 µs",
                "kv_get 16 B p50 / p99 µs",
                "p50 ÷ bare",
                "worker PSS mean MiB",
                "`astrid ps` s",
                "supervisor RSS MiB",
                "broker RSS MiB",
                "load avg (1 min) before / after",
            ],
            rows,
            "The load average column shows how much other work shared the 2 cores while each tree "
            "was measured (the trees of 10 and 100 also hold areas 1-4).",
        )

    def supervisord(self) -> None:
        sd = self.results.get("supervisord")
        if not sd:
            return
        theirs = [s["kill_to_ready_ms"] for s in sd["samples"]]
        ours = self.restart_ms
        rows = [
            [
                "kill -9 → replacement READY, ms p50 (p90)",
                _p50_p90(theirs),
                _p50_p90(ours),
                fmt_ratio(
                    ratio(median(ours) if ours else None, median(theirs) if theirs else None)
                ),
            ]
        ]
        self.table(
            f"8. Restart latency against supervisord {sd.get('version') or ''}",
            [
                "what",
                "baseline: supervisord, trivial `python -c` program",
                "astrid, capsule worker",
                "astrid ÷ supervisord",
            ],
            rows,
            f"supervisord: {len(theirs)} kills; READY time as printed by the program itself.",
        )


def tables(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown tables and the list of targets with their verdicts."""
    builder = _Tables(results)
    text = builder.build()
    return text, builder.verdicts


def header(results: dict[str, Any]) -> str:
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    load = results.get("load_average_at_start"), results.get("load_average_at_end")
    lines = [
        f"Run of {results['date']} ({'quick' if results.get('quick') else 'full'}, "
        f"{results.get('duration_s', 0):.0f} s) on {m['cpu_model']}, {m['cores_logical']} "
        f"logical cores, {m['memory_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}.",
        f"Packages: {packages}.",
        "Load average (1/5/15 min) at start "
        + " / ".join(f"{x:.1f}" for x in load[0] or ())
        + ", at end "
        + " / ".join(f"{x:.1f}" for x in load[1] or ())
        + f" ({results['machine']['cores_logical']} cores: above that, other work competed with"
        + " the benchmark).",
    ]
    if results.get("errors"):
        lines.append("Errors: " + "; ".join(results["errors"]))
    if results.get("leftover_processes"):
        lines.append("LEFTOVER PROCESSES: " + ", ".join(results["leftover_processes"]))
    else:
        lines.append("No process was left behind (checked with psutil).")
    return "\n\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--scales",
        default="1,10,100,200,500",
        help="tree sizes to run (default: 1,10,100,200,500)",
    )
    parser.add_argument("--skip-supervisord", action="store_true")
    args = parser.parse_args()
    scales = [int(x) for x in args.scales.split(",") if x]
    if not BENCH_WASM.exists():
        print("bench capsule not built: run `make bench`", file=sys.stderr)
        return 2
    run = Run(args.quick, scales, args.skip_supervisord)
    try:
        run.execute()
    finally:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        text, verdicts = tables(run.results) if "machine" in run.results else ("", [])
        run.results["targets"] = verdicts
        (RESULTS_DIR / "latest.json").write_text(json.dumps(run.results, indent=1) + "\n")
    document = header(run.results) + "\n" + text + "\n"
    (RESULTS_DIR / "latest.md").write_text(document)
    print(document)
    progress(f"results: {RESULTS_DIR / 'latest.json'} and latest.md")
    return 1 if run.errors or run.leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
