"""The supervisor's configuration file: defaults, overrides, and an error naming the key for every
kind of mistake, also through ``astrid-supervisor up``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from astrid_core.dirs import AstridHome
from supervisor import supervisor_cli
from supervisor.config import (
    DEFAULT_GRACE,
    DEFAULT_MEMORY_CHECK_INTERVAL,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_RSS_LIMIT_MIB,
    RESTART_KEYS,
    ConfigError,
    SupervisorConfig,
    default_config_path,
    load_config,
)
from supervisor.policy import RestartPolicy


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "supervisor.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_restart_keys_are_the_policy_fields() -> None:
    assert set(RESTART_KEYS) == {field.name for field in dataclasses.fields(RestartPolicy)}


def test_defaults() -> None:
    config = SupervisorConfig()
    assert config.grace == DEFAULT_GRACE == 5.0
    assert config.ready_timeout == DEFAULT_READY_TIMEOUT == 10.0
    assert config.rss_limit_mib == DEFAULT_RSS_LIMIT_MIB == 256
    assert config.memory_check_interval == DEFAULT_MEMORY_CHECK_INTERVAL == 1.0
    assert config.restart == RestartPolicy()
    assert config.broker_restart == RestartPolicy()
    assert config.policy_for("anything") == RestartPolicy()
    assert config.rss_limit_for("anything") == 256
    assert config.path is None


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    home = AstridHome.from_path(tmp_path)
    path = default_config_path(home)
    assert path == tmp_path / "supervisor.toml"
    assert load_config(path, required=False) == SupervisorConfig()


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"{path}: no such configuration file"


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing\n")
    config = load_config(path)
    assert config == SupervisorConfig()
    assert config.path == path


def test_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[supervisor]
grace = 2
ready_timeout = 3.5
rss_limit_mib = 64
memory_check_interval = 0.25

[restart]
base_delay = 0.5
max_delay = 60
factor = 3
jitter = 0
max_restarts = 4
window = 120
stable_after = 30

[capsules.counter]
max_restarts = 1
window = 5
rss_limit_mib = 128

[capsules."with.dot"]
rss_limit_mib = 0

[capsules.plain]

[broker]
max_restarts = 2
""",
    )
    config = load_config(path)
    assert (config.grace, config.ready_timeout) == (2.0, 3.5)
    assert (config.rss_limit_mib, config.memory_check_interval) == (64, 0.25)
    restart = RestartPolicy(
        base_delay=0.5,
        max_delay=60,
        factor=3,
        jitter=0,
        max_restarts=4,
        window=120,
        stable_after=30,
    )
    assert config.restart == restart
    # Per capsule: the [restart] values, overridden key by key.
    assert config.policy_for("counter") == dataclasses.replace(restart, max_restarts=1, window=5)
    assert config.policy_for("plain") == restart
    assert config.policy_for("other") == restart
    assert config.rss_limit_for("counter") == 128
    assert config.rss_limit_for("with.dot") is None  # 0: no limit
    assert config.rss_limit_for("other") == 64
    # The broker starts from the built-in defaults, not from [restart].
    assert config.broker_restart == RestartPolicy(max_restarts=2)
    assert isinstance(config.restart.max_restarts, int)


