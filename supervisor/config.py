"""The supervisor's configuration file: ``$ASTRID_HOME/supervisor.toml`` or ``--config PATH``.

Every key is optional; a missing default file means every default. Every key is checked, and the
first problem is reported as one :class:`ConfigError` line that names the file and the key::

    [supervisor]
    grace = 5.0                 # seconds between SIGTERM and SIGKILL when stopping a process
    ready_timeout = 10.0        # seconds a worker may take to become READY
    rss_limit_mib = 256         # a worker's resident memory limit; 0 turns the check off
    memory_check_interval = 1.0 # seconds between two RSS samples of every worker

    [restart]                   # the restart policy of every capsule (supervisor.policy)
    base_delay = 0.1
    max_delay = 30.0
    factor = 2.0
    jitter = 0.2
    max_restarts = 10
    window = 60.0
    stable_after = 10.0

    [capsules.counter]          # per capsule: any [restart] key, and rss_limit_mib
    max_restarts = 3
    rss_limit_mib = 128

    [broker]                    # the broker's restart policy (the [restart] keys)
    max_restarts = 5

``[capsules.<name>]`` keys override ``[restart]`` key by key. ``[broker]`` starts from the
built-in defaults, not from ``[restart]``: the broker is not a capsule.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from astrid_core.dirs import AstridHome
from supervisor.policy import RestartPolicy

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_GRACE",
    "DEFAULT_MEMORY_CHECK_INTERVAL",
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_RSS_LIMIT_MIB",
    "RESTART_KEYS",
    "CapsuleConfig",
    "ConfigError",
    "SupervisorConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]

CONFIG_FILE_NAME: Final = "supervisor.toml"

DEFAULT_GRACE: Final = 5.0
DEFAULT_READY_TIMEOUT: Final = 10.0
#: A capsule's guest memory is capped at 64 MiB (1024 wasm pages); the worker's own runtime
#: (CPython, Extism, wasmtime, ZeroMQ) is about 30-40 MiB. 256 MiB leaves room for both and for
#: host-side buffers, and still catches a leak long before the machine feels it.
DEFAULT_RSS_LIMIT_MIB: Final = 256
DEFAULT_MEMORY_CHECK_INTERVAL: Final = 1.0


class ConfigError(Exception):
    """A configuration file that cannot be used: ``message`` is one line naming file and key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class CapsuleConfig:
    """``[capsules.<name>]``: overrides of ``[restart]`` keys and of ``rss_limit_mib``."""

    restart: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    rss_limit_mib: float | None = None


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """The whole configuration; the defaults are what a missing file means."""

    grace: float = DEFAULT_GRACE
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    #: Resident memory limit of every worker, in MiB; 0 means no limit.
    rss_limit_mib: float = DEFAULT_RSS_LIMIT_MIB
    memory_check_interval: float = DEFAULT_MEMORY_CHECK_INTERVAL
    #: The restart policy of every capsule (before ``capsules`` overrides).
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    broker_restart: RestartPolicy = field(default_factory=RestartPolicy)
    capsules: Mapping[str, CapsuleConfig] = field(default_factory=lambda: MappingProxyType({}))
    #: The file this came from (None: built-in defaults, no file).
    path: Path | None = field(default=None, compare=False)

    def policy_for(self, capsule: str) -> RestartPolicy:
        """The restart policy of ``capsule``: ``[restart]`` with its own overrides."""
        overrides = self.capsules.get(capsule)
        if overrides is None or not overrides.restart:
            return self.restart
        return dataclasses.replace(self.restart, **overrides.restart)  # type: ignore[arg-type]

    def rss_limit_for(self, capsule: str) -> float | None:
        """The RSS limit of ``capsule``'s worker in MiB, or None when there is none."""
        overrides = self.capsules.get(capsule)
        limit = self.rss_limit_mib
        if overrides is not None and overrides.rss_limit_mib is not None:
            limit = overrides.rss_limit_mib
        return limit if limit > 0 else None


def default_config_path(home: AstridHome) -> Path:
    return home.root() / CONFIG_FILE_NAME


# --------------------------------------------------------------------------------------------
# Validation


class _Invalid(Exception):
    """A value that fails its check; the caller adds file and key."""


