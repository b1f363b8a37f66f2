"""Load and chaos test: capsules write KV and publish while the tree is killed piece by piece.

A real ``astrid-supervisor up`` runs N copies of the ``chaoser`` test capsule
(``tests/capsules/chaoser``, renamed ``chaoser-00``, ``chaoser-01``, ...). Each copy loops::

    kv_set seq:<n> = n;  publish chaos.<name> {"n": n, "run": r};  kv_set last = n;  n += 1

where ``r`` counts the capsule's runs (KV ``started``) and a run starts at ``n = last + 1``; now
and then it replaces its background host process (``sh -c 'sleep 60 & sleep 60'``). Three
subscribers record what the bus delivers on ``chaos.*``: two JSON-RPC clients of
``sessions/system.sock`` (``bus.subscribe``; one reads at once, one now and then stops reading
for seconds while it publishes a burst of messages on ``chaos.flood`` through ``bus.publish``, so
that its queue overflows and the broker must report ``lagged``), and the real
``astrid sub 'chaos.*'`` command. Meanwhile the driver SIGKILLs random workers and random host
processes (leaders and their children, from ``astrid ps --json``) at Poisson-distributed times
(``kill_rate`` per second), and the broker once per ``broker_every`` seconds at a random moment.
Afterwards it waits until the tree has recovered, stops it with ``astrid-supervisor down`` (with
SIGTERM where that command does not exist) and checks the rules below.

Kills respect the supervisor's restart policy (``supervisor.policy.RestartPolicy``: more than
``max_restarts`` restarts within ``window`` seconds makes a process FATAL): a capsule is only
killed while READY, the broker only while it and every capsule are READY, and no capsule gets
more than ``max_restarts - 3`` kills (its own, plus every broker kill, which restarts all
workers) within ``window + 5`` seconds. A FATAL process is therefore a failure of the runtime.

The rules checked
=================

**Acknowledged KV writes are present.** Host calls are synchronous and a failed one traps the
guest, so the capsule issues a host call only after the broker acknowledged the previous one
(its reply came back). Message ``n`` on the bus therefore proves that ``seq:<n>`` was
acknowledged, and so does ``last = n`` in KV. A run starts at ``last + 1`` with the ``last`` it
read, which some earlier run wrote after ``seq:<last>`` was acknowledged; by induction every
``seq:<m>`` with ``m <= n`` was acknowledged by some run. The bound of a capsule is the larger of
its final ``last`` in ``state.db`` and the highest ``n`` any subscriber saw from it; every
``seq:<m>`` for ``1 <= m <= bound`` must be in ``state.db`` with the value ``m``.

**Each subscriber sees an in-order stream.** A subscriber's *session* is one connection (one
``astrid sub`` process); a broker restart ends every session. Within a session, for two
consecutive messages ``a`` then ``b`` of the same capsule:

* same run: ``b.n > a.n``; ``b.n == a.n + 1`` unless messages were lost (see below);
* ``b.run > a.run`` (the capsule restarted): ``b.n >= a.n``; ``b.n == a.n`` is accepted (the
  old run published ``a`` and died before writing ``last``, so the new run publishes that
  number again); ``b.n > a.n + 1`` means lost messages: a publish the broker executed is
  delivered to every subscription at once, so a worker's death loses nothing by itself;
* ``b.run < a.run`` is a failure.

Lost messages (``b.n - a.n - 1`` numbers skipped) are accepted only if the subscriber was told:
for the JSON-RPC subscribers some ``bus.messages`` envelope after the one that carried ``a`` and
up to the one that carried ``b`` reports ``lagged + dropped > 0`` (a message lost from the
subscription's queue is counted in the next drain, and ``a`` left the queue before it); for
``astrid sub``, which prints its "N message(s) lost" line after the messages of that envelope,
a loss report printed after ``a`` (before or after ``b``, within the session). In every session
the numbers skipped, over all capsules, must not exceed the losses reported. Across sessions of
one subscriber (the first message of a capsule in a session against its last one in the
session before) order is checked as above (``run`` never decreases, ``n`` never decreases, and
increases within a run) and any gap is accepted: the subscriber was disconnected.

**No process of the tree is left after the stop.** Every process seen under the supervisor
(sampled with psutil twice a second: broker, workers, host processes and their children) is
gone (a zombie counts as gone), and no process created since the run began runs in the
workspace (the cwd of every host process), in a process group of the tree, or with
``ASTRID_HOME`` set to the chaos home.

**The supervisor's memory does not grow.** Its RSS after recovery is at most ``rss_slack``
(10 MiB) above the largest RSS sampled during the warm-up (the start and the first quarter of
the chaos, at least 5 s); likewise it holds at most :data:`FD_SLACK` (8) more open files than
during the warm-up (every child has its pipes again by then, so more means a leak).

**The tree recovers.** After the chaos the broker and every capsule are READY again within 60 s
and every capsule publishes again, seen by every subscriber; ``down`` succeeds and the
supervisor exits with 0.

The summary also counts the kills, restarts, unplanned exits (from ``logs/supervisor.log``),
messages, reported losses, and the runs that outlived a broker restart in the same worker (the
same ``run`` after a subscriber reconnected: a worker whose next host call reached the new
broker re-authenticates on ``REAUTH`` and goes on, see ``worker/channel.py``).

``make chaos`` runs ``python -m tests.chaos.chaos`` (5 minutes, 12 capsules);
``tests/chaos/test_chaos.py`` runs a 20-second version with 4 capsules in ``make test``.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from astrid_core import rpc
from astrid_core.dirs import AstridHome
from astrid_core.rpc import Method
from astrid_core.session import (
    MAX_CLIENT_FRAME,
    HandshakeRejected,
    SessionToken,
    client_handshake,
    recv_frame,
    send_frame,
)
from supervisor.policy import RestartPolicy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHAOSER = REPO / "tests" / "capsules" / "chaoser"
TOPIC_PREFIX = "chaos."
PATTERN = "chaos.*"
#: Where the slow subscriber's bursts go (matched by PATTERN, so every subscriber gets them).
FLOOD_TOPIC = "chaos.flood"
MIB = 1024 * 1024

_POLICY = RestartPolicy()
#: Kills a capsule may take (its own plus the broker's) within :data:`BUDGET_WINDOW` seconds.
KILL_BUDGET = max(2, _POLICY.max_restarts - 3)
BUDGET_WINDOW = _POLICY.window + 5.0
#: How long the tree gets to start, and to recover after the chaos.
START_TIMEOUT = 60.0
RECOVERY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
#: Failures listed individually per subscriber (the rest are counted).
MAX_LISTED = 25
#: Open files the supervisor may hold at the end beyond its most during the warm-up.
FD_SLACK = 8


def _log(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------
# The stream rules


@dataclass(slots=True)
class _Seen:
    n: int
    run: int
    mark: int
    session: int


class StreamChecker:
    """Checks one subscriber's messages against the stream rules, online (module docstring).

    ``mark`` numbers what the subscriber received: envelopes for a JSON-RPC subscriber, output
    lines for ``astrid sub`` (``report_after`` mode: a loss is reported after the gap).
    """

    def __init__(self, name: str, *, report_after: bool = False) -> None:
        self.name = name
        self.report_after = report_after
        self.lock = threading.Lock()
        self.session = 0
        self.mark = 0
        self.loss_mark = -1
        self.last: dict[str, _Seen] = {}
        self.max_n: dict[str, int] = {}
        self.per_capsule: Counter[str] = Counter()
        self.session_capsules: set[str] = set()
        self.messages = 0
        self.flood_messages = 0
        self.envelopes = 0
        self.lagged = 0
        self.dropped = 0
        self.reported_lost = 0
        self.session_lost = 0
        self.session_missing = 0
        self.gaps_explained = 0
        self.missing_explained = 0
        self.restart_repeats = 0
        self.run_changes = 0
        self.session_gaps = 0
        self.runs_continued = 0
        self.pending: list[tuple[str, int, int, int]] = []
        self.violations: list[str] = []
        self.violation_count = 0
        self.last_message_at = 0.0

    # ---- events ----------------------------------------------------------------------------

    def begin_session(self) -> None:
        with self.lock:
            self._end_session()
            self.session += 1
            self.loss_mark = -1
            self.session_lost = 0
            self.session_missing = 0
            self.session_capsules = set()

    def finish(self) -> None:
        with self.lock:
            self._end_session()

    def envelope(self, messages: Iterable[Any], lagged: int, dropped: int) -> None:
        """One ``bus.messages`` envelope of a JSON-RPC subscription."""
        with self.lock:
            self.mark += 1
            self.envelopes += 1
            self.lagged += lagged
            self.dropped += dropped
            if lagged + dropped:
                self.loss_mark = self.mark
                self.reported_lost += lagged + dropped
                self.session_lost += lagged + dropped
            for message in messages:
                self._message(message)

    def line_message(self, message: Any) -> None:
        """One message printed by ``astrid sub``."""
        with self.lock:
            self.mark += 1
            self._message(message)

    def line_loss(self, lost: int) -> None:
        """``astrid sub: N message(s) lost``: explains every gap since the messages before it."""
        with self.lock:
            self.mark += 1
            self.loss_mark = self.mark
            self.lagged += lost
            self.reported_lost += lost
            self.session_lost += lost
            for _capsule, low, high, _mark in self.pending:
                self.gaps_explained += 1
                self.missing_explained += high - low - 1
            self.pending.clear()

    # ---- rules -----------------------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append(f"{self.name} session {self.session}: {text}")

    def _end_session(self) -> None:
        for capsule, low, high, _mark in self.pending:
            self._violation(
                f"{capsule}: {high - low - 1} message(s) missing between n={low} and n={high} "
                "and no loss reported"
            )
        self.pending.clear()
        if self.session_missing > self.session_lost:
            self._violation(
                f"{self.session_missing} message(s) missing in gaps but only "
                f"{self.session_lost} reported lagged/dropped"
            )

    def _message(self, message: Any) -> None:
        if isinstance(message, dict) and message.get("topic") == FLOOD_TOPIC:
            self.flood_messages += 1
            return
        parsed = _parse_message(message)
        if parsed is None:
            self._violation(f"malformed message {str(message)[:200]}")
            return
        capsule, n, run = parsed
        self.messages += 1
        self.per_capsule[capsule] += 1
        self.session_capsules.add(capsule)
        self.last_message_at = time.monotonic()
        if n > self.max_n.get(capsule, 0):
            self.max_n[capsule] = n
        previous = self.last.get(capsule)
        self.last[capsule] = _Seen(n, run, self.mark, self.session)
        if previous is None:
            return
        where = f"{capsule}: n={previous.n} run {previous.run} then n={n} run {run}"
        if run < previous.run:
            self._violation(f"{where}: the run number went backwards")
            return
        if run == previous.run and n <= previous.n:
            self._violation(f"{where}: not increasing within a run")
            return
        if run > previous.run and n < previous.n:
            self._violation(f"{where}: a new run went back by more than one number")
            return
        if previous.session != self.session:
            if n > previous.n + 1:
                self.session_gaps += 1  # the subscriber was disconnected
            if run == previous.run:
                self.runs_continued += 1  # the run outlived the connection (the broker)
            return
        if run > previous.run:
            self.run_changes += 1
            if n == previous.n:
                self.restart_repeats += 1
        gap = n - previous.n - 1
        if gap <= 0:
            return
        self.session_missing += gap
        if self.loss_mark > previous.mark:
            self.gaps_explained += 1
            self.missing_explained += gap
        elif self.report_after:
            self.pending.append((capsule, previous.n, n, previous.mark))
        else:
            self._violation(f"{where}: {gap} message(s) missing and no lagged/dropped reported")

    # ---- report ----------------------------------------------------------------------------

    def summary(self) -> str:
        return (
            f"{self.name}: {self.session} session(s), {self.messages} messages "
            f"(+{self.flood_messages} flood) in {self.envelopes or self.mark} "
            f"{'envelopes' if self.envelopes else 'lines'}, "
            f"reported lagged {self.lagged} dropped {self.dropped}; gaps explained by losses "
            f"{self.gaps_explained} ({self.missing_explained} messages), restarts seen "
            f"{self.run_changes} (repeated number {self.restart_repeats}), gaps across "
            f"reconnections {self.session_gaps}, runs continued across reconnections "
            f"{self.runs_continued}, violations {self.violation_count}"
        )


def _parse_message(message: Any) -> tuple[str, int, int] | None:
    if not isinstance(message, dict):
        return None
    topic = message.get("topic")
    payload = message.get("payload")
    if not isinstance(topic, str) or not topic.startswith(TOPIC_PREFIX):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "custom":
        return None
    data = payload.get("data")
    if not isinstance(data, dict):
        return None
    n, run = data.get("n"), data.get("run")
    if not isinstance(n, int) or not isinstance(run, int):
        return None
    return topic[len(TOPIC_PREFIX) :], n, run


# -------------------------------------------------------------------------------------------
# Subscribers


def _open(home: AstridHome, rejected: Counter[str]) -> socket.socket | None:
    """An authenticated connection to ``sessions/system.sock``, or None (broker not there).

    A rejected handshake is counted in ``rejected`` (by reason) and is retried like an absent
    broker: a
    broker killed with SIGKILL leaves its token file behind, and its successor listens on the
    socket a moment before it writes its own token, so a client that read the old token then
    is refused ("authentication failed").
    """
    try:
        token = SessionToken.read_from_file(home.token_path())
    except (OSError, ValueError):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        sock.connect(str(home.socket_path()))
        client_handshake(sock, token, "astrid-chaos/0")
    except (OSError, ValueError):
        sock.close()
        return None
    except HandshakeRejected as exc:
        sock.close()
        rejected[str(exc.reason)] += 1
        return None
    return sock


def _request(sock: socket.socket, number: int, method: str, params: dict[str, Any]) -> Any:
    """Send one request and return its result, skipping notifications (5 s per frame)."""
    send_frame(sock, rpc.encode_request(number, method, params), 5.0)
    while True:
        payload = recv_frame(sock, MAX_CLIENT_FRAME, 5.0)
        if json.loads(payload).get("id") == number:
            return rpc.decode_response(payload)[1]


def flood(home: AstridHome, count: int, rejected: Counter[str]) -> int:
    """Publish ``count`` messages on FLOOD_TOPIC through ``bus.publish``; returns how many."""
    sock = _open(home, rejected)
    if sock is None:
        return 0
    sent = 0
    try:
        for number in range(1, count + 1):
            _request(
                sock,
                number,
                Method.BUS_PUBLISH,
                {"topic": FLOOD_TOPIC, "payload": {"flood": number}},
            )
            sent += 1
    except (OSError, ValueError, rpc.RpcError):
        pass
    finally:
        sock.close()
    return sent


class _Subscriber(threading.Thread, abc.ABC):
    def __init__(self, checker: StreamChecker) -> None:
        super().__init__(name=f"chaos-{checker.name}", daemon=True)
        self.checker = checker
        self.stopping = threading.Event()
        self.error: str | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug of the checker itself: report it
            self.error = f"{self.checker.name} crashed: {type(exc).__name__}: {exc}"
        finally:
            self.checker.finish()

    @abc.abstractmethod
    def _run(self) -> None:
        """Receive until the stop event, feeding ``self.checker``."""


class RpcSubscriber(_Subscriber):
    """``bus.subscribe`` on ``sessions/system.sock``; reconnects whenever the broker restarts.

    With ``stall`` = (every, seconds, burst) it stops reading for ``seconds`` once per ``every``
    seconds, after publishing ``burst`` messages on FLOOD_TOPIC, so that the broker's queue for
    it overflows (a queue holds 1024 messages, the socket and the broker's transport buffer
    about as many again) and the broker has to report ``lagged``.
    """

    def __init__(self, home: AstridHome, name: str, stall: tuple[float, float, int] | None) -> None:
        super().__init__(StreamChecker(name))
        self.home = home
        self.stall = stall
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()
        self.stalls = 0
        self.flooded = 0
        #: Handshakes the broker rejected, by reason.
        self.rejected: Counter[str] = Counter()

    def stop(self) -> None:
        super().stop()
        with self._sock_lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _connect(self) -> socket.socket | None:
        sock = _open(self.home, self.rejected)
        if sock is None:
            return None
        try:
            _request(sock, 1, Method.BUS_SUBSCRIBE, {"pattern": PATTERN})
        except (OSError, ValueError, rpc.RpcError):
            sock.close()
            return None
        sock.settimeout(None)
        return sock

    def _run(self) -> None:
        next_stall = None if self.stall is None else time.monotonic() + self.stall[0]
        while not self.stopping.is_set():
            sock = self._connect()
            if sock is None:
                self.stopping.wait(0.2)
                continue
            with self._sock_lock:
                if self.stopping.is_set():
                    sock.close()
                    return
                self._sock = sock
            self.checker.begin_session()
            try:
                while not self.stopping.is_set():
                    if next_stall is not None and self.stall and time.monotonic() >= next_stall:
                        self.stalls += 1
                        began = time.monotonic()
                        self.flooded += flood(self.home, self.stall[2], self.rejected)
                        self.stopping.wait(max(0.0, began + self.stall[1] - time.monotonic()))
                        next_stall = time.monotonic() + self.stall[0]
                    payload = recv_frame(sock, MAX_CLIENT_FRAME)
                    data = json.loads(payload)
                    if data.get("method") != Method.BUS_MESSAGES:
                        continue
                    envelope = data["params"]["envelope"]
                    self.checker.envelope(
                        envelope["messages"], int(envelope["lagged"]), int(envelope["dropped"])
                    )
            except (OSError, ValueError):
                pass  # the broker went away (or we are stopping)
            finally:
                with self._sock_lock:
                    self._sock = None
                sock.close()


class CliSubscriber(_Subscriber):
    """The real ``astrid sub 'chaos.*'``, started again whenever it exits."""

    def __init__(self, home: Path, name: str = "astrid-sub") -> None:
        super().__init__(StreamChecker(name, report_after=True))
        self.home = home
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.starts = 0
        self.other_lines: Counter[str] = Counter()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()

    def _run(self) -> None:
        command = [str(BIN / "astrid"), "--home", str(self.home), "sub", PATTERN]
        while not self.stopping.is_set():
            with self._lock:
                if self.stopping.is_set():
                    return
                process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    bufsize=1,
                )
                self._process = process
            self.starts += 1
            self.checker.begin_session()
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("{"):
                    try:
                        message = json.loads(line)
                    except ValueError:
                        message = line
                    self.checker.line_message(message)
                elif "message(s) lost" in line:
                    words = line.split()
                    count = next((int(w) for w in words if w.isdigit()), 1)
                    self.checker.line_loss(count)
                else:
                    self.other_lines[line.strip()[:120]] += 1
            process.wait()
            with self._lock:
                self._process = None
            self.stopping.wait(0.3)


# -------------------------------------------------------------------------------------------
# Sampling the tree


class _Sampler(threading.Thread):
    """Samples the supervisor's RSS and records every process under it."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(name="chaos-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.stopping = threading.Event()
        self.rss: list[tuple[float, int]] = []
        self.fds: list[tuple[float, int]] = []
        self.seen: dict[tuple[int, float], str] = {}
        self.pgids: set[int] = set()
        self._lock = threading.Lock()

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            now = time.monotonic()
            self.rss.append((now, root.memory_info().rss))
            self.fds.append((now, root.num_fds()))
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                key = (process.pid, process.create_time())
                if key not in self.seen:
                    self.seen[key] = " ".join(process.cmdline())[:120] or process.name()
                self.pgids.add(os.getpgid(process.pid))
            except (psutil.Error, OSError):
                continue

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)


