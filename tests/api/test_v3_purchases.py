"""v3 purchases: the seed's own examples field by field, every error body, and where the secret
may be. (Stock taken by v3 products: test_v3_stock.py; pagination: test_v3_ledger.py.)"""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.store.models import Purchase, PurchaseItem

UNAUTHORIZED = {
    "error": "Authorization Failed",
    "message": "You do not have sufficient permissions to access this resource",
}
MISSING = "Your request is missing parameters"

# -- the seed's examples, verbatim ---------------------------------------------------------

SEED_CREATE_REQUEST = {
    "purchase": {
        "transaction_id": "123-abcd-456-efgh",
        "email_address": "crashoverride@hackers.com",
        "currency": "jpy",
        "transaction_time": "2018-03-20 14:31:10",
        "subtotal": 20.00,
        "tax": 2.00,
        "shipping": 2.00,
        "discount": 3.00,
        "total": 21.00,
        "status": "paid",
        "products": [
            {"name": "Floppy Disk (512k)", "sku": "7890-ijkl", "unit_price": 5.00, "quantity": 2},
            {"name": "Telephone Cord (data)", "sku": "mnop-1234", "unit_price": 10.00, "quantity": 1},
        ],
    }
}

# The seed's raw text: "20.00" must be read as an exact decimal, not a float.
SEED_CREATE_TEXT = """{
    "purchase": {
        "transaction_id": "123-abcd-456-efgh",
        "email_address": "crashoverride@hackers.com",
        "currency": "jpy",
        "transaction_time": "2018-03-20 14:31:10",
        "subtotal": 20.00,
        "tax": 2.00,
        "shipping": 2.00,
        "discount": 3.00,
        "total": 21.00,
        "status": "paid",
        "products": [{
            "name": "Floppy Disk (512k)",
            "sku": "7890-ijkl",
            "unit_price": 5.00,
            "quantity": 2
        }, {
            "name": "Telephone Cord (data)",
            "sku": "mnop-1234",
            "unit_price": 10.00,
            "quantity": 1
        }]
    }
}"""

SEED_PRODUCTS = [
    {"unit_price": 5.0, "quantity": 2, "sku": "7890-ijkl", "name": "Floppy Disk (512k)"},
    {"unit_price": 10.0, "quantity": 1, "sku": "mnop-1234", "name": "Telephone Cord (data)"},
]

SEED_CREATE_RESPONSE = {
    "id": 8,
    "transaction_id": "123-abcd-456-efgh",
    "status": "paid",
    "email_address": "crashoverride@hackers.com",
    "currency": "JPY",
    "transaction_time": "2018-03-20 14:31",
    "subtotal": 20.0,
    "discount": 3.0,
    "tax": 2.0,
    "shipping": 2.00,
    "total": 21.0,
    "products": SEED_PRODUCTS,
}

SEED_LIST_RESPONSE = {
    "total_purchases": 2,
    "page": 1,
    "total_pages": 1,
    "purchases": [
        {
            "id": 3,
            "transaction_id": "123-abcd-456-efgh",
            "status": "paid",
            "email_address": "x@example.com",
            "currency": "JPY",
            "transaction_time": "2018-03-20 12:38",
            "subtotal": 20.0,
            "shipping": 2.0,
            "discount": 3.0,
            "tax": 2.0,
            "total": 21.0,
            "products": SEED_PRODUCTS,
        },
        {
            "id": 4,
            "transaction_id": "123-abcd-457-efgh",
            "status": "paid",
            "email_address": "x@example.com",
            "currency": "USD",
            "transaction_time": "2018-03-20 13:38",
            "subtotal": 20.0,
            "shipping": 2.0,
            "discount": 3.0,
            "tax": 2.0,
            "total": 21.0,
            "products": SEED_PRODUCTS,
        },
    ],
}


