"""Tests for astrid_core.types (spec/core.md §2 and the types.rs tests of §12)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core import serde
from astrid_core.serde import SerdeError
from astrid_core.types import (
    AgentId,
    ApprovalDecision,
    ApprovalOption,
    ApprovalRequest,
    Permission,
    RiskLevel,
    SessionId,
    Timestamp,
    TokenId,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "types"

REQUEST_ID = uuid.UUID("0f8c2a9e-5b7d-4c1e-9a3f-123456789abc")
OTHER_REQUEST_ID = uuid.UUID("0f8c2a9e-5b7d-4c1e-9a3f-123456789abd")
WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

# --- strategies -----------------------------------------------------------------------------

utc_datetimes = st.datetimes(timezones=st.just(UTC))
texts = st.text(st.characters(codec="utf-8"))
risk_levels = st.sampled_from(RiskLevel)
approval_options = st.sampled_from(ApprovalOption)

approval_requests = st.builds(
    ApprovalRequest,
    request_id=st.uuids(),
    operation=texts,
    description=texts,
    risk_level=risk_levels,
    resource=st.none() | texts,
    options=st.lists(approval_options).map(tuple),
)
approval_decisions = st.builds(
    ApprovalDecision,
    request_id=st.uuids(),
    decision=approval_options,
    decided_at=utc_datetimes,
    reason=st.none() | texts,
)


def round_trip(value: Any) -> Any:
    return type(value).from_json(serde.loads(serde.dumps(value.to_json())))


# --- ports of types.rs ----------------------------------------------------------------------


def test_agent_id() -> None:
    """Mirrors types.rs::test_agent_id."""
    first = AgentId.new()
    second = AgentId.new()
    assert first != second
    assert str(first).startswith("agent:")


def test_session_id() -> None:
    """Mirrors types.rs::test_session_id."""
    assert str(SessionId.new()).startswith("session:")


def test_token_id() -> None:
    """Mirrors types.rs::test_token_id."""
    assert str(TokenId.new()).startswith("token:")


def test_timestamp() -> None:
    """Mirrors types.rs::test_timestamp."""
    now = Timestamp.now()
    assert not now.is_future()
    past = Timestamp.from_datetime(now.into_inner() - timedelta(hours=1))
    assert past.is_past()


def test_permission_display() -> None:
    """Mirrors types.rs::test_permission_display."""
    assert str(Permission.READ) == "read"
    assert str(Permission.WRITE) == "write"
    assert str(Permission.EXECUTE) == "execute"


def test_risk_level_ordering() -> None:
    """Mirrors types.rs::test_risk_level_ordering."""
    assert RiskLevel.LOW < RiskLevel.MEDIUM
    assert RiskLevel.MEDIUM < RiskLevel.HIGH
    assert RiskLevel.HIGH < RiskLevel.CRITICAL


def test_risk_level_requires_approval() -> None:
    """Mirrors types.rs::test_risk_level_requires_approval."""
    assert not RiskLevel.LOW.requires_approval()
    assert not RiskLevel.MEDIUM.requires_approval()
    assert RiskLevel.HIGH.requires_approval()
    assert RiskLevel.CRITICAL.requires_approval()


# --- golden JSON ----------------------------------------------------------------------------

GOLDEN_OBJECTS: list[tuple[str, Any]] = [
    ("agent_id.json", AgentId(uuid.UUID("6f1c1a2e-8b3d-4f5a-9c7e-0123456789ab"))),
    ("token_id.json", TokenId(uuid.UUID("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"))),
    ("session_id_system.json", SessionId.SYSTEM),
    ("timestamp.json", Timestamp(WHEN.replace(microsecond=120_000))),
    (
        "approval_request.json",
        ApprovalRequest(REQUEST_ID, "fs.write", "Write to café.txt"),
    ),
    (
        "approval_request_critical.json",
        ApprovalRequest(OTHER_REQUEST_ID, "shell.exec", "Run rm -rf build")
        .with_risk_level(RiskLevel.CRITICAL)
        .with_resource("/work/build")
        .with_options([ApprovalOption.ALLOW_ONCE, ApprovalOption.DENY]),
    ),
    (
        "approval_decision.json",
        ApprovalDecision(REQUEST_ID, ApprovalOption.ALLOW_ALWAYS, WHEN),
    ),
    (
        "approval_decision_with_reason.json",
        ApprovalDecision(
            OTHER_REQUEST_ID, ApprovalOption.DENY, WHEN.replace(microsecond=123_456)
        ).with_reason("not on a Friday"),
    ),
]


@pytest.mark.parametrize(("name", "value"), GOLDEN_OBJECTS, ids=[n for n, _ in GOLDEN_OBJECTS])
def test_golden(name: str, value: Any) -> None:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    assert serde.dumps(value.to_json()) == text
    assert type(value).from_json(serde.loads(text)) == value


@pytest.mark.parametrize(
    ("name", "enum"),
    [
        ("permission.json", Permission),
        ("risk_level.json", RiskLevel),
        ("approval_option.json", ApprovalOption),
    ],
)
def test_golden_enum_values(name: str, enum: Any) -> None:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    members = list(enum)
    assert serde.dumps([member.to_json() for member in members]) == text
    assert [enum.from_json(item) for item in serde.loads(text)] == members


# --- identifiers ----------------------------------------------------------------------------


def test_session_id_system_is_nil() -> None:
    assert SessionId.SYSTEM.uuid == uuid.UUID(int=0)
    assert str(SessionId.SYSTEM) == "session:00000000-0000-0000-0000-000000000000"
    assert SessionId.SYSTEM.to_json() == "00000000-0000-0000-0000-000000000000"
    assert isinstance(SessionId.SYSTEM, SessionId)


@pytest.mark.parametrize(
    ("cls", "prefix"), [(AgentId, "agent"), (SessionId, "session"), (TokenId, "token")]
)
def test_id_display_and_json(cls: Any, prefix: str) -> None:
    value = uuid.UUID("0F8C2A9E-5B7D-4C1E-9A3F-123456789ABC")
    ident = cls.from_uuid(value)
    assert ident.uuid == value
    assert str(ident) == f"{prefix}:0f8c2a9e-5b7d-4c1e-9a3f-123456789abc"
    assert ident.to_json() == "0f8c2a9e-5b7d-4c1e-9a3f-123456789abc"
    assert cls.from_json("0F8C2A9E5B7D4C1E9A3F123456789ABC") == ident


@pytest.mark.parametrize("cls", [AgentId, SessionId, TokenId])
def test_ids_are_random_hashable_and_unordered(cls: Any) -> None:
    first, second = cls.new(), cls.default()
    assert first != second
    assert first.uuid.version == 4
    assert first.uuid != uuid.UUID(int=0)
    assert len({first, cls.from_uuid(first.uuid), second}) == 2
    with pytest.raises(TypeError):
        _ = first < second


def test_id_types_are_distinct() -> None:
    value = uuid.uuid4()
    ids: list[object] = [AgentId(value), SessionId(value), TokenId(value)]
    assert len(set(ids)) == 3


@pytest.mark.parametrize("cls", [AgentId, SessionId, TokenId])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "must be a string, got null"),
        (1, "must be a string, got a number"),
        ("agent:0f8c2a9e-5b7d-4c1e-9a3f-123456789abc", "invalid UUID"),
        (" 0f8c2a9e-5b7d-4c1e-9a3f-123456789abc", "invalid UUID"),
        ("{0f8c2a9e5b7d4c1e9a3f123456789abc}", "invalid UUID"),
    ],
)
def test_id_from_json_rejects(cls: Any, value: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=f"^{cls.__name__}.*{message}"):
        cls.from_json(value)


@given(st.uuids())
def test_ids_round_trip(value: uuid.UUID) -> None:
    for cls in (AgentId, SessionId, TokenId):
        ident = cls(value)
        assert round_trip(ident) == ident


# --- Timestamp ------------------------------------------------------------------------------


def test_timestamp_display_drops_fraction_and_pads_year() -> None:
    assert str(Timestamp(WHEN.replace(microsecond=999_999))) == "2025-01-02T03:04:05Z"
    assert str(Timestamp(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC))) == "0005-01-02T03:04:05Z"
    assert Timestamp(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)).to_json() == "0005-01-02T03:04:05Z"


def test_timestamp_json_keeps_fraction() -> None:
    assert Timestamp(WHEN).to_json() == "2025-01-02T03:04:05Z"
    assert Timestamp(WHEN.replace(microsecond=120_000)).to_json() == "2025-01-02T03:04:05.120Z"
    assert Timestamp(WHEN.replace(microsecond=1)).to_json() == "2025-01-02T03:04:05.000001Z"


def test_timestamp_converts_to_utc() -> None:
    local = datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    stamp = Timestamp.from_datetime(local)
    assert stamp == Timestamp(WHEN)
    assert stamp.into_inner().tzinfo is UTC
    assert str(stamp) == "2025-01-02T03:04:05Z"
    assert Timestamp.from_json("2025-01-02T05:04:05+02:00") == stamp


def test_timestamp_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Timestamp(datetime(2025, 1, 2))
    with pytest.raises(TypeError):
        Timestamp("2025-01-02T03:04:05Z")  # type: ignore[arg-type]


def test_timestamp_ordering_and_hash() -> None:
    early, late = Timestamp(WHEN), Timestamp(WHEN + timedelta(microseconds=1))
    assert early < late
    assert late >= early
    assert max(late, early) is late
    assert len({early, Timestamp(WHEN), late}) == 2


def test_timestamp_default_is_now_and_future() -> None:
    before = datetime.now(UTC)
    stamp = Timestamp.default()
    assert before <= stamp.into_inner() <= datetime.now(UTC)
    assert Timestamp(datetime.now(UTC) + timedelta(hours=1)).is_future()
    assert not Timestamp(datetime.now(UTC) + timedelta(hours=1)).is_past()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2025-01-02T03:04:05", "invalid RFC 3339"),
        ("2025-01-02", "invalid RFC 3339"),
        (1735787045, "must be a string, got a number"),
        (None, "must be a string, got null"),
    ],
)
def test_timestamp_from_json_rejects(value: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=f"^Timestamp.*{message}"):
        Timestamp.from_json(value)


@given(utc_datetimes)
def test_timestamp_round_trips(value: datetime) -> None:
    stamp = Timestamp(value)
    assert round_trip(stamp) == stamp


# --- enums ----------------------------------------------------------------------------------


def test_permission_values() -> None:
    assert [p.value for p in Permission] == [
        "read",
        "write",
        "execute",
        "delete",
        "invoke",
        "list",
        "create",
    ]
    assert {str(p) for p in Permission} == {p.value for p in Permission}


def test_permission_from_json() -> None:
    assert [Permission.from_json(p.value) for p in Permission] == list(Permission)
    assert Permission.from_json("invoke") is Permission.INVOKE


def test_risk_level_values_and_display() -> None:
    assert [str(level) for level in RiskLevel] == ["low", "medium", "high", "critical"]
    assert [level.rank for level in RiskLevel] == [0, 1, 2, 3]


def test_risk_level_is_not_alphabetical() -> None:
    # Alphabetically "critical" < "high" < "low" < "medium"; declaration order must win.
    assert RiskLevel.CRITICAL > RiskLevel.HIGH
    assert RiskLevel.LOW < RiskLevel.MEDIUM
    assert sorted([RiskLevel.CRITICAL, RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH]) == list(
        RiskLevel
    )
    assert max(RiskLevel) is RiskLevel.CRITICAL
    assert min(RiskLevel) is RiskLevel.LOW


def test_risk_level_refuses_mixed_comparisons() -> None:
    with pytest.raises(TypeError):
        _ = RiskLevel.LOW < "medium"
    with pytest.raises(TypeError):
        _ = "medium" > RiskLevel.LOW  # noqa: SIM300 (the reflected operator)
    with pytest.raises(TypeError):
        _ = RiskLevel.LOW <= 1
    # Equality and hashing stay those of StrEnum.
    assert str.__eq__(RiskLevel.LOW, "low")
    by_value: dict[str, int] = {RiskLevel.LOW: 1}
    assert by_value["low"] == 1


def test_risk_level_requires_dm_verification() -> None:
    assert [level.requires_dm_verification() for level in RiskLevel] == [
        False,
        False,
        False,
        True,
    ]


@given(risk_levels, risk_levels, risk_levels)
def test_risk_level_total_order(a: RiskLevel, b: RiskLevel, c: RiskLevel) -> None:
    order = list(RiskLevel)
    ia, ib = order.index(a), order.index(b)
    assert (a < b) == (ia < ib)
    assert (a <= b) == (ia <= ib)
    assert (a > b) == (ia > ib)
    assert (a >= b) == (ia >= ib)
    assert (a == b) == (ia == ib)
    assert sum([a < b, a == b, a > b]) == 1  # trichotomy
    if a <= b and b <= c:
        assert a <= c  # transitivity
    if a <= b and b <= a:
        assert a == b  # antisymmetry


def test_risk_level_sort_matches_declaration_order_for_all_permutations() -> None:
    for permutation in itertools.permutations(RiskLevel):
        assert sorted(permutation) == list(RiskLevel)


def test_approval_option_values_and_display() -> None:
    expected = [
        ("allow_once", "Allow Once"),
        ("allow_session", "Allow Session"),
        ("allow_workspace", "Allow Workspace"),
        ("allow_always", "Allow Always"),
        ("deny", "Deny"),
    ]
    assert [(o.value, o.display()) for o in ApprovalOption] == expected
    assert [(o.to_json(), str(o)) for o in ApprovalOption] == expected
    assert f"{ApprovalOption.ALLOW_ONCE}" == "Allow Once"
    assert f"[{ApprovalOption.DENY:>6}]" == "[  Deny]"
    assert ApprovalOption("allow_once") is ApprovalOption.ALLOW_ONCE


@pytest.mark.parametrize(
    ("enum", "value", "message"),
    [
        (Permission, "Read", "unknown variant `Read`"),
        (Permission, "admin", "unknown variant `admin`"),
        (Permission, 0, "must be a string, got a number"),
        (RiskLevel, "Low", "unknown variant `Low`"),
        (RiskLevel, None, "must be a string, got null"),
        (RiskLevel, 1, "must be a string"),
        (ApprovalOption, "Allow Once", "unknown variant `Allow Once`"),
        (ApprovalOption, "allowOnce", "unknown variant"),
        (ApprovalOption, True, "must be a string, got a boolean"),
    ],
)
def test_enum_from_json_rejects(enum: Any, value: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=f"^{enum.__name__}.*{message}"):
        enum.from_json(value)


# --- ApprovalRequest ------------------------------------------------------------------------


def test_approval_request_new_defaults() -> None:
    request = ApprovalRequest.new("fs.write", "Write a file")
    assert request.request_id.version == 4
    assert request.operation == "fs.write"
    assert request.description == "Write a file"
    assert request.risk_level is RiskLevel.MEDIUM
    assert request.resource is None
    assert request.options == (
        ApprovalOption.ALLOW_ONCE,
        ApprovalOption.ALLOW_SESSION,
        ApprovalOption.ALLOW_WORKSPACE,
        ApprovalOption.ALLOW_ALWAYS,
        ApprovalOption.DENY,
    )
    assert ApprovalRequest.new("a", "b").request_id != request.request_id


def test_approval_request_setters_return_new_instances() -> None:
    request = ApprovalRequest.new("fs.write", "Write a file")
    changed = (
        request.with_risk_level(RiskLevel.HIGH)
        .with_resource("/tmp/x")
        .with_options(iter([ApprovalOption.DENY]))
    )
    assert changed.risk_level is RiskLevel.HIGH
    assert changed.resource == "/tmp/x"
    assert changed.options == (ApprovalOption.DENY,)
    assert changed.request_id == request.request_id
    assert request.risk_level is RiskLevel.MEDIUM
    assert request.resource is None
    assert len(request.options) == 5


def test_approval_request_missing_resource_reads_as_none() -> None:
    data = ApprovalRequest(REQUEST_ID, "op", "desc").to_json()
    del data["resource"]
    assert ApprovalRequest.from_json(data).resource is None


def test_approval_request_ignores_unknown_keys() -> None:
    data = ApprovalRequest(REQUEST_ID, "op", "desc").to_json()
    data["extra"] = 1
    assert ApprovalRequest.from_json(data) == ApprovalRequest(REQUEST_ID, "op", "desc")


def _request_json(**changes: Any) -> dict[str, Any]:
    data = ApprovalRequest(REQUEST_ID, "op", "desc").to_json()
    for key, value in changes.items():
        if value is _MISSING:
            del data[key]
        else:
            data[key] = value
    return data


_MISSING = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"request_id": _MISSING}, r"missing field `request_id`"),
        ({"operation": _MISSING}, r"missing field `operation`"),
        ({"description": _MISSING}, r"missing field `description`"),
        ({"risk_level": _MISSING}, r"missing field `risk_level`"),
        ({"options": _MISSING}, r"missing field `options`"),
        ({"request_id": "0f8c2a9e5b7d-4c1e-9a3f-123456789abc"}, r"request_id: invalid UUID"),
        ({"request_id": "urn:uuid:0f8c2a9e5b7d4c1e9a3f123456789abc"}, r"request_id: invalid UUID"),
        ({"request_id": 5}, r"request_id must be a string"),
        ({"operation": None}, r"operation must be a string, got null"),
        ({"description": ["x"]}, r"description must be a string, got an array"),
        ({"risk_level": "severe"}, r"risk_level: unknown variant `severe`"),
        ({"risk_level": None}, r"risk_level must be a string, got null"),
        ({"resource": 1}, r"resource must be a string, got a number"),
        ({"resource": False}, r"resource must be a string, got a boolean"),
        ({"options": "deny"}, r"options must be an array, got a string"),
        ({"options": None}, r"options must be an array, got null"),
        ({"options": ["deny", "maybe"]}, r"options\[1\]: unknown variant `maybe`"),
    ],
)
def test_approval_request_from_json_rejects(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SerdeError, match=f"^ApprovalRequest.*{message}"):
        ApprovalRequest.from_json(_request_json(**changes))


@pytest.mark.parametrize("value", [None, [], "x", 1])
def test_approval_request_from_json_rejects_non_objects(value: Any) -> None:
    with pytest.raises(SerdeError, match=r"^ApprovalRequest must be a JSON object"):
        ApprovalRequest.from_json(value)


@given(approval_requests)
def test_approval_request_round_trips(request: ApprovalRequest) -> None:
    assert round_trip(request) == request


# --- ApprovalDecision -----------------------------------------------------------------------


def test_approval_decision_new() -> None:
    before = datetime.now(UTC)
    decision = ApprovalDecision.new(REQUEST_ID, ApprovalOption.ALLOW_ONCE)
    assert decision.request_id == REQUEST_ID
    assert decision.decision is ApprovalOption.ALLOW_ONCE
    assert before <= decision.decided_at <= datetime.now(UTC)
    assert decision.reason is None
    with_reason = decision.with_reason("fine")
    assert with_reason.reason == "fine"
    assert decision.reason is None
    assert with_reason.decided_at == decision.decided_at


@pytest.mark.parametrize(
    ("option", "approved", "capability", "workspace"),
    [
        (ApprovalOption.ALLOW_ONCE, True, False, False),
        (ApprovalOption.ALLOW_SESSION, True, False, False),
        (ApprovalOption.ALLOW_WORKSPACE, True, False, True),
        (ApprovalOption.ALLOW_ALWAYS, True, True, False),
        (ApprovalOption.DENY, False, False, False),
    ],
)
def test_approval_decision_predicates(
    option: ApprovalOption, approved: bool, capability: bool, workspace: bool
) -> None:
    decision = ApprovalDecision.new(REQUEST_ID, option)
    assert decision.is_approved() is approved
    assert decision.creates_capability() is capability
    assert decision.creates_workspace_allowance() is workspace


def test_approval_decision_normalizes_and_validates_decided_at() -> None:
    local = datetime(2025, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    decision = ApprovalDecision(REQUEST_ID, ApprovalOption.DENY, local)
    assert decision.decided_at.tzinfo is UTC
    assert decision.to_json()["decided_at"] == "2025-01-02T03:04:05Z"
    with pytest.raises(ValueError, match="decided_at must be timezone-aware"):
        ApprovalDecision(REQUEST_ID, ApprovalOption.DENY, datetime(2025, 1, 2))


def test_approval_decision_reads_offsets_and_nanoseconds() -> None:
    data = {
        "request_id": "0F8C2A9E5B7D4C1E9A3F123456789ABC",
        "decision": "allow_session",
        "decided_at": "2025-01-02T04:04:05.123456789+01:00",
    }
    decision = ApprovalDecision.from_json(data)
    assert decision.request_id == REQUEST_ID
    assert decision.decided_at == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert decision.reason is None
    assert decision.to_json()["decided_at"] == "2025-01-02T03:04:05.123456Z"


def _decision_json(**changes: Any) -> dict[str, Any]:
    data = ApprovalDecision(REQUEST_ID, ApprovalOption.DENY, WHEN).to_json()
    for key, value in changes.items():
        if value is _MISSING:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"request_id": _MISSING}, r"missing field `request_id`"),
        ({"decision": _MISSING}, r"missing field `decision`"),
        ({"decided_at": _MISSING}, r"missing field `decided_at`"),
        ({"request_id": "{0f8c2a9e5b7d4c1e9a3f123456789abc}"}, r"request_id: invalid UUID"),
        ({"decision": "allow"}, r"decision: unknown variant `allow`"),
        ({"decision": 0}, r"decision must be a string"),
        ({"decided_at": "2025-01-02T03:04:05"}, r"decided_at: invalid RFC 3339"),
        ({"decided_at": "2025-01-02 03:04"}, r"decided_at: invalid RFC 3339"),
        ({"decided_at": 1735787045}, r"decided_at must be a string, got a number"),
        ({"reason": 3}, r"reason must be a string, got a number"),
    ],
)
def test_approval_decision_from_json_rejects(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SerdeError, match=f"^ApprovalDecision.*{message}"):
        ApprovalDecision.from_json(_decision_json(**changes))


@given(approval_decisions)
def test_approval_decision_round_trips(decision: ApprovalDecision) -> None:
    assert round_trip(decision) == decision
