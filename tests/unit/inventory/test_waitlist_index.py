"""An offer made at the moment a customer joins (units were available) is a hold like any other:
the sweep index must visit its deal when it ends, so that the sweep hands an unclaimed offer on to
the next customer. Found by the explorer (seed 13): the deal had no hold, so no place in the
index, and the join's offer was never swept; it held its unit until the maintenance job
re-indexed the deal."""

from __future__ import annotations

import pytest

from app.inventory import keys as K


@pytest.fixture
def app_config(app_config):
    return {**app_config, "WAITLIST_OFFER_SECONDS": 600}


def test_an_offer_made_at_the_join_is_swept_when_it_ends(services, account, clock):
    deal = services.deals.create(account[0], title="d", price_per_unit=100, quantity=1).deal.id
    services.rebuilder.ensure_loaded(deal)
    assert services.redis.zscore(K.SWEEP_INDEX, str(deal)) is None  # no hold: not in the index
    ann = services.waitlist.join(account[0], deal, "ann")
    assert services.waitlist.get(account[0], ann.id).state == "offered"  # the available unit, at once
    bob = services.waitlist.join(account[0], deal, "bob")
    assert services.waitlist.get(account[0], bob.id).state == "waiting"

    clock.advance(601)  # ann's offer ends unclaimed
    services.sweeper.sweep(now=clock())
    services.waitlist.record_all()  # the worker's sweep job

    assert services.waitlist.get(account[0], ann.id).state == "lapsed"
    assert services.waitlist.get(account[0], bob.id).state == "offered"
    assert services.redis.hgetall(K.deal_keys(deal).offers) == {f"wl{bob.id}": str(bob.id)}


def test_a_retried_join_indexes_the_offers_its_first_attempt_made(services, account, clock):
    """The first attempt's wait made the offer and died before it indexed the deal; its retry
    (the entry exists) makes no offer, and indexes the deal all the same."""
    deal = services.deals.create(account[0], title="d", price_per_unit=100, quantity=1).deal.id
    services.rebuilder.ensure_loaded(deal)
    entry_id, _ = services.waitlist._entry(account[0], deal, "ann", clock())
    assert services.stock.wait(deal, entry_id, "ann", clock.ms) == 1  # the first attempt, no index
    services.waitlist.join(account[0], deal, "ann")  # its retry
    clock.advance(601)
    services.sweeper.sweep(now=clock())
    assert services.redis.hlen(K.deal_keys(deal).offers) == 0  # swept: the unit came back
    assert services.stock.snapshot(deal, clock.ms).available == 1


def test_a_customer_whose_offer_ended_unwritten_joins_again_with_a_new_entry(services, account, clock):
    """The join that made ann's offer died before writing it down, and the offer ended unclaimed:
    SQL still has ann waiting. Queued again under the same entry, she would get a second offer
    under the same token, which SQL could never write down (the unit held for nobody until that
    hold ended). Her new join writes the first offer down and waits with a new entry."""
    deal = services.deals.create(account[0], title="d", price_per_unit=100, quantity=1).deal.id
    services.rebuilder.ensure_loaded(deal)
    first, _ = services.waitlist._entry(account[0], deal, "ann", clock())
    assert services.stock.wait(deal, first, "ann", clock.ms) == 1  # the offer, never written down
    clock.advance(601)
    services.stock.sweep_many([deal], clock.ms, 100)  # it ends: the unit is back, nobody waits
    assert services.stock.snapshot(deal, clock.ms).available == 1

    again = services.waitlist.join(account[0], deal, "ann")

    assert again.id != first
    assert services.waitlist.get(account[0], first).state == "lapsed"  # written down, ended
    assert services.waitlist.get(account[0], again.id).state == "offered"  # the unit, at once
    assert services.redis.hgetall(K.deal_keys(deal).offers) == {f"wl{again.id}": str(again.id)}
