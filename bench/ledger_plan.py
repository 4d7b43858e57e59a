"""`python -m bench.ledger_plan --rows 10000000`: scenario 4's ledger at any size, and its plans.

Creates a fresh PostgreSQL database (as `python -m bench` does: `bench.procs.Postgres`, then
`flask --app app db upgrade` with DATABASE_URL set), loads `--rows` ledger purchases of one
account with scenario 4's loader (`bench.ledger.load_into`: COPY streamed in chunks, memory
bounded), runs ANALYZE, then prints:

* rows loaded, load and ANALYZE time;
* the size of `purchases` and `purchase_items`: heap, all indexes, each index;
* `EXPLAIN (ANALYZE, BUFFERS)` of the SQL the app issues for `GET /v3/purchases?page=N`:
  `total_query` and `page_query` from app/store/ledger.py compiled for PostgreSQL with literal
  binds (page 1, the middle page, the last page), the first run (nothing of the query in shared
  buffers yet) and the median of warm runs; the page query once more as a generic plan (what a
  prepared statement may switch to); and `count(*)` of the ledger, which the app does *not*
  issue, for contrast;
* unless --no-http: the statements one request really issues (captured from the app's engine,
  explained with their bound parameters) and the latency of `GET /v3/purchases?page=1` and
  `?page=LAST` through Flask's test client (the whole app: auth, sealing check, SQL,
  serialisation; no sockets, no gunicorn), against the Redis at --redis-url.

Drops the database at the end unless --keep. PostgreSQL is BENCH_POSTGRES_URL's server
(default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time

import psycopg

from bench import ledger as ledger_mod
from bench.procs import Postgres, admin_url, flask_cli

#: Disk a loaded row takes: purchases + its item, heap and indexes, about 600 bytes (measured at
#: 100,000 rows), doubled for the WAL the load writes.
BYTES_PER_ROW = 1_200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--repeats", type=int, default=20, help="warm runs of each query and request")
    parser.add_argument("--no-http", action="store_true", help="skip the app (test client) part")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/14", help="Redis the app uses (--no-http: unused)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if not check_disk(args.rows):
        return 2
    db = Postgres(prefix="oe_ledger_plan")
    env = {"DATABASE_URL": db.url, "REDIS_URL": args.redis_url, "SECRET_KEY": "bench", "ACCESS_LOG": "false"}
    try:
        db.create()
        print(f"database {db.name}", flush=True)
        flask_cli(["db", "upgrade"], env)
        print(f"loading {args.rows:,} ledger purchases (COPY, {ledger_mod.CHUNK:,} rows a chunk) ...", flush=True)
        led = ledger_mod.load_into(db, env, args.rows, analyze=False, progress=lambda line: print(line, flush=True))
        started = time.perf_counter()
        with db.connect(autocommit=True) as connection:
            connection.execute("ANALYZE purchases")
            connection.execute("ANALYZE purchase_items")
        analyze_s = time.perf_counter() - started
        print(
            f"\nloaded {led.rows:,} purchases + {led.rows:,} purchase_items in {led.load_seconds:.1f} s "
            f"({led.rows / led.load_seconds:,.0f} purchases/s); ANALYZE {analyze_s:.1f} s",
            flush=True,
        )
        print_sizes(db)
        pages = sorted({1, (led.last_page + 1) // 2, led.last_page})
        explain_app_queries(db, led, pages, args.repeats)
        if not args.no_http:
            http(db, env, led, pages, args.repeats)
    finally:
        if args.keep and db.created:
            print(f"\nkept database {db.name}: {db.url}")
        else:
            db.drop()
    return 0


def check_disk(rows: int) -> bool:
    need = rows * BYTES_PER_ROW
    free = shutil.disk_usage("/").free
    with psycopg.connect(admin_url(), autocommit=True) as connection:
        (data_dir,) = connection.execute("SHOW data_directory").fetchone()
    try:
        free = min(free, shutil.disk_usage(data_dir).free)
    except OSError:
        pass  # not readable by us: / stands for it
    print(f"disk: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed for {rows:,} rows")
    if free < 2 * need:
        print("not enough free disk (want twice the estimate): giving up", file=sys.stderr)
        return False
    return True


# -- sizes ---------------------------------------------------------------------------------


def print_sizes(db: Postgres) -> None:
    with db.connect() as connection:
        print("\nsizes")
        for table in ("purchases", "purchase_items"):
            total, heap, indexes, rows = connection.execute(
                "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid), c.reltuples"
                " FROM pg_class c WHERE c.oid = %s::regclass",
                (table,),
            ).fetchone()
            print(
                f"  {table}: total {mb(total)} = heap {mb(heap)} + indexes {mb(indexes)}"
                f" + toast/fsm/vm {mb(total - heap - indexes)}  (reltuples {rows:,.0f})"
            )
            for name, size, definition in connection.execute(
                "SELECT i.indexname, pg_relation_size(format('%%I', i.indexname)::regclass), i.indexdef"
                " FROM pg_indexes i WHERE i.schemaname = 'public' AND i.tablename = %s ORDER BY 2 DESC, 1",
                (table,),
            ):
                using = definition.split(" USING ", 1)[1]
                print(f"    {name:<45} {mb(size):>10}  {using}")
        (database,) = connection.execute("SELECT pg_database_size(current_database())").fetchone()
        print(f"  database: {mb(database)}", flush=True)


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 1024:,.0f} kB"


# -- plans -----------------------------------------------------------------------------------


def compiled(statement) -> str:
    """The SQL SQLAlchemy renders for PostgreSQL, bound values written in."""
    from sqlalchemy.dialects import postgresql

    return str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def explain_app_queries(db: Postgres, led: ledger_mod.LedgerResult, pages: list[int], repeats: int) -> None:
    from app.store import ledger as store

    queries: list[tuple[str, str]] = [("total_query (total_purchases)", compiled(store.total_query(led.account_id)))]
    for page in pages:
        # As `_read_page` asks: clamped to the total it has just read.
        sql = compiled(store.page_query(led.account_id, page, store.PER_PAGE, led.rows))
        queries.append((f"page_query page {page:,} of {led.last_page:,}", sql))
    queries.append(
        (
            "count(*) of the ledger (NOT issued by the app; for contrast)",
            f"SELECT count(*) FROM purchases WHERE account_id = {led.account_id} AND fulfillment_state = 'fulfilled'",
        )
    )
    with db.connect(autocommit=True) as connection:
        for name, sql in queries:
            explain(connection, name, sql, None, repeats)
        generic_plan(connection, led, pages[-1])


def explain(connection: psycopg.Connection, name: str, sql: str, params, repeats: int) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS): the first run's plan in full, then the warm runs' times."""
    print(f"\n=== {name}\n{sql}\n--- first run")
    plan = _explain(connection, sql, params)
    print("\n".join(plan))
    warm = []
    last = plan
    for _ in range(repeats):
        last = _explain(connection, sql, params)
        warm.append(_ms(last, "Execution Time"))
    if warm:
        buffers = next((line.strip() for line in last if "Buffers:" in line), "")
        print(
            f"--- warm: execution median {statistics.median(warm):.3f} ms (min {min(warm):.3f}, max {max(warm):.3f},"
            f" {len(warm)} runs); planning {_ms(last, 'Planning Time'):.3f} ms; top node {buffers}",
            flush=True,
        )
    return plan


