"""The fault suite: a flash sale through the real processes (gunicorn, two RQ workers, Redis,
PostgreSQL) while we break them on purpose, then invariants 1-4.

Faults, one every ~1.5 s for CHAOS_SECONDS: SIGKILL a gunicorn worker; SIGKILL the whole
gunicorn and start it again; SIGKILL an RQ worker and start it again; kill Redis (-9) and start
it empty; FLUSHALL; cut PostgreSQL (a proxy resets every connection and refuses new ones for a
second or two); terminate the app's PostgreSQL backends mid-transaction.

Clients buy like checkouts do: reserve, then claim or release or walk away, or buy directly;
every write carries an Idempotency-Key and is retried with it on a 5xx, a timeout or a reset.

Afterwards:
1. no oversell: sold + live holds <= quantity in SQL, sampled every 200 ms throughout, and in
   Redis at the end;
2. no leak: once every hold has ended and the worker has swept and reconciled, Redis shows
   available == quantity - sold (SQL's sold);
3. durable: every 2xx the clients saw is backed by a committed row in the state it reported;
4. exactly once: one purchase per create key, one coupon per unit, stock taken once per claim.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import psycopg
import pytest
import redis
import requests

from tests.support.proxy import CuttableProxy
from tests.support.servers import require_postgres, run_cli, wait_for
from tests.support.stack import Stack

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "30"))
CLIENTS = 16
DEALS = 4
QUANTITY = 150
TTL = 3


@dataclass
class Ledger:
    """What the clients were told (only 2xx answers count)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    reserved: dict = field(default_factory=dict)  # token -> (deal, units)
    claimed: dict = field(default_factory=dict)  # token -> user
    released: set = field(default_factory=set)
    created: dict = field(default_factory=dict)  # create key -> token

    def count(self, status):
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1


def write(session, ledger: Ledger, method: str, url: str, body: dict, deadline: float):
    """One logical write, retried with its Idempotency-Key until it gets a definite answer."""
    key = uuid.uuid4().hex
    while time.monotonic() < deadline:
        try:
            response = session.request(method, url, json=body, headers={"Idempotency-Key": key}, timeout=10)
        except requests.RequestException:
            ledger.count("error")
            time.sleep(0.1)
            continue
        ledger.count(response.status_code)
        if response.status_code >= 500 or (
            response.status_code == 409 and response.json().get("error") == "request_in_progress"
        ):
            time.sleep(0.1)
            continue
        return response, key
    return None, key


def client(stack: Stack, deals: list[int], ledger: Ledger, stop: threading.Event, seed: int):
    rng = random.Random(seed)
    session = stack.session()
    base = stack.url
    while not stop.is_set():
        deal = rng.choice(deals)
        deadline = time.monotonic() + 20
        if rng.random() < 0.25:
            units = rng.randint(1, 2)
            user = f"buyer-{seed}-{rng.randint(0, 5)}"
            body = {
                "deal_id": deal,
                "quantity": units,
                "user_id": user,
                "credit_card_id": "c",
                "expected_price_per_unit": 100,
            }
            response, key = write(session, ledger, "POST", f"{base}/v1/purchases", body, deadline)
            if response is not None and response.status_code == 200:
                with ledger.lock:
                    ledger.created[key] = response.json()["purchase"]["id"]
            continue
        units = rng.randint(1, 3)
        response, _ = write(
            session, ledger, "POST", f"{base}/v1/purchases/reserve", {"deal_id": deal, "num_bought": units}, deadline
        )
        if response is None or response.status_code != 200:
            continue
        token = response.json()["purchase"]["id"]
        with ledger.lock:
            ledger.reserved[token] = (deal, units)
        roll = rng.random()
        if roll < 0.6:
            user = f"user-{seed}"
            response, _ = write(
                session, ledger, "PUT", f"{base}/v1/purchases/{token}/claim", {"user_id": user}, deadline
            )
            if response is not None and response.status_code == 200:
                with ledger.lock:
                    ledger.claimed[token] = user
        elif roll < 0.8:
            response, _ = write(session, ledger, "PUT", f"{base}/v1/purchases/{token}/release", {}, deadline)
            if response is not None and response.status_code == 200:
                with ledger.lock:
                    ledger.released.add(token)


