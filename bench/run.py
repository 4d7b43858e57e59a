"""`python -m bench` (or `make bench`): every scenario and baseline back to back, one table.

Starts what it needs on 127.0.0.1 (a fresh PostgreSQL database, private redis-servers, the app
from the Procfile's web and worker lines, the baselines under the same gunicorn settings),
drives load from a separate process (wrk), checks the stores after each scenario, prints the
results and the ratios against the targets, writes bench/results/latest.md, and stops
everything it started by pid and drops its databases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench import ledger as ledger_mod
from bench import profile as profile_mod
from bench import redisraw, scenarios, sweep
from bench import streams as streams_mod
from bench.baselines import rowlock
from bench.procs import ROOT, EmbeddedRedis, Postgres, flask_cli, procfile_command
from bench.scenarios import Row
from bench.targets import Target, secret_sha256
from bench.wrk import wrk_binary

RESULTS = ROOT / "bench" / "results"

# Worker models tried on scenarios 1 and 2 (config/gunicorn.py reads these variables).
WORKER_MODELS: list[tuple[str, dict[str, str]]] = [
    ("sync x4", {"GUNICORN_WORKER_CLASS": "sync", "WEB_CONCURRENCY": "4"}),
    ("sync x8", {"GUNICORN_WORKER_CLASS": "sync", "WEB_CONCURRENCY": "8"}),
    ("gthread 2x4", {"GUNICORN_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"}),
    ("gthread 2x8", {"GUNICORN_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "8"}),
    ("gthread 4x1", {"GUNICORN_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "1"}),
    ("default (gevent over PostgreSQL, 1 process per core)", {}),
    ("gthread 4x8", {"GUNICORN_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "8"}),
    ("gthread 8x2", {"GUNICORN_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "8", "GUNICORN_THREADS": "2"}),
    ("gthread 4x4", {"WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "4"}),
    ("gthread 2x16", {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "16"}),
    ("gthread 2x12", {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "12"}),
    ("gthread 3x8", {"WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "8"}),
    # gevent (the app's `gevent` extra; docs/bench/2026-11-24-gevent-fairness.md). psycopg waits
    # cooperatively under gevent; with PSYCOPG_WAIT_FUNC=wait_c its waits block the process
    # instead, so a transaction never yields mid-way (the group commit's batches stop waiting
    # behind every other request). Measured only: a lock wait that blocks the process could
    # stop it, so wait_c is not a supported setting.
    ("gevent 2", {"GUNICORN_WORKER_CLASS": "gevent", "WEB_CONCURRENCY": "2"}),
    # A worker's startup objects scanned by every full collection, as before config/gunicorn.py
    # _tune_gc froze them.
    ("gevent 2 gc-unfrozen", {"GUNICORN_WORKER_CLASS": "gevent", "WEB_CONCURRENCY": "2", "WEB_GC_FREEZE": "false"}),
    (
        "gevent 2 blocking-SQL",
        {"GUNICORN_WORKER_CLASS": "gevent", "WEB_CONCURRENCY": "2", "PSYCOPG_WAIT_FUNC": "wait_c"},
    ),
]


@dataclass
class Options:
    seconds: float
    connections: int
    warmup: float
    sweep_sizes: list[tuple[int, int]]
    ledger_rows: int
    matrix_seconds: float
    only: set[str]
    models: list[str] | None
    redis_requests: int
    matrix_rounds: int
    #: The matrix's three scenarios with an Idempotency-Key on every write (--matrix-keyed).
    matrix_keyed: bool
    output: str
    sweep_repeats: int
    rounds: int = 2
    cluster: bool = False
    #: Open streams in scenario 6 (--only streams).
    streams: int = streams_mod.STREAMS
    #: The profile's scenarios by name (--profiles; None: all).
    profiles: list[str] | None = None


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    sweeps: list = field(default_factory=list)
    ledger: object = None
    ledger_http: list[Row] = field(default_factory=list)
    raw: object = None
    matrix: dict[str, list[list[Row]]] = field(default_factory=dict)
    profiles: list = field(default_factory=list)
    inprocess: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    loads: dict = field(default_factory=dict)


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each HTTP measurement (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--quick", action="store_true", help="3 s runs, small sweep and ledger: for developing")
    parser.add_argument(
        "--only",
        default="all",
        help=(
            "comma-separated: flash,checkout,keyed,carts,streams,redis,baselines,inprocess,sweep,ledger,matrix,"
            "profile "
            "(default all; flash and checkout include their keyed twins, keyed is the keyed scenarios alone)"
        ),
    )
    parser.add_argument("--models", default="", help="worker models for the matrix, by name (default: all)")
    parser.add_argument(
        "--profiles", default="", help="the profile's scenarios, by name, e.g. checkout-keyed (default: all)"
    )
    parser.add_argument("--ledger-rows", type=int, default=None)
    parser.add_argument("--output", default="latest.md", help="report file under bench/results/ (default latest.md)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run flash and checkout with the stock on a 3-master Redis Cluster (WAIT 1, then no WAIT)",
    )
    parser.add_argument("--matrix-rounds", type=int, default=2, help="rounds over the worker models (default 2)")
    parser.add_argument(
        "--matrix-keyed", action="store_true", help="the matrix's scenarios keyed, as a retrying checkout sends them"
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=streams_mod.STREAMS,
        help=f"streams open on the one web process of scenario 6 (default {streams_mod.STREAMS:,})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of the app beside its baselines (flash, checkout, baselines); ratios are their median (default 2)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    seconds = 3 if quick and args.seconds == 10 else args.seconds
    sizes = [(10_000, 0), (50_000, 0), (100_000, 0), (10_000, 100_000), (10_000, 200_000)]
    if quick:
        sizes = [(e // 10, live // 10) for e, live in sizes]
    only = set(args.only.split(",")) if args.only != "all" else set()
    return Options(
        seconds=seconds,
        connections=args.connections,
        warmup=1 if quick else 3,
        sweep_sizes=sizes,
        ledger_rows=args.ledger_rows or (100_000 if quick else 1_000_000),
        matrix_seconds=min(seconds, 2 if quick else 6),
        only=only,
        models=[m.strip() for m in args.models.split(",") if m.strip()] or None,
        profiles=[p.strip() for p in args.profiles.split(",") if p.strip()] or None,
        redis_requests=20_000 if quick else 100_000,
        matrix_rounds=1 if quick else args.matrix_rounds,
        matrix_keyed=args.matrix_keyed,
        sweep_repeats=1 if quick else 2,
        rounds=1 if quick else max(1, args.rounds),
        output=args.output,
        cluster=args.cluster,
        streams=args.streams,
    )


def wanted(options: Options, name: str) -> bool:
    return not options.only or name in options.only


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    wrk_binary()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="oe-bench-"))
    machine = machine_info()
    machine["load_before"] = os.getloadavg()
    started = time.time()
    outcome = Outcome()
    db = Postgres()
    live_redis = EmbeddedRedis()
    print(f"bench: logs in {log_dir}", flush=True)
    try:
        db.create()
        live_redis.start()
        env = {
            "DATABASE_URL": db.url,
            "REDIS_URL": live_redis.url,
            "HOST": "127.0.0.1",
            "SECRET_KEY": "bench",
        }
        flask_cli(["db", "upgrade"], env)
        secret = flask_cli(["accounts", "create", "bench"], env).stdout.strip().splitlines()[-1]
        rowlock.create_schema(db.url)

        def target(kind: str, app: str | None = None, **extra_env: str) -> Target:
            return Target(
                kind=kind,
                env={**env, "ROWLOCK_SECRET_SHA256": secret_sha256(secret), **extra_env},
                db=db,
                redis_url=live_redis.url,
                redis_pids=[live_redis.process.pid],
                secret=secret,
                log_dir=log_dir,
                app=app,
                with_worker=kind == "app",
            )

        app = target("app")
        redisonly = target("redisonly", "bench.baselines.redisonly:create_app()")
        bare = target("bare", "bench.baselines.bare:create_app()")
        # The row-lock design under its faster worker model, not the app's default (gevent over
        # PostgreSQL): gthread 2 x 8 gave it 572-585 reserves/s, gevent 415 (its row lock's
        # waiters pile up as greenlets). GUNICORN_WORKER_CLASS, when set, still sets every system.
        rowlock_target = target(
            "rowlock",
            "bench.baselines.rowlock:create_app()",
            GUNICORN_WORKER_CLASS=os.environ.get("GUNICORN_WORKER_CLASS") or "gthread",
        )

        step(
            outcome,
            "the app beside bare Flask and the row-lock design",
            lambda: run_side_by_side(app, options, outcome, compared_with=(bare, rowlock_target)),
        )
        if options.cluster:
            step(outcome, "the app on a Redis Cluster", lambda: run_cluster(app, options, outcome))
        if wanted(options, "streams"):
            step(
                outcome,
                "public streams on one web process",
                lambda: streams_mod.run(app, options, lambda row: add(outcome, row)),
            )
        if wanted(options, "redis"):
            step(outcome, "Redis-only path", lambda: run_redisonly(redisonly, live_redis, options, outcome, log_dir))
        if wanted(options, "inprocess"):
            step(outcome, "in-process cost", lambda: outcome.inprocess.update(run_inprocess(env)))
        if wanted(options, "sweep"):
            step(
                outcome,
                "sweep",
                lambda: outcome.sweeps.extend(
                    sweep.sweep_scenario(log_dir, options.sweep_sizes, options.sweep_repeats)
                ),
            )
        if wanted(options, "profile"):
            step(outcome, "profile", lambda: run_profiles(app, options, outcome))
        if wanted(options, "matrix"):
            step(outcome, "worker models", lambda: run_matrix(app, options, outcome))
        if wanted(options, "ledger"):
            step(outcome, "ledger", lambda: run_ledger(app, options, outcome))
    finally:
        for t in [locals().get(n) for n in ("app", "redisonly", "bare", "rowlock_target")]:
            if t is not None:
                t.stop()
        live_redis.stop()
        db.drop()
    machine["load_after"] = os.getloadavg()
    machine["elapsed"] = time.time() - started
    text = render(outcome, options, machine)
    print("\n" + text)
    (RESULTS / options.output).write_text(text)
    print(f"\nwritten: {RESULTS / options.output}")
    # A flash sale that did not sell out within the run is a slow machine, not a wrong answer.
    failed = [r for r in outcome.rows if r.correctness.startswith("FAIL")]
    return 1 if outcome.failures or failed else 0


def step(outcome: Outcome, name: str, fn) -> None:
    print(f"bench: {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:
        outcome.failures.append(f"{name}: {traceback.format_exc()}")
        print(f"bench: {name} FAILED\n{traceback.format_exc()}", flush=True)
    print(f"bench: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def _show(row: Row) -> None:
    if row.result is None:
        print(f"  {row.scenario:<32} {row.system:<9} {row.correctness}  | {row.notes}", flush=True)
        return
    print(
        f"  {row.scenario:<32} {row.system:<9} {row.rps or 0:>8.0f} req/s  p50 {row.p50_ms or 0:6.1f} ms  "
        f"p99 {row.p99_ms or 0:6.1f} ms  errors {row.errors}  {row.correctness}  | {row.notes}",
        flush=True,
    )


def add(outcome: Outcome, row: Row) -> Row:
    outcome.rows.append(row)
    _show(row)
    return row


# -- the runs -------------------------------------------------------------------------------


def run_side_by_side(
    app: Target, options: Options, outcome: Outcome, compared_with: tuple[Target, Target] | None = None
) -> None:
    """The app and its baselines (`compared_with`: bare Flask, the row-lock design; when
    --only keeps them) all up at once, each scenario of the app followed at once by its keyed
    twin and the baseline run it is compared with, `options.rounds` times over. This machine's
    speed drifts (the same CPU-bound loop took 0.27 to 0.60 s within one minute, 2026-11-23), so
    a ratio is only fair between runs made moments apart; the report gives each round's ratio
    and their median. The unkeyed and keyed twins swap places every other round, so that drift
    within a round does not always favour the same one. Every target is stopped at the end, also
    on failure."""
    flash, checkout = wanted(options, "flash"), wanted(options, "checkout")
    keyed = wanted(options, "keyed")
    flash_keyed, checkout_keyed = flash or keyed, checkout or keyed
    carts = checkout_keyed or wanted(options, "carts")
    app_rows = flash_keyed or checkout_keyed or carts
    baselines = compared_with is not None and wanted(options, "baselines")
    bare, rowlock_target = compared_with or (None, None)
    running = [t for t, on in ((app, app_rows), (bare, baselines), (rowlock_target, baselines)) if on]
    s, c = options.seconds, options.connections
    try:
        for target in running:
            target.start()
            scenarios.warm_up(target, options.warmup, c)
        has_carts = carts and app.has_carts()
        for round_ in range(1, options.rounds + 1):
            tag = f" · round {round_}" if options.rounds > 1 else ""

            def run(target: Target, scenario, prefix: str = "", tag: str = tag, round_: int = round_) -> None:
                row = scenario(target, s, c)
                row.scenario = prefix + row.scenario + tag
                row.round = round_
                add(outcome, row)

            def twins(unkeyed, keyed, run_unkeyed: bool, run_keyed: bool, round_: int = round_) -> None:
                pair = [(unkeyed, run_unkeyed), (keyed, run_keyed)]
                for scenario, on in pair if round_ % 2 else pair[::-1]:
                    if on:
                        run(app, scenario)

            if flash_keyed or baselines:
                twins(scenarios.flash_sale, scenarios.flash_sale_keyed, flash, flash_keyed)
                if baselines:
                    run(rowlock_target, scenarios.flash_sale, "5b row-lock: ")
                if flash:
                    run(app, scenarios.sold_out_path)
                if baselines:
                    run(bare, scenarios.bare)
            if checkout_keyed or baselines:
                for unkeyed, keyed_twin in (
                    (scenarios.reserve_only, scenarios.reserve_only_keyed),
                    (scenarios.checkout, scenarios.checkout_keyed),
                ):
                    twins(unkeyed, keyed_twin, checkout, checkout_keyed)
                    if baselines:
                        run(rowlock_target, unkeyed, "5b row-lock: ")
            if carts and (has_carts or round_ == 1):
                # Without carts in the app, one row saying so (not one per round).
                run(app, scenarios.cart_checkout, tag=tag if has_carts else "")
    finally:
        for target in running:
            target.stop()


def run_cluster(app: Target, options: Options, outcome: Outcome) -> None:
    """The app's scenarios again with the live stock on a 3-master Redis Cluster (a replica each), started
    from the machine's redis-server: each stock-taking write waiting for its replica (Redis
    WAIT, REDIS_MIN_REPLICAS=1), then not waiting. REDIS_URL stays the queue's plain Redis."""
    if not (wanted(options, "flash") or wanted(options, "checkout")):
        return
    from tests.support.cluster import RedisClusterServers

    cluster = RedisClusterServers(masters=3, replicas=1).start()
    try:
        nodes = cluster.startup_nodes
        for min_replicas in (1, 0):
            target = dataclasses.replace(
                app,
                kind=f"app-cluster-wait{min_replicas}",
                label=f"app on 3-master cluster ({f'WAIT {min_replicas}' if min_replicas else 'no WAIT'})",
                env={**app.env, "REDIS_CLUSTER_NODES": nodes, "REDIS_MIN_REPLICAS": str(min_replicas)},
                redis_pids=[*app.redis_pids, *(node.process.pid for node in cluster.nodes)],
                cluster_nodes=nodes,
                services=[],
            )
            run_side_by_side(target, options, outcome)
    finally:
        cluster.stop()


