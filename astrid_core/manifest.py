"""The capsule manifest (``Capsule.toml``): typed model, parsing and validation.

:func:`load_manifest` reads and parses a manifest file; :func:`parse_manifest` does the same for
text already in memory. Both decode every table of the schema into frozen dataclasses (unknown
keys are ignored, defaults filled in), then run the validation steps of the reference's
``load_manifest`` in the same order. Any problem raises :class:`ManifestError`, whose message
names the table and key at fault.

The capsule id rule (``[a-z0-9-]+``) is not part of manifest parsing; callers check it with
:func:`validate_capsule_id` when they turn a manifest into a capsule (discovery does).
"""

from __future__ import annotations

import datetime
import enum
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from astrid_core.semver import SemverError, parse_version, parse_version_req
from astrid_core.topics import has_valid_segments, split_capability

__all__ = [
    "ASTRID_RUNTIME_VERSION",
    "CAPABILITY_PREFIXES",
    "MANIFEST_FILE_NAME",
    "Capabilities",
    "Command",
    "Component",
    "ContextFile",
    "CronJob",
    "Dependencies",
    "EnvDef",
    "Interceptor",
    "JsonValue",
    "LlmProvider",
    "Manifest",
    "ManifestError",
    "McpServer",
    "Package",
    "Skill",
    "Tool",
    "TopicDef",
    "TopicDirection",
    "Uplink",
    "UplinkProfile",
    "load_manifest",
    "parse_manifest",
    "validate_capsule_id",
]

#: File name of a capsule manifest.
MANIFEST_FILE_NAME = "Capsule.toml"

#: The runtime version ``[package] astrid-version`` requirements are checked against.
ASTRID_RUNTIME_VERSION = "0.2.0"

#: Type prefixes allowed in ``[dependencies]`` capability strings.
CAPABILITY_PREFIXES: tuple[str, ...] = ("topic", "tool", "llm", "uplink")

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"

_CAPSULE_ID_RE = re.compile(r"[a-z0-9-]+")
_TOPIC_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DRIVE_RE = re.compile(r"[A-Za-z]:")

_PREFIXES = ", ".join(CAPABILITY_PREFIXES)
_EMPTY_SEGMENTS = "contains empty segments (consecutive dots, leading/trailing dots, or is empty)"


class ManifestError(Exception):
    """A manifest could not be read, decoded or validated."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"invalid manifest {path}: {message}")
        self.path = path
        self.message = message


def validate_capsule_id(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid capsule id (non-empty, ``[a-z0-9-]``)."""
    if not _CAPSULE_ID_RE.fullmatch(name):
        raise ValueError(
            f"invalid capsule id '{name}': must be non-empty and contain only [a-z0-9-]"
        )


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class UplinkProfile(enum.StrEnum):
    """Interaction profile of an ``[[uplink]]``."""

    CHAT = "chat"
    INTERACTIVE = "interactive"
    NOTIFY = "notify"
    BRIDGE = "bridge"


class TopicDirection(enum.StrEnum):
    """Direction of a ``[[topic]]`` declaration."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


@dataclass(frozen=True)
class Package:
    """``[package]``: the capsule's identity."""

    name: str
    version: str
    description: str | None = None
    authors: tuple[str, ...] = ()
    repository: str | None = None
    homepage: str | None = None
    documentation: str | None = None
    license: str | None = None
    license_file: str | None = None
    readme: str | None = None
    keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    astrid_version: str | None = None
    publish: bool | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    metadata: JsonValue = None


@dataclass(frozen=True)
class Capabilities:
    """``[capabilities]``: the security grants the capsule declares (all empty by default)."""

    uplink: bool = False
    net: tuple[str, ...] = ()
    kv: tuple[str, ...] = ()
    fs_read: tuple[str, ...] = ()
    fs_write: tuple[str, ...] = ()
    host_process: tuple[str, ...] = ()
    net_bind: tuple[str, ...] = ()
    ipc_publish: tuple[str, ...] = ()
    ipc_subscribe: tuple[str, ...] = ()
    identity: tuple[str, ...] = ()
    allow_prompt_injection: bool = False


@dataclass(frozen=True)
class Component:
    """One ``[[component]]``; only the first one is ever loaded."""

    file: str
    id: str = ""
    hash: str | None = None
    type: str = ""
    link: tuple[str, ...] = ()
    capabilities: Capabilities | None = None


@dataclass(frozen=True)
class Dependencies:
    """``[dependencies]``: typed capability strings ``<prefix>:<dotted.body>``."""

    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvDef:
    """``[env.<KEY>]``: a user-configurable variable."""

    type: str
    request: str | None = None
    description: str | None = None
    default: JsonValue = None
    enum_values: tuple[str, ...] = ()
    placeholder: str | None = None


