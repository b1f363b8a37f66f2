"""Hypothesis strategies shared by the fuzz tests: JSON and msgpack values, syscall arguments
(random bytes, sizes at every limit, JSON close to what each syscall parses, paths, handles,
deep nesting) and TOML documents (with a small writer, since the standard library only reads
TOML)."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from hypothesis import strategies as st

from tests.syscaller import Fill

# --------------------------------------------------------------------------------------------
# Values

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)

#: JSON-ready values (bounded in size).
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=8,
)

#: msgpack-ready values, bytes and odd integers included.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=24)
    | st.text(max_size=16)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------
# Syscall arguments

#: Every size limit the ABI checks, and one either side of it.
LIMITS = (32, 64, 128, 256, 512, 1024, 4096, 65536, 1 << 20, 5 << 20, 10 << 20)
BOUNDARY_SIZES = sorted({size for limit in LIMITS for size in (limit - 1, limit, limit + 1)})

#: Keys the JSON-taking syscalls read (http, process, identity, approval, elicit, hooks, ...).
VOCABULARY = (
    "url method headers body cmd args id key type hook payload action resource risk_level "
    "source_uuid capability platform platform_user_id platform_user user_id display_name "
    "options default description name user link linked_by method_name values value env"
).split()

fills = st.builds(Fill, st.integers(0, 255), st.sampled_from(BOUNDARY_SIZES))

json_requests = st.dictionaries(
    st.sampled_from(VOCABULARY) | st.text(max_size=8), scalars | json_values, max_size=4
).map(dumps)

numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.sampled_from(
        [
            b"",
            b"+",
            b"+1",
            b"-0",
            b"0",
            b"1",
            b"007",
            b"18446744073709551615",
            b"18446744073709551616",
            b" 1",
            b"1 ",
            b"\xd9\xa1",
            b"1e3",
            b"0x10",
            b"99999999999999999999999",
        ]
    ),
)

paths = st.one_of(
    st.sampled_from(
        [
            b"",
            b"/",
            b".",
            b"..",
            b"../x",
            b"global://",
            b"global://../x",
            b"a\x00b",
            b"\xff",
            b"workspace://x",
            b"unix:///tmp/x.sock",
            b"//",
            b"a/" * 20,
            b"%2e%2e/x",
            b"~/x",
        ]
    ),
    st.lists(st.sampled_from(["..", ".", "a", "b", "", "\x00", "\u2024", "%2e"]), max_size=8).map(
        lambda parts: "/".join(parts).encode()
    ),
)

topics = st.lists(
    st.sampled_from(["a", "b", "*", "", "x" * 40, "\xe9", ">", "#"]), max_size=10
).map(lambda parts: ".".join(parts).encode())


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


deep = st.sampled_from([100, 900, 1100, 5000, 100_000]).map(deep_json) | st.sampled_from(
    [b'{"a":' * 2000 + b"1" + b"}" * 2000]
)


def _args(fill: st.SearchStrategy[Fill]) -> st.SearchStrategy[bytes | Fill]:
    return st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=600),
        fill,
        json_requests,
        json_values.map(dumps),
        numbers,
        paths,
        topics,
        deep,
    )


#: One argument of a syscall as the guest could pass it.
syscall_args = _args(fills)
#: The same with sizes up to 64 KiB + 1 only (for frames built in the test process).
small_syscall_args = _args(
    st.builds(Fill, st.integers(0, 255), st.sampled_from([n for n in BOUNDARY_SIZES if n <= 65537]))
)

# --------------------------------------------------------------------------------------------
# TOML


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _toml_string(key)


def toml_value(value: Any) -> str:
    """``value`` as a TOML inline value (None has no TOML form: the caller skips it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict[str, Any]) -> str:
    """A TOML document: top-level scalars first, then ``[table]`` and ``[[array]]`` sections."""
    lines: list[str] = []
    sections: list[str] = []
    for key, value in doc.items():
        if value is None:
            continue
        if isinstance(value, dict):
            sections.append(f"[{_toml_key(key)}]")
            sections += [
                f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None
            ]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                sections.append(f"[[{_toml_key(key)}]]")
                sections += [
                    f"{_toml_key(k)} = {toml_value(v)}" for k, v in item.items() if v is not None
                ]
        else:
            lines.append(f"{_toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines + sections) + "\n"


toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC))
    | st.dates()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

