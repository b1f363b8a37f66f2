"""``Capsule.toml``: decoding every table, schema errors, and the validation steps of
kernel.md §1.3 (each error class is matched by substring)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from astrid_core.manifest import (
    ASTRID_RUNTIME_VERSION,
    Capabilities,
    Component,
    Dependencies,
    Manifest,
    ManifestError,
    Package,
    TopicDirection,
    UplinkProfile,
    load_manifest,
    parse_manifest,
    validate_capsule_id,
)

MANIFEST_PATH = Path("/capsules/demo/Capsule.toml")

PACKAGE = """
[package]
name = "demo"
version = "0.1.0"
"""


def parse(body: str = "", package: str = PACKAGE) -> Manifest:
    return parse_manifest(textwrap.dedent(package) + textwrap.dedent(body), MANIFEST_PATH)


def parse_error(body: str = "", package: str = PACKAGE) -> str:
    with pytest.raises(ManifestError) as info:
        parse(body, package)
    return info.value.message


FULL_MANIFEST = """
[package]
name = "full-capsule"
version = "1.2.3-beta.1+build.7"
description = "Everything at once"
authors = ["A <a@example.com>", "B"]
repository = "https://example.com/repo"
homepage = "https://example.com"
documentation = "https://docs.example.com"
license = "MIT OR Apache-2.0"
license-file = "LICENSE"
readme = "README.md"
keywords = ["one", "two"]
categories = ["tools"]
astrid-version = ">=0.1, <0.3"
publish = false
include = ["src/**"]
exclude = ["target/**"]
unknown_package_key = 42

[package.metadata]
answer = 42
nested = { list = [1, "two", true] }
when = 1979-05-27T07:32:00Z

[[component]]
id = "main"
file = "bin/main.wasm"
hash = "blake3:abc"
type = "executable"
link = ["lib"]

[component.capabilities]
net = ["example.com"]

[[component]]
entrypoint = "bin/second.wasm"

[dependencies]
provides = ["topic:demo.events", "tool:search"]
requires = ["llm:*", "topic:llm.stream.*"]

[capabilities]
uplink = false
net = ["api.example.com", "*"]
kv = ["*"]
fs_read = ["workspace://", "global://shared"]
fs_write = ["workspace://out"]
host_process = ["git", "npx"]
net_bind = ["unix:///tmp/x.sock"]
ipc_publish = ["demo.v1.*", "demo.v1.event"]
ipc_subscribe = ["other.v1.*"]
identity = ["resolve"]
allow_prompt_injection = true
future_capability = ["ignored"]

[env.API_KEY]
type = "secret"
request = "Your API key"
description = "Key for the API"
placeholder = "sk-..."

[env.MODE]
type = "string"
default = "fast"
enum_values = ["fast", "slow"]

[env.LIMITS]
type = "array"
default = [1, 2, 3]

[env.TABLE_DEFAULT]
type = "string"
default = { a = 1 }

[[context_file]]
name = "guide"
file = "docs/guide.md"

[[command]]
name = "/hello"
description = "Say hello"
file = "commands/hello.toml"

[[command]]
name = "/bare"

[[mcp_server]]
id = "server"
description = "stdio server"
type = "stdio"
command = "npx"
args = ["-y", "server"]

[[skill]]
name = "skill"
file = "skills/skill.md"
description = "A skill"

[[uplink]]
name = "telegram"
platform = "telegram"
profile = "chat"

[[uplink]]
name = "bridge"
platform = "matrix"
profile = "bridge"

[[llm_provider]]
id = "claude"
description = "Anthropic"
capabilities = ["text", "tools"]

[[interceptor]]
event = "tool.v1.request.*"
action = "on_tool_request"

[[cron]]
name = "nightly"
schedule = "0 0 * * *"
action = "cleanup"

[[tool]]
name = "search"
description = "Search things"
input_schema = { type = "object", properties = { q = { type = "string" } } }

[[topic]]
name = "demo.v1.event"
direction = "publish"
description = "An event"
schema = "schemas/event.json"

[[topic]]
name = "demo.v1.event"
direction = "subscribe"

