"""v1 writes take form bodies (application/x-www-form-urlencoded, flat fields, numbers as
digits) with the same validation and the same error bodies as JSON; bad forms are a clear 4xx,
never a 500; v3 stays JSON."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from app.core import events as ev
from tests.api.test_bad_input import ENDPOINTS, IDS, assert_clear_4xx, body_for, snapshot, world  # noqa: F401

FORM = "application/x-www-form-urlencoded"


def send_form(api, method: str, path: str, fields, headers: dict | None = None):
    data = fields if isinstance(fields, (bytes, str)) else urlencode(fields, doseq=True)
    return api.client.open(path, method=method, data=data, content_type=FORM, headers=api.headers(headers))


def as_form(body: dict) -> dict:
    """What a form sends for a JSON body: every value as text."""
    return {key: str(value) for key, value in body.items()}


def test_the_checkout_flow_in_forms(api, services):
    created = send_form(api, "POST", "/v1/deals", {"title": "Lamp & shade", "price_per_unit": "1999", "quantity": "10"})
    assert created.status_code == 201, created.get_json()
    deal = created.get_json()["deal"]
    assert (deal["title"], deal["price_per_unit"], deal["quantity"]) == ("Lamp & shade", 1999, 10)

    held = send_form(api, "POST", "/v1/purchases/reserve", {"deal_id": deal["id"], "num_bought": "2"})
    assert held.status_code == 200, held.get_json()
    purchase = held.get_json()["purchase"]
    assert (purchase["quantity"], purchase["fulfillment_state"]) == (2, "reserved")

    extended = send_form(api, "PUT", f"/v1/purchases/{purchase['id']}/extend", {"seconds": "30"})
    assert extended.status_code == 200, extended.get_json()
    claimed = send_form(api, "PUT", f"/v1/purchases/{purchase['id']}/claim", {"user_id": "u 1", "credit_card_id": "c"})
    assert claimed.status_code == 200, claimed.get_json()
    assert claimed.get_json()["purchase"]["user_id"] == "u 1"  # "+" in the form, a space here
    assert len(claimed.get_json()["purchase"]["coupons"]) == 2

    other = api.reserved(deal["id"], 1)
    released = send_form(api, "PUT", f"/v1/purchases/{other['id']}/release", b"")
    assert released.get_json()["purchase"]["fulfillment_state"] == "released"

    bought = send_form(
        api,
        "POST",
        "/v1/purchases",
        {
            "deal_id": str(deal["id"]),
            "quantity": "1",
            "user_id": "u-2",
            "credit_card_id": "c",
            "expected_price_per_unit": "1999",
            "sesison_id": "s-9",  # the seed's spelling
        },
    )
    assert bought.status_code == 200, bought.get_json()
    assert bought.get_json()["purchase"]["session_id"] == "s-9"

    patched = send_form(api, "PATCH", f"/v1/deals/{deal['id']}", {"quantity": "20", "title": "Lamp"})
    assert patched.status_code == 200, patched.get_json()
    assert api.deal(deal["id"])["quantity"] == 20
    assert api.deal(deal["id"])["sold"] == 3  # read back, not trusted from the answers


def test_a_list_field_takes_every_value_of_its_name(api):
    for fields in (
        [("url", "https://example.test/a"), ("events", ev.PURCHASE_FULFILLED), ("events", ev.DEAL_SOLD_OUT)],
        [("url", "https://example.test/b"), ("events[]", ev.PURCHASE_FULFILLED), ("events[]", ev.DEAL_SOLD_OUT)],
    ):
        response = send_form(api, "POST", "/v1/webhooks", fields)
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["webhook"]["events"] == [ev.PURCHASE_FULFILLED, ev.DEAL_SOLD_OUT]
    one = send_form(api, "POST", "/v1/webhooks", {"url": "https://example.test/c", "events": ev.DEAL_SOLD_OUT})
    assert one.get_json()["webhook"]["events"] == [ev.DEAL_SOLD_OUT]


def test_the_secret_may_be_a_form_field(client, api):
    deal = api.create_deal(quantity=3)
    response = client.post(
        "/v1/purchases/reserve",
        data={"api_secret": api.secret, "deal_id": str(deal["id"]), "num_bought": "1"},
        content_type=FORM,
    )
    assert response.status_code == 200, response.get_json()
    wrong = client.post(
        "/v1/purchases/reserve", data={"api_secret": "oe_wrong", "deal_id": str(deal["id"]), "num_bought": "1"}
    )
    assert_clear_4xx(wrong, {401})


def test_an_idempotency_key_replays_a_form_request(api):
    deal = api.create_deal(quantity=5)
    fields = {"deal_id": deal["id"], "num_bought": "2"}
    first = send_form(api, "POST", "/v1/purchases/reserve", fields, headers={"Idempotency-Key": "form-1"})
    again = send_form(api, "POST", "/v1/purchases/reserve", fields, headers={"Idempotency-Key": "form-1"})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert api.deal(deal["id"])["reserved"] == 2


# -- the same validation, the same error bodies -----------------------------------------------------

# Values a form can send, each wrong for some field: its answer must be the JSON body's answer
# for the value a JSON client would send (the digits as a JSON number).
FORM_VALUES = ["0", "-1", "1.5", "1e3", "abc", "", " 7", "99999999999999999999999999", "a\x00b", "x" * 600]


def json_equivalent(value: str, integer: bool):
    """What a JSON client sends for the form's `value`: a number for an integer field's digits."""
    digits = value.lstrip("-")
    return int(value) if integer and digits.isascii() and digits.isdigit() else value


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_wrong_values_get_the_json_bodys_answer_and_take_nothing(api, services, world, method, path, template):  # noqa: F811
    path = path.format(**world)
    for field in template:
        for value in FORM_VALUES:
            before = snapshot(services, world["deal"])
            form = as_form(body_for(template, world))
            form[field] = value
            by_form = send_form(api, method, path, form)
            if by_form.status_code < 400:  # a valid value for this field (any text is a user id)
                assert by_form.status_code < 300
                continue
            assert_clear_4xx(by_form)
            assert snapshot(services, world["deal"]) == before, (field, value)
            valid = body_for(template, world)
            as_json = {**valid, field: json_equivalent(value, isinstance(valid[field], int))}
            by_json = api.request(method, path, json=as_json)
            answer = (by_form.status_code, by_form.get_json())
            assert (by_json.status_code, by_json.get_json()) == answer, (field, value)


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_unknown_missing_and_repeated_fields_are_422_naming_them(api, services, world, method, path, template):  # noqa: F811
    path = path.format(**world)
    before = snapshot(services, world["deal"])
    form = as_form(body_for(template, world))
    unknown = send_form(api, method, path, {**form, "surprise": "1", "\u00e9t\u00e9": "x"})
    assert_clear_4xx(unknown, {422})
    assert {"surprise", "\u00e9t\u00e9"} <= set(unknown.get_json()["errors"])
    for field in template:
        repeated = send_form(api, method, path, [*form.items(), (field, form[field])])
        assert_clear_4xx(repeated, {422})
        assert repeated.get_json()["errors"] == {field: ["Give this field once."]}
    assert snapshot(services, world["deal"]) == before


def test_missing_required_fields_name_them_as_json_does(api, world):  # noqa: F811
    by_form = send_form(api, "POST", "/v1/purchases/reserve", {"num_bought": "1"})
    by_json = api.post("/v1/purchases/reserve", {"num_bought": 1})
    assert by_form.status_code == by_json.status_code == 422
    assert by_form.get_json() == by_json.get_json()
    assert "deal_id" in by_form.get_json()["errors"]


BAD_FORMS = [
    (b"deal_id=1&num_bought=%FF", 400, "invalid_form"),  # not UTF-8 once decoded
    (b"\xff\xfe=1", 400, "invalid_form"),
    (b"deal_id", 400, "invalid_form"),  # no "="
    (b"deal_id=1&&&num_bought", 400, "invalid_form"),
    (b"&".join(b"f%d=1" % i for i in range(1001)), 400, "invalid_form"),  # more fields than any body has
    (b'{"deal_id": 1, "num_bought": 1}', 415, "unsupported_media_type"),  # JSON, sent as curl -d sends it
    (b'  [{"deal_id": 1}]', 415, "unsupported_media_type"),
]


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_malformed_forms_are_a_clear_4xx(api, services, world, method, path, template):  # noqa: F811
    before = snapshot(services, world["deal"])
    for data, status, code in BAD_FORMS:
        response = send_form(api, method, path.format(**world), data)
        assert_clear_4xx(response, {status})
        assert response.get_json()["error"] == code, data[:40]
    huge = send_form(api, method, path.format(**world), b"pad=" + b"x" * (20 * 1024 * 1024))
    assert_clear_4xx(huge, {413})
    assert snapshot(services, world["deal"]) == before


def test_json_bodies_still_refuse_digits_in_strings_for_integers(api):
    deal = api.create_deal(quantity=3)
    response = api.post("/v1/purchases/reserve", {"deal_id": deal["id"], "num_bought": "1"})
    assert_clear_4xx(response, {422})
    assert response.get_json()["errors"] == {"num_bought": ["Must be an integer."]}
    created = api.post("/v1/deals", {"title": "T", "price_per_unit": "100", "quantity": 5})
    assert_clear_4xx(created, {422})


def test_other_content_types_are_still_415_naming_both(api, world):  # noqa: F811
    for content_type in ("text/plain", "multipart/form-data; boundary=x", "application/xml"):
        response = api.client.open(
            "/v1/purchases/reserve", method="POST", data=b"deal_id=1", content_type=content_type, headers=api.headers()
        )
        assert_clear_4xx(response, {415})
        assert FORM in response.get_json()["message"] and "application/json" in response.get_json()["message"]


def test_v3_stays_json(api):
    body = urlencode({"purchase[transaction_id]": "t-1", "purchase[email_address]": "a@b.co"})
    response = api.client.post("/v3/purchases", data=body, content_type=FORM, headers=api.headers())
    assert response.status_code == 415
    assert set(response.get_json()) == {"error", "message"}
    assert json.loads(api.get("/v3/purchases").get_data())["total_purchases"] == 0
