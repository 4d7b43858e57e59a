"""The ledger's pages: 50 a page, oldest first, stable while purchases arrive, an index range
(never a scan) on a large ledger."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import TextClause, insert, select, text

from app.inventory.ledger import NewPurchase, Product
from app.store import ledger as store
from app.store.models import Purchase, PurchaseItem

BULK = 10_000


def bulk_insert(services, account_id: int, n: int = BULK) -> None:
    """n fulfilled purchases with one product each, straight into SQL (not n HTTP calls),
    unsealed, as purchases committed by many writers would be."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows = [
        {
            "token": f"bulk-{account_id}-{i:05d}",
            "account_id": account_id,
            "source": "v3",
            "units": 1,
            "fulfillment_state": "fulfilled",
            "payment_state": "paid",
            "created_at": start,
            "fulfilled_at": start,
            "transaction_id": f"bulk-{i:05d}",
            "status": "paid",
            "email_address": f"buyer{i}@example.com",
            "currency": "USD",
            "transaction_time": start + timedelta(minutes=i),
            "subtotal": Decimal(i) / 100,
            "shipping": Decimal(0),
            "discount": Decimal(0),
            "tax": Decimal(0),
            "total": Decimal(i) / 100,
        }
        for i in range(1, n + 1)
    ]
    with services.db.transaction() as session:
        session.execute(insert(Purchase.__table__), rows)
        session.execute(
            text(
                "INSERT INTO purchase_items (purchase_id, position, name, sku, unit_price, quantity)"
                " SELECT id, 0, 'Item ' || transaction_id, 'sku-' || transaction_id, total, 1"
                " FROM purchases WHERE account_id = :account AND token LIKE 'bulk-%'"
            ),
            {"account": account_id},
        )


def expected_entry(i: int) -> dict:
    when = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return {
        "transaction_id": f"bulk-{i:05d}",
        "status": "paid",
        "email_address": f"buyer{i}@example.com",
        "currency": "USD",
        "transaction_time": when.strftime("%Y-%m-%d %H:%M"),
        "subtotal": i / 100,
        "shipping": 0.0,
        "discount": 0.0,
        "tax": 0.0,
        "total": i / 100,
        "products": [{"unit_price": i / 100, "quantity": 1, "sku": f"sku-bulk-{i:05d}", "name": f"Item bulk-{i:05d}"}],
    }