[unknown_table]
whatever = true
"""


# --- decoding ------------------------------------------------------------------------------


def test_minimal_manifest_has_all_defaults() -> None:
    m = parse()
    assert m.package == Package(name="demo", version="0.1.0")
    assert m.components == ()
    assert m.dependencies == Dependencies()
    assert m.capabilities == Capabilities()
    assert dict(m.env) == {}
    empty: list[tuple[object, ...]] = [
        m.context_files,
        m.commands,
        m.mcp_servers,
        m.skills,
        m.uplinks,
        m.llm_providers,
        m.interceptors,
        m.cron_jobs,
        m.tools,
        m.topics,
    ]
    assert all(seq == () for seq in empty)
    assert m.path == MANIFEST_PATH
    assert m.dir == MANIFEST_PATH.parent
    assert m.name == "demo"


def test_full_manifest_decodes_every_table() -> None:
    m = parse_manifest(FULL_MANIFEST, MANIFEST_PATH)
    p = m.package
    assert (p.name, p.version) == ("full-capsule", "1.2.3-beta.1+build.7")
    assert p.authors == ("A <a@example.com>", "B")
    assert p.license_file == "LICENSE"
    assert p.readme == "README.md"
    assert p.keywords == ("one", "two")
    assert p.categories == ("tools",)
    assert p.astrid_version == ">=0.1, <0.3"
    assert p.publish is False
    assert p.include == ("src/**",)
    assert p.exclude == ("target/**",)
    assert p.metadata == {
        "answer": 42,
        "nested": {"list": [1, "two", True]},
        "when": "1979-05-27T07:32:00+00:00",
    }

    first, second = m.components
    assert first == Component(
        file="bin/main.wasm",
        id="main",
        hash="blake3:abc",
        type="executable",
        link=("lib",),
        capabilities=Capabilities(net=("example.com",)),
    )
    assert second == Component(file="bin/second.wasm")

    assert m.dependencies.provides == ("topic:demo.events", "tool:search")
    assert m.dependencies.requires == ("llm:*", "topic:llm.stream.*")

    c = m.capabilities
    assert c.uplink is False
    assert c.net == ("api.example.com", "*")
    assert c.kv == ("*",)
    assert c.fs_read == ("workspace://", "global://shared")
    assert c.fs_write == ("workspace://out",)
    assert c.host_process == ("git", "npx")
    assert c.net_bind == ("unix:///tmp/x.sock",)
    assert c.ipc_publish == ("demo.v1.*", "demo.v1.event")
    assert c.ipc_subscribe == ("other.v1.*",)
    assert c.identity == ("resolve",)
    assert c.allow_prompt_injection is True

    assert list(m.env) == ["API_KEY", "MODE", "LIMITS", "TABLE_DEFAULT"]
    api_key = m.env["API_KEY"]
    assert (api_key.type, api_key.request, api_key.description) == (
        "secret",
        "Your API key",
        "Key for the API",
    )
    assert api_key.default is None
    assert api_key.placeholder == "sk-..."
    assert m.env["MODE"].default == "fast"
    assert m.env["MODE"].enum_values == ("fast", "slow")
    assert m.env["LIMITS"].default == [1, 2, 3]
    assert m.env["TABLE_DEFAULT"].default == {"a": 1}

    assert [(f.name, f.file) for f in m.context_files] == [("guide", "docs/guide.md")]
    assert [(c.name, c.description, c.file) for c in m.commands] == [
        ("/hello", "Say hello", "commands/hello.toml"),
        ("/bare", None, None),
    ]
    (server,) = m.mcp_servers
    assert (server.id, server.type, server.command, server.args) == (
        "server",
        "stdio",
        "npx",
        ("-y", "server"),
    )
    assert [(s.name, s.file, s.description) for s in m.skills] == [
        ("skill", "skills/skill.md", "A skill")
    ]
    assert [(u.name, u.platform, u.profile) for u in m.uplinks] == [
        ("telegram", "telegram", UplinkProfile.CHAT),
        ("bridge", "matrix", UplinkProfile.BRIDGE),
    ]
    (provider,) = m.llm_providers
    assert (provider.id, provider.capabilities) == ("claude", ("text", "tools"))
    assert [(i.event, i.action) for i in m.interceptors] == [
        ("tool.v1.request.*", "on_tool_request")
    ]
    assert [(c.name, c.schedule, c.action) for c in m.cron_jobs] == [
        ("nightly", "0 0 * * *", "cleanup")
    ]
    (tool,) = m.tools
    assert tool.input_schema == {"type": "object", "properties": {"q": {"type": "string"}}}
    assert [(t.name, t.direction, t.schema) for t in m.topics] == [
        ("demo.v1.event", TopicDirection.PUBLISH, "schemas/event.json"),
        ("demo.v1.event", TopicDirection.SUBSCRIBE, None),
    ]


def test_unknown_keys_and_tables_are_ignored() -> None:
    m = parse(
        """
        surprise = 1
        [capabilities]
        teleport = true
        [[tool]]
        name = "t"
        description = "d"
        input_schema = {}
        extra = "x"
        [something_else]
        a = 1
        """
    )
    assert m.capabilities == Capabilities()
    assert m.tools[0].name == "t"


def test_tool_input_schema_accepts_any_json_value() -> None:
    m = parse(
        """
        [[tool]]
        name = "a"
        description = "d"
        input_schema = "just a string"
        [[tool]]
        name = "b"
        description = "d"
        input_schema = [1, 2]
        """
    )
    assert [t.input_schema for t in m.tools] == ["just a string", [1, 2]]


def test_component_entrypoint_is_an_alias_for_file() -> None:
    m = parse('[[component]]\nentrypoint = "capsule.wasm"\n')
    assert m.components[0].file == "capsule.wasm"


def test_component_with_both_file_and_entrypoint_is_rejected() -> None:
    message = parse_error('[[component]]\nfile = "a.wasm"\nentrypoint = "b.wasm"\n')
    assert "[[component]] #1" in message
    assert "entrypoint" in message


@pytest.mark.parametrize(
    ("body", "package", "expected"),
    [
        ("", "", "missing required table [package]"),
        ("", '[package]\nname = "x"\n', "[package] missing required key 'version'"),
        ("", '[package]\nversion = "1.0.0"\n', "[package] missing required key 'name'"),
        ("[[component]]\nid = 'x'\n", PACKAGE, "[[component]] #1 missing required key 'file'"),
        ("[env.KEY]\nrequest = 'x'\n", PACKAGE, "[env.KEY] missing required key 'type'"),
        ("[[context_file]]\nname = 'x'\n", PACKAGE, "[[context_file]] #1 missing required key"),
        ("[[command]]\nfile = 'x'\n", PACKAGE, "[[command]] #1 missing required key 'name'"),
        ("[[mcp_server]]\ncommand = 'x'\n", PACKAGE, "[[mcp_server]] #1 missing required key 'id'"),
        ("[[skill]]\nname = 'x'\n", PACKAGE, "[[skill]] #1 missing required key 'file'"),
        (
            "[[uplink]]\nname = 'x'\nplatform = 'cli'\n",
            PACKAGE,
            "[[uplink]] #1 missing required key 'profile'",
        ),
        ("[[llm_provider]]\ndescription = 'x'\n", PACKAGE, "[[llm_provider]] #1 missing required"),
        (
            "[[interceptor]]\nevent = 'a.b'\n",
            PACKAGE,
            "[[interceptor]] #1 missing required key 'action'",
        ),
        (
            "[[cron]]\nname = 'x'\naction = 'y'\n",
            PACKAGE,
            "[[cron]] #1 missing required key 'schedule'",
        ),
        (
            "[[tool]]\nname = 't'\ndescription = 'd'\ninput_schema = {}\n"
            "[[tool]]\nname = 't2'\ndescription = 'd'\n",
            PACKAGE,
            "[[tool]] #2 missing required key 'input_schema'",
        ),
        ("[[topic]]\nname = 'a.b'\n", PACKAGE, "[[topic]] #1 missing required key 'direction'"),
    ],
)
def test_missing_required_keys_name_table_and_key(body: str, package: str, expected: str) -> None:
    assert expected in parse_error(body, package)


@pytest.mark.parametrize(
    ("body", "package", "expected"),
    [
        ("", '[package]\nname = "x"\nversion = 1\n', "[package]: 'version' must be a string"),
        ("", 'package = "x"\n', "[package] must be a table"),
        (
            "",
            PACKAGE + 'authors = "me"\n',
            "[package]: 'authors' must be a list of strings",
        ),
        ("", PACKAGE + 'publish = "yes"\n', "[package]: 'publish' must be a boolean"),
        (
            "[[tool]]\nname = 't'\ndescription = 'd'\ninput_schema = {}\n"
            "[[tool]]\nname = 2\ndescription = 'd'\ninput_schema = {}\n",
            PACKAGE,
            "[[tool]] #2: 'name' must be a string",
        ),
        ("[capabilities]\nnet = 'x'\n", PACKAGE, "[capabilities]: 'net' must be a list of strings"),
        ("[capabilities]\nfs_read = [1]\n", PACKAGE, "'fs_read' must be a list of strings"),
        ("[capabilities]\nuplink = 'yes'\n", PACKAGE, "[capabilities]: 'uplink' must be a boolean"),
        ("", "capabilities = 3\n" + PACKAGE, "[capabilities] must be a table"),
        ("[dependencies]\nrequires = 'x'\n", PACKAGE, "[dependencies]: 'requires' must be a list"),
        ("", "component = 'x'\n" + PACKAGE, "[[component]] must be an array of tables"),
        ("", "component = ['x']\n" + PACKAGE, "[[component]] #1 must be a table"),
        (
            "[[component]]\nfile = 'a'\ncapabilities = 1\n",
            PACKAGE,
            "[[component]] #1 [capabilities] must be a table",
        ),
        ("[env]\nKEY = 'x'\n", PACKAGE, "[env.KEY] must be a table"),
        ("", "env = 1\n" + PACKAGE, "[env] must be a table"),
        (
            "[env.KEY]\ntype = 'string'\nenum_values = [1, 2]\n",
            PACKAGE,
            "[env.KEY]: 'enum_values' must be a list of strings",
        ),
        ("[[mcp_server]]\nid = 'x'\nargs = 'y'\n", PACKAGE, "[[mcp_server]] #1: 'args' must be"),
    ],
)
def test_wrong_types_name_table_and_key(body: str, package: str, expected: str) -> None:
    assert expected in parse_error(body, package)


def test_bad_uplink_profile_is_an_unknown_variant() -> None:
    """The manifest does not accept the host call's ``human`` alias for ``chat``."""
    message = parse_error("[[uplink]]\nname = 'x'\nplatform = 'cli'\nprofile = 'human'\n")
    assert "unknown variant 'human'" in message
    assert "chat, interactive, notify, bridge" in message


