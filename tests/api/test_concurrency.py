"""Many buyers at once, through the whole service (Redis and SQL): exactly K of N succeed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from app.inventory.errors import AlreadyClaimed, SoldOut
from app.store.models import Coupon, Purchase


def run_all(fn, n, workers=16):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(n)))


def outcome(fn):
    try:
        fn()
        return "ok"
    except SoldOut:
        return "sold_out"
    except AlreadyClaimed:
        return "already_claimed"


def test_concurrent_reserves_hold_exactly_the_quantity(api, services, account):
    deal = api.create_deal(quantity=10)["id"]
    results = run_all(lambda i: outcome(lambda: services.purchases.reserve(account[0], deal, 1)), 60)
    assert results.count("ok") == 10 and results.count("sold_out") == 50
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Purchase)) == 10
    shown = api.deal(deal)
    assert (shown["available"], shown["reserved"], shown["sold"]) == (0, 10, 0)
    assert services.rebuilder.check(deal) == []


def test_concurrent_direct_purchases_sell_exactly_the_quantity(api, services, account):
    deal = api.create_deal(quantity=7, price_per_unit=100)["id"]
    results = run_all(
        lambda i: outcome(
            lambda: services.purchases.create(
                account[0], deal, 1, user_id=f"u{i}", credit_card_id="c", expected_price_per_unit=100
            )
        ),
        40,
    )
    assert results.count("ok") == 7
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Coupon)) == 7
    assert api.deal(deal)["sold"] == 7
    assert services.rebuilder.check(deal) == []


def test_claim_release_and_sweep_racing_on_one_hold_end_in_one_outcome(api, services, account):
    """All three at once, many times: the units are either sold once or back once."""
    deal = api.create_deal(quantity=100)["id"]
    for round_ in range(15):
        token = api.reserved(deal, 2)["id"]
        barrier = threading.Barrier(3)
        outcomes = {}

        def claim():
            barrier.wait()
            outcomes["claim"] = outcome(lambda: services.purchases.claim(account[0], token, user_id="u"))

        def release():
            barrier.wait()
            outcomes["release"] = outcome(lambda: services.purchases.release(account[0], token))

        def sweep():
            barrier.wait()
            services.sweeper.sweep()

        threads = [threading.Thread(target=f) for f in (claim, release, sweep)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = api.purchase(token)["fulfillment_state"]
        assert state in ("fulfilled", "released"), outcomes
        if state == "fulfilled":
            assert outcomes["claim"] == "ok"
    shown = api.deal(deal)
    with services.db.read() as session:
        fulfilled = session.scalar(
            select(func.count()).select_from(Purchase).where(Purchase.fulfillment_state == "fulfilled")
        )
    assert shown["sold"] == 2 * fulfilled
    assert shown["reserved"] == 0
    assert shown["available"] + shown["sold"] == 100
    assert services.rebuilder.check(deal) == []
