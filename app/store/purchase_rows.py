"""The SQL of the write path (reserve, claim, release, extend, direct and v3 purchases), as Core
statements over typed rows: no unit of work, no identity map.

Every write here is conditional, so that the committer can put many of them in one transaction
and learn, per write, whether it happened: an INSERT does nothing when the token (or the v3
transaction_id) is taken, an UPDATE changes the row only from the state its caller read. The
ORM cost more CPU per write than the Lua script and its round trip; reads for dashboards and
the ledger keep using the models in models.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, cast, column, func, insert, select, text, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from .models import Coupon, Purchase, PurchaseItem

PURCHASES = Purchase.__table__
ITEMS = PurchaseItem.__table__
COUPONS = Coupon.__table__


@dataclass(slots=True)
class TokenRecord:
    """What a purchase row and a cart row start with, as the write path reads and writes them:
    the row's id, the token it is known by outside, and its account."""

    id: int | None = None
    token: str = ""
    account_id: int | None = None

    def values(self, columns: Iterable[str]) -> dict[str, Any]:
        return {name: getattr(self, name) for name in columns}


@dataclass(slots=True)
class PurchaseRecord(TokenRecord):
    """A purchase row as the write path reads and writes it (the v1 answer is built from it)."""

    deal_id: int | None = None
    source: str = "v1"
    units: int = 0
    price_per_unit: int | None = None
    currency: str | None = None
    user_id: str | None = None
    credit_card_id: str | None = None
    session_id: str | None = None
    fulfillment_state: str = "reserved"
    payment_state: str = "pending"
    reserved_at: datetime | None = None
    reserved_until: datetime | None = None
    fulfilled_at: datetime | None = None
    ended_at: datetime | None = None
    created_at: datetime | None = None
    # Its entry in the v3 ledger, once fulfilled.
    transaction_id: str | None = None
    status: str | None = None
    transaction_time: datetime | None = None
    subtotal: Decimal | None = None
    shipping: Decimal | None = None
    discount: Decimal | None = None
    tax: Decimal | None = None
    total: Decimal | None = None
    email_address: str | None = None
    #: Fingerprint of the v3 body that created the row, to tell a retry from a conflict.
    request_fingerprint: str | None = None
    #: The cart (its token) this purchase is an item of; the waitlist entry it was offered to.
    cart_id: str | None = None
    waitlist_entry_id: int | None = None
    #: Coupon codes (strings), where a `Purchase` has Coupon rows.
    coupons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Line:
    """A purchase's line in the ledger: what its deal's sold count is summed from."""

    name: str | None
    sku: str
    unit_price: Decimal | None
    quantity: int
    deal_id: int | None
    position: int = 0


#: What the write path reads of a row (everything a v1 answer shows and the writes decide on).
READ_COLUMNS = tuple(f.name for f in fields(PurchaseRecord) if f.name != "coupons")
#: What a reserve writes (a cart's items and a waitlist's offers too).
RESERVATION_COLUMNS = (
    "token",
    "account_id",
    "deal_id",
    "source",
    "units",
    "price_per_unit",
    "currency",
    "user_id",
    "fulfillment_state",
    "payment_state",
    "reserved_at",
    "reserved_until",
    "created_at",
    "cart_id",
    "waitlist_entry_id",
)
#: What a fulfilment sets on a row (claim), and a direct purchase writes besides.
FULFILMENT_COLUMNS = (
    "fulfillment_state",
    "payment_state",
    "user_id",
    "credit_card_id",
    "fulfilled_at",
    "price_per_unit",
    "currency",
    "transaction_id",
    "status",
    "transaction_time",
    "subtotal",
    "total",
    "shipping",
    "discount",
    "tax",
)
#: What a v3 purchase writes.
LEDGER_COLUMNS = (
    "token",
    "account_id",
    "source",
    "units",
    "fulfillment_state",
    "payment_state",
    "fulfilled_at",
    "created_at",
    "transaction_id",
    "status",
    "email_address",
    "currency",
    "transaction_time",
    "subtotal",
    "shipping",
    "discount",
    "tax",
    "total",
    "request_fingerprint",
)
SALE_COLUMNS = (
    "token",
    "account_id",
    "deal_id",
    "source",
    "units",
    "session_id",
    "created_at",
    *FULFILMENT_COLUMNS,
)

_READ = select(*(PURCHASES.c[name] for name in READ_COLUMNS)).where(PURCHASES.c.token == bindparam("token"))
_COUPONS = select(COUPONS.c.code).where(COUPONS.c.purchase_id == bindparam("purchase_id")).order_by(COUPONS.c.id)

