"""The kept-answer lookup on PostgreSQL: one index probe per (account, key) asked, however many
keys the account has used and whatever the planner knows of the table."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from sqlalchemy import text

from app.store import kept_answers as store
from app.store.db import Database
from app.store.models import utcnow

#: Keys one account has used (and kept answers for) before the lookup. With an IN list of row
#: values, a table of this size that was never analyzed was read through the index on account_id
#: alone: every record of the account, for each lookup.
KEYS_USED = 5_000


class OneConnection:
    """`reading()` on one connection: the session whose temporary table the lookup must see."""

    def __init__(self, connection) -> None:
        self.connection = connection

    @contextlib.contextmanager
    def reading(self):
        yield self.connection


def plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_lookup_reads_only_the_keys_it_asks_for(database_url):
    db = Database(database_url)
    try:
        with db.engine.connect() as connection:
            # A temporary copy, which no autovacuum ever analyzes: the planner knows nothing of
            # its rows, as of a new table's (or any table's, with autovacuum off).
            connection.execute(
                text("CREATE TEMPORARY TABLE idempotency_records (LIKE public.idempotency_records INCLUDING ALL)")
            )
            now = utcnow()
            rows = [store.KeptRow(1, f"key-{i}", "f", 200, "{}", now) for i in range(KEYS_USED)]
            assert store.keep(connection, rows, now - timedelta(days=1)) == set()
            asked = [(1, "key-7"), (1, "key-40"), (1, "never-used")]
            cutoff = now - timedelta(hours=1)
            found = store.find_many(OneConnection(connection), asked, cutoff)
            assert sorted(found) == [(1, "key-40"), (1, "key-7")]

            statement = store._find_unnest().compile(dialect=connection.dialect)
            params = {"account_id": [a for a, _ in asked], "key": [k for _, k in asked], "cutoff": cutoff}
            explained = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params).scalar()
            scans = [n for n in plan_nodes(explained[0]["Plan"]) if n.get("Relation Name") == "idempotency_records"]
            read = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"] for n in scans)
            assert scans and read <= len(asked), explained
            connection.rollback()
    finally:
        db.dispose()
