"""Carts: several deals held, claimed, released and extended together, all or nothing
(SPEC, "Carts: several deals, all or nothing"). Each test reads SQL and Redis back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.core.timeutil import iso, to_ms
from app.store.models import Cart, Coupon, Purchase, utcnow


def live(services, deal_id: int):
    snap = services.stock.snapshot(deal_id, to_ms(utcnow()))
    return snap.available, snap.reserved, snap.sold


def rows(services, **where) -> list[Purchase]:
    with services.db.read() as session:
        query = select(Purchase)
        for name, value in where.items():
            query = query.where(getattr(Purchase, name) == value)
        return list(session.scalars(query))


def reserve_cart(api, items, headers=None, **fields):
    body = {"items": [{"deal_id": d, "num_bought": n} for d, n in items], **fields}
    return api.post("/v1/carts/reserve", body, headers=headers)


@pytest.fixture
def deals(api):
    return [api.create_deal(title=f"D{i}", quantity=5, price_per_unit=100 * (i + 1))["id"] for i in range(3)]


def test_a_cart_holds_every_item_as_a_purchase_of_its_own(api, services, deals):
    response = reserve_cart(api, [(deals[2], 1), (deals[0], 2), (deals[1], 3)], user_id="ann")
    assert response.status_code == 200, response.get_json()
    cart = response.get_json()["cart"]
    assert cart["state"] == "reserved" and cart["user_id"] == "ann"
    assert [p["deal_id"] for p in cart["purchases"]] == sorted(deals)
    assert {p["cart_id"] for p in cart["purchases"]} == {cart["id"]}
    assert all(p["fulfillment_state"] == "reserved" and p["user_id"] == "ann" for p in cart["purchases"])
    assert {p["reserved_until"] for p in cart["purchases"]} == {cart["reserved_until"]}
    assert [live(services, d) for d in deals] == [(3, 2, 0), (2, 3, 0), (4, 1, 0)]
    assert len(rows(services, cart_id=cart["id"])) == 3
    # Each item is a normal purchase, and the cart reads back.
    item = cart["purchases"][0]
    assert api.purchase(item["id"])["cart_id"] == cart["id"]
    assert api.get(f"/v1/carts/{cart['id']}").get_json()["cart"] == cart


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("sold_out", "sold_out"),
        ("not_started", "not_started"),
        ("sale_ended", "sale_ended"),
        ("limit", "limit_exceeded"),
    ],
)
def test_one_item_refused_holds_nothing_and_names_its_deal(api, services, deals, setup, code):
    soon = utcnow() + timedelta(hours=1)
    refusing = {
        "sold_out": {"quantity": 1},
        "not_started": {"starts_at": iso(soon)},
        "sale_ended": {
            "ends_at": iso(utcnow() - timedelta(seconds=1)),
            "starts_at": iso(utcnow() - timedelta(hours=1)),
        },
        "limit": {"max_per_user": 1},
    }[setup]
    assert api.patch(f"/v1/deals/{deals[1]}", refusing).status_code == 200
    response = reserve_cart(api, [(d, 2) for d in deals], user_id="ann")
    assert response.status_code == 409, response.get_json()
    body = response.get_json()
    assert body["error"] == code
    assert f"deal {deals[1]}" in body["message"].lower()
    assert [live(services, d)[1] for d in deals] == [0, 0, 0]
    assert rows(services) == []
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Cart)) == 0  # nothing left pending


def test_a_cart_over_deals_not_in_redis_loads_them_and_holds_each_item_once(api, services, deals):
    """Its scripts go together; the deals found not loaded are loaded from SQL and theirs run
    again, the others' holds are kept, not taken twice."""
    for deal_id in deals[1:]:
        services.stock.invalidate(deal_id)
    response = reserve_cart(api, [(d, 2) for d in deals])
    assert response.status_code == 200, response.get_json()
    assert [live(services, d) for d in deals] == [(3, 2, 0)] * 3
    assert all(services.rebuilder.check(d) == [] for d in deals)
    for deal_id in (deals[0], deals[2]):  # the claim finds them gone too
        services.stock.invalidate(deal_id)
    claimed = api.put(f"/v1/carts/{response.get_json()['cart']['id']}/claim", {"user_id": "ann"})
    assert claimed.status_code == 200, claimed.get_json()
    assert [live(services, d) for d in deals] == [(3, 0, 2)] * 3


