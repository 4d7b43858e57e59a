"""Group commit: concurrent reservations share transactions, and each still gets exactly the
outcome a transaction of its own would have given it."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, text

from app.core.idempotency import Keyed
from app.core.timeutil import from_ms, to_ms
from app.inventory.errors import Skipped, SoldOut, Stale
from app.inventory.group_commit import Committed, Pending
from app.inventory.purchases import _fulfil, _line, new_coupon_codes, new_record, new_token
from app.inventory.stock import Order
from app.inventory.writes import CartStart, Fulfilment, Reservation
from app.store import cart_rows
from app.store import purchase_rows as rows
from app.store.batched import Answer
from app.store.cart_rows import CartRecord
from app.store.db import FENCE_NAMESPACE, fence_key
from app.store.models import IdempotencyRecord, Purchase
from app.store.purchase_rows import PurchaseRecord
from tests.support.servers import wait_for


def a_rebuild_could_fence(services, deal_id: int) -> bool:
    """Whether a rebuild could take the deal's exclusive fence right now, tried without waiting
    from a connection of its own."""
    db = services.db
    if db.is_sqlite:  # the fence is the write lock
        probe = sqlite3.connect(db.engine.url.database, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            probe.close()
    with db.engine.connect() as connection:
        free = connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:ns, :key)"), {"ns": FENCE_NAMESPACE, "key": fence_key(deal_id)}
        ).scalar_one()
        connection.rollback()
        return free


def count(services, model=Purchase) -> int:
    with services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_concurrent_reservations_share_commits(shop, services, account):
    deal = shop.create_deal(quantity=1000)["id"]
    committer = services.protocol.committer
    before_batches, before_rows = committer.batches, committer.rows
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: services.purchases.reserve(account[0], deal, 1), range(200)))
    assert committer.rows - before_rows == 200
    assert committer.batches - before_batches < 200  # some commits carried several rows
    assert count(services) == 200
    assert shop.deal(deal)["reserved"] == 200
    assert services.rebuilder.check(deal) == []


def test_a_reservation_whose_deal_was_rebuilt_meanwhile_takes_its_units_again(shop, services, account, monkeypatch):
    deal = shop.create_deal(quantity=3)["id"]
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
    shown = shop.deal(deal)
    assert (shown["available"], shown["reserved"]) == (1, 2)
    assert count(services) == 1


def test_two_requests_with_one_key_at_once_take_once(shop, services, account):
    """Two requests with one Idempotency-Key among others: one commits, the other is told it is
    still running (or, once the first committed, gets its answer); the others commit."""
    deal = shop.create_deal(quantity=10)["id"]
    keyed = Keyed(account[0], "same", "f", lambda p: (200, "{}"))
    barrier = threading.Barrier(6)
    outcomes = []

    def reserve(i):
        barrier.wait()
        try:
            services.purchases.reserve(account[0], deal, 1, keyed=keyed if i < 2 else None)
            outcomes.append("ok")
        except Exception as error:  # RequestInProgress, or Replay, for the second
            outcomes.append("second" if type(error).__name__ in ("RequestInProgress", "Replay") else repr(error))

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 5 + ["second"]
    assert count(services) == 5 and count(services, IdempotencyRecord) == 1
    assert shop.deal(deal)["reserved"] == 5


def test_sold_out_still_answers_without_touching_the_committer(shop, services, account):
    deal = shop.create_deal(quantity=1)["id"]
    services.purchases.reserve(account[0], deal, 1)
    written = services.protocol.committer.rows
    with pytest.raises(SoldOut):
        services.purchases.reserve(account[0], deal, 1)
    assert services.protocol.committer.rows == written


def test_a_batch_with_a_take_from_before_a_rebuild_commits_only_the_fresh_row(shop, services, account):
    """A batch of one deal is written before its generation is checked (under the deal's fence,
    before the commit): when one of its takes predates a rebuild, the batch is rolled back and
    only the fresh row is written; the stale one is told to take its units again."""
    deal = shop.create_deal(quantity=5)["id"]
    now = from_ms(to_ms(datetime.now(UTC)))

    def reservation() -> Pending:
        token = new_token()
        ends_ms = to_ms(now) + 300_000
        take = services.protocol.take(
            deal, lambda: services.stock.reserve(Order(deal, account[0], token, "n-" + token, 1), to_ms(now), ends_ms)
        )
        record = PurchaseRecord(
            token=token,
            account_id=account[0],
            deal_id=deal,
            units=1,
            price_per_unit=take.price,
            currency=take.currency,
            reserved_at=now,
            reserved_until=from_ms(ends_ms),
            created_at=now,
        )
        return Pending(Reservation(record), [take])

    stale = reservation()
    services.rebuilder.rebuild(deal, force=True)  # from SQL, where the stale take has no row
    fresh = reservation()
    stale_outcome, fresh_outcome = services.protocol.committer._commit([stale, fresh])
    assert isinstance(stale_outcome, Stale)
    assert isinstance(fresh_outcome, Committed) and fresh_outcome.answer.token == fresh.write.record.token
    assert count(services) == 1
    shown = shop.deal(deal)
    assert (shown["available"], shown["reserved"]) == (4, 1)
    assert services.rebuilder.check(deal) == []


def _claim_pending(services, purchase, at: datetime) -> Pending:
    """The write a claim of `purchase` submits, with its take made in Redis now (as
    PurchaseService._claim builds it)."""
    order = Order(purchase.deal_id, purchase.account_id, purchase.token, "n-" + new_token(), purchase.units, "buyer")
    take = services.protocol.take(purchase.deal_id, lambda: services.stock.claim(order, to_ms(at)))
    record = replace(purchase, units=take.units)
    _fulfil(record, "buyer", None, at)
    record.coupons = new_coupon_codes(record.units)
    line = _line(record, take)
    return Pending(Fulfilment(record, "reserved", purchase.reserved_until, line, record.coupons), [take])


def _reservation_pending(services, deal: int, account_id: int, at: datetime) -> Pending:
    token = new_token()
    ends_ms = to_ms(at) + 300_000
    order = Order(deal, account_id, token, "n-" + token, 1)
    take = services.protocol.take(deal, lambda: services.stock.reserve(order, to_ms(at), ends_ms))
    return Pending(Reservation(new_record(take, at, reserved_at=at, reserved_until=from_ms(ends_ms))), [take])


def _commit_watched(services, monkeypatch, batch: list[Pending], deals: list[int]):
    """Commit `batch` as one; returns its outcomes, whether a rebuild of each of `deals` was
    fenced off during its transaction, and the SQL statements it sent."""
    fenced, statements = [], []

    class Probe:
        def at(self, step, **context):
            if step == "in_transaction":
                fenced.append([not a_rebuild_could_fence(services, deal) for deal in deals])

    def note(_connection, _cursor, statement, *_):
        statements.append(statement)

    monkeypatch.setattr(services.protocol.committer, "hooks", Probe())
    event.listen(services.db.engine, "before_cursor_execute", note)
    try:
        return services.protocol.committer._commit(batch), fenced, statements
    finally:
        event.remove(services.db.engine, "before_cursor_execute", note)


def test_a_checkouts_batch_of_reserves_and_claims_commits_under_the_deals_fence_in_its_own_statements(
    shop, services, account, monkeypatch
):
    """A batch of one deal's reservations and claims (a checkout's) holds the deal's fence
    until its commit, taken by its writes' own statements (no statement of its own), and
    commits both: the claimed purchase is sold with its coupon, the new one held."""
    deal = shop.create_deal(quantity=5)["id"]
    at = from_ms(to_ms(datetime.now(UTC)))
    held = services.purchases.reserve(account[0], deal, 1)
    batch = [_reservation_pending(services, deal, account[0], at), _claim_pending(services, held, at)]
    outcomes, fenced, statements = _commit_watched(services, monkeypatch, batch, [deal])
    assert [type(outcome) for outcome in outcomes] == [Committed, Committed]
    assert fenced == [[True]]
    if not services.db.is_sqlite:
        assert not [s for s in statements if s.lstrip().upper().startswith("SELECT PG_ADVISORY_XACT_LOCK_SHARED")]
    claimed = services.purchases.get(account[0], held.token)
    assert claimed.fulfillment_state == "fulfilled" and len(claimed.coupons) == 1
    shown = shop.deal(deal)
    assert (shown["available"], shown["reserved"], shown["sold"]) == (3, 1, 1)
    assert services.rebuilder.check(deal) == []


def test_two_claims_of_one_purchase_in_one_batch_fulfil_it_once(shop, services, account):
    """A claim and another claim of the same purchase (a rival's, for the same customer) that
    adopted the first one's take wait in one batch: the purchase is fulfilled once, with one
    line and one coupon per unit, and the second is left out (it reads again and finds it
    fulfilled), as it would be one write at a time."""
    deal = shop.create_deal(quantity=5)["id"]
    at = from_ms(to_ms(datetime.now(UTC)))
    held = services.purchases.reserve(account[0], deal, 2)
    first = _claim_pending(services, held, at)
    order = Order(deal, account[0], held.token, "retry", 2, "buyer")
    found = services.stock.claim(order, to_ms(at) + 3000)
    assert services.stock.adopt(found, "retry", to_ms(at) + 3000, "buyer")
    second = replace(first.write, record=replace(first.write.record, coupons=new_coupon_codes(2)))
    outcomes = services.protocol.committer._commit([first, Pending(second, [found.as_taken(account[0], "retry")])])
    assert [type(outcome) for outcome in outcomes] == [Committed, Skipped]
    claimed = services.purchases.get(account[0], held.token)
    assert claimed.fulfillment_state == "fulfilled"
    assert [item.quantity for item in claimed.items] == [2] and len(claimed.coupons) == 2
    assert shop.deal(deal)["sold"] == 2
    assert services.rebuilder.check(deal) == []


def test_cart_starts_commit_in_a_flash_sales_batch_one_statement_for_distinct_carts(
    shop, services, account, monkeypatch
):
    """A cart's pending row (written before its holds are taken) goes with whatever else waits
    to commit: here a batch of one deal's reservation, still fenced by its own statement. The
    starts of distinct carts are one statement; a second start of a cart already written (a
    retry's, in the same batch) is left out."""
    deal = shop.create_deal(quantity=5)["id"]
    at = from_ms(to_ms(datetime.now(UTC)))

    def start(token: str, attempt: str) -> Pending:
        return Pending(CartStart(CartRecord(token=token, account_id=account[0], attempt=attempt, created_at=at)), [])

    batch = [start("cart-1", "a"), start("cart-2", "b"), _reservation_pending(services, deal, account[0], at)]
    batch.append(start("cart-1", "retry"))
    outcomes, fenced, statements = _commit_watched(services, monkeypatch, batch, [deal])
    assert [type(outcome) for outcome in outcomes] == [Committed, Committed, Committed, Skipped]
    assert fenced == [[True]]
    assert len([s for s in statements if s.lstrip().upper().startswith("INSERT INTO CARTS")]) == 2
    if not services.db.is_sqlite:
        assert not [s for s in statements if s.lstrip().upper().startswith("SELECT PG_ADVISORY_XACT_LOCK_SHARED")]
    with services.db.reading() as connection:
        carts = cart_rows.read_many(connection, ["cart-1", "cart-2"])
    assert {token: (cart.state, cart.attempt) for token, cart in carts.items()} == {
        "cart-1": ("pending", "a"),
        "cart-2": ("pending", "b"),
    }
    assert outcomes[0].answer.id == carts["cart-1"].id


def test_a_batch_of_several_deals_holds_every_deals_fence_until_its_commit(shop, services, account, monkeypatch):
    """A batch across deals (a cart's, or writes of several deals at once) takes the shared
    fence of each of its deals, in one statement, before it checks their generations."""
    deals = sorted(shop.create_deal(quantity=5)["id"] for _ in range(3))
    at = from_ms(to_ms(datetime.now(UTC)))
    batch = [_reservation_pending(services, deal, account[0], at) for deal in deals]
    outcomes, fenced, statements = _commit_watched(services, monkeypatch, batch, deals)
    assert [type(outcome) for outcome in outcomes] == [Committed] * 3
    assert fenced == [[True, True, True]]
    assert all(a_rebuild_could_fence(services, deal) for deal in deals)
    if not services.db.is_sqlite:
        assert len([s for s in statements if "pg_advisory_xact_lock_shared" in s]) == 1


def test_a_checkouts_batch_with_a_claim_from_before_a_rebuild_commits_only_the_fresh_reserve(shop, services, account):
    """The claim's take predates a rebuild (which put the hold back from SQL): the batch is
    rolled back and committed the general way; the claim is told to take again, the fresh
    reservation commits, and SQL and Redis agree."""
    deal = shop.create_deal(quantity=5)["id"]
    at = from_ms(to_ms(datetime.now(UTC)))
    held = services.purchases.reserve(account[0], deal, 1)
    stale = _claim_pending(services, held, at)
    services.rebuilder.rebuild(deal, force=True)
    fresh = _reservation_pending(services, deal, account[0], at)
    stale_outcome, fresh_outcome = services.protocol.committer._commit([stale, fresh])
    assert isinstance(stale_outcome, Stale)
    assert isinstance(fresh_outcome, Committed)
    assert services.purchases.get(account[0], held.token).fulfillment_state == "reserved"
    shown = shop.deal(deal)
    assert (shown["available"], shown["reserved"], shown["sold"]) == (3, 2, 0)
    assert services.rebuilder.check(deal) == []


def test_a_batch_writes_the_rows_one_at_a_time_would_and_holds_the_deals_fence(shop, services, account):
    """rows.insert_reservations (one unnest statement on PostgreSQL) against rows.insert_one,
    row by row: the same columns read back, NULLs and instants included; the fenced form holds
    the deal's shared fence until the commit; a taken token is left out, not an error."""
    deal = shop.create_deal(quantity=10)["id"]
    now = datetime(2026, 11, 24, 9, 30, 15, 123000, tzinfo=UTC)

    def record(token: str, price: int | None) -> PurchaseRecord:
        return PurchaseRecord(
            token=token,
            account_id=account[0],
            deal_id=deal,
            units=2,
            price_per_unit=price,
            currency="USD",
            created_at=now,
            reserved_at=now,
            reserved_until=now + timedelta(seconds=300),
        )

    batch = [record(f"batch-{i}", None if i == 1 else 100 + i) for i in range(3)]
    alone = [record(f"alone-{i}", None if i == 1 else 100 + i) for i in range(3)]
    fence = services.db.shared_fence(deal)
    with services.db.begin() as connection:
        assert rows.insert_reservations(connection, batch, fence) == {r.token for r in batch}
        fenced_until_commit = not a_rebuild_could_fence(services, deal)
    with services.db.begin() as connection:
        for row in alone:
            assert rows.insert_one(connection, row, rows.RESERVATION_COLUMNS) is not None
    assert fenced_until_commit and a_rebuild_could_fence(services, deal)
    with services.db.begin() as connection:
        again = [record("batch-0", 1), record("new", 1)]
        assert rows.insert_reservations(connection, again, fence) == {"new"}

    def read(token: str) -> dict:
        with services.db.read() as session:
            purchase = session.scalar(select(Purchase).where(Purchase.token == token))
            return {name: getattr(purchase, name) for name in rows.RESERVATION_COLUMNS if name != "token"}

    for i in range(3):
        expected = {k: v for k, v in batch[i].values(rows.RESERVATION_COLUMNS).items() if k != "token"}
        assert read(f"batch-{i}") == read(f"alone-{i}") == expected


def test_a_request_interrupted_while_its_batch_commits_never_gives_its_units_back(shop, services, account, monkeypatch):
    """A request that stops waiting for its group commit (a timeout, a greenlet killed at
    shutdown, Ctrl-C) leaves the outcome to the committer: its row commits and its hold stays;
    nothing is given back while the row may still commit."""
    deal = shop.create_deal(quantity=5)["id"]
    committer = services.protocol.committer
    assert committer.threaded
    in_batch, finish = threading.Event(), threading.Event()

    class SlowCommit:
        def at(self, step, **context):
            if step == "in_transaction":
                in_batch.set()
                finish.wait(10)

    class Interrupted(Answer):
        def wait(self, timeout=None):
            in_batch.wait(10)  # the batch holding this write is being committed
            raise KeyboardInterrupt()

    monkeypatch.setattr(committer, "hooks", SlowCommit())
    original_init = Pending.__init__

    def interrupted_pending(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.result = Interrupted()

    monkeypatch.setattr(Pending, "__init__", interrupted_pending)
    with pytest.raises(KeyboardInterrupt):
        services.purchases.reserve(account[0], deal, 2)
    monkeypatch.undo()
    finish.set()
    wait_for(lambda: count(services) == 1, 10, "the interrupted request's row to commit")
    shown = shop.deal(deal)
    assert (shown["available"], shown["reserved"]) == (3, 2)
    assert services.rebuilder.check(deal) == []