def test_bad_topic_direction_is_an_unknown_variant() -> None:
    message = parse_error("[[topic]]\nname = 'a.b'\ndirection = 'both'\n")
    assert "[[topic]] #1" in message
    assert "unknown variant 'both'" in message


# --- validation (kernel.md §1.3, in order) -------------------------------------------------


def test_step1_toml_syntax_error() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("[package\nname = 'x'", MANIFEST_PATH)
    assert "TOML parse error" in info.value.message


@pytest.mark.parametrize("requirement", [">=0.1.0", "^0.2", "0.2", "~0.2.0", "*", ">=0.1, <0.3"])
def test_step2_astrid_version_satisfied(requirement: str) -> None:
    m = parse(package=PACKAGE + f'astrid-version = "{requirement}"\n')
    assert m.package.astrid_version == requirement


def test_step2_astrid_version_unparsable() -> None:
    message = parse_error(package=PACKAGE + 'astrid-version = "latest"\n')
    assert "invalid astrid-version 'latest'" in message


@pytest.mark.parametrize("requirement", ["^0.3", ">=1.0.0", "<0.2.0", "=0.1"])
def test_step2_astrid_version_not_met_names_requirement_and_runtime(requirement: str) -> None:
    message = parse_error(package=PACKAGE + f'astrid-version = "{requirement}"\n')
    assert f"'{requirement}'" in message
    assert ASTRID_RUNTIME_VERSION in message
    assert "not satisfied" in message


