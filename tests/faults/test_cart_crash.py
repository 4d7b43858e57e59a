"""Carts while gunicorn's workers are killed (SIGKILL) mid-request: no half-held cart is left.

Checkouts reserve carts of three deals (each retried with its Idempotency-Key until it gets an
answer, or given up), then claim or release some. Meanwhile a web worker process is killed
every ~0.7 s, so some carts die between their holds. Afterwards, once the worker has given up
the carts nobody took over and reconciled the deals: every cart is whole (all its items' rows)
or gone (none), every 2xx cart is whole in SQL, no key has two carts, and Redis says what SQL says."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid

import psycopg
import requests

from tests.support.servers import require_postgres, run_cli, wait_for
from tests.support.stack import Stack

SECONDS = 8
CLIENTS = 8


def test_a_worker_killed_mid_cart_leaves_no_half_held_cart():
    require_postgres()
    stack = Stack(
        web_concurrency=2,
        ttl_seconds=300,
        sweep_seconds=1,
        extra_env={"RECONCILE_INTERVAL_SECONDS": "2", "CART_ABANDON_SECONDS": "2"},
    ).start(workers=1)
    try:
        api = stack.session()
        deals = [
            api.post(f"{stack.url}/v1/deals", json={"title": f"D{i}", "price_per_unit": 100, "quantity": 300}).json()[
                "deal"
            ]["id"]
            for i in range(3)
        ]
        stop = threading.Event()
        answered: list[dict] = []
        keys: list[str] = []
        lock = threading.Lock()

        def checkout(seed: int):
            rng = random.Random(seed)
            session = stack.session()
            while not stop.is_set():
                key = uuid.uuid4().hex
                with lock:
                    keys.append(key)
                body = {"items": [{"deal_id": d, "num_bought": rng.randint(1, 3)} for d in deals]}
                for _ in range(20):  # retried with its key until an answer, or given up
                    try:
                        response = session.post(
                            f"{stack.url}/v1/carts/reserve", json=body, headers={"Idempotency-Key": key}, timeout=5
                        )
                    except requests.RequestException:
                        time.sleep(0.05)
                        continue
                    if response.status_code >= 500 or response.json().get("error") == "request_in_progress":
                        time.sleep(0.1)
                        continue
                    if response.status_code == 200:
                        cart = response.json()["cart"]
                        with lock:
                            answered.append(cart)
                        then = rng.choice(["claim", "release", "keep"])
                        if then != "keep":
                            try:
                                session.put(
                                    f"{stack.url}/v1/carts/{cart['id']}/{then}", json={"user_id": "u"}, timeout=5
                                )
                            except requests.RequestException:
                                pass
                    break

        threads = [threading.Thread(target=checkout, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        kills = 0
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.7)
            pids = stack.web_worker_pids()
            if pids:
                os.kill(random.choice(pids), signal.SIGKILL)
                kills += 1
        stop.set()
        for thread in threads:
            thread.join(60)
        stack.wait_ready()

        def sql(query, *args):
            with psycopg.connect(stack.database.url.replace("postgresql+psycopg", "postgresql")) as connection:
                return connection.execute(query, args).fetchall()

        # The worker gives up the carts left pending, then reconciles the deals.
        wait_for(
            lambda: sql("SELECT count(*) FROM carts WHERE state = 'pending'")[0][0] == 0,
            60,
            "the pending carts to be given up",
        )

        def agree() -> bool:
            try:
                run_cli(["inventory", "check"], stack.env)
                return True
            except AssertionError:  # drift (exit 1): the reconciler has not caught up yet
                return False

        wait_for(agree, 90, "Redis to agree with SQL", interval=1)
        carts = sql("SELECT token, state, items FROM carts")
        items = dict(sql("SELECT cart_id, count(*) FROM purchases WHERE cart_id IS NOT NULL GROUP BY cart_id"))
        half = [(token, state, items.get(token, 0)) for token, state, _ in carts if items.get(token, 0) not in (0, 3)]
        assert not half, f"half-held carts: {half}"
        for token, state, _ in carts:
            if state in ("reserved", "fulfilled", "released"):
                assert items.get(token) == 3, (token, state)
            else:
                assert state == "abandoned" and token not in items, (token, state)
        states = dict((token, state) for token, state, _ in carts)
        for cart in answered:
            assert states.get(cart["id"]) in ("reserved", "fulfilled", "released"), cart["id"]
        # One cart per key: a retry after its cart was given up starts that cart again.
        assert len(carts) <= len(keys), f"{len(carts)} carts from {len(keys)} keys"
        abandoned = sum(1 for state in states.values() if state == "abandoned")
        print(
            f"\n{kills} workers killed, {len(answered)} carts answered 2xx, {abandoned} given up, {len(carts)} in all"
        )
        assert kills > 0 and answered
    finally:
        stack.stop()
