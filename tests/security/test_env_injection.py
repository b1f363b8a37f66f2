"""Environment injection into host processes a capsule spawns (DESIGN §6.13, core.md §9).

The broker runs with a poisoned environment (loader, interpreter, proxy and daemon variables, in
upper, lower and mixed case); a capsule allowed to run ``env`` and ``sh`` spawns them in the
foreground and in the background, and also tries to pass its own environment in the request. No
poisoned name reaches a child, whatever its case.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid_core.env_policy import is_blocked_spawn_env, sanitized_environment
from broker.processes import child_environment
from tests.security.support import Call, World, world_fixture

pytestmark = pytest.mark.integration

#: Set in the broker's environment; none may reach a host process.
POISON = {
    "LD_PRELOAD": "/evil/ld_preload.so",
    "ld_preload": "/evil/lower.so",
    "Ld_Preload": "/evil/mixed.so",
    "LD_LIBRARY_PATH": "/evil/lib",
    "LD_AUDIT": "/evil/audit.so",
    "DYLD_INSERT_LIBRARIES": "/evil/dyld.dylib",
    "PYTHONPATH": "/evil/python",
    "pythonpath": "/evil/python-lower",
    "PYTHONSTARTUP": "/evil/startup.py",
    "NODE_OPTIONS": "--require /evil/node.js",
    "node_options": "--require /evil/node-lower.js",
    "HTTP_PROXY": "http://evil.invalid:3128",
    "http_proxy": "http://evil-lower.invalid:3128",
    "HTTPS_PROXY": "http://evil.invalid:3129",
    "https_proxy": "http://evil-lower.invalid:3129",
    "ALL_PROXY": "socks5://evil.invalid:1080",
    "ASTRID_SESSION_TOKEN": "evil-leaked-token",
    "astrid_session_token": "evil-leaked-token-lower",
    "ASTRID_HOME": "/evil/astrid-home",
    "Astrid_Home": "/evil/astrid-home-mixed",
    "ASTRID_SOCKET_PATH": "/evil/system.sock",
    "BASH_ENV": "/evil/bashrc",
    "ENV": "/evil/shrc",
    "PERL5LIB": "/evil/perl",
    "RUBYLIB": "/evil/ruby",
    "JAVA_TOOL_OPTIONS": "-javaagent:/evil.jar",
    "SSL_CERT_FILE": "/evil/ca.pem",
    "OPENSSL_CONF": "/evil/openssl.cnf",
    "npm_config_registry": "http://evil.invalid/",
    "TMPDIR": "/evil/tmp",
}

#: What a child may see: the allow-list (PATH and HOME fixed by the broker) and what sh adds.
ALLOWED = {"PATH", "HOME", "USER", "SHELL", "TERM", "LANG", "LC_ALL", "LC_CTYPE"}
SHELL_OWN = {"PWD", "SHLVL", "OLDPWD", "_"}

GRANTS = '[capabilities]\nhost_process = ["env", "sh"]\n'


@pytest.fixture(scope="module")
def world(capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("env")
    yield from world_fixture(base, capsules["syscaller"], {"spawner": GRANTS}, env=POISON)


def spawn(request: dict[str, object], background: bool = False) -> Call:
    name = "astrid_spawn_background_host" if background else "astrid_spawn_host"
    return (name, [json.dumps(request).encode()])


def parse_env(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def assert_clean(env: dict[str, str], stdout: str, world: World) -> None:
    folded = {name.upper() for name in env}
    for name in POISON:
        assert name.upper() not in folded, name
    assert not [name for name in env if name.upper().startswith("ASTRID_")]
    assert set(env) <= ALLOWED | SHELL_OWN, set(env) - ALLOWED - SHELL_OWN
    assert "evil" not in stdout
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["HOME"] == str(world.runtime.workspace)


def run_json(world: World, call: Call) -> dict[str, object]:
    result = world["spawner"].one(call)
    assert result is not None
    value: dict[str, object] = json.loads(result)
    return value


@pytest.mark.parametrize(
    "argv", [["env"], ["sh", "-c", "env"], ["sh", "-c", "export -p | sed 's/^export //'"]]
)
def test_the_brokers_poisoned_environment_never_reaches_a_child(
    world: World, argv: list[str]
) -> None:
    result = run_json(world, spawn({"cmd": argv[0], "args": argv[1:]}))
    assert result["exit_code"] == 0, result
    stdout = str(result["stdout"])
    env = parse_env(stdout.replace("'", "").replace('"', ""))
    assert_clean(env, stdout, world)


@pytest.mark.parametrize(
    "extra",
    [
        {"env": {"LD_PRELOAD": "/evil/request.so", "PYTHONPATH": "/evil/request"}},
        {"envs": [["LD_PRELOAD", "/evil/request.so"]]},
        {"environment": {"ld_preload": "/evil/request.so"}},
        {"env_clear": False, "inherit_env": True},
    ],
    ids=["env", "envs", "environment", "inherit"],
)
def test_an_environment_in_the_spawn_request_is_ignored(
    world: World, extra: dict[str, object]
) -> None:
    result = run_json(world, spawn({"cmd": "env", "args": [], **extra}))
    stdout = str(result["stdout"])
    assert_clean(parse_env(stdout), stdout, world)


def test_variables_in_the_args_do_not_reach_the_broker_or_other_children(world: World) -> None:
    """``sh -c 'export LD_PRELOAD=...'`` only changes that shell; the next child is clean."""
    first = run_json(world, spawn({"cmd": "sh", "args": ["-c", "export LD_PRELOAD=/evil/x.so"]}))
    assert first["exit_code"] == 0
    second = run_json(world, spawn({"cmd": "env", "args": []}))
    stdout = str(second["stdout"])
    assert_clean(parse_env(stdout), stdout, world)


def test_a_background_child_gets_the_same_clean_environment(world: World) -> None:
    number = run_json(world, spawn({"cmd": "env", "args": []}, background=True))["id"]
    logs: Call = ("astrid_read_process_logs_host", [json.dumps({"id": number}).encode()])
    stdout = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        result = run_json(world, logs)
        stdout += str(result["stdout"])
        if not result["running"]:
            break
        time.sleep(0.05)
    world["spawner"].run([("astrid_kill_process_host", [json.dumps({"id": number}).encode()])])
    assert_clean(parse_env(stdout), stdout, world)


# --------------------------------------------------------------------------------------------
# The policy itself, for every case variant


def _variants(name: str) -> set[str]:
    return {
        name,
        name.lower(),
        name.upper(),
        name.title(),
        name.swapcase(),
        name[:1] + name[1:].lower(),
    }


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_AUDIT",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ASTRID_SESSION_TOKEN",
        "ASTRID_HOME",
        "DYLD_INSERT_LIBRARIES",
        "NPM_CONFIG_REGISTRY",
        "BASH_ENV",
    ],
)
def test_every_case_variant_is_blocked(name: str) -> None:
    for variant in _variants(name):
        assert is_blocked_spawn_env(variant), variant


def test_an_allow_list_naming_the_poison_still_drops_it() -> None:
    """Even if a future allow-list named them, blocked and ASTRID_* names never pass."""
    source = POISON | {"ASTRID_ANYTHING": "x", "astrid_other": "y", "LANG": "C.UTF-8"}
    env = sanitized_environment(source, allow=source)
    assert env == {"LANG": "C.UTF-8"}


def test_the_child_environment_is_built_from_the_allow_list_only(tmp_path: Path) -> None:
    env = child_environment(POISON | {"LANG": "C.UTF-8", "USER": "someone"}, tmp_path)
    assert env == {
        "LANG": "C.UTF-8",
        "USER": "someone",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
