"""The CPU one answer costs inside the WSGI app, without gunicorn, sockets or a load generator:
the app and bare Flask called in turn from one loop, so the ratio holds however fast the machine
is at the moment (req/s over HTTP swing by up to 2x within minutes on a shared 2-core VM).

    python -m bench.inprocess      env: DATABASE_URL, REDIS_URL (an empty database and Redis db)

Prints one JSON object: microseconds of process CPU (all threads: a durable reserve's group
commit runs in the committer thread) per answer, the best of `ROUNDS` rounds of `CALLS` calls,
for bare Flask's fixed answer, the app's sold-out 409, and the app's durable reserve (one at a
time, so every group commit holds one row: the dearest case); then, with the `otel` extra
installed, the same two with OpenTelemetry traces on (off, the default, nothing is imported).
"""

from __future__ import annotations

import io
import json
import os
import time

ROUNDS = 5
CALLS = 2000


def _caller(wsgi_app, body: bytes, headers: dict[str, str]):
    from werkzeug.test import EnvironBuilder

    base = EnvironBuilder(
        path="/v1/purchases/reserve", method="POST", data=body, content_type="application/json", headers=headers
    ).get_environ()
    statuses: list[str] = []

    def call() -> str:
        environ = dict(base, **{"wsgi.input": io.BytesIO(body)})
        result = wsgi_app(environ, lambda status, _headers, _exc=None: statuses.append(status))
        b"".join(result)
        getattr(result, "close", lambda: None)()
        return statuses.pop()

    return call


def _cpu_us(call, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def measure(rounds: int = ROUNDS, calls: int = CALLS) -> dict[str, float]:
    from app import create_app
    from app.observability.logs import configure_logging
    from bench.baselines.bare import create_app as create_bare

    app = create_app({"ACCESS_LOG": True})
    configure_logging("web", batched=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the access lines go nowhere (their cost stays)
    services = app.extensions["offer_engine"]
    account, secret = services.accounts.create("inprocess")
    headers = {"Authorization": f"Bearer {secret}"}
    with app.app_context():
        sold_out = services.deals.create(account.id, title="sold out", price_per_unit=100, quantity=0)
        plenty = services.deals.create(account.id, title="plenty", price_per_unit=100, quantity=10**9)
    runs = {
        "bare Flask, fixed answer": _caller(create_bare(), b'{"deal_id": 1, "num_bought": 1}', {}),
        "app, sold-out 409": _caller(app, json.dumps({"deal_id": sold_out.id, "num_bought": 1}).encode(), headers),
        "app, durable reserve": _caller(app, json.dumps({"deal_id": plenty.id, "num_bought": 1}).encode(), headers),
    }
    expected = {"bare Flask, fixed answer": "200", "app, sold-out 409": "409", "app, durable reserve": "200"}
    for name, call in runs.items():
        status = call()
        if not status.startswith(expected[name]):
            raise RuntimeError(f"{name}: answered {status}")
    best = _best(runs, rounds, calls)
    traced = _traced_app()
    if traced is not None:
        # After the rounds above: OpenTelemetry's redis instrumentation patches every client of
        # the process, so the untraced app's figures must be taken first.
        traced_runs = {
            f"app, {name}, traces on": _caller(traced, json.dumps({"deal_id": deal, "num_bought": 1}).encode(), headers)
            for name, deal in (("sold-out 409", sold_out.id), ("durable reserve", plenty.id))
        }
        best |= _best(traced_runs, rounds, calls)
        traced.extensions["offer_engine"].close()
    services.close()
    return best


def _best(runs: dict, rounds: int, calls: int) -> dict[str, float]:
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, call in runs.items():  # in turn, so a slow moment of the machine hits all
            best[name] = min(best[name], _cpu_us(call, calls))
    return best


def _traced_app():
    """The same app with OpenTelemetry traces on (spans kept in memory, the SDK's batch
    processor), to set beside the default, off, which imports nothing; None without the
    `otel` extra."""
    try:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return None
    from app import create_app

    return create_app({"ACCESS_LOG": True, "OTEL_TRACES": True, "OTEL_SPAN_EXPORTER": InMemorySpanExporter()})


if __name__ == "__main__":
    result = measure()
    os.write(2, (json.dumps(result) + "\n").encode())
