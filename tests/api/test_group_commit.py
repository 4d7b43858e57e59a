"""Group commit: concurrent reservations share transactions, and each still gets exactly the
outcome a transaction of its own would have given it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from app.inventory.errors import SoldOut
from app.store.models import IdempotencyRecord, Purchase


def count(services, model=Purchase) -> int:
    with services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_concurrent_reservations_share_commits(api, services, account):
    deal = api.create_deal(quantity=1000)["id"]
    committer = services.purchases.committer
    before_batches, before_rows = committer.batches, committer.rows
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: services.purchases.reserve(account[0], deal, 1), range(200)))
    assert committer.rows - before_rows == 200
    assert committer.batches - before_batches < 200  # some commits carried several rows
    assert count(services) == 200
    assert api.deal(deal)["reserved"] == 200
    assert services.rebuilder.check(deal) == []


def test_a_reservation_whose_deal_was_rebuilt_meanwhile_takes_its_units_again(api, services, account, monkeypatch):
    deal = api.create_deal(quantity=3)["id"]
    original = services.stock.reserve
    rebuilt = []

    def reserve_then_rebuild(*args, **kwargs):
        take = original(*args, **kwargs)
        if not rebuilt:  # the first take is lost to a rebuild before its commit
            rebuilt.append(True)
            services.rebuilder.rebuild(deal, force=True)
        return take

    monkeypatch.setattr(services.stock, "reserve", reserve_then_rebuild)
    purchase = services.purchases.reserve(account[0], deal, 2)
    assert rebuilt and purchase.units == 2
    shown = api.deal(deal)
    assert (shown["available"], shown["reserved"]) == (1, 2)
    assert count(services) == 1


def test_one_bad_row_fails_alone(api, services, account):
    """Two requests with one Idempotency-Key in the same batch: one commits, the other is told
    to replay it; the batch's other rows commit."""
    from app.idempotency import Idempotency

    deal = api.create_deal(quantity=10)["id"]
    idem = Idempotency(account[0], "same", "f", lambda p: (200, "{}"))
    barrier = threading.Barrier(6)
    outcomes = []

    def reserve(i):
        barrier.wait()
        try:
            services.purchases.reserve(account[0], deal, 1, idempotency=idem if i < 2 else None)
            outcomes.append("ok")
        except Exception as error:  # IdempotencyReplay for the loser
            outcomes.append(type(error).__name__)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["IdempotencyReplay"] + ["ok"] * 5
    assert count(services) == 5 and count(services, IdempotencyRecord) == 1
    assert api.deal(deal)["reserved"] == 5  # the loser's take was given back


def test_sold_out_still_answers_without_touching_the_committer(api, services, account):
    deal = api.create_deal(quantity=1)["id"]
    services.purchases.reserve(account[0], deal, 1)
    rows = services.purchases.committer.rows
    with pytest.raises(SoldOut):
        services.purchases.reserve(account[0], deal, 1)
    assert services.purchases.committer.rows == rows


def test_a_batch_with_a_take_from_before_a_rebuild_commits_only_the_fresh_row(api, services, account):
    """A batch of one deal is written before its generation is checked (under the deal's fence,
    before the commit): when one of its takes predates a rebuild, the batch is rolled back and
    only the fresh row is written; the stale one is told to take its units again."""
    from datetime import UTC, datetime, timedelta

    from app.inventory.errors import Stale
    from app.inventory.group_commit import Pending
    from app.inventory.purchases import _v1_row, new_token
    from app.timeutil import to_ms

    deal = api.create_deal(quantity=5)["id"]
    now = datetime.now(UTC)

    def reservation() -> Pending:
        token = new_token()
        ends_ms = to_ms(now) + 300_000
        take = services.purchases.with_loaded(
            deal, lambda: services.stock.reserve(deal, account[0], token, 1, to_ms(now), ends_ms)
        )
        values = _v1_row(token, account[0], deal, 1, take, now) | {
            "fulfillment_state": "reserved",
            "payment_state": "pending",
            "reserved_at": now,
            "reserved_until": now + timedelta(seconds=300),
        }
        return Pending(values, take)

    stale = reservation()
    services.rebuilder.rebuild(deal, force=True)  # from SQL, where the stale take has no row
    fresh = reservation()
    [(_, stale_outcome), (_, fresh_outcome)] = services.purchases.committer._commit_together([stale, fresh])
    assert isinstance(stale_outcome, Stale)
    assert fresh_outcome.token == fresh.values["token"]
    assert count(services) == 1
    shown = api.deal(deal)
    assert (shown["available"], shown["reserved"]) == (4, 1)
    assert services.rebuilder.check(deal) == []


def test_a_batch_writes_the_rows_one_at_a_time_would_and_holds_the_deals_fence(api, services, account):
    """rows.insert_purchases (one unnest statement on PostgreSQL) against rows.insert_purchase,
    row by row: the same columns read back, NULLs and instants included; and the fenced form
    holds the deal's shared fence until the commit."""
    from datetime import UTC, datetime, timedelta

    from app.store import purchase_rows as rows
    from tests.api.test_fences import a_rebuild_could_fence

    deal = api.create_deal(quantity=10)["id"]
    now = datetime(2026, 11, 24, 9, 30, 15, 123000, tzinfo=UTC)

    def values(token: str, price: int | None) -> dict:
        return {
            "token": token,
            "account_id": account[0],
            "deal_id": deal,
            "source": "v1",
            "units": 2,
            "price_per_unit": price,
            "currency": "USD",
            "created_at": now,
            "fulfillment_state": "reserved",
            "payment_state": "pending",
            "reserved_at": now,
            "reserved_until": now + timedelta(seconds=300),
        }

    batch = [values(f"batch-{i}", None if i == 1 else 100 + i) for i in range(3)]
    alone = [values(f"alone-{i}", None if i == 1 else 100 + i) for i in range(3)]
    fence = services.db.shared_fence(deal)
    with services.db.begin() as connection:
        rows.insert_purchases(connection, batch, fence)
        fenced_until_commit = not a_rebuild_could_fence(services, deal)
    with services.db.begin() as connection:
        for row in alone:
            rows.insert_purchase(connection, row)
    assert fenced_until_commit and a_rebuild_could_fence(services, deal)

    def read(token: str) -> dict:
        with services.db.read() as session:
            purchase = session.scalar(select(Purchase).where(Purchase.token == token))
            return {name: getattr(purchase, name) for name in batch[0] if name != "token"}

    for i in range(3):
        assert read(f"batch-{i}") == read(f"alone-{i}") == {k: v for k, v in batch[i].items() if k != "token"}