def test_claim_fulfils_every_item_with_its_coupons(api, services, deals):
    cart = reserve_cart(api, [(d, 2) for d in deals], user_id="ann").get_json()["cart"]
    response = api.put(f"/v1/carts/{cart['id']}/claim", {"credit_card_id": "card"})
    assert response.status_code == 200, response.get_json()
    claimed = response.get_json()["cart"]
    assert claimed["state"] == "fulfilled"
    assert all(p["fulfillment_state"] == "fulfilled" and len(p["coupons"]) == 2 for p in claimed["purchases"])
    assert [live(services, d) for d in deals] == [(3, 0, 2)] * 3
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Coupon)) == 6
    # Claimed twice: the same cart, nothing more.
    again = api.put(f"/v1/carts/{cart['id']}/claim", {})
    assert again.status_code == 200 and again.get_json()["cart"]["purchases"] == claimed["purchases"]
    assert [live(services, d) for d in deals] == [(3, 0, 2)] * 3


def test_a_cart_reserved_for_a_customer_is_theirs_to_claim(api, deals):
    cart = reserve_cart(api, [(deals[0], 1)], user_id="ann").get_json()["cart"]
    response = api.put(f"/v1/carts/{cart['id']}/claim", {"user_id": "bob"})
    assert response.status_code == 409 and response.get_json()["error"] == "user_mismatch"
    anonymous = reserve_cart(api, [(deals[0], 1)]).get_json()["cart"]
    response = api.put(f"/v1/carts/{anonymous['id']}/claim", {})
    assert response.status_code == 422 and "user_id" in response.get_json()["errors"]


def test_claim_of_an_item_whose_units_are_gone_claims_nothing_and_keeps_the_other_holds(api, services, deals):
    cart = reserve_cart(api, [(deals[0], 1), (deals[1], 5)], user_id="ann").get_json()["cart"]
    gone = next(p for p in cart["purchases"] if p["deal_id"] == deals[1])
    assert api.release(gone["id"]).status_code == 200  # its hold ends...
    assert api.buy(deals[1], 5, user_id="zed", price=200).status_code == 200  # ...and its units are sold
    response = api.put(f"/v1/carts/{cart['id']}/claim", {})
    assert response.status_code == 409
    assert response.get_json()["error"] == "sold_out" and f"deal {deals[1]}" in response.get_json()["message"].lower()
    assert live(services, deals[0]) == (4, 1, 0)  # the other hold is still held
    held = next(p for p in cart["purchases"] if p["deal_id"] == deals[0])
    assert api.purchase(held["id"])["fulfillment_state"] == "reserved"
    assert services.rebuilder.check(deals[0]) == []


def test_release_returns_every_item_once(api, services, deals):
    cart = reserve_cart(api, [(d, 2) for d in deals]).get_json()["cart"]
    for _ in range(2):
        response = api.put(f"/v1/carts/{cart['id']}/release")
        assert response.status_code == 200
        assert response.get_json()["cart"]["state"] == "released"
        assert [live(services, d) for d in deals] == [(5, 0, 0)] * 3
    claimed = reserve_cart(api, [(deals[0], 1)], user_id="ann").get_json()["cart"]
    api.put(f"/v1/carts/{claimed['id']}/claim", {})
    response = api.put(f"/v1/carts/{claimed['id']}/release")
    assert response.status_code == 409 and response.get_json()["error"] == "already_claimed"


def test_extend_moves_every_item(api, services, deals):
    cart = reserve_cart(api, [(d, 1) for d in deals]).get_json()["cart"]
    response = api.put(f"/v1/carts/{cart['id']}/extend", {"seconds": 60})
    assert response.status_code == 200
    extended = response.get_json()["cart"]
    assert extended["reserved_until"] > cart["reserved_until"]
    assert {p["reserved_until"] for p in extended["purchases"]} == {extended["reserved_until"]}
    for purchase in extended["purchases"]:
        assert services.stock.holds(purchase["deal_id"])[purchase["id"]][1] == to_ms(
            services.purchases.get(services.accounts.authenticate(api.secret).id, purchase["id"]).reserved_until
        )