# The statements below are built once per column list (functools.cache) from bound parameters:
# built per call with the values in them, SQLAlchemy spent 340 µs of CPU on an UPDATE against
# 140 µs (a micro-benchmark on PostgreSQL), and 1.4 ms on a claim's CTE statement.


def read(connection: Connection, token: str) -> PurchaseRecord | None:
    """The purchase's row (not locked: every write below is conditional on what was read)."""
    return read_many(connection, [token]).get(token)


_READ_MANY = select(*(PURCHASES.c[name] for name in READ_COLUMNS)).where(
    PURCHASES.c.token.in_(bindparam("tokens", expanding=True))
)
_COUPONS_OF = (
    select(COUPONS.c.purchase_id, COUPONS.c.code)
    .where(COUPONS.c.purchase_id.in_(bindparam("ids", expanding=True)))
    .order_by(COUPONS.c.id)
)


def read_many(connection: Connection, tokens: Sequence[str]) -> dict[str, PurchaseRecord]:
    """Purchases by token, with the coupons of the fulfilled ones: two queries for any number."""
    records = {row.token: PurchaseRecord(*row) for row in connection.execute(_READ_MANY, {"tokens": list(tokens)})}
    fulfilled = {r.id: r for r in records.values() if r.fulfillment_state == "fulfilled"}
    if fulfilled:
        for purchase_id, code in connection.execute(_COUPONS_OF, {"ids": list(fulfilled)}):
            fulfilled[purchase_id].coupons.append(code)
    return records


_EXISTS = select(PURCHASES.c.id).where(PURCHASES.c.token == bindparam("token"))


def exists(connection: Connection, token: str) -> bool:
    return connection.execute(_EXISTS, {"token": token}).first() is not None


def coupon_codes(connection: Connection, purchase_id: int) -> list[str]:
    return list(connection.scalars(_COUPONS, {"purchase_id": purchase_id}))


def fulfilment(record: PurchaseRecord, *, user_id: str, credit_card_id: str | None, now: datetime, unit_price) -> dict:
    """The columns a fulfilment sets: v1's state and its entry in the v3 ledger."""
    subtotal = unit_price * record.units
    return {
        "fulfillment_state": "fulfilled",
        "payment_state": "paid",
        "user_id": user_id,
        "credit_card_id": credit_card_id,
        "fulfilled_at": now,
        "price_per_unit": record.price_per_unit,
        "currency": record.currency,
        "transaction_id": record.token,
        "status": "paid",
        "transaction_time": now,
        "subtotal": subtotal,
        "total": subtotal,
        "shipping": Decimal(0),
        "discount": Decimal(0),
        "tax": Decimal(0),
    }


# -- inserts -------------------------------------------------------------------------------


#: Takes a deal's shared fence (:fence_ns, :fence_key; see Database.shared_fence), as a CTE of a
#: statement that takes it along with its own work.
_FENCE = "SELECT pg_advisory_xact_lock_shared(:fence_ns, :fence_key) AS fenced"


def _fence_cte():
    return text(_FENCE).columns(column("fenced")).cte("fence")


def _fence_params(fence: tuple[int, int]) -> dict[str, int]:
    return {"fence_ns": fence[0], "fence_key": fence[1]}


def insert_reservations(
    connection: Connection, records: Sequence[PurchaseRecord], fence: tuple[int, int] | None = None
) -> set[str]:
    """Insert reservation rows, each unless its token is taken; returns the tokens inserted.
    With `fence` (PostgreSQL: namespace, key, see Database.shared_fence), the statement also
    takes that deal's shared fence: one round trip instead of two.

    On PostgreSQL, one `INSERT ... SELECT FROM unnest(...)` with one array per column: psycopg's
    pipelined `executemany` cost per row (two thirds of a group committer's CPU under gevent)."""
    if connection.dialect.name != "postgresql":
        statement = (
            sqlite.insert(PURCHASES)
            .values([record.values(RESERVATION_COLUMNS) for record in records])
            .on_conflict_do_nothing()
            .returning(PURCHASES.c.token)
        )
        return set(connection.scalars(statement))
    params = {name: [getattr(record, name) for record in records] for name in RESERVATION_COLUMNS}
    if fence is not None:
        params |= _fence_params(fence)
    return set(connection.scalars(_unnest_insert(RESERVATION_COLUMNS, fence is not None), params))


