"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac

from flask import Flask, Response, current_app, jsonify, request

from app.observability import metrics
from app.web.services import services


def healthz():
    """The process is up (it does not look at Redis or SQL)."""
    return jsonify(status="ok")


def readyz():
    """Redis and SQL both answer; otherwise 503 naming the one that does not."""
    checks = {}
    svc = services()
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:  # any failure means not ready, whatever its type
        checks["redis"] = f"down: {type(error).__name__}"
    try:
        svc.db.ping()
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"down: {type(error).__name__}"
    ready = all(value == "ok" for value in checks.values())
    response = jsonify(status="ok" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = "1"
    return response


def metrics_endpoint():
    """Prometheus text format: this process's (or every gunicorn worker's) counters, the
    worker's figures from Redis, and per-deal gauges read from Redis now (app/observability/metrics.py)."""
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        presented = request.headers.get("Authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
            return Response("metrics need the METRICS_TOKEN bearer token\n", 401, mimetype="text/plain")
    body, content_type = metrics.exposition(
        [metrics.process_registry(), current_app.extensions["offer_engine_scrape_registry"]]
    )
    return Response(body, 200, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
    app.extensions["offer_engine_scrape_registry"] = metrics.scrape_registry(
        app.extensions["offer_engine"], app.config.get("METRICS_MAX_DEALS", 500)
    )
    app.add_url_rule("/metrics", "metrics", metrics_endpoint)
