"""The storefront reads and their feed (app/inventory/storefront.py), without Flask. The feed here
polls only when the test says so (`poll()`): its own poller waits an hour between rounds."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from app.core.errors import Unavailable
from app.inventory.errors import DealNotFound
from app.inventory.storefront import FeedEnded, LiveFeed, PublicDeal
from app.store.models import utcnow
from tests.support.calls import Calls
from tests.support.servers import wait_for


@pytest.fixture
def feed(services, clock):
    """Rounds only when the test polls; a state published as soon as it changed (no pacing)."""
    feed = LiveFeed(services.deals, services.stock, clock, interval=3600, refresh=3600, gap=0, delivery_wait=0)
    yield feed
    feed.close()


def test_show_is_a_public_deal_and_nothing_else(services, shop):
    deal = shop.create_deal(title="Lamp", price_per_unit=2500, quantity=4, public=True)
    shop.reserved(deal["id"], 1)
    shown = services.storefront.show(deal["id"])
    assert shown == PublicDeal(
        id=deal["id"],
        title="Lamp",
        price=2500,
        currency="USD",
        quantity=4,
        available=3,
        sold_out=False,
        starts_at=None,
        ends_at=None,
        on_sale=True,
    )
    private = shop.create_deal(quantity=4)
    for deal_id in (private["id"], private["id"] + 100):
        with pytest.raises(DealNotFound):
            services.storefront.show(deal_id)


def test_on_sale_follows_the_window_on_the_services_clock(services, shop, clock):
    deal = shop.create_deal(
        public=True, starts_at=clock() + timedelta(minutes=1), ends_at=clock() + timedelta(minutes=2)
    )
    assert services.storefront.show(deal["id"]).on_sale is False
    clock.advance(60)
    assert services.storefront.show(deal["id"]).on_sale is True
    clock.advance(60)
    assert services.storefront.show(deal["id"]).on_sale is False


def test_a_round_publishes_only_what_changed_and_listeners_get_the_latest(feed, shop):
    deal = shop.create_deal(quantity=10, public=True)
    other = shop.create_deal(quantity=10, public=True)
    listener, bystander = feed.listen(deal["id"]), feed.listen(other["id"])
    assert listener.next(0).available == 10  # the state at connect
    assert bystander.next(0).available == 10
    assert listener.next(0) is None  # nothing new
    assert feed.poll() == 0
    shop.reserved(deal["id"], 2)
    assert feed.poll() == 1  # one deal changed, one published
    shop.reserved(deal["id"], 3)
    assert feed.poll() == 1
    state = listener.next(0)
    assert state.available == 5  # the latest: the state in between was skipped
    assert listener.next(0) is None
    assert bystander.next(0) is None
    listener.close()
    bystander.close()
    assert feed.listening() == 0


def test_a_listener_keeps_its_states_a_gap_apart(services, shop, clock):
    feed = LiveFeed(services.deals, services.stock, clock, interval=3600, refresh=3600, gap=0.2, delivery_wait=0)
    try:
        deal = shop.create_deal(quantity=10, public=True)
        early = feed.listen(deal["id"])  # publishes the state at connect
        early.next(0)
        time.sleep(0.1)
        late = feed.listen(deal["id"])
        late.next(0)  # the same state, taken 0.1 s after it was published
        taken = time.monotonic()
        shop.reserved(deal["id"], 1)
        deadline = time.monotonic() + 5
        while feed.poll() == 0:  # due 0.2 s after the last state
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert early.next(5).available == 9
        assert late.next(5).available == 9
        assert time.monotonic() - taken >= 0.2  # 0.2 s after its last one, not when it was published
        early.close()
        late.close()
    finally:
        feed.close()


def test_a_new_state_waits_until_the_last_one_was_delivered(services, shop, clock):
    feed = LiveFeed(services.deals, services.stock, clock, interval=3600, refresh=3600, gap=0, delivery_wait=0.5)
    try:
        deal = shop.create_deal(quantity=10, public=True)
        listeners = [feed.listen(deal["id"]) for _ in range(10)]
        for listener in listeners:
            listener.next(0)
        shop.reserved(deal["id"], 1)
        assert feed.poll() == 1  # 9 left
        shop.reserved(deal["id"], 1)
        assert feed.poll() == 0  # nobody took the 9 yet: 8 waits
        for listener in listeners[:8]:
            assert listener.next(0).available == 9
        assert feed.poll() == 0  # 8 of 10 took it: not yet delivered (9 of 10 make it)
        assert listeners[8].next(0).available == 9
        delivered = time.monotonic()
        while (
            feed.poll() == 0
        ):  # delivered: the next state goes out, once delivering took < DELIVERY_BUDGET of the time
            assert time.monotonic() - delivered < 2
            time.sleep(0.01)
        assert listeners[9].next(0).available == 8  # the slow one skips to the latest
        shop.reserved(deal["id"], 1)
        assert feed.poll() == 0
        time.sleep(0.5)
        assert feed.poll() == 1  # nobody took 8 but the one: after delivery_wait it goes out anyway
        for listener in listeners:
            listener.close()
    finally:
        feed.close()


def test_a_round_is_one_redis_round_trip_however_many_listeners(feed, shop, services, monkeypatch):
    deals = [shop.create_deal(quantity=10, public=True) for _ in range(3)]
    listeners = [feed.listen(deal["id"]) for deal in deals for _ in range(20)]
    shop.reserved(deals[0]["id"], 1)
    calls = Calls(services, monkeypatch)
    try:
        assert feed.poll() == 1
        assert calls.reset() == (0, 1)  # (SQL statements, Redis round trips): all three deals at once
    finally:
        calls.close()
    assert {listener.next(0).available for listener in listeners[:20]} == {9}  # never read: the latest
    for listener in listeners:
        listener.close()


def test_a_patch_reloads_the_deal_and_a_private_one_ends_its_listeners(feed, shop, services, clock):
    deal = shop.create_deal(title="Lamp", quantity=10, public=True)
    listener = feed.listen(deal["id"])
    listener.next(0)
    services.deals.update(shop.account_id, deal["id"], title="Lamp II", quantity=12)  # drops the live state
    assert feed.poll() == 1
    state = listener.next(0)
    assert (state.title, state.quantity, state.available) == ("Lamp II", 12, 12)
    services.deals.update(shop.account_id, deal["id"], public=False)  # not a live field: seen at a refresh
    assert feed.poll() == 0
    assert listener.next(0) is None
    listener.close()
    refreshing = LiveFeed(services.deals, services.stock, clock, interval=3600, refresh=0)
    try:
        services.deals.update(shop.account_id, deal["id"], public=True)
        listener = refreshing.listen(deal["id"])
        listener.next(0)
        services.deals.update(shop.account_id, deal["id"], public=False)
        refreshing.poll()
        with pytest.raises(FeedEnded):
            listener.next(0)
        listener.close()
        with pytest.raises(DealNotFound):
            refreshing.listen(deal["id"])
        assert refreshing.listening() == 0
    finally:
        refreshing.close()


def test_closing_the_feed_ends_every_listener_and_refuses_new_ones(feed, shop):
    deal = shop.create_deal(public=True)
    listener = feed.listen(deal["id"])
    listener.next(0)
    waiting = []
    thread = threading.Thread(target=lambda: waiting.append(_ends(listener)))
    thread.start()
    feed.close()
    thread.join(5)
    assert waiting == [True]
    with pytest.raises(Unavailable):
        feed.listen(deal["id"])


def test_closing_the_feed_waits_for_the_round_under_way(services, shop, clock, monkeypatch):
    """The stores are closed right after the feed (a worker shutting down, Services.close): a
    round still reading would keep a connection the closed pool never gets back."""
    feed = LiveFeed(services.deals, services.stock, clock, interval=0.01, refresh=3600)
    deal = shop.create_deal(public=True)
    listener = feed.listen(deal["id"])
    listener.next(0)
    reading, rounds_ended = threading.Event(), []
    real = services.stock.snapshots

    def slow_read(*args, **kwargs):
        reading.set()
        wait_for(lambda: feed.closed, 10, "the feed to be closed while this round reads")
        try:
            return real(*args, **kwargs)
        finally:
            rounds_ended.append(True)

    monkeypatch.setattr(services.stock, "snapshots", slow_read)
    wait_for(reading.is_set, 10, "the poller to start a round")
    feed.close()
    assert rounds_ended == [True]
    assert feed._poller is None


def _ends(listener) -> bool:
    try:
        listener.next(30)
    except FeedEnded:
        return True
    return False


def test_the_poller_runs_while_there_are_listeners(services, shop, clock):
    feed = LiveFeed(services.deals, services.stock, clock, interval=0.05, refresh=3600)
    try:
        deal = shop.create_deal(quantity=10, public=True)
        listener = feed.listen(deal["id"])
        listener.next(0)
        shop.reserved(deal["id"], 4)
        assert listener.next(5).available == 6  # published by the feed's own poller
        listener.close()
        deadline = time.monotonic() + 5
        while feed._poller is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed._poller is None  # nobody listens: no thread, no reads
        again = feed.listen(deal["id"])
        assert feed._poller is not None
        again.close()
    finally:
        feed.close()


def test_a_failing_round_is_retried_and_the_listeners_stay(services, shop, clock, monkeypatch):
    feed = LiveFeed(services.deals, services.stock, clock, interval=0.05, refresh=3600, retry=0.05)
    try:
        deal = shop.create_deal(quantity=10, public=True)
        listener = feed.listen(deal["id"])
        listener.next(0)
        real = services.stock.snapshots
        failures = []

        def flaky(*args, **kwargs):
            if len(failures) < 3:
                failures.append(utcnow())
                raise Unavailable("redis is away")
            return real(*args, **kwargs)

        monkeypatch.setattr(services.stock, "snapshots", flaky)
        shop.reserved(deal["id"], 1)
        assert listener.next(5).available == 9
        assert len(failures) == 3
        listener.close()
    finally:
        feed.close()