@pytest.mark.parametrize("version", ["1.0", "latest", "1", "v1.0.0", ""])
def test_step3_package_version_must_be_full_semver(version: str) -> None:
    message = parse_error(package=f'[package]\nname = "x"\nversion = "{version}"\n')
    assert f"invalid version '{version}' in [package]" in message


@pytest.mark.parametrize("version", ["0.0.0", "1.0.0-alpha.1", "2.3.4+build"])
def test_step3_prerelease_and_build_versions_are_accepted(version: str) -> None:
    assert parse(package=f'[package]\nname = "x"\nversion = "{version}"\n').package.version == (
        version
    )


def test_step2_runs_before_step3() -> None:
    message = parse_error(package='[package]\nname = "x"\nversion = "1.0"\nastrid-version = "^9"\n')
    assert "astrid-version" in message


@pytest.mark.parametrize("pattern", ["", "a..b", ".a", "a.", "."])
def test_step4_ipc_publish_patterns_must_not_have_empty_segments(pattern: str) -> None:
    message = parse_error(f'[capabilities]\nipc_publish = ["ok.topic", "{pattern}"]\n')
    assert f"ipc_publish pattern '{pattern}' contains empty segments" in message


def test_step4_ipc_subscribe_patterns_are_not_validated_by_the_manifest() -> None:
    m = parse('[capabilities]\nipc_subscribe = ["a..b", ""]\n')
    assert m.capabilities.ipc_subscribe == ("a..b", "")


