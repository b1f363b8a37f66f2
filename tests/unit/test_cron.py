"""broker.cron and the cron syscalls, without processes: schedules, persistence, limits, firing.

Firing is driven with ``CronScheduler.fire_due`` and a recording invoker; sessions are real
:class:`CapsuleSession` objects registered in a real kernel over a real ``state.db``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from astrid_core.capsule_abi import GuestInvocation
from astrid_core.dirs import AstridHome
from astrid_core.manifest import parse_manifest
from astrid_core.wire import HelloInfo
from broker.cron import (
    MAX_JOBS_PER_CAPSULE,
    TRIGGER_EXPORT,
    CronLimitReached,
    CronScheduler,
    Schedule,
    ScheduleError,
)
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.kernel import Kernel
from broker.kvstore import KvStore
from broker.sessions import CapsuleSession, InvocationFailed
from broker.syscalls.system import astrid_cron_cancel, astrid_cron_schedule

MiB = 1024 * 1024
FIELDS = (
    "expected 5 fields (minute hour day-of-month month day-of-week), 6 with a seconds field "
    "last, or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
)


def local(*args: int) -> float:
    """Unix time of a local wall-clock time."""
    return datetime(*args).timestamp()  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Fixtures


class Recorder:
    """An invoker that records triggers; ``hold`` keeps them in flight, ``fail`` makes them trap."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, GuestInvocation, dict[str, Any]]] = []
        self.hold: asyncio.Event | None = None
        self.fail: str | None = None

    async def invoke(
        self, session: CapsuleSession, export: str, data: bytes, caller: dict[str, Any]
    ) -> bytes:
        self.calls.append((session.name, export, GuestInvocation.decode(data), caller))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise InvocationFailed(self.fail)
        return b""


MANIFEST = """
[package]
name = "{name}"
version = "0.1.0"

[[component]]
file = "x.wasm"
{extra}
"""


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.kernel = self.new_kernel()
        self.recorder = Recorder()
        self.kernel.invoker = self.recorder
        self._generation = 0

    def new_kernel(self) -> Kernel:
        home = AstridHome.from_path(self.root / "home")
        (self.root / "ws").mkdir(exist_ok=True)
        home.logs_dir().mkdir(parents=True, exist_ok=True)
        return Kernel(home, self.root / "ws", KvStore(home.state_db_path()), b"k" * 32)

    def session(self, name: str = "cap", extra: str = "", has_run: bool = False) -> CapsuleSession:
        self._generation += 1
        manifest = parse_manifest(
            MANIFEST.format(name=name, extra=extra), self.root / name / "Capsule.toml"
        )
        return CapsuleSession(
            kernel=self.kernel,
            identity=f"{name}-{self._generation}".encode(),
            info=HelloInfo(name, str(self.root / name), self._generation, 1, has_run),
            manifest=manifest,
            config={},
            gate=CapabilityGate(name, manifest.capabilities, self.root / "ws"),
            log=self.kernel.capsule_log(name),
            global_root=None,
        )

    def connect(self, session: CapsuleSession) -> CapsuleSession:
        self.kernel.sessions.add(session)
        for hook in self.kernel.on_connect:
            hook(session)
        return session

    def disconnect(self, session: CapsuleSession) -> None:
        session.closed = True
        self.kernel.sessions.remove(session)
        for hook in self.kernel.on_disconnect:
            hook(session)

    def log(self, name: str = "cap") -> list[str]:
        path = self.kernel.home.logs_dir() / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []

    def rows(self) -> list[tuple[str, str, str, bytes]]:
        db = self.kernel.kv.connection
        rows = db.execute("SELECT capsule, name, schedule, payload FROM cron_jobs ORDER BY 1, 2")
        return [(c, n, s, bytes(p)) for c, n, s, p in rows]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.kernel.close()


def run(world: World, body: Callable[[CronScheduler], Any]) -> Any:
    """Run ``body(scheduler)`` (sync or async) inside an event loop, then close the scheduler."""

    async def main() -> Any:
        scheduler = world.kernel.service(CronScheduler)
        try:
            result = body(scheduler)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        finally:
            await scheduler.aclose()

    return asyncio.run(main())


