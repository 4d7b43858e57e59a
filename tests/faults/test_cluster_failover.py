"""A cluster master killed during a flash sale (gunicorn, two RQ workers, PostgreSQL, stock on a
3-master Redis Cluster whose writes wait for their replica).

Buyers retry a 503 after its Retry-After, as the API asks. No unit may be sold twice (the
promoted replica has every acknowledged hold) and no 2xx may be missing from SQL. A take whose
answer was lost with the master (it ran, the request answered 503) may survive on the replica
without a row: those units are held by nobody until the reconciler returns them, and then the
sale sells exactly the deal's quantity."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from app.inventory import keys as K
from tests.support.servers import require_postgres, run_cli, wait_for
from tests.support.stack import Stack

QUANTITY = 300
BUYERS = 24


@pytest.fixture(scope="module")
def cluster_stack():
    require_postgres()
    stack = Stack(
        web_concurrency=4,
        sweep_seconds=1,
        redis_cluster=True,
        extra_env={
            "REDIS_MIN_REPLICAS": "1",
            "RATE_LIMIT_WRITES": "off",
            "SOLD_OUT_CACHE_MS": "0",
            "RECONCILE_INTERVAL_SECONDS": "2",
        },
    ).start(workers=2)
    yield stack
    stack.stop()


def test_killing_a_master_mid_sale_oversells_nothing_and_loses_nothing(cluster_stack):
    stack = cluster_stack
    api = stack.session()
    deal = api.post(
        f"{stack.url}/v1/deals", json={"title": "Failover", "price_per_unit": 100, "quantity": QUANTITY}
    ).json()["deal"]
    held: list[str] = []
    statuses: Counter = Counter()
    retried_after_503 = Counter()
    lock = threading.Lock()
    sold_out = threading.Event()

    def buyer(_):
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {stack.secret}"
            while not sold_out.is_set():
                response = session.post(
                    f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1}, timeout=30
                )
                with lock:
                    statuses[response.status_code] += 1
                if response.status_code == 200:
                    with lock:
                        held.append(response.json()["purchase"]["id"])
                elif response.status_code == 409:
                    sold_out.set()
                elif response.status_code == 503:
                    assert response.json()["error"] == "unavailable"
                    with lock:
                        retried_after_503["waits"] += 1
                    time.sleep(float(response.headers["Retry-After"]) / 4)  # a quarter: keep pressure on
                else:
                    raise AssertionError((response.status_code, response.text))

    master = stack.cluster.node_for_key(K.deal_keys(deal["id"]).inv)
    with ThreadPoolExecutor(max_workers=BUYERS) as pool:
        running = [pool.submit(buyer, i) for i in range(BUYERS)]
        wait_for(lambda: len(held) >= QUANTITY // 4, 60, "a quarter of the stock to be held", interval=0.01)
        killed_at = len(held)
        master.kill()
        for future in running:
            future.result(timeout=120)

    assert 0 < killed_at < QUANTITY
    assert statuses[503] > 0, statuses  # the failover was felt
    assert len(held) == len(set(held)) <= QUANTITY, (statuses, stack.logs())  # nothing oversold
    assert sql_holds(stack, deal["id"]) == set(held)  # every 200 is durable, nothing else is
    stranded = QUANTITY - len(held)

    # The reconciler gives back the units of takes that never got their row ...
    def available():
        return api.get(f"{stack.url}/v1/deals/{deal['id']}").json()["deal"]["available"]

    wait_for(lambda: available() == stranded, 30, f"the {stranded} stranded units back in stock", interval=0.2)
    # ... and the rest of the sale, on the promoted replica, sells exactly the quantity.
    for _ in range(stranded):
        response = api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1})
        assert response.status_code == 200, response.text
        held.append(response.json()["purchase"]["id"])
    assert (
        api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1}).status_code == 409
    )
    assert sql_holds(stack, deal["id"]) == set(held) and len(held) == QUANTITY
    shown = api.get(f"{stack.url}/v1/deals/{deal['id']}").json()["deal"]
    assert (shown["available"], shown["reserved"], shown["sold"]) == (0, QUANTITY, 0)
    for token in held[:10]:
        assert api.put(f"{stack.url}/v1/purchases/{token}/claim", json={"user_id": token[:8]}).status_code == 200
    assert "0 with drift" in run_cli(["inventory", "check"], stack.env)  # exits 1 on any drift
    print(
        f"\ncluster failover: master killed after {killed_at} holds; {dict(statuses)}; {stranded} units stranded, returned"
    )


def sql_holds(stack, deal_id: int) -> set[str]:
    with psycopg.connect(stack.database.url.replace("postgresql+psycopg", "postgresql")) as connection:
        rows = connection.execute(
            "SELECT token FROM purchases WHERE deal_id = %s AND fulfillment_state = 'reserved'", (deal_id,)
        )
        return {token for (token,) in rows}