def _ps(home: Path) -> list[dict[str, Any]] | None:
    """``astrid ps --json``'s rows, or None when it fails."""
    try:
        result = subprocess.run(
            [str(BIN / "astrid"), "--home", str(home), "ps", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    try:
        rows = json.loads(result.stdout)["processes"]
    except (ValueError, KeyError):
        return None
    return rows if isinstance(rows, list) else None


def _kv_rows(db_path: Path, capsule: str, prefix: str | None = None) -> dict[str, bytes]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        query = "SELECT key, value FROM kv WHERE ns = ?"
        rows = db.execute(query, (f"capsule:{capsule}",)).fetchall()
    finally:
        db.close()
    out = {}
    for key, value in rows:
        name = bytes(key).decode("utf-8", "replace")
        if prefix is None or name.startswith(prefix):
            out[name] = bytes(value)
    return out


def _kv_int(db_path: Path, capsule: str, key: str) -> int:
    try:
        value = _kv_rows(db_path, capsule).get(key)
    except sqlite3.Error:
        return 0
    try:
        return int(value or b"0")
    except ValueError:
        return 0


# -------------------------------------------------------------------------------------------
# The run


@dataclass
class ChaosReport:
    capsules: list[str]
    duration: float
    kill_rate: float
    broker_every: float
    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    kill_log: list[tuple[float, str, str, int]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    kv_lines: list[str] = field(default_factory=list)
    bus_lines: list[str] = field(default_factory=list)
    rss_warm: int = 0
    rss_end: int = 0
    rss_max: int = 0
    rss_slack: int = 10 * MIB
    fds_warm: int = 0
    stopped_with: str = ""
    exits: Counter[str] = field(default_factory=Counter)
    fds_end: int = 0
    tree_processes: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [
            f"chaos: {len(self.capsules)} capsules, {self.duration:g} s of chaos, "
            f"kill rate {self.kill_rate:g}/s, broker every {self.broker_every:g} s, "
            f"seed {self.seed} ({self.elapsed:.0f} s in all)",
            "kills: "
            + ", ".join(f"{kind} {self.kills[kind]}" for kind in ("worker", "host", "broker"))
            + (
                " (not possible at the time: "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
                + ")"
                if self.skipped
                else ""
            ),
            "restarts (astrid ps): "
            + ", ".join(f"{name} {count}" for name, count in self.restarts.items()),
            "runs (KV started): " + ", ".join(f"{k} {v}" for k, v in self.runs.items()),
            "unplanned exits (supervisor.log): "
            + "; ".join(f"{reason}: {count}" for reason, count in self.exits.most_common()),
            "kv:",
            *(f"  {line}" for line in self.kv_lines),
            "bus:",
            *(f"  {line}" for line in self.bus_lines),
            f"supervisor RSS: warm-up {self.rss_warm / MIB:.1f} MiB, end "
            f"{self.rss_end / MIB:.1f} MiB ({(self.rss_end - self.rss_warm) / MIB:+.1f} MiB, "
            f"allowed +{self.rss_slack / MIB:g}), max {self.rss_max / MIB:.1f} MiB",
            f"supervisor open files: warm-up {self.fds_warm}, end {self.fds_end} (allowed "
            f"+{FD_SLACK})",
            f"processes of the tree seen: {self.tree_processes}; stopped with {self.stopped_with}",
            *(f"note: {note}" for note in self.notes),
        ]
        if self.failures:
            lines.append("kill log (seconds into the chaos, kind, target, pid):")
            lines.extend(
                f"  {at:7.2f} {kind} {target} {pid}" for at, kind, target, pid in self.kill_log
            )
            lines.append(f"RESULT: FAIL ({len(self.failures)} failure(s))")
            lines.extend(f"  - {failure}" for failure in self.failures)
        else:
            lines.append("RESULT: PASS")
        return "\n".join(lines)


def _load_build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capsule_build", REPO / "capsules" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def install_capsules(home: Path, count: int, interval_ms: int, spawn_every: int) -> list[str]:
    """Build ``chaoser`` and install ``count`` renamed copies into ``home/capsules``."""
    from tests.conftest import copy_capsule

    _load_build_tool().build_capsule(CHAOSER)
    names = []
    for index in range(count):
        name = f"chaoser-{index:02d}"
        target = copy_capsule(CHAOSER, home / "capsules", name=name)
        config = {
            "chaos_topic": f"{TOPIC_PREFIX}{name}",
            "chaos_interval_ms": str(interval_ms),
            "chaos_spawn_every": str(spawn_every),
        }
        (target / ".env.json").write_text(json.dumps(config))
        names.append(name)
    return names


def _has_down_command() -> bool:
    result = subprocess.run(
        [str(BIN / "astrid-supervisor"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return any(line.split()[:1] == ["down"] for line in result.stdout.splitlines())


class _Chaos:
    def __init__(
        self,
        home: Path,
        names: list[str],
        report: ChaosReport,
        rng: random.Random,
        broker_every: float,
    ) -> None:
        self.home = home
        self.names = names
        self.report = report
        self.rng = rng
        self.broker_every = broker_every
        self.events: dict[str, deque[float]] = {name: deque() for name in [*names, "broker"]}
        self.start = time.monotonic()

    def _prune(self, now: float) -> None:
        for times in self.events.values():
            while times and times[0] <= now - BUDGET_WINDOW:
                times.popleft()

    def _budget(self, name: str, reserve: int = 0) -> bool:
        return len(self.events[name]) < KILL_BUDGET - reserve

    def _record(self, kind: str, target: str, pid: int) -> None:
        now = time.monotonic()
        self.report.kills[kind] += 1
        self.report.kill_log.append((now - self.start, kind, target, pid))

    def kill(self, kind: str) -> bool:
        """SIGKILL one random process of ``kind``; False if none can be killed now."""
        rows = _ps(self.home)
        now = time.monotonic()
        self._prune(now)
        if rows is None:
            self.report.skipped[f"{kind} (ps failed)"] += 1
            return False
        workers = [r for r in rows if r.get("role") == "worker"]
        if kind == "worker":
            candidates = [
                r
                for r in workers
                if r.get("state") == "READY"
                and r.get("pid")
                and self._budget(r["name"], reserve=1 if self.broker_every > 0 else 0)
            ]
            if not candidates:
                self.report.skipped["worker"] += 1
                return False
            row = self.rng.choice(candidates)
            if _sigkill(row["pid"]):
                self.events[row["name"]].append(now)
                self._record("worker", row["name"], row["pid"])
                return True
            return False
        if kind == "host":
            targets: list[tuple[str, int]] = []
            for row in rows:
                if row.get("role") != "host" or not row.get("pid"):
                    continue
                label = f"{row.get('capsule')}: {row.get('command')}"
                targets.append((label, row["pid"]))
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(row["pid"]).children(recursive=True):
                        targets.append((f"{label} (child {child.name()})", child.pid))
            if not targets:
                self.report.skipped["host"] += 1
                return False
            label, pid = self.rng.choice(targets)
            if _sigkill(pid):
                self._record("host", label, pid)
                return True
            return False
        # The broker: only with the whole tree READY and the restart budget of everyone.
        broker = next((r for r in rows if r.get("role") == "broker"), None)
        ready = (
            broker is not None
            and broker.get("state") == "READY"
            and bool(broker.get("pid"))
            and len(workers) == len(self.names)
            and all(r.get("state") == "READY" for r in workers)
        )
        if not ready or not all(self._budget(name) for name in self.events):
            return False
        assert broker is not None
        if _sigkill(broker["pid"]):
            for times in self.events.values():
                times.append(now)
            self._record("broker", "broker", broker["pid"])
            return True
        return False

    def run(self, duration: float, kill_rate: float, alive: Callable[[], bool]) -> None:
        """Kill until ``duration`` has passed (or ``alive()`` turns false).

        Workers and host processes die at Poisson-distributed times (``kill_rate`` per second,
        65 % workers); the broker once in every period of ``broker_every`` seconds, at a random
        moment of its first 70 %. While a broker kill waits for the whole tree to be READY, no
        worker is killed, so that it does happen.
        """
        self.start = time.monotonic()
        deadline = self.start + duration
        rng = self.rng
        never = deadline + 1
        next_kill = self.start + rng.expovariate(kill_rate) if kill_rate > 0 else never
        period_start = self.start
        broker_due = never
        if self.broker_every > 0:
            broker_due = period_start + rng.uniform(0.1, 0.7) * self.broker_every
        broker_done = False
        while alive():
            now = time.monotonic()
            if now >= deadline:
                break
            if self.broker_every > 0 and now >= period_start + self.broker_every:
                if not broker_done:
                    self.report.skipped["broker"] += 1
                period_start += self.broker_every
                broker_due = period_start + rng.uniform(0.1, 0.7) * self.broker_every
                broker_done = False
            broker_pending = not broker_done and now >= broker_due
            if broker_pending:
                broker_done = self.kill("broker")
                broker_pending = not broker_done
            if now >= next_kill:
                if rng.random() < 0.65:
                    if broker_pending:
                        self.report.skipped["worker (a broker kill was waiting)"] += 1
                    else:
                        self.kill("worker")
                else:
                    self.kill("host")
                next_kill = time.monotonic() + rng.expovariate(kill_rate)
            wake = min(next_kill, deadline, now + 0.5 if broker_pending else broker_due)
            time.sleep(min(0.5, max(0.05, wake - time.monotonic())))
        if self.broker_every > 0 and not broker_done and broker_due < deadline:
            self.report.skipped["broker"] += 1


def _sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _leftovers(
    sampler: _Sampler, workspace: Path, home: Path, own: set[int], since: float
) -> list[tuple[int, str]]:
    """Processes of the tree still alive (zombies excluded).

    Besides the processes seen under the supervisor, any process created after ``since`` (a
    UNIX time: pids and group ids are reused) that runs in the workspace, in a process group of
    the tree or with the chaos home as ``ASTRID_HOME``.
    """
    found: dict[int, str] = {}
    driver_pgid = os.getpgid(0)
    pgids = sampler.pgids - {driver_pgid}
    for (pid, created), what in sampler.seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                found[pid] = what
        except psutil.Error:
            continue
    for process in psutil.process_iter(["pid", "status", "cwd", "cmdline", "create_time"]):
        pid = process.info["pid"]
        if pid in own or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (process.info["create_time"] or 0) < since:
            continue
        what = " ".join(process.info["cmdline"] or [])[:120]
        cwd = process.info["cwd"]
        try:
            if cwd and Path(cwd).is_relative_to(workspace):
                found[pid] = f"{what} (cwd in the workspace)"
                continue
            if os.getpgid(pid) in pgids:
                found[pid] = f"{what} (in a process group of the tree)"
                continue
            if process.environ().get("ASTRID_HOME") == str(home):
                found[pid] = f"{what} (ASTRID_HOME of the chaos tree)"
        except (psutil.Error, OSError):
            continue
    return sorted(found.items())


def run_chaos(
    home: Path,
    capsules: int = 4,
    duration: float = 20.0,
    kill_rate: float = 1.0,
    seed: int = 0,
    *,
    broker_every: float = 10.0,
    interval_ms: int = 20,
    spawn_every: int = 150,
    slow_stall: tuple[float, float, int] = (8.0, 4.0, 4000),
    rss_slack: int = 10 * MIB,
) -> ChaosReport:
    """Run the chaos test in the (new) ASTRID_HOME ``home``; see the module docstring.

    ``capsules`` copies of chaoser each iterate every ``interval_ms`` and replace their host
    process every ``spawn_every`` iterations; ``kill_rate`` SIGKILLs per second go to workers and
    host processes, one to the broker every ``broker_every`` seconds; the slow subscriber stops
    reading for ``slow_stall[1]`` s every ``slow_stall[0]`` s, while ``slow_stall[2]`` messages
    are published on FLOOD_TOPIC. Returns the report;
    ``report.failures`` lists every rule broken.
    """
    began = time.monotonic()
    began_wall = time.time() - 1.0
    home = home.absolute()
    workspace = home / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = install_capsules(home, capsules, interval_ms, spawn_every)
    report = ChaosReport(names, duration, kill_rate, broker_every, seed, rss_slack=rss_slack)
    astrid_home = AstridHome.from_path(home)
    db_path = home / "state.db"
    failures = report.failures

    log_file = (home / "supervisor.out").open("wb")
    supervisor = subprocess.Popen(
        [str(BIN / "astrid-supervisor"), "up", "--home", str(home), "--workspace", str(workspace)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    sampler = _Sampler(supervisor.pid)
    sampler.start()
    subscribers: list[_Subscriber] = []
    final_rows: list[dict[str, Any]] = []

    def drive() -> None:
        # ---- start ----
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            rows = _ps(home) if supervisor.poll() is None else None
            states = {r["name"]: r.get("state") for r in rows or () if r.get("role") != "host"}
            if rows and all(states.get(name) == "READY" for name in [*names, "broker"]):
                break
            if supervisor.poll() is not None:
                failures.append(f"the supervisor exited during start ({supervisor.returncode})")
                return
            if time.monotonic() > deadline:
                failures.append(f"the tree was not READY within {START_TIMEOUT:g} s: {states}")
                return
            time.sleep(0.3)
        subscribers.extend(
            [
                RpcSubscriber(astrid_home, "rpc", None),
                RpcSubscriber(astrid_home, "rpc-slow", slow_stall),
                CliSubscriber(home),
            ]
        )
        for subscriber in subscribers:
            subscriber.start()
        deadline = time.monotonic() + 20
        while not all(s.checker.messages for s in subscribers):
            if time.monotonic() > deadline:
                failures.append("a subscriber received nothing before the chaos")
                return
            time.sleep(0.1)
        _log(f"{len(names)} capsules READY; chaos for {duration:g} s (seed {seed})")

        # ---- chaos ----
        chaos = _Chaos(home, names, report, rng, broker_every)
        warmup = max(5.0, duration / 4)
        chaos_start = time.monotonic()
        chaos.run(duration, kill_rate, lambda: supervisor.poll() is None)
        if supervisor.poll() is not None:
            failures.append(f"the supervisor exited during the chaos ({supervisor.returncode})")
            return
        _log(
            "chaos over: "
            + ", ".join(f"{k} {v}" for k, v in sorted(report.kills.items()))
            + "; waiting for the tree to recover"
        )

        # ---- recovery ----
        chaos_end = time.monotonic()
        marks = {name: _kv_int(db_path, name, "last") for name in names}
        deadline = chaos_end + RECOVERY_TIMEOUT
        missing: list[str] = []
        while True:
            rows = _ps(home)
            states = {r["name"]: r.get("state") for r in rows or () if r.get("role") != "host"}
            missing = [
                f"{n} {states.get(n)}" for n in [*names, "broker"] if states.get(n) != "READY"
            ]
            missing += [
                f"{name} not writing KV"
                for name in names
                if _kv_int(db_path, name, "last") <= marks[name]
            ]
            missing += [
                f"{s.checker.name} not receiving"
                for s in subscribers
                if s.checker.last_message_at < chaos_end or set(names) - s.checker.session_capsules
            ]
            if not missing:
                break
            if time.monotonic() > deadline or supervisor.poll() is not None:
                failures.append(
                    f"the tree did not recover within {RECOVERY_TIMEOUT:g} s: " + "; ".join(missing)
                )
                break
            time.sleep(0.5)
        final_rows.extend(_ps(home) or [])
        time.sleep(1.0)
        sampler.sample()

        # ---- memory ----
        warm = [rss for at, rss in sampler.rss if at <= chaos_start + warmup]
        report.rss_warm = max(warm) if warm else 0
        report.rss_end = sampler.rss[-1][1] if sampler.rss else 0
        report.rss_max = max((rss for _, rss in sampler.rss), default=0)
        warm_fds = [fds for at, fds in sampler.fds if at <= chaos_start + warmup]
        report.fds_warm = max(warm_fds) if warm_fds else 0
        report.fds_end = sampler.fds[-1][1] if sampler.fds else 0
        if report.fds_end > report.fds_warm + FD_SLACK:
            failures.append(
                f"the supervisor holds {report.fds_end} open files after the chaos, "
                f"{report.fds_warm} at most during the warm-up (allowed: +{FD_SLACK})"
            )
        if report.rss_end > report.rss_warm + rss_slack:
            failures.append(
                f"the supervisor's RSS grew from {report.rss_warm / MIB:.1f} MiB after warm-up "
                f"to {report.rss_end / MIB:.1f} MiB (allowed: +{rss_slack / MIB:g} MiB)"
            )

    try:
        drive()
    finally:
        for subscriber in subscribers:
            subscriber.stop()
        sampler.sample()
        report.stopped_with = _stop_supervisor(home, supervisor, failures)
        sampler.stopping.set()
        sampler.join(5)
        for subscriber in subscribers:
            subscriber.join(10)
        log_file.close()

    # ---- the rules ----
    report.tree_processes = len(sampler.seen)
    own = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    deadline = time.monotonic() + 5
    while (
        left := _leftovers(sampler, workspace, home, own, began_wall)
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, what in left:
        failures.append(f"process left after the stop: pid {pid} {what}")

    for row in final_rows:
        if row.get("role") in ("broker", "worker"):
            report.restarts[row["name"]] = int(row.get("restarts") or 0)
    _check_kv(report, db_path, names, subscribers)
    report.exits = _exit_reasons(home / "logs" / "supervisor.log")
    continued = max(s.checker.runs_continued for s in subscribers) if subscribers else 0
    if continued:
        stale = sum(n for reason, n in report.exits.items() if "no background process" in reason)
        report.notes.append(
            f"{continued} run(s) of chaoser outlived a broker restart in the same worker (the "
            "worker re-authenticated on REAUTH and went on); their background host processes "
            f"died with the old broker, and {stale} worker exit(s) were traps on such a stale id"
        )
    for subscriber in subscribers:
        checker = subscriber.checker
        report.bus_lines.append(checker.summary())
        if isinstance(subscriber, RpcSubscriber) and subscriber.rejected:
            report.notes.append(
                f"WARNING: {checker.name}: the broker rejected the session token "
                f"{sum(subscriber.rejected.values())} time(s) right after a restart "
                f"({dict(subscriber.rejected)}): the token file of the killed broker was read "
                "while its successor already listened (broker/clients.py ClientServer.start)"
            )
        if isinstance(subscriber, RpcSubscriber) and subscriber.stall is not None:
            report.notes.append(
                f"{checker.name} stalled {subscriber.stalls} time(s) while "
                f"{subscriber.flooded} messages were published on {FLOOD_TOPIC}"
            )
        if isinstance(subscriber, CliSubscriber):
            other = "; ".join(f"{line!r} x{n}" for line, n in subscriber.other_lines.most_common(3))
            report.notes.append(
                f"astrid sub was started {subscriber.starts} time(s)"
                + (f"; its other output: {other}" if other else "")
            )
        if subscriber.error:
            failures.append(subscriber.error)
        failures.extend(checker.violations)
        if checker.violation_count > len(checker.violations):
            failures.append(
                f"{checker.name}: {checker.violation_count - len(checker.violations)} more "
                "stream violations"
            )
    report.elapsed = time.monotonic() - began
    return report


def _stop_supervisor(home: Path, supervisor: subprocess.Popen[bytes], failures: list[str]) -> str:
    """``astrid-supervisor down`` if this version has it, else SIGTERM; returns which."""
    if supervisor.poll() is not None:
        return "nothing (the supervisor had exited)"
    how = "SIGTERM"
    if _has_down_command():
        how = "astrid-supervisor down"
        command = [str(BIN / "astrid-supervisor"), "down", "--home", str(home)]
        command += ["--timeout", f"{STOP_TIMEOUT:g}"]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=STOP_TIMEOUT + 30, check=False
            )
        except subprocess.TimeoutExpired:
            failures.append(f"{how} did not return within {STOP_TIMEOUT + 30:g} s")
        else:
            if result.returncode != 0:
                failures.append(f"{how} failed ({result.returncode}): {result.stderr.strip()}")
    else:
        supervisor.send_signal(signal.SIGTERM)
    try:
        code = supervisor.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        failures.append(f"the supervisor did not stop within {STOP_TIMEOUT:g} s of {how}")
        supervisor.kill()
        supervisor.wait()
        return how
    if code != 0:
        failures.append(f"the supervisor exited with {code} after {how}")
    return how


_EXIT_LINE = re.compile(r"(?P<name>[\w-]+)\[\d+\] exited \((?P<reason>.*)\); restarting")


def _exit_reasons(log_path: Path) -> Counter[str]:
    """Why processes exited unplanned, from the supervisor's log (numbers replaced by N)."""
    reasons: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            match = _EXIT_LINE.search(line)
            if match:
                role = "broker" if match["name"] == "broker" else "worker"
                reason = re.sub(r"(?<=id )\d+", "N", match["reason"])
                reasons[f"{role} {reason}"] += 1
    return reasons


def _check_kv(
    report: ChaosReport, db_path: Path, names: list[str], subscribers: list[_Subscriber]
) -> None:
    for name in names:
        try:
            rows = _kv_rows(db_path, name)
        except sqlite3.Error as exc:
            report.failures.append(f"cannot read state.db for {name}: {exc}")
            continue
        report.runs[name] = int(rows.get("started", b"0") or 0)
        last = int(rows.get("last", b"0") or 0)
        seen = max((s.checker.max_n.get(name, 0) for s in subscribers), default=0)
        bound = max(last, seen)
        present = {}
        for key, value in rows.items():
            if key.startswith("seq:") and key[4:].isdigit():
                present[int(key[4:])] = value
        absent = [n for n in range(1, bound + 1) if n not in present]
        wrong = [n for n, value in present.items() if value != str(n).encode()]
        report.kv_lines.append(
            f"{name}: acknowledged up to n={bound} (last {last}, bus {seen}), "
            f"{len(present)} seq keys (highest {max(present, default=0)}), "
            f"{len(absent)} acknowledged missing"
        )
        if absent:
            shown = ", ".join(map(str, absent[:20])) + (" ..." if len(absent) > 20 else "")
            report.failures.append(
                f"{name}: {len(absent)} acknowledged KV write(s) missing from state.db: seq:{shown}"
            )
        if wrong:
            report.failures.append(f"{name}: seq keys with wrong values: {wrong[:20]}")
        if bound == 0:
            report.failures.append(f"{name}: no acknowledged write at all")


# -------------------------------------------------------------------------------------------
# make chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.chaos",
        description="The long chaos run (`make chaos`); see tests/chaos/chaos.py for the rules.",
    )
    parser.add_argument("--capsules", type=int, default=12)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of chaos")
    parser.add_argument("--kill-rate", type=float, default=1.0, help="worker/host kills per s")
    parser.add_argument("--broker-every", type=float, default=20.0, help="seconds (0: never)")
    parser.add_argument("--interval-ms", type=int, default=20, help="capsule loop sleep")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    base = None
    home = args.home
    if home is None:
        base = Path(tempfile.mkdtemp(prefix="astrid-chaos-"))
        home = base / "home"
    report = run_chaos(
        home,
        args.capsules,
        args.duration,
        args.kill_rate,
        seed,
        broker_every=args.broker_every,
        interval_ms=args.interval_ms,
    )
    print(report.summary())
    if base is not None:
        if report.ok and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"home kept for inspection: {home} (logs in {home / 'logs'})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