def test_no_limit_at_all(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[supervisor]\nrss_limit_mib = 0\n"))
    assert config.rss_limit_for("x") is None
    config = load_config(
        write(tmp_path, "[supervisor]\nrss_limit_mib = 0\n[capsules.x]\nrss_limit_mib = 10\n")
    )
    assert config.rss_limit_for("x") == 10
    assert config.rss_limit_for("y") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Unknown sections and keys, with what was expected.
        (
            "[supervisors]\ngrace = 1\n",
            "supervisors: unknown section (expected one of: supervisor, restart, capsules, broker)",
        ),
        (
            "grace = 1\n",
            "grace: unknown section (expected one of: supervisor, restart, capsules, broker)",
        ),
        (
            "[supervisor]\ngrace_period = 1\n",
            "supervisor.grace_period: unknown key (expected one of: grace, "
            "memory_check_interval, ready_timeout, rss_limit_mib)",
        ),
        (
            "[restart]\nmax_restart = 1\n",
            "restart.max_restart: unknown key (expected one of: base_delay, factor, jitter, "
            "max_delay, max_restarts, stable_after, window)",
        ),
        (
            "[restart]\nrss_limit_mib = 1\n",
            "restart.rss_limit_mib: unknown key (expected one of: base_delay, factor, jitter, "
            "max_delay, max_restarts, stable_after, window)",
        ),
        (
            "[broker]\nrss_limit_mib = 1\n",
            "broker.rss_limit_mib: unknown key (expected one of: base_delay, factor, jitter, "
            "max_delay, max_restarts, stable_after, window)",
        ),
        (
            "[capsules.counter]\ngrace = 1\n",
            "capsules.counter.grace: unknown key (expected one of: base_delay, factor, jitter, "
            "max_delay, max_restarts, rss_limit_mib, stable_after, window)",
        ),
        # Sections that are not tables.
        ("supervisor = 1\n", "supervisor: expected a table, got 1"),
        ("restart = [1]\n", "restart: expected a table, got an array"),
        ("[capsules]\ncounter = 3\n", "capsules.counter: expected a table, got 3"),
        ('[capsules]\n"a b" = "x"\n', 'capsules."a b": expected a table, got "x"'),
        # [supervisor] values.
        ('[supervisor]\ngrace = "5s"\n', 'supervisor.grace: expected a number, got "5s"'),
        ("[supervisor]\ngrace = true\n", "supervisor.grace: expected a number, got true"),
        (
            "[supervisor]\ngrace = -1\n",
            "supervisor.grace: must be a number of seconds >= 0, got -1",
        ),
        ("[supervisor]\ngrace = inf\n", "supervisor.grace: expected a finite number, got inf"),
        ("[supervisor]\ngrace = nan\n", "supervisor.grace: expected a finite number, got nan"),
        (
            "[supervisor]\nready_timeout = 0\n",
            "supervisor.ready_timeout: must be a number of seconds > 0, got 0",
        ),
        (
            "[supervisor]\nrss_limit_mib = -64\n",
            "supervisor.rss_limit_mib: must be a number of MiB >= 0 (0: no limit), got -64",
        ),
        (
            "[supervisor]\nrss_limit_mib = '256M'\n",
            'supervisor.rss_limit_mib: expected a number, got "256M"',
        ),
        (
            "[supervisor]\nmemory_check_interval = 0\n",
            "supervisor.memory_check_interval: must be a number of seconds > 0, got 0",
        ),
        (
            "[supervisor]\nmemory_check_interval = {}\n",
            "supervisor.memory_check_interval: expected a number, got a table",
        ),
        # Restart keys, in every section that takes them.
        (
            "[restart]\nbase_delay = -0.1\n",
            "restart.base_delay: must be a number of seconds >= 0, got -0.1",
        ),
        (
            "[restart]\nmax_delay = -1\n",
            "restart.max_delay: must be a number of seconds >= 0, got -1",
        ),
        ("[restart]\nfactor = 0.5\n", "restart.factor: must be a number >= 1, got 0.5"),
        ("[restart]\njitter = 1\n", "restart.jitter: must be a number >= 0 and < 1, got 1"),
        ("[restart]\njitter = -0.1\n", "restart.jitter: must be a number >= 0 and < 1, got -0.1"),
        (
            "[restart]\nmax_restarts = 2.5\n",
            "restart.max_restarts: expected a whole number, got 2.5",
        ),
        (
            "[restart]\nmax_restarts = -1\n",
            "restart.max_restarts: must be a whole number >= 0, got -1",
        ),
        (
            "[restart]\nmax_restarts = false\n",
            "restart.max_restarts: expected a whole number, got false",
        ),
        ("[restart]\nwindow = 0\n", "restart.window: must be a number of seconds > 0, got 0"),
        (
            "[restart]\nstable_after = -5\n",
            "restart.stable_after: must be a number of seconds >= 0, got -5",
        ),
        ("[broker]\nwindow = -1\n", "broker.window: must be a number of seconds > 0, got -1"),
        (
            "[capsules.counter]\nmax_restarts = '3'\n",
            'capsules.counter.max_restarts: expected a whole number, got "3"',
        ),
        (
            "[capsules.counter]\nrss_limit_mib = -1\n",
            "capsules.counter.rss_limit_mib: must be a number of MiB >= 0 (0: no limit), got -1",
        ),
        (
            '[capsules."my.capsule"]\nfactor = 0\n',
            'capsules."my.capsule".factor: must be a number >= 1, got 0',
        ),
    ],
)
def test_validation_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def test_invalid_toml(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[supervisor]\ngrace = \n")
    assert message.startswith("invalid TOML: ")
    assert "line 2" in message


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[restart]\nfactor = 2\nfactor = 3\n").startswith("invalid TOML: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text"):
        load_config(path)


def test_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path)  # a directory


# --------------------------------------------------------------------------------------------
# Through `astrid-supervisor up`: one line on stderr, exit 1, nothing started.


def test_up_refuses_a_bad_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    config = write(tmp_path, "[restart]\nmax_restarts = -3\n")
    code = supervisor_cli.main(
        ["up", "--home", str(home), "--workspace", str(tmp_path), "--config", str(config)]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err == (
        f"astrid-supervisor: {config}: restart.max_restarts: must be a whole number >= 0, got -3\n"
    )
    assert not home.exists()


def test_up_reads_the_default_file_in_the_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "supervisor.toml").write_text("[supervisor]\ngrace = 'long'\n")
    code = supervisor_cli.main(["up", "--home", str(home), "--workspace", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err == (
        f"astrid-supervisor: {home / 'supervisor.toml'}: supervisor.grace: "
        'expected a number, got "long"\n'
    )
    assert not (home / "state").exists()


def test_up_with_a_missing_named_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    code = supervisor_cli.main(
        [
            "up",
            "--home",
            str(tmp_path / "h"),
            "--workspace",
            str(tmp_path),
            "--config",
            str(missing),
        ]
    )
    assert code == 1
    assert capsys.readouterr().err == f"astrid-supervisor: {missing}: no such configuration file\n"


def test_up_with_detach_refuses_a_bad_configuration_in_the_foreground(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "[supervisor]\nready_timeout = -1\n")
    home = tmp_path / "home"
    code = supervisor_cli.main(
        [
            "up",
            "--home",
            str(home),
            "--workspace",
            str(tmp_path),
            "--config",
            str(config),
            "--detach",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "supervisor.ready_timeout: must be a number of seconds > 0, got -1" in err
    assert not home.exists()
