"""The HTTP client of ``astrid_http_request``: address policy, validation, SSRF backend.

(syscalls.md §4; DESIGN §6.5; the reference's ``http.rs`` ``is_safe_ip`` tests.) Requests run
in-process against a loopback server; a test-only ``allowed`` predicate lets the first hop
through where the broker's policy would refuse it, so the redirect rule can be seen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpcore
import httpx
import pytest

from astrid_core.manifest import Capabilities
from astrid_core.serde import SerdeError
from broker import http_client
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.http_client import (
    DNS_DENIED,
    MAX_REDIRECTS,
    METHODS,
    BodyFailed,
    HttpClient,
    RequestFailed,
    SafeNetworkBackend,
    build_client,
    canonical_ip,
    fetch,
    ip_allowed,
    is_safe_ip,
    is_valid_header_name,
    is_valid_header_value,
    literal_denied,
    local_ips_allowed,
    normalize_method,
    response_headers,
)
from broker.syscalls.http import build_headers, check_url, parse_request

# --------------------------------------------------------------------------------------------
# is_safe_ip: the reference's table, then the ranges of §4 at their edges

REFERENCE_SAFE = ["8.8.8.8", "1.1.1.1", "198.51.100.1", "2001:4860:4860::8888"]
REFERENCE_BLOCKED = [
    # loopback and unspecified
    "127.0.0.1",
    "::1",
    "0.0.0.0",
    "::",
    # 0.0.0.0/8
    "0.0.0.1",
    "0.255.255.255",
    # RFC 1918
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "192.168.255.255",
    # link-local and CGNAT
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    # private IPv6
    "fc00::1",
    "fd00::1",
    "fe80::1",
    # IPv4-mapped bypass
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    # IPv4-compatible bypass
    "::127.0.0.1",
    "::10.0.0.1",
    "::169.254.169.254",
    "::0.0.0.1",
]

EDGE_BLOCKED = [
    "127.255.255.255",
    "224.0.0.1",  # multicast
    "239.255.255.255",
    "255.0.0.1",  # first octet 255
    "255.255.255.255",
    "ff02::1",  # IPv6 multicast
    "ff00::",
    "fdff:ffff::1",  # fc00::/7 upper end
    "febf:ffff::1",  # fe80::/10 upper end
    "fe80::1%eth0",  # zone index
    "::ffff:192.168.1.1",
    "::ffff:0.0.0.0",
    "::ffff:224.0.0.1",
    "::2",  # IPv4-compatible: 0.0.0.2
    "::ffff:100.64.0.0",
]

EDGE_SAFE = [
    # "not blocked" in §4
    "198.18.0.1",  # benchmarking 198.18/15
    "198.19.255.255",
    "192.0.0.1",  # IETF protocol assignments
    "240.0.0.1",  # reserved 240/4, except 255.x
    "254.255.255.255",
    "fec0::1",  # deprecated site-local
    "64:ff9b::7f00:1",  # NAT64 (embeds 127.0.0.1, still not blocked)
    "2002:7f00:1::1",  # 6to4 (embeds 127.0.0.1, still not blocked)
    # just outside the blocked ranges
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "223.255.255.255",
    "fbff::1",  # just below fc00::/7
    "fec0::",
    "2606:4700::1111",
    "::ffff:8.8.8.8",  # mapped public address
    "::8.8.8.8",  # compatible public address
]


@pytest.mark.parametrize("ip", REFERENCE_SAFE + EDGE_SAFE)
def test_safe_addresses(ip: str) -> None:
    assert is_safe_ip(ip)
    assert is_safe_ip(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", REFERENCE_BLOCKED + EDGE_BLOCKED)
def test_blocked_addresses(ip: str) -> None:
    assert not is_safe_ip(ip)


@pytest.mark.parametrize(
    ("ip", "canonical"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::127.0.0.1", "127.0.0.1"),
        ("::1", "0.0.0.1"),
        ("::", "0.0.0.0"),
        ("::8.8.8.8", "8.8.8.8"),
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("::1:0:0:1", "::1:0:0:1"),  # the first six groups are not all zero
    ],
)
def test_mapped_and_compatible_addresses_become_ipv4(ip: str, canonical: str) -> None:
    assert canonical_ip(ip) == ipaddress.ip_address(canonical)


@pytest.fixture
def fresh_flag(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The process-wide flag, recomputed for one test (and again afterwards)."""
    for name in http_client.ALLOW_LOCAL_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    local_ips_allowed.cache_clear()
    yield monkeypatch
    local_ips_allowed.cache_clear()