def _explain(connection: psycopg.Connection, sql: str, params) -> list[str]:
    return [row[0] for row in connection.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()]


def _ms(plan: list[str], label: str) -> float:
    for line in plan:
        match = re.search(label + r": ([\d.]+) ms", line)
        if match:
            return float(match.group(1))
    return float("nan")


def generic_plan(connection: psycopg.Connection, led: ledger_mod.LedgerResult, page: int) -> None:
    """The page query as a prepared statement's generic plan (values unknown when planned):
    psycopg prepares a statement after 5 runs, and PostgreSQL may then keep a generic plan."""
    from sqlalchemy.dialects import postgresql

    from app.store import ledger as store

    statement = store.page_query(led.account_id, page, store.PER_PAGE, led.rows)
    query = statement.compile(dialect=postgresql.dialect())
    names = list(query.params)
    sql = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", str(query))
    values = ", ".join(str(query.params[n]) for n in names)
    connection.execute("SET plan_cache_mode = force_generic_plan")
    connection.execute(f"PREPARE ledger_page AS {sql}")
    try:
        plan = _explain(connection, f"EXECUTE ledger_page({values})", None)
    finally:
        connection.execute("DEALLOCATE ledger_page")
        connection.execute("RESET plan_cache_mode")
    print(f"\n=== page_query page {page:,} as a generic plan (plan_cache_mode = force_generic_plan)")
    print(f"PREPARE ledger_page AS {sql};\nEXECUTE ledger_page({values});\n---")
    print("\n".join(plan), flush=True)


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text):,} chars)"


