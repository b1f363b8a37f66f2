"""IPC: publish, subscribe, unsubscribe, poll, recv (syscalls.md §2.2, §3) and uplinks (§2.3)."""

from __future__ import annotations

from astrid_core.identity import normalize_platform
from astrid_core.serde import loads, parse_uuid_strict
from astrid_core.text import rust_debug_list, rust_debug_str
from astrid_core.topics import acl_matches, has_valid_segments
from astrid_core.uplink import (
    MAX_UPLINKS_PER_CAPSULE,
    InboundMessage,
    UplinkCapabilities,
    UplinkDescriptor,
    UplinkError,
    UplinkId,
    UplinkProfile,
    UplinkSource,
)
from broker.bus import BusMessage
from broker.capsule_ipc import MAX_SUBSCRIPTIONS, CapsuleIpc
from broker.capsule_uplinks import CapsuleUplinks
from broker.errors import SyscallError, guard, lossy, lossy_or_empty, utf8_error_text
from broker.hooks import intercepted
from broker.ipc_payload import classify, custom
from broker.limits import MAX_GUEST_PAYLOAD_LEN
from broker.sessions import CapsuleSession

MAX_TOPIC_LEN = 256
MAX_TOPIC_SEGMENTS = 8
MAX_HANDLE_LEN = 32
#: ipc_recv waits at most this long, whatever the guest asks.
MAX_RECV_TIMEOUT_MS = 60_000

_U64_MAX = 2**64 - 1


def _parse_u64(text: str) -> int | None:
    """Rust's ``str::parse::<u64>``: optional ``+``, ASCII digits only; None if malformed."""
    digits = text[1:] if text.startswith("+") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


def _parse_int_error(text: str) -> str:
    """Rust's ``ParseIntError`` display for a string that did not parse as u64.

    Rust reads the digits left to right and reports the first problem it meets: a non-digit,
    or an overflow (so ``"99999999999999999999x"`` is too large, ``"1x"`` an invalid digit).
    """
    if not text:
        return "cannot parse integer from empty string"
    digits = text[1:] if text.startswith("+") else text
    if not digits:
        return "invalid digit found in string"
    value = 0
    for char in digits:
        if not ("0" <= char <= "9"):
            return "invalid digit found in string"
        value = value * 10 + ord(char) - ord("0")
        if value > _U64_MAX:
            return "number too large to fit in target type"
    return "number too large to fit in target type"


def _u64(raw: bytes, not_utf8: str, bad_format: str) -> int:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError(f"{not_utf8}: {utf8_error_text(raw)}") from None
    value = _parse_u64(text)
    if value is None or value > _U64_MAX:
        raise SyscallError(f"{bad_format}: {_parse_int_error(text)}")
    return value


def _handle(raw: bytes) -> int:
    if len(raw) > MAX_HANDLE_LEN:
        raise SyscallError("Subscription handle exceeds maximum allowed length")
    return _handle_text(raw)


def _handle_text(raw: bytes) -> int:
    return _u64(raw, "Subscription handle is not valid UTF-8", "Invalid subscription handle format")


def _ipc(session: CapsuleSession) -> CapsuleIpc:
    return session.extension(CapsuleIpc)


def check_topic_shape(name: str) -> None:
    """Segment rules of a publish topic (checks 4 and 5 of ipc_publish)."""
    if not has_valid_segments(name):
        raise SyscallError(
            "Topic contains empty segments (consecutive dots, leading/trailing dots, or is empty)"
        )
    if name.count(".") + 1 > MAX_TOPIC_SEGMENTS:
        raise SyscallError("Topic exceeds maximum allowed segments (8)")


def check_pattern_shape(pattern: str) -> None:
    """Segment rules of a subscription pattern (checks 3 to 5 of ipc_subscribe)."""
    if not has_valid_segments(pattern):
        raise SyscallError(
            "Topic pattern contains empty segments (consecutive dots, leading/trailing dots, "
            "or is empty)"
        )
    segments = pattern.split(".")
    if "*" in segments[:-1]:
        raise SyscallError(
            "Wildcard `*` is only supported as the last segment (e.g. `foo.bar.*`). "
            "Mid-segment wildcards like `a.*.b` are not supported by the event bus."
        )
    if len(segments) > MAX_TOPIC_SEGMENTS:
        raise SyscallError("Topic pattern exceeds maximum allowed segments (8)")


