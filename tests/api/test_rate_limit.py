"""Per-account write limits: 429 with Retry-After in the API's shape; reads and other accounts
are not affected."""

from __future__ import annotations

import pytest


@pytest.fixture
def app_config(app_config):
    return {**app_config, "RATE_LIMIT_WRITES": "5/minute"}


def test_writes_over_the_limit_get_429_and_take_nothing(api, other_api):
    deal = api.create_deal(quantity=100)  # 1 write
    statuses = [api.reserve(deal["id"], 1).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    limited = api.reserve(deal["id"], 1)
    assert limited.status_code == 429
    body = limited.get_json()
    assert body["status"] == "error" and body["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert api.deal(deal["id"])["reserved"] == 4  # reads are not limited
    other = other_api.create_deal(quantity=1)
    assert other_api.reserve(other["id"], 1).status_code == 200


def test_a_secret_in_the_body_counts_against_its_account(client, api, other_api):
    """The v3 clients send their secret in the JSON body: their writes share the account's
    budget, not the caller's address (which other accounts behind the same proxy share)."""
    deal = api.create_deal(quantity=100)  # 1 write
    statuses = [
        client.post("/v1/purchases/reserve", json={"api_secret": api.secret, "deal_id": deal["id"], "num_bought": 1})
        for _ in range(5)
    ]
    assert [response.status_code for response in statuses] == [200, 200, 200, 200, 429]
    other = other_api.create_deal(quantity=1)  # same address, another account: its own budget
    assert other_api.reserve(other["id"], 1).status_code == 200


def test_writes_whose_body_is_refused_count_too(client, api):
    """A client stuck sending broken JSON is limited like any other writer (its secret is in the
    header; the body cannot be read)."""
    headers = {"Authorization": f"Bearer {api.secret}", "Content-Type": "application/json"}
    statuses = [client.post("/v1/purchases/reserve", data="{not json", headers=headers).status_code for _ in range(6)]
    assert statuses == [400, 400, 400, 400, 400, 429]
    assert api.post("/v1/deals", {"title": "x", "price_per_unit": 1, "quantity": 1}).status_code == 429
    assert api.get("/v1/deals").status_code == 200  # reads are not limited


def test_leased_budgets_still_stop_at_the_limit(monkeypatch, app_config, database_url, redis_url):
    """A large limit is taken from Redis in leases of 1%: one process still gets exactly its
    budget, and a second process (another app) shares the same count."""
    from app import create_app
    from app.web.api import ratelimit
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    # All 320 writes in one window: on the wall clock, a run that crossed the top of a minute
    # had a fresh budget for the writes after it and counted fewer 429s than expected.
    monkeypatch.setattr(ratelimit, "time", _Clock(1_800_000_030.0))
    config = {**app_config, "RATE_LIMIT_WRITES": "300/minute"}
    first, second = create_app(config), create_app(config)
    try:
        empty_stores(first.extensions["offer_engine"])
        _, secret = first.extensions["offer_engine"].accounts.create("busy")
        one, two = ApiClient(first.test_client(), secret), ApiClient(second.test_client(), secret)
        statuses = [(one if i % 2 else two).patch("/v1/deals/424242", {"title": "x"}).status_code for i in range(320)]
        # 404s count: the budget is for writes, whatever their answer.
        assert statuses.count(404) + statuses.count(429) == 320
        assert 300 - 2 * 3 <= statuses.count(404) <= 300  # at most one unused lease (3) per process
    finally:
        for app in (first, second):
            app.extensions["offer_engine"].close()


def test_concurrent_writers_take_one_lease_at_a_time(app_config, redis_client):
    """Threads of one process that find the lease empty together take one lease between them,
    not one each: the count in Redis stays within one lease of the writes made."""
    import threading
    import time

    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    app = create_app({**app_config, "RATE_LIMIT_WRITES": "100000/hour"})  # leases of 1,000
    try:
        empty_stores(app.extensions["offer_engine"])
        _, secret = app.extensions["offer_engine"].accounts.create("busy")
        threads, writes_each = 16, 20
        start = threading.Barrier(threads)
        statuses = []

        def writer():
            client = ApiClient(app.test_client(), secret)
            start.wait()
            for _ in range(writes_each):
                statuses.append(client.patch("/v1/deals/424242", {"title": "x"}).status_code)

        pool = [threading.Thread(target=writer) for _ in range(threads)]
        hour_before = int(time.time() // 3600)
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        # A run that crosses the top of the hour starts a new window, and takes a second lease.
        leases = 1 + (int(time.time() // 3600) != hour_before)
        assert statuses.count(404) == threads * writes_each
        counted = sum(int(redis_client.get(key)) for key in redis_client.scan_iter("oe:rate*"))
        assert threads * writes_each <= counted <= 1000 * leases  # one lease, not one per thread
    finally:
        app.extensions["offer_engine"].close()


class _Clock:
    """Stands in for the `time` module the limit reads its windows from."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_the_budget_renews_at_the_top_of_each_window(monkeypatch, app_config, redis_client):
    """Windows are the clock's minutes (for a per-minute limit), the same for every process and
    for the count in Redis: a client that used 60% of its budget in one minute has all of it
    again in the next, and Retry-After says when the window ends. Before, the count in Redis
    ran for a minute from its first write while each process leased by the clock's minutes:
    both halves of that minute were counted in one window, and a client at 60% of its limit was
    refused."""
    from app import create_app
    from app.web.api import ratelimit
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient

    clock = _Clock(1_800_000_030.0)  # 30 s into a minute
    monkeypatch.setattr(ratelimit, "time", clock)
    app = create_app({**app_config, "RATE_LIMIT_WRITES": "100/minute"})  # leases of 1: exact
    try:
        empty_stores(app.extensions["offer_engine"])
        _, secret = app.extensions["offer_engine"].accounts.create("steady")
        client = ApiClient(app.test_client(), secret)
        first = [client.patch("/v1/deals/424242", {"title": "x"}).status_code for _ in range(60)]
        clock.now += 35  # 5 s into the next minute; the first count is still alive in Redis
        second = [client.patch("/v1/deals/424242", {"title": "x"}).status_code for _ in range(60)]
        assert first.count(404) == 60 and second.count(404) == 60
        more = [client.patch("/v1/deals/424242", {"title": "x"}) for _ in range(41)]
        assert [response.status_code for response in more].count(429) == 1
        assert more[-1].headers["Retry-After"] == "55"  # the rest of this minute
    finally:
        app.extensions["offer_engine"].close()
