"""Carts when the process taking their holds dies half-way: no half-held cart is left behind.
The reconciler gives up a cart nobody took over; a retry with the same key takes it over and
adopts the holds already taken."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.core import events as ev
from app.core.errors import RequestInProgress
from app.core.idempotency import Keyed
from app.inventory.carts import ABANDON_SECONDS
from app.store import cart_rows
from app.store.cart_rows import CARTS
from app.store.models import StoredEvent
from tests.support.servers import wait_for


class Killed(BaseException):  # noqa: N818 (a process dying, not an error the code may catch)
    pass


def numbers(services, deal_id, clock):
    snap = services.stock.snapshot(deal_id, clock.ms)
    return snap.available, snap.reserved, snap.sold


def cart_state(services, token):
    with services.db.reading() as connection:
        return cart_rows.read(connection, token).state


def dying_after_the_first_item(services, monkeypatch):
    """The process dies while its cart's scripts run: the first item's ran, the others' never
    did (a pipeline to a Redis Cluster reaches the first item's master first)."""
    original = services.stock.take_many

    def take_many(asks):
        original(asks[:1])
        raise Killed()

    monkeypatch.setattr(services.stock, "take_many", take_many)


def keyed(account_id, key="cart-key"):
    return Keyed(account_id, key, "fingerprint", lambda cart: (200, "{}"))


def test_a_cart_whose_process_died_half_way_is_given_up_by_the_reconciler(services, shop, account, clock, monkeypatch):
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(3)]
    dying_after_the_first_item(services, monkeypatch)
    with pytest.raises(Killed):
        services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
    monkeypatch.undo()
    token = keyed(account[0]).token
    assert cart_state(services, token) == "pending"
    assert numbers(services, deals[0], clock) == (3, 2, 0)  # the first item's hold, without its row
    assert services.carts.abandon_stale() == 0  # too young: its attempt may still run
    clock.advance(ABANDON_SECONDS + 1)
    assert services.carts.abandon_stale() == 1
    assert cart_state(services, token) == "abandoned"
    assert [numbers(services, d, clock) for d in deals] == [(5, 0, 0)] * 3
    assert all(services.rebuilder.check(d) == [] for d in deals)
    assert services.carts.abandon_stale() == 0


def test_a_retry_after_the_reconciler_gave_the_cart_up_starts_that_cart_again(
    services, shop, account, clock, monkeypatch
):
    """One cart per key however many attempts die: the retry revives the abandoned cart (its
    token, a fresh hold end) rather than starting another one beside it."""
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(3)]
    token = keyed(account[0]).token
    for _ in range(2):  # the first attempt dies; so does the retry that revives its cart
        dying_after_the_first_item(services, monkeypatch)
        with pytest.raises(Killed):
            services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
        monkeypatch.undo()
        clock.advance(ABANDON_SECONDS + 1)
        assert services.carts.abandon_stale() == 1
        assert cart_state(services, token) == "abandoned"
        assert [numbers(services, d, clock) for d in deals] == [(5, 0, 0)] * 3
    cart = services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
    assert cart.token == token and cart.state == "reserved" and len(cart.purchases) == 3
    assert cart.reserved_until == clock() + timedelta(seconds=services.carts.policy.ttl_seconds)
    with services.db.reading() as connection:
        assert connection.scalar(select(func.count()).select_from(CARTS)) == 1
    assert [numbers(services, d, clock) for d in deals] == [(3, 2, 0)] * 3
    assert all(services.rebuilder.check(d) == [] for d in deals)


def test_a_reserve_whose_cart_was_given_up_while_it_ran_starts_that_cart_again(
    services, shop, account, clock, monkeypatch
):
    """The attempt stalled past the reconciler's patience: its cart was given up (its holds
    given back) before it committed. Its commit is left out; the next attempt of the same
    request revives the same cart rather than starting one with another token."""
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(3)]
    original, calls = services.stock.take_many, []

    def stalling_after_the_takes(asks):
        calls.append(asks)
        taken = original(asks)
        if len(calls) == 1:
            clock.advance(ABANDON_SECONDS + 1)
            assert services.carts.abandon_stale() == 1
        return taken

    monkeypatch.setattr(services.stock, "take_many", stalling_after_the_takes)
    cart = services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
    assert len(calls) == 2  # two attempts
    assert cart.token == keyed(account[0]).token and cart.state == "reserved"
    with services.db.reading() as connection:
        assert connection.scalar(select(func.count()).select_from(CARTS)) == 1
    assert [numbers(services, d, clock) for d in deals] == [(3, 2, 0)] * 3
    assert all(services.rebuilder.check(d) == [] for d in deals)


def test_a_retry_takes_the_dead_attempts_cart_over_and_adopts_its_holds(services, shop, account, clock, monkeypatch):
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(3)]
    dying_after_the_first_item(services, monkeypatch)
    with pytest.raises(Killed):
        services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
    monkeypatch.undo()
    with pytest.raises(RequestInProgress):  # within 2 s the first attempt may still be running
        services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
    clock.advance(3)
    cart = services.carts.reserve(account[0], [(d, 2) for d in deals], keyed=keyed(account[0]))
    assert cart.state == "reserved" and len(cart.purchases) == 3
    assert [numbers(services, d, clock) for d in deals] == [(3, 2, 0)] * 3  # the first hold adopted, not taken twice
    clock.advance(ABANDON_SECONDS + 1)
    assert services.carts.abandon_stale() == 0
    assert [numbers(services, d, clock)[1] for d in deals] == [2, 2, 2]
    assert all(services.rebuilder.check(d) == [] for d in deals)