def sql(url: str, query: str, *args):
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), connect_timeout=5) as connection:
        return connection.execute(query, args).fetchall()


OVERSELL_QUERY = """
SELECT d.id, d.quantity,
       (SELECT coalesce(sum(i.quantity), 0) FROM purchase_items i WHERE i.deal_id = d.id) AS sold,
       (SELECT coalesce(sum(p.units), 0) FROM purchases p
         WHERE p.deal_id = d.id AND p.fulfillment_state = 'reserved' AND p.reserved_until > now() AT TIME ZONE 'UTC') AS held
FROM deals d ORDER BY d.id
"""


def monitor(url: str, violations: list, samples: list, stop: threading.Event):
    while not stop.is_set():
        try:
            for deal, quantity, sold, held in sql(url, OVERSELL_QUERY):
                if sold + held > quantity:
                    violations.append((deal, quantity, sold, held))
            samples.append(1)
        except psycopg.Error:
            pass
        stop.wait(0.2)


class Chaos:
    def __init__(self, stack: Stack, proxy: CuttableProxy, rng: random.Random):
        self.stack = stack
        self.proxy = proxy
        self.rng = rng
        self.injected: Counter = Counter()

    def kill_web_worker(self):
        pids = self.stack.web_worker_pids()
        if pids:
            os.kill(self.rng.choice(pids), signal.SIGKILL)

    def restart_web(self):
        self.stack.restart_web()
        self.stack.wait_ready(60)

    def restart_rq_worker(self):
        self.stack.restart_worker(self.rng.randrange(len(self.stack.workers)))

    def restart_redis(self):
        self.stack.redis.kill()
        time.sleep(self.rng.uniform(0.1, 1.0))
        self.stack.redis.start()

    def flush_redis(self):
        redis.Redis.from_url(self.stack.redis.url).flushall()

    def cut_postgres(self):
        self.proxy.cut()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.proxy.restore()

    def terminate_backends(self):
        sql(
            self.stack.database.url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )

    FAULTS = (
        "kill_web_worker",
        "restart_web",
        "restart_rq_worker",
        "restart_redis",
        "flush_redis",
        "cut_postgres",
        "terminate_backends",
    )

    def run(self, stop: threading.Event):
        weights = (4, 1, 2, 2, 2, 2, 2)
        while not stop.wait(self.rng.uniform(1.0, 2.0)):
            fault = self.rng.choices(self.FAULTS, weights)[0]
            getattr(self, fault)()
            self.injected[fault] += 1


@pytest.fixture(scope="module")
def chaos_stack():
    require_postgres()
    proxy = CuttableProxy("127.0.0.1", 5432).start()
    stack = Stack(
        web_concurrency=4,
        ttl_seconds=TTL,
        sweep_seconds=1,
        database_proxy=proxy,
        extra_env={
            "RECONCILE_INTERVAL_SECONDS": "2",
            "RATE_LIMIT_WRITES": "off",
            "REBUILD_WAIT_SECONDS": "2",
            "DB_POOL_TIMEOUT_SECONDS": "2",
            "GUNICORN_TIMEOUT": "15",
        },
    ).start(workers=2)
    yield stack, proxy
    stack.stop()
    proxy.stop()


