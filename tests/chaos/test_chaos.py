"""The CI-sized chaos test (``make test``): 4 capsules, 20 s of SIGKILLs; ``make chaos`` runs
the long version. The rules are in ``tests/chaos/chaos.py``; the stream rules are also checked
here on hand-made streams, so that a checker that accepts everything cannot pass unnoticed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.chaos import FLOOD_TOPIC, StreamChecker, _leftovers, _Sampler, run_chaos


def message(capsule: str, n: int, run: int = 1) -> dict[str, Any]:
    return {
        "topic": f"chaos.{capsule}",
        "payload": {"type": "custom", "data": {"n": n, "run": run}},
        "signature": None,
        "source_id": "00000000-0000-0000-0000-000000000000",
        "timestamp": "2026-01-01T00:00:00Z",
    }


def checked(*envelopes: tuple[list[dict[str, Any]], int]) -> StreamChecker:
    checker = StreamChecker("test")
    checker.begin_session()
    for messages, lagged in envelopes:
        checker.envelope(messages, lagged, 0)
    checker.finish()
    return checker


def test_an_in_order_stream_passes() -> None:
    checker = checked(
        ([message("a", 1), message("b", 7)], 0),
        ([message("a", 2), message("b", 8), {"topic": FLOOD_TOPIC, "payload": {}}], 0),
    )
    assert checker.violations == []
    assert checker.messages == 4
    assert checker.flood_messages == 1
    assert checker.max_n == {"a": 2, "b": 8}


def test_a_gap_needs_a_loss_reported_after_the_message_before_it() -> None:
    assert checked(([message("a", 1)], 0), ([message("a", 3)], 0)).violations
    # Reported in the envelope that carries the message after the gap: explained.
    checker = checked(([message("a", 1)], 0), ([message("a", 3)], 1))
    assert checker.violations == []
    assert checker.gaps_explained == 1
    # Reported in the envelope of the message before the gap: that loss came before it.
    assert checked(([message("a", 1)], 1), ([message("a", 3)], 0)).violations
    # Within one envelope nothing can be lost between two messages.
    assert checked(([message("a", 1), message("a", 3)], 1)).violations
    # More numbers skipped than the losses reported.
    assert checked(([message("a", 1)], 0), ([message("a", 5)], 1)).violations


def test_restarts_and_order() -> None:
    # A new run may publish the last number of the old one again, once.
    assert (
        checked(([message("a", 4, 1), message("a", 4, 2), message("a", 5, 2)], 0)).violations == []
    )
    # ... but not go further back, and the run number never decreases.
    assert checked(([message("a", 4, 1), message("a", 3, 2)], 0)).violations
    assert checked(([message("a", 4, 2), message("a", 5, 1)], 0)).violations
    assert checked(([message("a", 4, 1), message("a", 4, 1)], 0)).violations
    # A restart does not lose published messages: a gap still needs a reported loss.
    assert checked(([message("a", 4, 1), message("a", 6, 2)], 0)).violations


def test_a_reconnection_explains_gaps_but_not_disorder() -> None:
    checker = StreamChecker("test")
    checker.begin_session()
    checker.envelope([message("a", 1)], 0, 0)
    checker.begin_session()
    checker.envelope([message("a", 50, 2)], 0, 0)
    checker.begin_session()
    checker.envelope([message("a", 40, 2)], 0, 0)
    checker.finish()
    assert checker.session_gaps == 1
    assert len(checker.violations) == 1
    assert "not increasing" in checker.violations[0]


def test_astrid_sub_reports_losses_after_the_messages() -> None:
    checker = StreamChecker("cli", report_after=True)
    checker.begin_session()
    checker.line_message(message("a", 1))
    checker.line_message(message("a", 4))
    checker.line_loss(2)
    checker.finish()
    assert checker.violations == []
    checker = StreamChecker("cli", report_after=True)
    checker.begin_session()
    checker.line_message(message("a", 1))
    checker.line_message(message("a", 4))
    checker.begin_session()  # the session ended without a report
    checker.finish()
    assert checker.violations


def test_leftovers_are_found(tmp_path: Path) -> None:
    workspace, home = tmp_path / "ws", tmp_path / "home"
    workspace.mkdir()
    since = time.time() - 1
    stray = subprocess.Popen(["sleep", "30"], cwd=workspace)
    own = {os.getpid()}
    try:
        sampler = _Sampler(os.getpid())
        assert [pid for pid, _ in _leftovers(sampler, workspace, home, own, since)] == [stray.pid]
        # An older process in the workspace is not one of the tree's.
        assert _leftovers(sampler, workspace, home, own, time.time() + 5) == []
    finally:
        stray.kill()
        stray.wait()
    assert _leftovers(sampler, workspace, home, own, since) == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20260101"))
    report = run_chaos(
        tmp_path / "home", capsules=4, duration=20, kill_rate=1.0, seed=seed, broker_every=8
    )
    print(report.summary())
    assert report.failures == [], report.summary()
    assert report.kills["worker"] > 0
    assert report.kills["broker"] > 0
    assert report.kills["host"] > 0
