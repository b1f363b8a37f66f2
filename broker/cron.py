"""Cron (DESIGN §6.10): scheduled invocations of a capsule's ``astrid_cron_trigger`` export.

Two kinds of job, both keyed by capsule and name:

* **Guest jobs**, created by ``astrid_cron_schedule`` and removed by ``astrid_cron_cancel``. They
  live in the ``cron_jobs`` table of ``state.db`` (capsule, name, schedule, payload) and survive
  broker and supervisor restarts. The trigger input is ``{"name": <job name>, "arguments":
  <payload bytes>}``.
* **Manifest jobs**, the capsule's ``[[cron]]`` entries. They are registered when the capsule
  connects and dropped when it leaves; they are never written to the table and cannot be
  cancelled by the guest. The trigger input is ``{"name": <entry's action>, "arguments": []}``.
  An entry with an invalid schedule is skipped with a warning in the capsule's log.

Schedules are standard 5-field cron expressions (minute hour day-of-month month day-of-week),
evaluated in the broker's local time zone by ``croniter``; the aliases ``@yearly``,
``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight`` and ``@hourly``; and, as an
astrid extension, croniter's optional sixth field: seconds, written last (``* * * * * *`` fires
every second). Hashed (``H``) and random (``R``) fields are refused.

One asyncio task sleeps until the earliest due job (re-planned whenever jobs change, and at least
once a minute so that a wall-clock jump is noticed), then fires every due job:

* the capsule is not connected: the run is skipped, and the first skip since the capsule was
  last connected is logged in its log (missed runs are never replayed);
* the capsule is a run loop: it cannot be invoked; a warning is logged once per job and load;
* the job's previous run is still in flight: the tick is skipped (at most one run of a job at a
  time; logged once per job and load);
* otherwise the trigger is invoked, fire-and-forget, queued behind the capsule's other
  invocations; a failure is written to the capsule's log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from croniter import CroniterError, croniter

from astrid_core.capsule_abi import GuestInvocation
from astrid_core.logfile import capsule_tag
from broker.kernel import Kernel, KernelService
from broker.sessions import CapsuleSession, InvocationFailed

log = logging.getLogger("astrid.broker")

#: The guest export that a due job invokes.
TRIGGER_EXPORT: Final = "astrid_cron_trigger"
#: Guest jobs one capsule may hold (``[[cron]]`` entries do not count).
MAX_JOBS_PER_CAPSULE: Final = 64
#: Job names: 1 to 128 bytes of ``[A-Za-z0-9_.-]``.
MAX_NAME_LEN: Final = 128
#: Schedule expressions, in UTF-8 bytes.
MAX_SCHEDULE_LEN: Final = 256
#: The payload handed back to the guest as the trigger's ``arguments``.
MAX_PAYLOAD_LEN: Final = 1024 * 1024

ALIASES: Final = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

_FIELDS_REASON: Final = (
    "expected 5 fields (minute hour day-of-month month day-of-week), 6 with a seconds field "
    f"last, or one of {', '.join(ALIASES)}"
)
_HASHED = re.compile(r"[hr](?:\(|/|$)", re.IGNORECASE)
#: Wall-clock candidates examined per computation: enough to step over a repeated DST hour of a
#: job that fires every second.
_MAX_CANDIDATES: Final = 4000
#: Longest sleep before the plan is recomputed.
_MAX_SLEEP_S: Final = 60.0

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS cron_jobs ("
    " capsule TEXT NOT NULL, name TEXT NOT NULL, schedule TEXT NOT NULL, payload BLOB NOT NULL,"
    " PRIMARY KEY (capsule, name)) WITHOUT ROWID"
)


class ScheduleError(ValueError):
    """A schedule expression that cannot be used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CronLimitReached(Exception):
    """The capsule already holds :data:`MAX_JOBS_PER_CAPSULE` guest jobs."""

    def __init__(self) -> None:
        super().__init__(f"cron job limit reached ({MAX_JOBS_PER_CAPSULE} per capsule)")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated cron expression; build it with :meth:`parse`."""

    text: str

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Validate ``text``; raises :class:`ScheduleError` (also if it never fires)."""
        fields = text.split()
        if len(fields) == 1 and fields[0].lower() in ALIASES:
            pass
        elif len(fields) not in (5, 6):
            raise ScheduleError(_FIELDS_REASON)
        elif any(_HASHED.match(part) for f in fields for part in f.split(",")):
            raise ScheduleError("hashed (H) and random (R) fields are not supported")
        try:
            croniter(text)
        except CroniterError as exc:
            raise ScheduleError(str(exc)) from None
        schedule = cls(text)
        schedule.next_after(time.time())
        return schedule

    def next_after(self, after: float) -> float:
        """The first time (Unix seconds) strictly after ``after`` at which the schedule fires.

        Fields are matched against local wall-clock time; a wall time that occurs twice (the hour
        repeated when daylight saving time ends) fires once, a skipped one fires after the
        transition. Raises :class:`ScheduleError` if no such time exists.
        """
        try:
            it = croniter(self.text, datetime.fromtimestamp(after))
            for _ in range(_MAX_CANDIDATES):
                when = it.get_next(datetime).timestamp()
                if when > after:
                    return when
        except CroniterError:
            pass
        raise ScheduleError("it never fires")


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A read-only view of a job."""

    capsule: str
    name: str
    schedule: str
    #: What ``astrid_cron_trigger`` receives as ``name``: the job name, or a manifest entry's
    #: action.
    trigger: str
    payload: bytes
    manifest: bool
    next_at: float


_Key = tuple[str, bool, str]


@dataclass(eq=False)
class _Job:
    capsule: str
    name: str
    schedule: Schedule
    trigger: str
    payload: bytes
    manifest: bool
    next_at: float
    # Each of these is logged once, until the capsule connects again.
    missed_logged: bool = False
    run_loop_logged: bool = False
    overlap_logged: bool = False

    @property
    def key(self) -> _Key:
        return (self.capsule, self.manifest, self.name)

    def info(self) -> JobInfo:
        return JobInfo(
            self.capsule,
            self.name,
            self.schedule.text,
            self.trigger,
            self.payload,
            self.manifest,
            self.next_at,
        )


class CronScheduler(KernelService):
    """The broker's cron: persistent guest jobs, manifest jobs, and the task that fires them.

    Creating it creates the table, loads the stored jobs and hooks into the kernel's capsule
    connections; :meth:`start` starts firing (inside the running loop); :meth:`close` stops.
    """

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._db = kernel.kv.connection
        self._jobs: dict[_Key, _Job] = {}
        self._in_flight: set[_Key] = set()
        self._tags: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._db.execute(_SCHEMA)
        self._load()
        kernel.on_connect.append(self._connected)
        kernel.on_disconnect.append(self._disconnected)
        for session in kernel.sessions:
            self._connected(session)

    def _load(self) -> None:
        now = time.time()
        rows = self._db.execute(
            "SELECT capsule, name, schedule, payload FROM cron_jobs ORDER BY capsule, name"
        ).fetchall()
        for capsule, name, text, payload in rows:
            try:
                schedule = Schedule.parse(text)
            except ScheduleError as exc:
                log.warning(
                    "cron job '%s' of capsule '%s' not loaded: invalid cron schedule '%s': %s",
                    name,
                    capsule,
                    text,
                    exc.reason,
                )
                continue
            job = _Job(
                capsule, name, schedule, name, bytes(payload), False, schedule.next_after(now)
            )
            self._jobs[job.key] = job

    # ----------------------------------------------------------------------------------------
    # Guest jobs

    def schedule(self, capsule: str, name: str, schedule: Schedule, payload: bytes) -> None:
        """Create or replace the guest job ``name`` of ``capsule`` and persist it.

        Raises :class:`CronLimitReached` for a new job beyond the limit, ``sqlite3.Error`` when
        the database refuses the write.
        """
        (others,) = self._db.execute(
            "SELECT COUNT(*) FROM cron_jobs WHERE capsule = ? AND name != ?", (capsule, name)
        ).fetchone()
        if others >= MAX_JOBS_PER_CAPSULE:
            raise CronLimitReached
        self._db.execute(
            "INSERT INTO cron_jobs (capsule, name, schedule, payload) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (capsule, name) DO UPDATE"
            " SET schedule = excluded.schedule, payload = excluded.payload",
            (capsule, name, schedule.text, payload),
        )
        job = _Job(capsule, name, schedule, name, payload, False, schedule.next_after(time.time()))
        self._jobs[job.key] = job
        self._wake.set()

    def cancel(self, capsule: str, name: str) -> bool:
        """Remove the guest job; False if there was none. Raises ``sqlite3.Error``."""
        cursor = self._db.execute(
            "DELETE FROM cron_jobs WHERE capsule = ? AND name = ?", (capsule, name)
        )
        known = self._jobs.pop((capsule, False, name), None) is not None
        self._wake.set()
        return cursor.rowcount > 0 or known

    def jobs(self, capsule: str | None = None) -> list[JobInfo]:
        """The jobs (of ``capsule``, or all), manifest jobs first, then by name."""
        found = [j for j in self._jobs.values() if capsule is None or j.capsule == capsule]
        found.sort(key=lambda j: (j.capsule, not j.manifest, j.name))
        return [job.info() for job in found]

    # ----------------------------------------------------------------------------------------
    # Capsule connections

    def _connected(self, session: CapsuleSession) -> None:
        capsule = session.name
        self._tags[capsule] = session.tag
        self._drop_manifest_jobs(capsule)
        now = time.time()
        for entry in session.manifest.cron_jobs:
            key = (capsule, True, entry.name)
            if key in self._jobs:
                self._note(capsule, "WARN", f"[[cron]] '{entry.name}' skipped: duplicate name")
                continue
            try:
                schedule = Schedule.parse(entry.schedule)
            except ScheduleError as exc:
                self._note(
                    capsule,
                    "WARN",
                    f"[[cron]] '{entry.name}' skipped: invalid cron schedule "
                    f"'{entry.schedule}': {exc.reason}",
                )
                continue
            job = _Job(
                capsule, entry.name, schedule, entry.action, b"", True, schedule.next_after(now)
            )
            self._jobs[key] = job
        for job in self._jobs.values():
            if job.capsule == capsule:
                job.missed_logged = job.run_loop_logged = job.overlap_logged = False
        self._wake.set()

    def _disconnected(self, session: CapsuleSession) -> None:
        if self.kernel.sessions.by_name(session.name) is None:
            self._drop_manifest_jobs(session.name)
            self._wake.set()

    def _drop_manifest_jobs(self, capsule: str) -> None:
        for key in [k for k in self._jobs if k[0] == capsule and k[1]]:
            del self._jobs[key]

    # ----------------------------------------------------------------------------------------
    # Firing

    def start(self) -> None:
        """Start firing jobs (call from inside the running event loop)."""
        if self._runner is None and not self._closed:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="astrid-cron")

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            try:
                self.fire_due(now)
            except Exception:  # the scheduler must outlive any one job
                log.exception("cron: firing due jobs failed")
            delay = self._delay(time.time())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _delay(self, now: float) -> float:
        if not self._jobs:
            return _MAX_SLEEP_S
        earliest = min(job.next_at for job in self._jobs.values())
        return min(max(earliest - now, 0.0), _MAX_SLEEP_S)

    def fire_due(self, now: float) -> int:
        """Fire every job due at ``now`` and plan its next run; returns how many were invoked."""
        started = 0
        for job in list(self._jobs.values()):
            if job.next_at > now:
                continue
            try:
                job.next_at = job.schedule.next_after(max(now, job.next_at))
            except ScheduleError:
                del self._jobs[job.key]
                self._note(job.capsule, "WARN", f"cron job '{job.name}' dropped: it never fires")
            if self._fire(job):
                started += 1
        return started

    def _fire(self, job: _Job) -> bool:
        session = self.kernel.sessions.by_name(job.capsule)
        if session is None or session.closed:
            if not job.missed_logged:
                job.missed_logged = True
                self._note(
                    job.capsule,
                    "WARN",
                    f"cron job '{job.name}' skipped: capsule '{job.capsule}' is not running "
                    "(missed runs are not replayed)",
                )
            return False
        if session.info.has_run:
            if not job.run_loop_logged:
                job.run_loop_logged = True
                self._note(
                    job.capsule,
                    "WARN",
                    f"cron job '{job.name}' cannot run: a run-loop capsule cannot be invoked "
                    f"through {TRIGGER_EXPORT}",
                )
            return False
        if job.key in self._in_flight:
            if not job.overlap_logged:
                job.overlap_logged = True
                self._note(
                    job.capsule,
                    "INFO",
                    f"cron job '{job.name}' is still running; overlapping runs are skipped",
                )
            return False
        self._in_flight.add(job.key)
        data = GuestInvocation(job.trigger, job.payload).encode()
        task = asyncio.get_running_loop().create_task(self._trigger(session, job, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _trigger(self, session: CapsuleSession, job: _Job, data: bytes) -> None:
        try:
            await self.kernel.invoke(session, TRIGGER_EXPORT, data, {})
        except InvocationFailed as exc:
            self._note(job.capsule, "ERROR", f"cron job '{job.name}' failed: {exc.text}")
        except Exception:
            log.exception("cron job '%s' of capsule '%s' failed", job.name, job.capsule)
        finally:
            self._in_flight.discard(job.key)

    def _note(self, capsule: str, level: str, message: str) -> None:
        """A record in the capsule's log (and the broker's, when the log cannot be written)."""
        tag = self._tags.get(capsule) or capsule_tag(capsule, 0)
        try:
            self.kernel.capsule_log(capsule).write_record(level, tag, message)
        except OSError as exc:
            log.warning("capsule '%s': %s (log not written: %s)", capsule, message, exc)

    def close(self) -> None:
        """Stop firing and cancel the runs in flight; idempotent (see :meth:`aclose`)."""
        self._stop()

    async def aclose(self) -> None:
        """Like :meth:`close`, then wait until the runs in flight are cancelled."""
        await asyncio.gather(*self._stop(), return_exceptions=True)

    def _stop(self) -> list[asyncio.Task[None]]:
        if self._closed:
            return []
        self._closed = True
        for hooks, hook in (
            (self.kernel.on_connect, self._connected),
            (self.kernel.on_disconnect, self._disconnected),
        ):
            if hook in hooks:
                hooks.remove(hook)
        tasks = [*self._tasks, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        self._tasks.clear()
        self._runner = None
        return tasks


__all__ = [
    "ALIASES",
    "MAX_JOBS_PER_CAPSULE",
    "MAX_NAME_LEN",
    "MAX_PAYLOAD_LEN",
    "MAX_SCHEDULE_LEN",
    "TRIGGER_EXPORT",
    "CronLimitReached",
    "CronScheduler",
    "JobInfo",
    "Schedule",
    "ScheduleError",
]