@pytest.mark.parametrize("name", ["ASTRID_ALLOW_LOCAL_IPS", "ASTRID_TEST_ALLOW_LOCAL_IP"])
@pytest.mark.parametrize("value", ["1", "", "no"])
def test_either_env_var_with_any_value_lifts_the_ban(
    fresh_flag: pytest.MonkeyPatch, name: str, value: str
) -> None:
    fresh_flag.setenv(name, value)
    assert local_ips_allowed()
    assert ip_allowed("127.0.0.1")
    assert ip_allowed("::1")


def test_without_the_env_vars_the_ban_holds(fresh_flag: pytest.MonkeyPatch) -> None:
    assert not local_ips_allowed()
    assert not ip_allowed("127.0.0.1")
    assert ip_allowed("8.8.8.8")


def test_the_flag_is_read_once_per_process(fresh_flag: pytest.MonkeyPatch) -> None:
    assert not local_ips_allowed()
    fresh_flag.setenv("ASTRID_ALLOW_LOCAL_IPS", "1")
    assert not local_ips_allowed()  # cached, as the reference's LazyLock


# --------------------------------------------------------------------------------------------
# Methods and headers


@pytest.mark.parametrize("method", [*METHODS, "get", "Post", "pUt", "delete", "patch", "head"])
def test_supported_methods_in_any_case(method: str) -> None:
    assert normalize_method(method) == method.upper()


@pytest.mark.parametrize("method", ["CONNECT", "TRACE", "foo", "", "GET ", "G\u0130T"])
def test_other_methods_are_unsupported(method: str) -> None:
    assert normalize_method(method) is None


@pytest.mark.parametrize(
    "name", ["X-Token", "content-type", "a", "!#$%&'*+-.^_`|~", "X-123", "A" * 1000]
)
def test_valid_header_names(name: str) -> None:
    assert is_valid_header_name(name)


@pytest.mark.parametrize(
    "name", ["", "Bad\nHeader", "a b", "a:b", "caf\u00e9", "(x)", "a\tb", "x\x00", "a/b", "{}"]
)
def test_invalid_header_names(name: str) -> None:
    assert not is_valid_header_name(name)


@pytest.mark.parametrize("value", ["", "plain", "a b", "a\tb", "caf\u00e9", "\u20ac", "~!@"])
def test_valid_header_values(value: str) -> None:
    assert is_valid_header_value(value)


@pytest.mark.parametrize("value", ["Bad\r\nValue", "a\nb", "a\rb", "a\x00b", "a\x7f", "\x1f"])
def test_invalid_header_values(value: str) -> None:
    assert not is_valid_header_value(value)


def test_build_headers_reports_the_reference_texts() -> None:
    with pytest.raises(SyscallError) as info:
        build_headers({"Bad\nHeader": "x"})
    assert info.value.text == "invalid header name Bad\nHeader: invalid HTTP header name"
    with pytest.raises(SyscallError) as info:
        build_headers({"X-Ok": "Bad\r\nValue"})
    assert info.value.text == "invalid header value Bad\r\nValue: failed to parse header value"


def test_build_headers_lowercases_keeps_the_last_of_a_name_and_sends_utf8() -> None:
    assert build_headers({"X-A": "1", "x-a": "2", "X-B": " caf\u00e9\t"}) == [
        (b"x-a", b"2"),
        (b"x-b", "caf\u00e9".encode()),
    ]


