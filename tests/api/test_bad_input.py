"""Bad input never 500s: every endpoint answers a clear 4xx in its error shape and takes nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.store.models import Coupon, Deal, Purchase

# (method, path, a valid body) for every write endpoint and the reads that take a body or query.
ENDPOINTS = [
    ("POST", "/v1/deals", {"title": "T", "price_per_unit": 100, "quantity": 5}),
    ("PATCH", "/v1/deals/{deal}", {"quantity": 6}),
    ("POST", "/v1/purchases/reserve", {"deal_id": "{deal}", "num_bought": 1}),
    (
        "POST",
        "/v1/purchases",
        {"deal_id": "{deal}", "quantity": 1, "user_id": "u", "credit_card_id": "c", "expected_price_per_unit": 1999},
    ),
    ("PUT", "/v1/purchases/{purchase}/claim", {"user_id": "u"}),
    ("PUT", "/v1/purchases/{purchase}/release", {}),
    ("PUT", "/v1/purchases/{purchase}/extend", {"seconds": 10}),
]
IDS = [f"{m} {p}" for m, p, _ in ENDPOINTS]


@pytest.fixture
def world(api, services):
    deal = api.create_deal(quantity=10)
    purchase = api.reserved(deal["id"], 2)
    return {"deal": deal["id"], "purchase": purchase["id"]}


def fill(value, world):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in world:
        return world[value[1:-1]]
    return value


def body_for(template: dict, world: dict) -> dict:
    return {key: fill(value, world) for key, value in template.items()}


def snapshot(services, deal_id):
    with services.db.read() as session:
        counts = (
            session.scalar(select(func.count()).select_from(Purchase)),
            session.scalar(select(func.count()).select_from(Coupon)),
            session.scalar(select(func.count()).select_from(Deal)),
        )
        states = sorted(session.execute(select(Purchase.token, Purchase.fulfillment_state)).all())
        deal = session.get(Deal, deal_id)
        fields = (deal.quantity, deal.price_per_unit, deal.title)
    live = services.stock.snapshot(deal_id, 0)
    return counts, states, fields, (live.available, live.reserved, live.sold)


def send_raw(api, method, path, data: bytes, content_type="application/json"):
    return api.client.open(path, method=method, data=data, content_type=content_type, headers=api.headers())


def assert_clear_4xx(response, statuses=None):
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
    if statuses:
        assert response.status_code in statuses, response.get_json()
    body = response.get_json()
    assert body["status"] == "error"
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]


MALFORMED = [
    b'{"deal_id": 1,',
    b"{'single': 'quotes'}",
    b"\xff\xfe\x00garbage",
    b"[" * 100_000,  # deeper than any parser's recursion limit
    b'{"a": NaN}x',
]


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_malformed_json_is_400(api, services, world, method, path, template):
    before = snapshot(services, world["deal"])
    for data in MALFORMED:
        response = send_raw(api, method, path.format(**world), data)
        assert_clear_4xx(response, {400})
    assert snapshot(services, world["deal"]) == before


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_not_an_object_is_4xx(api, services, world, method, path, template):
    before = snapshot(services, world["deal"])
    for value in ([1, 2], "text", 42, True):
        response = send_raw(api, method, path.format(**world), json.dumps(value).encode())
        assert_clear_4xx(response, {400, 422})
    assert snapshot(services, world["deal"]) == before


WRONG_VALUES = [
    "12",
    "",
    12.5,
    -1,
    True,
    None,
    [],
    {},
    {"$gt": 0},
    10**40,
    -(10**40),
    1e308,
    "x" * 100_000,
    "a\u0000b",
    "\ud800",
]


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_wrong_types_and_huge_values_are_4xx_and_take_nothing(api, services, world, method, path, template):
    before = snapshot(services, world["deal"])
    for field in template:
        for value in WRONG_VALUES:
            body = body_for(template, world)
            body[field] = value
            data = json.dumps(body).encode()
            response = send_raw(api, method, path.format(**world), data)
            if response.status_code < 400:
                # Some values are valid for some fields (a numeric string is a valid deal id,
                # any short text a valid user id); those must then really be valid.
                assert response.status_code < 300
                before = snapshot(services, world["deal"])
                continue
            assert_clear_4xx(response)
            assert snapshot(services, world["deal"]) == before, (field, value)


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_unknown_fields_are_422_naming_them(api, services, world, method, path, template):
    before = snapshot(services, world["deal"])
    body = body_for(template, world)
    body["surprise"] = 1
    body["\u00e9t\u00e9"] = "x"
    response = api.request(method, path.format(**world), json=body)
    assert_clear_4xx(response, {422})
    assert "surprise" in response.get_json()["errors"]
    assert snapshot(services, world["deal"]) == before


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_a_20_mb_body_is_413(api, services, world, method, path, template):
    before = snapshot(services, world["deal"])
    data = b'{"pad": "' + b"x" * (20 * 1024 * 1024) + b'"}'
    response = send_raw(api, method, path.format(**world), data)
    assert_clear_4xx(response, {413})
    assert snapshot(services, world["deal"]) == before


@pytest.mark.parametrize("method, path, template", ENDPOINTS, ids=IDS)
def test_a_body_that_is_not_json_by_content_type_is_415(api, services, world, method, path, template):
    before = snapshot(services, world["deal"])
    data = json.dumps(body_for(template, world)).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml", None):
        response = send_raw(api, method, path.format(**world), data, content_type=content_type)
        assert_clear_4xx(response, {415})
    assert snapshot(services, world["deal"]) == before


def test_unicode_is_kept_exactly(api):
    title = "Caf\u00e9 \u2615 \U0001f600 \u05e9\u05dc\u05d5\u05dd e\u0301"
    deal = api.create_deal(title=title, sku="\u00fc-1")
    assert api.deal(deal["id"])["title"] == title
    held = api.reserved(deal["id"])
    claimed = api.claim(held["id"], "\u7528\u6237-\U0001f600").get_json()["purchase"]
    assert claimed["user_id"] == "\u7528\u6237-\U0001f600"


def test_bad_query_strings_are_422(api):
    for query in ("page=0", "page=abc", "page=" + "9" * 40, "per_page=1000", "deal_id=-1", "fulfillment_state=lost"):
        response = api.get(f"/v1/purchases?{query}")
        assert_clear_4xx(response, {422})


def test_bad_ids_in_paths_are_404(api):
    for path in ("/v1/deals/0", "/v1/deals/-1", "/v1/deals/1e3", "/v1/deals/" + "9" * 30, "/v1/purchases/" + "x" * 100):
        assert_clear_4xx(api.get(path), {404})


def test_unknown_routes_and_methods_answer_in_the_error_shape(api):
    assert_clear_4xx(api.get("/v1/nothing-here"), {404})
    response = api.request("DELETE", "/v1/deals")
    assert_clear_4xx(response, {405})
    assert "POST" in response.headers["Allow"]
