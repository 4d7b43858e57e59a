"""Customers at reserve time and sale windows (SPEC, "Storefront features"), over HTTP; SQL and
Redis read back after the requests."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.core.timeutil import iso, to_ms
from app.store.models import Purchase, utcnow


def live(services, deal_id: int):
    snap = services.stock.snapshot(deal_id, to_ms(utcnow()))
    return snap.available, snap.reserved, snap.sold


def reserve(api, deal_id, units, user_id=None):
    body = {"deal_id": deal_id, "num_bought": units}
    if user_id is not None:
        body["user_id"] = user_id
    return api.post("/v1/purchases/reserve", body)


# -- customers at reserve time ----------------------------------------------------------------


def test_a_customers_holds_and_purchases_count_against_the_cap(api, services):
    deal = api.create_deal(quantity=20, max_per_user=3)["id"]
    held = reserve(api, deal, 2, "ann")
    assert held.status_code == 200 and held.get_json()["purchase"]["user_id"] == "ann"
    refused = reserve(api, deal, 2, "ann")
    assert refused.status_code == 409
    body = refused.get_json()
    assert body["error"] == "limit_exceeded"
    assert "3" in body["message"] and "2" in body["message"]  # the cap and what ann has
    assert reserve(api, deal, 1, "ann").status_code == 200
    assert api.buy(deal, 1, user_id="ann").get_json()["error"] == "limit_exceeded"  # holds count for a buy too
    assert reserve(api, deal, 3, "bob").status_code == 200
    assert live(services, deal) == (14, 6, 0)


def test_a_released_or_expired_hold_no_longer_counts(api, services):
    deal = api.create_deal(quantity=20, max_per_user=2)["id"]
    first = reserve(api, deal, 2, "ann").get_json()["purchase"]
    assert reserve(api, deal, 1, "ann").status_code == 409
    assert api.release(first["id"]).status_code == 200
    assert reserve(api, deal, 2, "ann").status_code == 200


def test_a_purchase_reserved_for_a_customer_is_theirs_to_claim(api, services):
    deal = api.create_deal(quantity=5, max_per_user=2)["id"]
    held = reserve(api, deal, 2, "ann").get_json()["purchase"]
    mismatch = api.put(f"/v1/purchases/{held['id']}/claim", {"user_id": "bob"})
    assert mismatch.status_code == 409 and mismatch.get_json()["error"] == "user_mismatch"
    claimed = api.put(f"/v1/purchases/{held['id']}/claim", {})
    assert claimed.status_code == 200
    purchase = claimed.get_json()["purchase"]
    assert (purchase["fulfillment_state"], purchase["user_id"], len(purchase["coupons"])) == ("fulfilled", "ann", 2)
    # Held units moved to sold: ann is at her cap either way, and nothing more was taken.
    assert services.stock.user_units(deal) == {"ann": 2}
    assert live(services, deal) == (3, 0, 2)
    assert reserve(api, deal, 1, "ann").get_json()["error"] == "limit_exceeded"


def test_without_a_customer_at_reserve_the_cap_is_checked_at_claim_and_user_id_is_required(api):
    deal = api.create_deal(quantity=5, max_per_user=1)["id"]
    held = api.reserved(deal, 2)
    missing = api.put(f"/v1/purchases/{held['id']}/claim", {})
    assert missing.status_code == 422 and "user_id" in missing.get_json()["errors"]
    assert api.claim(held["id"], "ann").get_json()["error"] == "limit_exceeded"


def test_customers_racing_under_a_cap_never_exceed_it_and_exactly_the_quantity_sells(api, services, account):
    """12 customers, 4 checkouts each (reserve 1 for the customer, then claim), race for 20 units
    capped at 3 per customer: nobody holds or buys more than 3, exactly 20 are sold."""
    deal = api.create_deal(quantity=20, max_per_user=3)["id"]
    customers = [f"c{i}" for i in range(12)]
    barrier = threading.Barrier(48)

    def checkout(i):
        user = customers[i % 12]
        barrier.wait()
        try:
            held = services.purchases.reserve(account[0], deal, 1, user_id=user)
            services.purchases.claim(account[0], held.token)
            return user, "bought"
        except Exception as error:
            return user, type(error).__name__

    with ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(checkout, range(48)))
    assert {outcome for _, outcome in outcomes} <= {"bought", "OverUserLimit", "SoldOut"}
    bought = Counter(user for user, outcome in outcomes if outcome == "bought")
    assert max(bought.values()) <= 3
    assert sum(bought.values()) == 20
    with services.db.read() as session:
        sold: dict[str, int] = defaultdict(int)
        for user, units in session.execute(
            select(Purchase.user_id, Purchase.units).where(Purchase.fulfillment_state == "fulfilled")
        ):
            sold[user] += units
    assert dict(sold) == dict(bought)
    assert live(services, deal) == (0, 0, 20)
    assert services.rebuilder.check(deal) == []


# -- sale windows ---------------------------------------------------------------------------------


def test_reserves_and_purchases_outside_the_window_are_refused_saying_when(api, services):
    starts = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    deal = api.create_deal(quantity=5, starts_at=iso(starts))
    assert (deal["starts_at"], deal["ends_at"], deal["on_sale"]) == (iso(starts), None, False)
    for response in (reserve(api, deal["id"], 1), api.buy(deal["id"], 1)):
        assert response.status_code == 409
        assert response.get_json()["error"] == "not_started"
        assert iso(starts) in response.get_json()["message"]
    ended = api.create_deal(quantity=5, starts_at="2020-01-01T00:00:00", ends_at="2020-01-02T00:00:00Z")
    assert ended["starts_at"] == "2020-01-01T00:00:00.000Z"  # UTC without an offset
    response = reserve(api, ended["id"], 1)
    assert response.status_code == 409 and response.get_json()["error"] == "sale_ended"
    assert "2020-01-02T00:00:00.000Z" in response.get_json()["message"]
    assert live(services, deal["id"]) == live(services, ended["id"]) == (5, 0, 0)


def test_a_hold_taken_in_the_window_can_be_claimed_and_extended_after_it_ends(api, services):
    deal = api.create_deal(quantity=5)["id"]
    held = api.reserved(deal, 1)
    other = api.reserved(deal, 1)
    ends = utcnow() - timedelta(seconds=1)
    assert api.patch(f"/v1/deals/{deal}", {"ends_at": iso(ends)}).get_json()["deal"]["on_sale"] is False
    assert reserve(api, deal, 1).get_json()["error"] == "sale_ended"
    assert api.extend(other["id"], {"seconds": 30}).status_code == 200
    assert api.claim(held["id"], "ann").status_code == 200
    assert live(services, deal) == (3, 1, 1)


def test_patch_opens_and_closes_the_window(api):
    deal = api.create_deal(quantity=5, starts_at=iso(utcnow() + timedelta(days=1)))["id"]
    assert reserve(api, deal, 1).status_code == 409
    opened = api.patch(f"/v1/deals/{deal}", {"starts_at": None}).get_json()["deal"]
    assert opened["starts_at"] is None and opened["on_sale"] is True
    assert reserve(api, deal, 1).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"},
        {"starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"},
        {"starts_at": "tomorrow"},
        {"starts_at": 1767225600},
        {"ends_at": "2030-13-01T00:00:00Z"},
        {"ends_at": "1830-01-01T00:00:00Z"},
        {"public": "yes"},
        {"public": 1},
    ],
)
def test_bad_windows_and_flags_are_422_and_make_nothing(api, services, fields):
    response = api.post("/v1/deals", {"title": "W", "price_per_unit": 1, "quantity": 1, **fields})
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) & {"starts_at", "ends_at", "public"}
    deal = api.create_deal(quantity=1)["id"]
    assert api.patch(f"/v1/deals/{deal}", fields).status_code == 422


@pytest.mark.parametrize("user_id", ["", 7, True, "x" * 201, "a\x00b"])
def test_bad_customers_at_reserve_are_422(api, services, user_id):
    deal = api.create_deal(quantity=5)["id"]
    response = api.post("/v1/purchases/reserve", {"deal_id": deal, "num_bought": 1, "user_id": user_id})
    assert response.status_code == 422 and "user_id" in response.get_json()["errors"]
    assert live(services, deal) == (5, 0, 0)
