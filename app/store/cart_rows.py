"""The SQL of carts: the cart row and the purchases that are its items (purchase_rows.py writes
those). Every write is conditional on what its flow read, like the purchases' writes."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, bindparam, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from .models import Cart, Purchase
from .purchase_rows import READ_COLUMNS, PurchaseRecord, TokenRecord, naive_utc
from .purchase_rows import read_many as read_purchases

CARTS = Cart.__table__
PURCHASES = Purchase.__table__

COLUMNS = ("id", "token", "account_id", "user_id", "state", "reserved_until", "attempt", "items", "created_at")


@dataclass(slots=True)
class CartRecord(TokenRecord):
    user_id: str | None = None
    state: str = "pending"
    reserved_until: datetime | None = None
    #: The nonce of the attempt taking the cart's holds while it is pending.
    attempt: str | None = None
    #: (deal_id, units) of every item, in deal order.
    items: list[tuple[int, int]] = field(default_factory=list)
    created_at: datetime | None = None
    #: The items' purchases, in deal order (read with the cart).
    purchases: list[PurchaseRecord] = field(default_factory=list)

    def row(self) -> dict:
        values = self.values(name for name in COLUMNS if name != "id")
        values["items"] = json.dumps([list(item) for item in self.items])
        return values


def _record(row) -> CartRecord:
    values = dict(row._mapping)
    values["items"] = [tuple(item) for item in json.loads(values["items"])]
    return CartRecord(**values)


_READ_MANY = select(*(CARTS.c[name] for name in COLUMNS)).where(CARTS.c.token.in_(bindparam("tokens", expanding=True)))
_ITEMS_OF = select(PURCHASES.c.cart_id, PURCHASES.c.token).where(
    PURCHASES.c.cart_id.in_(bindparam("carts", expanding=True))
)


def read(connection: Connection, token: str) -> CartRecord | None:
    """The cart and its items' purchases (in deal order)."""
    return read_many(connection, [token]).get(token)


def read_many(connection: Connection, tokens: Sequence[str]) -> dict[str, CartRecord]:
    """Carts by token, each with its items' purchases (in deal order): four queries for any
    number of carts (three when no item is fulfilled)."""
    carts = {cart.token: cart for cart in map(_record, connection.execute(_READ_MANY, {"tokens": list(tokens)}))}
    if not carts:
        return carts
    items: dict[str, list[str]] = defaultdict(list)
    for cart_token, token in connection.execute(_ITEMS_OF, {"carts": list(carts)}):
        items[cart_token].append(token)
    purchases = read_purchases(connection, [token for tokens_of in items.values() for token in tokens_of])
    for cart in carts.values():
        cart.purchases = sorted((purchases[t] for t in items[cart.token] if t in purchases), key=lambda p: p.deal_id)
    return carts


def start_many(connection: Connection, carts: Sequence[CartRecord]) -> set[str]:
    """Write pending carts (of distinct tokens), each unless its token is taken, in one
    statement; sets the ids of those written and returns their tokens."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    by_token = {cart.token: cart for cart in carts}
    for token, cart_id in connection.execute(_start(dialect), [cart.row() for cart in carts]):
        by_token[token].id = cart_id
    return {token for token, cart in by_token.items() if cart.id is not None}


@functools.cache
def _start(dialect):
    values = {name: bindparam(name, type_=CARTS.c[name].type) for name in COLUMNS if name != "id"}
    return dialect.insert(CARTS).values(values).on_conflict_do_nothing().returning(CARTS.c.token, CARTS.c.id)


def drop_pending(connection: Connection, token: str, attempt: str) -> None:
    """A cart whose holds could not all be had: gone, so that a retry decides afresh."""
    connection.execute(
        delete(CARTS).where(CARTS.c.token == token, CARTS.c.state == "pending", CARTS.c.attempt == attempt)
    )


def change(connection: Connection, token: str, seen_state: str, seen_attempt: str | None, **values) -> bool:
    """Change the cart if it is still in `seen_state` (and, pending, still `seen_attempt`'s)."""
    condition = (CARTS.c.token == token) & (CARTS.c.state == seen_state)
    if seen_state == "pending":
        condition &= CARTS.c.attempt.is_not_distinct_from(seen_attempt)
    return connection.scalar(update(CARTS).where(condition).values(**values).returning(CARTS.c.id)) is not None


@dataclass(slots=True)
class CartChange:
    """A cart's row moves from the state (and, pending, the attempt) its flow read to `state`
    and `reserved_until`."""

    token: str
    seen_state: str
    seen_attempt: str | None
    state: str
    reserved_until: datetime | None


_CHANGE_MANY = text(
    """
UPDATE carts AS c SET state = n.state, reserved_until = n.reserved_until
FROM unnest(
  CAST(:token AS varchar[]), CAST(:seen_state AS varchar[]), CAST(:seen_attempt AS varchar[]),
  CAST(:state AS varchar[]), CAST(:reserved_until AS timestamp[])
) AS n(token, seen_state, seen_attempt, state, reserved_until)
WHERE c.token = n.token AND c.state = n.seen_state
  AND (n.seen_state <> 'pending' OR c.attempt IS NOT DISTINCT FROM n.seen_attempt)
RETURNING c.token
"""
)


def change_many(connection: Connection, changes: Sequence[CartChange]) -> set[str]:
    """`change` for many carts (each token at most once) in one statement on PostgreSQL;
    returns the tokens of the carts changed."""
    if connection.dialect.name != "postgresql":
        return {
            c.token
            for c in changes
            if change(connection, c.token, c.seen_state, c.seen_attempt, state=c.state, reserved_until=c.reserved_until)
        }
    params = {name: [getattr(c, name) for c in changes] for name in CartChange.__dataclass_fields__}
    params["reserved_until"] = [naive_utc(until) for until in params["reserved_until"]]
    return set(connection.scalars(_CHANGE_MANY, params))


def items_as_read(connection: Connection, carts: Sequence[Sequence[PurchaseRecord]]) -> list[bool]:
    """For each cart's items (their purchases as read): whether every one is still as read
    (state and hold end). Locks all their rows, in token order, until the transaction ends
    (SQLite's write transactions are exclusive already): a cart's items change all together or
    not at all."""
    tokens = [p.token for purchases in carts for p in purchases]
    query = (
        select(*(PURCHASES.c[name] for name in READ_COLUMNS))
        .where(PURCHASES.c.token.in_(tokens))
        .order_by(PURCHASES.c.token)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    now = {row.token: (row.fulfillment_state, row.reserved_until) for row in connection.execute(query)}
    return [all(now.get(p.token) == (p.fulfillment_state, p.reserved_until) for p in purchases) for purchases in carts]


def stale_pending(connection: Connection, before: datetime, limit: int = 500) -> list[CartRecord]:
    """Carts left pending since before `before`: their attempts died between the first write
    and the last."""
    query = (
        select(*(CARTS.c[name] for name in COLUMNS))
        .where(CARTS.c.state == "pending", CARTS.c.created_at < before)
        .order_by(CARTS.c.created_at)
        .limit(limit)
    )
    return [_record(row) for row in connection.execute(query)]
