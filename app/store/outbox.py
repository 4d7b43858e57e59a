"""The SQL of the transactional outbox: events written in the transaction of the change they
describe (app/inventory/outbox.py), numbered and fanned out to webhook deliveries by the relay,
and delivered one lane at a time (app/webhooks/outbox.py, delivery.py).

A lane is one webhook's deliveries of one deal: its oldest pending delivery is its head, and
only the head is ever sent, by the job that holds its lease (`leased_by`, until
`lease_until`). A lease is taken with a conditional UPDATE, so of two takers (the relay, and a
job moving on to the next head) one wins; an expired lease is anybody's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, bindparam, cast, delete, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY

from .db import Database
from .models import StoredEvent, Webhook, WebhookDelivery

EVENTS = StoredEvent.__table__
DELIVERIES = WebhookDelivery.__table__
WEBHOOKS = Webhook.__table__

EVENT_COLUMNS = ("account_id", "deal_id", "type", "data", "meta", "created_at")
#: The relay's advisory lock (PostgreSQL): one relay numbers events at a time.
RELAY_NAMESPACE = 0x0EE7
#: Rows per INSERT on SQLite (its statements take at most 32,766 parameters).
SQLITE_ROWS = 1000


@dataclass(frozen=True, slots=True)
class EventRow:
    account_id: int
    deal_id: int | None
    type: str
    #: The event's `data`, as JSON text.
    data: str
    #: The request's id and trace context, as JSON text (None outside a request).
    meta: str | None
    created_at: datetime


def insert_events(connection: Connection, rows: Sequence[EventRow]) -> None:
    """Insert `rows` in one statement (on SQLite, one per SQLITE_ROWS)."""
    if not rows:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(_unnest_insert(), {name: [getattr(row, name) for row in rows] for name in EVENT_COLUMNS})
        return
    for start in range(0, len(rows), SQLITE_ROWS):
        chunk = rows[start : start + SQLITE_ROWS]
        connection.execute(
            insert(EVENTS).values([{name: getattr(row, name) for name in EVENT_COLUMNS} for row in chunk])
        )


@functools.cache
def _unnest_insert():
    """INSERT INTO events (<columns>) SELECT * FROM unnest(one array per column) (PostgreSQL):
    one statement, compiled once, whatever the number of rows."""
    arrays = [
        cast(bindparam(name, type_=ARRAY(EVENTS.c[name].type)), ARRAY(EVENTS.c[name].type)) for name in EVENT_COLUMNS
    ]
    rows = func.unnest(*arrays).table_valued(*EVENT_COLUMNS).render_derived(name="new_rows")
    return postgresql.insert(EVENTS).from_select(EVENT_COLUMNS, select(*(rows.c[name] for name in EVENT_COLUMNS)))


# -- the relay -------------------------------------------------------------------------------------


def relay_lock(connection: Connection) -> bool:
    """Take the relay's lock for this transaction, without waiting; False when another relay holds
    it. On SQLite the write transaction (BEGIN IMMEDIATE) is the lock."""
    if connection.dialect.name != "postgresql":
        return True
    return bool(connection.scalar(text("SELECT pg_try_advisory_xact_lock(:ns, 0)"), {"ns": RELAY_NAMESPACE}))


def _due(now):
    return or_(DELIVERIES.c.lease_until.is_(None), DELIVERIES.c.lease_until <= now)


_NOW = bindparam("now", type_=DELIVERIES.c.lease_until.type)

#: Anything for the relay to do: an event not numbered yet, or a pending delivery whose lease
#: is free (one round trip, no lock: a quiet relay costs a read).
_HAS_WORK = select(
    exists(select(EVENTS.c.id).where(EVENTS.c.seq.is_(None)))
    | exists(select(DELIVERIES.c.id).where(DELIVERIES.c.state == "pending", _due(_NOW)))
)


def has_work(connection: Connection, now: datetime) -> bool:
    return bool(connection.scalar(_HAS_WORK, {"now": now}))


_UNRELAYED = (
    select(EVENTS.c.id, EVENTS.c.account_id, EVENTS.c.deal_id, EVENTS.c.type)
    .where(EVENTS.c.seq.is_(None))
    .order_by(EVENTS.c.id)
    .limit(bindparam("limit"))
)


def unrelayed(connection: Connection, limit: int) -> list:
    """Committed events not numbered yet, oldest first: (id, account_id, deal_id, type)."""
    return connection.execute(_UNRELAYED, {"limit": limit}).all()


def last_seq(connection: Connection) -> int:
    return int(connection.scalar(select(func.coalesce(func.max(EVENTS.c.seq), 0))))


_NUMBER_PG = text(
    "UPDATE events SET seq = n.seq FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[])) AS n(id, seq) "
    "WHERE events.id = n.id"
)
_NUMBER = update(EVENTS).where(EVENTS.c.id == bindparam("b_id")).values(seq=bindparam("b_seq"))


def number(connection: Connection, numbered: Sequence[tuple[int, int]]) -> None:
    """Give each (event id, seq) its number, in one statement on PostgreSQL."""
    if not numbered:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(_NUMBER_PG, {"ids": [i for i, _ in numbered], "seqs": [s for _, s in numbered]})
    else:
        connection.execute(_NUMBER, [{"b_id": i, "b_seq": s} for i, s in numbered])


def subscriptions(connection: Connection, account_ids: Sequence[int]) -> list[tuple[int, int, str]]:
    """(webhook id, account id, comma-separated events) of the accounts' webhooks, as committed
    now (not a cache: a webhook registered a moment ago gets the events relayed after it)."""
    statement = select(WEBHOOKS.c.id, WEBHOOKS.c.account_id, WEBHOOKS.c.events).where(
        WEBHOOKS.c.account_id.in_(bindparam("accounts", expanding=True))
    )
    return [tuple(row) for row in connection.execute(statement, {"accounts": sorted(set(account_ids))})]


def insert_deliveries(connection: Connection, rows: Sequence[tuple[int, int, int]], now: datetime) -> None:
    """Pending deliveries (event id, webhook id, lane), inserted in the order given: the lane's
    order (ids grow with it)."""
    values = [
        {"event_id": e, "webhook_id": w, "lane": lane, "state": "pending", "attempts": 0, "created_at": now}
        for e, w, lane in rows
    ]
    for start in range(0, len(values), SQLITE_ROWS):
        connection.execute(insert(DELIVERIES).values(values[start : start + SQLITE_ROWS]))


@dataclass(frozen=True, slots=True)
class Claimed:
    """A lane head whose lease was just taken: what its job is enqueued with."""

    delivery_id: int
    webhook_id: int
    seq: int
    type: str
    meta: str | None


def _claim(which, now: datetime, until: datetime, owner: str, connection: Connection) -> list[Claimed]:
    claimed = connection.scalars(
        update(DELIVERIES)
        .where(which, DELIVERIES.c.state == "pending", _due(now))
        .values(leased_by=owner, lease_until=until)
        .returning(DELIVERIES.c.id)
    ).all()
    if not claimed:
        return []
    rows = connection.execute(
        select(DELIVERIES.c.id, DELIVERIES.c.webhook_id, EVENTS.c.seq, EVENTS.c.type, EVENTS.c.meta)
        .join(EVENTS, EVENTS.c.id == DELIVERIES.c.event_id)
        .where(DELIVERIES.c.id.in_(claimed))
        .order_by(DELIVERIES.c.id)
    ).all()
    return [Claimed(*row) for row in rows]


def claim_heads(connection: Connection, now: datetime, until: datetime, owner: str, limit: int) -> list[Claimed]:
    """Lease, to `owner` until `until`, the head of every lane whose head is free (up to
    `limit` lanes)."""
    heads = (
        select(func.min(DELIVERIES.c.id).label("id"))
        .where(DELIVERIES.c.state == "pending")
        .group_by(DELIVERIES.c.webhook_id, DELIVERIES.c.lane)
        .subquery()
    )
    due = (
        select(heads.c.id)
        .join(DELIVERIES, DELIVERIES.c.id == heads.c.id)
        .where(_due(now))
        .limit(limit)
        .scalar_subquery()
    )
    return _claim(DELIVERIES.c.id.in_(due), now, until, owner, connection)


def claim_next(
    connection: Connection, webhook_id: int, lane: int, now: datetime, until: datetime, owner: str
) -> Claimed | None:
    """Lease the lane's new head, if it has one and nobody holds it."""
    head = (
        select(func.min(DELIVERIES.c.id))
        .where(DELIVERIES.c.webhook_id == webhook_id, DELIVERIES.c.lane == lane, DELIVERIES.c.state == "pending")
        .scalar_subquery()
    )
    claimed = _claim(DELIVERIES.c.id == head, now, until, owner, connection)
    return claimed[0] if claimed else None


