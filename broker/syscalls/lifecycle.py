"""Lifecycle: readiness (§2.5), interceptor handles (§2.2), capability checks (§2.14),
elicitation and secrets (§2.10)."""

from __future__ import annotations

from collections.abc import Awaitable

from astrid_core.serde import Fields, SerdeError, dumps, loads, parse_uuid_strict, to_str_list
from broker.capsule_ipc import CapsuleIpc
from broker.elicitations import ElicitationService, ElicitField
from broker.errors import SyscallError, guard
from broker.lifecycle_hooks import LIFECYCLE_EXPORTS
from broker.limits import MAX_GUEST_PAYLOAD_LEN, MAX_KEY_LEN
from broker.secrets import SecretError, SecretStore
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


# --------------------------------------------------------------------------------------------
# Elicitation and secrets (§2.10)

_ELICIT_TYPES = ("text", "secret", "select", "array")


def _elicit_field(request: bytes) -> ElicitField:
    try:
        fields = Fields(loads(guard(request, MAX_GUEST_PAYLOAD_LEN)), "request")
        kind = fields.string("type")
        key = fields.string("key")
        description = fields.opt_string("description")
        options = fields.opt("options", to_str_list)
        default = fields.opt_string("default")
    except (SerdeError, ValueError) as exc:
        raise SyscallError(f"invalid elicit request JSON: {exc}") from None
    if kind not in _ELICIT_TYPES:
        raise SyscallError(f"unknown elicit type: {kind}")
    if kind == "select" and not options:
        raise SyscallError("select elicit request requires non-empty options")
    return ElicitField(kind, key, description, tuple(options or ()), default)


def astrid_elicit(session: CapsuleSession, request: bytes) -> Awaitable[bytes]:
    asked = _elicit_field(request)
    current = session.current
    if current is None or current.export not in LIFECYCLE_EXPORTS:
        raise SyscallError(
            "elicit is only available during #[install] or #[upgrade] lifecycle hooks"
        )

    async def wait() -> bytes:
        answer = await session.kernel.service(ElicitationService).elicit(session, asked)
        return dumps(answer).encode()

    return wait()


def astrid_has_secret(session: CapsuleSession, request: bytes) -> bytes:
    try:
        key = Fields(loads(guard(request, MAX_KEY_LEN)), "request").string("key")
    except (SerdeError, ValueError) as exc:
        raise SyscallError(f"invalid has_secret request JSON: {exc}") from None
    try:
        exists = session.kernel.service(SecretStore).exists(session.name, key)
    except SecretError as exc:
        raise SyscallError(f"failed to check for secret: {exc}") from None
    return b'{"exists":true}' if exists else b'{"exists":false}'
