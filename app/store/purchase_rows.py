"""The SQL of the hot paths (reserve, claim, release, extend, direct purchase), as Core
statements: no unit of work, no identity map, only the columns the answer needs.

The ORM costs more CPU per write than the whole Lua script and its round trip (measured with
`bench/`: the ORM flush alone was a fifth of a durable reserve). Reads for dashboards and the
ledger keep using the ORM models in models.py; these functions write the same tables.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, cast, func, insert, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY

from .db import FENCE_KEY_MASK
from .models import Coupon, Purchase, PurchaseItem

PURCHASES = Purchase.__table__
ITEMS = PurchaseItem.__table__
COUPONS = Coupon.__table__

#: What a v1 answer shows of a purchase, plus what the writes decide on.
COLUMNS = (
    "id",
    "token",
    "account_id",
    "deal_id",
    "source",
    "units",
    "price_per_unit",
    "currency",
    "user_id",
    "credit_card_id",
    "session_id",
    "fulfillment_state",
    "payment_state",
    "reserved_at",
    "reserved_until",
    "fulfilled_at",
    "ended_at",
    "created_at",
)

_LOCK = (
    select(*(PURCHASES.c[name] for name in COLUMNS)).where(PURCHASES.c.token == bindparam("token")).with_for_update()
)
#: The same, taking the deal's shared fence too (PostgreSQL; the key as db.fence_key computes it).
_LOCK_FENCED = _LOCK.add_columns(
    func.pg_advisory_xact_lock_shared(
        bindparam("fence_ns"), cast(PURCHASES.c.deal_id.op("&")(FENCE_KEY_MASK), Integer)
    ).label("fenced")
)
_COUPONS = select(COUPONS.c.code).where(COUPONS.c.purchase_id == bindparam("purchase_id")).order_by(COUPONS.c.id)
_INSERT = insert(PURCHASES).returning(PURCHASES.c.id)

# The statements below are built once per column list (functools.cache) from bound parameters:
# built per call with the values in them, SQLAlchemy spent 340 µs of CPU on an UPDATE against
# 140 µs (a micro-benchmark on PostgreSQL), and 1.4 ms on a claim's CTE statement.


def _fence_cte():
    """A CTE that takes the deal's shared fence (:fence_ns, :fence_key; see Database.shared_fence)."""
    return select(func.pg_advisory_xact_lock_shared(bindparam("fence_ns"), bindparam("fence_key")).label("fenced")).cte(
        "fence"
    )


@functools.cache
def _fenced_insert(columns: tuple[str, ...]):
    """INSERT ... SELECT from a CTE that takes the deal's shared fence (PostgreSQL)."""
    source = select(*(bindparam(name, type_=PURCHASES.c[name].type) for name in columns)).select_from(_fence_cte())
    return insert(PURCHASES).from_select(columns, source).returning(PURCHASES.c.id)


@dataclass(slots=True)
class PurchaseRecord:
    """A purchase as the hot paths just wrote it: the attributes of `Purchase` that a v1
    answer shows, without the ORM's instrumentation (which cost more than the answer itself)."""

    id: int | None = None
    token: str = ""
    account_id: int | None = None
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
    #: Coupon codes (strings), where a `Purchase` has Coupon rows.
    coupons: list[str] = field(default_factory=list)


_RECORD_FIELDS = frozenset(PurchaseRecord.__dataclass_fields__) - {"coupons"}


def record(values: dict[str, Any], coupons: Sequence[str] = ()) -> PurchaseRecord:
    return PurchaseRecord(**{k: v for k, v in values.items() if k in _RECORD_FIELDS}, coupons=list(coupons))


def insert_purchase(connection: Connection, values: dict[str, Any], fence: tuple[int, int] | None = None) -> int:
    """Insert a purchase row. With `fence` (namespace, key: see Database.shared_fence), the
    statement also takes the deal's shared advisory lock: one round trip instead of two."""
    if fence is None:
        return connection.execute(_INSERT, values).scalar_one()
    params = dict(values, fence_ns=fence[0], fence_key=fence[1])
    return connection.execute(_fenced_insert(tuple(values)), params).scalar_one()


def insert_purchases(connection: Connection, many: list[dict[str, Any]], fence: tuple[int, int] | None = None) -> None:
    """Insert many purchase rows, all with the same columns (the group commit's batch). With
    `fence` (PostgreSQL only, like Database.shared_fence), the statement also takes that deal's
    shared advisory lock (see insert_purchase).

    On PostgreSQL, one `INSERT ... SELECT FROM unnest(...)` with one array per column: psycopg's
    pipelined `executemany` cost per row, and was two thirds of the group committer's CPU in
    run 14's profile (gevent, where batches are large). In a micro-benchmark, a batch of 8 rows
    cost 613 µs of CPU that way against 475 µs."""
    if connection.dialect.name != "postgresql":
        connection.execute(insert(PURCHASES), many)
        return
    columns = tuple(many[0])
    params = {name: [values[name] for values in many] for name in columns}
    if fence is not None:
        params |= {"fence_ns": fence[0], "fence_key": fence[1]}
    connection.execute(_unnest_insert(columns, fence is not None), params)