def release(connection: Connection, delivery_ids: Sequence[int], owner: str, until: datetime | None) -> None:
    """Give back leases `owner` took (its jobs could not be enqueued): free again at `until`."""
    if delivery_ids:
        connection.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(list(delivery_ids)), DELIVERIES.c.leased_by == owner)
            .values(leased_by=None, lease_until=until)
        )


# -- a delivery ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at a delivery, as its job sees it once it holds the lease."""

    delivery_id: int
    webhook_id: int
    lane: int
    #: This attempt's number (1 for the first).
    attempt: int
    seq: int
    type: str
    created_at: datetime
    data: str
    meta: str | None
    url: str
    secret: str


def take(connection: Connection, delivery_id: int, owner: str, until: datetime) -> Attempt | None:
    """Start an attempt: the delivery, still pending and leased to `owner`, counts one more
    attempt and is leased until `until`. None when `owner` no longer holds it (delivered, or its
    lease expired and was taken by another job), or its webhook was deleted."""
    started = connection.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.leased_by == owner, DELIVERIES.c.state == "pending")
        .values(attempts=DELIVERIES.c.attempts + 1, lease_until=until)
        .returning(DELIVERIES.c.attempts, DELIVERIES.c.webhook_id, DELIVERIES.c.lane, DELIVERIES.c.event_id)
    ).first()
    if started is None:
        return None
    attempts, webhook_id, lane, event_id = started
    detail = connection.execute(
        select(
            EVENTS.c.seq,
            EVENTS.c.type,
            EVENTS.c.created_at,
            EVENTS.c.data,
            EVENTS.c.meta,
            WEBHOOKS.c.url,
            WEBHOOKS.c.secret,
        )
        .select_from(EVENTS.join(WEBHOOKS, WEBHOOKS.c.id == webhook_id))
        .where(EVENTS.c.id == event_id)
    ).first()
    if detail is None:
        return None
    return Attempt(delivery_id, webhook_id, lane, attempts, *detail)