# -- the app ---------------------------------------------------------------------------------


def http(db: Postgres, env: dict[str, str], led: ledger_mod.LedgerResult, pages: list[int], repeats: int) -> None:
    import redis
    from sqlalchemy import event

    os.environ.update(env)
    from app import create_app

    client_redis = redis.Redis.from_url(env["REDIS_URL"])
    keys_before = set(client_redis.scan_iter(count=1000))
    app = create_app({"DATABASE_URL": env["DATABASE_URL"], "REDIS_URL": env["REDIS_URL"], "TESTING": False})
    engine = app.extensions["offer_engine"].db.engine
    captured: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
        captured.append((statement, parameters))

    headers = {"Authorization": f"Bearer {led.secret}"}
    try:
        with app.test_client() as client:
            event.listen(engine, "before_cursor_execute", capture)
            response = client.get(f"/v3/purchases?page={pages[0]}", headers=headers)
            event.remove(engine, "before_cursor_execute", capture)
            body = response.get_json()
            print(
                f"\n=== GET /v3/purchases?page={pages[0]}: {response.status_code}, total_purchases "
                f"{body.get('total_purchases')}, total_pages {body.get('total_pages')},"
                f" {len(body.get('purchases') or [])} purchases"
            )
            print(f"statements the request issued ({len(captured)}):")
            for statement, parameters in captured:
                print(f"  {short(' '.join(statement.split()))}\n    params {short(str(parameters))}")
            with db.connect(autocommit=True) as connection:
                for statement, parameters in captured:
                    if statement.lstrip().upper().startswith("SELECT") and "purchase" in statement:
                        explain(
                            connection, "as issued by the request (bound parameters; warm)", statement, parameters, 0
                        )
            print("\nlatency through Flask's test client (whole request, warm)")
            for page in pages:
                times, status, count = [], 0, 0
                for _ in range(repeats + 1):
                    t0 = time.perf_counter()
                    response = client.get(f"/v3/purchases?page={page}", headers=headers)
                    times.append((time.perf_counter() - t0) * 1000)
                    status, count = response.status_code, len(response.get_json().get("purchases") or [])
                times = sorted(times[1:])
                print(
                    f"  GET /v3/purchases?page={page:<7} {status}, {count} purchases: median {statistics.median(times):.2f} ms,"
                    f" p90 {times[int(0.9 * (len(times) - 1))]:.2f} ms, min {times[0]:.2f} ms ({len(times)} requests)",
                    flush=True,
                )
    finally:
        app.extensions["offer_engine"].db.engine.dispose()
        new_keys = [k for k in client_redis.scan_iter(count=1000) if k not in keys_before]
        if new_keys:
            client_redis.delete(*new_keys)
        client_redis.close()


if __name__ == "__main__":
    raise SystemExit(main())