@dataclass(frozen=True)
class ContextFile:
    """``[[context_file]]``."""

    name: str
    file: str


@dataclass(frozen=True)
class Command:
    """``[[command]]``: a slash command."""

    name: str
    description: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class McpServer:
    """``[[mcp_server]]``; only ``type = "stdio"`` servers get an engine."""

    id: str
    description: str | None = None
    type: str | None = None
    command: str | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skill:
    """``[[skill]]``."""

    name: str
    file: str
    description: str | None = None


@dataclass(frozen=True)
class Uplink:
    """``[[uplink]]``: a frontend or connector the capsule provides."""

    name: str
    platform: str
    profile: UplinkProfile


@dataclass(frozen=True)
class LlmProvider:
    """``[[llm_provider]]``."""

    id: str
    description: str | None = None
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interceptor:
    """``[[interceptor]]``: ``event`` is a topic pattern, ``action`` the guest handler name."""

    event: str
    action: str


@dataclass(frozen=True)
class CronJob:
    """``[[cron]]``: a scheduled job."""

    name: str
    schedule: str
    action: str


@dataclass(frozen=True)
class Tool:
    """``[[tool]]``: an LLM tool; ``input_schema`` is any JSON value."""

    name: str
    description: str
    input_schema: JsonValue


@dataclass(frozen=True)
class TopicDef:
    """``[[topic]]``: a declared IPC topic of the capsule's API."""

    name: str
    direction: TopicDirection
    description: str | None = None
    schema: str | None = None


