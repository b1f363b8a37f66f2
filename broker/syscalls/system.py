"""System: logging and the clock (§2.5), cron (§2.8, DESIGN §6.10), hooks (§2.9), approvals
(§2.11).

Cron. The reference's cron syscalls are no-ops without limits; these are real (see
:mod:`broker.cron`) and check, in this order, with these trap texts:

``astrid_cron_schedule(name, schedule, payload)`` (void)
    * name empty → ``invalid cron job name '': must be 1 to 128 bytes``;
      longer than 128 bytes → ``invalid cron job name: <n> bytes exceeds the limit of 128 bytes``;
      a byte outside ``[A-Za-z0-9_.-]`` →
      ``invalid cron job name '<name, lossy>': only [A-Za-z0-9_.-] are allowed``.
    * schedule longer than 256 bytes →
      ``invalid cron schedule: <n> bytes exceeds the limit of 256 bytes``; not UTF-8 →
      ``invalid cron schedule: not valid UTF-8: <utf-8 error>``; unusable →
      ``invalid cron schedule '<schedule>': <reason>``, the reason being
      ``expected 5 fields (minute hour day-of-month month day-of-week), 6 with a seconds field
      last, or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly``,
      ``hashed (H) and random (R) fields are not supported``, ``it never fires`` (``0 0 30 2 *``)
      or croniter's own message (``[60 * * * *] is not acceptable, out of range``).
    * payload over 1 MiB → ``memory allocation of <n> bytes exceeds maximum allowed limit of
      1048576 bytes``.
    * a new name when the capsule already holds 64 jobs →
      ``cron job limit reached (64 per capsule)``. Scheduling an existing name replaces its
      schedule and payload (and does not count against the limit).
    * the database refuses the write → ``cron_schedule failed: <error>``.

``astrid_cron_cancel(name)`` (void)
    * the same name checks; cancelling a name that is not scheduled is a no-op (idempotent, like
      ``astrid_kv_delete``); ``[[cron]]`` entries cannot be cancelled (the call is a no-op for
      them). Database errors → ``cron_cancel failed: <error>``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import unicodedata
from collections.abc import Awaitable

from astrid_core.capsule_abi import LogLevel
from astrid_core.serde import Fields, SerdeError, dumps, loads
from broker import hooks
from broker.approvals import ApprovalService
from broker.cron import (
    MAX_JOBS_PER_CAPSULE,
    MAX_NAME_LEN,
    MAX_PAYLOAD_LEN,
    MAX_SCHEDULE_LEN,
    CronLimitReached,
    CronScheduler,
    Schedule,
    ScheduleError,
)
from broker.errors import SyscallError, guard, lossy, utf8_error_text
from broker.limits import MAX_GUEST_PAYLOAD_LEN, MAX_LOG_LEVEL_LEN, MAX_LOG_MESSAGE_LEN
from broker.sessions import CapsuleSession

log = logging.getLogger("astrid.broker")


def astrid_log(session: CapsuleSession, level: bytes, message: bytes) -> None:
    name = lossy(guard(level, MAX_LOG_LEVEL_LEN))
    text = lossy(guard(message, MAX_LOG_MESSAGE_LEN))
    try:
        session.log.write_record(LogLevel.from_guest(name).record_name, session.tag, text)
    except OSError as exc:  # a full disk must not make the guest trap
        log.warning("cannot write to %s: %s", session.log.path, exc)


def astrid_clock_ms(session: CapsuleSession) -> bytes:
    return str(time.time_ns() // 1_000_000).encode()


# --------------------------------------------------------------------------------------------
# Cron

_JOB_NAME = re.compile(rb"[A-Za-z0-9_.-]+")


def _cron_job_name(name: bytes) -> str:
    if not name:
        raise SyscallError(f"invalid cron job name '': must be 1 to {MAX_NAME_LEN} bytes")
    if len(name) > MAX_NAME_LEN:
        raise SyscallError(
            f"invalid cron job name: {len(name)} bytes exceeds the limit of {MAX_NAME_LEN} bytes"
        )
    if not _JOB_NAME.fullmatch(name):
        raise SyscallError(
            f"invalid cron job name '{lossy(name)}': only [A-Za-z0-9_.-] are allowed"
        )
    return name.decode("ascii")


def _cron_schedule(schedule: bytes) -> Schedule:
    if len(schedule) > MAX_SCHEDULE_LEN:
        raise SyscallError(
            f"invalid cron schedule: {len(schedule)} bytes exceeds the limit of "
            f"{MAX_SCHEDULE_LEN} bytes"
        )
    try:
        text = schedule.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError(
            f"invalid cron schedule: not valid UTF-8: {utf8_error_text(schedule)}"
        ) from None
    try:
        return Schedule.parse(text)
    except ScheduleError as exc:
        raise SyscallError(f"invalid cron schedule '{text}': {exc.reason}") from None


def astrid_cron_schedule(
    session: CapsuleSession, name: bytes, schedule: bytes, payload: bytes
) -> None:
    job = _cron_job_name(name)
    parsed = _cron_schedule(schedule)
    guard(payload, MAX_PAYLOAD_LEN)
    scheduler = session.kernel.service(CronScheduler)
    try:
        scheduler.schedule(session.name, job, parsed, payload)
    except CronLimitReached:
        raise SyscallError(f"cron job limit reached ({MAX_JOBS_PER_CAPSULE} per capsule)") from None
    except sqlite3.Error as exc:
        raise SyscallError(f"cron_schedule failed: {exc}") from None


def astrid_cron_cancel(session: CapsuleSession, name: bytes) -> None:
    job = _cron_job_name(name)
    scheduler = session.kernel.service(CronScheduler)
    try:
        scheduler.cancel(session.name, job)
    except sqlite3.Error as exc:
        raise SyscallError(f"cron_cancel failed: {exc}") from None


# --------------------------------------------------------------------------------------------
# Hooks (§2.9)

#: Largest ``astrid_trigger_hook`` request.
MAX_TRIGGER_REQUEST = 1024 * 1024


def astrid_trigger_hook(session: CapsuleSession, request: bytes) -> Awaitable[bytes]:
    """Fan ``{"hook", "payload"}`` out to every other capsule intercepting the hook; a JSON array
    of their JSON answers in completion order (see :func:`broker.hooks.trigger`)."""
    data = guard(request, MAX_TRIGGER_REQUEST)
    try:
        fields = Fields(loads(data), "request")
        hook = fields.string("hook")
        payload = fields.raw("payload")
    except (SerdeError, ValueError) as exc:
        raise SyscallError(f"invalid trigger request: {exc}") from None

    async def fan_out() -> bytes:
        return dumps(await hooks.trigger(session.kernel, session, hook, payload)).encode()

    return fan_out()


# --------------------------------------------------------------------------------------------
# Approvals (§2.11)

MAX_ACTION_LEN = 256
MAX_RESOURCE_LEN = 1024
MAX_RISK_LEVEL_LEN = 64


def _sanitize(text: str, limit: int) -> str:
    """Trimmed, control characters removed, at most ``limit`` characters."""
    return "".join(ch for ch in text.strip() if not unicodedata.category(ch).startswith("Cc"))[
        :limit
    ]


def astrid_request_approval(session: CapsuleSession, request: bytes) -> Awaitable[bytes]:
    try:
        fields = Fields(loads(guard(request, MAX_GUEST_PAYLOAD_LEN)), "request")
        action = fields.string("action")
        resource = fields.string("resource")
        risk_level = fields.string("risk_level")
    except (SerdeError, ValueError) as exc:
        raise SyscallError(f"invalid approval request JSON: {exc}") from None
    if len(action) > MAX_ACTION_LEN:
        raise SyscallError(
            f"approval request action exceeds maximum length ({len(action)} > {MAX_ACTION_LEN})"
        )

    async def ask() -> bytes:
        answer = await session.kernel.service(ApprovalService).request(
            session,
            _sanitize(action, MAX_ACTION_LEN),
            _sanitize(resource, MAX_RESOURCE_LEN),
            _sanitize(risk_level, MAX_RISK_LEVEL_LEN),
        )
        return dumps(answer).encode()

    return ask()
