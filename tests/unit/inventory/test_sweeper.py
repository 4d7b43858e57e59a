"""The sweep: ended holds go back to stock exactly once, found through the expiry index."""

from __future__ import annotations

import threading
from datetime import timedelta

from rq import Queue, SimpleWorker
from sqlalchemy import select

from app.core.timeutil import to_ms
from app.inventory import keys as K
from app.store.models import Purchase, utcnow


def reserve_at(services, account_id, deal_id, units, seconds_ago):
    return services.purchases.reserve(account_id, deal_id, units, now=utcnow() - timedelta(seconds=seconds_ago))


def test_sweep_returns_ended_holds_and_marks_them_expired(shop, services, account):
    deal = shop.create_deal(quantity=10)
    still = shop.reserved(deal["id"], 2)
    # (made after the live one: a reserve returns the deal's ended holds itself)
    ended = reserve_at(services, account[0], deal["id"], 3, 301)
    report = services.sweeper.sweep()
    assert (report.deals, report.holds, report.units) == (1, 1, 3)
    assert [token for token, _ in report.expired_records] == [ended.token]
    with services.db.read() as session:
        states = dict(session.execute(select(Purchase.token, Purchase.fulfillment_state)).all())
    assert states == {ended.token: "expired", still["id"]: "reserved"}
    assert shop.deal(deal["id"])["available"] == 8
    again = services.sweeper.sweep()
    assert (again.holds, again.units, again.expired_records) == (0, 0, [])
    assert shop.deal(deal["id"])["available"] == 8


def test_sweep_visits_only_deals_with_ended_holds(shop, services, account):
    quiet = [shop.create_deal(quantity=5)["id"] for _ in range(5)]
    for deal_id in quiet:
        shop.reserved(deal_id, 1)
    busy = shop.create_deal(quantity=50)["id"]
    for _ in range(20):
        reserve_at(services, account[0], busy, 1, 301)
    due = services.stock.due(to_ms(utcnow()), 100)
    assert [deal_id for deal_id, _ in due] == [busy]
    report = services.sweeper.sweep()
    assert (report.deals, report.holds) == (1, 20)
    assert services.redis.zscore(K.SWEEP_INDEX, str(busy)) is None
    for deal_id in quiet:
        assert services.redis.zscore(K.SWEEP_INDEX, str(deal_id)) is not None


def test_two_sweepers_at_once_return_each_hold_once(shop, services, account):
    deal = shop.create_deal(quantity=200)
    for _ in range(100):
        reserve_at(services, account[0], deal["id"], 2, 301)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(services.sweeper.sweep())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.holds for r in reports) == 100
    assert sum(r.units for r in reports) == 200
    assert sum(len(r.expired_records) for r in reports) == 100
    assert shop.deal(deal["id"])["available"] == 200


def test_the_rq_job_sweeps(shop, services, account, redis_url, monkeypatch):
    import redis

    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    deal = shop.create_deal(quantity=4)
    reserve_at(services, account[0], deal["id"], 4, 301)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("offer-engine-test", connection=connection)
    job = queue.enqueue(jobs.sweep)
    SimpleWorker([queue], connection=connection).work(burst=True)
    assert job.return_value() == {"holds": 1, "units": 4, "records": 1, "sealed": 0, "offers": 0}
    assert shop.deal(deal["id"])["available"] == 4


def test_maintenance_reindexes_a_hold_whose_index_write_was_lost(shop, services, account, monkeypatch):
    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    deal = shop.create_deal(quantity=4)
    reserve_at(services, account[0], deal["id"], 4, 301)
    services.redis.delete(K.SWEEP_INDEX)  # as if the process died right after its script
    assert services.sweeper.sweep().holds == 0
    assert services.stock.repair_index() == 1
    assert services.sweeper.sweep().holds == 1
    assert shop.deal(deal["id"])["available"] == 4


def test_maintenance_job_reindexes_and_reconciles(shop, services, account, monkeypatch):
    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    deal = shop.create_deal(quantity=4)
    shop.reserved(deal["id"], 1)
    services.redis.delete(K.SWEEP_INDEX)
    services.redis.hincrby(f"oe:{{deal:{deal['id']}}}:inv", "available", -2)  # leaked units
    services.redis.hincrby(f"oe:{{deal:{deal['id']}}}:inv", "sold", 2)
    result = jobs.maintain()
    assert result["indexed"] == 1 and result["repaired"] == [deal["id"]]
    assert shop.deal(deal["id"])["available"] == 3


def test_without_any_worker_a_reserve_gets_the_units_of_ended_holds(shop, services, account):
    deal = shop.create_deal(quantity=2)
    reserve_at(services, account[0], deal["id"], 2, 301)  # ended; no sweep ever runs here
    assert services.redis.zcard(f"oe:{{deal:{deal['id']}}}:holds") == 1
    shop.reserved(deal["id"], 2)
    shown = shop.deal(deal["id"])
    assert (shown["available"], shown["reserved"]) == (0, 2)
