"""Rebuilding a deal's live state from SQL, at the moment it runs."""

from __future__ import annotations

from app.inventory import keys as K


def test_a_rebuild_that_waited_for_the_fence_loads_the_holds_of_when_it_got_it(services, account, clock):
    """The rebuild reads the clock once it holds the deal's exclusive fence: a hold that ended
    while it waited is not loaded (with the time the rebuild was asked for, it would be)."""
    import threading

    deal = services.deals.create(account[0], title="d", price_per_unit=1, quantity=5).deal.id
    services.purchases.reserve(account[0], deal, 2)  # ends at +300 s
    services.redis.flushdb()
    fenced, go = threading.Event(), threading.Event()

    def writer_holding_the_fence():
        with services.db.begin() as connection:
            services.db.fence(connection, [deal], exclusive=False)
            fenced.set()
            go.wait(10)

    holder = threading.Thread(target=writer_holding_the_fence)
    holder.start()
    fenced.wait(10)
    rebuild = threading.Thread(target=services.rebuilder.ensure_loaded, args=(deal,))
    rebuild.start()  # asked for at +0 s: the hold was live then; it waits for the fence
    clock.advance(301)  # meanwhile the hold ends
    go.set()
    holder.join(10)
    rebuild.join(10)
    inv = services.redis.hgetall(K.deal_keys(deal).inv)
    assert (int(inv["available"]), int(inv["reserved"])) == (5, 0)