def page(api, n: int) -> dict:
    response = api.get(f"/v3/purchases?page={n}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def without_ids(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "id"} for entry in entries]


@pytest.mark.slow
def test_ten_thousand_purchases_page_by_index_and_never_shift(api, services, account):
    lamp = api.create_deal(sku="LAMP-1", quantity=10)
    early = api.reserved(lamp["id"], 1)  # its row id is lower than every bulk row
    bulk_insert(services, account[0])

    first = page(api, 1)
    assert (first["total_purchases"], first["page"], first["total_pages"]) == (BULK, 1, BULK // 50)
    assert without_ids(first["purchases"]) == [expected_entry(i) for i in range(1, 51)]
    middle = page(api, 100)
    assert without_ids(middle["purchases"]) == [expected_entry(i) for i in range(4951, 5001)]
    last = page(api, 200)
    assert without_ids(last["purchases"]) == [expected_entry(i) for i in range(9951, 10001)]
    assert page(api, 201)["purchases"] == []
    ids = [p["id"] for p in first["purchases"] + middle["purchases"] + last["purchases"]]
    assert ids == sorted(ids) and len(set(ids)) == 150

    # New purchases only ever append: one recorded through v3, then the early reservation
    # claimed (its row is older than all of them, yet it enters the ledger now).
    new = api.post(
        "/v3/purchases",
        {"purchase": {"transaction_id": "late-1", "email_address": "l@example.com", "products": [{"sku": "LAMP-1"}]}},
    )
    assert new.status_code == 201
    assert page(api, 1) == {**first, "total_purchases": BULK + 1, "total_pages": BULK // 50 + 1}
    assert api.claim(early["id"], "alice").status_code == 200

    assert page(api, 1) == {**first, "total_purchases": BULK + 2, "total_pages": BULK // 50 + 1}
    assert page(api, 100)["purchases"] == middle["purchases"]
    assert page(api, 200)["purchases"] == last["purchases"]
    tail = page(api, 201)
    assert [p["transaction_id"] for p in tail["purchases"]] == ["late-1", early["id"]]
    assert tail["purchases"][0]["id"] == new.get_json()["id"]

    with services.db.read() as session:
        seqs = session.scalars(
            select(Purchase.ledger_seq).where(Purchase.account_id == account[0]).order_by(Purchase.ledger_seq)
        ).all()
    assert seqs == list(range(1, BULK + 3))


def bulk_holds(services, account_id: int, deal_id: int, n: int) -> None:
    """n ended reservations (released or expired): rows of the account outside the ledger, whose
    ledger_seq is NULL too."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows = [
        {
            "token": f"hold-{account_id}-{i:05d}",
            "account_id": account_id,
            "deal_id": deal_id,
            "source": "v1",
            "units": 1,
            "fulfillment_state": "expired" if i % 2 else "released",
            "payment_state": "pending",
            "created_at": start,
            "reserved_at": start,
            "reserved_until": start + timedelta(minutes=5),
        }
        for i in range(n)
    ]
    with services.db.transaction() as session:
        session.execute(insert(Purchase.__table__), rows)


@pytest.mark.slow
def test_the_ledger_queries_use_indexes(api, services, account, backend):
    """Every query of a page read is an index lookup, also when the account has many purchases
    outside the ledger and another account shares the table."""
    sqlite = backend == "sqlite"
    other, _ = services.accounts.create("other")
    bulk_insert(services, other.id, 2_000)
    bulk_insert(services, account[0])
    bulk_holds(services, account[0], api.create_deal(quantity=10)["id"], 5_000)
    page(api, 1)
    store.seal(services.db, other.id)
    if not sqlite:
        with services.db.engine.connect() as connection:
            connection.execute(text("ANALYZE purchases"))
            connection.execute(text("ANALYZE purchase_items"))
            connection.commit()

    def uses(statement, index: str, scan_ok: bool = False, **params) -> None:
        if isinstance(statement, TextClause):
            sql = statement.text
        else:
            sql = str(statement.compile(dialect=services.db.engine.dialect, compile_kwargs={"literal_binds": True}))
        with services.db.engine.connect() as connection:
            rows = connection.execute(text(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql), params).all()
        lines = [str(row[-1]) for row in rows]
        shown = "\n".join(lines)
        if sqlite:
            assert scan_ok or not any(line.startswith("SCAN purchases") for line in lines), shown
        else:
            assert scan_ok or "Seq Scan" not in shown, shown
        assert index in shown, shown

    unique = sqlite_index_on(services, ("account_id", "ledger_seq")) if sqlite else "uq_purchases_account_id_ledger_seq"
    for n in (1, 100, 200):
        uses(store.page_query(account[0], n, store.PER_PAGE, BULK), unique)
    uses(store.total_query(account[0]), unique)
    uses(store.unsealed_query(sqlite), "ix_purchases_unsequenced", account=account[0])
    # Sealing finds its rows by the partial index; how it joins them back to the table (by
    # primary key, or a hash join over the table when it expects many) is the planner's choice.
    uses(store.seal_statement(sqlite), "ix_purchases_unsequenced", scan_ok=True, account=account[0], last=BULK)
    # The products of a page, loaded as selectinload does: by the page's purchase ids.
    with services.db.read() as session:
        ids = session.scalars(store.page_query(account[0], 100).with_only_columns(Purchase.id)).all()
    assert len(ids) == 50
    uses(select(PurchaseItem).where(PurchaseItem.purchase_id.in_(ids)), "ix_purchase_items_purchase_id")


def test_reading_takes_no_write_lock_when_everything_is_sealed(api, services, monkeypatch):
    api.post("/v3/purchases", {"purchase": {"transaction_id": "t-1", "email_address": "a@b.co"}})
    calls = []
    real_seal = store.seal

    def counting_seal(db, account_id):
        calls.append(account_id)
        return real_seal(db, account_id)

    monkeypatch.setattr(store, "seal", counting_seal)
    assert page(api, 1)["total_purchases"] == 1
    assert page(api, 1)["total_purchases"] == 1
    assert page(api, 2)["purchases"] == []
    assert len(calls) == 1


def test_the_worker_can_seal_in_the_background(api, other_api, services, account):
    lamp = api.create_deal(quantity=10)
    api.buy(lamp["id"], 1)
    other_api.post("/v3/purchases", {"purchase": {"transaction_id": "t-1", "email_address": "a@b.co"}})
    assert store.seal_pending(services.db) == 2
    assert store.seal_pending(services.db) == 0
    with services.db.read() as session:
        assert session.scalars(select(Purchase.ledger_seq).order_by(Purchase.id)).all() == [1, 1]
        assert not store.has_unsealed(session, account[0])


def test_the_worker_sweep_job_seals_the_ledger(api, services, monkeypatch):
    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    lamp = api.create_deal(quantity=10)
    api.buy(lamp["id"], 1)
    api.buy(lamp["id"], 2)
    assert jobs.sweep()["sealed"] == 2
    with services.db.read() as session:
        assert session.scalars(select(Purchase.ledger_seq).order_by(Purchase.id)).all() == [1, 2]
    assert jobs.sweep()["sealed"] == 0


def test_pages_stay_stable_while_writers_and_readers_race(api, services, account):
    """Writers record purchases while readers read pages of 5: every page a reader saw full
    is the same at the end, and the ledger is numbered 1..N without gaps or repeats."""
    writers, per_writer, per_page = 4, 15, 5
    seen: list[tuple[int, tuple[int, ...]]] = []
    done = threading.Event()

    def write(w: int) -> None:
        for i in range(per_writer):
            new = NewPurchase(f"w{w}-{i}", "a@b.co", products=(Product(f"sku-{w}-{i}"),))
            services.ledger.create(account[0], new)

    def read(r: int) -> None:
        rng = random.Random(r)
        while not done.is_set():
            rows, total = services.ledger.page(account[0], rng.randint(1, 12), per_page)
            assert len(rows) <= per_page and all(row.ledger_seq <= total for row in rows)
            if len(rows) == per_page:
                seen.append((rows[0].ledger_seq, tuple(row.id for row in rows)))

    with ThreadPoolExecutor(writers + 3) as pool:
        readers = [pool.submit(read, r) for r in range(3)]
        for future in [pool.submit(write, w) for w in range(writers)]:
            future.result()
        done.set()
        for future in readers:
            future.result()

    total = writers * per_writer
    final: dict[int, tuple[int, ...]] = {}
    for n in range(1, total // per_page + 1):
        rows, count = services.ledger.page(account[0], n, per_page)
        assert count == total
        final[rows[0].ledger_seq] = tuple(row.id for row in rows)
    for first_seq, ids in seen:
        assert final[first_seq] == ids
    with services.db.read() as session:
        seqs = session.scalars(select(Purchase.ledger_seq).order_by(Purchase.ledger_seq)).all()
    assert seqs == list(range(1, total + 1))


def sqlite_index_on(services, columns: tuple[str, ...]) -> str:
    """The name SQLite gave the index on `columns` of purchases (a unique constraint's index is
    numbered by its place in the table's definition, which a migration's table rebuild moves)."""
    with services.db.engine.connect() as connection:
        for index in connection.execute(text("PRAGMA index_list(purchases)")).mappings():
            info = connection.execute(text(f"PRAGMA index_info('{index['name']}')")).mappings().all()
            if tuple(row["name"] for row in info) == columns:
                return index["name"]
    raise LookupError(columns)