def astrid_ipc_publish(session: CapsuleSession, topic: bytes, payload: bytes) -> None:
    if len(topic) > MAX_TOPIC_LEN:
        raise SyscallError("Topic exceeds maximum allowed length (256 bytes)")
    quota = _ipc(session).charge(len(payload))
    if quota is not None:
        raise SyscallError(quota)
    try:
        name = topic.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError("Topic is not valid UTF-8") from None
    check_topic_shape(name)
    patterns = session.manifest.capabilities.ipc_publish
    if not patterns:
        raise SyscallError(
            f"Capsule '{session.name}' has no ipc_publish declarations \u2014 publishing is "
            "denied. Add ipc_publish patterns to Capsule.toml [capabilities]"
        )
    if not any(acl_matches(name, pattern) for pattern in patterns):
        raise SyscallError(
            f"Capsule '{session.name}' is not allowed to publish to topic '{name}' \u2014 "
            f"declared ipc_publish patterns: {rust_debug_list(patterns)}"
        )
    guard(payload, MAX_GUEST_PAYLOAD_LEN)
    try:
        value = loads(payload)
    except ValueError:  # SerdeError, or an integer too long for int() (serde: out of range)
        raise SyscallError("IPC payload is not valid JSON") from None
    session.kernel.bus.publish(BusMessage(name, classify(value), session.uuid))


def astrid_ipc_subscribe(session: CapsuleSession, topic_pattern: bytes) -> bytes:
    if len(topic_pattern) > MAX_TOPIC_LEN:
        raise SyscallError("Topic pattern exceeds maximum allowed length (256 bytes)")
    try:
        pattern = topic_pattern.decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError("Topic pattern is not valid UTF-8") from None
    check_pattern_shape(pattern)
    acl = session.manifest.capabilities.ipc_subscribe
    if not acl:
        raise SyscallError(
            f"Capsule '{session.name}' has no ipc_subscribe declarations - subscribing is "
            "denied. Add ipc_subscribe patterns to Capsule.toml [capabilities]"
        )
    if not any(acl_matches(pattern, entry) for entry in acl):
        raise SyscallError(
            f"Capsule '{session.name}' is not allowed to subscribe to topic '{pattern}' - "
            f"declared ipc_subscribe patterns: {rust_debug_list(acl)}"
        )
    ipc = _ipc(session)
    if len(ipc.subscriptions) >= MAX_SUBSCRIPTIONS:
        raise SyscallError("Subscription limit reached (128 max per plugin)")
    return str(ipc.subscribe(pattern)).encode()


def astrid_ipc_unsubscribe(session: CapsuleSession, handle: bytes) -> None:
    handle_id = _handle(handle)
    ipc = _ipc(session)
    if ipc.is_interceptor_handle(handle_id):
        raise SyscallError("Cannot unsubscribe a runtime-owned interceptor handle")
    subscription = ipc.subscriptions.pop(handle_id, None)
    if subscription is None:
        raise SyscallError("Subscription handle not found")
    subscription.close()


def astrid_ipc_poll(session: CapsuleSession, handle: bytes) -> bytes:
    subscription = _ipc(session).subscriptions.get(_handle(handle))
    if subscription is None:
        raise SyscallError("Subscription handle not found")
    return subscription.drain().envelope()


async def astrid_ipc_recv(session: CapsuleSession, handle: bytes, timeout_ms: bytes) -> bytes:
    handle_id = _handle_text(guard(handle, MAX_HANDLE_LEN))
    timeout = _u64(
        guard(timeout_ms, MAX_HANDLE_LEN), "Timeout is not valid UTF-8", "Invalid timeout format"
    )
    subscription = _ipc(session).subscriptions.get(handle_id)
    if subscription is None:
        raise SyscallError("Subscription handle not found")
    first = await subscription.wait(min(timeout, MAX_RECV_TIMEOUT_MS) / 1000)
    return subscription.drain(first=first).envelope()


# --------------------------------------------------------------------------------------------
# Uplinks (§2.3, DESIGN §6.9)