def test_response_headers_lowercase_visible_ascii_last_wins() -> None:
    raw = [
        (b"Content-Type", b"text/plain"),
        (b"X-Multi", b"first"),
        (b"X-Latin", b"caf\xe9"),
        (b"X-Utf8", "caf\u00e9".encode()),
        (b"X-Ctl", b"a\x01b"),
        (b"X-Del", b"a\x7f"),
        (b"X-Tab", b"a\tb"),
        (b"X-Empty", b""),
        (b"x-multi", b"second"),
        (b"X-Latin2", b"ok"),
        (b"X-LATIN2", b"\xff"),  # a later invisible value does not erase the visible one
    ]
    assert response_headers(raw) == {
        "content-type": "text/plain",
        "x-tab": "a\tb",
        "x-empty": "",
        "x-multi": "second",
        "x-latin2": "ok",
    }


# --------------------------------------------------------------------------------------------
# Request parsing and URL checks of the handler


def test_parse_request_defaults_and_ignores_unknown_fields() -> None:
    request = parse_request('{"url":"http://a/","extra":[1]}')
    assert (request.url, request.method, request.headers, request.body) == (
        "http://a/",
        "GET",
        {},
        None,
    )
    request = parse_request('{"url":"u","method":"post","headers":{"a":"b"},"body":null}')
    assert (request.method, request.headers, request.body) == ("post", {"a": "b"}, None)
    assert parse_request('{"url":"u","body":"x"}').body == "x"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{}", "missing field `url`"),
        ('{"url":1}', "url: invalid type"),
        ('{"url":"u","headers":{"a":1}}', "headers.a: invalid type: a number"),
        ('{"url":"u","headers":[]}', "headers: invalid type"),
        ('{"url":"u","headers":null}', "headers: invalid type: null"),
        ('{"url":"u","method":null}', "method: invalid type: null"),
        ('{"url":"u","body":{}}', "body: invalid type"),
        ("[]", "expected struct HttpRequest"),
        ("{", "invalid JSON"),
        ("", "invalid JSON"),
    ],
)
def test_parse_request_errors(text: str, needle: str) -> None:
    with pytest.raises(SerdeError) as info:
        parse_request(text)
    assert needle in str(info.value)


def _session(*net: str) -> Any:
    gate = CapabilityGate("web", Capabilities(net=list(net)), "/")
    return SimpleNamespace(gate=gate)


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("foo", "invalid url foo: relative URL without a base"),
        ("/path", "invalid url /path: relative URL without a base"),
        ("http://[::1/", "invalid url http://[::1/: invalid IPv6 address"),
        ("http://h:99999/", "invalid url http://h:99999/: invalid port number"),
        ("http://a b/", "invalid url http://a b/: invalid domain character"),
        ("file:///etc/passwd", "URL missing host"),
        ("data:text/plain,hi", "URL missing host"),
        ("mailto:a@b.c", "URL missing host"),
        (
            "http://evil-hacker.com/steal",
            "security denied network access: capsule 'web' denied: network access to "
            "'http://evil-hacker.com/steal' not declared in manifest",
        ),
        (
            "http://allowed.com@127.0.0.1/",
            "security denied network access: capsule 'web' denied: network access to "
            "'http://allowed.com@127.0.0.1/' not declared in manifest",
        ),
        (
            "http://notallowed.com/",
            "security denied network access: capsule 'web' denied: network access to "
            "'http://notallowed.com/' not declared in manifest",
        ),
    ],
)
def test_check_url_errors(url: str, text: str) -> None:
    with pytest.raises(SyscallError) as info:
        check_url(_session("allowed.com"), url)
    assert info.value.text == text


@pytest.mark.parametrize(
    "url",
    [
        "http://allowed.com/",
        "https://api.allowed.com:8443/x?y",
        "HTTP://Allowed.COM/",
        " http://allowed.com/ ",
    ],
)
def test_check_url_allows_declared_hosts_and_subdomains(url: str) -> None:
    assert check_url(_session("allowed.com"), url) == url.strip()


def test_check_url_with_a_star_entry_allows_ip_literals() -> None:
    assert check_url(_session("*"), "http://[::1]:8080/") == "http://[::1]:8080/"
    assert check_url(_session("*"), "http://u:p@127.0.0.1/") == "http://u:p@127.0.0.1/"


# --------------------------------------------------------------------------------------------
# The SSRF backend, with a fake inner backend