def settle() -> Any:
    """Let fire-and-forget triggers run."""
    return asyncio.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", (2025, 1, 6, 12, 7, 30), (2025, 1, 6, 12, 15)),
        ("*/15 * * * *", (2025, 1, 6, 12, 15), (2025, 1, 6, 12, 30)),
        ("0 9 * * 1-5", (2025, 1, 3, 9, 0), (2025, 1, 6, 9, 0)),  # Friday -> Monday
        ("0 0 1 * *", (2025, 1, 31, 23, 59), (2025, 2, 1, 0, 0)),
        ("0 0 29 2 *", (2025, 3, 1), (2028, 2, 29)),
        ("@hourly", (2025, 1, 6, 12, 0, 1), (2025, 1, 6, 13, 0)),
        ("@DAILY", (2025, 1, 6, 12), (2025, 1, 7)),
        ("@weekly", (2025, 1, 6, 12), (2025, 1, 12)),  # Sunday
        ("@monthly", (2025, 1, 6), (2025, 2, 1)),
        ("@yearly", (2025, 1, 6), (2026, 1, 1)),
        ("* * * * * *", (2025, 1, 6, 12, 0, 0), (2025, 1, 6, 12, 0, 1)),
        ("* * * * * */10", (2025, 1, 6, 12, 0, 3), (2025, 1, 6, 12, 0, 10)),
        ("30 12 * * * 15", (2025, 1, 6, 12, 0), (2025, 1, 6, 12, 30, 15)),
    ],
)
def test_next_fire_time(expression: str, after: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert Schedule.parse(expression).next_after(local(*after)) == local(*expected)


def test_next_fire_time_is_strictly_after_and_ignores_fractions() -> None:
    schedule = Schedule.parse("* * * * * *")
    base = local(2025, 1, 6, 12, 0, 0)
    assert schedule.next_after(base + 0.25) == base + 1
    assert schedule.next_after(base + 1) == base + 2


@pytest.fixture
def berlin() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.usefixtures("berlin")
def test_local_time_across_daylight_saving_changes() -> None:
    daily = Schedule.parse("30 2 * * *")
    # 2025-10-26: 02:30 happens twice (03:00 CEST -> 02:00 CET); the job fires once.
    first = daily.next_after(local(2025, 10, 25, 12))
    assert first == 1761438600  # 2025-10-26 00:30 UTC = 02:30 CEST
    assert daily.next_after(first) == 1761528600  # 2025-10-27 01:30 UTC = 02:30 CET
    # 2025-03-30: 02:30 does not exist (02:00 CET -> 03:00 CEST); it fires after the jump.
    assert daily.next_after(local(2025, 3, 29, 12)) == 1743298200  # 01:30 UTC = 03:30 CEST


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", FIELDS),
        ("* * * *", FIELDS),
        ("* * * * * * *", FIELDS),
        ("0 0 1 1 * 60", "[0 0 1 1 * 60] is not acceptable, out of range"),
        ("@reboot", FIELDS),
        ("@every 5m", FIELDS),
        ("H * * * *", "hashed (H) and random (R) fields are not supported"),
        ("0 r/2 * * *", "hashed (H) and random (R) fields are not supported"),
        ("1,H(0-5) * * * *", "hashed (H) and random (R) fields are not supported"),
        ("0 0 30 2 *", "it never fires"),
        ("0 0 31 4,6 *", "it never fires"),
        ("60 * * * *", "[60 * * * *] is not acceptable, out of range"),
        ("*/0 * * * *", "[*/0 * * * *] step '0' in field 0 is not acceptable"),
        ("* * * * 8", "[* * * * 8] is not acceptable, out of range"),
        ("nope * * * *", "[nope * * * *] is not acceptable"),
    ],
)
def test_unusable_schedules(expression: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as info:
        Schedule.parse(expression)
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(
    "expression",
    ["0 0 1 1 *", "0 0 L * *", "0 0 * * 5#2", "0 9 * JAN,MAR MON-FRI", " * *  * * * ", "@midnight"],
)
def test_usable_schedules(expression: str) -> None:
    assert Schedule.parse(expression).text == expression


# --------------------------------------------------------------------------------------------
# Guest jobs: persistence, replacement, cancel, limit


def test_jobs_persist_across_a_new_scheduler(world: World) -> None:
    def schedule(scheduler: CronScheduler) -> None:
        scheduler.schedule("cap", "a", Schedule.parse("*/5 * * * *"), b"payload-a")
        scheduler.schedule("cap", "b", Schedule.parse("@daily"), b"")
        scheduler.schedule("other", "a", Schedule.parse("* * * * * *"), b"\x00\xff")

    run(world, schedule)
    world.kernel.close()
    world.kernel = world.new_kernel()  # a new connection, as after a broker restart

    jobs = run(world, lambda s: s.jobs())
    assert [(j.capsule, j.name, j.schedule, j.trigger, j.payload, j.manifest) for j in jobs] == [
        ("cap", "a", "*/5 * * * *", "a", b"payload-a", False),
        ("cap", "b", "@daily", "b", b"", False),
        ("other", "a", "* * * * * *", "a", b"\x00\xff", False),
    ]
    now = time.time()
    assert all(now < j.next_at <= now + 86400 for j in jobs)


def test_a_stored_job_with_an_unusable_schedule_is_not_loaded(world: World) -> None:
    run(world, lambda s: s.schedule("cap", "ok", Schedule.parse("@hourly"), b""))
    world.kernel.kv.connection.execute(
        "INSERT INTO cron_jobs VALUES ('cap', 'bad', 'not a schedule', x'')"
    )
    assert [j.name for j in run(world, lambda s: s.jobs())] == ["ok"]
    assert [r[1] for r in world.rows()] == ["bad", "ok"]  # kept, untouched


def test_scheduling_an_existing_name_replaces_it(world: World) -> None:
    def body(scheduler: CronScheduler) -> list[Any]:
        scheduler.schedule("cap", "job", Schedule.parse("@hourly"), b"one")
        scheduler.schedule("cap", "job", Schedule.parse("* * * * * *"), b"two")
        return scheduler.jobs("cap")

    (job,) = run(world, body)
    assert (job.schedule, job.payload) == ("* * * * * *", b"two")
    assert world.rows() == [("cap", "job", "* * * * * *", b"two")]


def test_cancel_removes_the_job_and_is_idempotent(world: World) -> None:
    def body(scheduler: CronScheduler) -> list[Any]:
        scheduler.schedule("cap", "job", Schedule.parse("@hourly"), b"")
        scheduler.schedule("other", "job", Schedule.parse("@hourly"), b"")
        assert scheduler.cancel("cap", "job") is True
        assert scheduler.cancel("cap", "job") is False
        assert scheduler.cancel("cap", "never") is False
        return scheduler.jobs()

    assert [(j.capsule, j.name) for j in run(world, body)] == [("other", "job")]
    assert world.rows() == [("other", "job", "@hourly", b"")]
    assert run(world, lambda s: [j.capsule for j in s.jobs()]) == ["other"]


def test_the_per_capsule_job_limit(world: World) -> None:
    hourly = Schedule.parse("@hourly")

    def body(scheduler: CronScheduler) -> None:
        for i in range(MAX_JOBS_PER_CAPSULE):
            scheduler.schedule("cap", f"job{i}", hourly, b"")
        with pytest.raises(CronLimitReached) as info:
            scheduler.schedule("cap", "one-more", hourly, b"")
        assert str(info.value) == "cron job limit reached (64 per capsule)"
        scheduler.schedule("cap", "job7", Schedule.parse("@daily"), b"replaced")  # no new job
        scheduler.schedule("other", "job0", hourly, b"")  # another capsule's own limit
        scheduler.cancel("cap", "job0")
        scheduler.schedule("cap", "one-more", hourly, b"")

    run(world, body)
    assert len([r for r in world.rows() if r[0] == "cap"]) == MAX_JOBS_PER_CAPSULE


def test_manifest_entries_do_not_count_against_the_limit(world: World) -> None:
    extra = "".join(
        f'[[cron]]\nname = "m{i}"\nschedule = "@hourly"\naction = "a"\n' for i in range(3)
    )

    def body(scheduler: CronScheduler) -> None:
        world.connect(world.session(extra=extra))
        for i in range(MAX_JOBS_PER_CAPSULE):
            scheduler.schedule("cap", f"job{i}", Schedule.parse("@hourly"), b"")
        assert len(scheduler.jobs("cap")) == MAX_JOBS_PER_CAPSULE + 3

    run(world, body)


# --------------------------------------------------------------------------------------------
# Manifest entries


def test_manifest_entries_are_registered_on_connect_and_dropped_on_disconnect(
    world: World,
) -> None:
    extra = """
[[cron]]
name = "beat"
schedule = "* * * * * *"
action = "on-beat"

[[cron]]
name = "broken"
schedule = "61 * * * *"
action = "x"

[[cron]]
name = "beat"
schedule = "@daily"
action = "again"
"""

    def body(scheduler: CronScheduler) -> None:
        scheduler.schedule("cap", "beat", Schedule.parse("@hourly"), b"guest")
        session = world.connect(world.session(extra=extra))
        jobs = scheduler.jobs("cap")
        assert [(j.name, j.trigger, j.manifest, j.schedule) for j in jobs] == [
            ("beat", "on-beat", True, "* * * * * *"),
            ("beat", "beat", False, "@hourly"),
        ]
        assert scheduler.cancel("cap", "beat") is True  # the guest job only
        assert [j.manifest for j in scheduler.jobs("cap")] == [True]
        world.disconnect(session)
        assert scheduler.jobs("cap") == []

    run(world, body)
    assert world.rows() == []
    log = world.log()
    assert log[0].endswith(
        " WARN   cap[1] [[cron]] 'broken' skipped: invalid cron schedule '61 * * * *': "
        "[61 * * * *] is not acceptable, out of range"
    )
    assert log[1].endswith(" WARN   cap[1] [[cron]] 'beat' skipped: duplicate name")


def test_a_replaced_session_keeps_its_manifest_jobs(world: World) -> None:
    extra = '[[cron]]\nname = "m"\nschedule = "@hourly"\naction = "a"\n'

    def body(scheduler: CronScheduler) -> None:
        old = world.connect(world.session(extra=extra))
        # The router closes the old session first, then registers the new one.
        world.disconnect(old)
        world.connect(world.session(extra=extra.replace("@hourly", "@daily")))
        assert [(j.name, j.schedule) for j in scheduler.jobs()] == [("m", "@daily")]

    run(world, body)


# --------------------------------------------------------------------------------------------
# Firing


def test_a_due_guest_job_invokes_the_trigger_with_its_payload(world: World) -> None:
    async def body(scheduler: CronScheduler) -> None:
        world.connect(world.session())
        scheduler.schedule("cap", "job", Schedule.parse("* * * * * *"), b'{"x":1}')
        (job,) = scheduler.jobs()
        assert scheduler.fire_due(job.next_at - 0.001) == 0
        assert scheduler.fire_due(job.next_at) == 1
        await settle()
        (after,) = scheduler.jobs()
        assert after.next_at == job.next_at + 1

    run(world, body)
    assert world.recorder.calls == [
        ("cap", TRIGGER_EXPORT, GuestInvocation("job", b'{"x":1}'), {}),
    ]


def test_a_due_manifest_job_invokes_the_trigger_with_its_action(world: World) -> None:
    extra = '[[cron]]\nname = "heartbeat"\nschedule = "* * * * * *"\naction = "beat"\n'

    async def body(scheduler: CronScheduler) -> None:
        world.connect(world.session(extra=extra))
        (job,) = scheduler.jobs()
        scheduler.fire_due(job.next_at)
        await settle()

    run(world, body)
    assert world.recorder.calls == [("cap", TRIGGER_EXPORT, GuestInvocation("beat", b""), {})]


def test_missed_runs_are_not_replayed(world: World) -> None:
    async def body(scheduler: CronScheduler) -> None:
        world.connect(world.session())
        scheduler.schedule("cap", "job", Schedule.parse("* * * * * *"), b"")
        (job,) = scheduler.jobs()
        late = job.next_at + 3600.5
        assert scheduler.fire_due(late) == 1
        await settle()
        assert scheduler.jobs()[0].next_at == job.next_at + 3601

    run(world, body)
    assert len(world.recorder.calls) == 1


def test_a_job_whose_capsule_is_not_connected_is_skipped_and_logged_once(world: World) -> None:
    async def body(scheduler: CronScheduler) -> None:
        session = world.connect(world.session())
        scheduler.schedule("cap", "job", Schedule.parse("* * * * * *"), b"")
        world.disconnect(session)
        for _ in range(3):
            scheduler.fire_due(scheduler.jobs()[0].next_at)
        await settle()
        world.connect(world.session())  # a new load: the next miss is logged again
        scheduler.fire_due(scheduler.jobs()[0].next_at)
        await settle()
        world.disconnect(world.kernel.sessions.by_name("cap"))  # type: ignore[arg-type]
        scheduler.fire_due(scheduler.jobs()[0].next_at)

    run(world, body)
    assert len(world.recorder.calls) == 1
    skipped = [line for line in world.log() if "skipped" in line]
    assert len(skipped) == 2
    assert skipped[0].endswith(
        " WARN   cap[1] cron job 'job' skipped: capsule 'cap' is not running "
        "(missed runs are not replayed)"
    )
    assert " cap[2] " in skipped[1]


def test_a_run_loop_capsule_is_never_invoked_and_warned_about_once(world: World) -> None:
    extra = '[[cron]]\nname = "tick"\nschedule = "* * * * * *"\naction = "tick"\n'

    async def body(scheduler: CronScheduler) -> None:
        world.connect(world.session(extra=extra, has_run=True))
        for _ in range(3):
            scheduler.fire_due(scheduler.jobs()[0].next_at)
        await settle()

    run(world, body)
    assert world.recorder.calls == []
    (line,) = world.log()
    assert line.endswith(
        " WARN   cap[1] cron job 'tick' cannot run: a run-loop capsule cannot be invoked "
        "through astrid_cron_trigger"
    )


def test_at_most_one_run_of_a_job_is_in_flight(world: World) -> None:
    async def body(scheduler: CronScheduler) -> None:
        world.recorder.hold = asyncio.Event()
        world.connect(world.session())
        scheduler.schedule("cap", "slow", Schedule.parse("* * * * * *"), b"")
        scheduler.schedule("cap", "other", Schedule.parse("* * * * * *"), b"")
        for _ in range(3):
            assert scheduler.fire_due(max(j.next_at for j in scheduler.jobs())) in (0, 2)
            await settle()
        assert len(world.recorder.calls) == 2  # one run of each, the others skipped
        world.recorder.hold.set()
        await settle()
        world.recorder.hold = None
        assert scheduler.fire_due(max(j.next_at for j in scheduler.jobs())) == 2
        await settle()

    run(world, body)
    assert len(world.recorder.calls) == 4
    overlaps = [line for line in world.log() if "still running" in line]
    assert sorted(line.split(" INFO   cap[1] ")[1] for line in overlaps) == [
        "cron job 'other' is still running; overlapping runs are skipped",
        "cron job 'slow' is still running; overlapping runs are skipped",
    ]


def test_a_failed_trigger_is_written_to_the_capsule_log(world: World) -> None:
    async def body(scheduler: CronScheduler) -> None:
        world.recorder.fail = "function not found: astrid_cron_trigger"
        world.connect(world.session())
        scheduler.schedule("cap", "job", Schedule.parse("* * * * * *"), b"")
        scheduler.fire_due(scheduler.jobs()[0].next_at)
        await settle()
        # Not stuck in flight: the next tick runs again.
        assert scheduler.fire_due(scheduler.jobs()[0].next_at) == 1
        await settle()

    run(world, body)
    failures = [line for line in world.log() if "failed" in line]
    assert len(failures) == 2
    assert failures[0].endswith(
        " ERROR  cap[1] cron job 'job' failed: function not found: astrid_cron_trigger"
    )


def test_the_scheduler_task_fires_due_jobs_on_its_own(world: World) -> None:
    async def body(scheduler: CronScheduler) -> None:
        world.connect(world.session())
        scheduler.start()
        await asyncio.sleep(0.05)  # asleep with nothing to do
        scheduler.schedule("cap", "job", Schedule.parse("* * * * * *"), b"p")  # re-plans
        deadline = time.monotonic() + 5
        while len(world.recorder.calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    started = time.monotonic()
    run(world, body)
    assert len(world.recorder.calls) >= 2
    assert time.monotonic() - started < 4
    assert world.kernel.on_connect == [] and world.kernel.on_disconnect == []


# --------------------------------------------------------------------------------------------
# The syscalls: every limit and error text


def _call(world: World, handler: Callable[..., None], *args: bytes) -> str | None:
    """Run a cron syscall for capsule 'cap'; the trap text, or None if it succeeded."""

    def body(_scheduler: CronScheduler) -> str | None:
        session = world.kernel.sessions.by_name("cap") or world.connect(world.session())
        try:
            handler(session, *args)
        except SyscallError as exc:
            return exc.text
        return None

    result: str | None = run(world, body)
    return result


@pytest.mark.parametrize(
    ("name", "schedule", "payload", "text"),
    [
        (b"", b"@daily", b"", "invalid cron job name '': must be 1 to 128 bytes"),
        (
            b"n" * 129,
            b"@daily",
            b"",
            "invalid cron job name: 129 bytes exceeds the limit of 128 bytes",
        ),
        (
            b"has space",
            b"@daily",
            b"",
            "invalid cron job name 'has space': only [A-Za-z0-9_.-] are allowed",
        ),
        (
            b"caf\xc3\xa9",
            b"@daily",
            b"",
            "invalid cron job name 'café': only [A-Za-z0-9_.-] are allowed",
        ),
        (
            b"bad\xff",
            b"@daily",
            b"",
            "invalid cron job name 'bad\ufffd': only [A-Za-z0-9_.-] are allowed",
        ),
        (b"a/b", b"@daily", b"", "invalid cron job name 'a/b': only [A-Za-z0-9_.-] are allowed"),
        (
            b"job",
            b"*" * 257,
            b"",
            "invalid cron schedule: 257 bytes exceeds the limit of 256 bytes",
        ),
        (
            b"job",
            b"* * * * \xff",
            b"",
            "invalid cron schedule: not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 8",
        ),
        (b"job", b"* * * *", b"", f"invalid cron schedule '* * * *': {FIELDS}"),
        (
            b"job",
            b"H * * * *",
            b"",
            "invalid cron schedule 'H * * * *': hashed (H) and random (R) fields are not supported",
        ),
        (
            b"job",
            b"60 * * * *",
            b"",
            "invalid cron schedule '60 * * * *': [60 * * * *] is not acceptable, out of range",
        ),
        (b"job", b"0 0 30 2 *", b"", "invalid cron schedule '0 0 30 2 *': it never fires"),
        (
            b"job",
            b"@daily",
            b"x" * (MiB + 1),
            "memory allocation of 1048577 bytes exceeds maximum allowed limit of 1048576 bytes",
        ),
    ],
    ids=[
        "name-empty",
        "name-129",
        "name-space",
        "name-non-ascii",
        "name-non-utf8",
        "name-slash",
        "schedule-257",
        "schedule-non-utf8",
        "schedule-fields",
        "schedule-hashed",
        "schedule-range",
        "schedule-never",
        "payload-1MiB+1",
    ],
)
def test_cron_schedule_errors(
    world: World, name: bytes, schedule: bytes, payload: bytes, text: str
) -> None:
    assert _call(world, astrid_cron_schedule, name, schedule, payload) == text
    assert world.rows() == []


def test_cron_schedule_accepts_the_limits(world: World) -> None:
    name = b"Az09_.-" + b"n" * 121
    schedule = b"* * * * *" + b" " * 247
    assert _call(world, astrid_cron_schedule, name, schedule, b"p" * MiB) is None
    ((capsule, stored, text, payload),) = world.rows()
    assert (capsule, stored, text, len(payload)) == ("cap", name.decode(), schedule.decode(), MiB)


def test_cron_schedule_limit_text(world: World) -> None:
    for i in range(MAX_JOBS_PER_CAPSULE):
        assert _call(world, astrid_cron_schedule, f"j{i}".encode(), b"@daily", b"") is None
    assert (
        _call(world, astrid_cron_schedule, b"j64", b"@daily", b"")
        == "cron job limit reached (64 per capsule)"
    )
    assert _call(world, astrid_cron_schedule, b"j0", b"@hourly", b"new") is None


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (b"", "invalid cron job name '': must be 1 to 128 bytes"),
        (b"n" * 129, "invalid cron job name: 129 bytes exceeds the limit of 128 bytes"),
        (b"x*", "invalid cron job name 'x*': only [A-Za-z0-9_.-] are allowed"),
    ],
    ids=["empty", "129", "star"],
)
def test_cron_cancel_errors(world: World, name: bytes, text: str) -> None:
    assert _call(world, astrid_cron_cancel, name) == text


def test_cron_cancel_of_an_unknown_name_is_a_no_op(world: World) -> None:
    assert _call(world, astrid_cron_schedule, b"keep", b"@daily", b"") is None
    assert _call(world, astrid_cron_cancel, b"unknown") is None
    assert _call(world, astrid_cron_cancel, b"keep") is None
    assert _call(world, astrid_cron_cancel, b"keep") is None
    assert world.rows() == []


def test_storage_errors_trap(world: World) -> None:
    def body(_scheduler: CronScheduler) -> list[str]:
        session = world.connect(world.session())
        world.kernel.kv.connection.execute("DROP TABLE cron_jobs")
        texts = []
        for handler, args in (
            (astrid_cron_schedule, (b"job", b"@daily", b"")),
            (astrid_cron_cancel, (b"job",)),
        ):
            with pytest.raises(SyscallError) as info:
                handler(session, *args)  # type: ignore[operator]
            texts.append(info.value.text)
        return texts

    assert run(world, body) == [
        "cron_schedule failed: no such table: cron_jobs",
        "cron_cancel failed: no such table: cron_jobs",
    ]