def run_redisonly(target: Target, live_redis: EmbeddedRedis, options: Options, outcome: Outcome, log_dir) -> None:
    target.start()
    try:
        scenarios.warm_up(target, options.warmup, options.connections)
        row = scenarios.reserve_only(target, options.seconds, options.connections)
        row.scenario = "5c Redis-only path (HTTP, no SQL)"
        add(outcome, row)
    finally:
        target.stop()
    scratch = EmbeddedRedis().start()
    try:
        outcome.raw = redisraw.measure(scratch.url, scratch.port, options.connections, options.redis_requests, 2)
    finally:
        scratch.stop()
    raw = outcome.raw
    print(
        f"  Redis alone: {raw.server_rps or 0:.0f} reserve scripts/s (redis-benchmark); "
        f"redis-py {raw.python_us_per_call:.0f} us/call ({raw.python_cpu_us_per_call:.0f} us CPU) {raw.note}",
        flush=True,
    )


def run_inprocess(env: dict[str, str]) -> dict[str, float]:
    """bench/inprocess.py in its own process (it builds the app from `env`)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.inprocess"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.inprocess failed:\n{done.stderr[-3000:]}")
    costs = json.loads(done.stderr.strip().splitlines()[-1])
    for name, us in costs.items():
        print(f"  in-process: {name}: {us:.0f} us CPU", flush=True)
    return costs


def run_profiles(app: Target, options: Options, outcome: Outcome) -> None:
    app.start(tag="profile")
    try:
        scenarios.warm_up(app, options.warmup, options.connections)
        s, c = options.seconds, options.connections
        runs = [
            ("sold-out", lambda: scenarios.sold_out_path(app, s, c).result),
            ("flash-sale", lambda: scenarios.flash_sale(app, s, c, tag="-profile").result),
            ("flash-sale-keyed", lambda: scenarios.flash_sale(app, s, c, tag="-profile", keyed=True).result),
            ("reserve", lambda: scenarios.reserve_only(app, s, c, tag="-profile").result),
            ("checkout", lambda: scenarios.checkout(app, s, c, tag="-profile").result),
            ("checkout-keyed", lambda: scenarios.checkout(app, s, c, tag="-profile", keyed=True).result),
            ("cart-checkout-keyed", lambda: scenarios.cart_checkout(app, s, c, tag="-profile").result),
        ]
        for name, drive in runs:
            if options.profiles and name not in options.profiles:
                continue
            profile = profile_mod.profile_during(app.web.pid, s, RESULTS, name, drive)
            outcome.profiles.append(profile)
            print(f"  profile {name}: {profile.samples} samples {profile.note}", flush=True)
    finally:
        app.stop()


def run_matrix(app: Target, options: Options, outcome: Outcome) -> None:
    """Each worker model in turn, `matrix_rounds` times round-robin, so that a burst of load
    from elsewhere on the machine does not land on one model only; the report takes medians."""
    s, c = options.matrix_seconds, options.connections
    models = [(n, e) for n, e in WORKER_MODELS if not options.models or n in options.models]
    for round_ in range(options.matrix_rounds):
        for name, extra in models:
            print(f"  worker model {name}, round {round_ + 1}", flush=True)
            tag = name.split(" (")[0].replace(" ", "")
            app.start(extra_env=extra, tag=f"{tag}-{round_ + 1}")
            try:
                scenarios.warm_up(app, min(options.warmup, 2), c)
                label = f"-{tag}-{round_ + 1}"
                rows = [
                    scenarios.flash_sale(app, s, c, tag=label, keyed=options.matrix_keyed),
                    scenarios.reserve_only(app, s, c, tag=label, keyed=options.matrix_keyed),
                    scenarios.checkout(app, s, c, tag=label, keyed=options.matrix_keyed),
                ]
                for row in rows:
                    _show(row)
                outcome.matrix.setdefault(name, []).append(rows)
            finally:
                app.stop()


def run_ledger(app: Target, options: Options, outcome: Outcome) -> None:
    app.start(tag="ledger")
    try:
        ledger = ledger_mod.load_ledger(app, options.ledger_rows)
        outcome.ledger = ledger
        print(f"  ledger: {ledger.rows} purchases loaded in {ledger.load_seconds:.1f} s", flush=True)
        ledger_mod.time_queries(app, ledger)
        if ledger_mod.v3_present(app, ledger.secret):
            saved = app.secret
            app.secret = ledger.secret
            try:
                for page in (1, ledger.last_page):
                    result = app.wrk(
                        f"ledger-page-{page}",
                        "get.lua",
                        seconds=options.seconds,
                        connections=min(options.connections, 10),
                        env={"BENCH_PATH": f"/v3/purchases?page={page}"},
                    )
                    ok = result.count(200) == result.requests
                    row = Row(
                        scenario=f"4 ledger page {page:,}",
                        system="app",
                        rps=result.rps,
                        p50_ms=result.p50_ms,
                        p99_ms=result.p99_ms,
                        errors=result.errors((200,)),
                        correctness=f"{'OK' if ok else 'FAIL'} {result.count(200)} x 200",
                        ok=ok,
                        notes=f"{min(options.connections, 10)} connections; wrk {result.wrk_cores:.2f} cores",
                        result=result,
                    )
                    outcome.ledger_http.append(row)
                    _show(row)
            finally:
                app.secret = saved
    finally:
        app.stop()


# -- the report -----------------------------------------------------------------------------


def machine_info() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "?"

    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except Exception:
        pass
    mem = "?"
    try:
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except Exception:
        pass
    import psycopg

    try:
        with psycopg.connect(
            os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
        ) as c:
            pg = c.execute("SHOW server_version").fetchone()[0]
            # Off, the tables are never analyzed: every plan the runs see is made for empty tables.
            pg += f" (autovacuum {c.execute('SHOW autovacuum').fetchone()[0]})"
    except Exception:
        pg = "?"
    from app.devtools.embedded import redis_server_binary

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgres": pg,
        "redis": first([redis_server_binary(), "--version"]),
        "wrk": first(["wrk", "--version"]),
        "commit": first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "web": procfile_command("web"),
        "worker": procfile_command("worker"),
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _find_all(rows: list[Row], scenario: str, system: str) -> list[Row]:
    """Every round's row of one scenario (its `id`) on one system, in round order."""
    return [r for r in rows if r.id == scenario and r.system == system]


