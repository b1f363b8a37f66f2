"""Identity: the five ``astrid_identity_*`` syscalls (syscalls.md §2.13).

Each takes one JSON request (at most 10 MiB; a larger one traps with the allocation text) and
returns a JSON result. Only a request that does not parse traps
(``invalid {resolve|link|unlink|create_user|list_links} request: {e}``); everything after that
is encoded in the result, the way the reference does it:

* link and list_links first parse ``astrid_user_id`` as a UUID:
  ``{"ok":false,"error":"invalid UUID: {e}"}`` (the ``uuid`` crate's error text);
* then the manifest gate (``resolve`` ⊂ ``link`` ⊂ ``admin``; resolve needs ``resolve``;
  link, unlink and list_links need ``link``; create_user needs ``admin``) and the store
  (:mod:`broker.identity_store`) run; their failures become ``"error": "storage error: {inner}"``,
  e.g. ``storage error: capsule 'x' denied: identity operation 'link' not declared in manifest
  (has: ["resolve"])`` or ``storage error: invalid input: platform must not be empty``.

Results (absent optional fields are omitted, never null):

* resolve: ``{"found":true,"user_id":"<uuid>","display_name"?:str}`` / ``{"found":false}`` /
  ``{"found":false,"error":"..."}``;
* link: ``{"ok":true,"link":{"platform","platform_user_id","astrid_user_id","linked_at",
  "method"}}`` with ``linked_at`` in RFC 3339 with a ``+00:00`` offset;
* unlink: ``{"ok":true,"removed":bool}``; create_user: ``{"ok":true,"user_id":"<uuid>"}``;
* list_links: ``{"ok":true,"links":[link...]}`` in key order;
* failures of the last four: ``{"ok":false,"error":"..."}``.

The identity store and the gate always exist for a connected capsule, so the reference's traps
``identity store not available`` and ``security gate not available`` (lifecycle and hook
profiles) cannot occur here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from astrid_core.identity import FrontendLink
from astrid_core.serde import Fields, SerdeError, dumps, loads, parse_uuid_strict
from broker.errors import SyscallError, guard
from broker.gate import GateDenied
from broker.identity_store import IdentityError, IdentityStore, rfc3339_offset
from broker.limits import MAX_GUEST_PAYLOAD_LEN
from broker.sessions import CapsuleSession

T = TypeVar("T")

#: Request type names (the reference's serde structs), used in parse error texts.
_REQUEST_TYPES = {
    "resolve": "ResolveRequest",
    "link": "LinkRequest",
    "unlink": "UnlinkRequest",
    "create_user": "CreateUserRequest",
    "list_links": "ListLinksRequest",
}

_GROUP_STARTS = (0, 9, 14, 19, 24)
_GROUP_LENGTHS = (8, 4, 4, 4, 12)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def uuid_error(text: str) -> str:
    """Why ``text`` is not a UUID, in the words of the Rust ``uuid`` crate's ``parse_str``.

    Call only for text that :func:`~astrid_core.serde.parse_uuid_strict` rejects.
    """
    if text.startswith("{") and text.endswith("}") and len(text) >= 2:
        body, offset, simple = text[1:-1], 1, False
    elif text.startswith("urn:uuid:"):
        body, offset, simple = text[len("urn:uuid:") :], len("urn:uuid:"), False
    else:
        body, offset, simple = text, 0, True
    hyphens: list[int] = []
    index = 0  # byte index into body, as Rust's char_indices reports it
    for char in body:
        if char == "-":
            hyphens.append(index)
        elif char not in _HEX_DIGITS:
            return (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{char}` at {index + offset + 1}"
            )
        index += len(char.encode("utf-8"))
    if not hyphens and simple:
        return f"invalid length: expected length 32 for simple format, found {len(text.encode())}"
    if len(hyphens) != 4:
        return f"invalid group count: expected 5, found {len(hyphens) + 1}"
    for group in range(4):
        if hyphens[group] != _GROUP_STARTS[group + 1] - 1:
            found = hyphens[group] - _GROUP_STARTS[group]
            return (
                f"invalid group length in group {group}: expected {_GROUP_LENGTHS[group]}, "
                f"found {found}"
            )
    found = len(text.encode()) - _GROUP_STARTS[4]
    return f"invalid group length in group 4: expected 12, found {found}"


def _parse(request: bytes, op: str) -> Fields:
    """The request object; a guard or parse failure traps."""
    data = guard(request, MAX_GUEST_PAYLOAD_LEN)
    try:
        return Fields(loads(data), _REQUEST_TYPES[op])
    except SerdeError as exc:
        raise SyscallError(f"invalid {op} request: {exc}") from None


def _read(fields: Fields, op: str, read: Callable[[Fields], T]) -> T:
    """Read the request's fields; a missing or mistyped field traps like a parse failure."""
    try:
        return read(fields)
    except SerdeError as exc:
        raise SyscallError(f"invalid {op} request: {exc}") from None


