"""``astrid_http_request`` through a real broker and a real worker (syscalls.md §2.7, §4, §7).

A loopback HTTP server runs in the test (on 127.0.0.1, and on ::1 when the machine has IPv6
loopback). Two brokers: one started with ``ASTRID_ALLOW_LOCAL_IPS=1`` in its environment, where
the syscaller capsule reaches the server, and one without it, where every loopback destination
is refused (DESIGN §6.5) before any connection is made.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from astrid_core.rpc import RpcError
from broker.http_client import ALLOW_LOCAL_ENV_VARS, DNS_DENIED, literal_denied
from tests.conftest import copy_capsule
from tests.harness import Runtime
from tests.syscaller import Fill, decode_hex_output, encode_script, script_tool_args

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
DATE = "Thu, 01 Jan 1970 00:00:00 GMT"
BODY_CAP = (
    "failed to read http response body: "
    "HTTP response exceeded maximum payload limit (10485760 bytes)"
)
NOT_UTF8 = "failed to read http response body: response body is not valid UTF-8"


# --------------------------------------------------------------------------------------------
# The loopback server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "test-server"

    def date_time_string(self, timestamp: float | None = None) -> str:
        return DATE

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except OSError:
                pass

    def _handle(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        server.seen.append((self.command, self.path))
        port = server.server_address[1]
        if path == "/text":
            self._reply(200, b"hello")
        elif path == "/echo":
            echo = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            self._reply(200, json.dumps(echo).encode(), "application/json")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/text")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big":
            self._reply(200, b"x" * (11 * MiB))
        elif path == "/half-mib":
            self._reply(200, b"y" * (MiB // 2))
        elif path == "/latin1":
            self._reply(200, "caf\u00e9".encode("latin-1"), "text/plain; charset=latin-1")
        elif path == "/headers":
            self.send_response(200)
            self.send_header("X-Mixed-Case", "Value")
            self.send_header("X-Multi", "first")
            self.send_header("X-Latin", "caf\u00e9")  # sent as Latin-1: not visible ASCII
            self.send_header("X-Multi", "second")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/status/"):
            status = int(path.removeprefix("/status/"))
            if status == 204:
                self.send_response(204)
                self.end_headers()
            else:
                self._reply(status, b"missing")
        else:
            self._reply(500, b"no route")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str]]


class Server6(Server):
    address_family = socket.AF_INET6


@dataclass
class Servers:
    v4: Server
    v6: Server | None

    @property
    def port(self) -> int:
        return int(self.v4.server_address[1])

    @property
    def port6(self) -> int:
        assert self.v6 is not None
        return int(self.v6.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def seen(self) -> list[tuple[str, str]]:
        return self.v4.seen + (self.v6.seen if self.v6 is not None else [])

    def clear(self) -> None:
        self.v4.seen.clear()
        if self.v6 is not None:
            self.v6.seen.clear()


def _serve(server: Server) -> Server:
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    v4 = _serve(Server(("127.0.0.1", 0), Handler))
    try:
        v6: Server | None = _serve(Server6(("::1", 0), Handler))
    except OSError:
        v6 = None
    yield Servers(v4, v6)
    for server in (v4, v6):
        if server is not None:
            server.shutdown()
            server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Brokers and capsules


class Caller:
    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self.client = runtime.client()

    def run(self, calls: Sequence[tuple[str, Sequence[bytes | Fill]]]) -> list[bytes | None]:
        arguments = json.loads(script_tool_args(encode_script(calls)))
        output = self.client.call_tool(self.name, "run", arguments, timeout=60)
        return decode_hex_output(output)

    def http(self, request: bytes | Fill | dict[str, Any]) -> bytes:
        arg = json.dumps(request).encode() if isinstance(request, dict) else request
        result = self.run([("astrid_http_request", [arg])])[0]
        assert result is not None
        return result

    def response(self, request: dict[str, Any]) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.http(request))
        return value

    def trap(self, request: bytes | Fill | dict[str, Any]) -> str:
        with pytest.raises(RpcError) as info:
            self.http(request)
        message = info.value.message
        assert message.startswith("astrid_tool_call failed: "), message
        return message.removeprefix("astrid_tool_call failed: ")


@dataclass
class Env:
    runtime: Runtime
    callers: dict[str, Caller]

    def __getitem__(self, name: str) -> Caller:
        return self.callers[name]


def _start(
    base: Path,
    syscaller: Path,
    nets: dict[str, list[str]],
    allow_local: bool,
) -> Env:
    home, workspace = base / "home", base / "ws"
    home.mkdir()
    workspace.mkdir()
    runtime = Runtime(home, workspace, f"ipc://{base}/b.ipc")
    with pytest.MonkeyPatch.context() as mp:
        for name in ALLOW_LOCAL_ENV_VARS:
            mp.delenv(name, raising=False)
        if allow_local:
            mp.setenv("ASTRID_ALLOW_LOCAL_IPS", "1")
        runtime.start_broker()  # the broker inherits the environment of the test
    callers: dict[str, Caller] = {}
    for name, net in nets.items():
        capsule = copy_capsule(
            syscaller,
            base / "caps",
            name=name,
            extra_toml=f"[capabilities]\nnet = {json.dumps(net)}\n",
        )
        runtime.start_worker(capsule)
    for name in nets:
        callers[name] = Caller(runtime, name)
    return Env(runtime, callers)


def _stop(env: Env) -> None:
    for caller in env.callers.values():
        caller.client.close()
    env.runtime.stop()


@pytest.fixture(scope="module")
def allowed(
    capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, servers: Servers
) -> Iterator[Env]:
    env = _start(
        tmp_path_factory.mktemp("http-allowed"),
        capsules["syscaller"],
        {
            "syscaller": ["127.0.0.1", "[::1]", "localhost"],
            "net-star": ["*"],
            "net-gate": ["api.github.com", "allowed.com"],
        },
        allow_local=True,
    )
    yield env
    _stop(env)


@pytest.fixture(scope="module")
def guarded(
    capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, servers: Servers
) -> Iterator[Env]:
    env = _start(
        tmp_path_factory.mktemp("http-guarded"),
        capsules["syscaller"],
        {"syscaller": ["*"]},
        allow_local=False,
    )
    yield env
    _stop(env)


# --------------------------------------------------------------------------------------------
# Requests that work (flag on)


def test_a_get_returns_the_exact_response_json(allowed: Env, servers: Servers) -> None:
    result = allowed["syscaller"].http({"url": servers.url("/text")})
    assert result == (
        b'{"status":200,"headers":{"server":"test-server","date":"' + DATE.encode() + b'",'
        b'"content-type":"text/plain; charset=utf-8","content-length":"5"},"body":"hello"}'
    )


@pytest.mark.parametrize("method", ["GET", "post", "Put", "DELETE", "patch", "OPTIONS"])
def test_every_method_reaches_the_server(allowed: Env, servers: Servers, method: str) -> None:
    response = allowed["syscaller"].response({"url": servers.url("/echo"), "method": method})
    assert response["status"] == 200
    echo = json.loads(response["body"])
    assert echo["method"] == method.upper()
    assert echo["path"] == "/echo"


def test_head_gets_headers_and_an_empty_body(allowed: Env, servers: Servers) -> None:
    servers.clear()
    response = allowed["syscaller"].response({"url": servers.url("/echo"), "method": "head"})
    assert response["status"] == 200
    assert response["body"] == ""
    assert response["headers"]["content-type"] == "application/json"
    assert int(response["headers"]["content-length"]) > 0
    assert servers.seen() == [("HEAD", "/echo")]


def test_request_headers_and_body_arrive(allowed: Env, servers: Servers) -> None:
    response = allowed["syscaller"].response(
        {
            "url": servers.url("/echo?q=1"),
            "method": "POST",
            "headers": {"X-Token": "abc 123", "Content-Type": "application/json"},
            "body": '{"caf\u00e9":1}',
            "ignored": True,
        }
    )
    echo = json.loads(response["body"])
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo?q=1"
    assert echo["headers"]["x-token"] == "abc 123"
    assert echo["headers"]["content-type"] == "application/json"
    assert echo["headers"]["host"] == f"127.0.0.1:{servers.port}"
    assert echo["body"] == '{"caf\u00e9":1}'
    assert echo["headers"]["content-length"] == str(len('{"caf\u00e9":1}'.encode()))
    assert "user-agent" not in echo["headers"]


def test_the_method_defaults_to_get_and_a_null_body_sends_none(
    allowed: Env, servers: Servers
) -> None:
    response = allowed["syscaller"].response({"url": servers.url("/echo"), "body": None})
    echo = json.loads(response["body"])
    assert echo["method"] == "GET"
    assert echo["body"] == ""


@pytest.mark.parametrize(("status", "body"), [(404, "missing"), (204, ""), (500, "missing")])
def test_non_2xx_statuses_are_results(
    allowed: Env, servers: Servers, status: int, body: str
) -> None:
    response = allowed["syscaller"].response({"url": servers.url(f"/status/{status}")})
    assert response["status"] == status
    assert response["body"] == body


def test_response_headers_are_lowercase_visible_ascii_last_wins(
    allowed: Env, servers: Servers
) -> None:
    headers = allowed["syscaller"].response({"url": servers.url("/headers")})["headers"]
    assert headers["x-mixed-case"] == "Value"
    assert headers["x-multi"] == "second"
    assert "x-latin" not in headers
    assert all(name == name.lower() for name in headers)


def test_redirects_are_followed(allowed: Env, servers: Servers) -> None:
    servers.clear()
    response = allowed["syscaller"].response({"url": servers.url("/redirect")})
    assert (response["status"], response["body"]) == (200, "hello")
    assert servers.seen() == [("GET", "/redirect"), ("GET", "/text")]


def test_a_redirect_loop_fails_after_ten_redirects(allowed: Env, servers: Servers) -> None:
    servers.clear()
    text = allowed["syscaller"].trap({"url": servers.url("/loop")})
    assert text.startswith("http request failed: ")
    assert "too many redirects" in text
    assert len(servers.seen()) == 11


def test_a_host_name_resolving_to_loopback_works_with_the_flag(
    allowed: Env, servers: Servers
) -> None:
    response = allowed["syscaller"].response({"url": f"http://localhost:{servers.port}/text"})
    assert response["body"] == "hello"


def test_ipv6_loopback_works_with_the_flag(allowed: Env, servers: Servers) -> None:
    if servers.v6 is None:
        pytest.skip("no IPv6 loopback on this machine")
    response = allowed["syscaller"].response({"url": f"http://[::1]:{servers.port6}/echo"})
    assert json.loads(response["body"])["headers"]["host"] == f"[::1]:{servers.port6}"


def test_a_large_body_is_returned_whole(allowed: Env, servers: Servers) -> None:
    # (The syscaller capsule's own results are capped at 1 MiB.)
    body = allowed["syscaller"].response({"url": servers.url("/half-mib")})["body"]
    assert body == "y" * (MiB // 2)


# --------------------------------------------------------------------------------------------
# Every error text of §4, as a trap the caller sees


def test_an_oversized_request_is_refused_before_reading(allowed: Env) -> None:
    assert allowed["syscaller"].trap(Fill(ord(" "), 10 * MiB + 1)) == (
        "memory allocation of 10485761 bytes exceeds maximum allowed limit of 10485760 bytes"
    )


def test_a_request_that_is_not_utf8(allowed: Env) -> None:
    assert allowed["syscaller"].trap(b'{"url":"\xff"}') == (
        "failed to parse request as utf8: invalid utf-8 sequence of 1 bytes from index 8"
    )


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (b"{", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"{}", "missing field `url`"),
        (b'{"url":"http://127.0.0.1/","headers":{"X-A":1}}', "invalid type"),
        (b'{"url":"http://127.0.0.1/","method":null}', "invalid type: null"),
        (b'{"url":"http://127.0.0.1/","body":5}', "invalid type"),
        (b'"http://127.0.0.1/"', "expected struct HttpRequest"),
    ],
)
def test_invalid_request_json(allowed: Env, request_: bytes, needle: str) -> None:
    text = allowed["syscaller"].trap(request_)
    assert text.startswith("invalid http request json: ")
    assert needle in text


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("not a url", "invalid url not a url: relative URL without a base"),
        ("http://[::1/", "invalid url http://[::1/: invalid IPv6 address"),
        ("http://127.0.0.1:99999/", "invalid url http://127.0.0.1:99999/: invalid port number"),
        ("file:///etc/passwd", "URL missing host"),
        ("data:text/plain,hello", "URL missing host"),
    ],
)
def test_invalid_urls(allowed: Env, url: str, text: str) -> None:
    assert allowed["net-star"].trap({"url": url}) == text


def _denied(capsule: str, url: str) -> str:
    return (
        f"security denied network access: capsule '{capsule}' denied: "
        f"network access to '{url}' not declared in manifest"
    )


def test_the_reference_security_gate_case(allowed: Env) -> None:
    # net = ["api.github.com", ...]: the declared host is not denied (the network is closed
    # here, so any other failure is fine); an undeclared one is.
    caller = allowed["net-gate"]
    try:
        caller.http({"url": "https://api.github.com/v1/user"})
    except RpcError as exc:
        assert "security denied" not in exc.message
    text = caller.trap({"url": "https://evil-hacker.com/steal"})
    assert text == _denied("net-gate", "https://evil-hacker.com/steal")
    assert "security denied" in text
    assert "not declared in manifest" in text


@pytest.mark.parametrize(
    "url", ["http://allowed.com.invalid:1/", "http://v2.api.github.com.invalid:1/"]
)
def test_entries_do_not_match_other_suffixes(allowed: Env, url: str) -> None:
    assert allowed["net-gate"].trap({"url": url}) == _denied("net-gate", url)


def test_subdomains_of_an_entry_are_allowed(allowed: Env) -> None:
    try:
        allowed["net-gate"].http({"url": "http://sub.allowed.com:1/"})
    except RpcError as exc:
        assert "security denied" not in exc.message


def test_the_userinfo_trick_is_denied(allowed: Env, servers: Servers) -> None:
    servers.clear()
    url = f"http://allowed.com@127.0.0.1:{servers.port}/text"
    assert allowed["net-gate"].trap({"url": url}) == _denied("net-gate", url)
    url = "http://notallowed.com/"
    assert allowed["net-gate"].trap({"url": url}) == _denied("net-gate", url)
    assert servers.seen() == []


def test_a_star_entry_allows_any_host(allowed: Env, servers: Servers) -> None:
    assert allowed["net-star"].response({"url": servers.url("/text")})["body"] == "hello"


def test_unsupported_methods_are_named_uppercased(allowed: Env, servers: Servers) -> None:
    caller = allowed["syscaller"]
    assert caller.trap({"url": servers.url("/"), "method": "connect"}) == (
        "unsupported http method: CONNECT"
    )
    assert caller.trap({"url": servers.url("/"), "method": "Trace"}) == (
        "unsupported http method: TRACE"
    )


def test_the_gate_is_checked_before_the_method(allowed: Env) -> None:
    url = "https://evil-hacker.com/"
    assert allowed["net-gate"].trap({"url": url, "method": "BREW"}) == _denied("net-gate", url)


def test_the_reference_malicious_header_name(allowed: Env) -> None:
    text = allowed["net-star"].trap({"url": "http://example.com", "headers": {"Bad\nHeader": "ok"}})
    assert text == "invalid header name Bad\nHeader: invalid HTTP header name"


def test_the_reference_malicious_header_value(allowed: Env) -> None:
    text = allowed["net-star"].trap(
        {"url": "http://example.com", "headers": {"X-Ok": "Bad\r\nValue"}}
    )
    assert text == "invalid header value Bad\r\nValue: failed to parse header value"


def test_the_reference_malicious_headers_case(allowed: Env) -> None:
    text = allowed["net-star"].trap(
        {"url": "http://example.com", "headers": {"Bad\nHeader": "Bad\r\nValue"}}
    )
    assert "invalid HTTP header name" in text or "failed to parse header" in text


def test_the_method_is_checked_before_the_headers(allowed: Env, servers: Servers) -> None:
    text = allowed["syscaller"].trap(
        {"url": servers.url("/"), "method": "FOO", "headers": {"Bad\nHeader": "x"}}
    )
    assert text == "unsupported http method: FOO"


def test_a_closed_port_is_a_request_failure(allowed: Env) -> None:
    port = closed_port()
    text = allowed["syscaller"].trap({"url": f"http://127.0.0.1:{port}/"})
    assert text.startswith(
        f"http request failed: error sending request for url (http://127.0.0.1:{port}/)"
    )


def test_a_body_over_ten_mib_is_refused(allowed: Env, servers: Servers) -> None:
    assert allowed["syscaller"].trap({"url": servers.url("/big")}) == BODY_CAP


def test_a_body_that_is_not_utf8_is_refused(allowed: Env, servers: Servers) -> None:
    assert allowed["syscaller"].trap({"url": servers.url("/latin1")}) == NOT_UTF8


def test_the_capsule_keeps_working_after_http_traps(allowed: Env, servers: Servers) -> None:
    caller = allowed["syscaller"]
    caller.trap({"url": servers.url("/big")})
    assert caller.response({"url": servers.url("/text")})["body"] == "hello"


# --------------------------------------------------------------------------------------------
# Without the flag: loopback is refused however it is named, before any connection


def test_a_loopback_ipv4_literal_is_refused(guarded: Env, servers: Servers) -> None:
    servers.clear()
    url = servers.url("/text")
    text = guarded["syscaller"].trap({"url": url})
    assert text == (
        f"http request failed: error sending request for url ({url}): "
        + literal_denied("127.0.0.1")
    )
    assert servers.seen() == []


def test_a_loopback_ipv6_literal_is_refused(guarded: Env, servers: Servers) -> None:
    servers.clear()
    port = servers.port6 if servers.v6 is not None else closed_port()
    text = guarded["syscaller"].trap({"url": f"http://[::1]:{port}/text"})
    assert text.startswith("http request failed: ")
    assert text.endswith(literal_denied("::1"))  # not "connection refused": never connected
    assert servers.seen() == []


@pytest.mark.parametrize("host", ["localhost", "LocalHost"])
def test_a_name_resolving_to_loopback_is_refused(guarded: Env, servers: Servers, host: str) -> None:
    servers.clear()
    text = guarded["syscaller"].trap({"url": f"http://{host}:{servers.port}/text"})
    assert text.startswith("http request failed: error sending request for url (")
    assert text.endswith(DNS_DENIED)
    assert servers.seen() == []


@pytest.mark.parametrize(
    "host", ["0x7f.0.0.1", "2130706433", "127.1", "[::ffff:127.0.0.1]", "0.0.0.0"]
)
def test_other_spellings_of_loopback_are_refused(guarded: Env, servers: Servers, host: str) -> None:
    servers.clear()
    text = guarded["syscaller"].trap({"url": f"http://{host}:{servers.port}/text"})
    assert text.startswith("http request failed: ")
    assert "unauthorized private or local IP address" in text
    assert servers.seen() == []


def test_a_redirect_chain_is_refused_at_its_first_loopback_hop(
    guarded: Env, servers: Servers
) -> None:
    servers.clear()
    text = guarded["syscaller"].trap({"url": f"http://localhost:{servers.port}/redirect"})
    assert text.endswith(DNS_DENIED)
    assert servers.seen() == []
