"""``astrid_http_request`` (syscalls.md §2.7 and §4, DESIGN §6.5).

Checks run in the reference's order, every failure traps:

1. the request (≤ 10 MiB) must be UTF-8 → ``failed to parse request as utf8: {e}``;
2. JSON ``{"url": str, "method"?: str = "GET", "headers"?: {str: str}, "body"?: str|null}``
   → ``invalid http request json: {e}``;
3. the URL must parse (``invalid url {url}: {e}``) and have a host (``URL missing host``), and the
   manifest gate must allow it (``security denied network access: {reason}``);
4. the method (GET POST PUT DELETE PATCH HEAD OPTIONS, any case) → ``unsupported http method: {M}``;
5. header names and values → ``invalid header name {k}: invalid HTTP header name`` /
   ``invalid header value {v}: failed to parse header value``;
6. the request is sent by the broker's :class:`~broker.http_client.HttpClient` (SSRF filtering,
   redirects, 30 s deadline) → ``http request failed: {e}``;
7. the body (≤ 10 MiB, UTF-8) → ``failed to read http response body: {e}``.

The result is ``{"status": u16, "headers": {lowercase name: value}, "body": str}``; a non-2xx
status is a normal result. As in the reference, redirect targets are not checked against the
manifest ``net`` entries (only the first URL is); they are SSRF-filtered like every connection.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

import httpx

from astrid_core.serde import SerdeError, dumps, json_kind, loads
from broker.errors import SyscallError, guard, utf8_error_text
from broker.gate import GateDenied, url_host
from broker.http_client import (
    BodyFailed,
    HttpClient,
    RequestFailed,
    is_valid_header_name,
    is_valid_header_value,
    normalize_method,
)
from broker.limits import MAX_GUEST_PAYLOAD_LEN
from broker.sessions import CapsuleSession

__all__ = ["HttpRequest", "astrid_http_request", "build_headers", "check_url", "parse_request"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The guest's request, as ``serde`` would deserialize the reference's ``HttpRequest``."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def parse_request(text: str) -> HttpRequest:
    """Parse the request JSON; raises :class:`SerdeError` (unknown fields are ignored)."""
    value = loads(text)
    if not isinstance(value, Mapping):
        raise SerdeError(f"invalid type: {json_kind(value)}, expected struct HttpRequest")
    if "url" not in value:
        raise SerdeError("missing field `url`")
    url = value["url"]
    if not isinstance(url, str):
        raise SerdeError(f"url: invalid type: {json_kind(url)}, expected a string")
    method = value.get("method", "GET")
    if not isinstance(method, str):
        raise SerdeError(f"method: invalid type: {json_kind(method)}, expected a string")
    headers = value.get("headers", {})
    if not isinstance(headers, Mapping):
        raise SerdeError(f"headers: invalid type: {json_kind(headers)}, expected a map")
    for name, header in headers.items():
        if not isinstance(header, str):
            raise SerdeError(
                f"headers.{name}: invalid type: {json_kind(header)}, expected a string"
            )
    body = value.get("body")
    if body is not None and not isinstance(body, str):
        raise SerdeError(f"body: invalid type: {json_kind(body)}, expected a string")
    return HttpRequest(url, method, dict(headers), body)


def _url_error(exc: ValueError) -> str:
    """The ``url`` crate's words for what Python's URL parser rejected."""
    message = str(exc).lower()
    if "port" in message:
        return "invalid port number"
    if "ipv6" in message:
        return "invalid IPv6 address"
    return "invalid domain character"


def check_url(session: CapsuleSession, url: str) -> str:
    """Parse ``url``, require a host, ask the manifest gate; return the URL to send.

    The gate and the client must agree on the host: the host httpx will connect to is compared
    with the one the gate allowed, and a URL on which they differ is refused as invalid.
    """
    text = url.strip()
    if not _SCHEME.match(text):
        raise SyscallError(f"invalid url {url}: relative URL without a base")
    try:
        host = url_host(text)
    except ValueError as exc:
        raise SyscallError(f"invalid url {url}: {_url_error(exc)}") from None
    if host is None:
        raise SyscallError("URL missing host")
    try:
        session.gate.check_http(url)
    except GateDenied as exc:
        raise SyscallError(f"security denied network access: {exc}") from None
    try:
        target = httpx.URL(text)
        expected = httpx.URL(f"http://{host}/").host
    except (httpx.InvalidURL, ValueError) as exc:
        raise SyscallError(f"invalid url {url}: {exc}") from None
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https") and target.host.lower() != expected.lower():
        raise SyscallError(f"invalid url {url}: ambiguous host")
    return text


def build_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Validate the request headers (map order decides which error comes first); a name given
    twice in different cases keeps its last value, as ``HeaderMap::insert`` does."""
    built: dict[str, tuple[bytes, bytes]] = {}
    for name, value in headers.items():
        if not is_valid_header_name(name):
            raise SyscallError(f"invalid header name {name}: invalid HTTP header name")
        if not is_valid_header_value(value):
            raise SyscallError(f"invalid header value {value}: failed to parse header value")
        # Leading and trailing blanks are not part of a field value (RFC 9110 §5.5).
        built[name.lower()] = (name.lower().encode("ascii"), value.strip(" \t").encode("utf-8"))
    return list(built.values())


def astrid_http_request(session: CapsuleSession, request: bytes) -> Awaitable[bytes]:
    data = guard(request, MAX_GUEST_PAYLOAD_LEN)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError(f"failed to parse request as utf8: {utf8_error_text(data)}") from None
    try:
        parsed = parse_request(text)
    except SerdeError as exc:
        raise SyscallError(f"invalid http request json: {exc}") from None
    url = check_url(session, parsed.url)
    method = normalize_method(parsed.method)
    if method is None:
        raise SyscallError(f"unsupported http method: {parsed.method.upper()}")
    headers = build_headers(parsed.headers)
    body = None if parsed.body is None else parsed.body.encode("utf-8")
    return _send(session, method, url, headers, body)


async def _send(
    session: CapsuleSession,
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
) -> bytes:
    client = session.kernel.service(HttpClient)
    try:
        response = await client.fetch(method, url, headers, body)
    except RequestFailed as exc:
        raise SyscallError(f"http request failed: {exc}") from None
    except BodyFailed as exc:
        raise SyscallError(f"failed to read http response body: {exc}") from None
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError(
            "failed to read http response body: response body is not valid UTF-8"
        ) from None
    return dumps({"status": response.status, "headers": response.headers, "body": text}).encode()