class FakeStream(httpcore.AsyncNetworkStream):
    def __init__(self, record: list[Any]) -> None:
        self.record = record

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self.record.append(("tls", server_hostname))
        raise httpcore.ConnectError("stop after recording the TLS server name")

    async def aclose(self) -> None:
        pass


class FakeInner(httpcore.AsyncNetworkBackend):
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[Any] = []
        self.refuse = refuse or set()

    async def connect_tcp(self, host: str, port: int, **_: Any) -> httpcore.AsyncNetworkStream:
        self.calls.append(("connect", host, port))
        if host in self.refuse:
            raise httpcore.ConnectError(f"refused {host}")
        return FakeStream(self.calls)

    async def sleep(self, seconds: float) -> None:
        pass


def resolver(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def connect(backend: SafeNetworkBackend, host: str, port: int = 80) -> Any:
    return asyncio.run(backend.connect_tcp(host, port, timeout=5))


def test_an_unsafe_ip_literal_is_refused_before_connecting() -> None:
    inner = FakeInner()
    backend = SafeNetworkBackend(inner, allowed=is_safe_ip)
    for host, shown in [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[::1]", "::1")]:
        with pytest.raises(httpcore.ConnectError) as info:
            connect(backend, host)
        assert str(info.value) == literal_denied(shown)
    assert inner.calls == []


def test_a_safe_ip_literal_is_connected_as_is() -> None:
    inner = FakeInner()
    connect(SafeNetworkBackend(inner, allowed=is_safe_ip), "93.184.216.34", 443)
    assert inner.calls == [("connect", "93.184.216.34", 443)]


def test_a_name_resolving_only_to_unsafe_addresses_is_refused() -> None:
    inner = FakeInner()
    backend = SafeNetworkBackend(
        inner,
        allowed=is_safe_ip,
        resolver=resolver({"evil.test": ["127.0.0.1", "::1", "10.0.0.1"]}),
    )
    with pytest.raises(httpcore.ConnectError) as info:
        connect(backend, "evil.test")
    assert str(info.value) == DNS_DENIED
    assert inner.calls == []


def test_unsafe_addresses_are_dropped_and_a_safe_one_is_used() -> None:
    inner = FakeInner(refuse={"2606:4700::1111"})
    backend = SafeNetworkBackend(
        inner,
        allowed=is_safe_ip,
        resolver=resolver({"mixed.test": ["10.0.0.1", "2606:4700::1111", "::1", "1.1.1.1"]}),
    )
    connect(backend, "mixed.test", 8080)
    assert inner.calls == [("connect", "2606:4700::1111", 8080), ("connect", "1.1.1.1", 8080)]


def test_when_every_safe_address_fails_the_last_error_is_raised() -> None:
    inner = FakeInner(refuse={"1.1.1.1", "8.8.8.8"})
    backend = SafeNetworkBackend(
        inner, allowed=is_safe_ip, resolver=resolver({"down.test": ["1.1.1.1", "8.8.8.8"]})
    )
    with pytest.raises(httpcore.ConnectError, match=r"refused 8\.8\.8\.8"):
        connect(backend, "down.test")


def test_a_resolution_failure_is_a_dns_error() -> None:
    backend = SafeNetworkBackend(FakeInner(), allowed=is_safe_ip, resolver=resolver({}))
    with pytest.raises(httpcore.ConnectError, match=r"^dns error: .*Name or service not known"):
        connect(backend, "nowhere.test")


def test_a_slow_resolution_is_a_connect_timeout() -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return []

    backend = SafeNetworkBackend(FakeInner(), allowed=is_safe_ip, resolver=slow)
    with pytest.raises(httpcore.ConnectTimeout):
        asyncio.run(backend.connect_tcp("slow.test", 80, timeout=0.05))


def test_unix_sockets_are_refused() -> None:
    backend = SafeNetworkBackend(FakeInner())
    with pytest.raises(httpcore.ConnectError):
        asyncio.run(backend.connect_unix_socket("/run/docker.sock"))


def test_the_system_resolver_is_used_by_default() -> None:
    # localhost resolves through getaddrinfo (no network needed) to loopback only: refused.
    backend = SafeNetworkBackend(FakeInner(), allowed=is_safe_ip)
    with pytest.raises(httpcore.ConnectError) as info:
        connect(backend, "localhost")
    assert str(info.value) == DNS_DENIED


def test_tls_verifies_the_url_host_while_connecting_to_the_checked_address() -> None:
    inner = FakeInner()
    backend = SafeNetworkBackend(
        inner, allowed=is_safe_ip, resolver=resolver({"public.test": ["93.184.216.34"]})
    )

    async def main() -> None:
        async with build_client(backend) as client:
            with pytest.raises(RequestFailed):
                await fetch(client, "GET", "https://public.test/x")

    asyncio.run(main())
    assert inner.calls[0] == ("connect", "93.184.216.34", 443)
    assert inner.calls[1] == ("tls", "public.test")


# --------------------------------------------------------------------------------------------
# The client against a loopback server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one connection per request: every hop connects anew

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        server.seen.append(self.path)
        path = self.path
        if path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", "http://" + path.removeprefix("/to/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/hang":
            server.release.wait(10)
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"12345")
            self.wfile.flush()
            server.release.wait(10)
        elif path.startswith("/bytes/"):
            size = int(path.removeprefix("/bytes/"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                for _ in range(0, size, 65536):
                    self.wfile.write(b"a" * min(65536, size))
            except OSError:
                pass
        else:
            body = b"hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Seen", self.headers.get("user-agent", "none"))
            self.send_header("X-Encoding", self.headers.get("accept-encoding", "none"))
            self.end_headers()
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[str]
    release: threading.Event


@dataclass
class Loopback:
    server: Server
    port: int

    @property
    def seen(self) -> list[str]:
        return self.server.seen


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    server = Server(("127.0.0.1", 0), Handler)
    server.seen = []
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Loopback(server, server.server_address[1])
    server.release.set()
    server.shutdown()
    server.server_close()


def only(*addresses: str) -> Any:
    """A test-only policy: the safe addresses plus ``addresses``."""
    extra = {ipaddress.ip_address(a) for a in addresses}
    return lambda ip: is_safe_ip(ip) or ip in extra


def run_fetch(backend: SafeNetworkBackend, url: str, **kwargs: Any) -> Any:
    async def main() -> Any:
        async with build_client(backend) as client:
            return await fetch(client, "GET", url, **kwargs)

    return asyncio.run(main())


def test_a_redirect_to_a_loopback_literal_is_refused(loopback: Loopback) -> None:
    loopback.seen.clear()
    backend = SafeNetworkBackend(allowed=only("127.0.0.1"))
    target = f"127.0.0.2:{loopback.port}/text"
    with pytest.raises(RequestFailed) as info:
        run_fetch(backend, f"http://127.0.0.1:{loopback.port}/to/{target}")
    assert str(info.value) == (
        f"error sending request for url (http://{target}): {literal_denied('127.0.0.2')}"
    )
    assert loopback.seen == [f"/to/{target}"]  # the first hop only


def test_a_redirect_to_a_name_resolving_to_loopback_is_refused(loopback: Loopback) -> None:
    loopback.seen.clear()
    backend = SafeNetworkBackend(
        allowed=only("127.0.0.1"),
        resolver=resolver({"first.test": ["127.0.0.1"], "inside.test": ["127.0.0.2"]}),
    )
    with pytest.raises(RequestFailed) as info:
        run_fetch(backend, f"http://first.test:{loopback.port}/to/inside.test:{loopback.port}/")
    assert str(info.value).endswith(DNS_DENIED)
    assert f"(http://inside.test:{loopback.port}/)" in str(info.value)
    assert len(loopback.seen) == 1


def test_an_allowed_redirect_is_followed(loopback: Loopback) -> None:
    loopback.seen.clear()
    backend = SafeNetworkBackend(allowed=only("127.0.0.1"))
    response = run_fetch(
        backend, f"http://127.0.0.1:{loopback.port}/to/127.0.0.1:{loopback.port}/end"
    )
    assert (response.status, response.body) == (200, b"hello")
    assert loopback.seen == [f"/to/127.0.0.1:{loopback.port}/end", "/end"]


def test_every_connection_resolves_again_so_rebinding_is_caught(loopback: Loopback) -> None:
    answers = [["127.0.0.1"], ["127.0.0.2"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    backend = SafeNetworkBackend(allowed=only("127.0.0.1"), resolver=rebinding)

    async def main() -> None:
        async with build_client(backend) as client:
            url = f"http://rebind.test:{loopback.port}/"
            assert (await fetch(client, "GET", url)).status == 200
            with pytest.raises(RequestFailed, match=DNS_DENIED):
                await fetch(client, "GET", url)

    asyncio.run(main())


def test_at_most_ten_redirects_are_followed(loopback: Loopback) -> None:
    loopback.seen.clear()
    with pytest.raises(RequestFailed) as info:
        run_fetch(
            SafeNetworkBackend(allowed=only("127.0.0.1")), f"http://127.0.0.1:{loopback.port}/loop"
        )
    assert "too many redirects" in str(info.value)
    assert loopback.seen == ["/loop"] * (MAX_REDIRECTS + 1)


def test_no_user_agent_and_no_compression_are_sent(loopback: Loopback) -> None:
    response = run_fetch(
        SafeNetworkBackend(allowed=only("127.0.0.1")), f"http://127.0.0.1:{loopback.port}/"
    )
    assert response.headers["x-seen"] == "none"
    assert response.headers["x-encoding"] == "none"


def test_the_body_limit_is_cumulative(loopback: Loopback) -> None:
    backend = SafeNetworkBackend(allowed=only("127.0.0.1"))
    url = f"http://127.0.0.1:{loopback.port}/bytes/300000"
    assert len(run_fetch(backend, url, limit=300000).body) == 300000
    with pytest.raises(BodyFailed) as info:
        run_fetch(backend, url, limit=299999)
    assert str(info.value) == "HTTP response exceeded maximum payload limit (299999 bytes)"


def test_the_deadline_covers_the_response_headers(loopback: Loopback) -> None:
    with pytest.raises(RequestFailed) as info:
        run_fetch(
            SafeNetworkBackend(allowed=only("127.0.0.1")),
            f"http://127.0.0.1:{loopback.port}/hang",
            timeout=0.3,
        )
    assert str(info.value).endswith("operation timed out")


def test_the_deadline_covers_the_body(loopback: Loopback) -> None:
    with pytest.raises(BodyFailed, match="operation timed out"):
        run_fetch(
            SafeNetworkBackend(allowed=only("127.0.0.1")),
            f"http://127.0.0.1:{loopback.port}/slow-body",
            timeout=0.3,
        )


def test_a_closed_port_is_a_request_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RequestFailed) as info:
        run_fetch(SafeNetworkBackend(allowed=only("127.0.0.1")), f"http://127.0.0.1:{port}/")
    assert str(info.value).startswith(f"error sending request for url (http://127.0.0.1:{port}/): ")


@pytest.mark.parametrize("url", ["ftp://example.com/", "ws://example.com/"])
def test_only_http_and_https_are_sent(url: str) -> None:
    with pytest.raises(RequestFailed) as info:
        run_fetch(SafeNetworkBackend(FakeInner()), url)
    assert str(info.value) == f"builder error for url ({url}): URL scheme is not allowed"


def test_the_client_ignores_proxy_variables(
    loopback: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    response = run_fetch(
        SafeNetworkBackend(allowed=only("127.0.0.1")), f"http://127.0.0.1:{loopback.port}/"
    )
    assert response.status == 200


def test_the_kernel_service_builds_one_client_lazily_and_closes_it() -> None:
    service = HttpClient(SimpleNamespace())  # type: ignore[arg-type]
    assert service._client is None

    async def main() -> None:
        client = service.client
        assert service.client is client
        assert isinstance(client, httpx.AsyncClient)
        service.close()
        assert service._client is None
        await asyncio.sleep(0)
        await asyncio.gather(*service._closing)
        assert client.is_closed

    asyncio.run(main())
