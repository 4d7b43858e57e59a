"""v1 purchases: every endpoint, state transition and error code in SPEC's v1 section.

Each test reads SQL and Redis back after the requests instead of trusting the responses."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.core.timeutil import now_ms, to_ms
from app.inventory.stock import Order
from app.store.models import Coupon, Purchase, utcnow


def row(services, token: str) -> Purchase:
    with services.db.read() as session:
        return session.scalar(select(Purchase).where(Purchase.token == token))


def live(services, deal_id: int):
    snap = services.stock.snapshot(deal_id, to_ms(utcnow()))
    return snap.available, snap.reserved, snap.sold


# -- reserve ---------------------------------------------------------------------------------


def test_reserve_holds_units_and_records_the_reservation(api, services):
    deal = api.create_deal(quantity=5)
    response = api.reserve(deal["id"], 2)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success"
    purchase = body["purchase"]
    assert purchase["fulfillment_state"] == "reserved"
    assert purchase["payment_state"] == "pending"
    assert purchase["coupons"] == []
    assert purchase["user_id"] is None and purchase["credit_card_id"] is None
    assert purchase["reserved_until"].endswith("Z")
    stored = row(services, purchase["id"])
    assert stored.fulfillment_state == "reserved" and stored.units == 2
    assert stored.reserved_until - stored.reserved_at == timedelta(seconds=300)
    assert live(services, deal["id"]) == (3, 2, 0)
    assert api.deal(deal["id"])["reserved"] == 2


def test_reserve_accepts_deal_id_as_a_string(api):
    deal = api.create_deal()
    assert api.reserve(str(deal["id"]), 1).status_code == 200


def test_reserve_more_than_available_is_sold_out_and_takes_nothing(api, services):
    deal = api.create_deal(quantity=3)
    api.reserved(deal["id"], 2)
    response = api.reserve(deal["id"], 2)
    assert response.status_code == 409
    assert response.get_json() == {
        "status": "error",
        "error": "sold_out",
        "message": "Only 1 left, 2 requested.",
    }
    assert live(services, deal["id"]) == (1, 2, 0)
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Purchase)) == 1


def test_reserve_unknown_deal_is_404(api):
    response = api.reserve(999_999, 1)
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize(
    "num_bought, problem",
    [
        (None, "required"),
        ("2", "integer"),
        (2.5, "integer"),
        (True, "integer"),
        (0, "greater"),
        (-1, "greater"),
        (10**30, "less"),
    ],
)
def test_reserve_bad_quantity_is_422_naming_the_field(api, services, num_bought, problem):
    deal = api.create_deal()
    body = {"deal_id": deal["id"]}
    if num_bought is not None:
        body["num_bought"] = num_bought
    response = api.post("/v1/purchases/reserve", body)
    assert response.status_code == 422
    error = response.get_json()
    assert error["error"] == "validation_failed"
    assert "num_bought" in error["message"] and "num_bought" in error["errors"]
    assert problem in error["message"].lower()
    assert live(services, deal["id"]) == (10, 0, 0)


def test_reserve_above_max_per_purchase_is_422_naming_the_field(api, services):
    deal = api.create_deal(max_per_purchase=2)
    response = api.reserve(deal["id"], 3)
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"num_bought": ["Must be at most 2 (the deal's max_per_purchase)."]}
    assert live(services, deal["id"]) == (10, 0, 0)


# -- claim -----------------------------------------------------------------------------------


def test_claim_fulfils_with_one_coupon_per_unit(api, services):
    deal = api.create_deal(quantity=5)
    reserved = api.reserved(deal["id"], 3)
    response = api.claim(reserved["id"], "alice", credit_card_id="card-9")
    assert response.status_code == 200
    purchase = response.get_json()["purchase"]
    assert purchase["id"] == reserved["id"]
    assert purchase["fulfillment_state"] == "fulfilled"
    assert purchase["payment_state"] == "paid"
    assert purchase["user_id"] == "alice" and purchase["credit_card_id"] == "card-9"
    assert len(purchase["coupons"]) == 3 == len(set(purchase["coupons"]))
    stored = row(services, reserved["id"])
    assert stored.fulfillment_state == "fulfilled"
    assert sorted(c.code for c in stored.coupons) == sorted(purchase["coupons"])
    assert live(services, deal["id"]) == (2, 0, 3)


def test_claiming_twice_with_the_same_user_returns_the_same_purchase(api, services):
    deal = api.create_deal(quantity=5)
    reserved = api.reserved(deal["id"], 2)
    first = api.claim(reserved["id"], "alice").get_json()["purchase"]
    second = api.claim(reserved["id"], "alice")
    assert second.status_code == 200
    assert second.get_json()["purchase"]["coupons"] == first["coupons"]
    assert live(services, deal["id"]) == (3, 0, 2)
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Coupon)) == 2


def test_claim_by_another_user_after_fulfilment_is_409(api):
    deal = api.create_deal()
    reserved = api.reserved(deal["id"])
    api.claim(reserved["id"], "alice")
    response = api.claim(reserved["id"], "mallory")
    assert response.status_code == 409
    assert response.get_json()["error"] == "already_claimed"


def test_claim_after_release_takes_the_units_again(api, services):
    deal = api.create_deal(quantity=2)
    reserved = api.reserved(deal["id"], 2)
    api.release(reserved["id"])
    assert live(services, deal["id"]) == (2, 0, 0)
    response = api.claim(reserved["id"], "alice")
    assert response.status_code == 200
    assert live(services, deal["id"]) == (0, 0, 2)


def test_claim_after_release_when_the_units_are_gone_is_sold_out(api, services):
    deal = api.create_deal(quantity=2)
    reserved = api.reserved(deal["id"], 2)
    api.release(reserved["id"])
    api.reserved(deal["id"], 1)
    response = api.claim(reserved["id"], "alice")
    assert response.status_code == 409
    assert response.get_json()["error"] == "sold_out"
    assert row(services, reserved["id"]).fulfillment_state == "released"
    assert live(services, deal["id"]) == (1, 1, 0)


def test_claim_after_expiry_and_sweep_takes_the_units_again(api, services):
    deal = api.create_deal(quantity=2)
    old = services.purchases.reserve(api_account(services, api), deal["id"], 2, now=utcnow() - timedelta(seconds=301))
    assert api.purchase(old.token)["fulfillment_state"] == "expired"
    report = services.sweeper.sweep()
    assert report.holds == 1 and report.units == 2
    assert row(services, old.token).fulfillment_state == "expired"
    assert live(services, deal["id"]) == (2, 0, 0)
    response = api.claim(old.token, "alice")
    assert response.status_code == 200
    assert live(services, deal["id"]) == (0, 0, 2)


def test_claim_requires_user_id(api):
    deal = api.create_deal()
    reserved = api.reserved(deal["id"])
    response = api.put(f"/v1/purchases/{reserved['id']}/claim", {})
    assert response.status_code == 422
    assert "user_id" in response.get_json()["errors"]


def test_claim_beyond_max_per_user_is_limit_exceeded(api, services):
    deal = api.create_deal(quantity=10, max_per_user=3)
    first = api.reserved(deal["id"], 2)
    second = api.reserved(deal["id"], 2)
    assert api.claim(first["id"], "alice").status_code == 200
    response = api.claim(second["id"], "alice")
    assert response.status_code == 409
    assert response.get_json()["error"] == "limit_exceeded"
    assert live(services, deal["id"]) == (6, 2, 2)
    assert api.claim(second["id"], "bob").status_code == 200


# -- release ---------------------------------------------------------------------------------


def test_release_returns_the_units_once(api, services):
    deal = api.create_deal(quantity=4)
    reserved = api.reserved(deal["id"], 3)
    first = api.release(reserved["id"])
    assert first.status_code == 200
    purchase = first.get_json()["purchase"]
    assert purchase["fulfillment_state"] == "released"
    assert purchase["payment_state"] == "pending" and purchase["coupons"] == []
    assert live(services, deal["id"]) == (4, 0, 0)
    assert api.release(reserved["id"]).status_code == 200
    assert live(services, deal["id"]) == (4, 0, 0)
    assert row(services, reserved["id"]).fulfillment_state == "released"


def test_release_after_expiry_returns_nothing_more(api, services):
    deal = api.create_deal(quantity=4)
    old = services.purchases.reserve(api_account(services, api), deal["id"], 3, now=utcnow() - timedelta(seconds=301))
    services.sweeper.sweep()
    response = api.release(old.token)
    assert response.status_code == 200
    assert response.get_json()["purchase"]["fulfillment_state"] == "expired"
    assert live(services, deal["id"]) == (4, 0, 0)


def test_release_of_a_fulfilled_purchase_is_409(api, services):
    deal = api.create_deal()
    reserved = api.reserved(deal["id"])
    api.claim(reserved["id"])
    response = api.release(reserved["id"])
    assert response.status_code == 409
    assert response.get_json()["error"] == "already_claimed"
    assert live(services, deal["id"]) == (9, 0, 1)


# -- direct create ---------------------------------------------------------------------------


def test_create_fulfils_at_once(api, services):
    deal = api.create_deal(quantity=3, price_per_unit=1999)
    response = api.buy(deal["id"], 2, "alice", 1999, session_id="s-1")
    assert response.status_code == 200
    purchase = response.get_json()["purchase"]
    assert purchase["fulfillment_state"] == "fulfilled" and purchase["payment_state"] == "paid"
    assert len(purchase["coupons"]) == 2
    assert purchase["session_id"] == "s-1"
    assert row(services, purchase["id"]).fulfillment_state == "fulfilled"
    assert live(services, deal["id"]) == (1, 0, 2)


def test_create_accepts_the_seed_spelling_of_session_id(api, services):
    deal = api.create_deal()
    response = api.buy(deal["id"], 1, sesison_id="affiliate-7")
    assert response.status_code == 200
    assert response.get_json()["purchase"]["session_id"] == "affiliate-7"
    assert row(services, response.get_json()["purchase"]["id"]).session_id == "affiliate-7"


def test_create_at_a_stale_price_is_price_changed_and_takes_nothing(api, services):
    deal = api.create_deal(price_per_unit=1999)
    response = api.buy(deal["id"], 1, price=1500)
    assert response.status_code == 409
    body = response.get_json()
    assert body["error"] == "price_changed"
    assert "1999" in body["message"]
    assert live(services, deal["id"]) == (10, 0, 0)


def test_create_when_sold_out_is_409(api, services):
    deal = api.create_deal(quantity=1)
    assert api.buy(deal["id"], 1).status_code == 200
    response = api.buy(deal["id"], 1)
    assert response.status_code == 409 and response.get_json()["error"] == "sold_out"
    assert live(services, deal["id"]) == (0, 0, 1)


def test_create_beyond_max_per_user_is_limit_exceeded(api, services):
    deal = api.create_deal(max_per_user=2)
    assert api.buy(deal["id"], 2, "alice").status_code == 200
    response = api.buy(deal["id"], 1, "alice")
    assert response.status_code == 409 and response.get_json()["error"] == "limit_exceeded"
    assert live(services, deal["id"]) == (8, 0, 2)


def test_create_requires_every_field(api):
    deal = api.create_deal()
    response = api.post("/v1/purchases", {"deal_id": deal["id"]})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {
        "quantity",
        "user_id",
        "credit_card_id",
        "expected_price_per_unit",
    }


# -- extend ----------------------------------------------------------------------------------


def test_extend_pushes_the_end_out_by_at_most_the_ttl(api, services):
    deal = api.create_deal()
    reserved = api.reserved(deal["id"])
    before = row(services, reserved["id"]).reserved_until
    response = api.extend(reserved["id"], {"seconds": 100000})
    assert response.status_code == 200
    after = row(services, reserved["id"]).reserved_until
    assert after - before == timedelta(seconds=300)
    assert services.stock.holds(deal["id"])[reserved["id"]][1] == to_ms(after)


def test_extend_never_past_max_hold(api, services):
    deal = api.create_deal()
    reserved = api.reserved(deal["id"])
    assert api.extend(reserved["id"]).status_code == 200  # 600 s
    assert api.extend(reserved["id"]).status_code == 200  # 900 s: the cap
    stored = row(services, reserved["id"])
    assert stored.reserved_until - stored.reserved_at == timedelta(seconds=900)
    response = api.extend(reserved["id"])
    assert response.status_code == 409
    assert response.get_json()["error"] == "max_hold_reached"


@pytest.mark.parametrize("how", ["released", "fulfilled", "expired"])
def test_extend_of_a_purchase_without_a_live_hold_is_409(api, services, how):
    deal = api.create_deal()
    if how == "expired":
        token = services.purchases.reserve(
            api_account(services, api), deal["id"], 1, now=utcnow() - timedelta(seconds=301)
        ).token
    else:
        token = api.reserved(deal["id"])["id"]
        (api.release(token) if how == "released" else api.claim(token))
    response = api.extend(token)
    assert response.status_code == 409
    assert response.get_json()["error"] == "hold_not_active"


# -- reads -----------------------------------------------------------------------------------


def test_get_and_list_purchases(api):
    deal = api.create_deal(quantity=10)
    other = api.create_deal(quantity=10)
    a = api.reserved(deal["id"])
    b = api.reserved(deal["id"])
    api.reserved(other["id"])
    api.claim(b["id"])
    assert api.purchase(a["id"])["fulfillment_state"] == "reserved"
    listed = api.get(f"/v1/purchases?deal_id={deal['id']}").get_json()
    assert [p["id"] for p in listed["purchases"]] == [b["id"], a["id"]]
    assert listed["pagination"]["total"] == 2
    fulfilled = api.get("/v1/purchases?fulfillment_state=fulfilled").get_json()["purchases"]
    assert [p["id"] for p in fulfilled] == [b["id"]]
    page2 = api.get("/v1/purchases?per_page=2&page=2").get_json()
    assert len(page2["purchases"]) == 1 and page2["pagination"]["total_pages"] == 2


def test_list_filters_on_the_effective_state(api, services):
    deal = api.create_deal()
    old = services.purchases.reserve(api_account(services, api), deal["id"], 1, now=utcnow() - timedelta(seconds=301))
    live_one = api.reserved(deal["id"])
    expired = api.get("/v1/purchases?fulfillment_state=expired").get_json()["purchases"]
    reserved = api.get("/v1/purchases?fulfillment_state=reserved").get_json()["purchases"]
    assert [p["id"] for p in expired] == [old.token]
    assert [p["id"] for p in reserved] == [live_one["id"]]


def test_unknown_purchase_is_404(api):
    for response in (
        api.get("/v1/purchases/nope"),
        api.claim("nope"),
        api.release("nope"),
        api.extend("nope"),
    ):
        assert response.status_code == 404
        assert response.get_json()["error"] == "not_found"


def api_account(services, api) -> int:
    return services.accounts.authenticate(api.secret).id


def crashed_claim(services, account, deal, reserved, user, seconds_ago):
    """A claim whose script ran `seconds_ago`, and whose process then died before its commit."""
    started = now_ms() - seconds_ago * 1000
    services.stock.claim(Order(deal["id"], account[0], reserved["id"], "dead-attempt", 2, user), started)


def test_a_claim_retried_while_a_crashed_one_may_still_run_is_told_to_wait(api, services, account):
    deal = api.create_deal(quantity=5)
    reserved = api.reserved(deal["id"], 2)
    crashed_claim(services, account, deal, reserved, "alice", seconds_ago=0)
    response = api.claim(reserved["id"], "alice")
    assert response.status_code == 409
    assert response.get_json()["error"] == "request_in_progress"
    assert response.headers["Retry-After"] == "1"
    assert live(services, deal["id"]) == (3, 0, 2)


def test_claim_retried_after_a_crash_between_redis_and_sql_takes_the_units_once(api, services, account):
    deal = api.create_deal(quantity=5)
    reserved = api.reserved(deal["id"], 2)
    crashed_claim(services, account, deal, reserved, "alice", seconds_ago=3)
    assert row(services, reserved["id"]).fulfillment_state == "reserved"
    response = api.claim(reserved["id"], "alice")
    assert response.status_code == 200
    assert live(services, deal["id"]) == (3, 0, 2)
    assert services.rebuilder.check(deal["id"]) == []
    assert services.rebuilder.forget_committed_marks(deal["id"]) == 1
    assert services.stock.marks(deal["id"]) == {}


def test_a_claim_for_another_user_after_a_crash_waits_for_the_reconciler_then_counts_that_user(api, services, account):
    """Alice's claim died after its script: its mark, and the units counted against alice's
    cap, stay hers (a claim that is only slow may still commit them for her). A claim for
    someone else is told to retry until the reconciler rebuilds the deal from SQL; then it is
    counted for that customer, within the cap."""
    deal = api.create_deal(quantity=10, max_per_user=3)
    alices = api.reserved(deal["id"], 2)
    assert api.buy(deal["id"], 2, user_id="bob").status_code == 200
    crashed_claim(services, account, deal, alices, "alice", seconds_ago=3)  # counted for alice
    response = api.claim(alices["id"], "carol")
    assert response.status_code == 409
    assert response.get_json()["error"] == "request_in_progress"
    assert services.stock.user_units(deal["id"]) == {"bob": 2, "alice": 2}
    services.rebuilder.forget_committed_marks(deal["id"])
    services.rebuilder.repair(deal["id"])  # the mark without its row: rebuilt from SQL
    # bob has 2 already: 2 more would be 4, over the cap of 3.
    response = api.claim(alices["id"], "bob")
    assert response.status_code == 409
    assert response.get_json()["error"] == "limit_exceeded"
    assert api.claim(alices["id"], "carol").status_code == 200
    assert {user: units for user, units in services.stock.user_units(deal["id"]).items() if units} == {
        "bob": 2,
        "carol": 2,
    }
    assert services.rebuilder.check(deal["id"]) == []


def test_an_abandoned_crashed_claim_is_repaired_by_the_reconciler(api, services, account):
    deal = api.create_deal(quantity=5)
    reserved = api.reserved(deal["id"], 2)
    crashed_claim(services, account, deal, reserved, "alice", seconds_ago=0)
    assert services.rebuilder.forget_committed_marks(deal["id"]) == 0
    drift = services.rebuilder.repair(deal["id"])
    assert {d.field for d in drift} >= {"sold", "reserved"}
    assert live(services, deal["id"]) == (3, 2, 0)  # the hold is the buyer's again, as SQL says
    assert services.stock.marks(deal["id"]) == {}