def same(actual, expected, path="$"):
    """Equal values of the same JSON types (20.0 is not 20), key by key, with the path of the
    first difference."""
    assert type(actual) is type(expected), f"{path}: {actual!r} is not like {expected!r}"
    if isinstance(expected, dict):
        assert list(sorted(actual)) == list(sorted(expected)), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {len(actual)} items, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            same(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def with_ids(expected: dict, *ids: int) -> dict:
    """The seed's example with our ids in place of the seed's."""
    expected = copy.deepcopy(expected)
    if "purchases" in expected:
        for purchase, id_ in zip(expected["purchases"], ids, strict=True):
            purchase["id"] = id_
    else:
        expected["id"] = ids[0]
    return expected


def post(api, body, **kwargs):
    return api.post("/v3/purchases", body, **kwargs)


def purchase(**fields) -> dict:
    body = copy.deepcopy(SEED_CREATE_REQUEST)
    body["purchase"].update(fields)
    return body


def created(api, body=None) -> dict:
    response = post(api, body or purchase())
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def stored(services, purchase_id: int) -> Purchase:
    with services.db.read() as session:
        return session.get(Purchase, purchase_id)


# -- POST -------------------------------------------------------------------------------------


def test_seed_create_example_answers_201_with_the_seed_body(api, services):
    response = api.request("POST", "/v3/purchases", data=SEED_CREATE_TEXT, content_type="application/json")
    assert response.status_code == 201
    body = response.get_json()
    assert isinstance(body["id"], int)
    same(body, with_ids(SEED_CREATE_RESPONSE, body["id"]))
    # Money is a JSON number written like the seed's (20.0), not a string and not 20.
    assert b'"subtotal":20.0' in response.data and b'"unit_price":5.0' in response.data


def test_seed_create_example_is_stored_exactly(api, services):
    body = created(api, json.loads(SEED_CREATE_TEXT))
    row = stored(services, body["id"])
    assert row.source == "v3" and row.fulfillment_state == "fulfilled"
    assert row.currency == "JPY" and row.status == "paid"
    assert row.transaction_time.isoformat() == "2018-03-20T14:31:10+00:00"
    assert (row.subtotal, row.tax, row.shipping, row.discount, row.total) == tuple(
        Decimal(v) for v in ("20", "2", "2", "3", "21")
    )
    assert all(isinstance(v, Decimal) for v in (row.subtotal, row.total))
    assert [(i.position, i.name, i.sku, i.unit_price, i.quantity, i.deal_id) for i in row.items] == [
        (0, "Floppy Disk (512k)", "7890-ijkl", Decimal("5"), 2, None),
        (1, "Telephone Cord (data)", "mnop-1234", Decimal("10"), 1, None),
    ]


def test_seed_get_one_example(api):
    body = created(api)
    response = api.request(
        "GET",
        f"/v3/purchases/{body['id']}",
        data=json.dumps({"api_secret": api.secret}),
        content_type="application/json",
    )
    assert response.status_code == 200
    same(response.get_json(), with_ids(SEED_CREATE_RESPONSE, body["id"]))


def test_seed_list_example(client, api):
    first = created(
        api,
        {
            "purchase": {
                **SEED_CREATE_REQUEST["purchase"],
                "email_address": "x@example.com",
                "transaction_time": "2018-03-20 12:38:00",
            }
        },
    )
    second = created(
        api,
        {
            "purchase": {
                **SEED_CREATE_REQUEST["purchase"],
                "transaction_id": "123-abcd-457-efgh",
                "email_address": "x@example.com",
                "currency": "USD",
                "transaction_time": "2018-03-20 13:38:00",
            }
        },
    )
    # Exactly the seed's curl: a GET with a JSON body carrying the secret and the page.
    response = client.open(
        "/v3/purchases",
        method="GET",
        data=json.dumps({"api_secret": api.secret, "page": 1}),
        content_type="application/json",
    )
    assert response.status_code == 200
    same(response.get_json(), with_ids(SEED_LIST_RESPONSE, first["id"], second["id"]))


def test_seed_update_example_changes_only_the_status(api, services):
    body = created(api)
    response = api.put(f"/v3/purchases/{body['id']}", {"api_secret": api.secret, "purchase": {"status": "refund"}})
    assert response.status_code == 200
    expected = with_ids(SEED_CREATE_RESPONSE, body["id"])
    expected["status"] = "refund"
    same(response.get_json(), expected)
    assert stored(services, body["id"]).status == "refund"
    same(api.get(f"/v3/purchases/{body['id']}").get_json(), expected)


def test_defaults_currency_usd_status_paid_time_now_amounts_zero(api, services):
    response = post(api, {"purchase": {"transaction_id": "t-1", "email_address": "a@b.co"}})
    assert response.status_code == 201
    body = response.get_json()
    row = stored(services, body["id"])
    assert body["currency"] == "USD" and body["status"] == "paid" and body["products"] == []
    assert body["transaction_time"] == row.transaction_time.strftime("%Y-%m-%d %H:%M")
    assert abs((row.transaction_time - row.created_at).total_seconds()) < 1
    for name in ("subtotal", "shipping", "discount", "tax", "total"):
        assert body[name] == 0.0 and isinstance(body[name], float)


@pytest.mark.parametrize(
    "given, shown",
    [
        ("2018-03-20 14:31:10", "2018-03-20 14:31"),
        ("2018-03-20T14:31:59Z", "2018-03-20 14:31"),
        ("2018-03-20T14:31:10.250+00:00", "2018-03-20 14:31"),
        ("2018-03-20T16:31:10+02:00", "2018-03-20 14:31"),
        ("2018-03-20T23:30:00-05:00", "2018-03-21 04:30"),
        ("2018-03-20", "2018-03-20 00:00"),
    ],
)
def test_transaction_time_iso_or_ck_format_shown_in_utc(api, given, shown):
    assert created(api, purchase(transaction_time=given))["transaction_time"] == shown


def test_integers_are_accepted_where_decimals_are_expected(api, services):
    body = purchase(subtotal=20, tax=2, shipping=2, discount=3, total=21)
    body["purchase"]["products"][0]["unit_price"] = 5
    response = created(api, body)
    same(response, with_ids(SEED_CREATE_RESPONSE, response["id"]))


def test_money_is_exact(api, services):
    text = (
        '{"purchase": {"transaction_id": "exact", "email_address": "a@b.co", "subtotal": 0.1, "tax": 0.2,'
        ' "total": 99999999999.9999, "discount": -12.3456, "shipping": 1.10,'
        ' "products": [{"sku": "s", "unit_price": 33333333333.3333, "quantity": 3}]}}'
    )
    response = api.request("POST", "/v3/purchases", data=text, content_type="application/json")
    assert response.status_code == 201
    row = stored(services, response.get_json()["id"])
    assert row.subtotal + row.tax == Decimal("0.3")
    assert row.total == Decimal("99999999999.9999")
    assert row.discount == Decimal("-12.3456") and row.shipping == Decimal("1.1")
    assert row.items[0].unit_price == Decimal("33333333333.3333")
    shown = json.loads(response.data, parse_float=Decimal)
    assert shown["total"] == Decimal("99999999999.9999") and shown["subtotal"] == Decimal("0.1")


def test_numeric_transaction_id_and_sku_are_taken_as_text(api):
    body = created(api, {"purchase": {"transaction_id": 1234, "email_address": "a@b.co", "products": [{"sku": 7890}]}})
    assert body["transaction_id"] == "1234" and body["products"][0]["sku"] == "7890"
    assert body["products"][0] == {"unit_price": 0.0, "quantity": 1, "sku": "7890", "name": None}


def test_secret_and_page_in_the_body_are_not_fields_of_the_purchase(api):
    body = purchase()
    body.update(api_secret=api.secret, api_key="public-key", page=1)
    assert post(api, body).status_code == 201


# -- where the secret may be -----------------------------------------------------------------


def test_the_secret_in_header_query_or_json_body(client, api):
    made = created(api)
    one = f"/v3/purchases/{made['id']}"
    bearer = {"Authorization": f"Bearer {api.secret}"}
    assert client.get(one, headers=bearer).status_code == 200
    assert client.get(f"{one}?api_secret={api.secret}").status_code == 200
    assert client.open(one, method="GET", json={"api_secret": api.secret}).status_code == 200
    # A body must say it is JSON (the seed's curl lines send Content-Type: application/json).
    refused = client.open(one, method="GET", data=json.dumps({"api_secret": api.secret}))
    assert refused.status_code == 415
    assert set(refused.get_json()) == {"error", "message"}

    assert client.get("/v3/purchases", headers=bearer).get_json()["total_purchases"] == 1
    assert client.get(f"/v3/purchases?api_secret={api.secret}").get_json()["total_purchases"] == 1
    listed = client.open("/v3/purchases", method="GET", json={"api_secret": api.secret})
    assert listed.get_json()["total_purchases"] == 1

    body = purchase(transaction_id="by-header")
    assert client.post("/v3/purchases", json=body, headers=bearer).status_code == 201
    body = purchase(transaction_id="by-query")
    assert client.post(f"/v3/purchases?api_secret={api.secret}", json=body).status_code == 201
    body = {**purchase(transaction_id="by-body"), "api_secret": api.secret}
    assert client.post("/v3/purchases", json=body).status_code == 201

    status = {"purchase": {"status": "refund"}}
    assert client.put(one, json=status, headers=bearer).status_code == 200
    assert client.put(f"{one}?api_secret={api.secret}", json=status).status_code == 200
    assert client.put(one, json={**status, "api_secret": api.secret}).status_code == 200


ROUTES = [
    ("GET", "/v3/purchases"),
    ("POST", "/v3/purchases"),
    ("GET", "/v3/purchases/{id}"),
    ("PUT", "/v3/purchases/{id}"),
]


@pytest.mark.parametrize("method, path", ROUTES)
def test_missing_or_wrong_secret_is_the_seeds_401(client, api, method, path):
    made = created(api)
    url = path.format(id=made["id"])
    body = purchase(transaction_id="other") if method == "POST" else {"purchase": {"status": "refund"}}
    attempts = [
        {},  # no secret at all (the seed's example)
        {"headers": {"Authorization": "Bearer oe_wrong"}},
        {"query_string": {"api_secret": "oe_wrong"}},
        {"json_secret": "oe_wrong"},
        {"json_secret": ""},
    ]
    for attempt in attempts:
        sent = dict(body)
        if "json_secret" in attempt:
            sent["api_secret"] = attempt["json_secret"]
        response = client.open(
            url,
            method=method,
            json=sent,
            headers=attempt.get("headers", {}),
            query_string=attempt.get("query_string"),
        )
        assert response.status_code == 401, (url, attempt)
        assert response.get_json() == UNAUTHORIZED
    # Nothing was written by the refused requests.
    assert api.get(f"/v3/purchases/{made['id']}").get_json()["status"] == "paid"
    assert api.get("/v3/purchases").get_json()["total_purchases"] == 1


# -- 400: every problem, in the seed's words ---------------------------------------------------


def test_seed_400_example(api, services):
    body = purchase()
    del body["purchase"]["transaction_id"]
    del body["purchase"]["products"][0]["sku"]
    response = post(api, body)
    assert response.status_code == 400
    assert response.get_json() == {
        "error": MISSING,
        "message": "transaction_id can't be blank, Sku can't be blank for product: Floppy Disk (512k)",
    }
    with services.db.read() as session:
        assert session.scalar(select(Purchase.id)) is None


def test_every_problem_is_listed_in_field_order(api):
    body = {
        "page": 1,
        "colour": "red",
        "purchase": {
            "transaction_id": "  ",
            "email_address": "not-an-email",
            "currency": "yen!",
            "transaction_time": "yesterday",
            "subtotal": "20.00",
            "status": "",
            "gift_wrap": True,
            "products": [
                {"name": "Floppy Disk (512k)", "unit_price": 5, "quantity": 2.5},
                {"name": "Telephone Cord (data)", "sku": "mnop-1234", "colour": "beige"},
                {"name": "Modem", "sku": "mnop-1234"},
            ],
        },
    }
    response = post(api, body)
    assert response.status_code == 400
    assert response.get_json() == {
        "error": MISSING,
        "message": ", ".join(
            [
                "transaction_id can't be blank",
                "email_address is invalid",
                "currency must be a 3-letter currency code",
                "transaction_time is not a valid date and time (use ISO 8601 or YYYY-MM-DD HH:MM:SS)",
                "subtotal is not a number",
                "status can't be blank",
                "Sku can't be blank for product: Floppy Disk (512k)",
                "Quantity must be an integer for product: Floppy Disk (512k)",
                "colour is not a permitted parameter for product: Telephone Cord (data)",
                "Sku must be unique within the purchase for product: Modem",
                "gift_wrap is not a permitted parameter",
                "colour is not a permitted parameter",
            ]
        ),
    }


def test_a_duplicate_sku_alone_is_a_400(api, services):
    body = purchase()
    body["purchase"]["products"][1]["sku"] = "7890-ijkl"
    response = post(api, body)
    assert response.status_code == 400
    assert response.get_json() == {
        "error": MISSING,
        "message": "Sku must be unique within the purchase for product: Telephone Cord (data)",
    }
    assert api.get("/v3/purchases").get_json()["total_purchases"] == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"email_address": None}, "email_address can't be blank"),
        ({"transaction_id": None}, "transaction_id can't be blank"),
        ({"transaction_id": 12.5}, "transaction_id must be a string"),
        ({"transaction_id": "x" * 201}, "transaction_id is too long (maximum is 200 characters)"),
        ({"transaction_id": "a\u0000b"}, "transaction_id must not contain NUL characters"),
        ({"transaction_id": "\ud800"}, "transaction_id must be valid Unicode text"),
        ({"status": "x" * 51}, "status is too long (maximum is 50 characters)"),
        ({"subtotal": True}, "subtotal is not a number"),
        ({"subtotal": [1]}, "subtotal is not a number"),
        ({"tax": 100000000000}, "tax must be between -99999999999.9999 and 99999999999.9999"),
        ({"tax": -1e300}, "tax must be between -99999999999.9999 and 99999999999.9999"),
        ({"discount": 0.00001}, "discount must have at most 4 decimal places"),
        ({"currency": "JPYX"}, "currency must be a 3-letter currency code"),
        ({"currency": 392}, "currency must be a string"),
        (
            {"transaction_time": 1521556270},
            "transaction_time is not a valid date and time (use ISO 8601 or YYYY-MM-DD HH:MM:SS)",
        ),
        (
            {"transaction_time": "2018-02-30 10:00:00"},
            "transaction_time is not a valid date and time (use ISO 8601 or YYYY-MM-DD HH:MM:SS)",
        ),
        ({"products": {"sku": "a"}}, "products must be an array"),
        ({"products": ["a"]}, "Product 1 must be an object"),
        ({"products": [{"sku": "a", "quantity": -1}]}, "Quantity must be between 0 and 1000000000 for product: a"),
        ({"products": [{"sku": "a", "quantity": "2"}]}, "Quantity must be an integer for product: a"),
        ({"products": [{"sku": "a", "name": "A", "unit_price": "5.00"}]}, "Unit price is not a number for product: A"),
        ({"products": [{"sku": ""}]}, "Sku can't be blank for product: #1"),
        ({"products": [{"sku": None, "name": "A"}]}, "Sku can't be blank for product: A"),
        ({"products": [{"sku": f"s{i}"} for i in range(1001)]}, "products must have at most 1000 products"),
    ],
)
def test_bad_fields_are_400_naming_them(api, fields, message):
    response = post(api, purchase(**fields))
    assert response.status_code == 400
    assert response.get_json() == {"error": MISSING, "message": message}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"purchase": {"transaction_id": "t", "email_address": "a@b.co", "total": NaN}}', "total is not a number"),
        ('{"purchase": {"transaction_id": "t", "email_address": "a@b.co", "tax": -Infinity}}', "tax is not a number"),
        (
            '{"purchase": {"transaction_id": "t", "email_address": "a@b.co", "tax": 1e999}}',
            "tax must be between -99999999999.9999 and 99999999999.9999",
        ),
        (
            '{"purchase": {"transaction_id": "t", "email_address": "a@b.co", "tax": 1' + "0" * 5000 + "}}",
            "The request body is not valid JSON",
        ),
        ("{not json", "The request body is not valid JSON"),
        (b"\xff\xfe", "The request body is not valid JSON"),
        ("[1, 2]", "The request body must be an object"),
        ("", "purchase can't be blank"),
        ('{"purchase": null}', "purchase can't be blank"),
        ('{"purchase": "yes"}', "purchase must be an object"),
    ],
)
def test_bad_bodies_are_400(api, text, message):
    response = api.request("POST", "/v3/purchases", data=text, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": MISSING, "message": message}


def test_a_huge_body_is_413_in_the_v3_shape(api):
    response = api.request("POST", "/v3/purchases", data="x" * (1024 * 1024 + 1), content_type="application/json")
    assert response.status_code == 413
    assert set(response.get_json()) == {"error", "message"}


# -- GET one / PUT ------------------------------------------------------------------------------


def test_another_accounts_purchase_is_404_as_if_it_did_not_exist(api, other_api, services):
    made = created(api)
    for response in (
        other_api.get(f"/v3/purchases/{made['id']}"),
        other_api.put(f"/v3/purchases/{made['id']}", {"purchase": {"status": "refund"}}),
        api.get("/v3/purchases/999999"),
        api.put("/v3/purchases/999999", {"purchase": {"status": "refund"}}),
    ):
        assert response.status_code == 404
        assert response.get_json() == {"error": "Not Found", "message": "No purchase with that id."}
    assert stored(services, made["id"]).status == "paid"
    assert other_api.get("/v3/purchases").get_json()["total_purchases"] == 0


@pytest.mark.parametrize("path", ["/v3/purchases/abc", "/v3/purchases/0", "/v3/purchases/99999999999999999999999"])
def test_a_malformed_id_is_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert set(response.get_json()) == {"error", "message"}


@pytest.mark.parametrize(
    "sent",
    [
        {"total": 0},
        {"transaction_id": "x", "email_address": "a@b.co"},
        # The whole purchase sent back, as a ConvertKit client does after changing its status.
        {key: value for key, value in SEED_CREATE_REQUEST["purchase"].items() if key != "status"},
        # Ignored whatever their value: not read, so not checked either.
        {"total": "lots", "products": "none", "transaction_time": "yesterday", "id": -1, "n\u0000ul": "\ud800"},
    ],
    ids=["total", "transaction_id and email", "the whole purchase", "bad values"],
)
def test_update_ignores_every_field_but_the_status(api, services, sent):
    """ConvertKit's Rails API ignores unpermitted parameters: 200, and only the status changes."""
    made = created(api)
    before = api.get(f"/v3/purchases/{made['id']}").get_json()
    body = {"purchase": {**sent, "status": "refund"}, "extra": {"at": "the top"}, "page": 3}
    response = api.put(f"/v3/purchases/{made['id']}", body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {**before, "status": "refund"}
    assert api.get(f"/v3/purchases/{made['id']}").get_json() == {**before, "status": "refund"}
    assert stored(services, made["id"]).status == "refund"
    assert api.get("/v3/purchases").get_json()["total_purchases"] == 1  # nothing created


@pytest.mark.parametrize(
    "body, message",
    [
        ({"purchase": {}}, "status can't be blank"),
        ({"purchase": {"total": 0}}, "status can't be blank"),
        ({"purchase": {"status": ""}}, "status can't be blank"),
        ({"purchase": {"status": None}}, "status can't be blank"),
        ({"purchase": {"status": "x" * 51}}, "status is too long (maximum is 50 characters)"),
        ({"purchase": {"status": "re\u0000fund"}}, "status must not contain NUL characters"),
        ({"purchase": {"status": 7}}, "status must be a string"),
        ({"purchase": "refund"}, "purchase must be an object"),
        ({"status": "refund"}, "purchase can't be blank"),
        (None, "purchase can't be blank"),
    ],
)
def test_update_needs_a_status(api, services, body, message):
    made = created(api)
    response = api.put(f"/v3/purchases/{made['id']}", body)
    assert response.status_code == 400
    assert response.get_json() == {"error": MISSING, "message": message}
    assert stored(services, made["id"]).status == "paid"


def test_a_reservation_is_not_in_the_ledger(api, services):
    deal = api.create_deal(quantity=5)
    held = api.reserved(deal["id"], 1)
    with services.db.read() as session:
        row_id = session.scalar(select(Purchase.id).where(Purchase.token == held["id"]))
    assert api.get(f"/v3/purchases/{row_id}").status_code == 404
    assert api.put(f"/v3/purchases/{row_id}", {"purchase": {"status": "x"}}).status_code == 404
    assert api.get("/v3/purchases").get_json()["total_purchases"] == 0


def test_a_v3_purchase_is_not_a_v1_purchase(api):
    made = created(api)
    row_token = api.get(f"/v3/purchases/{made['id']}").get_json()["transaction_id"]
    assert api.get(f"/v1/purchases/{row_token}").status_code == 404
    assert api.get("/v1/purchases").get_json()["purchases"] == []


def test_the_id_may_be_repeated_in_the_body_but_must_match(api):
    made = created(api)
    one = f"/v3/purchases/{made['id']}"
    assert api.request("GET", one, json={"id": made["id"]}).status_code == 200
    assert api.request("GET", one, json={"id": str(made["id"])}).status_code == 200
    assert api.put(one, {"id": made["id"], "purchase": {"status": "refund"}}).status_code == 200
    for response in (
        api.request("GET", one, json={"id": made["id"] + 1}),
        api.put(one, {"id": made["id"] + 1, "purchase": {"status": "lost"}}),
    ):
        assert response.status_code == 400
        assert response.get_json() == {"error": MISSING, "message": "id does not match the purchase id in the URL"}
    assert api.request("GET", one, json={"id": 0}).get_json()["message"] == "id must be a positive integer"
    assert api.get(one).get_json()["status"] == "refund"


# -- GET list parameters -----------------------------------------------------------------------


def test_page_from_query_or_body_default_1_and_past_the_end_empty(api, client):
    created(api)
    assert api.get("/v3/purchases").get_json()["page"] == 1
    assert api.get("/v3/purchases?page=1").get_json()["total_purchases"] == 1
    past = api.get("/v3/purchases?page=3").get_json()
    assert past == {"total_purchases": 1, "page": 3, "total_pages": 1, "purchases": []}
    in_body = client.open("/v3/purchases", method="GET", json={"api_secret": api.secret, "page": 2})
    assert in_body.get_json() == {"total_purchases": 1, "page": 2, "total_pages": 1, "purchases": []}
    huge = api.get("/v3/purchases?page=1000000000000000000").get_json()
    assert huge["purchases"] == [] and huge["total_purchases"] == 1


@pytest.mark.parametrize("page", ["0", "-1", "abc", "1.5", "", "10000000000000000000"])
def test_a_page_that_is_not_a_positive_integer_is_400(api, page):
    response = api.get(f"/v3/purchases?page={page}")
    assert response.status_code == 400
    assert response.get_json() == {"error": MISSING, "message": "page must be a positive integer"}


@pytest.mark.parametrize("page", [0, "x", 1.5, True, None])
def test_a_bad_page_in_the_body_is_400(api, page):
    response = api.request("GET", "/v3/purchases", json={"page": page})
    assert response.status_code == 400
    assert response.get_json() == {"error": MISSING, "message": "page must be a positive integer"}


def test_unknown_fields_in_a_get_body_are_400(api):
    response = api.request("GET", "/v3/purchases", json={"page": 1, "per_page": 100})
    assert response.status_code == 400
    assert response.get_json() == {"error": MISSING, "message": "per_page is not a permitted parameter"}


def test_openapi_documents_v3_next_to_v1(client):
    spec = client.get("/openapi.json").get_json()
    assert {"/v1/purchases", "/v3/purchases", "/v3/purchases/{purchase_id}"} <= set(spec["paths"])
    post_doc = spec["paths"]["/v3/purchases"]["post"]
    assert {"201", "400", "401", "409"} <= set(post_doc["responses"])
    assert "422" not in post_doc["responses"]
    assert spec["components"]["schemas"]["V3ErrorBody"]["properties"].keys() == {"error", "message"}
    for status in ("400", "401", "409"):
        schema = post_doc["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/V3ErrorBody"}  # one error body, documented once


def test_items_are_rows_of_purchase_items(api, services):
    made = created(api)
    with services.db.read() as session:
        skus = session.scalars(
            select(PurchaseItem.sku).where(PurchaseItem.purchase_id == made["id"]).order_by(PurchaseItem.position)
        ).all()
    assert skus == ["7890-ijkl", "mnop-1234"]


# -- bad input never 500s ----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
product_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values,
        "sku": json_values | st.sampled_from(["LAMP-1", "GIFT"]),
        "unit_price": json_values,
        "quantity": json_values | st.integers(min_value=-2, max_value=3),
    },
)
purchase_fields = st.fixed_dictionaries(
    {},
    optional={
        "transaction_id": json_values | st.sampled_from(["t-1", "t-2"]),
        "email_address": json_values | st.just("a@b.co"),
        "currency": json_values | st.just("eur"),
        "transaction_time": json_values | st.just("2018-03-20 14:31:10"),
        "subtotal": json_values,
        "total": json_values,
        "status": json_values,
        "products": st.lists(product_fields | json_values, max_size=3) | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({}, optional={"purchase": purchase_fields | json_values, "page": json_values}))
def test_any_json_body_gets_an_answer_in_the_v3_shape(api, body):
    if not getattr(api, "_deal_made", False):
        api.create_deal(sku="LAMP-1", quantity=1000)
        api._deal_made = True
    response = post(api, body)
    assert response.status_code in (201, 400, 409), response.get_json()
    answer = response.get_json()
    if response.status_code != 201:
        assert set(answer) == {"error", "message"} and answer["message"]
    for method, path in (("GET", "/v3/purchases/1"), ("PUT", "/v3/purchases/1"), ("GET", "/v3/purchases")):
        other = api.request(method, path, json=body)
        assert other.status_code in (200, 400, 404), (method, path, other.get_json())
