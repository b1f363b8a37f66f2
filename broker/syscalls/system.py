"""System: logging and the clock (§2.5); hooks, cron and approvals arrive with their issues."""

from __future__ import annotations

import logging
import time

from broker.errors import guard, lossy
from broker.limits import MAX_LOG_LEVEL_LEN, MAX_LOG_MESSAGE_LEN
from broker.sessions import CapsuleSession

log = logging.getLogger("astrid.broker")

_LEVELS = {
    "trace": "TRACE",
    "debug": "DEBUG",
    "warn": "WARN",
    "warning": "WARN",
    "error": "ERROR",
    "err": "ERROR",
}


def log_level(level: str) -> str:
    """The record level of a guest-supplied level name (case-insensitive; unknown = info)."""
    return _LEVELS.get(level.lower(), "INFO")


def astrid_log(session: CapsuleSession, level: bytes, message: bytes) -> None:
    name = lossy(guard(level, MAX_LOG_LEVEL_LEN))
    text = lossy(guard(message, MAX_LOG_MESSAGE_LEN))
    try:
        session.log.write_record(log_level(name), session.tag, text)
    except OSError as exc:  # a full disk must not make the guest trap
        log.warning("cannot write to %s: %s", session.log.path, exc)


def astrid_clock_ms(session: CapsuleSession) -> bytes:
    return str(time.time_ns() // 1_000_000).encode()
