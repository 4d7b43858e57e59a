"""v1 deals: create, get, list, patch, each with live numbers."""

from __future__ import annotations

import pytest

from app.store.models import Deal


def test_create_deal_returns_201_with_live_numbers(api, services):
    response = api.post(
        "/v1/deals",
        {
            "title": "Tickets",
            "price_per_unit": 4500,
            "quantity": 100,
            "currency": "eur",
            "sku": "T-1",
            "max_per_purchase": 4,
            "max_per_user": 8,
        },
    )
    assert response.status_code == 201
    deal = response.get_json()["deal"]
    assert deal["currency"] == "EUR" and deal["sku"] == "T-1"
    assert (deal["quantity"], deal["available"], deal["reserved"], deal["sold"]) == (100, 100, 0, 0)
    assert deal["max_per_purchase"] == 4 and deal["max_per_user"] == 8
    with services.db.read() as session:
        stored = session.get(Deal, deal["id"])
        assert (stored.title, stored.quantity, stored.price_per_unit) == ("Tickets", 100, 4500)


def test_numbers_always_add_up(api):
    deal = api.create_deal(quantity=10)
    a = api.reserved(deal["id"], 3)
    api.reserved(deal["id"], 2)
    api.claim(a["id"])
    api.buy(deal["id"], 1)
    shown = api.deal(deal["id"])
    assert (shown["available"], shown["reserved"], shown["sold"]) == (4, 2, 4)
    assert shown["available"] + shown["reserved"] + shown["sold"] == shown["quantity"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"price_per_unit": 1, "quantity": 1}, "title"),
        ({"title": "x", "quantity": 1}, "price_per_unit"),
        ({"title": "x", "price_per_unit": 1}, "quantity"),
        ({"title": "x", "price_per_unit": 1, "quantity": -1}, "quantity"),
        ({"title": "x", "price_per_unit": 1, "quantity": "5"}, "quantity"),
        ({"title": "x", "price_per_unit": 1.5, "quantity": 1}, "price_per_unit"),
        ({"title": "x", "price_per_unit": 1, "quantity": 1, "currency": "dollars"}, "currency"),
        ({"title": "", "price_per_unit": 1, "quantity": 1}, "title"),
        ({"title": "a\x00b", "price_per_unit": 1, "quantity": 1}, "title"),
        ({"title": "x", "price_per_unit": 1, "quantity": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_deal_is_422_naming_the_field(api, body, field):
    response = api.post("/v1/deals", body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_sku_is_unique_per_account(api, other_api):
    api.create_deal(sku="S-1")
    response = api.post("/v1/deals", {"title": "x", "price_per_unit": 1, "quantity": 1, "sku": "S-1"})
    assert response.status_code == 409 and response.get_json()["error"] == "sku_taken"
    assert (
        other_api.post("/v1/deals", {"title": "x", "price_per_unit": 1, "quantity": 1, "sku": "S-1"}).status_code == 201
    )


def test_list_deals_is_paginated(api):
    ids = [api.create_deal(title=f"d{i}")["id"] for i in range(5)]
    first = api.get("/v1/deals?per_page=2").get_json()
    assert [d["id"] for d in first["deals"]] == ids[:2]
    assert first["pagination"] == {"page": 1, "per_page": 2, "total": 5, "total_pages": 3}
    last = api.get("/v1/deals?per_page=2&page=3").get_json()
    assert [d["id"] for d in last["deals"]] == ids[4:]


def test_patch_quantity_up_and_down(api):
    deal = api.create_deal(quantity=5)
    api.reserved(deal["id"], 2)
    grown = api.patch(f"/v1/deals/{deal['id']}", {"quantity": 8}).get_json()["deal"]
    assert (grown["quantity"], grown["available"], grown["reserved"]) == (8, 6, 2)
    shrunk = api.patch(f"/v1/deals/{deal['id']}", {"quantity": 2})
    assert shrunk.status_code == 200
    assert (shrunk.get_json()["deal"]["available"]) == 0
    assert api.reserve(deal["id"], 1).status_code == 409


def test_patch_quantity_below_reserved_plus_sold_is_409(api):
    deal = api.create_deal(quantity=5)
    api.reserved(deal["id"], 2)
    api.buy(deal["id"], 2)
    response = api.patch(f"/v1/deals/{deal['id']}", {"quantity": 3})
    assert response.status_code == 409
    body = response.get_json()
    assert body["error"] == "quantity_below_committed"
    assert "2 reserved, 2 sold" in body["message"]
    assert api.deal(deal["id"])["quantity"] == 5


def test_patch_price_applies_to_the_next_purchase(api):
    deal = api.create_deal(price_per_unit=1000)
    api.patch(f"/v1/deals/{deal['id']}", {"price_per_unit": 1200, "title": "New"})
    assert api.deal(deal["id"])["title"] == "New"
    assert api.buy(deal["id"], 1, price=1000).get_json()["error"] == "price_changed"
    assert api.buy(deal["id"], 1, price=1200).status_code == 200


def test_patch_needs_a_field(api):
    deal = api.create_deal()
    assert api.patch(f"/v1/deals/{deal['id']}", {}).status_code == 422


def test_unknown_or_huge_deal_id_is_404(api):
    assert api.get("/v1/deals/424242").status_code == 404
    assert api.get("/v1/deals/99999999999999999999999").status_code == 404
    assert api.patch("/v1/deals/424242", {"title": "x"}).status_code == 404
