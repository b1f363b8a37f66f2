"""The broker's client socket, ``sessions/system.sock`` (core.md §7): wrong session tokens, wrong
protocol versions, oversized and malformed handshakes, requests before the handshake, a crowd of
silent clients, and a client running under another UID.

Every refusal is the documented one (an ``error`` response, or a drop without a word), the
connection is closed afterwards, and the operator's own client still gets in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from astrid_core import rpc
from astrid_core.dirs import AstridHome
from astrid_core.session import (
    MAX_HANDSHAKE_SIZE,
    HandshakeResponse,
    HandshakeStatus,
    SessionToken,
)
from supervisor import client as client_module
from supervisor.client import ClientError, SystemClient
from tests.harness import Client
from tests.security.support import (
    World,
    frame,
    raw_connect,
    read_until_closed,
    split_frames,
    world_fixture,
)

pytestmark = pytest.mark.integration

AUTH_FAILED = "authentication failed"


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path]) -> Iterator[World]:
    # Directly under /tmp, so that another user can be let in by opening just this tree.
    base = Path(tempfile.mkdtemp(prefix="astrid-sec-", dir="/tmp"))
    try:
        yield from world_fixture(base, capsules["syscaller"], {})
    finally:
        shutil.rmtree(base, ignore_errors=True)


def token(world: World) -> str:
    return (world.home / "sessions" / "system.token").read_text()


def handshake(world: World, payload: bytes) -> list[bytes]:
    """Send one handshake frame, then read until the broker closes: the frames it sent."""
    with raw_connect(world.home) as sock:
        sock.sendall(frame(payload))
        return split_frames(read_until_closed(sock))


def request(token_hex: object, version: object = 1, client: object = "attacker/1") -> bytes:
    return json.dumps(
        {"token": token_hex, "protocol_version": version, "client_version": client}
    ).encode()


def rejection(frames: list[bytes]) -> str | None:
    (only,) = frames
    response = HandshakeResponse.from_json(only)
    assert response.status is HandshakeStatus.ERROR
    return response.reason


def operator_gets_in(world: World) -> None:
    client = Client(world.home)
    try:
        assert client.request(rpc.Method.PING, {}, timeout=10)["pid"] > 0
    finally:
        client.close()


@pytest.fixture
def operator(world: World) -> Iterator[None]:
    yield
    operator_gets_in(world)


# --------------------------------------------------------------------------------------------
# Wrong tokens


def _flip_last(hex_token: str) -> str:
    return hex_token[:-1] + ("0" if hex_token[-1] != "0" else "1")


@pytest.mark.parametrize(
    "forge",
    [
        lambda real: SessionToken.generate().to_hex(),
        _flip_last,
        lambda real: real[:-1],
        lambda real: real + "0",
        lambda real: " " + real,
        lambda real: real + "\n",
        lambda real: "",
        lambda real: "0" * 64,
        lambda real: real[:32] + "g" * 32,
        lambda real: real.encode().hex()[:64],
    ],
    ids=[
        "random",
        "one-digit-off",
        "short",
        "long",
        "leading-space",
        "trailing-newline",
        "empty",
        "zeros",
        "non-hex",
        "re-encoded",
    ],
)
def test_a_wrong_session_token(world: World, operator: None, forge: Callable[[str], str]) -> None:
    forged = forge(token(world))
    assert rejection(handshake(world, request(forged))) == AUTH_FAILED


@pytest.mark.parametrize("value", [None, 42, ["t"], {"hex": "t"}, True])
def test_a_token_of_the_wrong_type_is_dropped(world: World, operator: None, value: object) -> None:
    assert handshake(world, request(value)) == []


def test_the_wrong_token_reply_does_not_depend_on_how_wrong(world: World) -> None:
    """A malformed token and a well-formed wrong one get byte-identical replies."""
    malformed = handshake(world, request("nope"))
    wrong = handshake(world, request(SessionToken.generate().to_hex()))
    assert malformed == wrong


# --------------------------------------------------------------------------------------------
# Protocol versions


@pytest.mark.parametrize("version", [0, 2, 255])
def test_a_wrong_protocol_version(world: World, operator: None, version: int) -> None:
    # Checked before the token, so even the right token gets only the version mismatch.
    reason = rejection(handshake(world, request(token(world), version)))
    assert reason == (
        f"Protocol version mismatch (client={version}, server=1). "
        "Restart the daemon with `astrid daemon restart`."
    )


@pytest.mark.parametrize("version", [-1, 256, 1.0, "1", True, None])
def test_a_malformed_protocol_version_is_dropped(
    world: World, operator: None, version: object
) -> None:
    assert handshake(world, request(token(world), version)) == []


# --------------------------------------------------------------------------------------------
# Malformed and oversized handshakes


def test_an_oversized_handshake_is_dropped_unread(world: World, operator: None) -> None:
    padded = json.loads(request(token(world)))
    padded["client_version"] = "x" * MAX_HANDSHAKE_SIZE
    assert handshake(world, json.dumps(padded).encode()) == []


def test_a_huge_announced_length_is_dropped_at_once(world: World, operator: None) -> None:
    started = time.monotonic()
    with raw_connect(world.home) as sock:
        sock.sendall(b"\xff\xff\xff\xff")  # 4 GiB announced, nothing sent
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'{"token":"a","token":"b","protocol_version":1,"client_version":"x"}',
        b"[" * 5000,
        rpc.encode_request(1, rpc.Method.PING, {}),
    ],
    ids=["empty", "not-utf8", "array", "null", "duplicate-field", "deep-nesting", "json-rpc"],
)
def test_a_malformed_handshake_is_dropped(world: World, operator: None, payload: bytes) -> None:
    assert handshake(world, payload) == []


def test_a_good_handshake_followed_by_garbage(world: World, operator: None) -> None:
    """After a good handshake an oversized frame closes that connection only."""
    with raw_connect(world.home) as sock:
        sock.sendall(frame(request(token(world))))
        sock.sendall(b"\x7f\xff\xff\xff")  # far over the 10 MiB limit of client frames
        frames = split_frames(read_until_closed(sock))
    assert len(frames) == 1 and HandshakeResponse.from_json(frames[0]).is_ok()


# --------------------------------------------------------------------------------------------
# Crowds and stalls


def test_silent_clients_neither_lock_out_the_operator_nor_stay_forever(world: World) -> None:
    crowd = [raw_connect(world.home, timeout=15) for _ in range(64)]
    try:
        half = crowd[:32]
        for sock in half:
            sock.sendall(b"\x00\x00\x00\x40{")  # a partial handshake, then silence
        started = time.monotonic()
        operator_gets_in(world)
        assert time.monotonic() - started < 2
        for sock in crowd:  # dropped after the 5 s handshake timeout, without a word
            assert read_until_closed(sock, timeout=15) == b""
        assert time.monotonic() - started < 12
    finally:
        for sock in crowd:
            sock.close()


# --------------------------------------------------------------------------------------------
# Another user


def _nobody_python() -> str | None:
    if os.geteuid() != 0:
        return None
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            done = subprocess.run([candidate, "-c", "pass"], user=65534, cwd="/", check=False)
            if done.returncode == 0:
                return candidate
    return None


STRANGER = r"""
import json, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno, flush=True)
    sys.exit(0)