def _cpu_per_op(row: Row | None, per: str) -> float | None:
    """Seconds of CPU (web + PostgreSQL + Redis) per operation counted by `per`: a request,
    a hold, or a reserve of a reserve + claim pair."""
    if row is None or row.result is None:
        return None
    res = row.result
    ops = {
        "request": res.requests,
        "hold": res.count(200),
        "reserve": res.kinds.get("reserve_ok", 0),
        "claim": res.kinds.get("claim_ok", 0),
    }[per]
    total = res.server_cpu + res.db_cpu + res.redis_cpu
    return total / ops if ops and total else None


def ratios(outcome: Outcome) -> list[tuple[str, ...]]:
    """(target, measured, ratio, the ratio CPU per operation predicts, goal, verdict). With
    several rounds, each round's app row is paired with the same round's other row (measured
    moments apart) and the verdict is on the median of the rounds' ratios."""
    rows = outcome.rows
    out = []

    def ratio(
        name: str,
        num_rows: list[Row],
        den_rows: list[Row],
        get,
        per: str,
        goal: float,
        unit: str,
        get_den=None,
        per_den: str | None = None,
        unit_den: str | None = None,
    ) -> None:
        get_den, per_den, unit_den = get_den or get, per_den or per, unit_den or unit
        once = [d for d in den_rows if d.round is None]  # measured once (the Redis-only path): every round's
        by_round = {d.round: d for d in den_rows if d.round is not None}
        pairs = [(n, by_round.get(n.round) or (once[0] if once else None)) for n in num_rows]
        pairs = [(n, d) for n, d in pairs if d is not None and get(n) and get_den(d)]
        if not pairs:
            out.append((name, "n/a", "n/a", "", f">= {goal:g}x", "not measured"))
            return
        each = [get(n) / get_den(d) for n, d in pairs]
        r = statistics.median(each)
        by_cpu = [
            cpu_d / cpu_n
            for cpu_n, cpu_d in ((_cpu_per_op(n, per), _cpu_per_op(d, per_den)) for n, d in pairs)
            if cpu_n and cpu_d
        ]
        num = statistics.median(get(n) for n, _ in pairs)
        den = statistics.median(get_den(d) for _, d in pairs)
        measured = (
            f"{num:,.0f} {unit} vs {den:,.0f} {unit_den}" if unit != unit_den else f"{num:,.0f} vs {den:,.0f} {unit}"
        )
        shown = f"{r:.2f}x"
        if len(pairs) > 1:
            measured = f"medians {measured}"
            shown += " (rounds: " + ", ".join(f"{x:.2f}x" for x in each) + ")"
        out.append(
            (
                name,
                measured,
                shown,
                f"{statistics.median(by_cpu):.2f}x" if by_cpu else "",
                f">= {goal:g}x",
                "met" if r >= goal else "NOT met",
            )
        )

    def p99(name: str, of: list[Row], get, limit: float = 50) -> None:
        values = [v for v in (get(r) for r in of) if v is not None]
        if not of:
            return
        if not values:
            out.append((name, "n/a", "", "", f"< {limit:g} ms", "not measured"))
            return
        med = statistics.median(values)
        rounds = " (rounds: " + ", ".join(f"{x:.1f}" for x in values) + ")" if len(values) > 1 else ""
        out.append((name, f"{med:.1f} ms{rounds}", "", "", f"< {limit:g} ms", "met" if med < limit else "NOT met"))

    flash = _find_all(rows, "flash", "app")
    flash_k = _find_all(rows, "flash_keyed", "app")
    flash_rl = _find_all(rows, "flash", "rowlock")
    soldout = _find_all(rows, "soldout", "app")
    bare = _find_all(rows, "bare", "bare")
    reserve = _find_all(rows, "reserve", "app")
    reserve_k = _find_all(rows, "reserve_keyed", "app")
    reserve_rl = _find_all(rows, "reserve", "rowlock")
    pairs = _find_all(rows, "checkout", "app")
    pairs_k = _find_all(rows, "checkout_keyed", "app")
    pairs_rl = _find_all(rows, "checkout", "rowlock")
    redisonly = _find_all(rows, "reserve", "redisonly")
    rps = lambda r: r.rps  # noqa: E731
    holds = lambda r: r.extra.get("holds_per_s")  # noqa: E731
    reserves = lambda r: r.extra.get("reserves_per_s")  # noqa: E731
    claims = lambda r: r.extra.get("claims_per_s")  # noqa: E731
    ratio("Flash sale vs row-lock (req/s)", flash, flash_rl, rps, "request", 5, "req/s")
    ratio("Keyed flash sale vs row-lock (req/s)", flash_k, flash_rl, rps, "request", 5, "req/s")
    ratio("Keyed / unkeyed: flash sale (req/s)", flash_k, flash, rps, "request", 0.8, "req/s")
    ratio("409 path vs bare Flask", soldout, bare, rps, "request", 0.5, "req/s")
    ratio("(flash sale burst vs bare Flask)", flash, bare, rps, "request", 0.5, "req/s")
    ratio("Checkout: successful reserves vs row-lock", reserve, reserve_rl, holds, "hold", 2.5, "holds/s")
    ratio("Keyed / unkeyed: durable reserves (holds/s)", reserve_k, reserve, holds, "hold", 0.8, "holds/s")
    ratio(
        "Durable keyed reserves vs bare Flask",
        reserve_k,
        bare,
        holds,
        "hold",
        0.4,
        "holds/s",
        get_den=rps,
        per_den="request",
        unit_den="req/s",
    )
    ratio("(reserve+claim: reserves vs row-lock)", pairs, pairs_rl, reserves, "reserve", 2.5, "reserves/s")
    ratio("Keyed / unkeyed: reserve + claim (claims/s)", pairs_k, pairs, claims, "claim", 0.8, "claims/s")
    ratio("Keyed checkout: claims vs row-lock claims", pairs_k, pairs_rl, claims, "claim", 3, "claims/s")
    ratio(
        "Keyed checkout: claims/s vs keyed reserves/s (2ak)",
        pairs_k,
        reserve_k,
        claims,
        "claim",
        0.6,
        "claims/s",
        get_den=holds,
        per_den="hold",
        unit_den="holds/s",
    )
    p99("Flash sale p99 at 50 connections", flash, lambda r: r.p99_ms)
    p99("Keyed flash sale p99", flash_k, lambda r: r.p99_ms)
    p99("Keyed checkout: reserve p99", pairs_k, lambda r: r.extra.get("reserve_p99_ms"))
    p99("Keyed checkout: claim p99", pairs_k, lambda r: r.extra.get("claim_p99_ms"))
    watched = _find_all(rows, streams_mod.WITH_ID, "app")
    unwatched = _find_all(rows, streams_mod.WITHOUT_ID, "app")
    ratio("Flash sale with the streams open / without (req/s)", watched, unwatched, rps, "request", 0.9, "req/s")
    p99(
        "Streams: a reserve to the slowest stream, p99",
        watched,
        lambda r: r.extra.get("latency_p99_ms"),
        limit=streams_mod.SOLD_OUT_WITHIN_S * 1000,
    )
    p99(
        "Streams: sold out on the last stream",
        watched,
        # A round where some stream missed it counts as never.
        lambda r: r.extra.get("sold_out_last_ms") if r.extra.get("sold_out_ok") else float("inf"),
        limit=streams_mod.SOLD_OUT_WITHIN_S * 1000,
    )
    full = next((s for s in outcome.sweeps if s.expired == 100_000 and s.live == 0), None)
    if full:
        verdict = "met" if full.seconds <= 5 else "NOT met"
        out.append(("Sweep of 100,000 expired holds", f"{full.seconds:.2f} s", "", "", "<= 5 s", verdict))
    ratio("Stretch: durable holds vs Redis-only path", reserve, redisonly, holds, "hold", 0.5, "holds/s")
    return out


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _matrix_check(*rows: Row) -> str:
    out = []
    for row in rows:
        if not row.ok:
            out.append(row.correctness.split(" (")[0].split(" ")[0] + f" ({row.scenario.split(' ')[0]})")
        elif row.errors:
            out.append(f"{row.errors} errors ({row.scenario.split(' ')[0]})")
    return ", ".join(dict.fromkeys(out)) or "OK"


