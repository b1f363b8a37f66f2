"""Sockets and token files with loose permissions (DESIGN §4, §5; core.md §7).

The broker creates ``sessions/`` 0700, ``system.sock``, ``system.token`` and the worker endpoint
0600 (and its secrets key 0600 under ``keys/`` 0700), and repairs what an attacker planted
before it started: a world-writable ``sessions/``, a readable token, symlinks at the token and
socket paths. The ``astrid`` client refuses a token file that group or others may read or write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid_core.dirs import AstridHome
from astrid_core.rpc import Method
from astrid_core.session import SessionToken
from supervisor import astrid_cli
from supervisor.client import ClientError, SystemClient
from tests.harness import Runtime
from tests.security.support import World, world_fixture

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(
        tmp_path_factory.mktemp("perms"), capsules["syscaller"], {"prober": ""}
    )


def test_the_broker_creates_private_files(world: World) -> None:
    sessions = world.home / "sessions"
    assert mode(sessions) == 0o700
    assert stat.S_ISSOCK(os.lstat(sessions / "system.sock").st_mode)
    assert mode(sessions / "system.sock") == 0o600
    assert stat.S_ISREG(os.lstat(sessions / "system.token").st_mode)
    assert mode(sessions / "system.token") == 0o600
    assert mode(sessions / "system.ready") & 0o077 == 0
    endpoint = Path(world.runtime.endpoint.removeprefix("ipc://"))
    assert stat.S_ISSOCK(os.lstat(endpoint).st_mode)
    assert mode(endpoint) == 0o600


def test_the_secrets_key_is_private(world: World) -> None:
    world["prober"].run([("astrid_has_secret", [b'{"key":"anything"}'])])
    keys = world.home / "keys"
    assert mode(keys) == 0o700
    files = list(keys.iterdir())
    assert files
    assert all(mode(path) == 0o600 for path in files)


def test_nothing_under_the_home_is_open_to_others(world: World) -> None:
    assert mode(world.home) & 0o077 == 0
    for name in ("keys", "logs", "sessions"):
        assert mode(world.home / name) == 0o700, name


# --------------------------------------------------------------------------------------------
# Planted before the broker starts


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Runtime, Path]]:
    home, workspace, outside = tmp_path / "home", tmp_path / "ws", tmp_path / "outside"
    for directory in (home, workspace, outside):
        directory.mkdir()
    sessions = home / "sessions"
    sessions.mkdir()
    sessions.chmod(0o777)
    (outside / "victim.txt").write_bytes(b"untouched")
    (sessions / "system.token").symlink_to(outside / "victim.txt")
    (sessions / "system.sock").symlink_to(outside / "victim.txt")
    runtime = Runtime(home, workspace, f"ipc://{tmp_path}/b.ipc")
    runtime.start_broker()
    yield runtime, outside
    runtime.stop()


def test_planted_loose_modes_and_symlinks_are_repaired(planted: tuple[Runtime, Path]) -> None:
    runtime, outside = planted
    sessions = runtime.home / "sessions"
    assert mode(sessions) == 0o700
    token, sock = sessions / "system.token", sessions / "system.sock"
    assert stat.S_ISREG(os.lstat(token).st_mode) and mode(token) == 0o600
    assert stat.S_ISSOCK(os.lstat(sock).st_mode) and mode(sock) == 0o600
    assert (outside / "victim.txt").read_bytes() == b"untouched"
    SessionToken.read_from_file(token)  # a real token, written in place of the link


def test_a_readable_stale_token_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "sessions").mkdir(parents=True)
    stale = SessionToken.generate()
    stale.write_to_file(home / "sessions" / "system.token")
    (home / "sessions" / "system.token").chmod(0o666)
    (tmp_path / "ws").mkdir()
    runtime = Runtime(home, tmp_path / "ws", f"ipc://{tmp_path}/b.ipc")
    runtime.start_broker()
    try:
        fresh = SessionToken.read_from_file(home / "sessions" / "system.token")
        assert not fresh.ct_eq(stale)
        assert mode(home / "sessions" / "system.token") == 0o600
    finally:
        runtime.stop()


# --------------------------------------------------------------------------------------------
# The client refuses a token others may read or write


@pytest.fixture
def token_mode(world: World) -> Iterator[Path]:
    path = world.home / "sessions" / "system.token"
    yield path
    path.chmod(0o600)


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o606, 0o620, 0o602, 0o666, 0o777])
def test_the_client_refuses_a_token_others_may_read_or_write(
    world: World, token_mode: Path, loose: int
) -> None:
    token_mode.chmod(loose)
    with pytest.raises(ClientError) as info:
        SystemClient.connect(AstridHome.from_path(world.home), timeout=5)
    assert str(info.value) == (
        f"insecure permissions on {token_mode} ({loose:04o}): "
        "the session token must be private (0600)"
    )


def test_the_cli_reports_the_insecure_token(
    world: World, token_mode: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_mode.chmod(0o644)
    assert astrid_cli.main(["--home", str(world.home), "call", "prober", "run", '""']) == 1
    assert capsys.readouterr().err.strip() == (
        f"astrid: insecure permissions on {token_mode} (0644): "
        "the session token must be private (0600)"
    )


@pytest.mark.parametrize("private", [0o600, 0o400])
def test_the_client_accepts_a_private_token(world: World, token_mode: Path, private: int) -> None:
    token_mode.chmod(private)
    with SystemClient.connect(AstridHome.from_path(world.home), timeout=5) as client:
        assert client.request(Method.PING, {}, timeout=5)["pid"] > 0
