"""The outbox's relay and deliveries, on the services (real Redis and SQL, the RQ worker class,
no Flask): events numbered by one relay at a time, in the order they became visible; delivered
lane by lane (one webhook, one deal), in order, at least once, with one webhook-id per event and
webhook however often it is sent."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from rq import Queue
from sqlalchemy import select

from app.core import events as ev
from app.store import outbox as store
from app.store.models import StoredEvent, WebhookDelivery, utcnow
from app.store.queue import QUEUE_NAME
from app.webhooks import delivery
from app.webhooks.outbox import event_id, message_id
from tests.support.receiver import Receiver


@pytest.fixture
def app_config(app_config):
    return {
        **app_config,
        "WEBHOOK_ALLOW_PRIVATE_URLS": True,  # the receivers run on 127.0.0.1
        "WEBHOOK_RETRY_BASE_SECONDS": 1,
        "WEBHOOK_TIMEOUT_SECONDS": 2,
    }


@pytest.fixture
def queue(services):
    queue = Queue(QUEUE_NAME, connection=services.queue.connection())
    queue.empty()
    return queue


@pytest.fixture
def work(services, queue, monkeypatch):
    """Relay rounds and every job they (and the jobs) enqueue, until nothing is left to do now."""
    from workers import jobs
    from workers.__main__ import Worker

    monkeypatch.setattr(jobs, "SERVICES", services)

    def run() -> None:
        for _ in range(100):
            report = services.outbox.relay()
            if not (report.relayed or report.enqueued or len(queue)):
                return
            Worker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")

    return run


def stored(services) -> list:
    """Every event row, in insert order: (type, deal_id, data, seq)."""
    with services.db.read() as session:
        rows = session.execute(
            select(StoredEvent.type, StoredEvent.deal_id, StoredEvent.data, StoredEvent.seq).order_by(StoredEvent.id)
        ).all()
    return [(kind, deal, json.loads(data), seq) for kind, deal, data, seq in rows]


def bodies(receiver) -> list[dict]:
    return [json.loads(r.body) for r in receiver.received]


# -- the relay -------------------------------------------------------------------------------------


def test_the_relay_numbers_events_and_makes_the_deliveries_asked_for(shop, services, account, other_account):
    deal = shop.create_deal(quantity=5)["id"]
    services.webhooks.register(account[0], "http://127.0.0.1:9/a", [ev.PURCHASE_FULFILLED, ev.PURCHASE_RESERVED])
    services.webhooks.register(account[0], "http://127.0.0.1:9/b", [ev.DEAL_SOLD_OUT])
    services.webhooks.register(other_account, "http://127.0.0.1:9/c", list(ev.WEBHOOK_EVENTS))
    held = services.purchases.reserve(account[0], deal, 5)  # reserved + sold out
    services.purchases.claim(account[0], held.token, user_id="ann")
    report = services.outbox.relay()
    assert (report.relayed, report.deliveries) == (3, 3)
    assert [seq for *_, seq in stored(services)] == [1, 2, 3]
    page, more = services.outbox.page(account[0])
    assert [json.loads(body)["id"] for body in page] == ["evt_1", "evt_2", "evt_3"] and not more
    assert services.outbox.page(account[0], after=2)[0] == page[2:]
    assert services.outbox.page(other_account)[0] == []
    assert services.outbox.relay().relayed == 0  # each event once


@pytest.fixture
def other_account(services) -> int:
    ref, _ = services.accounts.create("rival")
    return ref.id


def test_an_event_that_commits_late_is_numbered_after_the_ones_relayed_before(services, account, backend):
    """A transaction that inserted its event first but commits last: its row's id is lower,
    but a reader that already paged past the others still gets it, after them."""
    if backend == "sqlite":
        pytest.skip("SQLite runs one write transaction at a time: no commit can come late")

    def row(kind: str) -> store.EventRow:
        return store.EventRow(account[0], 1, kind, "{}", None, utcnow())

    late = services.db.engine.connect()
    transaction = late.begin()
    store.insert_events(late, [row("late")])
    with services.db.begin() as connection:
        store.insert_events(connection, [row("early")])
    services.outbox.relay()
    first, _ = services.outbox.page(account[0])
    assert [json.loads(body)["type"] for body in first] == ["early"]
    transaction.commit()
    late.close()
    services.outbox.relay()
    after, _ = services.outbox.page(account[0], after=int(json.loads(first[-1])["id"][4:]))
    assert [json.loads(body)["type"] for body in after] == ["late"]


def test_relays_running_at_once_number_every_event_once(shop, services, account):
    deal = shop.create_deal(quantity=10_000)["id"]
    services.webhooks.register(account[0], "http://127.0.0.1:9/a", [ev.PURCHASE_RESERVED])
    stop = threading.Event()
    rounds = Counter()

    def relay():
        while not stop.is_set():
            report = services.outbox.relay()
            rounds["busy" if report.busy else "ran"] += 1
            stop.wait(0.002)

    relays = [threading.Thread(target=relay) for _ in range(3)]
    for thread in relays:
        thread.start()
    writers = [
        threading.Thread(target=lambda: [services.purchases.reserve(account[0], deal, 1) for _ in range(40)])
        for _ in range(4)
    ]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in relays:
        thread.join()
    services.outbox.relay()
    seqs = [seq for *_, seq in stored(services)]
    assert sorted(seqs) == list(range(1, 161))
    with services.db.read() as session:
        deliveries = session.scalars(select(WebhookDelivery.event_id)).all()
    assert len(deliveries) == len(set(deliveries)) == 160
    assert rounds["ran"] > 0


# -- deliveries ------------------------------------------------------------------------------------


def test_a_lane_waits_for_its_failing_head_and_other_lanes_do_not(shop, services, account, work, clock):
    first, second = (shop.create_deal(quantity=10)["id"] for _ in range(2))
    with Receiver(statuses=[500]) as receiver:
        services.webhooks.register(account[0], receiver.url, [ev.PURCHASE_RESERVED])
        made = [services.purchases.reserve(account[0], first, 1).token for _ in range(3)]
        other = services.purchases.reserve(account[0], second, 1).token
        work()
        sent = [b["data"]["purchase"]["id"] for b in bodies(receiver)]
        assert sent == [made[0], other]  # the first deal's head failed; its lane waits
        clock.advance(0.5)
        work()
        assert len(receiver.received) == 2  # still backing off (1 s)
        clock.advance(1)
        work()
    sent = [b["data"]["purchase"]["id"] for b in bodies(receiver)]
    assert sent == [made[0], other, *made]  # then the whole lane, in order
    retried = [r for r in receiver.received if json.loads(r.body)["data"]["purchase"]["id"] == made[0]]
    assert [r.answered for r in retried] == [500, 200]
    assert [r.headers["X-OfferEngine-Attempt"] for r in retried] == ["1", "2"]
    assert retried[0].headers["webhook-id"] == retried[1].headers["webhook-id"]
    assert retried[0].body == retried[1].body


def test_a_delivery_whose_job_died_is_sent_again_after_its_lease(shop, services, account, work, queue, clock):
    deal = shop.create_deal(quantity=10)["id"]
    with Receiver() as receiver:
        hook, _ = services.webhooks.register(account[0], receiver.url, [ev.PURCHASE_RESERVED])
        services.purchases.reserve(account[0], deal, 1)
        report = services.outbox.relay()
        assert report.enqueued == 1
        [job] = queue.jobs
        lost_owner = job.args[1]
        queue.empty()  # the job is lost: its worker died with it, or the queue's Redis restarted
        assert services.outbox.relay().enqueued == 0  # its lease holds
        clock.advance(61)
        work()
        assert len(receiver.received) == 1
        # The lost job, should it run after all, finds its lease gone and sends nothing.
        assert delivery.deliver(services.outbox, services.webhooks, job.args[0], lost_owner) == {
            "skipped": "not leased to this job"
        }
    [received] = receiver.received
    assert received.headers["webhook-id"] == message_id(1, hook.id) == "dlv_1_" + str(hook.id)


def test_a_job_killed_after_its_post_means_the_receiver_gets_it_twice_with_one_webhook_id(
    shop, services, account, work, clock, monkeypatch
):
    deal = shop.create_deal(quantity=10)["id"]
    original = delivery._record
    kills = []

    def killed_once(*args, **kwargs):
        if not kills:
            kills.append(True)
            raise RuntimeError("killed before recording the outcome")
        return original(*args, **kwargs)

    monkeypatch.setattr(delivery, "_record", killed_once)
    with Receiver() as receiver:
        services.webhooks.register(account[0], receiver.url, [ev.PURCHASE_RESERVED])
        services.purchases.reserve(account[0], deal, 1)
        work()
        assert len(receiver.received) == 1
        clock.advance(services.outbox.retry.lease_seconds + 1)
        work()
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body  # a receiver deduplicating on webhook-id handles it once
    assert json.loads(first.body)["id"] == event_id(1)


def test_purge_forgets_old_events_but_never_the_newest(shop, services, account, clock):
    deal = shop.create_deal(quantity=10)["id"]
    for _ in range(3):
        services.purchases.reserve(account[0], deal, 1)
    services.outbox.relay()
    clock.advance(31 * 24 * 3600)
    assert services.outbox.purge() == 2
    assert [seq for *_, seq in stored(services)] == [3]
    services.purchases.release(account[0], services.purchases.reserve(account[0], deal, 1).token)
    services.outbox.relay()
    assert [seq for *_, seq in stored(services)] == [3, 4, 5]  # numbers go on, never reused
