"""Around every request: the request id, the HTTP metrics (sold-out refusals among them) and the
access log line.

A WSGI middleware around Flask's own (`app.wsgi_app`, as Flask's docs show), not Flask hooks:
it sets the request id before Flask does anything, so every hook, view, error handler and log
line of the request sees it, even for a request Flask refuses while routing; and it works on
the WSGI environ and status line directly. As three Flask hooks reading `g` and `request`
(context-local proxies) the same work was a sixth of a sold-out answer's CPU in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flask import Flask, request

from app.observability import logs, metrics
from app.web.errors import ERROR_CODE_KEY, SOLD_OUT

log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: Methods we label as themselves; anything else is "other" (a client cannot mint new series).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Where Flask leaves the matched route for us (set by `_note_route`, read after the response).
ROUTE_KEY = "offer_engine.route"


def _note_route(response):
    """after_request: the URL rule and path of this request, for the metrics and the log line
    (Flask's request object is gone by the time the envelope writes them)."""
    environ = request.environ
    environ[ROUTE_KEY] = (request.url_rule, request.path)
    return response


class RequestEnvelope:
    def __init__(self, wsgi_app, *, access_log: bool) -> None:
        self.wsgi_app = wsgi_app
        self.access_log = access_log

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        started = time.perf_counter()
        rid = logs.accept_request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = logs.request_id.set(rid)
        status_line = ""

        def start(status: str, headers: list, exc_info=None):
            nonlocal status_line
            status_line = status
            headers.append((REQUEST_ID_HEADER, rid))
            return start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, start)
        finally:
            self._record(environ, status_line, time.perf_counter() - started)
            logs.request_id.reset(token)

    def _record(self, environ: dict, status_line: str, elapsed: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        rule, path = environ.get(ROUTE_KEY) or (None, environ.get("PATH_INFO", ""))
        endpoint = metrics.endpoint_label(rule)
        status = int(status_line[:3]) if status_line[:3].isdigit() else 500
        method_label = method if method in KNOWN_METHODS else "other"
        metrics.labelled(metrics.HTTP_REQUESTS, method_label, endpoint, str(status)).inc()
        metrics.labelled(metrics.HTTP_LATENCY, method_label, endpoint).observe(elapsed)
        if environ.get(ERROR_CODE_KEY) == SOLD_OUT:
            metrics.labelled(metrics.SOLD_OUT_REFUSALS, endpoint).inc()
        if self.access_log:
            # The path only: the query string may hold an api_secret.
            log.info(
                "request",
                extra={
                    "method": method,
                    "path": path,
                    "endpoint": endpoint,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                },
            )


def init_app(app: Flask) -> None:
    app.after_request(_note_route)
    app.wsgi_app = RequestEnvelope(app.wsgi_app, access_log=bool(app.config.get("ACCESS_LOG", True)))
