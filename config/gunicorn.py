"""gunicorn settings, from the same environment variables as everything else.

WEB_CONCURRENCY worker processes (default one per core). GUNICORN_WORKER_CLASS: by default
gevent over PostgreSQL and gthread (GUNICORN_THREADS threads per process, 8) over SQLite.

Prometheus: every worker process counts in files under PROMETHEUS_MULTIPROC_DIR and /metrics
sums them (app/observability/metrics.py). The directory must exist before a worker starts and hold nothing
from an earlier run, so this module (loaded by the master, before it forks) creates a fresh
temporary one when the variable is unset, and empties the given one otherwise; the master
removes the files of each worker that exits, and its own temporary directory on exit.

SECRET_KEY: the dashboard's session cookie must verify in every worker. When the variable is
unset, the master picks one random key for this run (sessions end when gunicorn restarts).
"""

import glob
import multiprocessing
import os
import secrets
import shutil
import tempfile

from config import env_bool, load_settings

_settings = load_settings()

bind = f"{_settings.host}:{_settings.port}"
# One process per core: measured on 2 cores, 4 processes spent 17-45% more CPU per request
# (GIL and scheduler churn) than 2; threads overlap the waits on Redis and SQL. 8 threads
# rather than 4: more requests share each group commit, so in two bench runs (README, worker
# models) durable reserves went 904-922 -> 1,071-1,156/s and their web CPU 1.29 -> 1.11 ms.
workers = int(os.environ.get("WEB_CONCURRENCY", "") or multiprocessing.cpu_count())
# gevent over PostgreSQL, chosen by measurement (docs/bench/2026-11-24-gevent-default.md): on
# 2 cores it made 1,779 durable reserves/s against 1,003-1,101 under gthread 2 x 8, at 0.87
# against 1.16-1.31 ms of web CPU each (gthread hands every request from its poller thread to a
# pool thread and back), flash-sale p99 31 against 44-53 ms, and as many claims. Over SQLite,
# gthread: SQLite's lock waits would stop a gevent process (on_starting refuses it).
_over_sqlite = _settings.database_url.startswith("sqlite")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS") or ("gthread" if _over_sqlite else "gevent")
threads = int(os.environ.get("GUNICORN_THREADS", "") or 8)
# Connections one gevent worker holds at once (gunicorn's default is 1,000): each public stream
# (GET /v1/public/deals/:id/stream) keeps one open, and one process is to hold at least 5,000
# of them besides its API traffic. Each is a file descriptor: see _allow_open_files.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "") or 10_000)
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "") or 30)
graceful_timeout = 10
keepalive = 5
# Each worker listens on its own SO_REUSEPORT socket and the kernel spreads new connections
# evenly over them. With one shared socket, whichever worker woke first took most of a burst of
# new keep-alive connections: in 3 of 8 bench runs one process served nearly all of them and
# the service used 1.05 of its 2 cores (flash sale 972-1,153 req/s instead of 1,683-2,095).
# The cost: a second gunicorn started on the same port by the same user shares its connections
# instead of failing to bind. GUNICORN_REUSE_PORT=false goes back to one shared socket.
reuse_port = env_bool(os.environ, "GUNICORN_REUSE_PORT", True)
# A huge request line or header is refused by gunicorn itself (400) before Flask sees it.
limit_request_line = 8190
accesslog = None
errorlog = "-"
loglevel = "warning"


def _prepare_metrics_dir() -> str | None:
    """Returns the directory to remove on exit (one we created), or None."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        return None
    created = tempfile.mkdtemp(prefix="oe-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    return created


def _allow_open_files(wanted: int) -> None:
    """Raise this process's soft limit on open files towards `wanted` (the workers inherit it):
    a common default of 1,024 would refuse connections long before worker_connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


# Connections, plus what a worker opens besides them (SQL and Redis pools, log and metric files).
_allow_open_files(worker_connections + 1024)
# Set before the master forks and before any worker imports prometheus_client (which picks its
# storage when imported).
_created_metrics_dir = _prepare_metrics_dir()
if not os.environ.get("SECRET_KEY"):
    os.environ["SECRET_KEY"] = secrets.token_hex(32)