def test_a_keyed_cart_retried_holds_once_and_answers_the_same(api, services, deals):
    headers = {"Idempotency-Key": "cart-1"}
    first = reserve_cart(api, [(d, 1) for d in deals], headers=headers)
    second = reserve_cart(api, [(d, 1) for d in deals], headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.get_data() == first.get_data() and second.headers["Idempotent-Replayed"] == "true"
    assert [live(services, d)[1] for d in deals] == [1, 1, 1]
    other = reserve_cart(api, [(deals[0], 2)], headers=headers)
    assert other.status_code == 422 and other.get_json()["error"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"deal_id": 1, "num_bought": 1}] * 2}, "items"),
        ({}, "items"),
        ({"items": "lamp"}, "items"),
        ({"items": [{"deal_id": 1, "num_bought": 0}]}, "items"),
        ({"items": [{"deal_id": 1, "num_bought": True}]}, "items"),
        ({"items": [{"deal_id": "x", "num_bought": 1}]}, "items"),
        ({"items": [{"deal_id": 1}]}, "items"),
        ({"items": [{"deal_id": 1, "num_bought": 1, "gift": True}]}, "items"),
        ({"items": [{"deal_id": i, "num_bought": 1} for i in range(1, 52)]}, "items"),
        ({"items": [{"deal_id": 1, "num_bought": 1}], "user_id": ""}, "user_id"),
        ({"items": [{"deal_id": 1, "num_bought": 1}], "coupon": "x"}, "coupon"),
    ],
)
def test_bad_carts_are_422_naming_the_field_and_take_nothing(api, services, deals, body, field):
    response = api.post("/v1/carts/reserve", body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]
    assert rows(services) == []


def test_another_accounts_deal_or_cart_is_not_found(api, other_api, deals):
    theirs = other_api.create_deal(quantity=5)["id"]
    response = reserve_cart(api, [(deals[0], 1), (theirs, 1)])
    assert response.status_code == 404
    cart = reserve_cart(api, [(deals[0], 1)]).get_json()["cart"]
    for method, path in (("GET", ""), ("PUT", "/claim"), ("PUT", "/release"), ("PUT", "/extend")):
        assert (
            other_api.request(method, f"/v1/carts/{cart['id']}{path}", json={} if method == "PUT" else None).status_code
            == 404
        )


def test_carts_racing_single_reserves_for_the_last_units_are_never_half_held(api, services, account):
    """8 carts of 2 deals and 16 single reserves of the scarcer deal race for its 6 units: every
    cart holds both its items or neither, and exactly the scarce quantity is held."""
    plenty = api.create_deal(quantity=100)["id"]
    scarce = api.create_deal(quantity=6)["id"]
    barrier = threading.Barrier(24)

    def attempt(i):
        barrier.wait()
        try:
            if i < 8:
                return ("cart", services.carts.reserve(account[0], [(plenty, 1), (scarce, 1)]).token)
            services.purchases.reserve(account[0], scarce, 1)
            return ("single", None)
        except Exception as error:
            return ("refused", type(error).__name__)

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(attempt, range(24)))
    assert {name for kind, name in outcomes if kind == "refused"} <= {"CartItemRefused", "SoldOut"}
    carts = [token for kind, token in outcomes if kind == "cart"]
    singles = sum(1 for kind, _ in outcomes if kind == "single")
    for token in carts:
        assert sorted(p.deal_id for p in rows(services, cart_id=token)) == [plenty, scarce]
    assert len(carts) + singles == 6
    assert live(services, scarce) == (0, 6, 0)
    assert live(services, plenty) == (100 - len(carts), len(carts), 0)
    assert services.rebuilder.check(scarce) == [] and services.rebuilder.check(plenty) == []
