"""POST /v1/public/deals/:id/waitlist: a storefront's customer joins a public deal's waitlist
without the account's secret (the example storefront's form), through WaitlistService: the same
queue as POST /v1/deals/:id/waitlist, CORS for any origin, 404 for a deal that is not public,
and a write budget per account of its own."""

from __future__ import annotations

import pytest

from tests.api.test_waitlist import sold_out_deal

#: What the public answer shows of an entry: no purchase id, no customer id.
ENTRY_FIELDS = {"id", "deal_id", "state", "position", "offered_until", "created_at"}
ORIGIN = {"Origin": "https://shop.example"}


def path(deal_id) -> str:
    return f"/v1/public/deals/{deal_id}/waitlist"


def public_join(client, deal_id, user_id, **kwargs):
    """A shopper's browser: no secret."""
    return client.post(path(deal_id), json={"user_id": user_id}, headers=ORIGIN, **kwargs)


def public_sold_out_deal(api, services, account) -> int:
    deal, _ = sold_out_deal(api, services, account)
    assert api.patch(f"/v1/deals/{deal}", {"public": True}).status_code == 200
    return deal


def test_a_shopper_joins_without_a_secret_and_waits_in_the_same_queue(client, api, services, account):
    deal = public_sold_out_deal(api, services, account)
    response = public_join(client, deal, "ann@example.com")
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = response.get_json()
    assert body["status"] == "success" and set(body["entry"]) == ENTRY_FIELDS
    ann = body["entry"]
    assert (ann["deal_id"], ann["state"], ann["position"], ann["offered_until"]) == (deal, "waiting", 1, None)
    # The account sees the same entry through its own API.
    listed = api.get(f"/v1/deals/{deal}/waitlist").get_json()["entries"]
    assert [(e["id"], e["user_id"], e["position"]) for e in listed] == [(ann["id"], "ann@example.com", 1)]
    assert services.stock.waiting(deal) == [(ann["id"], "ann@example.com")]
    bob = public_join(client, deal, "bob").get_json()["entry"]
    assert (bob["state"], bob["position"]) == ("waiting", 2)


def test_joining_again_answers_the_same_entry_with_200(client, api, services, account):
    deal = public_sold_out_deal(api, services, account)
    first = public_join(client, deal, "ann")
    api.post(f"/v1/deals/{deal}/waitlist", {"user_id": "bob"})
    again = public_join(client, deal, "ann")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["entry"] == first.get_json()["entry"]
    # The v1 route agrees: one waiting entry per customer and deal.
    v1 = api.post(f"/v1/deals/{deal}/waitlist", {"user_id": "ann"})
    assert v1.status_code == 200 and v1.get_json()["entry"]["id"] == first.get_json()["entry"]["id"]
    assert [user for _, user in services.stock.waiting(deal)] == ["ann", "bob"]


def test_a_form_body_joins_too(client, api, services, account):
    deal = public_sold_out_deal(api, services, account)
    response = client.post(
        path(deal), data="user_id=ann%40example.com", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["entry"]["position"] == 1
    assert [user for _, user in services.stock.waiting(deal)] == ["ann@example.com"]


def test_units_there_are_offered_at_once_and_the_offer_holds_until(client, api, services, account):
    deal = api.create_deal(quantity=2, public=True)["id"]
    ann = public_join(client, deal, "ann").get_json()["entry"]
    assert (ann["state"], ann["position"]) == ("offered", None) and ann["offered_until"]
    held = api.get(f"/v1/waitlist/{ann['id']}").get_json()["entry"]
    assert api.purchase(held["purchase_id"])["user_id"] == "ann"
    assert client.get(f"/v1/public/deals/{deal}").get_json()["deal"]["available"] == 1


@pytest.mark.parametrize("which", ["private", "unknown"])
def test_a_deal_that_is_not_public_is_404_in_v1s_shape(client, api, services, account, which):
    deal, _ = sold_out_deal(api, services, account)  # public defaults to false
    deal_id = deal if which == "private" else deal + 1000
    response = public_join(client, deal_id, "ann")
    assert response.status_code == 404
    body = response.get_json()
    assert body["status"] == "error" and body["error"] == "not_found" and body["message"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert api.get(f"/v1/deals/{deal}/waitlist").get_json()["entries"] == []
    assert services.stock.waiting(deal) == []


def test_a_deal_made_private_takes_no_more_joins(client, api, services, account):
    deal = public_sold_out_deal(api, services, account)
    assert public_join(client, deal, "ann").status_code == 201
    assert api.patch(f"/v1/deals/{deal}", {"public": False}).status_code == 200
    assert public_join(client, deal, "bob").status_code == 404
    assert [user for _, user in services.stock.waiting(deal)] == ["ann"]


@pytest.mark.parametrize(
    "body",
    [{}, {"user_id": ""}, {"user_id": 3}, {"user_id": None}, {"user_id": "a" * 201}, {"user_id": "a", "x": 1}],
)
def test_a_bad_user_id_is_422(client, api, services, account, body):
    deal = public_sold_out_deal(api, services, account)
    response = client.post(path(deal), json=body, headers=ORIGIN)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_failed"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert services.stock.waiting(deal) == []


def test_the_preflight_allows_a_json_post_from_any_origin(client, api, services, account):
    deal = public_sold_out_deal(api, services, account)
    preflight = client.options(
        path(deal),
        headers={**ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in {m.strip() for m in preflight.headers["Access-Control-Allow-Methods"].split(",")}
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in {m.strip() for m in preflight.headers["Allow"].split(",")}
    assert services.stock.waiting(deal) == []  # a preflight joins nobody


def test_storefront_joins_have_their_own_budget_per_account(app_config):
    """RATE_LIMIT_WRITES 3/minute: the storefronts of an account join at most 3 times a minute
    (then 429 with Retry-After, readable cross-origin), and that spends none of the account's
    own writes."""
    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    app = create_app({**app_config, "RATE_LIMIT_WRITES": "3/minute"})
    try:
        services = app.extensions["offer_engine"]
        empty_stores(services)
        client = app.test_client()
        _, secret = services.accounts.create("limited")
        api = ApiClient(client, secret)
        deal = api.create_deal(public=True, quantity=1)["id"]  # 1 write of the account's 3
        answers = [public_join(client, deal, f"shopper-{n}") for n in range(5)]
        assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]
        refused = answers[-1]
        assert refused.get_json()["error"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["Access-Control-Allow-Origin"] == "*"
        assert "Retry-After" in refused.headers["Access-Control-Expose-Headers"]
        # The account's own writes are untouched: 2 left.
        assert [api.reserve(deal).status_code for _ in range(3)] == [409, 409, 429]
        # Another account's storefronts have their own budget.
        _, other_secret = services.accounts.create("other")
        other = ApiClient(client, other_secret).create_deal(public=True)["id"]
        assert public_join(client, other, "shopper").status_code == 201
    finally:
        app.extensions["offer_engine"].close()


def test_the_public_join_is_documented_without_security(client):
    doc = client.get("/openapi.json").get_json()
    item = doc["paths"]["/v1/public/deals/{deal_id}/waitlist"]["post"]
    assert item["security"] == [] and "401" not in item["responses"]
    assert {"200", "201", "404", "422", "429"} <= set(item["responses"])
    schema = item["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    envelope = doc["components"]["schemas"][schema]
    entry = doc["components"]["schemas"][envelope["properties"]["entry"]["$ref"].rsplit("/", 1)[-1]]
    assert set(entry["properties"]) == ENTRY_FIELDS
    assert "application/json" in item["requestBody"]["content"]