@functools.cache
def _unnest_insert(columns: tuple[str, ...], fenced: bool):
    """INSERT INTO purchases (<columns>) SELECT * FROM unnest(:<column>::<type>[], ...), from a
    CTE that takes the deal's shared fence when `fenced` (PostgreSQL)."""
    arrays = [
        cast(bindparam(name, type_=ARRAY(PURCHASES.c[name].type)), ARRAY(PURCHASES.c[name].type)) for name in columns
    ]
    rows = func.unnest(*arrays).table_valued(*columns).render_derived(name="new_rows")
    source = select(*(rows.c[name] for name in columns))
    if fenced:
        source = source.select_from(_fence_cte().join(rows, true()))
    return insert(PURCHASES).from_select(columns, source)


def lock(connection: Connection, token: str, fence_ns: int | None = None) -> dict[str, Any] | None:
    """The purchase's row, locked until the transaction ends (SQLite's write transactions are
    exclusive already). With `fence_ns` (PostgreSQL), the same statement takes the shared fence
    of the purchase's deal (Database.fence): one round trip instead of two."""
    statement = _LOCK if fence_ns is None else _LOCK_FENCED
    row = connection.execute(statement, {"token": token, "fence_ns": fence_ns}).mappings().first()
    if row is None:
        return None
    values = dict(row)
    values.pop("fenced", None)
    return values


def coupon_codes(connection: Connection, purchase_id: int) -> list[str]:
    return list(connection.scalars(_COUPONS, {"purchase_id": purchase_id}))


def change(connection: Connection, purchase_id: int, **values: Any) -> None:
    params = {f"set_{name}": value for name, value in values.items()}
    connection.execute(_change_statement(tuple(values)), params | {"purchase_id": purchase_id})


@functools.cache
def _change_statement(columns: tuple[str, ...]):
    """UPDATE purchases SET <columns> WHERE id = :purchase_id."""
    changed = {name: bindparam(f"set_{name}", type_=PURCHASES.c[name].type) for name in columns}
    purchase = bindparam("purchase_id", type_=PURCHASES.c.id.type)
    return update(PURCHASES).where(PURCHASES.c.id == purchase).values(changed)


def add_lines(
    connection: Connection,
    purchase_id: int,
    item: dict[str, Any],
    codes: Sequence[str],
    *,
    changes: dict[str, Any] | None = None,
    one_statement: bool = False,
) -> None:
    """The purchase's line (what its deal's sold count is summed from), one coupon per unit, and
    `changes` to the purchase's row (a claim's fulfilment). With `one_statement` (PostgreSQL: its
    data-modifying CTEs), all of it in one statement: one round trip instead of three."""
    changes = changes or {}
    if not one_statement:
        if changes:
            change(connection, purchase_id, **changes)
        connection.execute(insert(ITEMS), [{**item, "purchase_id": purchase_id, "position": 0}])
        connection.execute(insert(COUPONS), [{"purchase_id": purchase_id, "code": code} for code in codes])
        return
    params = {f"item_{name}": value for name, value in item.items()}
    params |= {f"set_{name}": value for name, value in changes.items()}
    params |= {"purchase_id": purchase_id, "codes": list(codes)}
    connection.execute(_lines_statement(tuple(item), tuple(changes)), params)


@functools.cache
def _lines_statement(item_columns: tuple[str, ...], changed_columns: tuple[str, ...]):
    """WITH line AS (INSERT the line), changed AS (UPDATE the purchase) INSERT the coupons from
    unnest(:codes) (PostgreSQL)."""
    purchase = bindparam("purchase_id", type_=PURCHASES.c.id.type)
    line = {name: bindparam(f"item_{name}", type_=ITEMS.c[name].type) for name in item_columns}
    ctes = [insert(ITEMS).values(line | {"purchase_id": purchase, "position": 0}).cte("line")]
    if changed_columns:
        ctes.append(_change_statement(changed_columns).cte("changed"))
    codes = func.unnest(bindparam("codes", type_=ARRAY(COUPONS.c.code.type)))
    return insert(COUPONS).from_select(["purchase_id", "code"], select(purchase, codes)).add_cte(*ctes)


def fulfilment(
    values: dict[str, Any], *, user_id: str, credit_card_id: str | None, now: datetime, unit_price
) -> dict[str, Any]:
    """The columns a fulfilment sets: v1's state and its entry in the v3 ledger."""
    from decimal import Decimal

    subtotal = unit_price * values["units"]
    return {
        "fulfillment_state": "fulfilled",
        "payment_state": "paid",
        "user_id": user_id,
        "credit_card_id": credit_card_id,
        "fulfilled_at": now,
        "price_per_unit": values["price_per_unit"],
        "currency": values["currency"],
        "transaction_id": values["token"],
        "status": "paid",
        "transaction_time": now,
        "subtotal": subtotal,
        "total": subtotal,
        "shipping": Decimal(0),
        "discount": Decimal(0),
        "tax": Decimal(0),
    }