def _json(value: dict[str, Any]) -> bytes:
    return dumps(value).encode()


def _failure(text: str) -> bytes:
    return _json({"ok": False, "error": text})


def _run(session: CapsuleSession, op: str, action: Callable[[IdentityStore], T]) -> T | str:
    """Check the gate for ``op`` and run ``action`` on the store; a failure is returned as the
    reference's ``storage error: {inner}`` text."""
    try:
        session.gate.check_identity(op)
        return action(session.kernel.service(IdentityStore))
    except GateDenied as exc:
        return f"storage error: {exc.reason}"
    except IdentityError as exc:
        return f"storage error: {exc}"


def _user_id(text: str) -> uuid.UUID | str:
    """The parsed UUID, or the ``invalid UUID: {e}`` error text."""
    try:
        return parse_uuid_strict(text)
    except ValueError:
        return f"invalid UUID: {uuid_error(text)}"


def _link_json(link: FrontendLink) -> dict[str, str]:
    return {
        "platform": link.platform,
        "platform_user_id": link.platform_user_id,
        "astrid_user_id": str(link.astrid_user_id),
        "linked_at": rfc3339_offset(link.linked_at),
        "method": link.method,
    }


def astrid_identity_resolve(session: CapsuleSession, request: bytes) -> bytes:
    fields = _parse(request, "resolve")
    platform, platform_user_id = _read(
        fields, "resolve", lambda f: (f.string("platform"), f.string("platform_user_id"))
    )
    user = _run(session, "resolve", lambda store: store.resolve(platform, platform_user_id))
    if isinstance(user, str):
        return _json({"found": False, "error": user})
    if user is None:
        return _json({"found": False})
    result: dict[str, Any] = {"found": True, "user_id": str(user.id)}
    if user.display_name is not None:
        result["display_name"] = user.display_name
    return _json(result)


def astrid_identity_link(session: CapsuleSession, request: bytes) -> bytes:
    fields = _parse(request, "link")
    platform, platform_user_id, user_text, method = _read(
        fields,
        "link",
        lambda f: (
            f.string("platform"),
            f.string("platform_user_id"),
            f.string("astrid_user_id"),
            f.string("method"),
        ),
    )
    user_id = _user_id(user_text)
    if isinstance(user_id, str):
        return _failure(user_id)
    link = _run(
        session, "link", lambda store: store.link(platform, platform_user_id, user_id, method)
    )
    if isinstance(link, str):
        return _failure(link)
    return _json({"ok": True, "link": _link_json(link)})


def astrid_identity_unlink(session: CapsuleSession, request: bytes) -> bytes:
    fields = _parse(request, "unlink")
    platform, platform_user_id = _read(
        fields, "unlink", lambda f: (f.string("platform"), f.string("platform_user_id"))
    )
    removed = _run(session, "unlink", lambda store: store.unlink(platform, platform_user_id))
    if isinstance(removed, str):
        return _failure(removed)
    return _json({"ok": True, "removed": removed})


def astrid_identity_create_user(session: CapsuleSession, request: bytes) -> bytes:
    fields = _parse(request, "create_user")
    display_name = _read(fields, "create_user", lambda f: f.opt_string("display_name"))
    user = _run(session, "create_user", lambda store: store.create_user(display_name))
    if isinstance(user, str):
        return _failure(user)
    return _json({"ok": True, "user_id": str(user.id)})


def astrid_identity_list_links(session: CapsuleSession, request: bytes) -> bytes:
    fields = _parse(request, "list_links")
    user_text = _read(fields, "list_links", lambda f: f.string("astrid_user_id"))
    user_id = _user_id(user_text)
    if isinstance(user_id, str):
        return _failure(user_id)
    links = _run(session, "list_links", lambda store: store.list_links(user_id))
    if isinstance(links, str):
        return _failure(links)
    return _json({"ok": True, "links": [_link_json(link) for link in links]})
