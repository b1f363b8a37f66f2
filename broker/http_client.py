"""The broker's HTTP client for ``astrid_http_request`` (syscalls.md §4, DESIGN §6.5).

One :class:`httpx.AsyncClient` per broker (the :class:`HttpClient` kernel service, created on
first use), configured like the reference's reqwest client: a **30 s total** deadline per request
(connect, redirects and body included), redirects followed up to **10**, no body decoding (the
bytes on the wire are the body), no default ``User-Agent``.

SSRF protection lives *inside the connection path*, in :class:`SafeNetworkBackend`, the
network backend of the client's connection pool: every TCP connection the client opens, for the
first request and for every redirect hop alike, goes through its ``connect_tcp``, which

* refuses an IP-literal host that is not safe (``connection to an unauthorized private or local
  IP address <ip> was refused``) — DESIGN §6.5 closes the reference's IP-literal gap;
* resolves a host name once with the loop's ``getaddrinfo``, drops every unsafe address
  (:func:`is_safe_ip`) and connects to a remaining one (``DNS resolved to an unauthorized private
  or local IP address`` when none remain). The address checked is the address connected to, so
  DNS rebinding between a check and the connect cannot happen; TLS still verifies the URL's host
  name (httpcore passes the origin host as ``server_hostname``).

The environment variable ``ASTRID_ALLOW_LOCAL_IPS`` (or the reference's
``ASTRID_TEST_ALLOW_LOCAL_IP``), set to any value in the broker's environment, lifts the ban for
every capsule; it is read once per process (:func:`local_ips_allowed`), as the reference does.

Decision: the client is built with ``trust_env=False``. The reference honours ``HTTP_PROXY`` and
friends, but a proxy would make the connection go to the proxy's address while the target host is
never checked against the SSRF rules (the proxy resolves and connects to it), so a proxy variable
in the broker's environment would silently route capsule traffic around them. For the same reason
``.netrc`` credentials and ``SSL_CERT_FILE`` are not read: certificates are verified against the
bundled Mozilla roots (``certifi``), like reqwest's ``webpki-roots``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import httpcore
import httpx

from broker.kernel import Kernel, KernelService
from broker.limits import MAX_GUEST_PAYLOAD_LEN

__all__ = [
    "ALLOW_LOCAL_ENV_VARS",
    "DNS_DENIED",
    "MAX_REDIRECTS",
    "METHODS",
    "TIMEOUT_SECONDS",
    "BodyFailed",
    "HttpClient",
    "HttpResponse",
    "IPAddress",
    "RequestFailed",
    "SafeNetworkBackend",
    "SafeTransport",
    "build_client",
    "canonical_ip",
    "fetch",
    "ip_allowed",
    "is_safe_ip",
    "is_valid_header_name",
    "is_valid_header_value",
    "is_visible_ascii",
    "literal_denied",
    "local_ips_allowed",
    "normalize_method",
    "resolve_host",
    "response_headers",
]

log = logging.getLogger("astrid.broker.http")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Total deadline of one request: connect, every redirect hop and the whole body.
TIMEOUT_SECONDS: Final = 30.0
#: Redirects followed before the request fails (reqwest's default policy).
MAX_REDIRECTS: Final = 10
#: Methods a capsule may use (matched case-insensitively).
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
#: Either variable, set to any value, lifts the SSRF ban for every capsule of the process.
ALLOW_LOCAL_ENV_VARS: Final = ("ASTRID_TEST_ALLOW_LOCAL_IP", "ASTRID_ALLOW_LOCAL_IPS")
#: The reference's resolver error when no resolved address is safe.
DNS_DENIED: Final = "DNS resolved to an unauthorized private or local IP address"


def literal_denied(ip: str) -> str:
    """The error for an unsafe IP-literal host (this port's addition, DESIGN §6.5)."""
    return f"connection to an unauthorized private or local IP address {ip} was refused"


# ---------------------------------------------------------------------------------------------
# Address policy


def canonical_ip(ip: IPAddress | str) -> IPAddress:
    """``ip`` with IPv4-mapped (``::ffff:a.b.c.d``) and IPv4-compatible (``::a.b.c.d``: the first
    six 16-bit groups zero, so ``::1`` is ``0.0.0.1``) IPv6 addresses turned into IPv4."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if int(address) >> 32 == 0:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


_BLOCKED_V4: Final = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",  # multicast
        "255.0.0.0/8",  # broadcast
    )
)
_BLOCKED_V6: Final = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/128",  # unspecified
        "::1/128",  # loopback (reached only through canonical_ip's bypass: kept for clarity)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)


def is_safe_ip(ip: IPAddress | str) -> bool:
    """Whether a capsule may connect to ``ip`` (the reference's ``is_safe_ip`` without its
    environment bypass, which :func:`ip_allowed` adds).

    Unsafe after :func:`canonical_ip`: IPv4 0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12,
    192.168/16, 224/4 and 255/8; IPv6 ``::``, ``::1``, fc00::/7, fe80::/10 and ff00::/8.
    Everything else is safe, e.g. 198.18/15, 192.0.0/24, 240/4 below 255, fec0::/10, NAT64
    64:ff9b::/96 and 6to4 2002::/16 (exactly the reference's list).
    """
    address = canonical_ip(ip)
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _BLOCKED_V4)
    # A zone index (fe80::1%eth0) does not change the address ranges.
    plain = ipaddress.IPv6Address(int(address))
    return not any(plain in net for net in _BLOCKED_V6)


@functools.cache
def local_ips_allowed() -> bool:
    """Whether the SSRF ban is lifted: either of :data:`ALLOW_LOCAL_ENV_VARS` set, to any value,
    when first asked (cached for the life of the process, as in the reference)."""
    for name in ALLOW_LOCAL_ENV_VARS:
        if name in os.environ:
            log.warning(
                "%s is set - SSRF protection disabled for ALL capsules: private and loopback "
                "addresses are reachable by every loaded capsule",
                name,
            )
            return True
    return False


def ip_allowed(ip: IPAddress | str) -> bool:
    """The policy of the broker: :func:`is_safe_ip`, unless :func:`local_ips_allowed`."""
    return local_ips_allowed() or is_safe_ip(ip)


# ---------------------------------------------------------------------------------------------
# Request and response validation

#: tchar of RFC 9110 (the ``http`` crate's ``HeaderName`` accepts exactly these bytes).
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_MAX_HEADER_NAME_LEN: Final = 65535


def normalize_method(method: str) -> str | None:
    """The uppercased method if it is one of :data:`METHODS`, else None."""
    upper = method.upper()
    return upper if upper in METHODS else None


def is_valid_header_name(name: str) -> bool:
    """A non-empty HTTP token (``HeaderName::from_bytes``)."""
    return 0 < len(name) <= _MAX_HEADER_NAME_LEN and all(ch in _TOKEN_CHARS for ch in name)


def is_valid_header_value(value: str) -> bool:
    """No control character other than tab, no DEL (``HeaderValue::from_str``; non-ASCII text
    is allowed and sent as UTF-8)."""
    return all(ch == "\t" or (ch >= " " and ch != "\x7f") for ch in value)


def is_visible_ascii(value: bytes) -> bool:
    """Visible ASCII, space and tab (``HeaderValue::to_str`` succeeds)."""
    return all(b == 0x09 or 0x20 <= b <= 0x7E for b in value)


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Response headers as the guest sees them: lowercase names, only values that are visible
    ASCII, the last value of a repeated name wins."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if is_visible_ascii(value):
            key = name.decode("latin-1").lower()
            headers.pop(key, None)  # keep the order of the value that wins
            headers[key] = value.decode("ascii")
    return headers


# ---------------------------------------------------------------------------------------------
# The SSRF-filtering network backend

#: Resolves ``(host, port)`` to address strings, in preference order.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the event loop's ``getaddrinfo``, duplicates removed."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


class SafeNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only connects to allowed addresses.

    ``allowed`` decides per address (default :func:`ip_allowed`), ``resolver`` resolves host
    names (default :func:`resolve_host`), ``inner`` makes the connections (default httpcore's
    ``AutoBackend``). Failures raise :class:`httpcore.ConnectError`, so httpx reports them as
    connection errors.
    """

    def __init__(
        self,
        inner: httpcore.AsyncNetworkBackend | None = None,
        *,
        allowed: Callable[[IPAddress], bool] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()
        self._allowed = allowed if allowed is not None else ip_allowed
        self._resolver = resolver if resolver is not None else resolve_host

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = _literal(host)
        if literal is not None:
            if not self._allowed(literal):
                raise httpcore.ConnectError(literal_denied(str(literal)))
            addresses = [str(literal)]
        else:
            addresses = await self._resolve(host, port, timeout)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        try:
            async with asyncio.timeout(timeout):
                resolved = await self._resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"dns error: resolving {host} timed out") from None
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"dns error: {exc}") from None
        safe: list[str] = []
        for address in resolved:
            parsed = _literal(address)
            if parsed is not None and self._allowed(parsed):
                safe.append(address)
        if not safe:
            raise httpcore.ConnectError(DNS_DENIED)
        return safe

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable over http")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class SafeTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP transport over a connection pool that uses ``network_backend`` (httpx has no
    public knob for the backend, so the pool built by the base class is replaced)."""

    def __init__(
        self,
        network_backend: httpcore.AsyncNetworkBackend,
        verify: bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=network_backend,
        )


def build_client(network_backend: httpcore.AsyncNetworkBackend | None = None) -> httpx.AsyncClient:
    """A client configured as described in the module docstring."""
    client = httpx.AsyncClient(
        transport=SafeTransport(network_backend or SafeNetworkBackend()),
        timeout=httpx.Timeout(TIMEOUT_SECONDS),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
    )
    # Like reqwest (no compression features, no default user agent): the capsule decides.
    for name in ("User-Agent", "Accept-Encoding"):
        del client.headers[name]
    return client


# ---------------------------------------------------------------------------------------------
# One request


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class RequestFailed(Exception):
    """The request could not be sent or got no response (``http request failed: <text>``)."""


class BodyFailed(Exception):
    """The response body could not be read (``failed to read http response body: <text>``)."""


def _failed_url(exc: httpx.HTTPError, default: str) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:  # no request attached
        return default


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    *,
    limit: int = MAX_GUEST_PAYLOAD_LEN,
    timeout: float = TIMEOUT_SECONDS,
) -> HttpResponse:
    """Send one request and read its whole body (at most ``limit`` bytes) within ``timeout``.

    Raises :class:`RequestFailed` or :class:`BodyFailed` with the text that follows the
    reference's prefixes. A non-2xx status is a normal response.
    """
    try:
        request_url = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise RequestFailed(f"builder error for url ({url}): {exc}") from None
    if request_url.scheme not in ("http", "https"):
        raise RequestFailed(f"builder error for url ({url}): URL scheme is not allowed")
    request = client.build_request(method, request_url, headers=list(headers), content=body)
    reading = False
    try:
        async with asyncio.timeout(timeout):
            response = await client.send(request, stream=True)
            try:
                status = response.status_code
                headers_out = response_headers(response.headers.raw)
                reading = True
                data = await _read_body(response, limit)
            finally:
                await response.aclose()
    except TimeoutError:
        if reading:
            raise BodyFailed("error decoding response body: operation timed out") from None
        raise RequestFailed(
            f"error sending request for url ({request_url}): operation timed out"
        ) from None
    except httpx.TooManyRedirects as exc:
        raise RequestFailed(
            f"error following redirect for url ({_failed_url(exc, url)}): too many redirects"
        ) from None
    except httpx.HTTPError as exc:
        if reading:
            raise BodyFailed(f"request or response body error: {_describe(exc)}") from None
        raise RequestFailed(
            f"error sending request for url ({_failed_url(exc, url)}): {_describe(exc)}"
        ) from None
    return HttpResponse(status, headers_out, data)


async def _read_body(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_raw():
        if len(data) + len(chunk) > limit:
            raise BodyFailed(f"HTTP response exceeded maximum payload limit ({limit} bytes)")
        data += chunk
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# The broker's shared client


class HttpClient(KernelService):
    """The broker's one HTTP client (``session.kernel.service(HttpClient)``), built on first
    use so a broker whose capsules never call ``astrid_http_request`` never creates it."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._client: httpx.AsyncClient | None = None
        self._closing: set[asyncio.Task[Any]] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = build_client()
        return self._client

    async def fetch(
        self, method: str, url: str, headers: Iterable[tuple[bytes, bytes]], body: bytes | None
    ) -> HttpResponse:
        return await fetch(self.client, method, url, headers, body)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop left: the process is ending and the sockets close with it
        # Best effort: the broker's loop may stop before the pool has closed its sockets.
        task = loop.create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