def test_step4_interceptor_events_must_not_have_empty_segments() -> None:
    message = parse_error(
        """
        [[interceptor]]
        event = "good.event"
        action = "a"
        [[interceptor]]
        event = "bad..event"
        action = "b"
        """
    )
    assert "[[interceptor]] #2 event 'bad..event' contains empty segments" in message


@pytest.mark.parametrize(
    ("kind", "entry", "expected"),
    [
        ("provides", "", "empty capability string"),
        ("requires", "", "empty capability string"),
        ("provides", "foo.bar", "must have a type prefix"),
        ("requires", "foo", "must have a type prefix"),
        ("provides", "event:foo", "unknown prefix 'event'"),
        ("requires", "Topic:foo", "unknown prefix 'Topic'"),
        ("provides", "topic:", "contains empty segments"),
        ("requires", "tool:a..b", "contains empty segments"),
        ("provides", "topic:llm.*", "must not contain a wildcard"),
        ("provides", "llm:*", "must not contain a wildcard"),
    ],
)
def test_step5_dependency_capability_strings(kind: str, entry: str, expected: str) -> None:
    message = parse_error(f'[dependencies]\n{kind} = ["{entry}"]\n')
    assert f"[dependencies] {kind} entry" in message
    assert expected in message


def test_step5_requires_may_contain_wildcards() -> None:
    m = parse('[dependencies]\nrequires = ["topic:llm.stream.*", "llm:*", "uplink:x"]\n')
    assert m.dependencies.requires == ("topic:llm.stream.*", "llm:*", "uplink:x")


def test_step6_uplink_capsules_may_not_require() -> None:
    message = parse_error('[capabilities]\nuplink = true\n[dependencies]\nrequires = ["llm:x"]\n')
    assert "not allowed on uplink capsules" in message


def test_step6_uplink_capsules_may_provide() -> None:
    m = parse('[capabilities]\nuplink = true\n[dependencies]\nprovides = ["uplink:cli"]\n')
    assert m.capabilities.uplink


def _topic(name: str, direction: str = "publish", schema: str | None = None) -> str:
    lines = f'[[topic]]\nname = "{name}"\ndirection = "{direction}"\n'
    if schema is not None:
        lines += f'schema = "{schema}"\n'
    return lines


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_topic("a..b"), "[[topic]] #1 name 'a..b' contains empty segments"),
        (_topic(""), "contains empty segments"),
        (_topic("a.*"), "not a pattern/wildcard"),
        (_topic("*"), "not a pattern/wildcard"),
        (_topic("a.b*c"), "not a pattern/wildcard"),
        (_topic("a.b c"), "invalid characters"),
        (_topic("a/b"), "invalid characters"),
        (_topic("caf\u00e9.x"), "invalid characters"),
        (_topic("a.b", schema="/etc/schema.json"), "must be a relative path"),
        (_topic("a.b", schema="../schema.json"), "must not contain a '..' component"),
        (_topic("a.b", schema="schemas/../../x.json"), "'..'"),
        (_topic("a.b") + _topic("a.b"), "[[topic]] #2 duplicate topic declaration 'a.b'"),
    ],
)
def test_step7_topic_declarations(body: str, expected: str) -> None:
    assert expected in parse_error(body)


def test_step7_same_topic_in_both_directions_is_fine() -> None:
    m = parse(
        _topic("Good_name-1.v1", schema="schemas/x.json") + _topic("Good_name-1.v1", "subscribe")
    )
    assert len(m.topics) == 2


def test_validation_order_segments_before_dependencies_before_topics() -> None:
    message = parse_error(
        '[capabilities]\nipc_publish = ["a..b"]\n[dependencies]\nprovides = [""]\n' + _topic("x.*")
    )
    assert "ipc_publish" in message
    message = parse_error('[dependencies]\nprovides = [""]\n' + _topic("x.*"))
    assert "empty capability string" in message


# --- errors --------------------------------------------------------------------------------


def test_manifest_error_carries_path_and_message() -> None:
    error = ManifestError(Path("/x/Capsule.toml"), "boom")
    assert error.path == Path("/x/Capsule.toml")
    assert error.message == "boom"
    assert str(error) == "invalid manifest /x/Capsule.toml: boom"


