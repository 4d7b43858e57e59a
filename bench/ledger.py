"""Scenario 4: the v3 ledger, `GET /v3/purchases?page=N`, on 1,000,000 purchases.

The data follow the ledger's design: fulfilled rows with `source='v3'`, a dense per-account
`ledger_seq` 1..N (unique on (account_id, ledger_seq)), one `purchase_items` row each; page N is
the index range `ledger_seq BETWEEN 50(N-1)+1 AND 50N`. Rows are written with COPY.

When the running app has no /v3 (the ledger not merged yet) the HTTP rows say so, and the page
queries are timed in SQL directly (EXPLAIN ANALYZE) so the row is not empty.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.procs import Postgres, flask_cli
from bench.targets import Target

PER_PAGE = 50
CHUNK = 100_000


@dataclass
class LedgerResult:
    rows: int
    load_seconds: float
    account_id: int
    secret: str
    last_page: int
    sql_ms: dict[str, float] = field(default_factory=dict)  # query name -> execution ms (EXPLAIN ANALYZE)
    fetch_ms: dict[str, float] = field(default_factory=dict)  # page -> median ms fetching a page in psycopg


def load_ledger(target: Target, rows: int) -> LedgerResult:
    """A new account with `rows` ledger purchases, each with one product line."""
    return load_into(target.db, target.env, rows)


def load_into(
    db: Postgres, env: dict[str, str], rows: int, *, analyze: bool = True, progress: Callable[[str], None] | None = None
) -> LedgerResult:
    """`load_ledger` on any migrated database: a new account (`flask accounts create` with
    `env`) and its `rows` purchases and items, streamed by COPY in chunks of `CHUNK` rows (memory
    stays bounded at any N). `load_seconds` counts the COPYs and, with `analyze`, the ANALYZE."""
    out = flask_cli(["accounts", "create", "ledger-bench"], env).stdout
    secret = out.strip().splitlines()[-1]
    started = time.perf_counter()
    with db.connect() as connection:
        (account_id,) = connection.execute(
            "SELECT id FROM accounts WHERE name = 'ledger-bench' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        # Ids taken from the table's own sequence, so the app's later inserts never collide.
        (first_id,) = connection.execute("SELECT nextval(pg_get_serial_sequence('purchases', 'id'))").fetchone()
        connection.execute("SELECT setval(pg_get_serial_sequence('purchases', 'id'), %s)", (first_id + rows,))
        cursor = connection.cursor()
        with cursor.copy(
            "COPY purchases (id, token, account_id, source, units, price_per_unit, fulfillment_state, "
            "payment_state, created_at, transaction_id, status, email_address, currency, transaction_time, "
            "subtotal, shipping, discount, tax, total, ledger_seq, fulfilled_at) FROM STDIN"
        ) as copy:
            for start in range(0, rows, CHUNK):
                lines = []
                for seq in range(start + 1, min(start + CHUNK, rows) + 1):
                    pid = first_id + seq - 1
                    minute = seq // 60
                    ts = f"2025-{1 + (minute // 43200) % 12:02d}-{1 + (minute // 1440) % 28:02d} {(minute // 60) % 24:02d}:{minute % 60:02d}:{seq % 60:02d}"
                    lines.append(
                        f"{pid}\tledger{account_id}x{seq}\t{account_id}\tv3\t1\t2000\tfulfilled\tpaid\t{ts}\t"
                        f"txn-{seq:07d}\tpaid\tbuyer{seq % 5000}@example.com\tUSD\t{ts}\t"
                        f"20.0000\t0.0000\t0.0000\t0.0000\t20.0000\t{seq}\t{ts}\n"
                    )
                copy.write("".join(lines))
                _progress(progress, "purchases", start + len(lines), rows, started)
        _done(progress, "purchases: COPY finished", started)
        with cursor.copy(
            "COPY purchase_items (purchase_id, position, name, sku, unit_price, quantity) FROM STDIN"
        ) as copy:
            for start in range(0, rows, CHUNK):
                copy.write(
                    "".join(
                        f"{first_id + seq - 1}\t0\tFloppy Disk (512k)\tSKU-{seq % 97}\t20.0000\t1\n"
                        for seq in range(start + 1, min(start + CHUNK, rows) + 1)
                    )
                )
                _progress(progress, "purchase_items", min(start + CHUNK, rows), rows, started)
        _done(progress, "purchase_items: COPY finished", started)
        connection.commit()
        _done(progress, "committed", started)
    if analyze:
        with db.connect(autocommit=True) as connection:
            connection.execute("ANALYZE purchases")
            connection.execute("ANALYZE purchase_items")
    last_page = (rows + PER_PAGE - 1) // PER_PAGE
    return LedgerResult(rows, time.perf_counter() - started, account_id, secret, last_page)


def _progress(report: Callable[[str], None] | None, table: str, done: int, rows: int, started: float) -> None:
    # About twenty lines per table, whatever N. psycopg queues what COPY is given and sends it
    # from a thread (in bounded memory), so these count rows handed over, ahead of the server.
    if report is not None and (done == rows or done % max(CHUNK, rows // 20 // CHUNK * CHUNK) == 0):
        report(f"  {table}: {done:,} / {rows:,} rows handed to COPY, {time.perf_counter() - started:.1f} s")


def _done(report: Callable[[str], None] | None, what: str, started: float) -> None:
    if report is not None:
        report(f"  {what}, {time.perf_counter() - started:.1f} s")


PAGE_SQL = (
    "SELECT p.* FROM purchases p WHERE p.account_id = %(account)s "
    "AND p.ledger_seq BETWEEN %(lo)s AND %(hi)s ORDER BY p.ledger_seq"
)
ITEMS_SQL = (
    "SELECT i.* FROM purchase_items i JOIN purchases p ON p.id = i.purchase_id WHERE p.account_id = %(account)s "
    "AND p.ledger_seq BETWEEN %(lo)s AND %(hi)s ORDER BY i.purchase_id, i.position"
)
TOTAL_SQL = "SELECT max(ledger_seq) FROM purchases WHERE account_id = %(account)s"
COUNT_SQL = "SELECT count(*) FROM purchases WHERE account_id = %(account)s AND fulfillment_state = 'fulfilled'"


def time_queries(target: Target, ledger: LedgerResult, repeats: int = 20) -> None:
    """EXPLAIN ANALYZE execution time of each query of a page, and the median wall time of
    fetching a whole page (rows + items + total) from Python."""
    with target.db.connect() as connection:
        for page in (1, ledger.last_page):
            args = {"account": ledger.account_id, "lo": (page - 1) * PER_PAGE + 1, "hi": page * PER_PAGE}
            for name, sql in (("rows", PAGE_SQL), ("items", ITEMS_SQL)):
                ledger.sql_ms[f"page {page} {name}"] = _explain_ms(connection, sql, args)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                connection.execute(TOTAL_SQL, args).fetchone()
                connection.execute(PAGE_SQL, args).fetchall()
                connection.execute(ITEMS_SQL, args).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
            ledger.fetch_ms[f"page {page}"] = statistics.median(times)
        args = {"account": ledger.account_id}
        ledger.sql_ms["total via max(ledger_seq)"] = _explain_ms(connection, TOTAL_SQL, args)
        ledger.sql_ms["total via count(*)"] = _explain_ms(connection, COUNT_SQL, args)


def _explain_ms(connection, sql: str, args: dict) -> float:
    connection.execute(sql, args).fetchall()  # warm the cache: we time the steady state
    plan = "\n".join(r[0] for r in connection.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, args).fetchall())
    match = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return float(match.group(1)) if match else float("nan")


def v3_present(target: Target, secret: str) -> bool:
    saved = target.secret
    target.secret = secret
    try:
        status, _ = target.request("GET", "/v3/purchases?page=1")
    finally:
        target.secret = saved
    return status == 200