def _show(value: object) -> str:
    """A value as it was written in TOML (roughly), for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _Invalid(f"expected a finite number, got {_show(value)}")
    return number


def _seconds_at_least_zero(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise _Invalid(f"must be a number of seconds >= 0, got {_show(value)}")
    return number


def _seconds_positive(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise _Invalid(f"must be a number of seconds > 0, got {_show(value)}")
    return number


def _factor(value: object) -> float:
    number = _number(value)
    if number < 1:
        raise _Invalid(f"must be a number >= 1, got {_show(value)}")
    return number


def _jitter(value: object) -> float:
    number = _number(value)
    if not 0 <= number < 1:
        raise _Invalid(f"must be a number >= 0 and < 1, got {_show(value)}")
    return number


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected a whole number, got {_show(value)}")
    if value < 0:
        raise _Invalid(f"must be a whole number >= 0, got {_show(value)}")
    return value


def _mib(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise _Invalid(f"must be a number of MiB >= 0 (0: no limit), got {_show(value)}")
    return number


_Check = Callable[[object], float]

#: The keys of ``[restart]``, ``[broker]`` and ``[capsules.<name>]``: the fields of
#: :class:`RestartPolicy`, each with its check.
RESTART_KEYS: Final[Mapping[str, _Check]] = MappingProxyType(
    {
        "base_delay": _seconds_at_least_zero,
        "max_delay": _seconds_at_least_zero,
        "factor": _factor,
        "jitter": _jitter,
        "max_restarts": _count,
        "window": _seconds_positive,
        "stable_after": _seconds_at_least_zero,
    }
)

_SUPERVISOR_KEYS: Final[Mapping[str, _Check]] = MappingProxyType(
    {
        "grace": _seconds_at_least_zero,
        "ready_timeout": _seconds_positive,
        "rss_limit_mib": _mib,
        "memory_check_interval": _seconds_positive,
    }
)

_CAPSULE_KEYS: Final[Mapping[str, _Check]] = MappingProxyType(
    {**RESTART_KEYS, "rss_limit_mib": _mib}
)

_SECTIONS: Final = ("supervisor", "restart", "capsules", "broker")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_name(*parts: str) -> str:
    """``capsules.counter.max_restarts``, quoting parts that are not bare TOML keys."""
    return ".".join(part if _BARE_KEY.fullmatch(part) else _show(part) for part in parts)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def table(self, value: object, *path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(_key_name(*path), f"expected a table, got {_show(value)}")
        return value

    def values(
        self, table: Mapping[str, Any], checks: Mapping[str, _Check], *path: str
    ) -> dict[str, float]:
        result: dict[str, float] = {}
        for key, value in table.items():
            check = checks.get(key)
            if check is None:
                expected = ", ".join(sorted(checks))
                raise self.error(
                    _key_name(*path, key), f"unknown key (expected one of: {expected})"
                )
            try:
                result[key] = check(value)
            except _Invalid as exc:
                raise self.error(_key_name(*path, key), str(exc)) from None
        return result


def parse_config(
    data: Mapping[str, Any], source: str, path: Path | None = None
) -> SupervisorConfig:
    """Check the parsed TOML document ``data`` (from ``source``, for messages)."""
    parser = _Parser(source)
    for section in data:
        if section not in _SECTIONS:
            raise parser.error(
                _key_name(section),
                f"unknown section (expected one of: {', '.join(_SECTIONS)})",
            )
    supervisor = parser.values(
        parser.table(data.get("supervisor", {}), "supervisor"), _SUPERVISOR_KEYS, "supervisor"
    )
    restart = parser.values(
        parser.table(data.get("restart", {}), "restart"), RESTART_KEYS, "restart"
    )
    broker = parser.values(parser.table(data.get("broker", {}), "broker"), RESTART_KEYS, "broker")
    capsules: dict[str, CapsuleConfig] = {}
    for name, raw in parser.table(data.get("capsules", {}), "capsules").items():
        values = parser.values(parser.table(raw, "capsules", name), _CAPSULE_KEYS, "capsules", name)
        rss_limit = values.pop("rss_limit_mib", None)
        capsules[name] = CapsuleConfig(restart=MappingProxyType(values), rss_limit_mib=rss_limit)
    return SupervisorConfig(
        restart=RestartPolicy(**restart),  # type: ignore[arg-type]
        broker_restart=RestartPolicy(**broker),  # type: ignore[arg-type]
        capsules=MappingProxyType(capsules),
        path=path,
        **supervisor,
    )


def load_config(path: Path, *, required: bool = True) -> SupervisorConfig:
    """Read and check the configuration at ``path``.

    A missing file is an error when ``required`` (the operator named it), otherwise it means
    the defaults. Raises :class:`ConfigError` with one line for the operator.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not required:
            return SupervisorConfig()
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, str(path), path)
