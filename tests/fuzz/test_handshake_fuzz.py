"""Fuzzing the session-token handshake (core.md §7): the decoders of :mod:`astrid_core.session`,
then random bytes and random JSON sent to a real broker's ``sessions/system.sock``.

Properties: the decoders raise ``ValueError`` and nothing else; the broker answers a bad
handshake with one ``error`` response or closes without a word, always within its 5 s handshake
timeout, never lets a wrong token in, and a good client still gets in after every example.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astrid_core import rpc
from astrid_core.session import (
    MAX_HANDSHAKE_SIZE,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeStatus,
    SessionToken,
)
from tests.fuzz.strategies import dumps, json_values
from tests.harness import Client
from tests.security.support import (
    World,
    frame,
    raw_connect,
    read_until_closed,
    split_frames,
    world_fixture,
)

FIELDS = ("token", "protocol_version", "client_version")

hex_tokens = st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=68)
versions = st.integers(-2, 300) | st.sampled_from([1.0, "1", True, None])

#: Objects shaped like a handshake request: the three fields (or some of them, or twice),
#: plausible and implausible values, unknown keys.
request_objects = st.fixed_dictionaries(
    {},
    optional={
        "token": hex_tokens | json_values,
        "protocol_version": versions | json_values,
        "client_version": st.text(max_size=30) | json_values,
        "extra": json_values,
    },
)


def _duplicated(obj: dict[str, Any]) -> bytes:
    """The object with its first field written twice (JSON allows it, the server refuses it)."""
    text = dumps(obj).decode()
    if not obj:
        return text.encode()
    key = next(iter(obj))
    return ("{" + json.dumps(key) + ":" + json.dumps(obj[key]) + "," + text[1:]).encode()


handshake_payloads = st.one_of(
    request_objects.map(dumps),
    request_objects.map(_duplicated),
    json_values.map(dumps),
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
)

#: What a client could write on the socket before reading: a frame, a raw stream, a frame with
#: a lying length, or several frames.
streams = st.one_of(
    handshake_payloads.map(frame),
    st.binary(max_size=64),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
        lambda pair: struct.pack(">I", pair[0]) + pair[1]
    ),
    st.lists(handshake_payloads.map(frame), min_size=2, max_size=3).map(b"".join),
    st.integers(MAX_HANDSHAKE_SIZE - 2, MAX_HANDSHAKE_SIZE + 2).map(
        lambda n: frame(b"{" + b" " * (n - 2) + b"}")
    ),
)


# --------------------------------------------------------------------------------------------
# The decoders


@settings(max_examples=300, deadline=None)
@given(handshake_payloads)
def test_the_request_decoder(payload: bytes) -> None:
    try:
        request = HandshakeRequest.from_json(payload)
    except ValueError:
        return
    assert isinstance(request.token, str) and isinstance(request.client_version, str)
    assert type(request.protocol_version) is int and 0 <= request.protocol_version <= 255


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "status": st.sampled_from(["ok", "error", "OK", ""]) | json_values,
                "protocol_version": versions | json_values,
                "server_version": st.text(max_size=10) | json_values,
                "reason": st.text(max_size=10) | json_values,
            },
        ).map(dumps),
        st.binary(max_size=200),
    )
)
def test_the_response_decoder(payload: bytes) -> None:
    try:
        response = HandshakeResponse.from_json(payload)
    except ValueError:
        return
    assert isinstance(response.status, HandshakeStatus)


@settings(max_examples=200, deadline=None)
@given(hex_tokens | st.text(max_size=80))
def test_the_token_decoder(text: str) -> None:
    try:
        token = SessionToken.from_hex(text)
    except ValueError:
        return
    assert len(token.to_hex()) == 64


# --------------------------------------------------------------------------------------------
# A real broker


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("handshake"), capsules["syscaller"], {})


def _good_client_gets_in(world: World) -> None:
    client = Client(world.home)
    try:
        assert client.request(rpc.Method.PING, {}, timeout=10)["pid"] > 0
    finally:
        client.close()


def _exchange(world: World, data: bytes) -> bytes:
    with raw_connect(world.home) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the broker already closed on a bad length
        return read_until_closed(sock, timeout=10)


def _check_reply(received: bytes) -> None:
    frames = split_frames(received)
    assert len(frames) <= 1, frames
    if frames:
        response = HandshakeResponse.from_json(frames[0])
        assert response.status is HandshakeStatus.ERROR, "a forged handshake got in"
        assert response.reason == "authentication failed" or str(response.reason).startswith(
            "Protocol version mismatch"
        ), response


@pytest.mark.integration
@settings(max_examples=250, deadline=None)
@given(streams)
def test_random_handshakes(world: World, data: bytes) -> None:
    _check_reply(_exchange(world, data))
    _good_client_gets_in(world)


@pytest.mark.integration
@settings(max_examples=100, deadline=None)
@given(request_objects, st.sampled_from(FIELDS))
def test_near_miss_handshakes_with_the_real_token_elsewhere(
    world: World, obj: dict[str, Any], field: str
) -> None:
    """The real token placed in the wrong field, or next to a bad version, never gets in
    unless the whole request is right."""
    token = (world.home / "sessions" / "system.token").read_text()
    obj = dict(obj, **{field: token})
    received = _exchange(world, frame(dumps(obj)))
    right = (
        obj.get("token") == token
        and obj.get("protocol_version") == 1
        and type(obj.get("protocol_version")) is int
        and isinstance(obj.get("client_version"), str)
    )
    frames = split_frames(received)
    if right:
        assert len(frames) == 1 and HandshakeResponse.from_json(frames[0]).is_ok()
    else:
        _check_reply(received)


@pytest.mark.integration
def test_the_broker_is_still_up_after_the_handshakes(world: World) -> None:
    assert world.runtime.broker is not None and world.runtime.broker.process.poll() is None
    _good_client_gets_in(world)
