"""Carts when the process taking their holds dies half-way: no half-held cart is left behind.
The reconciler gives up a cart nobody took over; a retry with the same key takes it over and
adopts the holds already taken."""

from __future__ import annotations

import pytest

from app.core.errors import RequestInProgress
from app.core.idempotency import Keyed
from app.inventory.carts import ABANDON_SECONDS
from app.store import cart_rows
from tests.support.clock import ControlledClock


class Killed(BaseException):  # noqa: N818 (a process dying, not an error the code may catch)
    pass


@pytest.fixture
def clock() -> ControlledClock:
    return ControlledClock()


@pytest.fixture
def app_config(app_config, clock):
    return {**app_config, "CLOCK": clock}


def numbers(services, deal_id, clock):
    snap = services.stock.snapshot(deal_id, clock.ms)
    return snap.available, snap.reserved, snap.sold


def cart_state(services, token):
    with services.db.reading() as connection:
        return cart_rows.read(connection, token).state


def dying_on_the_second_item(services, monkeypatch):
    original, calls = services.stock.reserve, []

    def reserve(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise Killed()
        return original(*args, **kwargs)

    monkeypatch.setattr(services.stock, "reserve", reserve)
    return calls


def keyed(account_id, key="cart-key"):
    return Keyed(account_id, key, "fingerprint", lambda cart: (200, "{}"))


def test_a_cart_whose_process_died_half_way_is_given_up_by_the_reconciler(services, shop, account, clock, monkeypatch):
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(3)]
    dying_on_the_second_item(services, monkeypatch)
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


def test_a_retry_takes_the_dead_attempts_cart_over_and_adopts_its_holds(services, shop, account, clock, monkeypatch):
    deals = [shop.create_deal(quantity=5)["id"] for _ in range(3)]
    dying_on_the_second_item(services, monkeypatch)
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
    dying_on_the_second_item(services, monkeypatch)
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