def test_load_manifest_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Capsule.toml"
    path.write_text(textwrap.dedent(PACKAGE), encoding="utf-8")
    m = load_manifest(path)
    assert m.path == path
    assert m.dir == tmp_path


def test_load_manifest_missing_file_is_a_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "Capsule.toml"
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.path == path
    assert "cannot read manifest" in str(info.value)


def test_load_manifest_invalid_utf8_is_a_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "Capsule.toml"
    path.write_bytes(b'[package]\nname = "\xff"\n')
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(path)


def test_load_manifest_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "Capsule.toml"
    path.write_text('[package]\nname = "x"\nversion = "1.0"\n', encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"invalid manifest {path}: invalid version '1.0'")


# --- capsule ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "my-capsule", "capsule-2", "0", "---"])
def test_validate_capsule_id_accepts_lowercase_digits_dashes(name: str) -> None:
    validate_capsule_id(name)


@pytest.mark.parametrize("name", ["", "My-Capsule", "under_score", "dot.ted", "space d", "é"])
def test_validate_capsule_id_rejects_others(name: str) -> None:
    with pytest.raises(ValueError, match=r"must be non-empty and contain only \[a-z0-9-\]") as e:
        validate_capsule_id(name)
    assert f"invalid capsule id '{name}'" in str(e.value)


# --- derived properties --------------------------------------------------------------------


def test_effective_provides_explicit_overrides_auto_derivation() -> None:
    """Mirrors the reference's ``effective_provides_explicit_overrides_auto_derive``."""
    m = parse(
        """
        [dependencies]
        provides = ["topic:custom.cap"]
        [capabilities]
        ipc_publish = ["should.be.ignored"]
        """
    )
    assert m.effective_provides() == ("topic:custom.cap",)


def test_effective_provides_auto_derives_in_order() -> None:
    """Mirrors ``effective_provides_auto_derives_from_ipc_publish`` and extends it to tools,
    LLM providers and uplinks, in that order."""
    m = parse(
        """
        [capabilities]
        ipc_publish = ["foo.bar", "baz.*"]
        [[uplink]]
        name = "cli"
        platform = "cli"
        profile = "interactive"
        [[llm_provider]]
        id = "claude"
        [[tool]]
        name = "search"
        description = "d"
        input_schema = {}
        """
    )
    assert m.effective_provides() == (
        "topic:foo.bar",
        "topic:baz.*",
        "tool:search",
        "llm:claude",
        "uplink:cli",
    )


def test_effective_provides_is_cached() -> None:
    m = parse('[capabilities]\nipc_publish = ["a.b"]\n')
    assert m.effective_provides() is m.effective_provides()


def test_effective_provides_empty_without_declarations() -> None:
    assert parse().effective_provides() == ()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", False),
        ("[capabilities]\nuplink = true\n", True),
        ("[[uplink]]\nname = 'x'\nplatform = 'p'\nprofile = 'notify'\n", True),
        ("[[cron]]\nname = 'x'\nschedule = '* * * * *'\naction = 'a'\n", True),
        ("[[tool]]\nname = 'x'\ndescription = 'd'\ninput_schema = {}\n", False),
    ],
)
def test_is_daemon(body: str, expected: bool) -> None:
    assert parse(body).is_daemon is expected


def test_component_path_relative_to_capsule_dir(tmp_path: Path) -> None:
    m = parse('[[component]]\nfile = "bin/capsule.wasm"\n[[component]]\nfile = "other.wasm"\n')
    assert m.component_path(tmp_path) == (tmp_path / "bin" / "capsule.wasm").resolve()


def test_component_path_defaults_to_manifest_dir() -> None:
    m = parse('[[component]]\nfile = "capsule.wasm"\n')
    assert m.component_path() == (MANIFEST_PATH.parent / "capsule.wasm").resolve()


def test_component_path_absolute_file_is_kept(tmp_path: Path) -> None:
    wasm = tmp_path / "elsewhere" / "capsule.wasm"
    m = parse(f'[[component]]\nfile = "{wasm}"\n')
    assert m.component_path(Path("/somewhere/else")) == wasm.resolve()


def test_component_path_without_component_raises() -> None:
    with pytest.raises(ManifestError, match=r"no \[\[component\]\]"):
        parse().component_path()


def test_manifests_hash_by_identity() -> None:
    a, b = parse(), parse()
    assert a != b
    assert len({a, b, a}) == 2