@functools.cache
def _unnest_insert(columns: tuple[str, ...], fenced: bool):
    """INSERT INTO purchases (<columns>) SELECT * FROM unnest(:<column>::<type>[], ...)
    ON CONFLICT DO NOTHING RETURNING token, from a CTE that takes the deal's shared fence when
    `fenced` (PostgreSQL)."""
    arrays = [
        cast(bindparam(name, type_=ARRAY(PURCHASES.c[name].type)), ARRAY(PURCHASES.c[name].type)) for name in columns
    ]
    rows = func.unnest(*arrays).table_valued(*columns).render_derived(name="new_rows")
    source = select(*(rows.c[name] for name in columns))
    if fenced:
        source = source.select_from(_fence_cte().join(rows, true()))
    return (
        postgresql.insert(PURCHASES).from_select(columns, source).on_conflict_do_nothing().returning(PURCHASES.c.token)
    )


def insert_one(connection: Connection, record: PurchaseRecord, columns: Sequence[str]) -> int | None:
    """Insert a purchase row unless its token (or, for v3, its transaction_id) is taken; returns
    its id, or None when it was not inserted."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return connection.scalar(_insert_one(dialect, tuple(columns)), record.values(columns))


@functools.cache
def _insert_one(dialect, columns: tuple[str, ...]):
    values = {name: bindparam(name, type_=PURCHASES.c[name].type) for name in columns}
    return dialect.insert(PURCHASES).values(values).on_conflict_do_nothing().returning(PURCHASES.c.id)


def insert_lines(connection: Connection, purchase_id: int, lines: Sequence[Line], codes: Sequence[str] = ()) -> None:
    if lines:
        connection.execute(insert(ITEMS), [asdict(line) | {"purchase_id": purchase_id} for line in lines])
    if codes:
        connection.execute(insert(COUPONS), [{"purchase_id": purchase_id, "code": code} for code in codes])


# -- conditional updates ---------------------------------------------------------------------


def fulfil(
    connection: Connection,
    record: PurchaseRecord,
    seen_state: str,
    seen_until: datetime | None,
    line: Line,
    codes: Sequence[str],
) -> bool:
    """Fulfil the purchase (its row already holds `record`'s fulfilment values) with its line and
    coupons, if its row is still in `seen_state` with `seen_until`; False when it moved on.
    (SQLite; on PostgreSQL `fulfil_all` does any number in one statement.)"""
    purchase_id = _change(connection, record.token, seen_state, seen_until, record.values(FULFILMENT_COLUMNS))
    if purchase_id is None:
        return False
    insert_lines(connection, purchase_id, [line], codes)
    return True


def naive_utc(instant: datetime | None) -> datetime | None:
    """How UTCDateTime stores an instant, for statements that bypass its type (raw arrays)."""
    return None if instant is None else instant.astimezone(UTC).replace(tzinfo=None)


#: Many claims at once (PostgreSQL): each purchase fulfilled if its row is still as its claim
#: read it, with its line and its coupons, in one statement; returns the tokens fulfilled.
#: `{fence}`: nothing, or a CTE through which the claims' rows come, taking the deal's fence first.
_FULFIL_ALL = """
WITH {fence}new AS (
  SELECT n.* FROM {fenced}unnest(
    CAST(:token AS varchar[]), CAST(:seen_state AS varchar[]), CAST(:seen_until AS timestamp[]),
    CAST(:user_id AS varchar[]), CAST(:credit_card_id AS varchar[]), CAST(:fulfilled_at AS timestamp[]),
    CAST(:price_per_unit AS bigint[]), CAST(:currency AS varchar[]), CAST(:transaction_id AS varchar[]),
    CAST(:status AS varchar[]), CAST(:transaction_time AS timestamp[]), CAST(:subtotal AS numeric[]),
    CAST(:total AS numeric[]), CAST(:shipping AS numeric[]), CAST(:discount AS numeric[]),
    CAST(:tax AS numeric[]), CAST(:line_name AS varchar[]), CAST(:line_sku AS varchar[]),
    CAST(:line_unit_price AS numeric[]), CAST(:line_quantity AS bigint[]), CAST(:line_deal_id AS bigint[])
  ) AS n(token, seen_state, seen_until, user_id, credit_card_id, fulfilled_at, price_per_unit, currency,
         transaction_id, status, transaction_time, subtotal, total, shipping, discount, tax,
         line_name, line_sku, line_unit_price, line_quantity, line_deal_id)
), changed AS (
  UPDATE purchases AS p SET
    fulfillment_state = 'fulfilled', payment_state = 'paid', user_id = n.user_id,
    credit_card_id = n.credit_card_id, fulfilled_at = n.fulfilled_at,
    price_per_unit = n.price_per_unit, currency = n.currency, transaction_id = n.transaction_id,
    status = n.status, transaction_time = n.transaction_time, subtotal = n.subtotal,
    total = n.total, shipping = n.shipping, discount = n.discount, tax = n.tax
  FROM new AS n
  WHERE p.token = n.token AND p.fulfillment_state = n.seen_state
    AND p.reserved_until IS NOT DISTINCT FROM n.seen_until
  RETURNING p.id, p.token
), line AS (
  INSERT INTO purchase_items (purchase_id, position, name, sku, unit_price, quantity, deal_id)
  SELECT c.id, 0, n.line_name, n.line_sku, n.line_unit_price, n.line_quantity, n.line_deal_id
  FROM changed AS c JOIN new AS n ON n.token = c.token
), coupon AS (
  INSERT INTO coupons (purchase_id, code)
  SELECT c.id, k.code
  FROM changed AS c
  JOIN unnest(CAST(:coupon_token AS varchar[]), CAST(:coupon_code AS varchar[])) AS k(token, code)
    ON k.token = c.token
)
SELECT token FROM changed
"""


@functools.cache
def _fulfil_all(fenced: bool):
    if not fenced:
        return text(_FULFIL_ALL.format(fence="", fenced=""))
    return text(_FULFIL_ALL.format(fence=f"fence AS ({_FENCE}),\n", fenced="fence, "))


def fulfil_all(
    connection: Connection,
    claims: Sequence[tuple[PurchaseRecord, str, datetime | None, Line]],
    fence: tuple[int, int] | None = None,
) -> set[str]:
    """`fulfil` for many (record, seen_state, seen_until, line) at once, on PostgreSQL: one
    statement whatever their number. Returns the tokens fulfilled (the others moved on). With
    `fence` (namespace, key: Database.shared_fence) the statement also takes that deal's shared
    fence, as `insert_reservations` does."""
    params: dict[str, list] = {
        name: [] for name in ("token", "seen_state", "seen_until", "coupon_token", "coupon_code")
    }
    for name in FULFILMENT_COLUMNS[2:]:
        params[name] = []
    for name in ("name", "sku", "unit_price", "quantity", "deal_id"):
        params[f"line_{name}"] = []
    for record, seen_state, seen_until, line in claims:
        params["token"].append(record.token)
        params["seen_state"].append(seen_state)
        params["seen_until"].append(naive_utc(seen_until))
        for name in FULFILMENT_COLUMNS[2:]:
            value = getattr(record, name)
            params[name].append(naive_utc(value) if isinstance(value, datetime) else value)
        for name in ("name", "sku", "unit_price", "quantity", "deal_id"):
            params[f"line_{name}"].append(getattr(line, name))
        params["coupon_token"] += [record.token] * len(record.coupons)
        params["coupon_code"] += record.coupons
    if fence is not None:
        params |= _fence_params(fence)
    return set(connection.scalars(_fulfil_all(fence is not None), params))


def end_hold(connection: Connection, token: str, seen_until: datetime | None, state: str, ended_at: datetime) -> bool:
    """A reservation's hold ended (released, or found expired): False when the row had moved on."""
    changes = {"fulfillment_state": state, "ended_at": ended_at}
    return _change(connection, token, "reserved", seen_until, changes) is not None


def extend_hold(connection: Connection, token: str, seen_until: datetime, until: datetime) -> bool:
    return _change(connection, token, "reserved", seen_until, {"reserved_until": until}) is not None


def _change(
    connection: Connection, token: str, seen_state: str, seen_until: datetime | None, changes: dict[str, Any]
) -> int | None:
    params = {f"set_{name}": value for name, value in changes.items()}
    params |= {"seen_token": token, "seen_state": seen_state, "seen_until": seen_until}
    return connection.scalar(_change_statement(tuple(changes)), params)


def _seen(table=PURCHASES):
    """The row is still what its writer read: same state and same hold end (NULL-safe)."""
    until = bindparam("seen_until", type_=table.c.reserved_until.type)
    return (
        (table.c.token == bindparam("seen_token"))
        & (table.c.fulfillment_state == bindparam("seen_state"))
        & (table.c.reserved_until.is_not_distinct_from(until))
    )


@functools.cache
def _change_statement(columns: tuple[str, ...]):
    """UPDATE purchases SET <columns> WHERE it is still as read RETURNING id."""
    changed = {name: bindparam(f"set_{name}", type_=PURCHASES.c[name].type) for name in columns}
    return update(PURCHASES).where(_seen()).values(changed).returning(PURCHASES.c.id)
