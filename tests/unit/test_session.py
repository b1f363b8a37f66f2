"""Tests for astrid_core.session (spec/core.md §7 and the session_token.rs tests of §12)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core import session
from astrid_core.session import (
    MAX_CLIENT_FRAME,
    MAX_HANDSHAKE_SIZE,
    MAX_SERVER_FRAME,
    PROTOCOL_VERSION,
    SERVER_VERSION,
    FrameError,
    HandshakeRejected,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeStatus,
    SessionToken,
    client_handshake,
    encode_frame,
    peer_uid,
    read_frame,
    recv_frame,
    send_frame,
    server_handshake,
    write_frame,
)

T = TypeVar("T")

token_bytes = st.binary(min_size=32, max_size=32)

# --- ports of session_token.rs --------------------------------------------------------------


def test_generate_produces_unique_tokens() -> None:
    """Mirrors session_token.rs `generate_produces_unique_tokens`."""
    assert not SessionToken.generate().ct_eq(SessionToken.generate())


def test_hex_round_trip() -> None:
    """Mirrors session_token.rs `hex_round_trip`."""
    token = SessionToken.generate()
    hex_text = token.to_hex()
    assert len(hex_text) == 64
    assert SessionToken.from_hex(hex_text).ct_eq(token)


def test_from_hex_rejects_wrong_length() -> None:
    """Mirrors session_token.rs `from_hex_rejects_wrong_length`."""
    with pytest.raises(ValueError, match="64 chars") as info:
        SessionToken.from_hex("abcd")
    assert str(info.value) == "session token hex must be 64 chars, got 4"


def test_from_hex_rejects_invalid_chars() -> None:
    """Mirrors session_token.rs `from_hex_rejects_invalid_chars`."""
    with pytest.raises(ValueError, match="invalid hex digit") as info:
        SessionToken.from_hex("zz" * 32)
    assert str(info.value) == "invalid hex digit: 0x7a"


def test_constant_time_eq_matches() -> None:
    """Mirrors session_token.rs `constant_time_eq_matches`."""
    token = SessionToken.generate()
    assert token.ct_eq(SessionToken.from_hex(token.to_hex()))


def test_constant_time_eq_rejects_different() -> None:
    """Mirrors session_token.rs `constant_time_eq_rejects_different`."""
    assert not SessionToken.generate().ct_eq(SessionToken.generate())


def test_file_round_trip(tmp_path: Path) -> None:
    """Mirrors session_token.rs `file_round_trip`."""
    path = tmp_path / "system.token"
    token = SessionToken.generate()
    token.write_to_file(path)
    assert SessionToken.read_from_file(path).ct_eq(token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_debug_redacts_token() -> None:
    """Mirrors session_token.rs `debug_redacts_token`."""
    token = SessionToken.generate()
    assert repr(token) == "SessionToken([REDACTED])"
    assert token.to_hex() not in repr(token)
    assert str(token) == "SessionToken([REDACTED])"


def test_handshake_response_ok_serializes() -> None:
    """Mirrors session_token.rs `handshake_response_ok_serializes`."""
    response = HandshakeResponse.ok()
    assert response.status is HandshakeStatus.OK
    assert response.is_ok()
    assert response.protocol_version == PROTOCOL_VERSION
    assert response.reason is None
    obj = json.loads(response.to_json())
    assert obj["status"] == "ok"
    assert "reason" not in obj


def test_handshake_response_error_serializes() -> None:
    """Mirrors session_token.rs `handshake_response_error_serializes`."""
    response = HandshakeResponse.error("bad token")
    assert response.status is HandshakeStatus.ERROR
    assert not response.is_ok()
    assert response.reason == "bad token"
    obj = json.loads(response.to_json())
    assert obj["status"] == "error"
    assert obj["reason"] == "bad token"


# --- SessionToken: further tests ------------------------------------------------------------


@given(token_bytes)
def test_hex_round_trip_property(raw: bytes) -> None:
    token = SessionToken(raw)
    hex_text = token.to_hex()
    assert hex_text == raw.hex()
    assert SessionToken.from_hex(hex_text).ct_eq(token)
    assert SessionToken.from_hex(hex_text.upper()).ct_eq(token)


@given(token_bytes)
def test_repr_is_redacted_property(raw: bytes) -> None:
    token = SessionToken(raw)
    for text in (repr(token), str(token), f"{token}", f"{token!r}"):
        assert text == "SessionToken([REDACTED])"
    request = HandshakeRequest(token.to_hex(), PROTOCOL_VERSION, "0.2.0")
    assert token.to_hex() not in repr(request)
    assert token.to_hex() not in str(request)


@given(token_bytes, token_bytes)
def test_ct_eq_property(a: bytes, b: bytes) -> None:
    assert SessionToken(a).ct_eq(SessionToken(a))
    assert SessionToken(a).ct_eq(SessionToken(b)) == (a == b)


def test_from_hex_counts_utf8_bytes() -> None:
    # 32 characters but 64 bytes: passes the length check, fails on the first byte of "é".
    with pytest.raises(ValueError, match=r"^invalid hex digit: 0xc3$"):
        SessionToken.from_hex("é" * 32)
    with pytest.raises(ValueError, match="got 65"):
        SessionToken.from_hex("a" * 63 + "ab")
    with pytest.raises(ValueError, match=r"got 63$"):
        SessionToken.from_hex("é" + "a" * 61)


def test_from_hex_reports_first_bad_byte_and_does_not_strip() -> None:
    with pytest.raises(ValueError, match=r"^invalid hex digit: 0x67$"):
        SessionToken.from_hex("a" * 10 + "gz" + "a" * 52)
    with pytest.raises(ValueError, match=r"^invalid hex digit: 0x20$"):
        SessionToken.from_hex(" " + "a" * 63)
    with pytest.raises(ValueError, match="got 65"):
        SessionToken.from_hex("a" * 64 + "\n")
    with pytest.raises(ValueError, match=r"^invalid hex digit: 0xed$"):
        SessionToken.from_hex("\ud800" + "a" * 61)  # a lone surrogate, as json.loads can produce


def test_token_has_no_value_equality_or_hash() -> None:
    token = SessionToken.generate()
    other = SessionToken.from_hex(token.to_hex())
    with pytest.raises(TypeError, match="ct_eq"):
        _ = token == other
    with pytest.raises(TypeError, match="ct_eq"):
        _ = token != other
    with pytest.raises(TypeError):
        hash(token)
    with pytest.raises(TypeError):
        pickle.dumps(token)
    with pytest.raises(TypeError):
        copy.copy(token)
    assert token in [token]  # identity still works


def test_token_constructor_checks_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SessionToken(b"\x00" * 31)


def test_write_to_file_format_and_atomicity(tmp_path: Path) -> None:
    path = tmp_path / "system.token"
    path.write_text("old contents")
    path.chmod(0o644)
    token = SessionToken.generate()
    token.write_to_file(path)
    assert path.read_bytes() == token.to_hex().encode()  # no trailing newline
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # replaced, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["system.token"]


def test_write_to_file_mode_ignores_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        SessionToken.generate().write_to_file(tmp_path / "t.token")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.token").stat().st_mode) == 0o600


def test_write_to_file_removes_temp_when_rename_fails(tmp_path: Path) -> None:
    target = tmp_path / "system.token"
    target.mkdir()
    (target / "occupied").touch()  # rename over a non-empty directory fails
    with pytest.raises(OSError):
        SessionToken.generate().write_to_file(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["system.token"]


def test_write_to_file_uses_pid_temp_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    SessionToken.generate().write_to_file(tmp_path / "system.token")
    assert seen == [f"system.{os.getpid()}.tmp"]


def test_write_to_file_refuses_symlinked_temp(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / f"system.{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(OSError):
        SessionToken.generate().write_to_file(tmp_path / "system.token")
    assert victim.read_text() == "keep"


def test_read_from_file_trims_whitespace(tmp_path: Path) -> None:
    token = SessionToken.generate()
    path = tmp_path / "t"
    path.write_text(f"\u3000 {token.to_hex()}\r\n")
    assert SessionToken.read_from_file(path).ct_eq(token)


def test_read_from_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "t"
    with pytest.raises(FileNotFoundError):
        SessionToken.read_from_file(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError):
        SessionToken.read_from_file(path)
    path.write_text("abcd\n")
    with pytest.raises(ValueError, match="64 chars"):
        SessionToken.read_from_file(path)


# --- handshake messages ---------------------------------------------------------------------

HEX = "ab" * 32


def test_request_golden_json() -> None:
    request = HandshakeRequest(token=HEX, protocol_version=1, client_version="0.2.0")
    assert request.to_json() == (
        f'{{"token":"{HEX}","protocol_version":1,"client_version":"0.2.0"}}'
    )
    assert HandshakeRequest.from_json(request.to_json()) == request
    assert HandshakeRequest.from_json(request.to_json().encode()) == request
    assert repr(request) == (
        "HandshakeRequest(token=[REDACTED], protocol_version=1, client_version='0.2.0')"
    )


def test_request_json_keeps_non_ascii_raw() -> None:
    request = HandshakeRequest(token=HEX, protocol_version=1, client_version="värsion")
    assert '"client_version":"värsion"' in request.to_json()


def test_response_golden_json() -> None:
    assert HandshakeResponse.ok().to_json() == (
        '{"status":"ok","protocol_version":1,"server_version":"0.2.0"}'
    )
    assert HandshakeResponse.error("nope").to_json() == (
        '{"status":"error","protocol_version":1,"server_version":"0.2.0","reason":"nope"}'
    )
    assert SERVER_VERSION == "0.2.0"
    assert PROTOCOL_VERSION == 1


def test_response_from_json() -> None:
    ok = HandshakeResponse.from_json('{"status":"ok","protocol_version":7,"server_version":"x"}')
    assert ok == HandshakeResponse(HandshakeStatus.OK, 7, "x", None)
    err = HandshakeResponse.from_json(
        b'{"reason":null,"status":"error","protocol_version":1,"server_version":"y","z":[1]}'
    )
    assert err == HandshakeResponse(HandshakeStatus.ERROR, 1, "y")
    assert HandshakeResponse.from_json(HandshakeResponse.error("r").to_json()).reason == "r"


@pytest.mark.parametrize(
    "text",
    [
        '{"token":"t","protocol_version":1.0,"client_version":"c"}',
        '{"token":"t","protocol_version":1e0,"client_version":"c"}',
        '{"token":"t","protocol_version":true,"client_version":"c"}',
        '{"token":"t","protocol_version":256,"client_version":"c"}',
        '{"token":"t","protocol_version":-1,"client_version":"c"}',
        '{"token":"t","protocol_version":"1","client_version":"c"}',
        '{"token":"t","protocol_version":NaN,"client_version":"c"}',
        '{"token":"t","protocol_version":null,"client_version":"c"}',
        '{"token":null,"protocol_version":1,"client_version":"c"}',
        '{"token":"t","protocol_version":1}',
        '{"protocol_version":1,"client_version":"c"}',
        '{"token":"t","token":"u","protocol_version":1,"client_version":"c"}',
        '["t",1,"c"]',
        '"string"',
        "",
        "{",
        "\ufeff{}",
    ],
)
def test_request_from_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        HandshakeRequest.from_json(text)


def test_request_from_json_rejects_non_utf8_and_deep_nesting() -> None:
    with pytest.raises(ValueError):
        HandshakeRequest.from_json(b'{"token":"\xff","protocol_version":1,"client_version":"c"}')
    with pytest.raises(ValueError):
        HandshakeRequest.from_json("[" * 4000)


def test_request_from_json_ignores_unknown_keys_and_accepts_bounds() -> None:
    text = '{"extra":{"a":1},"token":"t","protocol_version":0,"client_version":"c","x":1,"x":2}'
    assert HandshakeRequest.from_json(text) == HandshakeRequest("t", 0, "c")
    text = '{"token":"t","protocol_version":255,"client_version":""}'
    assert HandshakeRequest.from_json(text).protocol_version == 255


@pytest.mark.parametrize(
    "text",
    [
        '{"status":"OK","protocol_version":1,"server_version":"x"}',
        '{"status":"ok","protocol_version":1}',
        '{"status":"ok","protocol_version":1,"server_version":"x","reason":5}',
        '{"status":1,"protocol_version":1,"server_version":"x"}',
    ],
)
def test_response_from_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        HandshakeResponse.from_json(text)


def test_constructors_validate() -> None:
    with pytest.raises(ValueError):
        HandshakeRequest(HEX, 300, "c")
    with pytest.raises(ValueError):
        HandshakeRequest(HEX, True, "c")
    with pytest.raises(ValueError):
        HandshakeResponse("ok", 1, "x")  # type: ignore[arg-type]


@given(st.text(), st.integers(min_value=0, max_value=255), st.text())
def test_request_json_round_trip_property(token: str, version: int, client: str) -> None:
    request = HandshakeRequest(token, version, client)
    assert HandshakeRequest.from_json(request.to_json()) == request


# --- framing --------------------------------------------------------------------------------


def test_frame_limits() -> None:
    assert MAX_HANDSHAKE_SIZE == 4096
    assert MAX_SERVER_FRAME == 10 * 1024 * 1024
    assert MAX_CLIENT_FRAME == 50 * 1024 * 1024


def test_encode_frame() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"{}") == b"\x00\x00\x00\x02{}"
    assert encode_frame(bytearray(300)) == b"\x00\x00\x01\x2c" + bytes(300)


@pytest.fixture
def sock_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        yield a, b


def test_send_and_recv_frame(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair
    send_frame(a, b"hello")
    send_frame(a, b"")
    assert recv_frame(b, 5) == b"hello"
    assert recv_frame(b, 0) == b""


def test_recv_frame_large_payload_in_pieces(
    sock_pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = sock_pair
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=send_frame, args=(a, payload))
    sender.start()
    assert recv_frame(b, MAX_SERVER_FRAME, timeout=10) == payload
    sender.join()


def test_recv_frame_rejects_oversize(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair
    a.sendall(struct.pack(">I", 4097))
    with pytest.raises(FrameError, match="4097 bytes exceeds the limit of 4096") as info:
        recv_frame(b, MAX_HANDSHAKE_SIZE)
    assert isinstance(info.value, ValueError)


def test_recv_frame_eof(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair
    a.sendall(b"\x00\x00")
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError, match="frame length"):
        recv_frame(b, 10)


def test_recv_frame_eof_in_payload(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair
    a.sendall(b"\x00\x00\x00\x05abc")
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError, match=r"payload \(3 of 5 bytes\)"):
        recv_frame(b, 10)


def test_recv_frame_timeout(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair
    a.sendall(b"\x00\x00\x00\x05ab")
    with pytest.raises(TimeoutError):
        recv_frame(b, 10, timeout=0.05)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def test_async_read_and_write_frame(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair

    async def main() -> list[bytes]:
        reader, writer = await asyncio.open_connection(sock=a)
        await write_frame(writer, b"ping")
        got = [await read_frame(reader, 100, timeout=5)]
        got.append(await read_frame(reader, 100))
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError):
            await read_frame(reader, 100)
        writer.close()
        await writer.wait_closed()
        return got

    send_frame(b, b"pong")
    send_frame(b, b"")
    assert run(main()) == [b"pong", b""]
    assert recv_frame(b, 100) == b"ping"


def test_async_read_frame_oversize_and_timeout(
    sock_pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = sock_pair

    async def main() -> None:
        reader, writer = await asyncio.open_connection(sock=a)
        b.sendall(struct.pack(">I", MAX_SERVER_FRAME + 1))
        with pytest.raises(FrameError, match="exceeds the limit"):
            await read_frame(reader, MAX_SERVER_FRAME)
        b.sendall(b"\x00\x00\x00\x09abc")
        with pytest.raises(TimeoutError):
            await read_frame(reader, 100, timeout=0.05)
        writer.close()

    run(main())


# --- handshake over real sockets ------------------------------------------------------------


def raw_exchange(sock: socket.socket, data: bytes, *, end: bool = False) -> bytes:
    """Send ``data`` (then EOF if ``end``), and read all the server sends until it drops us."""
    sock.settimeout(10)
    received = b""
    try:
        if data:
            sock.sendall(data)
        if end:
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may drop the connection while data is still in flight
    return received


def request_frame(token: str, version: int = PROTOCOL_VERSION) -> bytes:
    return encode_frame(HandshakeRequest(token, version, "test/1.0").to_json().encode())


def response_of(data: bytes) -> HandshakeResponse:
    (size,) = struct.unpack(">I", data[:4])
    assert len(data) == 4 + size
    return HandshakeResponse.from_json(data[4:])


async def serve_one(
    token: SessionToken, client: Callable[[socket.socket], T]
) -> tuple[bool, T, bytes | None]:
    """Run ``server_handshake`` on one end of a socketpair and ``client`` (in a thread) on the
    other. After a successful handshake the server echoes one IPC frame."""
    server_sock, client_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with client_sock:
        reader, writer = await asyncio.open_connection(sock=server_sock)
        client_task = asyncio.create_task(asyncio.to_thread(client, client_sock))
        accepted = await server_handshake(reader, writer, token)
        echoed = None
        if accepted:
            echoed = await read_frame(reader, MAX_SERVER_FRAME, timeout=5)
            await write_frame(writer, echoed)
            writer.close()
        else:
            assert writer.is_closing()
        result = await client_task
    return accepted, result, echoed


def test_server_accepts_good_token() -> None:
    token = SessionToken.generate()

    def client(sock: socket.socket) -> bytes:
        sock.sendall(request_frame(token.to_hex().upper()))
        response = recv_frame(sock, MAX_HANDSHAKE_SIZE, timeout=5)
        send_frame(sock, b'{"type":"ping"}')
        return response + b"|" + recv_frame(sock, MAX_CLIENT_FRAME, timeout=5)

    accepted, result, echoed = run(serve_one(token, client))
    assert accepted
    assert echoed == b'{"type":"ping"}'
    response, ipc = result.split(b"|", 1)
    assert response == b'{"status":"ok","protocol_version":1,"server_version":"0.2.0"}'
    assert ipc == b'{"type":"ping"}'


@pytest.mark.parametrize(
    "presented",
    [SessionToken.generate().to_hex(), "zz" * 32, "", "not hex", "ab" * 32 + "\n"],
)
def test_server_rejects_wrong_or_malformed_token(presented: str) -> None:
    token = SessionToken.generate()
    accepted, data, _ = run(serve_one(token, lambda s: raw_exchange(s, request_frame(presented))))
    assert not accepted
    assert response_of(data) == HandshakeResponse.error("authentication failed")


def test_server_rejects_wrong_protocol_version_before_checking_token() -> None:
    token = SessionToken.generate()
    expected = HandshakeResponse.error(
        "Protocol version mismatch (client=2, server=1). "
        "Restart the daemon with `astrid daemon restart`."
    )
    for presented in (token.to_hex(), "garbage"):
        frame = request_frame(presented, 2)
        accepted, data, _ = run(serve_one(token, partial(raw_exchange, data=frame)))
        assert not accepted
        assert response_of(data) == expected
    assert expected.to_json().endswith(
        '"reason":"Protocol version mismatch (client=2, server=1). '
        'Restart the daemon with `astrid daemon restart`."}'
    )


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (struct.pack(">I", 4097) + b"x" * 4097, False),  # oversized handshake
        (struct.pack(">I", 4097), False),  # oversized announcement alone
        (encode_frame(b"{not json"), False),  # garbage JSON
        (encode_frame(b'{"token":"ab","protocol_version":1.0,"client_version":"c"}'), False),
        (encode_frame(b"[" * 4000), False),  # nesting deeper than the recursion limit
        (encode_frame(b""), False),
        (b"\x00\x00", True),  # EOF inside the length prefix
        (b"\x00\x00\x00\x10{", True),  # EOF inside the payload
    ],
    ids=[
        "oversize",
        "oversize-header",
        "garbage",
        "float-version",
        "deep",
        "empty",
        "eof1",
        "eof2",
    ],
)
def test_server_drops_without_response(data: bytes, end: bool) -> None:
    started = time.monotonic()
    accepted, received, _ = run(
        serve_one(SessionToken.generate(), lambda s: raw_exchange(s, data, end=end))
    )
    assert not accepted
    assert received == b""
    assert time.monotonic() - started < 2.5  # dropped at once, not by the 5 s timeout


def test_server_accepts_handshake_of_exactly_4096_bytes() -> None:
    token = SessionToken.generate()
    base = HandshakeRequest(token.to_hex(), 1, "").to_json()
    padded = HandshakeRequest(token.to_hex(), 1, "v" * (4096 - len(base))).to_json().encode()
    assert len(padded) == MAX_HANDSHAKE_SIZE

    def client(sock: socket.socket) -> bytes:
        sock.sendall(encode_frame(padded))
        response = recv_frame(sock, MAX_HANDSHAKE_SIZE, timeout=5)
        send_frame(sock, b"{}")
        recv_frame(sock, 10, timeout=5)
        return response

    accepted, response, _ = run(serve_one(token, client))
    assert accepted
    assert HandshakeResponse.from_json(response).is_ok()


def test_server_drops_silent_client_after_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "SERVER_HANDSHAKE_TIMEOUT", 0.1)
    accepted, received, _ = run(serve_one(SessionToken.generate(), lambda s: raw_exchange(s, b"")))
    assert not accepted
    assert received == b""


def test_client_handshake_against_server() -> None:
    token = SessionToken.generate()

    def client(sock: socket.socket) -> HandshakeResponse:
        sock.settimeout(None)
        response = client_handshake(sock, token, "0.2.0")
        assert sock.gettimeout() is None  # the caller's timeout is restored
        send_frame(sock, b"after")
        assert recv_frame(sock, MAX_CLIENT_FRAME) == b"after"
        return response

    accepted, response, echoed = run(serve_one(token, client))
    assert accepted
    assert response == HandshakeResponse.ok()
    assert echoed == b"after"


def test_client_handshake_rejected_by_server() -> None:
    def client(sock: socket.socket) -> str:
        with pytest.raises(HandshakeRejected) as info:
            client_handshake(sock, SessionToken.generate(), "0.2.0")
        assert info.value.reason == "authentication failed"
        return str(info.value)

    accepted, message, _ = run(serve_one(SessionToken.generate(), client))
    assert not accepted
    assert message == "Daemon rejected connection: authentication failed"


def fake_server(reply: bytes) -> Callable[[socket.socket], bytes]:
    def serve(sock: socket.socket) -> bytes:
        request = recv_frame(sock, MAX_HANDSHAKE_SIZE, timeout=5)
        sock.sendall(reply)
        return request

    return serve


def test_client_handshake_request_and_unknown_error(
    sock_pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = sock_pair
    token = SessionToken.generate()
    reply = encode_frame(b'{"status":"error","protocol_version":9,"server_version":"9"}')
    server = threading.Thread(target=lambda: requests.append(fake_server(reply)(b)))
    requests: list[bytes] = []
    server.start()
    with pytest.raises(HandshakeRejected, match=r"^Daemon rejected connection: unknown error$"):
        client_handshake(a, token, "cli/1")
    server.join()
    assert json.loads(requests[0]) == {
        "token": token.to_hex(),
        "protocol_version": 1,
        "client_version": "cli/1",
    }


def test_client_handshake_ignores_server_versions(
    sock_pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = sock_pair
    reply = encode_frame(b'{"status":"ok","protocol_version":200,"server_version":"x"}')
    server = threading.Thread(target=fake_server(reply), args=(b,))
    server.start()
    assert client_handshake(a, SessionToken.generate(), "c").protocol_version == 200
    server.join()


def test_client_handshake_rejects_oversized_response(
    sock_pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = sock_pair
    server = threading.Thread(target=fake_server(struct.pack(">I", 4097)), args=(b,))
    server.start()
    with pytest.raises(FrameError):
        client_handshake(a, SessionToken.generate(), "c")
    server.join()


@asynccontextmanager
async def unix_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="astrid-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "system.sock")
        server = await asyncio.start_unix_server(handler, path)
        async with server:
            yield path


def test_handshake_over_a_real_unix_socket() -> None:
    token = SessionToken.generate()
    outcomes: list[tuple[int, bool]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        accepted = await server_handshake(reader, writer, token)
        outcomes.append((uid, accepted))
        if accepted:
            await write_frame(writer, await read_frame(reader, MAX_SERVER_FRAME, timeout=5))
            writer.close()
            await writer.wait_closed()

    def connect_and_run(path: str, presented: SessionToken) -> bytes | str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            assert peer_uid(sock) == os.geteuid()
            try:
                client_handshake(sock, presented, "0.2.0")
            except HandshakeRejected as exc:
                return str(exc)
            send_frame(sock, '{"hello":"wörld"}'.encode())
            return recv_frame(sock, MAX_CLIENT_FRAME, timeout=5)

    async def main() -> list[bytes | str]:
        async with unix_server(handler) as path:
            # A failed client does not block the next one.
            bad = await asyncio.to_thread(connect_and_run, path, SessionToken.generate())
            good = await asyncio.to_thread(connect_and_run, path, token)
            return [bad, good]

    bad, good = run(main())
    assert bad == "Daemon rejected connection: authentication failed"
    assert good == '{"hello":"wörld"}'.encode()
    assert outcomes == [(os.geteuid(), False), (os.geteuid(), True)]


def test_peer_uid_on_socketpair(sock_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sock_pair
    assert peer_uid(a) == os.geteuid()
    assert peer_uid(b) == os.geteuid()
