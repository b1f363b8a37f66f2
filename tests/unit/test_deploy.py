"""What ``deploy/`` installs: the systemd unit parses and has the settings the design needs; the
example configuration loads and is the defaults where it says so."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from supervisor.config import SupervisorConfig, load_config, parse_config
from supervisor.policy import RestartPolicy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "astrid-supervisor.service"
EXAMPLE = DEPLOY / "supervisor.toml"


def read_unit(path: Path = UNIT) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    return read_unit()


def test_unit_sections(unit: configparser.ConfigParser) -> None:
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Unit"]["Description"]


def test_unit_runs_the_supervisor_in_the_foreground(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["Type"] == "simple"
    command = service["ExecStart"].split()
    assert Path(command[0]).name == "astrid-supervisor"
    assert Path(command[0]).is_absolute()
    assert command[1] == "up"
    assert "--detach" not in command
    assert command[command.index("--home") + 1] == "/var/lib/astrid"
    # strict=False keeps the last of repeated keys: read every Environment= line.
    environment = [
        line.partition("=")[2]
        for line in UNIT.read_text().splitlines()
        if line.startswith("Environment=")
    ]
    assert "ASTRID_HOME=/var/lib/astrid" in environment
    assert (service["User"], service["Group"]) == ("astrid", "astrid")


def test_unit_stops_through_the_supervisor(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    # TimeoutStopSec must leave the supervisor its ordered stop: well above the grace.
    grace = load_config(EXAMPLE).grace
    assert float(service["TimeoutStopSec"]) > 3 * grace
    assert float(service["TimeoutStopSec"]) > 3 * SupervisorConfig().grace


def test_unit_hardening(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    assert {key: service.get(key) for key in expected} == expected
    command = service["ExecStart"].split()
    home = command[command.index("--home") + 1]
    workspace = command[command.index("--workspace") + 1]
    assert set(service["ReadWritePaths"].split()) == {home, workspace}
    assert service["RestrictAddressFamilies"].split() == [
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    ]
    # wasmtime JIT-compiles the guests: W^X enforcement would stop every worker.
    assert "MemoryDenyWriteExecute" not in service
    assert "MemoryDenyWriteExecute" in UNIT.read_text()  # ... and the unit says why
    assert service["CapabilityBoundingSet"] == ""


def test_unit_comments_explain_the_kill_mode() -> None:
    text = UNIT.read_text()
    assert "KillMode=control-group would" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify``, with ExecStart pointing at this checkout's command (verify
    checks that the program exists)."""
    installed = Path(sys.executable).with_name("astrid-supervisor")
    if not installed.exists():
        pytest.skip("astrid-supervisor is not installed in this environment")
    program = read_unit()["Service"]["ExecStart"].split()[0]
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(program, str(installed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # no warning about our unit


# --------------------------------------------------------------------------------------------
# The example configuration


def test_example_configuration_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.path == EXAMPLE
    # It says that only `grace` differs from the defaults.
    assert config == SupervisorConfig(grace=10.0)
    assert config.restart == RestartPolicy()
    assert config.broker_restart == RestartPolicy()
    assert config.rss_limit_for("anything") == 256


def test_example_configuration_has_every_key_with_a_comment() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data["supervisor"]) == {
        "grace",
        "ready_timeout",
        "rss_limit_mib",
        "memory_check_interval",
    }
    restart_keys = {"base_delay", "max_delay", "factor", "jitter", "max_restarts", "window"}
    assert set(data["restart"]) == restart_keys | {"stable_after"}
    assert set(data["broker"]) == restart_keys | {"stable_after"}
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            section_start = max(i for i in range(index + 1) if lines[i].startswith("["))
            comments = [
                candidate
                for candidate in lines[section_start : index + 1]
                if candidate.startswith("#")
            ]
            assert comments, f"no comment before {line!r}"


def test_example_per_capsule_section_works_when_uncommented() -> None:
    text = EXAMPLE.read_text()
    start = text.index("# [capsules.")
    block = "\n".join(line.removeprefix("# ") for line in text[start:].splitlines())
    config = parse_config(tomllib.loads(block), "example")
    name = next(iter(config.capsules))
    assert config.policy_for(name) != RestartPolicy()
    assert config.rss_limit_for(name) == 128
