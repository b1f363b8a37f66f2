"""SSRF: a capsule allowed to reach any host (``net = ["*"]``) aims ``astrid_http_request`` at
the machine itself and at private networks (DESIGN §6.5), on a broker started without
``ASTRID_ALLOW_LOCAL_IPS``.

Every spelling of loopback (IPv4, IPv6, IPv4-mapped IPv6, decimal, hex, octal, short forms, a DNS
name) and every private, link-local and metadata range is refused before any connection: the
loopback server of the test never sees a request. Redirects and DNS answers that lead to loopback
are checked at the client level with a stand-in for the internet (a backend that routes one public
address to the local server), since the test machine has no public server to redirect from.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import pytest

from broker.http_client import (
    ALLOW_LOCAL_ENV_VARS,
    DNS_DENIED,
    RequestFailed,
    SafeNetworkBackend,
    build_client,
    fetch,
    is_safe_ip,
    literal_denied,
)
from tests.security.support import Trap, World, world_fixture

pytestmark = pytest.mark.integration

PUBLIC = "93.184.215.14"  # stands for "some host on the internet" in the client-level tests


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        server.seen.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect?to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"internal secret"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.seen = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def world(
    capsules: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, server: Server
) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ssrf")
    yield from world_fixture(
        base,
        capsules["syscaller"],
        {"fetcher": '[capabilities]\nnet = ["*"]\n'},
        env=dict.fromkeys(ALLOW_LOCAL_ENV_VARS, None),
    )


def port_of(server: Server) -> int:
    return int(server.server_address[1])


def attempt(world: World, url: str) -> str:
    request = f'{{"url":"{url}"}}'.encode()
    try:
        world["fetcher"].run([("astrid_http_request", [request])], timeout=60)
    except Trap as trap:
        return trap.text
    raise AssertionError(f"{url} was fetched")


LOOPBACK_LITERALS = [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.2", "127.0.0.2"),
    ("127.255.255.254", "127.255.255.254"),
    ("0.0.0.0", "0.0.0.0"),
    ("[::1]", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[::ffff:7f00:1]", "::ffff:7f00:1"),
    ("[::127.0.0.1]", "::7f00:1"),
    ("[::]", "::"),
]


@pytest.mark.parametrize(("host", "ip"), LOOPBACK_LITERALS)
def test_a_loopback_literal(world: World, server: Server, host: str, ip: str) -> None:
    server.seen.clear()
    url = f"http://{host}:{port_of(server)}/secret"
    text = attempt(world, url)
    assert text.startswith("http request failed: error sending request for url (")
    assert text.endswith(literal_denied(ip))
    assert server.seen == []


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0x7f.0.0.1", "017700000001", "127.1", "0"],
    ids=["decimal", "hex", "hex-dotted", "octal", "short", "zero"],
)
def test_a_numeric_spelling_of_loopback(world: World, server: Server, host: str) -> None:
    server.seen.clear()
    text = attempt(world, f"http://{host}:{port_of(server)}/secret")
    assert text.startswith("http request failed: "), text
    assert "unauthorized private or local IP address" in text
    assert server.seen == []


def test_an_ambiguous_octal_spelling_is_an_invalid_url(world: World, server: Server) -> None:
    server.seen.clear()
    url = f"http://0177.0.0.1:{port_of(server)}/secret"
    assert attempt(world, url) == f"invalid url {url}: Invalid IPv4 address: '0177.0.0.1'"
    assert server.seen == []


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "LocalHost"])
def test_a_dns_name_resolving_to_loopback(world: World, server: Server, host: str) -> None:
    server.seen.clear()
    text = attempt(world, f"http://{host}:{port_of(server)}/secret")
    assert text.startswith("http request failed: error sending request for url (")
    assert text.endswith(DNS_DENIED)
    assert server.seen == []


def test_the_machines_own_name_resolving_to_loopback(world: World, server: Server) -> None:
    name = socket.gethostname()
    try:
        addresses = {
            str(info[4][0]) for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        }
    except OSError:
        pytest.skip(f"{name} does not resolve")
    if any(is_safe_ip(address) for address in addresses):
        pytest.skip(f"{name} resolves to a public address")
    server.seen.clear()
    assert attempt(world, f"http://{name}:{port_of(server)}/secret").endswith(DNS_DENIED)
    assert server.seen == []


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("172.16.0.1", "172.16.0.1"),
        ("172.31.255.255", "172.31.255.255"),
        ("192.168.1.1", "192.168.1.1"),
        ("169.254.169.254", "169.254.169.254"),  # cloud metadata
        ("100.64.0.1", "100.64.0.1"),
        ("224.0.0.1", "224.0.0.1"),
        ("255.255.255.255", "255.255.255.255"),
        ("[fd00::1]", "fd00::1"),
        ("[fe80::1]", "fe80::1"),
        ("[ff02::1]", "ff02::1"),
        ("[::ffff:10.0.0.1]", "::ffff:a00:1"),
        ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
    ],
)
def test_a_private_or_link_local_address(world: World, host: str, ip: str) -> None:
    # Refused before connecting: a real attempt at these would time out or be refused
    # with another message.
    text = attempt(world, f"http://{host}/latest/meta-data/")
    assert text.startswith("http request failed: error sending request for url (")
    assert text.endswith(literal_denied(ip))


def test_userinfo_cannot_disguise_loopback(world: World, server: Server) -> None:
    server.seen.clear()
    text = attempt(world, f"http://example.com@127.0.0.1:{port_of(server)}/secret")
    assert text.endswith(literal_denied("127.0.0.1"))
    assert server.seen == []


# --------------------------------------------------------------------------------------------
# Redirects and DNS answers, at the client level


class Internet(httpcore.AsyncNetworkBackend):
    """The network as the test sees it: connections to :data:`PUBLIC` reach the local server
    (standing for a public host), every other address is dialled for real."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dialled: list[tuple[str, int]] = []
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        if host == PUBLIC:
            host, port = "127.0.0.1", self.port
        return await self.inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _fetch(
    server: Server, url: str, answers: dict[str, list[str]] | None = None
) -> tuple[Internet, str]:
    """Fetch ``url`` through the real SSRF backend and policy (without the env bypass) over
    :class:`Internet`; ``answers`` replaces DNS for the names it lists. Returns the network
    and the text of the failure (the fetch must fail)."""
    internet = Internet(port_of(server))

    async def resolver(host: str, port: int) -> list[str]:
        if answers is not None and host in answers:
            return answers[host]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    backend = SafeNetworkBackend(internet, allowed=is_safe_ip, resolver=resolver)

    async def main() -> None:
        client = build_client(backend)
        try:
            await fetch(client, "GET", url, timeout=10)
        finally:
            await client.aclose()

    with pytest.raises(RequestFailed) as info:
        asyncio.run(main())
    return internet, str(info.value)


