"""The SQL of Idempotency-Key records: the first successful answer to a keyed write, kept in
the same transaction as the write's effect (app/core/idempotency.py is the domain half).

A record older than the retention period is as good as absent: reads ignore it and a new
request with its key replaces it in place (so a key reused a day later is a new request, never
a unique-constraint error).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, cast, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from .db import Database, KeptReads
from .models import IdempotencyRecord

RECORDS = IdempotencyRecord.__table__
COLUMNS = ("account_id", "key", "fingerprint", "status_code", "body", "created_at")


@dataclass(frozen=True, slots=True)
class KeptRow:
    account_id: int
    key: str
    fingerprint: str
    status_code: int
    body: str
    created_at: datetime


def keep(connection: Connection, rows: Sequence[KeptRow], cutoff: datetime) -> set[tuple[int, str]]:
    """Insert `rows` (each key at most once), replacing records older than `cutoff`. Returns the
    (account_id, key) of rows refused because a record newer than `cutoff` holds the key: their
    write must not commit."""
    if not rows:
        return set()
    if connection.dialect.name == "postgresql":
        params = {name: [getattr(row, name) for row in rows] for name in COLUMNS} | {"cutoff": cutoff}
        kept = connection.execute(_unnest_upsert(), params).all()
    else:
        statement = (
            sqlite.insert(RECORDS)
            .values([{name: getattr(row, name) for name in COLUMNS} for row in rows])
            .on_conflict_do_update(
                index_elements=["account_id", "key"],
                set_={name: sqlite.insert(RECORDS).excluded[name] for name in COLUMNS[2:]},
                where=RECORDS.c.created_at <= cutoff,
            )
            .returning(RECORDS.c.account_id, RECORDS.c.key)
        )
        kept = connection.execute(statement).all()
    return {(row.account_id, row.key) for row in rows} - {(account_id, key) for account_id, key in kept}


@functools.cache
def _unnest_upsert():
    """INSERT INTO idempotency_records SELECT FROM unnest(one array per column) ON CONFLICT DO
    UPDATE ... WHERE the old record is past the cutoff, RETURNING the keys written (PostgreSQL)."""
    arrays = [cast(bindparam(name, type_=ARRAY(RECORDS.c[name].type)), ARRAY(RECORDS.c[name].type)) for name in COLUMNS]
    rows = func.unnest(*arrays).table_valued(*COLUMNS).render_derived(name="new_rows")
    statement = postgresql.insert(RECORDS).from_select(COLUMNS, select(*(rows.c[name] for name in COLUMNS)))
    return statement.on_conflict_do_update(
        index_elements=["account_id", "key"],
        set_={name: statement.excluded[name] for name in COLUMNS[2:]},
        where=RECORDS.c.created_at <= bindparam("cutoff", type_=RECORDS.c.created_at.type),
    ).returning(RECORDS.c.account_id, RECORDS.c.key)


def drop(connection: Connection, pairs: Sequence[tuple[int, str]]) -> None:
    """Remove the records of `pairs` (account_id, key) written earlier in this transaction for
    writes that then did not happen."""
    if pairs:
        connection.execute(delete(RECORDS).where(tuple_(RECORDS.c.account_id, RECORDS.c.key).in_(list(pairs))))


_NEWER = RECORDS.c.created_at > bindparam("cutoff", type_=RECORDS.c.created_at.type)

#: SQLite: (account_id, key) IN (the pairs).
_FIND = select(*(RECORDS.c[name] for name in COLUMNS)).where(
    tuple_(RECORDS.c.account_id, RECORDS.c.key).in_(bindparam("pairs", expanding=True)), _NEWER
)


@functools.cache
def _find_unnest():
    """PostgreSQL: the pairs as two arrays, joined to the records: one lookup of the unique
    (account_id, key) index per pair, whatever the planner knows of the table. The IN list of
    row values, planned for a table never analyzed (a new one, or autovacuum off), used the
    index for account_id alone and filtered every record of the account (5,000 of them in
    tests/unit/store/test_kept_answers_lookup.py): a lookup's cost grew with the keys used."""
    arrays = [
        cast(bindparam(name, type_=ARRAY(RECORDS.c[name].type)), ARRAY(RECORDS.c[name].type)) for name in COLUMNS[:2]
    ]
    asked = func.unnest(*arrays).table_valued(*COLUMNS[:2]).render_derived(name="asked")
    on = (RECORDS.c.account_id == asked.c.account_id) & (RECORDS.c.key == asked.c.key)
    return select(*(RECORDS.c[name] for name in COLUMNS)).select_from(asked.join(RECORDS, on)).where(_NEWER)


def find_many(
    reads: Database | KeptReads, pairs: Sequence[tuple[int, str]], cutoff: datetime
) -> dict[tuple[int, str], KeptRow]:
    """The records of many (account_id, key) newer than `cutoff`, in one query (through the
    unique (account_id, key) index)."""
    if not pairs:
        return {}
    asked = sorted(set(pairs))
    with reads.reading() as connection:
        if connection.dialect.name == "postgresql":
            params = {"account_id": [a for a, _ in asked], "key": [k for _, k in asked], "cutoff": cutoff}
            rows = connection.execute(_find_unnest(), params).all()
        else:
            rows = connection.execute(_FIND, {"pairs": asked, "cutoff": cutoff}).all()
    return {(row.account_id, row.key): KeptRow(*row) for row in rows}


def purge(db: Database, cutoff: datetime, batch: int = 10_000, max_batches: int = 1_000) -> int:
    """Delete records older than `cutoff`, `batch` rows per transaction (through the index on
    created_at), until none is left; returns how many. Each batch is short, so writes that keep
    records meanwhile never wait long."""
    total = 0
    for _ in range(max_batches):
        old = select(RECORDS.c.id).where(RECORDS.c.created_at <= cutoff).limit(batch)
        with db.begin() as connection:
            deleted = connection.execute(delete(RECORDS).where(RECORDS.c.id.in_(old.scalar_subquery()))).rowcount
        total += deleted or 0
        if (deleted or 0) < batch:
            break
    return total