_strings = st.text(max_size=12) | st.sampled_from(
    [
        "",
        "*",
        "a.b",
        "a..b",
        "a.*",
        "topic:a.b",
        "tool:*",
        "llm:x",
        "bad:x",
        "topic:",
        "0.1.0",
        "1.2.3-rc.1",
        ">=0.1",
        "^0.2",
        "chat",
        "notify",
        "publish",
        "subscribe",
        "../x",
        "/abs",
        "C:x",
        "workspace://",
        "global://",
        "unix:///tmp/s.sock",
        "fuzzed",
        "Bad_Name",
    ]
)
_maybe_strings = st.lists(_strings, max_size=4) | toml_values

_versions = st.sampled_from(["0.1.0", "1.0.0-alpha.1", "2.3.4+build", "x", "", "01.0.0"])

#: Keys of each table of the manifest schema, with plausible (and implausible) values.
_PACKAGE_OPTIONAL: dict[str, Any] = {
    "description": _strings,
    "astrid-version": st.sampled_from([">=0.1", "^0.2.0", "=9.9.9", "nonsense", "*"]),
    "authors": _maybe_strings,
    "keywords": _maybe_strings,
    "publish": st.booleans() | toml_values,
    "include": _maybe_strings,
    "metadata": toml_values,
}
_SCHEMA: dict[str, Any] = {
    "capabilities": {
        name: _maybe_strings
        for name in (
            "net kv fs_read fs_write host_process net_bind ipc_publish ipc_subscribe identity"
        ).split()
    }
    | {"uplink": st.booleans() | toml_values, "allow_prompt_injection": st.booleans()},
    "dependencies": {"provides": _maybe_strings, "requires": _maybe_strings},
}
_ARRAYS: dict[str, dict[str, Any]] = {
    "component": {"file": _strings, "entrypoint": _strings, "id": _strings, "link": _maybe_strings},
    "tool": {"name": _strings, "description": _strings, "input_schema": toml_values},
    "topic": {
        "name": _strings,
        "direction": st.sampled_from(["publish", "subscribe", "both"]) | _strings,
        "schema": _strings,
    },
    "interceptor": {"event": _strings, "action": _strings},
    "cron": {"name": _strings, "schedule": _strings, "action": _strings},
    "uplink": {"name": _strings, "platform": _strings, "profile": _strings},
    "context_file": {"name": _strings, "file": _strings},
    "command": {"name": _strings, "description": _strings, "file": _strings},
    "mcp_server": {"id": _strings, "command": _strings, "args": _maybe_strings},
    "skill": {"name": _strings, "file": _strings},
    "llm_provider": {"id": _strings, "capabilities": _maybe_strings},
}


def _table(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


_packages = st.fixed_dictionaries(
    {"name": st.just("fuzzed") | _strings, "version": _versions | toml_values},
    optional=_PACKAGE_OPTIONAL,
)
_env_tables = st.dictionaries(
    st.text(min_size=1, max_size=8),
    _table(
        {
            "type": st.sampled_from(["string", "secret", "number"]) | _strings,
            "default": toml_values,
            "enum_values": _maybe_strings,
            "request": _strings,
        }
    )
    | toml_values,
    max_size=3,
)
_optional_tables: dict[str, Any] = (
    {name: _table(fields) | toml_values for name, fields in _SCHEMA.items()}
    | {name: st.lists(_table(fields), max_size=3) for name, fields in _ARRAYS.items()}
    | {"env": _env_tables}
)

#: Manifest-shaped documents: a ``[package]`` (usually well-formed) and any table of the
#: schema, with good or bad values; sometimes no or a malformed ``[package]``.
manifest_documents = st.one_of(
    st.fixed_dictionaries({"package": _packages}, optional=_optional_tables),
    st.fixed_dictionaries(
        {}, optional=_optional_tables | {"package": _table(_PACKAGE_OPTIONAL) | toml_values}
    ),
).map(toml_document)

#: Arbitrary TOML documents.
toml_documents = st.dictionaries(st.text(max_size=10), toml_values, max_size=6).map(toml_document)