def settle(connection: Connection, delivery_id: int, state: str) -> None:
    """The delivery is done: `delivered`, or `failed` (given up). Whoever holds its lease (an
    attempt that outlived its lease may finish after another began: it was delivered all the
    same)."""
    connection.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.state == "pending")
        .values(state=state, leased_by=None, lease_until=None)
    )


def back_off(connection: Connection, delivery_id: int, owner: str, until: datetime) -> None:
    """The attempt failed: the delivery waits until `until`, leased to nobody (the relay leases
    it again then)."""
    connection.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.leased_by == owner, DELIVERIES.c.state == "pending")
        .values(leased_by=None, lease_until=until)
    )


# -- reads and upkeep ------------------------------------------------------------------------------

_PAGE = (
    select(EVENTS.c.seq, EVENTS.c.type, EVENTS.c.created_at, EVENTS.c.data)
    .where(EVENTS.c.account_id == bindparam("account"), EVENTS.c.seq > bindparam("after"))
    .order_by(EVENTS.c.seq)
    .limit(bindparam("limit"))
)


def page(connection: Connection, account_id: int, after: int, limit: int) -> list:
    """The account's relayed events numbered after `after`, oldest first: (seq, type,
    created_at, data). An index range of (account_id, seq)."""
    return connection.execute(_PAGE, {"account": account_id, "after": after, "limit": limit}).all()


def purge(db: Database, cutoff: datetime, batch: int = 10_000, max_batches: int = 1_000) -> int:
    """Delete relayed events created before `cutoff` (their deliveries with them), `batch` per
    transaction, except the newest event: its number is where the next one's starts, so numbers
    are never given twice. Returns how many."""
    total = 0
    pending = select(DELIVERIES.c.id).where(DELIVERIES.c.event_id == EVENTS.c.id, DELIVERIES.c.state == "pending")
    newest = select(func.max(EVENTS.c.seq)).scalar_subquery()
    for _ in range(max_batches):
        old = (
            select(EVENTS.c.id)
            .where(
                and_(EVENTS.c.created_at <= cutoff, EVENTS.c.seq.is_not(None), EVENTS.c.seq < newest), ~exists(pending)
            )
            .limit(batch)
        )
        with db.begin() as connection:
            deleted = connection.execute(delete(EVENTS).where(EVENTS.c.id.in_(old.scalar_subquery()))).rowcount or 0
        total += deleted
        if deleted < batch:
            break
    return total
