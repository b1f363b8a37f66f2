"""The restart policy, driven by a fake clock."""

from __future__ import annotations

import random

import pytest

from supervisor.policy import Decision, RestartPolicy, RestartTracker

NO_JITTER = RestartPolicy(jitter=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def crash_after(
    tracker: RestartTracker, clock: Clock, uptime: float, delay: float = 0.0
) -> Decision:
    """Start (after ``delay``), run for ``uptime`` seconds, exit; return the decision."""
    tracker.on_start(clock.advance(delay))
    return tracker.on_exit(clock.advance(uptime))


def test_first_failure_restarts_immediately() -> None:
    tracker = RestartTracker(NO_JITTER)
    decision = crash_after(tracker, Clock(), uptime=0.05)
    assert decision == Decision(restart=True, delay=0.0)


def test_consecutive_failures_back_off_exponentially_up_to_the_cap() -> None:
    policy = RestartPolicy(
        base_delay=0.1, factor=2.0, max_delay=1.0, jitter=0.0, max_restarts=100, window=60
    )
    tracker = RestartTracker(policy)
    clock = Clock()
    delays = []
    delay = 0.0
    for _ in range(8):
        decision = crash_after(tracker, clock, uptime=0.01, delay=delay)
        assert decision.restart
        delays.append(decision.delay)
        delay = decision.delay
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert tracker.consecutive_failures == 8


def test_jitter_stays_within_bounds_and_varies() -> None:
    policy = RestartPolicy(
        base_delay=1.0, factor=1.0, max_delay=10.0, jitter=0.2, max_restarts=10**6
    )
    tracker = RestartTracker(policy, random.Random(42))
    clock = Clock()
    crash_after(tracker, clock, uptime=0.01)  # the immediate one
    delays = [crash_after(tracker, clock, uptime=0.01, delay=5.0).delay for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.2  # really jittered, not constant


def test_jitter_never_exceeds_max_delay() -> None:
    policy = RestartPolicy(base_delay=10.0, max_delay=10.0, jitter=0.5, max_restarts=10**6)
    tracker = RestartTracker(policy, random.Random(1))
    clock = Clock()
    crash_after(tracker, clock, uptime=0.01)
    delays = [crash_after(tracker, clock, uptime=0.01, delay=61.0).delay for _ in range(100)]
    assert all(5.0 <= d <= 10.0 for d in delays)


def test_injected_rng_makes_delays_reproducible() -> None:
    def run(seed: int) -> list[float]:
        tracker = RestartTracker(RestartPolicy(max_restarts=10**6), random.Random(seed))
        clock = Clock()
        return [crash_after(tracker, clock, uptime=0.01, delay=1.0).delay for _ in range(6)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_stable_run_resets_the_backoff() -> None:
    policy = RestartPolicy(jitter=0.0, stable_after=10.0, max_restarts=100)
    tracker = RestartTracker(policy)
    clock = Clock()
    for _ in range(4):
        crash_after(tracker, clock, uptime=0.01, delay=1.0)
    assert crash_after(tracker, clock, uptime=0.01, delay=1.0).delay > 0
    # A run of at least stable_after seconds: the next failure restarts at once again.
    assert crash_after(tracker, clock, uptime=10.0).delay == 0.0
    assert tracker.consecutive_failures == 1
    assert crash_after(tracker, clock, uptime=0.01).delay == pytest.approx(0.1)


def test_too_many_restarts_within_the_window_is_fatal() -> None:
    policy = RestartPolicy(
        base_delay=0.0, jitter=0.0, max_restarts=10, window=60.0, stable_after=10.0
    )
    tracker = RestartTracker(policy)
    clock = Clock()
    for _ in range(10):
        assert crash_after(tracker, clock, uptime=0.5).restart
    decision = crash_after(tracker, clock, uptime=0.5)
    assert decision.restart is False
    assert decision.fatal_reason == "restarted 10 times within 60 s"


def test_stable_runs_still_count_towards_the_window() -> None:
    # Killed every 11 s: each restart is immediate, but 6 restarts within 60 s is the limit.
    policy = RestartPolicy(max_restarts=5, window=60.0, stable_after=10.0)
    tracker = RestartTracker(policy)
    clock = Clock()
    for _ in range(5):
        assert crash_after(tracker, clock, uptime=11.0) == Decision(True, 0.0)
    assert crash_after(tracker, clock, uptime=5.0).fatal_reason == "restarted 5 times within 60 s"


def test_restarts_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(jitter=0.0, max_restarts=3, window=60.0, stable_after=100.0)
    tracker = RestartTracker(policy)
    clock = Clock()
    for _ in range(3):
        assert crash_after(tracker, clock, uptime=1.0).restart
    clock.advance(61.0)  # all three restarts leave the window
    assert crash_after(tracker, clock, uptime=1.0).restart


def test_zero_max_restarts_gives_up_at_once() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=0))
    decision = crash_after(tracker, Clock(), uptime=1.0)
    assert decision.restart is False
    assert decision.fatal_reason == "restarted 0 times within 60 s"


def test_exit_without_start_counts_as_an_unstable_run() -> None:
    tracker = RestartTracker(NO_JITTER)
    assert tracker.on_exit(5.0) == Decision(True, 0.0)
    assert tracker.on_exit(6.0).delay == pytest.approx(0.1)


def test_the_window_reason_uses_the_configured_window() -> None:
    tracker = RestartTracker(RestartPolicy(max_restarts=1, window=2.5))
    clock = Clock()
    crash_after(tracker, clock, uptime=0.1)
    assert crash_after(tracker, clock, uptime=0.1).fatal_reason == "restarted 1 time within 2.5 s"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay": -1.0},
        {"max_delay": -1.0},
        {"factor": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"max_restarts": -1},
        {"window": 0.0},
        {"stable_after": -1.0},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults_match_the_design() -> None:
    policy = RestartPolicy()
    assert (policy.base_delay, policy.max_delay, policy.factor, policy.jitter) == (
        0.1,
        30.0,
        2.0,
        0.2,
    )
    assert (policy.max_restarts, policy.window, policy.stable_after) == (10, 60.0, 10.0)


def test_reset_forgets_the_window_and_the_backoff() -> None:
    """An operator's start/restart of a FATAL process gives it a fresh window."""
    policy = RestartPolicy(base_delay=1.0, jitter=0.0, max_restarts=2, window=60.0)
    tracker = RestartTracker(policy)
    clock = Clock()
    assert crash_after(tracker, clock, uptime=0.1).restart
    assert crash_after(tracker, clock, uptime=0.1) == Decision(restart=True, delay=1.0)
    assert not crash_after(tracker, clock, uptime=0.1).restart  # FATAL
    tracker.reset()
    assert tracker.consecutive_failures == 0
    # Immediate again, and the full count of restarts is available in the same window.
    assert crash_after(tracker, clock, uptime=0.1) == Decision(restart=True, delay=0.0)
    assert crash_after(tracker, clock, uptime=0.1) == Decision(restart=True, delay=1.0)
    assert crash_after(tracker, clock, uptime=0.1).fatal_reason == "restarted 2 times within 60 s"
