"""Operational endpoints: liveness and readiness."""

from __future__ import annotations

from flask import Flask, jsonify

from app.api.services import services


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


def init_app(app: Flask) -> None:
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
