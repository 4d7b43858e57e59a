"""One purchase store: v1 purchases in the v3 ledger, v3 products taking deals' stock (all or
nothing), and a transaction_id recorded at most once, also under concurrency.

Stock is read back from Redis (the live state) and from SQL (what a rebuild would load)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from app.core.idempotency import derived_token
from app.core.timeutil import now_ms, to_ms
from app.inventory.errors import SoldOut, TransactionConflict
from app.inventory.ledger import NewPurchase, Product
from app.inventory.rebuild import sql_state
from app.inventory.stock import Order
from app.inventory.writes import LedgerEntry
from app.store.models import Deal, Purchase, PurchaseItem, utcnow


def live(services, deal_id: int) -> tuple[int, int, int]:
    snap = services.stock.snapshot(deal_id, to_ms(utcnow()))
    return snap.available, snap.reserved, snap.sold


def sql_sold(services, deal_id: int) -> int:
    with services.db.read() as session:
        return sql_state(session, session.get(Deal, deal_id), utcnow()).sold


def count(services, model) -> int:
    with services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def order(transaction_id: str = "order-1", *products: dict, **fields) -> dict:
    return {
        "purchase": {
            "transaction_id": transaction_id,
            "email_address": "buyer@example.com",
            "products": list(products),
            **fields,
        }
    }


def post(api, body, **kwargs):
    return api.post("/v3/purchases", body, **kwargs)


# -- v1 purchases in the ledger ------------------------------------------------------------------


def test_fulfilled_v1_purchases_appear_in_the_ledger(api, services):
    lamp = api.create_deal(title="Lamp", sku="LAMP-1", price_per_unit=1999, quantity=10)
    plain = api.create_deal(title="Mug", price_per_unit=500, quantity=10, currency="eur")
    bought = api.buy(lamp["id"], 2).get_json()["purchase"]
    held = api.reserved(plain["id"], 3)
    claimed = api.claim(held["id"], "bob").get_json()["purchase"]
    api.reserved(lamp["id"], 1)  # a live hold: not a purchase yet, not in the ledger
    released = api.reserved(lamp["id"], 1)
    api.release(released["id"])

    listed = api.get("/v3/purchases").get_json()
    assert listed["total_purchases"] == 2 and listed["total_pages"] == 1
    with services.db.read() as session:
        ids = dict(session.execute(select(Purchase.token, Purchase.id)).all())
    first, second = listed["purchases"]
    assert first == {
        "id": ids[bought["id"]],
        "transaction_id": bought["id"],
        "status": "paid",
        "email_address": None,
        "currency": "USD",
        "transaction_time": first["transaction_time"],
        "subtotal": 39.98,
        "shipping": 0.0,
        "discount": 0.0,
        "tax": 0.0,
        "total": 39.98,
        "products": [{"unit_price": 19.99, "quantity": 2, "sku": "LAMP-1", "name": "Lamp"}],
    }
    assert second["id"] == ids[claimed["id"]] and second["transaction_id"] == claimed["id"]
    assert second["currency"] == "EUR" and second["total"] == 15.0
    # A deal without a sku is named by its id.
    assert second["products"] == [{"unit_price": 5.0, "quantity": 3, "sku": str(plain["id"]), "name": "Mug"}]
    assert api.get(f"/v3/purchases/{first['id']}").get_json() == first
    assert len(first["transaction_time"]) == len("2018-03-20 14:31")


def test_a_v1_purchase_can_be_relabelled_but_keeps_its_stock(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=10)
    token = api.buy(lamp["id"], 2).get_json()["purchase"]["id"]
    entry = api.get("/v3/purchases").get_json()["purchases"][0]
    response = api.put(f"/v3/purchases/{entry['id']}", {"purchase": {"status": "refund"}})
    assert response.status_code == 200 and response.get_json()["status"] == "refund"
    assert api.purchase(token)["fulfillment_state"] == "fulfilled"
    assert live(services, lamp["id"]) == (8, 0, 2)


def test_a_transaction_id_equal_to_a_v1_id_is_a_conflict(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=10)
    token = api.buy(lamp["id"], 1).get_json()["purchase"]["id"]
    response = post(api, order(token, {"sku": "LAMP-1"}))
    assert response.status_code == 409
    assert live(services, lamp["id"]) == (9, 0, 1)


# -- v3 products take deals' stock ---------------------------------------------------------------


def test_a_product_naming_a_deal_sku_takes_its_stock(api, services):
    lamp = api.create_deal(title="Lamp", sku="LAMP-1", price_per_unit=1999, quantity=5)
    response = post(
        api,
        order(
            "o-1",
            {"name": "Desk lamp", "sku": "LAMP-1", "unit_price": 18.5, "quantity": 2},
            {"name": "Gift card", "sku": "GIFT", "unit_price": 10, "quantity": 1},
        ),
    )
    assert response.status_code == 201
    assert response.get_json()["products"][0] == {
        "unit_price": 18.5,
        "quantity": 2,
        "sku": "LAMP-1",
        "name": "Desk lamp",
    }
    assert live(services, lamp["id"]) == (3, 0, 2)
    assert sql_sold(services, lamp["id"]) == 2
    shown = api.deal(lamp["id"])
    assert (shown["available"], shown["sold"]) == (3, 2)
    with services.db.read() as session:
        lines = session.execute(select(PurchaseItem.sku, PurchaseItem.deal_id).order_by(PurchaseItem.position)).all()
    assert lines == [("LAMP-1", lamp["id"]), ("GIFT", None)]
    assert services.rebuilder.check(lamp["id"]) == []


def test_a_deal_without_sku_is_named_by_its_id_and_a_deal_with_one_is_not(api, services):
    plain = api.create_deal(quantity=5)
    named = api.create_deal(quantity=5, sku="NAMED")
    response = post(api, order("o-1", {"sku": str(plain["id"]), "quantity": 2}, {"sku": str(named["id"])}))
    assert response.status_code == 201
    assert live(services, plain["id"]) == (3, 0, 2)
    assert live(services, named["id"]) == (5, 0, 0)


def test_missing_quantity_is_one_unit_and_missing_price_is_the_deals(api, services):
    lamp = api.create_deal(sku="LAMP-1", price_per_unit=1999, quantity=5)
    response = post(api, order("o-1", {"sku": "LAMP-1"}))
    assert response.status_code == 201
    assert response.get_json()["products"] == [{"unit_price": 19.99, "quantity": 1, "sku": "LAMP-1", "name": None}]
    assert live(services, lamp["id"]) == (4, 0, 1)


def test_quantity_zero_on_a_deal_line_is_a_400_and_takes_nothing(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=5)
    response = post(api, order("o-1", {"sku": "GIFT", "quantity": 0}, {"name": "Lamp", "sku": "LAMP-1", "quantity": 0}))
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "Your request is missing parameters",
        "message": "Quantity must be at least 1 for product: Lamp (its sku names a deal)",
    }
    assert live(services, lamp["id"]) == (5, 0, 0)
    assert count(services, Purchase) == 0
    # On a line that names no deal, 0 is recorded as given.
    assert post(api, order("o-2", {"sku": "GIFT", "quantity": 0})).status_code == 201


def test_more_than_max_per_purchase_is_a_400(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=50, max_per_purchase=3)
    response = post(api, order("o-1", {"name": "Lamp", "sku": "LAMP-1", "quantity": 4}))
    assert response.status_code == 400
    assert (
        response.get_json()["message"] == "Quantity must be at most 3 for product: Lamp (the deal's max_per_purchase)"
    )
    assert live(services, lamp["id"]) == (50, 0, 0)


def test_another_accounts_deal_sku_is_just_a_ledger_line(api, other_api, services):
    theirs = other_api.create_deal(sku="LAMP-1", quantity=5)
    response = post(api, order("o-1", {"sku": "LAMP-1", "quantity": 2}))
    assert response.status_code == 201
    assert live(services, theirs["id"]) == (5, 0, 0)
    with services.db.read() as session:
        assert session.scalar(select(PurchaseItem.deal_id)) is None


def test_sold_out_is_409_in_the_v3_shape_and_records_nothing(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=1)
    response = post(api, order("o-1", {"name": "Lamp", "sku": "LAMP-1", "quantity": 2}))
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "Conflict",
        "message": "Not enough stock for product: Lamp (only 1 left, 2 requested).",
    }
    assert live(services, lamp["id"]) == (1, 0, 0)
    assert count(services, Purchase) == 0
    assert api.get("/v3/purchases").get_json()["total_purchases"] == 0


def test_multi_sku_purchase_failing_on_its_second_product_leaves_the_first_untouched(api, services):
    first = api.create_deal(title="Lamp", sku="LAMP-1", quantity=5)
    second = api.create_deal(title="Bulb", sku="BULB-1", quantity=1)
    assert first["id"] < second["id"]  # the first product is taken first
    response = post(
        api,
        order(
            "o-1",
            {"name": "Lamp", "sku": "LAMP-1", "quantity": 2},
            {"name": "Bulb", "sku": "BULB-1", "quantity": 2},
            {"name": "Card", "sku": "CARD", "quantity": 1},
        ),
    )
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "Conflict",
        "message": "Not enough stock for product: Bulb (only 1 left, 2 requested).",
    }
    # Redis: the first deal's units were given back; SQL: nothing was written.
    assert live(services, first["id"]) == (5, 0, 0)
    assert live(services, second["id"]) == (1, 0, 0)
    assert sql_sold(services, first["id"]) == sql_sold(services, second["id"]) == 0
    assert count(services, Purchase) == count(services, PurchaseItem) == 0
    assert services.rebuilder.check(first["id"]) == [] and services.rebuilder.check(second["id"]) == []
    # The first deal's units are still for sale, to anyone.
    assert api.buy(first["id"], 5).status_code == 200


def test_multi_sku_purchase_takes_every_deal_once(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=5)
    bulb = api.create_deal(sku="BULB-1", quantity=5)
    # Listed in the other order than the deals' ids: taken by deal id, recorded as listed.
    response = post(api, order("o-1", {"sku": "BULB-1", "quantity": 3}, {"sku": "LAMP-1", "quantity": 1}))
    assert response.status_code == 201
    assert [p["sku"] for p in response.get_json()["products"]] == ["BULB-1", "LAMP-1"]
    assert live(services, lamp["id"]) == (4, 0, 1) and live(services, bulb["id"]) == (2, 0, 3)
    assert sql_sold(services, lamp["id"]) == 1 and sql_sold(services, bulb["id"]) == 3


def test_stock_is_taken_after_redis_lost_everything(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=5)
    api.buy(lamp["id"], 1)
    services.redis.flushdb()
    assert post(api, order("o-1", {"sku": "LAMP-1", "quantity": 2})).status_code == 201
    assert live(services, lamp["id"]) == (2, 0, 3)
    services.redis.flushdb()
    assert api.deal(lamp["id"])["sold"] == 3


# -- a transaction_id is recorded once ----------------------------------------------------------


def test_the_same_body_again_answers_with_the_record_and_takes_nothing(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=5)
    body = order("o-1", {"sku": "LAMP-1", "quantity": 2, "unit_price": 20.00}, currency="usd", total=40)
    first = post(api, body)
    again = post(api, body)
    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    # The same purchase spelled differently is the same body.
    respelled = order("o-1", {"sku": "LAMP-1", "quantity": 2, "unit_price": 20}, currency="USD", total=40.0)
    assert post(api, respelled).get_json() == first.get_json()
    assert count(services, Purchase) == 1
    assert live(services, lamp["id"]) == (3, 0, 2)


def test_the_same_transaction_id_with_another_body_is_409(api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=5)
    first = post(api, order("o-1", {"sku": "LAMP-1", "quantity": 2})).get_json()
    response = post(api, order("o-1", {"sku": "LAMP-1", "quantity": 3}))
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "Conflict",
        "message": f"A purchase with transaction_id o-1 is already recorded (id {first['id']}) with different details.",
    }
    assert count(services, Purchase) == 1
    assert live(services, lamp["id"]) == (3, 0, 2)


def test_transaction_ids_belong_to_one_account(api, other_api):
    assert post(api, order("o-1")).status_code == 201
    assert post(other_api, order("o-1")).status_code == 201


@pytest.mark.parametrize("same_body", [True, False])
def test_concurrent_duplicate_posts_record_once_and_take_stock_once(api, services, account, same_body):
    """The duplicates' scripts find the first one's take under the token derived from the
    transaction_id: they wait for its record, then answer with it (or a conflict)."""
    lamp = api.create_deal(sku="LAMP-1", quantity=100)
    threads = 8
    barrier = threading.Barrier(threads)

    def attempt(i: int):
        units = 2 if same_body else 1 + i
        new = NewPurchase("dup", "buyer@example.com", products=(Product("LAMP-1", quantity=units),))
        barrier.wait()
        try:
            return services.ledger.create(account[0], new)
        except TransactionConflict:
            return "conflict"

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(attempt, range(threads)))
    recorded = [r for r in results if r != "conflict"]
    assert sum(1 for r in recorded if r.created) == 1
    assert len({r.purchase.id for r in recorded}) == 1
    if same_body:
        assert len(recorded) == threads
    else:
        assert results.count("conflict") == threads - 1
    with services.db.read() as session:
        units = session.scalar(select(Purchase.units).where(Purchase.transaction_id == "dup"))
    assert count(services, Purchase) == 1
    assert live(services, lamp["id"]) == (100 - units, 0, units)
    assert services.rebuilder.check(lamp["id"]) == []


def test_concurrent_multi_sku_purchases_are_all_or_nothing(api, services, account):
    """40 buyers each want 1 lamp and 1 bulb; there are 5 bulbs: exactly 5 get both."""
    lamp = api.create_deal(sku="LAMP-1", quantity=100)
    bulb = api.create_deal(sku="BULB-1", quantity=5)

    def attempt(i: int) -> str:
        new = NewPurchase(f"o-{i}", "b@example.com", products=(Product("LAMP-1"), Product("BULB-1")))
        try:
            services.ledger.create(account[0], new)
            return "ok"
        except SoldOut:
            return "sold_out"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(40)))
    assert results.count("ok") == 5 and results.count("sold_out") == 35
    assert live(services, lamp["id"]) == (95, 0, 5)
    assert live(services, bulb["id"]) == (0, 0, 5)
    assert sql_sold(services, lamp["id"]) == sql_sold(services, bulb["id"]) == 5
    assert services.rebuilder.check(lamp["id"]) == [] and services.rebuilder.check(bulb["id"]) == []


def test_v1_and_v3_buyers_share_one_stock(api, services, account):
    lamp = api.create_deal(sku="LAMP-1", quantity=10, price_per_unit=100)

    def attempt(i: int) -> str:
        try:
            if i % 2:
                services.purchases.create(
                    account[0], lamp["id"], 1, user_id=f"u{i}", credit_card_id="c", expected_price_per_unit=100
                )
            else:
                services.ledger.create(
                    account[0], NewPurchase(f"o-{i}", "b@example.com", products=(Product("LAMP-1"),))
                )
            return "ok"
        except SoldOut:
            return "sold_out"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(30)))
    assert results.count("ok") == 10
    assert live(services, lamp["id"]) == (0, 0, 10)
    assert sql_sold(services, lamp["id"]) == 10
    assert api.get("/v3/purchases").get_json()["total_purchases"] == 10


def test_a_failed_sql_write_gives_the_units_back(api, services, account, monkeypatch):
    lamp = api.create_deal(sku="LAMP-1", quantity=5)
    bulb = api.create_deal(sku="BULB-1", quantity=5)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LedgerEntry, "apply", broken)
    new = NewPurchase("o-1", "b@example.com", products=(Product("LAMP-1", quantity=2), Product("BULB-1")))
    with pytest.raises(RuntimeError):
        services.ledger.create(account[0], new)
    assert live(services, lamp["id"]) == (5, 0, 0) and live(services, bulb["id"]) == (5, 0, 0)
    assert count(services, Purchase) == 0


def test_amounts_are_stored_as_decimals(api, services, account):
    new = NewPurchase("o-1", "b@example.com", total=Decimal("0.3"), products=(Product("X", unit_price=Decimal("0.1")),))
    recorded = services.ledger.create(account[0], new)
    with services.db.read() as session:
        row = session.get(Purchase, recorded.purchase.id)
        assert row.total == Decimal("0.3") and row.items[0].unit_price * 3 == Decimal("0.3")


def test_concurrent_duplicate_posts_over_http(app, api, services):
    lamp = api.create_deal(sku="LAMP-1", quantity=10)
    body = order("dup-http", {"sku": "LAMP-1", "quantity": 3})
    threads = 6
    barrier = threading.Barrier(threads)

    def attempt(_):
        client = app.test_client()
        barrier.wait()
        return client.post("/v3/purchases", json=body, headers={"Authorization": f"Bearer {api.secret}"})

    with ThreadPoolExecutor(threads) as pool:
        responses = list(pool.map(attempt, range(threads)))
    assert [r.status_code for r in responses] == [201] * threads
    assert sum(1 for r in responses if "Idempotent-Replayed" not in r.headers) == 1
    assert len({r.get_json()["id"] for r in responses}) == 1
    assert count(services, Purchase) == 1
    assert live(services, lamp["id"]) == (7, 0, 3)


def test_a_duplicate_still_running_elsewhere_is_a_503_after_waiting(api, services, account):
    lamp = api.create_deal(sku="LAMP-1", quantity=10)
    # Another request with this transaction_id took its line's unit a moment ago, and runs on.
    token = derived_token(account[0], "\nv3\nstuck")
    services.stock.buy(Order(lamp["id"], account[0], token, "running-elsewhere", 1), now_ms())
    services.ledger.wait_seconds = 0.1
    response = post(api, order("stuck", {"sku": "LAMP-1"}))
    assert response.status_code == 503
    assert response.get_json() == {
        "error": "Service Unavailable",
        "message": "Another request with this transaction_id is still being recorded; retry.",
    }
    assert response.headers["Retry-After"] == "1"
    assert live(services, lamp["id"]) == (9, 0, 1)  # the running one's unit; nothing more
    # A purchase that takes no stock takes nothing to wait for.
    assert post(api, order("stuck", {"sku": "GIFT"})).status_code == 201
