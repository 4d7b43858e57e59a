"""The v3 ledger's order: every fulfilled purchase gets a dense per-account `ledger_seq`.

A purchase enters the ledger when it is fulfilled (a v1 claim or direct create, or a v3 POST).
Its row commits with `ledger_seq` NULL; *sealing* numbers such rows after the account's current
maximum, in id order, under a per-account lock. Page N of the ledger is then the index range
`ledger_seq BETWEEN (N-1)*per_page+1 AND N*per_page` on the unique (account_id, ledger_seq)
index, and the number of purchases is the highest `ledger_seq`. Numbers are only ever added
after the end, so a page, once full, never changes (only `status` can, by a PUT).

Numbering after the commit, not inside it, keeps the write path free of a per-account lock:
concurrent writers never wait for each other here, and the order of the ledger is the order in
which purchases became visible to a reader (a purchase committed "late" with a lower id is
appended after the ones already numbered, instead of shifting them).

Readers seal before they read (`read_page`); the worker may seal in the background
(`seal_pending`) so that readers seldom have to. No Flask here.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, TextClause, func, select, text
from sqlalchemy.orm import Session, lazyload, selectinload

from app.store.db import Database
from app.store.models import Purchase

#: Advisory-lock namespace of the per-account sealing lock (the deal fence uses 0x0E0E).
LEDGER_NAMESPACE = 0x1ED6

#: ConvertKit's page size.
PER_PAGE = 50

IN_LEDGER = Purchase.fulfillment_state == "fulfilled"

# The account's unsealed rows, written so that the partial index `ix_purchases_unsequenced`
# serves them: its predicate spelled out literally (a bound parameter in its place would keep
# SQLite, and PostgreSQL's generic plans of prepared statements, from proving the match), and
# on SQLite named outright: without statistics SQLite prefers the unique (account_id,
# ledger_seq) index for `ledger_seq IS NULL`, which also holds every reservation, released or
# expired hold of the account.
UNSEALED_WHERE = "account_id = :account AND ledger_seq IS NULL AND fulfillment_state = 'fulfilled'"


def _unsealed_from(sqlite: bool) -> str:
    return "purchases INDEXED BY ix_purchases_unsequenced" if sqlite else "purchases"


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def unsealed_query(sqlite: bool) -> TextClause:
    """The account's first unsealed row (params: account)."""
    return text(f"SELECT id FROM {_unsealed_from(sqlite)} WHERE {UNSEALED_WHERE} ORDER BY id LIMIT 1")


def seal_statement(sqlite: bool) -> TextClause:
    """Number the account's unsealed rows `last + 1, last + 2, ...` in id order (params:
    account, last). One statement, whatever their number. (The updated side is found by id
    alone: repeating the condition there tempts PostgreSQL, when it believes few rows match,
    into a nested loop that numbers the rows again for each row.)"""
    return text(
        f"UPDATE purchases SET ledger_seq = numbered.seq"
        f" FROM (SELECT id, :last + row_number() OVER (ORDER BY id) AS seq"
        f" FROM {_unsealed_from(sqlite)} WHERE {UNSEALED_WHERE}) AS numbered"
        f" WHERE purchases.id = numbered.id"
    )


def has_unsealed(session: Session, account_id: int) -> bool:
    """Cheap (one index entry) and lock-free."""
    return session.execute(unsealed_query(_is_sqlite(session)), {"account": account_id}).first() is not None


def lock_account(db: Database, session: Session, account_id: int) -> None:
    """The per-account sealing lock, held until the transaction ends. SQLite write
    transactions are already exclusive (BEGIN IMMEDIATE, see `Database`)."""
    if db.is_sqlite:
        return
    session.execute(
        text("SELECT pg_advisory_xact_lock(:ns, :key)"),
        {"ns": LEDGER_NAMESPACE, "key": account_id & 0x7FFFFFFF},
    )


def number_unsealed(session: Session, account_id: int) -> int:
    """Number the account's unsealed rows after its current maximum. The caller holds the
    sealing lock. Returns how many rows were numbered."""
    last = session.scalar(total_query(account_id))
    result = session.execute(seal_statement(_is_sqlite(session)), {"account": account_id, "last": last})
    return result.rowcount or 0


def seal(db: Database, account_id: int) -> int:
    """Number every fulfilled row of the account that has no `ledger_seq` yet."""
    with db.transaction() as session:
        lock_account(db, session, account_id)
        return number_unsealed(session, account_id)


def seal_pending(db: Database, *, max_accounts: int = 1000) -> int:
    """Seal the accounts that have unsealed rows (for the worker). Returns rows numbered."""
    where = UNSEALED_WHERE.replace("account_id = :account AND ", "")
    query = text(f"SELECT DISTINCT account_id FROM {_unsealed_from(db.is_sqlite)} WHERE {where} LIMIT :limit")
    with db.read() as session:
        accounts = session.scalars(query, {"limit": max_accounts}).all()
    return sum(seal(db, account_id) for account_id in accounts)


def total_query(account_id: int) -> Select:
    """Purchases in the account's ledger (sealed ones): the highest `ledger_seq`, read from the
    end of the unique (account_id, ledger_seq) index."""
    return select(func.coalesce(func.max(Purchase.ledger_seq), 0)).where(Purchase.account_id == account_id)


def total(session: Session, account_id: int) -> int:
    return int(session.scalar(total_query(account_id)))


def page_query(account_id: int, page: int, per_page: int = PER_PAGE, last: int | None = None) -> Select:
    """Page `page` (from 1) of the account's ledger, oldest first: an index range, never a scan."""
    first = (page - 1) * per_page + 1
    upto = page * per_page if last is None else min(page * per_page, last)
    return (
        select(Purchase)
        .where(Purchase.account_id == account_id, Purchase.ledger_seq.between(first, upto))
        .order_by(Purchase.ledger_seq)
    )


def read_page(db: Database, account_id: int, page: int, per_page: int = PER_PAGE) -> tuple[Sequence[Purchase], int]:
    """(purchases on `page`, purchases in the ledger), sealing first if anything is unsealed."""
    with db.read() as session:
        if not has_unsealed(session, account_id):
            return _read_page(session, account_id, page, per_page)
    seal(db, account_id)
    with db.read() as session:
        return _read_page(session, account_id, page, per_page)


def _read_page(session: Session, account_id: int, page: int, per_page: int) -> tuple[Sequence[Purchase], int]:
    # The total first, and the page clamped to it: rows up to the total are all committed,
    # so the page never shows more than the total says, even while someone else seals.
    count = total(session, account_id)
    if (page - 1) * per_page >= count:
        return [], count
    rows = session.scalars(
        page_query(account_id, page, per_page, count).options(selectinload(Purchase.items), lazyload(Purchase.coupons))
    ).all()
    return rows, count
