"""End to end: the Procfile's gunicorn (4 workers) and RQ workers, on PostgreSQL and Redis.

A flash sale of 100 units meets 400 concurrent buyers; every hold is then claimed; and a hold
left alone expires (TTL 2 s) and is returned by a worker process. Each test runs twice: stock
on a single Redis with one RQ worker, and stock on a 3-master Redis Cluster (a replica each,
writes acknowledged by the replica) with two RQ workers on their own plain Redis."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from tests.support.servers import require_postgres, wait_for
from tests.support.stack import Stack

TOPOLOGIES = ["redis", "cluster"]


def started_stack(ttl_seconds: int, topology: str):
    require_postgres()
    if topology == "cluster":
        stack = Stack(
            web_concurrency=4,
            ttl_seconds=ttl_seconds,
            sweep_seconds=1,
            redis_cluster=True,
            extra_env={"REDIS_MIN_REPLICAS": "1"},
        )
        return stack.start(workers=2)
    return Stack(web_concurrency=4, ttl_seconds=ttl_seconds, sweep_seconds=1).start(workers=1)


@pytest.fixture(scope="module", params=TOPOLOGIES)
def stack(request):
    stack = started_stack(ttl_seconds=300, topology=request.param)
    yield stack
    stack.stop()


@pytest.fixture(scope="module", params=TOPOLOGIES)
def short_hold_stack(request):
    """Holds last 2 s here (a busy machine could not finish the flash sale within that)."""
    stack = started_stack(ttl_seconds=2, topology=request.param)
    yield stack
    stack.stop()


def sql(stack, query: str, *args):
    with psycopg.connect(stack.database.url.replace("postgresql+psycopg", "postgresql")) as connection:
        return connection.execute(query, args).fetchall()


def test_flash_sale_sells_exactly_the_stock(stack):
    api = stack.session()
    deal = api.post(f"{stack.url}/v1/deals", json={"title": "Flash", "price_per_unit": 100, "quantity": 100}).json()[
        "deal"
    ]

    def reserve(_):
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {stack.secret}"
            response = session.post(
                f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1}, timeout=30
            )
            return response.status_code, response.json()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(reserve, range(400)))
    reserve_seconds = time.perf_counter() - started
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 100, 409: 300}, (statuses, stack.logs())
    assert all(body["error"] == "sold_out" for status, body in results if status == 409)
    tokens = [body["purchase"]["id"] for status, body in results if status == 200]
    assert len(set(tokens)) == 100
    assert sql(stack, "SELECT count(*) FROM purchases WHERE fulfillment_state = 'reserved'") == [(100,)]

    def claim(token):
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {stack.secret}"
            return session.put(
                f"{stack.url}/v1/purchases/{token}/claim", json={"user_id": token[:8]}, timeout=30
            ).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        claims = Counter(pool.map(claim, tokens))
    claim_seconds = time.perf_counter() - started
    assert claims == {200: 100}, stack.logs()
    shown = api.get(f"{stack.url}/v1/deals/{deal['id']}").json()["deal"]
    assert (shown["sold"], shown["reserved"], shown["available"]) == (100, 0, 0)
    assert sql(stack, "SELECT count(*) FROM coupons") == [(100,)]
    assert sql(stack, "SELECT coalesce(sum(quantity), 0) FROM purchase_items WHERE deal_id = %s", deal["id"]) == [
        (100,)
    ]
    print(
        f"\nflash sale: 400 reserves in {reserve_seconds:.2f}s ({400 / reserve_seconds:.0f}/s), "
        f"100 claims in {claim_seconds:.2f}s"
    )


def test_a_hold_left_alone_expires_and_the_worker_returns_it(short_hold_stack):
    stack = short_hold_stack
    api = stack.session()
    deal = api.post(f"{stack.url}/v1/deals", json={"title": "Alone", "price_per_unit": 100, "quantity": 3}).json()[
        "deal"
    ]
    held = api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 2}).json()[
        "purchase"
    ]
    client = stack.stock_client()
    inv = f"oe:{{deal:{deal['id']}}}:inv"
    assert client.hget(inv, "available") == "1"
    started = time.monotonic()
    # Only the worker writes "expired" on a row, and nothing but the sweep touches the deal
    # here: no request is made for it while we wait.
    wait_for(
        lambda: sql(stack, "SELECT fulfillment_state FROM purchases WHERE token = %s", held["id"]) == [("expired",)],
        15,
        "the worker to mark the reservation expired",
        interval=0.1,
    )
    wait_for(lambda: client.hget(inv, "available") == "3", 5, "the units back in stock")
    elapsed = time.monotonic() - started
    assert client.zscore(f"oe:{{deal:{deal['id']}}}:holds", held["id"]) is None
    assert 1.5 < elapsed < 10, elapsed  # TTL 2 s, sweep every 1 s, slack for a loaded machine
    assert api.get(f"{stack.url}/v1/purchases/{held['id']}").json()["purchase"]["fulfillment_state"] == "expired"