@dataclass(frozen=True, eq=False)
class Manifest:
    """A parsed and validated ``Capsule.toml``. ``path`` is the manifest file itself.

    Manifests compare and hash by identity (one object per load), so they and the
    :class:`~astrid_core.discovery.DiscoveredCapsule` holding them can be used in sets and as
    dictionary keys even though some fields (``env``, JSON values) are unhashable.
    """

    path: Path
    package: Package
    components: tuple[Component, ...] = ()
    dependencies: Dependencies = Dependencies()
    capabilities: Capabilities = Capabilities()
    env: Mapping[str, EnvDef] = field(default_factory=lambda: MappingProxyType({}))
    context_files: tuple[ContextFile, ...] = ()
    commands: tuple[Command, ...] = ()
    mcp_servers: tuple[McpServer, ...] = ()
    skills: tuple[Skill, ...] = ()
    uplinks: tuple[Uplink, ...] = ()
    llm_providers: tuple[LlmProvider, ...] = ()
    interceptors: tuple[Interceptor, ...] = ()
    cron_jobs: tuple[CronJob, ...] = ()
    tools: tuple[Tool, ...] = ()
    topics: tuple[TopicDef, ...] = ()
    _provides_cache: tuple[str, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def name(self) -> str:
        """The package name (the capsule id once validated)."""
        return self.package.name

    @property
    def dir(self) -> Path:
        """The capsule directory: the directory holding the manifest."""
        return self.path.parent

    @property
    def is_daemon(self) -> bool:
        """Long-lived capsule: has an ``[[uplink]]``, a ``[[cron]]`` or ``capabilities.uplink``."""
        return bool(self.uplinks) or bool(self.cron_jobs) or self.capabilities.uplink

    def effective_provides(self) -> tuple[str, ...]:
        """``dependencies.provides`` if non-empty, else capabilities derived from the manifest.

        Derived, in order: ``topic:<p>`` per ``ipc_publish`` pattern, ``tool:<name>`` per
        ``[[tool]]``, ``llm:<id>`` per ``[[llm_provider]]``, ``uplink:<name>`` per
        ``[[uplink]]``. Computed once and cached.
        """
        if self._provides_cache is not None:
            return self._provides_cache
        if self.dependencies.provides:
            provides = self.dependencies.provides
        else:
            provides = (
                *(f"topic:{p}" for p in self.capabilities.ipc_publish),
                *(f"tool:{t.name}" for t in self.tools),
                *(f"llm:{p.id}" for p in self.llm_providers),
                *(f"uplink:{u.name}" for u in self.uplinks),
            )
        object.__setattr__(self, "_provides_cache", provides)
        return provides

    def component_path(self, capsule_dir: Path | None = None) -> Path:
        """Resolved path of the first component's file.

        A relative ``file`` is taken relative to ``capsule_dir`` (default: :attr:`dir`); an
        absolute one is used as is. Raises :class:`ManifestError` if there is no component.
        """
        if not self.components:
            raise ManifestError(self.path, "no [[component]] declared")
        base = self.dir if capsule_dir is None else capsule_dir
        return (base / self.components[0].file).resolve()


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


class _SchemaError(Exception):
    """Internal: a decoding or validation failure, turned into ManifestError with the path."""


_E = TypeVar("_E", bound=enum.StrEnum)
_T = TypeVar("_T")

_MISSING = object()


def _to_json(value: object, where: str) -> JsonValue:
    """Convert a decoded TOML value into a JSON value (TOML datetimes become ISO strings)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v, where) for k, v in value.items()}
    raise _SchemaError(f"{where}: unsupported value {value!r}")  # pragma: no cover


class _Table:
    """Typed, error-reporting access to the keys of one TOML table."""

    def __init__(self, data: Mapping[str, object], where: str) -> None:
        self._data = data
        self.where = where

    def _get(self, key: str) -> object:
        return self._data.get(key, _MISSING)

    def _missing(self, key: str) -> _SchemaError:
        return _SchemaError(f"{self.where} missing required key '{key}'")

    def _wrong(self, key: str, expected: str) -> _SchemaError:
        return _SchemaError(f"{self.where}: '{key}' must be {expected}")

    def has(self, key: str) -> bool:
        return key in self._data

    def string(self, key: str) -> str:
        value = self._get(key)
        if value is _MISSING:
            raise self._missing(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def opt_string(self, key: str) -> str | None:
        return self.string(key) if self.has(key) else None

    def string_or(self, key: str, default: str) -> str:
        return self.string(key) if self.has(key) else default

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is _MISSING:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, "a list of strings")
        return tuple(value)

    def opt_strings(self, key: str) -> tuple[str, ...] | None:
        return self.strings(key) if self.has(key) else None

    def opt_flag(self, key: str) -> bool | None:
        value = self._get(key)
        if value is _MISSING:
            return None
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean")
        return value

    def flag(self, key: str) -> bool:
        return self.opt_flag(key) or False

    def json(self, key: str) -> JsonValue:
        value = self._get(key)
        if value is _MISSING:
            raise self._missing(key)
        return _to_json(value, f"{self.where}: '{key}'")

    def opt_json(self, key: str) -> JsonValue:
        return self.json(key) if self.has(key) else None

    def choice(self, key: str, kind: type[_E]) -> _E:
        value = self.string(key)
        try:
            return kind(value)
        except ValueError:
            expected = ", ".join(member.value for member in kind)
            raise _SchemaError(
                f"{self.where}: unknown variant '{value}' for '{key}', expected one of: {expected}"
            ) from None

    def table(self, key: str, where: str) -> _Table | None:
        value = self._get(key)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            raise _SchemaError(f"{where} must be a table")
        return _Table(value, where)

    def subtables(self, where: Callable[[str], str]) -> list[tuple[str, _Table]]:
        """Every key of this table with its value, which must itself be a table."""
        result = []
        for key, value in self._data.items():
            if not isinstance(value, dict):
                raise _SchemaError(f"{where(key)} must be a table")
            result.append((key, _Table(value, where(key))))
        return result

    def tables(self, key: str) -> list[_Table]:
        """An array of tables ``[[key]]``; element ``i`` is reported as ``[[key]] #i`` (1-based)."""
        value = self._get(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            raise _SchemaError(f"[[{key}]] must be an array of tables")
        result = []
        for index, item in enumerate(value, start=1):
            where = f"[[{key}]] #{index}"
            if not isinstance(item, dict):
                raise _SchemaError(f"{where} must be a table")
            result.append(_Table(item, where))
        return result

    def each(self, key: str, build: Callable[[_Table], _T]) -> tuple[_T, ...]:
        return tuple(build(t) for t in self.tables(key))


def _package(t: _Table) -> Package:
    return Package(
        name=t.string("name"),
        version=t.string("version"),
        description=t.opt_string("description"),
        authors=t.strings("authors"),
        repository=t.opt_string("repository"),
        homepage=t.opt_string("homepage"),
        documentation=t.opt_string("documentation"),
        license=t.opt_string("license"),
        license_file=t.opt_string("license-file"),
        readme=t.opt_string("readme"),
        keywords=t.strings("keywords"),
        categories=t.strings("categories"),
        astrid_version=t.opt_string("astrid-version"),
        publish=t.opt_flag("publish"),
        include=t.opt_strings("include"),
        exclude=t.opt_strings("exclude"),
        metadata=t.opt_json("metadata"),
    )


def _capabilities(t: _Table | None) -> Capabilities:
    if t is None:
        return Capabilities()
    return Capabilities(
        uplink=t.flag("uplink"),
        net=t.strings("net"),
        kv=t.strings("kv"),
        fs_read=t.strings("fs_read"),
        fs_write=t.strings("fs_write"),
        host_process=t.strings("host_process"),
        net_bind=t.strings("net_bind"),
        ipc_publish=t.strings("ipc_publish"),
        ipc_subscribe=t.strings("ipc_subscribe"),
        identity=t.strings("identity"),
        allow_prompt_injection=t.flag("allow_prompt_injection"),
    )


def _component(t: _Table) -> Component:
    if t.has("file") and t.has("entrypoint"):
        raise _SchemaError(f"{t.where}: give either 'file' or its alias 'entrypoint', not both")
    if not t.has("file") and not t.has("entrypoint"):
        raise _SchemaError(f"{t.where} missing required key 'file' (or 'entrypoint')")
    caps = t.table("capabilities", f"{t.where} [capabilities]")
    return Component(
        file=t.string("file" if t.has("file") else "entrypoint"),
        id=t.string_or("id", ""),
        hash=t.opt_string("hash"),
        type=t.string_or("type", ""),
        link=t.strings("link"),
        capabilities=None if caps is None else _capabilities(caps),
    )


def _env(root: _Table) -> Mapping[str, EnvDef]:
    env = root.table("env", "[env]")
    if env is None:
        return MappingProxyType({})
    defs: dict[str, EnvDef] = {}
    for key, t in env.subtables(lambda key: f"[env.{key}]"):
        defs[key] = EnvDef(
            type=t.string("type"),
            request=t.opt_string("request"),
            description=t.opt_string("description"),
            default=t.opt_json("default"),
            enum_values=t.strings("enum_values"),
            placeholder=t.opt_string("placeholder"),
        )
    return MappingProxyType(defs)


def _decode(doc: Mapping[str, object], path: Path) -> Manifest:
    root = _Table(doc, "manifest")
    package = root.table("package", "[package]")
    if package is None:
        raise _SchemaError("missing required table [package]")
    deps = root.table("dependencies", "[dependencies]")
    return Manifest(
        path=path,
        package=_package(package),
        components=root.each("component", _component),
        dependencies=Dependencies()
        if deps is None
        else Dependencies(provides=deps.strings("provides"), requires=deps.strings("requires")),
        capabilities=_capabilities(root.table("capabilities", "[capabilities]")),
        env=_env(root),
        context_files=root.each(
            "context_file", lambda t: ContextFile(name=t.string("name"), file=t.string("file"))
        ),
        commands=root.each(
            "command",
            lambda t: Command(
                name=t.string("name"),
                description=t.opt_string("description"),
                file=t.opt_string("file"),
            ),
        ),
        mcp_servers=root.each(
            "mcp_server",
            lambda t: McpServer(
                id=t.string("id"),
                description=t.opt_string("description"),
                type=t.opt_string("type"),
                command=t.opt_string("command"),
                args=t.strings("args"),
            ),
        ),
        skills=root.each(
            "skill",
            lambda t: Skill(
                name=t.string("name"),
                file=t.string("file"),
                description=t.opt_string("description"),
            ),
        ),
        uplinks=root.each(
            "uplink",
            lambda t: Uplink(
                name=t.string("name"),
                platform=t.string("platform"),
                profile=t.choice("profile", UplinkProfile),
            ),
        ),
        llm_providers=root.each(
            "llm_provider",
            lambda t: LlmProvider(
                id=t.string("id"),
                description=t.opt_string("description"),
                capabilities=t.strings("capabilities"),
            ),
        ),
        interceptors=root.each(
            "interceptor",
            lambda t: Interceptor(event=t.string("event"), action=t.string("action")),
        ),
        cron_jobs=root.each(
            "cron",
            lambda t: CronJob(
                name=t.string("name"), schedule=t.string("schedule"), action=t.string("action")
            ),
        ),
        tools=root.each(
            "tool",
            lambda t: Tool(
                name=t.string("name"),
                description=t.string("description"),
                input_schema=t.json("input_schema"),
            ),
        ),
        topics=root.each(
            "topic",
            lambda t: TopicDef(
                name=t.string("name"),
                direction=t.choice("direction", TopicDirection),
                description=t.opt_string("description"),
                schema=t.opt_string("schema"),
            ),
        ),
    )


# --------------------------------------------------------------------------------------------
# Validation (reference ``load_manifest`` steps 2-7, in order)
# --------------------------------------------------------------------------------------------


def _check_astrid_version(requirement: str) -> None:
    try:
        req = parse_version_req(requirement)
    except SemverError as e:
        raise _SchemaError(f"invalid astrid-version '{requirement}' in [package]: {e}") from None
    if not req.matches(parse_version(ASTRID_RUNTIME_VERSION)):
        raise _SchemaError(
            f"astrid-version requirement '{requirement}' is not satisfied by "
            f"runtime version {ASTRID_RUNTIME_VERSION}"
        )


def _check_capability_string(kind: str, entry: str) -> None:
    where = f"[dependencies] {kind} entry"
    if not entry:
        raise _SchemaError(f"{where} is an empty capability string")
    if ":" not in entry:
        raise _SchemaError(
            f"{where} '{entry}' must have a type prefix (one of: {_PREFIXES}), e.g. 'topic:foo.bar'"
        )
    prefix, body = split_capability(entry)
    if prefix not in CAPABILITY_PREFIXES:
        raise _SchemaError(
            f"{where} '{entry}' has unknown prefix '{prefix}' (expected one of: {_PREFIXES})"
        )
    if not has_valid_segments(body):
        raise _SchemaError(f"{where} '{entry}' {_EMPTY_SEGMENTS}")
    if kind == "provides" and "*" in body:
        raise _SchemaError(
            f"{where} '{entry}': provides entries must not contain a wildcard '*' "
            "(only requires may)"
        )


def _check_topics(topics: tuple[TopicDef, ...]) -> None:
    seen: set[tuple[str, TopicDirection]] = set()
    for index, topic in enumerate(topics, start=1):
        where = f"[[topic]] #{index}"
        name = topic.name
        if not has_valid_segments(name):
            raise _SchemaError(f"{where} name '{name}' {_EMPTY_SEGMENTS}")
        if not _TOPIC_NAME_RE.fullmatch(name):
            if "*" in name:
                raise _SchemaError(
                    f"{where} name '{name}' must be a concrete topic, not a pattern/wildcard"
                )
            raise _SchemaError(
                f"{where} name '{name}' contains invalid characters "
                "(allowed: A-Z, a-z, 0-9, '_', '.', '-')"
            )
        if topic.schema is not None:
            _check_schema_path(where, topic.schema)
        key = (name, topic.direction)
        if key in seen:
            raise _SchemaError(f"{where} duplicate topic declaration '{name}' ({topic.direction})")
        seen.add(key)


def _check_schema_path(where: str, schema: str) -> None:
    if schema.startswith(("/", "\\")) or _DRIVE_RE.match(schema):
        raise _SchemaError(
            f"{where} schema '{schema}' must be a relative path "
            "(relative to the capsule directory, without '..')"
        )
    if ".." in re.split(r"[/\\]", schema):
        raise _SchemaError(f"{where} schema '{schema}' must not contain a '..' component")


def _validate(m: Manifest) -> None:
    if m.package.astrid_version is not None:
        _check_astrid_version(m.package.astrid_version)
    try:
        parse_version(m.package.version)
    except SemverError as e:
        raise _SchemaError(f"invalid version '{m.package.version}' in [package]: {e}") from None
    for pattern in m.capabilities.ipc_publish:
        if not has_valid_segments(pattern):
            raise _SchemaError(f"[capabilities] ipc_publish pattern '{pattern}' {_EMPTY_SEGMENTS}")
    for index, interceptor in enumerate(m.interceptors, start=1):
        if not has_valid_segments(interceptor.event):
            raise _SchemaError(
                f"[[interceptor]] #{index} event '{interceptor.event}' {_EMPTY_SEGMENTS}"
            )
    for entry in m.dependencies.provides:
        _check_capability_string("provides", entry)
    for entry in m.dependencies.requires:
        _check_capability_string("requires", entry)
    if m.capabilities.uplink and m.dependencies.requires:
        raise _SchemaError(
            "[dependencies] requires is not allowed on uplink capsules "
            "([capabilities] uplink = true): uplinks load before every other capsule"
        )
    _check_topics(m.topics)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_manifest(text: str, path: Path) -> Manifest:
    """Decode and validate manifest ``text``; ``path`` is recorded and used in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(path, f"TOML parse error: {e}") from None
    except RecursionError:
        raise ManifestError(path, "TOML parse error: nested too deeply") from None
    try:
        manifest = _decode(doc, path)
        _validate(manifest)
    except _SchemaError as e:
        raise ManifestError(path, str(e)) from None
    return manifest


def load_manifest(path: Path) -> Manifest:
    """Read, decode and validate the manifest file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(path, f"cannot read manifest: {e}") from None
    return parse_manifest(text, path)
