"""supervisord's restart latency for a trivial program (area 8).

supervisord comes from PyPI's ``supervisor`` package, whose import name clashes with this
project's ``supervisor`` package, so it lives in its own virtual environment,
``bench/.venv-supervisord``, created (and then reused) by the benchmark.

The program is ``python -c`` that prints ``READY <time.time()> <pid>`` and sleeps. After it has run
long enough to count as started (``startsecs``), it is killed with SIGKILL; the figure is the time
from the kill to the moment the replacement printed READY (its own timestamp, so supervisord's
output capture is not counted against it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, alive, descendants, kill_tree, median, percentile, progress

VENV = BENCH_DIR / ".venv-supervisord"
#: seconds a program must run before supervisord considers it started (its default is 1).
START_SECS = 1

_PROGRAM = "import os, time; print('READY', time.time(), os.getpid(), flush=True); time.sleep(1e9)"


def ensure_venv() -> Path:
    """``bench/.venv-supervisord/bin/supervisord``, installing it on first use."""
    supervisord = VENV / "bin" / "supervisord"
    if supervisord.exists():
        return supervisord
    progress("supervisord: creating bench/.venv-supervisord and installing supervisor from PyPI")
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, env=_clean_env()
    )
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "supervisor"], check=True, env=_clean_env()
    )
    return supervisord


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: this project's ``supervisor`` package must not shadow supervisord's."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def version() -> str | None:
    done = subprocess.run(
        [str(VENV / "bin" / "supervisord"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
    )
    return done.stdout.strip() or None


def _ready_lines(path: Path) -> list[tuple[float, int]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "READY":
            found.append((float(parts[1]), int(parts[2])))
    return found


def _wait_ready(path: Path, known: int, timeout: float) -> tuple[float, int, float]:
    """Wait for READY line number ``known + 1``; ``(printed at, pid, seen at)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _ready_lines(path)
        if len(lines) > known:
            printed, pid = lines[known]
            return printed, pid, time.time()
        time.sleep(0.001)
    raise RuntimeError(f"supervisord: no READY line {known + 1} within {timeout} s")


def measure(iterations: int) -> dict[str, Any]:
    supervisord = ensure_venv()
    base = Path(tempfile.mkdtemp(prefix="absd"))
    out = base / "trivial.out"
    command = f'{sys.executable} -u -c "{_PROGRAM}"'
    (base / "supervisord.conf").write_text(
        "[supervisord]\n"
        "nodaemon=true\n"
        f"logfile={base / 'supervisord.log'}\n"
        f"pidfile={base / 'supervisord.pid'}\n"
        f"childlogdir={base}\n"
        "\n"
        "[program:trivial]\n"
        f"command={command}\n"
        "autostart=true\n"
        "autorestart=true\n"
        f"startsecs={START_SECS}\n"
        "startretries=100\n"
        f"stdout_logfile={out}\n"
        "stdout_logfile_maxbytes=0\n"
        "redirect_stderr=true\n"
    )
    progress(f"supervisord: {iterations} kill -9 restarts of a trivial program")
    process = subprocess.Popen(
        [str(supervisord), "-n", "-c", str(base / "supervisord.conf")],
        stdout=(base / "supervisord.stdout").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=base,
        env=_clean_env(),
        start_new_session=True,
    )
    seen = []
    samples: list[dict[str, float]] = []
    try:
        printed, pid, _ = _wait_ready(out, 0, 30)
        for i in range(iterations):
            # Let it count as started, or supervisord would treat the exit as a failed start.
            time.sleep(max(0.0, printed + START_SECS + 0.3 - time.time()))
            seen.extend(descendants(process.pid))
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            printed, pid, seen_at = _wait_ready(out, i + 1, 30)
            samples.append(
                {
                    "kill_to_ready_ms": (printed - t_kill) * 1000,
                    "kill_to_ready_seen_ms": (seen_at - t_kill) * 1000,
                }
            )
        seen.extend(descendants(process.pid))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait()
        left = alive(seen)
        for proc in left:
            with contextlib.suppress(Exception):
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    values = [s["kill_to_ready_ms"] for s in samples]
    return {
        "version": version(),
        "kill_to_ready_ms": {"p50": median(values), "p90": percentile(values, 90)},
        "samples": samples,
        "leftovers": len(left),
    }
