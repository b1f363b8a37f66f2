"""``astrid pub`` and ``astrid sub`` through the real command line against a real broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Client, Runtime

pytestmark = pytest.mark.integration

ASTRID = Path(sys.executable).parent / "astrid"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
PUBLISHED = re.compile(r"^published to (\S+) \((\d+) subscriptions? reached\)$")


def astrid(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ASTRID), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def no_traceback(result: subprocess.CompletedProcess[str] | tuple[str, str]) -> None:
    stdout, stderr = (result.stdout, result.stderr) if not isinstance(result, tuple) else result
    assert "Traceback" not in stdout + stderr, stdout + stderr


def pub(home: Path, topic: str, payload: str) -> int:
    """Publish with the CLI; returns how many subscriptions it reached."""
    result = astrid(home, "pub", topic, payload)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    match = PUBLISHED.match(result.stdout.strip())
    assert match is not None, result.stdout
    assert match.group(1) == topic
    return int(match.group(2))


def pub_when_subscribed(home: Path, topic: str, payload: str, timeout: float = 15) -> None:
    """Publish until it reaches a subscription (a publish nobody receives is lost, not queued)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pub(home, topic, payload) >= 1:
            return
        time.sleep(0.1)
    raise AssertionError(f"no subscriber for {topic} within {timeout} s")


class Sub:
    """``astrid sub`` running in the background."""

    def __init__(self, home: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(ASTRID), "--home", str(home), "sub", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, timeout: float = 30) -> tuple[int, list[dict[str, Any]], str]:
        stdout, stderr = self.process.communicate(timeout=timeout)
        no_traceback((stdout, stderr))
        lines = [json.loads(line) for line in stdout.splitlines()]
        return self.process.returncode, lines, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def subs() -> Iterator[list[Sub]]:
    started: list[Sub] = []
    yield started
    for sub in started:
        sub.kill()


def test_sub_prints_one_json_line_per_published_message(runtime: Runtime, subs: list[Sub]) -> None:
    home = runtime.home
    sub = Sub(home, "demo.*", "--count", "2", "--timeout", "10")
    subs.append(sub)
    pub_when_subscribed(home, "demo.first", '{"hello": "wörld"}')
    assert pub(home, "demo.second.deeper", '{"type": "user_input", "text": "hi"}') == 1
    code, lines, stderr = sub.finish()
    assert code == 0, stderr
    assert stderr == ""
    assert [m["topic"] for m in lines] == ["demo.first", "demo.second.deeper"]
    assert lines[0]["payload"] == {"type": "custom", "data": {"hello": "wörld"}}
    assert lines[1]["payload"] == {"type": "user_input", "text": "hi", "session_id": "default"}
    for message in lines:
        assert list(message) == ["topic", "payload", "signature", "source_id", "timestamp"]
        assert message["signature"] is None
        assert UUID_RE.match(message["source_id"])
        assert RFC3339_Z.match(message["timestamp"])


