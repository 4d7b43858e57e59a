"""The outbox under faults: checkouts on the real gunicorn (gevent over PostgreSQL) and two RQ
workers while web workers die right after their commits, and more are SIGKILLed from outside,
and an RQ worker (the relay and the deliveries run there) is SIGKILLed and started again.

Web workers die right after a group commit's COMMIT, before they answer or count (a
sitecustomize on their PYTHONPATH, tests/support/kill_after_commit/, with OE_KILL_AFTER_COMMIT
the chance per committed batch): the moment an event emitted after the commit was lost for good.
The checkouts reserve, then claim, release or walk away (the hold expires, swept by the worker),
or buy directly, every write retried with its Idempotency-Key; at the end every deal is bought
out, so each one's last take sells it out. One webhook subscribes to every event; its receiver
answers some attempts 500 (retried after the back-off).

Then, once every hold has ended and the relay and the deliveries are done, it counts:

* every committed change (the purchases' rows in SQL: reserves, claims, direct purchases,
  releases, expiries; and each deal's final sell-out) has its event row, exactly one per change,
  and no event exists for a change that did not commit;
* every event was numbered by the relay and reached the receiver at least once (deduplicated on
  `webhook-id`, each delivery verified with the `standardwebhooks` library), none lost;
* each deal's events reached the receiver in their order.

`-s` prints the counts; the assertion messages carry them too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import requests
from standardwebhooks.webhooks import Webhook

from app.core import events as ev
from tests.support.receiver import Receiver
from tests.support.servers import ROOT, require_postgres, wait_for
from tests.support.stack import Stack

LOAD_SECONDS = float(os.environ.get("OUTBOX_FAULT_SECONDS", "20"))
CLIENTS = 10
DEALS = 3
QUANTITY = 80
TTL = 2
#: The chance that a web worker dies right after a committed batch.
KILL_AFTER_COMMIT = "0.05"
STATE_EVENTS = {
    "reserved": ev.PURCHASE_RESERVED,
    "fulfilled": ev.PURCHASE_FULFILLED,
    "released": ev.PURCHASE_RELEASED,
    "expired": ev.PURCHASE_EXPIRED,
}


def sql(url: str, query: str, *args):
    with psycopg.connect(url, connect_timeout=5) as connection:
        return connection.execute(query, args).fetchall()


def write(session, method: str, url: str, body: dict, deadline: float):
    """One logical write, sent again with its Idempotency-Key until it gets an answer."""
    key = uuid.uuid4().hex
    while time.monotonic() < deadline:
        try:
            response = session.request(method, url, json=body, headers={"Idempotency-Key": key}, timeout=10)
        except requests.RequestException:
            time.sleep(0.05)
            continue
        if response.status_code >= 500 or (
            response.status_code == 409 and response.json().get("error") == "request_in_progress"
        ):
            time.sleep(0.1)
            continue
        return response
    return None


def checkout(stack: Stack, deals: list[int], stop: threading.Event, seed: int, answered: Counter) -> None:
    rng = random.Random(seed)
    session = stack.session()
    base = stack.url
    while not stop.is_set():
        deal = rng.choice(deals)
        deadline = time.monotonic() + 20
        if rng.random() < 0.2:
            body = {
                "deal_id": deal,
                "quantity": 1,
                "user_id": f"u{seed}",
                "credit_card_id": "c",
                "expected_price_per_unit": 100,
            }
            response = write(session, "POST", f"{base}/v1/purchases", body, deadline)
            answered["create" if response is not None and response.status_code == 200 else "refused"] += 1
            continue
        held = write(
            session,
            "POST",
            f"{base}/v1/purchases/reserve",
            {"deal_id": deal, "num_bought": rng.randint(1, 2)},
            deadline,
        )
        if held is None or held.status_code != 200:
            answered["refused"] += 1
            continue
        answered["reserve"] += 1
        token = held.json()["purchase"]["id"]
        roll = rng.random()
        if roll < 0.5:
            done = write(session, "PUT", f"{base}/v1/purchases/{token}/claim", {"user_id": f"u{seed}"}, deadline)
            answered["claim" if done is not None and done.status_code == 200 else "refused"] += 1
        elif roll < 0.75:
            done = write(session, "PUT", f"{base}/v1/purchases/{token}/release", {}, deadline)
            answered["release" if done is not None and done.status_code == 200 else "refused"] += 1
        # else: walks away; the hold expires


def kill_web_workers(stack: Stack, stop: threading.Event, killed: Counter) -> None:
    rng = random.Random(7)
    while not stop.wait(rng.uniform(0.8, 1.6)):
        pids = stack.web_worker_pids()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                killed["web worker (SIGKILL from outside)"] += 1
            except ProcessLookupError:
                pass


def test_no_event_is_lost_when_processes_die_after_their_commits(tmp_path):
    require_postgres()
    kill_log = tmp_path / "killed-after-commit"
    stack = Stack(
        web_concurrency=3,
        ttl_seconds=TTL,
        sweep_seconds=1,
        extra_env={
            "PYTHONPATH": str(ROOT / "tests" / "support" / "kill_after_commit"),
            "OE_KILL_AFTER_COMMIT": KILL_AFTER_COMMIT,
            "OE_KILL_LOG": str(kill_log),
            "RATE_LIMIT_WRITES": "off",
            "WEBHOOK_ALLOW_PRIVATE_URLS": "true",  # the receiver runs on 127.0.0.1
            "WEBHOOK_TIMEOUT_SECONDS": "2",
            "WEBHOOK_RETRY_BASE_SECONDS": "1",
            "RELAY_INTERVAL_MS": "100",
            "RECONCILE_INTERVAL_SECONDS": "2",
            "GUNICORN_TIMEOUT": "15",
        },
    )
    with Receiver(statuses=[500, 200, 200, 500, 500]) as receiver:
        try:
            stack.start(workers=2)
            run(stack, receiver, kill_log)
        finally:
            stack.stop()


def run(stack: Stack, receiver: Receiver, kill_log: Path) -> None:
    db = stack.database.url
    api = stack.session()
    hook = api.post(f"{stack.url}/v1/webhooks", json={"url": receiver.url, "events": list(ev.WEBHOOK_EVENTS)})
    assert hook.status_code == 201, hook.text
    secret, hook_id = hook.json()["webhook"]["secret"], hook.json()["webhook"]["id"]
    deals = [
        api.post(
            f"{stack.url}/v1/deals", json={"title": f"Outbox {i}", "price_per_unit": 100, "quantity": QUANTITY}
        ).json()["deal"]["id"]
        for i in range(DEALS)
    ]

    stop, answered, killed = threading.Event(), Counter(), Counter()
    clients = [threading.Thread(target=checkout, args=(stack, deals, stop, i, answered)) for i in range(CLIENTS)]
    killer = threading.Thread(target=kill_web_workers, args=(stack, stop, killed))
    for thread in [*clients, killer]:
        thread.start()
    time.sleep(LOAD_SECONDS / 2)
    stack.workers[0].kill()  # the relay and the deliveries run on: in the other worker
    killed["RQ worker (SIGKILL)"] += 1
    stack.workers[0].start()
    time.sleep(LOAD_SECONDS / 2)
    stop.set()
    for thread in [*clients, killer]:
        thread.join(60)
    stack.wait_ready(60)

    # Every deal bought out: its last take sells it out (once the holds have ended and returned).
    def bought_out() -> bool:
        for deal in deals:
            while True:
                body = {
                    "deal_id": deal,
                    "quantity": 1,
                    "user_id": "last",
                    "credit_card_id": "c",
                    "expected_price_per_unit": 100,
                }
                response = write(api, "POST", f"{stack.url}/v1/purchases", body, time.monotonic() + 20)
                if response is None or response.status_code != 200:
                    break
        held = sql(db, "SELECT count(*) FROM purchases WHERE fulfillment_state = 'reserved'")[0][0]
        sold = sql(db, "SELECT coalesce(sum(quantity), 0) FROM purchase_items")[0][0]
        return held == 0 and sold == DEALS * QUANTITY

    wait_for(bought_out, 90, "every deal bought out, every hold ended and swept", interval=1)

    # The relay numbered every event and every delivery is done.
    def relayed() -> bool:
        left = sql(
            db,
            "SELECT (SELECT count(*) FROM events WHERE seq IS NULL), "
            "(SELECT count(*) FROM webhook_deliveries WHERE state = 'pending')",
        )[0]
        return left == (0, 0)

    wait_for(relayed, 180, "the relay and the deliveries to finish", interval=0.5)
    kills_after_commit = len(kill_log.read_text().splitlines()) if kill_log.exists() else 0
    killed["web worker (right after a commit)"] = kills_after_commit

    # -- the counts ---------------------------------------------------------------------------------
    rows = sql(
        db, "SELECT token, deal_id, fulfillment_state, reserved_at IS NOT NULL FROM purchases WHERE source = 'v1'"
    )
    events = sql(db, "SELECT seq, type, deal_id, data FROM events ORDER BY seq")
    changes = Counter()
    for _, _, state, reserved in rows:
        changes["reserve"] += reserved
        changes[
            {"fulfilled": "claim" if reserved else "create", "released": "release", "expired": "expiry"}.get(
                state, "none"
            )
        ] += 1
    changes["sell-out (final)"] = DEALS
    committed = sum(n for kind, n in changes.items() if kind != "none")
    by_type = Counter(kind for _, kind, _, _ in events)

    # Each change's event, exactly once; no event without its change.
    per_token: dict[str, Counter] = defaultdict(Counter)
    for _, kind, _, data in events:
        if kind.startswith("purchase."):
            per_token[json.loads(data)["purchase"]["id"]][kind] += 1
    tokens = {token for token, *_ in rows}
    missing = []
    for token, _, state, reserved in rows:
        kinds = per_token.get(token, Counter())
        if kinds[STATE_EVENTS[state]] != 1 or (reserved and kinds[ev.PURCHASE_RESERVED] != 1):
            missing.append((token, state, dict(kinds)))
    orphans = [token for token in per_token if token not in tokens]
    twice = [(token, dict(kinds)) for token, kinds in per_token.items() if max(kinds.values()) > 1]
    sold_out_deals = {deal for _, kind, deal, _ in events if kind == ev.DEAL_SOLD_OUT}

    # Every event at the receiver, at least once; verified; in order per deal.
    hook_lib = Webhook(secret)
    first_seen: dict[str, int] = {}
    order: dict[int, list[int]] = defaultdict(list)
    for received in receiver.received:
        if not 200 <= received.answered < 300:
            continue
        payload = hook_lib.verify(received.body, received.headers)
        seq = int(payload["id"][4:])
        assert received.headers["webhook-id"] == f"dlv_{seq}_{hook_id}"
        if received.headers["webhook-id"] in first_seen:
            continue
        first_seen[received.headers["webhook-id"]] = seq
        data = payload["data"]
        deal = data["deal"]["id"] if "deal" in data else data.get("purchase", {}).get("deal_id", 0)
        order[deal].append(seq)
    delivered = set(first_seen.values())
    lost = sorted({seq for seq, *_ in events} - delivered)
    accepted = sum(200 <= r.answered < 300 for r in receiver.received)
    out_of_order = {deal: seqs for deal, seqs in order.items() if seqs != sorted(seqs)}

    summary = (
        f"changes committed {committed} ({', '.join(f'{k} {v}' for k, v in sorted(changes.items()) if k != 'none')}); "
        f"events written {len(events)} ({', '.join(f'{k} {v}' for k, v in sorted(by_type.items()))}); "
        f"events relayed {sum(1 for seq, *_ in events if seq is not None)}, delivered {len(delivered)} "
        f"({accepted} accepted deliveries, {accepted - len(delivered)} duplicates, "
        f"{len(receiver.received) - accepted} attempts answered 500), lost {len(lost)}; "
        f"processes killed {dict(killed)}; answers {dict(answered)}"
    )
    print(f"\noutbox under faults: {summary}")
    assert kills_after_commit > 0, f"no web worker died right after a commit: {summary}"
    assert not missing, f"changes without their event: {missing[:5]}; {summary}"
    assert not orphans and not twice, f"events without their change {orphans[:5]}, or twice {twice[:5]}; {summary}"
    assert sold_out_deals >= set(deals), (
        f"deals sold out without deal.sold_out: {set(deals) - sold_out_deals}; {summary}"
    )
    assert lost == [], f"events never delivered: {lost[:20]}; {summary}"
    assert not out_of_order, f"deliveries out of order per deal: {out_of_order}; {summary}"
