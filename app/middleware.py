"""Per-request hooks: the request id, the HTTP metrics and the access log line.

Registered before anything else, so every later hook, view, error handler and log line of the
request sees the id. The cost on the hot path is a contextvar, a counter increment, a histogram
observation and (with ACCESS_LOG) one JSON log line.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from app import logs, metrics

log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: Methods we label as themselves; anything else is "other" (a client cannot mint new series).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _start() -> None:
    g.started = time.perf_counter()
    rid = logs.accept_request_id(request.headers.get(REQUEST_ID_HEADER))
    g.request_id = rid
    g.request_id_token = logs.request_id.set(rid)


def _finish(response: Response) -> Response:
    rid = g.get("request_id")
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    started = g.get("started")
    if started is None:
        return response
    elapsed = time.perf_counter() - started
    method = request.method if request.method in KNOWN_METHODS else "other"
    endpoint = metrics.endpoint_label(request.url_rule.rule if request.url_rule is not None else None)
    metrics.HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
    metrics.HTTP_LATENCY.labels(method, endpoint).observe(elapsed)
    if g.get("access_log", True):
        # The path only: the query string may hold an api_secret.
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "endpoint": endpoint,
                "status": response.status_code,
                "ms": round(elapsed * 1000, 2),
            },
        )
    return response


def _reset(_error: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        try:
            logs.request_id.reset(token)
        except ValueError:  # set in another context (cannot happen with Flask's sync requests)
            logs.request_id.set(None)


def init_app(app: Flask) -> None:
    access_log = bool(app.config.get("ACCESS_LOG", True))

    def start() -> None:
        _start()
        g.access_log = access_log

    app.before_request(start)
    app.after_request(_finish)
    app.teardown_request(_reset)