def test_sub_stops_at_its_timeout(runtime: Runtime, subs: list[Sub]) -> None:
    home = runtime.home
    started = time.monotonic()
    result = astrid(home, "sub", "quiet.*", "--timeout", "0.5")
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == ("", "")
    result = astrid(home, "sub", "quiet.*", "--count", "1", "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stderr == "astrid: timed out after 0.5 s with 0 of 1 messages\n"
    assert time.monotonic() - started < 20


def test_sub_sees_many_messages_in_publish_order(runtime: Runtime, subs: list[Sub]) -> None:
    home = runtime.home
    sub = Sub(home, "order.x", "--count", "20", "--timeout", "15")
    subs.append(sub)
    pub_when_subscribed(home, "order.x", "0")
    client = Client(home)
    try:
        for i in range(1, 20):
            client.request("bus.publish", {"topic": "order.x", "payload": i})
    finally:
        client.close()
    code, lines, stderr = sub.finish()
    assert code == 0, stderr
    assert [m["payload"]["data"] for m in lines] == list(range(20))


def test_sub_reports_lost_messages_on_stderr(runtime: Runtime, subs: list[Sub]) -> None:
    """A stopped subscriber falls more than 1024 messages behind; the CLI says so."""
    home = runtime.home
    sub = Sub(home, "flood.x", "--timeout", "8")
    subs.append(sub)
    pub_when_subscribed(home, "flood.x", '"start"')
    os.kill(sub.process.pid, signal.SIGSTOP)
    client = Client(home)
    try:
        filler = "f" * 2048
        for i in range(3000):
            client.request("bus.publish", {"topic": "flood.x", "payload": {"i": i, "f": filler}})
    finally:
        client.close()
        os.kill(sub.process.pid, signal.SIGCONT)
    code, lines, stderr = sub.finish()
    assert code == 0, stderr
    lost = [int(n) for n in re.findall(r"astrid: (\d+) message\(s\) lost", stderr)]
    assert lost and sum(lost) > 0, stderr
    assert len(lines) + sum(lost) == 3001
    received = [m["payload"]["data"] for m in lines[1:]]
    assert [r["i"] for r in received] == sorted(r["i"] for r in received)


def test_pub_refuses_invalid_json_with_a_usage_error(runtime: Runtime) -> None:
    result = astrid(runtime.home, "pub", "demo.x", "{not json")
    assert result.returncode == 2
    assert "invalid JSON payload" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            ("pub", "demo..x", "{}"),
            "Topic contains empty segments (consecutive dots, leading/trailing dots, or is empty)",
        ),
        (("pub", "a.b.c.d.e.f.g.h.i", "{}"), "Topic exceeds maximum allowed segments (8)"),
        (("pub", "t" * 257, "{}"), "Topic exceeds maximum allowed length (256 bytes)"),
        (
            ("sub", "a.*.b", "--timeout", "1"),
            "Wildcard `*` is only supported as the last segment (e.g. `foo.bar.*`). "
            "Mid-segment wildcards like `a.*.b` are not supported by the event bus.",
        ),
        (
            ("sub", ".a", "--timeout", "1"),
            "Topic pattern contains empty segments (consecutive dots, leading/trailing dots, "
            "or is empty)",
        ),
        (
            ("sub", "a.b.c.d.e.f.g.h.i", "--timeout", "1"),
            "Topic pattern exceeds maximum allowed segments (8)",
        ),
    ],
    ids=[
        "pub-empty-segment",
        "pub-9-segments",
        "pub-257",
        "sub-mid-wildcard",
        "sub-empty",
        "sub-9",
    ],
)
def test_invalid_topics_are_refused_with_the_spec_text(
    runtime: Runtime, args: tuple[str, ...], text: str
) -> None:
    result = astrid(runtime.home, *args)
    assert result.returncode == 1
    assert result.stderr == f"astrid: {text}\n"
    assert result.stdout == ""
    no_traceback(result)


@pytest.mark.parametrize(
    "args", [("pub", "demo.x", "{}"), ("sub", "demo.*", "--timeout", "1")], ids=["pub", "sub"]
)
def test_no_broker_is_a_clear_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    home = tmp_path / "no-broker"
    home.mkdir()
    result = astrid(home, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("astrid: the astrid broker is not running"), result.stderr
    assert result.stderr.count("\n") == 1
    no_traceback(result)


def test_sub_reports_a_broker_that_goes_away(runtime: Runtime, subs: list[Sub]) -> None:
    home = runtime.home
    sub = Sub(home, "gone.*", "--timeout", "20")
    subs.append(sub)
    pub_when_subscribed(home, "gone.x", "1")
    assert runtime.broker is not None
    runtime.broker.process.terminate()
    runtime.broker.process.wait(10)
    code, lines, stderr = sub.finish()
    assert code == 1
    assert len(lines) == 1
    assert stderr.startswith("astrid: lost the connection to the broker"), stderr


def test_sub_interrupted_exits_130_quietly(runtime: Runtime, subs: list[Sub]) -> None:
    home = runtime.home
    sub = Sub(home, "int.*", "--timeout", "20")
    subs.append(sub)
    pub_when_subscribed(home, "int.x", "1")
    sub.process.send_signal(signal.SIGINT)
    code, lines, stderr = sub.finish()
    assert code == 130
    assert len(lines) == 1
    assert stderr == ""
