"""Tests for astrid_core.elicitation (spec/core.md §5)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrid_core.elicitation import (
    CancelAction,
    ConfirmSchema,
    DismissAction,
    ElicitationAction,
    ElicitationRequest,
    ElicitationResponse,
    ElicitationSchema,
    SecretSchema,
    SelectOption,
    SelectSchema,
    SubmitAction,
    TextSchema,
    UrlElicitationRequest,
    UrlElicitationResponse,
    UrlElicitationType,
)
from astrid_core.serde import SerdeError, dumps, loads

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "elicitation"
RID = uuid.UUID("0d9f3c2a-8b7e-4f61-a5d4-3c2b1a098765")


def roundtrip(value: Any, reader: Callable[[Any], Any]) -> Any:
    return reader(loads(dumps(value.to_json())))


# --- constructors ---------------------------------------------------------------------------


def test_request_new_defaults() -> None:
    request = ElicitationRequest.new("github", "Enter your name")
    assert request.server_name == "github"
    assert request.message == "Enter your name"
    assert request.schema == TextSchema(placeholder=None, max_length=None)
    assert request.required is True
    assert request.request_id.version == 4
    assert ElicitationRequest.new("a", "b").request_id != request.request_id


def test_request_with_schema_and_optional() -> None:
    request = ElicitationRequest.new("s", "m")
    changed = request.with_schema(ConfirmSchema(default=False)).optional()
    assert changed.schema == ConfirmSchema(default=False)
    assert changed.required is False
    assert changed.request_id == request.request_id
    # the original is unchanged (value semantics)
    assert request.required is True
    assert request.schema == TextSchema()


def test_select_option_builders() -> None:
    option = SelectOption.new("a", "Option A")
    assert option == SelectOption("a", "Option A", None)
    described = option.with_description("The first")
    assert described.description == "The first"
    assert option.description is None


def test_select_schema_stores_options_as_tuple() -> None:
    options = [SelectOption.new("a", "A"), SelectOption.new("b", "B")]
    schema = SelectSchema(options, multiple=True)  # type: ignore[arg-type]
    assert schema.options == tuple(options)
    assert schema == SelectSchema(tuple(options), multiple=True)
    options.append(SelectOption.new("c", "C"))
    assert len(schema.options) == 2


def test_response_constructors() -> None:
    assert ElicitationResponse.submit(RID, {"x": 1}) == ElicitationResponse(
        RID, SubmitAction({"x": 1})
    )
    assert ElicitationResponse.submit(RID, None).action == SubmitAction(None)
    assert ElicitationResponse.cancel(RID) == ElicitationResponse(RID, CancelAction())
    assert ElicitationResponse.dismiss(RID) == ElicitationResponse(RID, DismissAction())
    cancel: ElicitationAction = CancelAction()
    assert cancel != DismissAction()


def test_url_request_new_defaults_to_oauth() -> None:
    request = UrlElicitationRequest.new("github", "https://x", "Sign in")
    assert request.elicitation_type is UrlElicitationType.OAUTH
    assert (request.server_name, request.url, request.message) == ("github", "https://x", "Sign in")
    payment = request.with_type(UrlElicitationType.PAYMENT)
    assert payment.elicitation_type is UrlElicitationType.PAYMENT
    assert payment.request_id == request.request_id
    assert request.elicitation_type is UrlElicitationType.OAUTH


def test_url_response_constructors() -> None:
    done = UrlElicitationResponse.new_completed(RID)
    assert done == UrlElicitationResponse(RID, completed=True, callback_data=None, error=None)
    failed = UrlElicitationResponse.new_not_completed(RID)
    assert failed.completed is False
    assert failed.callback_data is None
    assert failed.error is None
    data = {"code": "xyz"}
    with_data = done.with_callback_data(data)
    data["code"] = "changed"
    assert with_data.callback_data == {"code": "xyz"}
    assert done.callback_data is None


def test_url_elicitation_type_wire_names() -> None:
    assert [t.to_json() for t in UrlElicitationType] == [
        "o_auth",
        "payment",
        "credentials",
        "external",
    ]
    assert UrlElicitationType.from_json("o_auth") is UrlElicitationType.OAUTH


def test_abstract_bases_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        ElicitationSchema()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        ElicitationAction()  # type: ignore[abstract]


# --- golden JSON ----------------------------------------------------------------------------

GOLDEN_CASES: list[tuple[str, Any, Callable[[Any], Any]]] = [
    (
        "elicitation_request_text.json",
        ElicitationRequest(RID, "github", TextSchema(), "Enter your name", required=True),
        ElicitationRequest.from_json,
    ),
    ("schema_secret.json", SecretSchema(placeholder="API key"), ElicitationSchema.from_json),
    (
        "schema_select.json",
        SelectSchema(
            (
                SelectOption.new("a", "Option A").with_description("The first"),
                SelectOption.new("b", "Option B"),
            ),
            multiple=False,
        ),
        ElicitationSchema.from_json,
    ),
    ("schema_confirm.json", ConfirmSchema(default=True), ElicitationSchema.from_json),
    (
        "response_submit.json",
        ElicitationResponse.submit(RID, {"name": "Alice"}),
        ElicitationResponse.from_json,
    ),
    ("response_cancel.json", ElicitationResponse.cancel(RID), ElicitationResponse.from_json),
    ("response_dismiss.json", ElicitationResponse.dismiss(RID), ElicitationResponse.from_json),
    (
        "url_request_oauth.json",
        UrlElicitationRequest(
            RID,
            "github",
            "https://github.com/login/oauth/authorize?client_id=abc",
            "Sign in to GitHub",
            UrlElicitationType.OAUTH,
        ),
        UrlElicitationRequest.from_json,
    ),
    (
        "url_request_payment.json",
        UrlElicitationRequest(
            RID,
            "shop",
            "https://pay.example.com/checkout/42",
            "Complete the payment",
            UrlElicitationType.OAUTH,
        ).with_type(UrlElicitationType.PAYMENT),
        UrlElicitationRequest.from_json,
    ),
    (
        "url_response.json",
        UrlElicitationResponse.new_completed(RID).with_callback_data(
            {"code": "xyz", "state": "s1"}
        ),
        UrlElicitationResponse.from_json,
    ),
]


@pytest.mark.parametrize(
    ("name", "value", "reader"), GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES]
)
def test_golden(name: str, value: Any, reader: Callable[[Any], Any]) -> None:
    data = (GOLDEN / name).read_bytes()
    assert dumps(value.to_json()).encode() == data
    assert reader(loads(data)) == value


def test_golden_directory_is_covered() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(c[0] for c in GOLDEN_CASES)


def test_schema_json_shapes() -> None:
    assert TextSchema("name", 40).to_json() == {"text": {"placeholder": "name", "max_length": 40}}
    assert SecretSchema().to_json() == {"secret": {"placeholder": None}}
    assert ConfirmSchema(default=False).to_json() == {"confirm": {"default": False}}
    assert SelectSchema((), multiple=True).to_json() == {
        "select": {"options": [], "multiple": True}
    }


def test_optional_keys_may_be_missing() -> None:
    assert ElicitationSchema.from_json({"text": {}}) == TextSchema()
    assert ElicitationSchema.from_json({"secret": {}}) == SecretSchema()
    assert SelectOption.from_json({"value": "v", "label": "l"}) == SelectOption("v", "l")
    assert UrlElicitationResponse.from_json(
        {"request_id": str(RID), "completed": False}
    ) == UrlElicitationResponse.new_not_completed(RID)


def test_submit_value_may_be_null_but_not_missing() -> None:
    data = {"request_id": str(RID), "action": {"submit": {"value": None}}}
    assert ElicitationResponse.from_json(data) == ElicitationResponse.submit(RID, None)
    with pytest.raises(
        SerdeError, match=re.escape("ElicitationResponse.action.submit: missing field `value`")
    ):
        ElicitationResponse.from_json({"request_id": str(RID), "action": {"submit": {}}})


def test_unit_actions_also_read_as_null_objects() -> None:
    # serde accepts {"cancel":null} for a unit variant; so does this reader
    assert ElicitationAction.from_json({"cancel": None}) == CancelAction()
    assert ElicitationAction.from_json({"dismiss": None}) == DismissAction()


def test_from_json_on_a_variant_class() -> None:
    assert TextSchema.from_json({"text": {}}) == TextSchema()
    assert SubmitAction.from_json({"submit": {"value": 1}}) == SubmitAction(1)
    with pytest.raises(SerdeError, match="expected ConfirmSchema, got variant `text`"):
        ConfirmSchema.from_json({"text": {}})
    with pytest.raises(SerdeError, match="expected CancelAction"):
        CancelAction.from_json("dismiss")


def test_request_id_accepts_the_four_uuid_forms() -> None:
    base = ElicitationResponse.cancel(RID).to_json()
    for form in (RID.hex, str(RID).upper(), "{" + str(RID) + "}", "urn:uuid:" + str(RID)):
        assert ElicitationResponse.from_json(base | {"request_id": form}).request_id == RID


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"select": {"options": []}}, "ElicitationSchema.select: missing field `multiple`"),
        ({"select": {"multiple": True}}, "ElicitationSchema.select: missing field `options`"),
        ({"confirm": {}}, "ElicitationSchema.confirm: missing field `default`"),
        ({"confirm": {"default": "yes"}}, "ElicitationSchema.confirm.default must be a boolean"),
        ({"text": {"max_length": -1}}, "ElicitationSchema.text.max_length must be between 0"),
        ({"text": {"max_length": 1.5}}, "ElicitationSchema.text.max_length must be an integer"),
        ({"text": {"max_length": 10.0}}, "ElicitationSchema.text.max_length must be an integer"),
        ({"text": {"max_length": True}}, "ElicitationSchema.text.max_length must be an integer"),
        ({"text": {"max_length": 2**64}}, "ElicitationSchema.text.max_length must be between 0"),
        ({"text": {"placeholder": 3}}, "ElicitationSchema.text.placeholder must be a string"),
        ({"secret": {"placeholder": []}}, "ElicitationSchema.secret.placeholder must be a string"),
        ({"select": {"options": {}, "multiple": False}}, "select.options must be an array"),
        (
            {"select": {"options": [{"value": "a"}], "multiple": False}},
            "ElicitationSchema.select.options[0]: missing field `label`",
        ),
        (
            {"select": {"options": ["a"], "multiple": False}},
            "ElicitationSchema.select.options[0] must be a JSON object",
        ),
        ({"shell": {"command": "rm"}}, "ElicitationSchema: unknown variant `shell`"),
        ({"Text": {}}, "unknown variant `Text`"),
        ({"text": {}, "secret": {}}, "exactly one key"),
        ("text", "ElicitationSchema.text must be a JSON object, got null"),
        ({"confirm": True}, "ElicitationSchema.confirm must be a JSON object"),
        (42, "expected a variant name"),
    ],
)
def test_schema_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        ElicitationSchema.from_json(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"submit": {"val": 1}}, "ElicitationAction.submit: missing field `value`"),
        ({"submit": None}, "ElicitationAction.submit must be a JSON object"),
        ("submit", "ElicitationAction.submit must be a JSON object"),
        ("accept", "ElicitationAction: unknown variant `accept`"),
        ("Cancel", "unknown variant `Cancel`"),
        ({"cancel": {}}, "variant `cancel` takes no data"),
        ({"cancel": None, "dismiss": None}, "exactly one key"),
        (None, "expected a variant name"),
    ],
)
def test_action_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        ElicitationAction.from_json(data)


def _request_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = ElicitationRequest(RID, "s", TextSchema(), "m", required=True).to_json()
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_request_json(required=...), "ElicitationRequest: missing field `required`"),
        (_request_json(schema=...), "ElicitationRequest: missing field `schema`"),
        (_request_json(request_id=...), "ElicitationRequest: missing field `request_id`"),
        (_request_json(message=None), "ElicitationRequest.message must be a string"),
        (_request_json(required=1), "ElicitationRequest.required must be a boolean"),
        (_request_json(request_id="abc"), "ElicitationRequest.request_id"),
        (_request_json(schema={"shell": {}}), "ElicitationRequest.schema: unknown variant `shell`"),
        (_request_json(schema={"select": {"options": []}}), "missing field `multiple`"),
    ],
)
def test_request_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        ElicitationRequest.from_json(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"action": "cancel"}, "ElicitationResponse: missing field `request_id`"),
        ({"request_id": str(RID)}, "ElicitationResponse: missing field `action`"),
        ({"request_id": str(RID), "action": "nope"}, "ElicitationResponse.action: unknown variant"),
        ({"request_id": 5, "action": "cancel"}, "ElicitationResponse.request_id must be a string"),
    ],
)
def test_response_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        ElicitationResponse.from_json(data)


def _url_request_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = UrlElicitationRequest.new("s", "u", "m").to_json()
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_url_request_json(elicitation_type="oauth"), "unknown variant `oauth`"),
        (_url_request_json(elicitation_type="OAuth"), "unknown variant `OAuth`"),
        (_url_request_json(elicitation_type={"o_auth": None}), "elicitation_type must be a string"),
        (_url_request_json(elicitation_type=...), "missing field `elicitation_type`"),
        (_url_request_json(url=...), "UrlElicitationRequest: missing field `url`"),
        (_url_request_json(url=1), "UrlElicitationRequest.url must be a string"),
    ],
)
def test_url_request_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        UrlElicitationRequest.from_json(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"request_id": str(RID)}, "UrlElicitationResponse: missing field `completed`"),
        ({"request_id": str(RID), "completed": "yes"}, "completed must be a boolean"),
        (
            {"request_id": str(RID), "completed": True, "callback_data": {"k": 1}},
            "UrlElicitationResponse.callback_data.k must be a string",
        ),
        (
            {"request_id": str(RID), "completed": True, "callback_data": ["k"]},
            "UrlElicitationResponse.callback_data must be an object",
        ),
        (
            {"request_id": str(RID), "completed": True, "error": False},
            "UrlElicitationResponse.error must be a string",
        ),
        ({"completed": True}, "UrlElicitationResponse: missing field `request_id`"),
    ],
)
def test_url_response_rejects_bad_input(data: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=re.escape(message)):
        UrlElicitationResponse.from_json(data)


# --- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
opt_text = st.none() | st.text()
select_options = st.builds(SelectOption, st.text(), st.text(), opt_text)
schemas: st.SearchStrategy[ElicitationSchema] = st.one_of(
    st.builds(TextSchema, opt_text, st.none() | st.integers(0, 2**64 - 1)),
    st.builds(SecretSchema, opt_text),
    st.builds(SelectSchema, st.lists(select_options, max_size=4).map(tuple), st.booleans()),
    st.builds(ConfirmSchema, st.booleans()),
)
actions: st.SearchStrategy[ElicitationAction] = st.one_of(
    st.builds(SubmitAction, json_values), st.just(CancelAction()), st.just(DismissAction())
)
requests = st.builds(ElicitationRequest, st.uuids(), st.text(), schemas, st.text(), st.booleans())
responses = st.builds(ElicitationResponse, st.uuids(), actions)
url_types = st.sampled_from(UrlElicitationType)
url_requests = st.builds(
    UrlElicitationRequest, st.uuids(), st.text(), st.text(), st.text(), url_types
)
url_responses = st.builds(
    UrlElicitationResponse,
    st.uuids(),
    st.booleans(),
    st.none() | st.dictionaries(st.text(), st.text(), max_size=4),
    opt_text,
)


@given(
    st.one_of(
        st.tuples(select_options, st.just(SelectOption.from_json)),
        st.tuples(schemas, st.just(ElicitationSchema.from_json)),
        st.tuples(actions, st.just(ElicitationAction.from_json)),
        st.tuples(requests, st.just(ElicitationRequest.from_json)),
        st.tuples(responses, st.just(ElicitationResponse.from_json)),
        st.tuples(url_types, st.just(UrlElicitationType.from_json)),
        st.tuples(url_requests, st.just(UrlElicitationRequest.from_json)),
        st.tuples(url_responses, st.just(UrlElicitationResponse.from_json)),
    )
)
def test_every_type_roundtrips_through_json(case: tuple[Any, Callable[[Any], Any]]) -> None:
    value, reader = case
    text = dumps(value.to_json())
    back = reader(loads(text))
    assert back == value
    assert dumps(back.to_json()) == text


@given(schemas)
def test_schema_json_is_single_key_object(schema: ElicitationSchema) -> None:
    data = schema.to_json()
    assert isinstance(data, dict)
    assert len(data) == 1
    assert next(iter(data)) in {"text", "secret", "select", "confirm"}
