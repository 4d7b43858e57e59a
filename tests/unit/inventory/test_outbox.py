"""The outbox's write half, on the services (real Redis and SQL, no Flask): every change a
write commits writes its events in the same transaction, and a write that does not commit writes
none (the relay and the deliveries: tests/unit/webhooks/test_relay.py)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.core import events as ev
from app.inventory.group_commit import Hooks
from app.store.models import Purchase, StoredEvent


def stored(services) -> list:
    """Every event row, in insert order: (type, deal_id, data, seq)."""
    with services.db.read() as session:
        rows = session.execute(
            select(StoredEvent.type, StoredEvent.deal_id, StoredEvent.data, StoredEvent.seq).order_by(StoredEvent.id)
        ).all()
    return [(kind, deal, json.loads(data), seq) for kind, deal, data, seq in rows]


def test_each_change_writes_its_event_in_its_own_transaction(shop, services, account):
    deal = shop.create_deal(quantity=3)["id"]
    held = services.purchases.reserve(account[0], deal, 2, user_id="ann")
    services.purchases.claim(account[0], held.token)
    let_go = services.purchases.reserve(account[0], deal, 1)  # the last unit: sold out
    services.purchases.release(account[0], let_go.token)
    services.purchases.create(account[0], deal, 1, user_id="bob", credit_card_id="c", expected_price_per_unit=1999)
    kinds = [(kind, deal_id) for kind, deal_id, _, _ in stored(services)]
    assert kinds == [
        (ev.PURCHASE_RESERVED, deal),
        (ev.PURCHASE_FULFILLED, deal),
        (ev.PURCHASE_RESERVED, deal),
        (ev.DEAL_SOLD_OUT, deal),
        (ev.PURCHASE_RELEASED, deal),
        (ev.PURCHASE_FULFILLED, deal),
        (ev.DEAL_SOLD_OUT, deal),
    ]
    data = [d for _, _, d, _ in stored(services)]
    assert data[0]["purchase"]["id"] == held.token and data[0]["purchase"]["fulfillment_state"] == "reserved"
    assert data[1]["purchase"]["fulfillment_state"] == "fulfilled" and data[1]["via"] == "claim"
    assert len(data[1]["purchase"]["coupons"]) == 2
    assert data[3] == {"deal": {"id": deal, "available": 0}}
    assert data[4]["purchase"]["fulfillment_state"] == "released"
    assert data[5]["via"] == "create"
    assert all(seq is None for *_, seq in stored(services))  # numbered by the relay, not the writer


def test_a_write_that_does_not_commit_writes_no_event(shop, services, account):
    deal = shop.create_deal(quantity=3)["id"]

    class FailBeforeCommit(Hooks):
        def at(self, step, **context):
            if step == "in_transaction":
                raise RuntimeError("the database went away")

    services.protocol.committer.hooks = FailBeforeCommit()
    with pytest.raises(RuntimeError):
        services.purchases.reserve(account[0], deal, 1)
    services.protocol.committer.hooks = Hooks()
    with services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Purchase)) == 0
    assert stored(services) == []
    assert shop.deal(deal)["available"] == 3  # and the take was given back


def test_a_repeated_write_writes_its_event_once(shop, services, account):
    deal = shop.create_deal(quantity=3)["id"]
    held = services.purchases.reserve(account[0], deal, 1)
    services.purchases.release(account[0], held.token)
    services.purchases.release(account[0], held.token)  # already released: nothing changes
    assert [kind for kind, *_ in stored(services)] == [ev.PURCHASE_RESERVED, ev.PURCHASE_RELEASED]


def test_the_sweep_writes_the_expiries_with_the_rows_it_expires(shop, services, account, clock):
    deal = shop.create_deal(quantity=3)["id"]
    ended = services.purchases.reserve(account[0], deal, 2)
    clock.advance(301)
    services.sweeper.sweep(now=clock())
    last = stored(services)[-1]
    assert last[:2] == (ev.PURCHASE_EXPIRED, deal)
    assert last[2]["purchase"]["id"] == ended.token and last[2]["purchase"]["fulfillment_state"] == "expired"


def test_a_cart_writes_its_items_and_itself(shop, services, account):
    one, two = (shop.create_deal(quantity=5)["id"] for _ in range(2))
    cart = services.carts.reserve(account[0], [(one, 1), (two, 2)], user_id="ann")
    services.carts.claim(account[0], cart.token)
    other = services.carts.reserve(account[0], [(one, 1)])
    services.carts.release(account[0], other.token)
    kinds = [(kind, deal) for kind, deal, _, _ in stored(services)]
    assert kinds == [
        (ev.PURCHASE_RESERVED, one),
        (ev.PURCHASE_RESERVED, two),
        (ev.CART_RESERVED, None),
        (ev.PURCHASE_FULFILLED, one),
        (ev.PURCHASE_FULFILLED, two),
        (ev.CART_FULFILLED, None),
        (ev.PURCHASE_RESERVED, one),
        (ev.CART_RESERVED, None),
        (ev.PURCHASE_RELEASED, one),
        (ev.CART_RELEASED, None),
    ]
    shown = stored(services)[2][2]["cart"]
    assert shown["id"] == cart.token and shown["state"] == "reserved" and len(shown["purchases"]) == 2
    assert stored(services)[5][2]["cart"]["state"] == "fulfilled"