request = json.dumps({"token": sys.argv[2], "protocol_version": 1, "client_version": "x"})
sock.settimeout(15)
try:
    sock.sendall(struct.pack(">I", len(request)) + request.encode())
    data = sock.recv(4096)
except (BrokenPipeError, ConnectionResetError):  # dropped before or while we spoke
    data = b""
print("reply" if data else "dropped", flush=True)
"""


def _stranger(python: str, world: World) -> str:
    done = subprocess.run(
        [python, "-c", STRANGER, str(world.home / "sessions" / "system.sock"), token(world)],
        user=65534,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_client_of_another_uid(world: World, operator: None) -> None:
    python = _nobody_python()
    if python is None:
        pytest.skip("needs root and a Python interpreter user 65534 may run")
    # The private sessions/ directory keeps it out entirely.
    assert _stranger(python, world).startswith("refused 13")
    # Opened up (as a careless operator might), the UID check still drops it, right token
    # and all, before the handshake.
    sessions = world.home / "sessions"
    modes = {path: path.stat().st_mode & 0o777 for path in (world.base, world.home, sessions)}
    sock_path = sessions / "system.sock"
    sock_mode = sock_path.stat().st_mode & 0o777
    try:
        for path in modes:
            path.chmod(0o755)
        sock_path.chmod(0o666)
        assert _stranger(python, world) == "dropped"
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
        sock_path.chmod(sock_mode)


# --------------------------------------------------------------------------------------------
# The CLI's client and a token replaced by a restarted broker


def _stale_then_real(stale_reads: int) -> Callable[[Path], SessionToken]:
    """A token reader that returns a stale token ``stale_reads`` times (what a client read
    just before a restarted broker replaced the file), then the file's token."""
    reads = {"n": 0}

    def read(path: Path) -> SessionToken:
        reads["n"] += 1
        if reads["n"] <= stale_reads:
            return SessionToken.generate()
        return SessionToken.read_from_file(path)

    return read


def test_the_cli_client_retries_once_when_the_token_was_replaced_meanwhile(
    world: World, operator: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "_read_token", _stale_then_real(1))
    with SystemClient.connect(AstridHome.from_path(world.home), timeout=5) as client:
        assert client.request(rpc.Method.PING, {}, timeout=10)["pid"] > 0


def test_the_cli_client_reports_a_token_the_broker_refuses(
    world: World, operator: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = SessionToken.generate()
    monkeypatch.setattr(client_module, "_read_token", lambda path: stale)
    with pytest.raises(ClientError, match=f"the broker refused the connection: {AUTH_FAILED}"):
        SystemClient.connect(AstridHome.from_path(world.home), timeout=5)