def render(outcome: Outcome, options: Options, machine: dict) -> str:
    parts = ["# Offer Engine benchmark", ""]
    parts.append(
        f"`make bench` (`python -m bench {shlex.join(sys.argv[1:])}`), commit {machine['commit']}, "
        f"{options.seconds:g} s per HTTP run, {options.connections} connections, wrk 1 thread; "
        f"whole run {machine['elapsed']:.0f} s."
    )
    parts.append("")
    parts.append(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}; {machine['os']}; "
        f"Python {machine['python']}, PostgreSQL {machine['postgres']}, {machine['redis']}, {machine['wrk']}. "
        f"Load average before {', '.join(f'{x:.2f}' for x in machine['load_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in machine['load_after'])}."
    )
    parts.append(f"Web: `{machine['web']}` (config/gunicorn.py defaults); worker: `{machine['worker']}`.")
    parts.append("")
    parts.append("## Results")
    parts.append("")
    table_rows = []
    for r in outcome.rows + outcome.ledger_http:
        res = r.result
        table_rows.append(
            [
                r.scenario,
                r.system,
                _fmt(r.rps),
                _fmt(r.p50_ms, 1),
                _fmt(r.p99_ms, 1),
                _fmt(r.errors),
                f"{res.server_ms_per_request():.2f} / {res.total_ms_per_request():.2f}" if res else "",
                r.correctness,
                r.notes,
            ]
        )
    for s in outcome.sweeps:
        table_rows.append(
            [
                f"3 sweep {s.expired:,} expired / {s.live:,} live",
                "app",
                f"{s.returned / s.seconds:,.0f} holds/s" if s.seconds else "",
                "",
                "",
                "",
                "",
                s.text,
                f"{s.seconds:.2f} s (Redis {s.redis_seconds:.2f} s + SQL {s.sql_seconds:.2f} s)",
            ]
        )
    if outcome.ledger is not None:
        led = outcome.ledger
        if not outcome.ledger_http:
            for page in (1, led.last_page):
                table_rows.append(
                    [
                        f"4 ledger page {page:,} of {led.last_page:,}",
                        "app",
                        "n/a (v3 not present)",
                        "",
                        "",
                        "",
                        "",
                        f"SQL only: rows {led.sql_ms.get(f'page {page} rows', 0):.2f} ms + items "
                        f"{led.sql_ms.get(f'page {page} items', 0):.2f} ms (EXPLAIN ANALYZE)",
                        f"whole page from psycopg {led.fetch_ms.get(f'page {page}', 0):.2f} ms (median)",
                    ]
                )
    parts.append(
        _table(
            [
                "scenario",
                "system",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "CPU ms/req web / all",
                "correctness",
                "notes",
            ],
            table_rows,
        )
    )
    parts.append("")
    parts.append(
        "errors = answers other than the expected ones (200, and 409 `sold_out` in the flash sale) plus socket "
        "errors and timeouts. Correctness is read back from SQL and Redis after each run (and `flask --app app "
        "inventory check` for the app). CPU ms/req: CPU time over the run divided by the requests wrk counted, of "
        "the gunicorn processes (web) and of web + PostgreSQL backends + Redis (all)."
    )
    parts.append("")
    parts.append("## Against the targets")
    parts.append("")
    parts.append(
        _table(["target", "measured", "ratio", "ratio by CPU/op", "goal", ""], [list(r) for r in ratios(outcome)])
    )
    parts.append("")
    parts.append(
        "`ratio by CPU/op` is the same ratio predicted from the CPU each operation cost (gunicorn workers + "
        "PostgreSQL backends + Redis, per request, hold or reserve): what the ratio would be if both sides were "
        "limited by CPU alone. It moves much less than req/s when other processes compete for the cores; it "
        "ignores waits (the row-lock design is limited by its lock, not its CPU, so it flatters that baseline)."
    )
    parts.append("")
    if outcome.raw is not None:
        raw = outcome.raw
        parts.append(
            f"Redis alone: {_fmt(raw.server_rps)} reserve scripts/s (redis-benchmark, EVALSHA of the reserve "
            f"script, {options.connections} clients); one `LiveStock.reserve` from redis-py costs "
            f"{raw.python_us_per_call:.0f} µs wall, {raw.python_cpu_us_per_call:.0f} µs of the caller's CPU. {raw.note}"
        )
        parts.append("")
    if outcome.inprocess:
        costs = outcome.inprocess
        bare_us = costs.get("bare Flask, fixed answer")
        parts.append("## In-process cost of one answer (no gunicorn, no sockets)")
        parts.append("")
        parts.append(
            "`python -m bench.inprocess`: the WSGI apps called in turn from one loop, best of "
            "5 rounds of 2,000 calls; process CPU (all threads) per answer. Unlike req/s over HTTP, "
            "the ratio to bare Flask holds however fast the machine is at the moment."
        )
        parts.append("")
        parts.append(
            _table(
                ["answer", "µs CPU", "× bare Flask"],
                [[name, f"{us:,.0f}", f"{us / bare_us:.2f}" if bare_us else ""] for name, us in costs.items()],
            )
        )
        parts.append("")
    gen_rows = []
    for r in outcome.rows:
        if r.result is not None:
            res = r.result
            gen_rows.append(
                [
                    f"{r.scenario} ({r.system})",
                    _fmt(res.rps),
                    f"{res.wrk_cores:.2f}",
                    f"{res.server_cores:.2f}",
                    f"{res.db_cpu / res.seconds:.2f}" if res.seconds else "",
                    f"{res.redis_cpu / res.seconds:.2f}" if res.seconds else "",
                ]
            )
    if gen_rows:
        parts.append("## The load generator is not the bottleneck")
        parts.append("")
        parts.append(_table(["run", "req/s", "wrk cores", "web cores", "PostgreSQL cores", "Redis cores"], gen_rows))
        parts.append("")
        parts.append(
            "wrk (one thread, C + LuaJIT) uses a small fraction of one core while the server processes use the rest "
            "of the machine: on the bare app the server is saturated, not the client. The machine has "
            f"{machine['cores']} cores for everything (web, PostgreSQL, Redis, wrk)."
        )
        parts.append("")
    if outcome.sweeps:
        parts.append(
            f"## Sweep: cost grows with expired holds, not live ones (fastest of {options.sweep_repeats} per size)"
        )
        parts.append("")
        parts.append(
            _table(
                ["expired", "live", "sweep s", "Redis (return_holds) s", "SQL (expire_records) s", "check"],
                [
                    [
                        f"{s.expired:,}",
                        f"{s.live:,}",
                        f"{s.seconds:.2f}",
                        f"{s.redis_seconds:.2f}",
                        f"{s.sql_seconds:.2f}",
                        s.text,
                    ]
                    for s in outcome.sweeps
                ],
            )
        )
        parts.append("")
    if outcome.ledger is not None:
        led = outcome.ledger
        parts.append(f"## Ledger: {led.rows:,} purchases (loaded by COPY in {led.load_seconds:.1f} s)")
        parts.append("")
        parts.append(
            _table(["query", "execution ms (EXPLAIN ANALYZE)"], [[k, f"{v:.3f}"] for k, v in led.sql_ms.items()])
        )
        parts.append("")
        parts.append(
            "Whole page (total + rows + items) fetched by psycopg, median: "
            + ", ".join(f"{k}: {v:.2f} ms" for k, v in led.fetch_ms.items())
        )
        parts.append("")
    if outcome.matrix:
        keyed = ", keyed (1k, 2ak, 2bk)" if options.matrix_keyed else " (scenarios 1 and 2)"
        parts.append(f"## gunicorn worker models{keyed}")
        parts.append("")
        parts.append(
            f"{options.matrix_seconds:g} s per run, {options.matrix_rounds} round(s) over all models in turn; medians "
            "over the rounds. `web ms/req` is the gunicorn processes' CPU per request: on a busy machine it is "
            "steadier than req/s, which follows whatever CPU the other processes leave."
        )
        parts.append("")
        matrix_rows = []
        for name, rounds in outcome.matrix.items():
            flash = [r[0] for r in rounds]
            reserve = [r[1] for r in rounds]
            pairs = [r[2] for r in rounds]

            def med(rows, get, digits=0):
                values = [v for v in (get(r) for r in rows) if v is not None]
                return _fmt(statistics.median(values), digits) if values else "n/a"

            cpu = lambda r: r.result.server_ms_per_request() if r.result else None  # noqa: E731
            matrix_rows.append(
                [
                    name,
                    med(flash, lambda r: r.rps),
                    med(flash, lambda r: r.p99_ms, 1),
                    med(flash, lambda r: r.extra.get("sellout_s"), 2),
                    med(flash, cpu, 2),
                    med(reserve, lambda r: r.extra.get("holds_per_s")),
                    med(reserve, lambda r: r.p99_ms, 1),
                    med(reserve, cpu, 2),
                    f"{med(pairs, lambda r: r.extra.get('reserves_per_s'))} + {med(pairs, lambda r: r.extra.get('claims_per_s'))}",
                    med(pairs, cpu, 2),
                    _matrix_check(*[row for round_ in rounds for row in round_]),
                ]
            )
        parts.append(
            _table(
                [
                    "model",
                    "flash req/s",
                    "flash p99 ms",
                    "sold out s",
                    "flash web ms/req",
                    "reserve holds/s",
                    "reserve p99 ms",
                    "reserve web ms/req",
                    "checkout reserves + claims/s",
                    "checkout web ms/req",
                    "checks",
                ],
                matrix_rows,
            )
        )
        parts.append("")
    if outcome.profiles:
        parts.append("## Profile (py-spy on every gunicorn worker, request-handling threads only)")
        parts.append("")
        parts.append(
            "CPU share: samples of threads holding the GIL (`py-spy --gil`), charged to the innermost library "
            "frame; ≈ ms/request = share × the web processes' CPU per request in that run (py-spy slows the "
            "workers, so absolute ms are high; the shares are what count). Wall share: every sample of a thread "
            "busy with a request (`--idle`), so waits on PostgreSQL, Redis, locks and the GIL show up too."
        )
        parts.append("")
        for p in outcome.profiles:
            if not p.samples:
                parts.append(f"- {p.name}: no samples. {p.note}")
                continue
            wall = p.wall
            parts.append(
                f"### {p.name}: {p.samples:,} CPU samples, {wall.samples if wall else 0:,} wall samples, "
                f"{p.cpu_ms_per_request:.2f} ms web CPU per request under py-spy; files {', '.join(p.files)}"
            )
            parts.append("")
            cats = [c for c, _ in p.by_category.most_common()]
            cats += [c for c in (wall.by_category if wall else {}) if c not in cats]
            parts.append(
                _table(
                    ["where (innermost library frame)", "CPU share", "≈ ms CPU/request", "wall share"],
                    [
                        [
                            cat,
                            f"{p.share(p.by_category[cat]):.1f}%",
                            f"{p.share(p.by_category[cat]) * p.cpu_ms_per_request / 100:.3f}",
                            f"{wall.share(wall.by_category[cat]):.1f}%" if wall else "",
                        ]
                        for cat in cats
                    ],
                )
            )
            parts.append("")
            steps = [step for step, _ in profile_mod.STEPS if p.by_step[step] or (wall and wall.by_step[step])]
            parts.append(
                _table(
                    ["step (inclusive: anywhere on the stack)", "CPU share", "wall share"],
                    [
                        [
                            step,
                            f"{p.share(p.by_step[step]):.1f}%",
                            f"{wall.share(wall.by_step[step]):.1f}%" if wall else "",
                        ]
                        for step in steps
                    ],
                )
            )
            parts.append("")
    if outcome.failures:
        parts.append("## Failures")
        parts.append("")
        for failure in outcome.failures:
            parts.append("```\n" + failure.strip() + "\n```")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