MAX_UPLINK_ARG = 512
MAX_UPLINK_ID_READ = 128
MAX_UPLINK_ID = 64
MAX_INBOUND_MESSAGE_BYTES = 1024 * 1024
INBOUND_TOPIC = "uplink.v1.inbound"

_PROFILES = {
    "chat": UplinkProfile.CHAT,
    "human": UplinkProfile.CHAT,
    "interactive": UplinkProfile.INTERACTIVE,
    "notify": UplinkProfile.NOTIFY,
    "bridge": UplinkProfile.BRIDGE,
}


def astrid_uplink_register(
    session: CapsuleSession, name: bytes, platform: bytes, profile: bytes
) -> bytes:
    uplink_name = lossy(guard(name, MAX_UPLINK_ARG))
    platform_name = normalize_platform(lossy(guard(platform, MAX_UPLINK_ARG)))
    profile_name = lossy(guard(profile, MAX_UPLINK_ARG)).lower()
    chosen = _PROFILES.get(profile_name)
    if chosen is None:
        raise SyscallError(
            f"invalid uplink profile: {rust_debug_str(profile_name)} "
            "(expected: chat, interactive, notify, bridge, human)"
        )
    try:
        source = UplinkSource.new_wasm(session.name)
    except UplinkError as exc:
        raise SyscallError(
            f"failed to create uplink source for capsule {session.name}: {exc}"
        ) from None
    uplinks = session.extension(CapsuleUplinks)
    if len(uplinks.descriptors) >= MAX_UPLINKS_PER_CAPSULE:
        raise SyscallError(f"capsule {session.name}: uplink registration limit reached")
    if uplinks.has(uplink_name, platform_name):
        raise SyscallError(f"capsule {session.name}: duplicate uplink name and platform")
    descriptor = (
        UplinkDescriptor.builder(uplink_name, platform_name)
        .source(source)
        .capabilities(UplinkCapabilities.receive_only())
        .profile(chosen)
        .build()
    )
    uplinks.add(descriptor)
    return str(descriptor.id).encode()


def _uuid_error(text: str) -> str:
    """A parse error in the words of the Rust ``uuid`` crate (enough to tell what is wrong)."""
    if len(text) not in (32, 36, 38, 45):
        return f"invalid length: expected length 32 for simple format, found {len(text)}"
    for position, char in enumerate(text.removeprefix("urn:uuid:").strip("{}"), start=1):
        if char not in "0123456789abcdefABCDEF-":
            return (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{char}` at {position}"
            )
    return "invalid group structure: expected 8-4-4-4-12 hex digits"


def _inbound_topic(platform: str) -> str:
    """``uplink.v1.inbound.<platform>``; a platform that is not one segment is made into one."""
    segment = platform.replace(".", "_") or "unknown"
    return f"{INBOUND_TOPIC}.{segment}"


def astrid_uplink_send(
    session: CapsuleSession, uplink_id: bytes, platform_user_id: bytes, content: bytes
) -> bytes:
    guard(uplink_id, MAX_UPLINK_ID_READ)
    if len(uplink_id) > MAX_UPLINK_ID:
        raise SyscallError("uplink_id too long")
    user = lossy_or_empty(guard(platform_user_id, MAX_UPLINK_ARG))
    text = lossy_or_empty(guard(content, MAX_INBOUND_MESSAGE_BYTES))
    id_text = lossy_or_empty(uplink_id)
    try:
        parsed = UplinkId.from_uuid(parse_uuid_strict(id_text))
    except ValueError:
        raise SyscallError(f"invalid uplink_id: {_uuid_error(id_text)}") from None
    descriptor = session.extension(CapsuleUplinks).descriptors.get(parsed)
    if descriptor is None:
        raise SyscallError(f"uplink {parsed} not registered by capsule {session.name}")
    if not session.manifest.uplinks:
        raise SyscallError(f"capsule {session.name} has no inbound channel")
    message = InboundMessage.builder(parsed, descriptor.platform, user, text).build()
    topic = _inbound_topic(descriptor.platform)
    kernel = session.kernel
    reached = kernel.bus.publish(BusMessage(topic, custom(message.to_json()), session.uuid))
    # Delivered when a subscription or an interceptor of a tool capsule received it.
    delivered = reached > 0 or intercepted(kernel, topic)
    return b'{"ok":true}' if delivered else b'{"ok":false,"dropped":true}'