def test_flash_sale_under_faults_keeps_invariants_1_to_4(chaos_stack):
    stack, proxy = chaos_stack
    db = stack.database.url
    api = stack.session()
    deals = [
        api.post(
            f"{stack.url}/v1/deals", json={"title": f"Chaos {i}", "price_per_unit": 100, "quantity": QUANTITY}
        ).json()["deal"]["id"]
        for i in range(DEALS)
    ]
    ledger = Ledger()
    violations: list = []
    samples: list = []
    stop_clients, stop_faults, stop_monitor = threading.Event(), threading.Event(), threading.Event()
    chaos = Chaos(stack, proxy, random.Random(int(os.environ.get("CHAOS_SEED", "1234"))))
    threads = [threading.Thread(target=client, args=(stack, deals, ledger, stop_clients, i)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=monitor, args=(db, violations, samples, stop_monitor)))
    fault_thread = threading.Thread(target=chaos.run, args=(stop_faults,))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    fault_thread.start()
    time.sleep(CHAOS_SECONDS)
    stop_faults.set()
    fault_thread.join()
    # Everything is back: let the clients finish their retries on a healthy system.
    if not proxy.up:
        proxy.restore()
    if not stack.web.alive():
        stack.restart_web()
    stack.wait_ready(60)
    stop_clients.set()
    for thread in threads[:-1]:
        thread.join(60)
    chaos_seconds = time.monotonic() - started

    # 2. No leak, once every hold has ended and the worker has swept and reconciled.
    client_redis = redis.Redis.from_url(stack.redis.url, decode_responses=True)

    def settled():
        rows = sql(db, OVERSELL_QUERY)
        for deal, quantity, sold, held in rows:
            inv = client_redis.hgetall(f"oe:{{deal:{deal}}}:inv")
            if (
                held
                or not inv
                or int(inv["sold"]) != sold
                or int(inv["reserved"]) != 0
                or int(inv["available"]) != quantity - sold
            ):
                return False
        return True

    wait_for(settled, 60, "Redis to settle on SQL's numbers (sweep + reconcile)", interval=0.5)
    stop_monitor.set()
    threads[-1].join()
    check = run_cli(["inventory", "check"], {**stack.env, "DATABASE_URL": db})
    assert f"checked {DEALS} deals, 0 with drift" in check

    # 1. No oversell, throughout and at the end.
    assert samples, "the monitor never read the database"
    assert violations == []
    oversold = sum(max(0, sold - quantity) for _, quantity, sold, _ in sql(db, OVERSELL_QUERY))
    assert oversold == 0

    # 3. Durable: every 2xx is backed by a committed row in the state it reported.
    rows = {
        token: (state, user, units)
        for token, state, user, units in sql(db, "SELECT token, fulfillment_state, user_id, units FROM purchases")
    }
    lost = [t for t in ledger.reserved if t not in rows]
    lost += [t for t, user in ledger.claimed.items() if rows.get(t, (None, None))[:2] != ("fulfilled", user)]
    lost += [t for t in ledger.released if rows.get(t, ("?",))[0] not in ("released", "expired")]
    lost += [t for t in ledger.created.values() if rows.get(t, ("?",))[0] != "fulfilled"]
    assert lost == []

    # 4. Exactly once: one coupon per unit; no purchase both released and claimed by us;
    #    each create key answered with one purchase.
    coupon_mismatch = sql(
        db,
        "SELECT p.token FROM purchases p LEFT JOIN coupons c ON c.purchase_id = p.id "
        "WHERE p.fulfillment_state = 'fulfilled' GROUP BY p.token, p.units HAVING count(c.id) <> p.units",
    )
    assert coupon_mismatch == []
    assert not (set(ledger.claimed) & ledger.released)
    assert len(set(ledger.created.values())) == len(ledger.created)

    sold_total = sum(sold for _, _, sold, _ in sql(db, OVERSELL_QUERY))
    print(
        f"\nfault suite: {chaos_seconds:.0f} s, faults injected {sum(chaos.injected.values())} "
        f"{dict(chaos.injected)}; requests sent {ledger.requests} {dict(ledger.statuses)}; "
        f"2xx reserves {len(ledger.reserved)}, claims {len(ledger.claimed)}, releases {len(ledger.released)}, "
        f"creates {len(ledger.created)}; units sold {sold_total}/{DEALS * QUANTITY}; "
        f"oversell samples {len(samples)}, units oversold {oversold}, purchases lost {len(lost)}"
    )
