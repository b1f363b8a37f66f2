"""Lifecycle: readiness (§2.5); elicitation, secrets, interceptor handles and capability checks
arrive with their issues."""

from __future__ import annotations

from broker.sessions import CapsuleSession


def astrid_signal_ready(session: CapsuleSession) -> None:
    """Mark a run-loop capsule ready; a no-op for other capsules. Idempotent, never fails."""
    if session.info.has_run:
        session.ready = True