def _is_gevent(worker_class: type) -> bool:
    return worker_class.__module__ == "gunicorn.workers.ggevent"


def on_starting(server):
    _refuse_gevent_over_sqlite(server)
    _refuse_a_taken_port(server)


def _refuse_a_taken_port(server):
    """Refuse to start on a port another program listens on. With reuse_port each worker binds
    a socket of its own; on a taken port every worker fails to bind and is started again,
    forever, while the master runs on serving nothing. Without reuse_port gunicorn refuses by
    itself. (A second gunicorn of ours on the same port binds, and shares the connections.)"""
    import socket

    if not (server.cfg.reuse_port and hasattr(socket, "SO_REUSEPORT")):
        return
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket
        probe = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(address[:2])
        except OSError as error:
            raise SystemExit(f"cannot listen on {address[0]}:{address[1]}: {error.strerror}") from None
        finally:
            probe.close()


def _refuse_gevent_over_sqlite(server):
    """Refuse gevent over SQLite (GUNICORN_WORKER_CLASS=gevent or `-k gevent`).

    A write transaction holds SQLite's lock across its Redis call, and under gevent the greenlet
    holding it yields there; another greenlet of the process then waits for the lock inside
    SQLite's C code, which gevent cannot switch out of, so the whole process stops until the
    30 s busy timeout. Measured, one worker, 20 connections reserving and claiming: 23 answers
    in 8 s under gevent against 2,412 under gthread."""
    if _is_gevent(server.cfg.worker_class) and _over_sqlite:
        raise SystemExit(
            "GUNICORN_WORKER_CLASS=gevent needs PostgreSQL (DATABASE_URL): "
            "under gevent, SQLite's lock waits stop every request of the process"
        )


def post_worker_init(worker):
    from app.observability.logs import configure_logging

    configure_logging("web", batched=True)
    _end_streams_at_shutdown(worker)
    _tune_gc()


def _tune_gc():
    """Take what the worker made before its first request (modules, the app, its pools: some
    150,000 objects, none of them garbage) out of the collector's sight: otherwise every full
    collection walks them all again, a pause in the middle of the requests it interrupts, which
    shows in their p99 (measured: docs/deploying.md, WEB_GC_FREEZE). WEB_GC_FREEZE=false: as before."""
    import gc

    if env_bool(os.environ, "WEB_GC_FREEZE", True):
        gc.freeze()


def _end_streams_at_shutdown(worker):
    """When the worker starts shutting down, end its public streams (app/web/api/public/stream.py).

    gunicorn stops accepting, then waits up to graceful_timeout for the open connections to
    finish; a stream never finishes by itself, so each worker would wait the whole timeout and
    then cut them. Ended at once, every stream's answer completes cleanly and the browsers
    reconnect (after their `retry:`) to the workers still running or started next. No gunicorn
    hook runs when a worker's SIGTERM arrives (it only clears `worker.alive`), hence the watch."""
    import threading  # the gevent worker patched it: this is a greenlet there
    import time

    def watch():
        while worker.alive:
            time.sleep(0.25)
        from app.web.api.public.stream import end_streams

        end_streams(worker.wsgi)

    threading.Thread(target=watch, name="end-streams-at-shutdown", daemon=True).start()


def post_request(worker, req, environ, resp):
    """Under gevent, a connection's next request waits until every other ready one has run.

    gevent's socket read returns at once when the bytes are already there, and a benchmark
    client sends its next request as soon as it reads the answer: a connection served without
    a Redis or SQL wait (a sold-out 409) never gave the others a turn. Measured on the sold-out
    path, 50 connections: p50 1.4 ms and p99 2,185 ms without this; p50 34 ms and p99 65 ms
    with it, the same req/s (docs/bench/2026-11-24-gevent-fairness.md). `gevent.sleep(0)` only
    lets the greenlets already scheduled go first (p99 1,052 ms)."""
    if _is_gevent(type(worker)):
        import gevent

        gevent.idle()


def worker_exit(server, worker):
    import logging

    logging.shutdown()  # writes the access lines still batched (app/observability/logs.py LineBatchHandler)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _created_metrics_dir:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