def test_the_reconciler_never_undoes_holds_a_retry_adopted(services, shop, account, clock, monkeypatch):
    """The retry takes the cart over after the reconciler read it stale: the reconciler's
    give-back (by the dead attempt's nonce) finds nothing of it, and its conditional update
    leaves the cart to the retry."""
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(2)]
    dying_after_the_first_item(services, monkeypatch)
    with pytest.raises(Killed):
        services.carts.reserve(account[0], [(d, 1) for d in deals], keyed=keyed(account[0]))
    monkeypatch.undo()
    clock.advance(ABANDON_SECONDS + 1)
    original_stale = cart_rows.stale_pending

    def retry_meanwhile(connection, before, limit=500):
        stale = original_stale(connection, before, limit)
        services.carts.reserve(account[0], [(d, 1) for d in deals], keyed=keyed(account[0]))
        return stale

    monkeypatch.setattr(cart_rows, "stale_pending", retry_meanwhile)
    services.carts.abandon_stale()
    monkeypatch.undo()
    assert cart_state(services, keyed(account[0]).token) == "reserved"
    assert [numbers(services, d, clock) for d in deals] == [(4, 1, 0)] * 2
    assert all(services.rebuilder.check(d) == [] for d in deals)


def test_carts_claimed_together_each_answer_with_their_own_items_and_coupons(services, shop, account):
    """Claims of several carts at once read their carts together: each claim answers with its
    own cart, its items in deal order, a coupon per unit; claimed again, a cart is the same."""
    deals = [shop.create_deal(quantity=20)["id"] for _ in range(3)]
    carts = [
        services.carts.reserve(account[0], [(deals[2], 1), (deals[0], i + 1)], user_id=f"buyer-{i}") for i in range(4)
    ]
    with ThreadPoolExecutor(len(carts)) as pool:
        claimed = list(pool.map(lambda cart: services.carts.claim(account[0], cart.token), carts))
    for cart, answer in zip(carts, claimed, strict=True):
        assert answer.token == cart.token and answer.state == "fulfilled"
        assert [(p.deal_id, p.units, p.user_id) for p in answer.purchases] == [
            (p.deal_id, p.units, cart.user_id) for p in cart.purchases
        ]
        assert [p.deal_id for p in answer.purchases] == [deals[0], deals[2]]
        assert [len(p.coupons) for p in answer.purchases] == [p.units for p in answer.purchases]
    again = services.carts.claim(account[0], carts[0].token)
    assert [p.coupons for p in again.purchases] == [p.coupons for p in claimed[0].purchases]
    assert shop.deal(deals[0])["sold"] == 1 + 2 + 3 + 4 and shop.deal(deals[2])["sold"] == 4
    tokens = [cart.token for cart in carts]
    with services.db.reading() as connection:
        together = cart_rows.read_many(connection, [*tokens, "no-such-cart"])
        one_by_one = {token: cart_rows.read(connection, token) for token in tokens}
    assert together == one_by_one


def test_a_batch_of_cart_claims_and_racing_releases_commits_each_as_it_would_alone(
    services, shop, account, clock, monkeypatch
):
    """The committer writes a batch's carts together. Held back until three claims, one
    release of another cart and two racing releases of a third are all waiting, they commit
    in one batch: the claims fulfil their carts, the releases end theirs, and of the two
    releases of one cart the second finds it released (as it would one write at a time)."""
    deals = [shop.create_deal(quantity=10)["id"] for _ in range(3)]
    carts = [services.carts.reserve(account[0], [(deals[0], 1), (deals[1], 2)], user_id=f"b{i}") for i in range(5)]
    committer = services.protocol.committer
    paused, go = threading.Event(), threading.Event()

    class HoldTheFirstBatch:
        def at(self, step, **context):
            if step == "in_transaction" and not paused.is_set():
                paused.set()
                go.wait(10)

    monkeypatch.setattr(committer, "hooks", HoldTheFirstBatch())
    with ThreadPoolExecutor(7) as pool:
        first = pool.submit(services.purchases.reserve, account[0], deals[2], 1)
        wait_for(paused.is_set, 10, "the first batch to be in its transaction")
        claims = [pool.submit(services.carts.claim, account[0], cart.token) for cart in carts[:3]]
        releases = [pool.submit(services.carts.release, account[0], carts[i].token) for i in (3, 3, 4)]
        wait_for(lambda: committer._queue.qsize() == 6, 10, "six cart writes waiting")
        go.set()
        first.result(10)
        claimed = [claim.result(10) for claim in claims]
        released = [release.result(10) for release in releases]
    assert [c.state for c in claimed] == ["fulfilled"] * 3
    assert all(len(p.coupons) == p.units for c in claimed for p in c.purchases)
    assert [c.state for c in released] == ["released"] * 3
    assert [p.fulfillment_state for c in released for p in c.purchases] == ["released"] * 6
    assert [services.carts.get(account[0], c.token).state for c in carts] == ["fulfilled"] * 3 + ["released"] * 2
    assert numbers(services, deals[0], clock) == (7, 0, 3) and numbers(services, deals[1], clock) == (4, 0, 6)
    assert all(services.rebuilder.check(d) == [] for d in deals)
    with services.db.read() as session:
        events = Counter(session.scalars(select(StoredEvent.type)))
    assert (events[ev.CART_RELEASED], events[ev.PURCHASE_RELEASED]) == (2, 4)  # once per change
    assert (events[ev.CART_FULFILLED], events[ev.PURCHASE_FULFILLED]) == (3, 6)
