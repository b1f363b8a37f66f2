"""Tests for astrid_core.identity (spec/core.md §3 and the identity/mod.rs tests of §12)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from astrid_core import serde
from astrid_core.identity import PUBLIC_KEY_LEN, AstridUserId, FrontendLink, normalize_platform
from astrid_core.serde import SerdeError
from astrid_core.text import UNICODE_WHITESPACE, strip_unicode_whitespace

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "identity"

USER_ID = uuid.UUID("3f2a9c1e-7d4b-4e8a-b5c6-d7e8f9a0b1c2")
WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY = bytes(range(32))
KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

utc_datetimes = st.datetimes(timezones=st.just(UTC))
texts = st.text(st.characters(codec="utf-8"))
keys = st.binary(min_size=PUBLIC_KEY_LEN, max_size=PUBLIC_KEY_LEN)

users = st.builds(
    AstridUserId,
    id=st.uuids(),
    public_key=st.none() | keys,
    display_name=st.none() | texts,
    created_at=utc_datetimes,
)
links = st.builds(
    FrontendLink,
    platform=texts,
    platform_user_id=texts,
    astrid_user_id=st.uuids(),
    linked_at=utc_datetimes,
    method=texts,
)

_MISSING = object()


def round_trip(value: Any) -> Any:
    return type(value).from_json(serde.loads(serde.dumps(value.to_json())))


def _edit(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is _MISSING:
            del data[key]
        else:
            data[key] = value
    return data


# --- ports of identity/mod.rs ---------------------------------------------------------------


def test_astrid_user_id_creation() -> None:
    """Mirrors identity/mod.rs::test_astrid_user_id_creation."""
    first = AstridUserId.new()
    second = AstridUserId.new()
    assert first.id != second.id


def test_astrid_user_id_display() -> None:
    """Mirrors identity/mod.rs::test_astrid_user_id_display."""
    user = AstridUserId.new()
    assert str(user).startswith("user:")
    named = user.with_display_name("Alice")
    assert str(named).startswith("Alice(")


def test_normalize_platform_trims_and_lowercases() -> None:
    """Mirrors identity/mod.rs::normalize_platform_trims_and_lowercases."""
    assert normalize_platform("Discord") == "discord"
    assert normalize_platform("  TELEGRAM  ") == "telegram"
    assert normalize_platform("matrix") == "matrix"
    assert normalize_platform("  Matrix  ") == "matrix"


# --- golden JSON ----------------------------------------------------------------------------

GOLDEN_OBJECTS: list[tuple[str, Any]] = [
    ("astrid_user_id.json", AstridUserId(USER_ID, None, "Alice", WHEN)),
    (
        "astrid_user_id_with_key.json",
        AstridUserId(USER_ID, KEY, None, WHEN.replace(microsecond=120_000)),
    ),
    (
        "frontend_link.json",
        FrontendLink(
            "discord", "123456789012345678", USER_ID, WHEN.replace(microsecond=123_456), "admin"
        ),
    ),
]


@pytest.mark.parametrize(("name", "value"), GOLDEN_OBJECTS, ids=[n for n, _ in GOLDEN_OBJECTS])
def test_golden(name: str, value: Any) -> None:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    assert serde.dumps(value.to_json()) == text
    assert type(value).from_json(serde.loads(text)) == value


def test_golden_key_is_44_characters() -> None:
    data = serde.loads((GOLDEN / "astrid_user_id_with_key.json").read_text(encoding="utf-8"))
    assert len(data["public_key"]) == 44
    assert data["public_key"] == KEY_B64


# --- AstridUserId ---------------------------------------------------------------------------


def test_astrid_user_id_new_and_default() -> None:
    before = datetime.now(UTC)
    user = AstridUserId.default()
    assert user.id.version == 4
    assert user.public_key is None
    assert user.display_name is None
    assert before <= user.created_at <= datetime.now(UTC)
    assert AstridUserId.new().id != user.id


def test_astrid_user_id_display_forms() -> None:
    user = AstridUserId(USER_ID, None, None, WHEN)
    assert str(user) == "user:3f2a9c1e"
    assert str(user.with_display_name("Alice")) == "Alice(3f2a9c1e)"
    assert str(user.with_display_name("")) == "(3f2a9c1e)"
    assert user.display_name is None  # the setter returns a copy


def test_astrid_user_id_equality_and_hash_cover_all_fields() -> None:
    base = AstridUserId(USER_ID, None, None, WHEN)
    variants = [
        AstridUserId(uuid.uuid4(), None, None, WHEN),
        AstridUserId(USER_ID, KEY, None, WHEN),
        AstridUserId(USER_ID, None, "Alice", WHEN),
        AstridUserId(USER_ID, None, None, WHEN + timedelta(microseconds=1)),
    ]
    for variant in variants:
        assert variant != base
    assert len({base, AstridUserId(USER_ID, None, None, WHEN), *variants}) == 5


def test_astrid_user_id_validates_fields() -> None:
    with pytest.raises(ValueError, match="public key must be 32 bytes"):
        AstridUserId(USER_ID, bytes(31), None, WHEN)
    with pytest.raises(ValueError, match="public key must be 32 bytes"):
        AstridUserId(USER_ID, bytes(33), None, WHEN)
    with pytest.raises(TypeError, match="public_key must be bytes"):
        AstridUserId(USER_ID, bytearray(32), None, WHEN)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="created_at must be timezone-aware"):
        AstridUserId(USER_ID, None, None, datetime(2025, 1, 2))
    local = datetime(2025, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert AstridUserId(USER_ID, None, None, local).created_at.tzinfo is UTC


def test_public_key_key_is_required_but_may_be_null() -> None:
    data = AstridUserId(USER_ID, None, None, WHEN).to_json()
    assert AstridUserId.from_json(data).public_key is None
    del data["public_key"]
    with pytest.raises(SerdeError, match=r"^AstridUserId: missing field `public_key`"):
        AstridUserId.from_json(data)


def test_display_name_may_be_missing() -> None:
    data = AstridUserId(USER_ID, KEY, "Alice", WHEN).to_json()
    del data["display_name"]
    assert AstridUserId.from_json(data) == AstridUserId(USER_ID, KEY, None, WHEN)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "public key must be 32 bytes"),
        (base64.b64encode(bytes(31)).decode(), "public key must be 32 bytes"),
        (base64.b64encode(bytes(33)).decode(), "public key must be 32 bytes"),
        (base64.b64encode(bytes(48)).decode(), "public key must be 32 bytes"),
        (KEY_B64[:-1], "invalid base64"),  # missing padding
        (KEY_B64 + "=", "invalid base64"),  # excess padding
        (KEY_B64[:-2] + "9=", "invalid base64"),  # non-zero trailing bits ("8" -> "9")
        (KEY_B64[:20] + " " + KEY_B64[20:], "invalid base64"),
        (KEY_B64 + "\n", "invalid base64"),
        (" " + KEY_B64, "invalid base64"),
        (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "invalid base64"),
        ("é" * 44, "invalid base64"),
        (KEY.hex(), "public key must be 32 bytes"),  # hex digits are valid base64
    ],
)
def test_public_key_decoding_is_strict(key: str, message: str) -> None:
    data = {
        "id": str(USER_ID),
        "public_key": key,
        "display_name": None,
        "created_at": "2025-01-02T03:04:05Z",
    }
    with pytest.raises(SerdeError, match=f"^AstridUserId.public_key: {message}"):
        AstridUserId.from_json(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": _MISSING}, r"missing field `id`"),
        ({"created_at": _MISSING}, r"missing field `created_at`"),
        ({"id": "3f2a9c1e7d4b4e8ab5c6d7e8f9a0b1c"}, r"id: invalid UUID"),
        ({"id": "URN:UUID:3f2a9c1e-7d4b-4e8a-b5c6-d7e8f9a0b1c2"}, r"id: invalid UUID"),
        ({"id": None}, r"id must be a string, got null"),
        ({"public_key": 5}, r"public_key must be a string, got a number"),
        ({"public_key": list(KEY)}, r"public_key must be a string, got an array"),
        ({"display_name": 5}, r"display_name must be a string, got a number"),
        ({"created_at": "2025-01-02T03:04:05"}, r"created_at: invalid RFC 3339"),
        ({"created_at": True}, r"created_at must be a string, got a boolean"),
    ],
)
def test_astrid_user_id_from_json_rejects(changes: dict[str, Any], message: str) -> None:
    data = _edit(AstridUserId(USER_ID, KEY, "Alice", WHEN).to_json(), changes)
    with pytest.raises(SerdeError, match=f"^AstridUserId.*{message}"):
        AstridUserId.from_json(data)


@given(users)
def test_astrid_user_id_round_trips(user: AstridUserId) -> None:
    assert round_trip(user) == user


@given(keys)
def test_public_key_encoding_is_44_char_padded_base64(key: bytes) -> None:
    encoded = AstridUserId(USER_ID, key, None, WHEN).to_json()["public_key"]
    assert len(encoded) == 44
    assert encoded.endswith("=") and not encoded.endswith("==")
    assert base64.b64decode(encoded) == key


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _non_canonical_variants(encoded: str, position: int, bits: int, space: str) -> list[str]:
    """Variants of a canonical 44-character encoding that a lenient decoder might accept."""
    last = _ALPHABET.index(encoded[42])
    assert last & 0b11 == 0  # 32 bytes = 256 bits, so 2 of the 258 encoded bits are padding
    return [
        encoded[:-1],  # missing padding
        encoded + "=",  # extra padding
        encoded[:42] + _ALPHABET[last | bits] + "=",  # non-zero trailing bits
        encoded[:position] + space + encoded[position:],  # embedded whitespace
        encoded.replace("+", "-").replace("/", "_"),  # URL-safe alphabet (if it differs)
    ]


@given(
    keys,
    st.integers(min_value=0, max_value=44),
    st.integers(min_value=1, max_value=3),
    st.sampled_from(UNICODE_WHITESPACE),
)
def test_public_key_rejects_non_canonical_variants(
    key: bytes, position: int, bits: int, space: str
) -> None:
    user = AstridUserId(USER_ID, key, None, WHEN)
    data = user.to_json()
    encoded = data["public_key"]
    assert AstridUserId.from_json(data) == user
    for variant in _non_canonical_variants(encoded, position, bits, space):
        if variant == encoded:
            continue  # no "+" or "/" to swap for the URL-safe alphabet
        with pytest.raises(SerdeError, match=r"^AstridUserId.public_key: "):
            AstridUserId.from_json({**data, "public_key": variant})


@given(st.binary(max_size=64))
def test_public_key_rejects_other_lengths(key: bytes) -> None:
    assume(len(key) != PUBLIC_KEY_LEN)
    data = {
        "id": str(USER_ID),
        "public_key": base64.b64encode(key).decode(),
        "created_at": "2025-01-02T03:04:05Z",
    }
    with pytest.raises(SerdeError, match="public key must be 32 bytes"):
        AstridUserId.from_json(data)


# --- FrontendLink ---------------------------------------------------------------------------


def _link() -> FrontendLink:
    return FrontendLink("discord", "42", USER_ID, WHEN, "system")


def test_frontend_link_normalizes_linked_at() -> None:
    local = datetime(2025, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    link = FrontendLink("discord", "42", USER_ID, local, "system")
    assert link == _link()
    assert link.linked_at.tzinfo is UTC
    with pytest.raises(ValueError, match="linked_at must be timezone-aware"):
        FrontendLink("discord", "42", USER_ID, datetime(2025, 1, 2), "system")


def test_frontend_link_does_not_renormalize_platform() -> None:
    link = FrontendLink.from_json({**_link().to_json(), "platform": " Discord "})
    assert link.platform == " Discord "


@pytest.mark.parametrize(
    "field", ["platform", "platform_user_id", "astrid_user_id", "linked_at", "method"]
)
def test_frontend_link_requires_every_field(field: str) -> None:
    data = _edit(_link().to_json(), {field: _MISSING})
    with pytest.raises(SerdeError, match=f"^FrontendLink: missing field `{field}`"):
        FrontendLink.from_json(data)


@pytest.mark.parametrize(
    "field", ["platform", "platform_user_id", "astrid_user_id", "linked_at", "method"]
)
def test_frontend_link_rejects_null(field: str) -> None:
    data = _edit(_link().to_json(), {field: None})
    with pytest.raises(SerdeError, match=f"^FrontendLink.{field} must be a string, got null"):
        FrontendLink.from_json(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"platform_user_id": 42}, r"platform_user_id must be a string, got a number"),
        (
            {"astrid_user_id": "3f2a9c1e-7d4b-4e8a-b5c6-d7e8f9a0b1c2 "},
            r"astrid_user_id: invalid UUID",
        ),
        ({"linked_at": "2025-01-02T03:04:05"}, r"linked_at: invalid RFC 3339"),
        ({"method": False}, r"method must be a string, got a boolean"),
    ],
)
def test_frontend_link_from_json_rejects(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SerdeError, match=f"^FrontendLink.*{message}"):
        FrontendLink.from_json(_edit(_link().to_json(), changes))


def test_frontend_link_rejects_non_object() -> None:
    with pytest.raises(SerdeError, match=r"^FrontendLink must be a JSON object, got an array"):
        FrontendLink.from_json([])


@given(links)
def test_frontend_link_round_trips(link: FrontendLink) -> None:
    assert round_trip(link) == link


# --- normalize_platform ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ÄBC", "Äbc"),
        ("\u212a", "\u212a"),  # KELVIN SIGN: str.lower() would give "k"
        ("İstanbul", "İstanbul"),  # str.lower() would add a combining dot
        ("ΣIGNAL", "Σignal"),
        ("\u3000Slack\u2029", "slack"),
        ("\u00a0IRC\u0085", "irc"),
        ("\x1fX\x1f", "\x1fx\x1f"),  # U+001F is not Unicode White_Space (str.strip removes it)
        ("Open Claw", "open claw"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize_platform_examples(name: str, expected: str) -> None:
    assert normalize_platform(name) == expected


@given(texts)
def test_normalize_platform_folds_ascii_only(name: str) -> None:
    result = normalize_platform(name)
    stripped = strip_unicode_whitespace(name)
    assert len(result) == len(stripped)
    for before, after in zip(stripped, result, strict=True):
        if "A" <= before <= "Z":
            assert after == before.lower()
        else:
            assert after == before
    assert normalize_platform(result) == result
