"""Lifecycle: readiness (§2.5), interceptor handles (§2.2), capability checks (§2.14);
elicitation and secrets arrive with their issue."""

from __future__ import annotations

from astrid_core.serde import Fields, SerdeError, dumps, loads, parse_uuid_strict
from broker.capsule_ipc import CapsuleIpc
from broker.errors import SyscallError, guard
from broker.sessions import CapsuleSession


def astrid_signal_ready(session: CapsuleSession) -> None:
    """Mark a run-loop capsule ready; a no-op for other capsules. Idempotent, never fails."""
    if session.info.has_run:
        session.ready = True


def astrid_get_interceptor_handles(session: CapsuleSession) -> bytes:
    """``[{"handle_id","action","topic"}...]`` of the auto-subscribed interceptors; never fails."""
    handles = session.extension(CapsuleIpc).interceptor_handles
    return dumps([handle.to_json() for handle in handles]).encode()


MAX_CAPABILITY_REQUEST = 1024


def astrid_check_capsule_capability(session: CapsuleSession, request: bytes) -> bytes:
    """``{"allowed": bool}``: whether the capsule whose instance UUID is ``source_uuid`` (the
    ``source_id`` of its IPC messages) declares ``capability``. Only ``allow_prompt_injection``
    is known; anything unknown is simply not allowed. No gate (§2.14)."""
    try:
        fields = Fields(loads(guard(request, MAX_CAPABILITY_REQUEST)), "request")
        source_uuid = fields.string("source_uuid")
        capability = fields.string("capability")
    except SerdeError as exc:
        raise SyscallError(f"invalid capability check request: {exc}") from None
    allowed = False
    if capability == "allow_prompt_injection":
        try:
            target = session.kernel.sessions.by_uuid(parse_uuid_strict(source_uuid))
        except ValueError:
            target = None
        allowed = target is not None and target.manifest.capabilities.allow_prompt_injection
    return b'{"allowed":true}' if allowed else b'{"allowed":false}'
