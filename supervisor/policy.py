"""Restart policy: when to restart a process that exited, and when to give up.

Pure logic with an injected clock value (``now``, any monotonic seconds) and an injectable
:class:`random.Random`, so that it can be tested without processes or sleeps.

The rules (DESIGN §7, spec/peers.md §1, lesson 1):

* The first failure after a stable run (uptime ≥ ``stable_after``) restarts at once: a worker
  killed by an operator or by the OOM killer is back in milliseconds.
* Consecutive failures of short runs back off exponentially (``base_delay * factor**n``, with
  ±``jitter``, capped at ``max_delay``), so a crash loop never eats the supervisor's time.
* More than ``max_restarts`` restarts within ``window`` seconds gives up: the process is FATAL until
  an operator acts (``astrid start``/``astrid restart``, which call :meth:`RestartTracker.reset`).

The tracker is keyed by the process's stable identity (the capsule name, or the broker), never by
a generation, so that the limit does trip (upstream astrid #1541).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

__all__ = ["Decision", "RestartPolicy", "RestartTracker"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Parameters of the restart policy (seconds)."""

    #: Delay before the second consecutive restart; doubles (``factor``) after each failure.
    base_delay: float = 0.1
    #: Upper bound of any delay.
    max_delay: float = 30.0
    factor: float = 2.0
    #: Relative jitter: a delay ``d`` becomes a uniform value in ``[d·(1-jitter), d·(1+jitter)]``.
    jitter: float = 0.2
    #: Restarts allowed within ``window`` seconds; one more makes the process FATAL.
    max_restarts: int = 10
    window: float = 60.0
    #: A run at least this long is stable: the next failure restarts at once.
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("restart delays must not be negative")
        if self.factor < 1:
            raise ValueError("the backoff factor must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("the jitter must be in [0, 1)")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must not be negative")
        if self.window <= 0:
            raise ValueError("the restart window must be positive")
        if self.stable_after < 0:
            raise ValueError("stable_after must not be negative")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an exit: restart after ``delay`` seconds, or give up with a reason."""

    restart: bool
    delay: float = 0.0
    fatal_reason: str | None = None


class RestartTracker:
    """Restart bookkeeping for one supervised process.

    Call :meth:`on_start` whenever the process is (re)started and :meth:`on_exit` when it exits
    unexpectedly; the returned :class:`Decision` says whether and when to start it again.
    """

    __slots__ = ("_consecutive", "_policy", "_restarts", "_rng", "_started_at")

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._restarts: deque[float] = deque()
        self._consecutive = 0
        self._started_at: float | None = None

    @property
    def policy(self) -> RestartPolicy:
        return self._policy

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last stable run (0 after a stable run)."""
        return self._consecutive

    def on_start(self, now: float) -> None:
        self._started_at = now

    def reset(self) -> None:
        """Forget the failure history: an operator restarted or started the process by hand, so
        the window starts afresh and the next failure restarts at once."""
        self._restarts.clear()
        self._consecutive = 0

    def on_exit(self, now: float) -> Decision:
        policy = self._policy
        started_at, self._started_at = self._started_at, None
        uptime = now - started_at if started_at is not None else 0.0
        if uptime >= policy.stable_after:
            self._consecutive = 0

        horizon = now - policy.window
        while self._restarts and self._restarts[0] <= horizon:
            self._restarts.popleft()
        if len(self._restarts) >= policy.max_restarts:
            count = len(self._restarts)
            times = "time" if count == 1 else "times"
            return Decision(
                restart=False,
                fatal_reason=f"restarted {count} {times} within {policy.window:g} s",
            )

        delay = self._delay(self._consecutive)
        self._consecutive += 1
        self._restarts.append(now)
        return Decision(restart=True, delay=delay)

    def _delay(self, failures_before: int) -> float:
        """Delay before the restart following ``failures_before`` earlier consecutive failures."""
        if failures_before == 0:
            return 0.0
        policy = self._policy
        # Exponent capped so that a long crash history cannot overflow the float.
        exponent = min(failures_before - 1, 64)
        nominal = min(policy.max_delay, policy.base_delay * policy.factor**exponent)
        if policy.jitter:
            nominal *= 1.0 + self._rng.uniform(-policy.jitter, policy.jitter)
        return max(0.0, min(policy.max_delay, nominal))