@pytest.mark.parametrize(
    ("location", "denial"),
    [
        ("http://127.0.0.1:{port}/secret", literal_denied("127.0.0.1")),
        ("http://[::ffff:127.0.0.1]:{port}/secret", literal_denied("::ffff:7f00:1")),
        ("http://2130706433:{port}/secret", "unauthorized private or local IP address"),
        ("http://localhost:{port}/secret", DNS_DENIED),
        ("http://169.254.169.254/latest/meta-data/", literal_denied("169.254.169.254")),
    ],
    ids=["ipv4", "mapped-ipv6", "decimal", "dns", "metadata"],
)
def test_a_redirect_to_loopback(server: Server, location: str, denial: str) -> None:
    server.seen.clear()
    target = location.format(port=port_of(server))
    internet, error = _fetch(server, f"http://{PUBLIC}/redirect?to={target}")
    assert error.startswith("error sending request for url (")
    assert denial in error
    assert server.seen == [f"/redirect?to={target}"]  # the public hop only, never /secret
    assert internet.dialled == [(PUBLIC, 80)]


def test_a_redirect_chain_through_public_hosts_to_loopback(server: Server) -> None:
    server.seen.clear()
    final = f"http://127.0.0.1:{port_of(server)}/secret"
    internet, error = _fetch(
        server, f"http://{PUBLIC}/redirect?to=http://{PUBLIC}/redirect?to={final}"
    )
    assert error.endswith(literal_denied("127.0.0.1"))
    assert all(host == PUBLIC for host, _ in internet.dialled)
    assert "/secret" not in server.seen


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["::1"], ["10.0.0.5", "169.254.169.254"], ["::ffff:127.0.0.1"]],
    ids=["loopback", "ipv6-loopback", "private", "mapped"],
)
def test_a_dns_name_answering_only_local_addresses(server: Server, answer: list[str]) -> None:
    internet, error = _fetch(server, "http://rebind.example/secret", {"rebind.example": answer})
    assert error.endswith(DNS_DENIED)
    assert internet.dialled == []


def test_dns_rebinding_connects_only_to_the_address_checked(server: Server) -> None:
    """A name answering loopback first and a public address second: the connection goes to
    the public one (the address checked is the address dialled)."""
    server.seen.clear()

    async def main(backend: SafeNetworkBackend) -> int:
        client = build_client(backend)
        try:
            response = await fetch(client, "GET", "http://rebind.example/page", timeout=10)
        finally:
            await client.aclose()
        return response.status

    internet = Internet(port_of(server))

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1", PUBLIC]

    status = asyncio.run(main(SafeNetworkBackend(internet, allowed=is_safe_ip, resolver=resolver)))
    assert status == 200
    assert internet.dialled == [(PUBLIC, 80)]
