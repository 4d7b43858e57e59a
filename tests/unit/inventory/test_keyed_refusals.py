"""A refusal is final for the key's requests that began before it, through the services (real
Redis and SQL): a checkout that timed out and sent its claim again, heard `sold_out` for the
second request; the first, still running, must not claim afterwards, even when units come back
(docs/consistency.md, "a refusal is final"; the scripts' side: test_stock_scripts.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from app.core.idempotency import Keyed
from app.inventory.errors import SoldOut
from app.store.models import Coupon, IdempotencyRecord
from tests.support.servers import wait_for


def keyed(account_id: int, key: str) -> Keyed:
    return Keyed(account_id, key, "fingerprint", lambda purchase: (200, "{}"))


def test_a_claim_still_running_when_its_key_was_refused_does_not_claim_afterwards(
    services, shop, account, clock, monkeypatch
):
    """The first request with the key takes the units again (the hold had ended) and stalls
    before its commit; a rebuild drops that take, another customer buys the units, and the
    checkout's second request with the key is answered `sold_out`. Then the deal gets more units
    and the first request goes on: its commit finds the deal rebuilt and it takes again, which
    would claim after its key was refused. It is refused too, and nothing is sold to it."""
    account_id = account[0]
    deal = shop.create_deal(quantity=2)["id"]
    token = services.purchases.reserve(account_id, deal, 2, user_id="ann").token
    clock.advance(services.purchases.policy.ttl_seconds + 1)  # the customer pays late

    first_took, go_on = threading.Event(), threading.Event()

    class StallTheFirstClaim:
        def __init__(self) -> None:
            self.thread: int | None = None

        def at(self, step, **context):
            if step == "took" and threading.get_ident() == self.thread and not first_took.is_set():
                first_took.set()
                go_on.wait(30)

    stall = StallTheFirstClaim()
    monkeypatch.setattr(services.protocol, "hooks", stall)

    def first_request():
        stall.thread = threading.get_ident()
        return services.purchases.claim(account_id, token, user_id="ann", keyed=keyed(account_id, "pay-1"))

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(first_request)
        wait_for(first_took.is_set, 30, "the first claim to take the units again")
        assert shop.deal(deal)["available"] == 0

        services.rebuilder.rebuild(deal)  # drops the first claim's take: it is not in SQL
        services.purchases.create(
            account_id, deal, 2, user_id="bob", credit_card_id="card", expected_price_per_unit=1999
        )
        clock.advance(1)
        with pytest.raises(SoldOut):
            services.purchases.claim(account_id, token, user_id="ann", keyed=keyed(account_id, "pay-1"))

        services.deals.update(account_id, deal, quantity=4)  # units for the first request to take
        go_on.set()
        with pytest.raises(SoldOut):
            first.result(30)

    assert services.purchases.get(account_id, token).fulfillment_state != "fulfilled"
    assert shop.deal(deal)["available"] == 2 and shop.deal(deal)["sold"] == 2
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Coupon)) == 2  # bob's
        assert session.scalar(select(IdempotencyRecord.key).where(IdempotencyRecord.key == "pay-1")) is None
