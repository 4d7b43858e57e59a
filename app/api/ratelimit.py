"""Per-account limits on writes (flask-limiter, counters in Redis).

A runaway client must not starve everyone else. The limit is per account (identified by the
secret it presents, through the same cached lookup as authentication) and counts POST, PUT,
PATCH and DELETE under /v1 and /v3; reads are not limited. Over the limit: 429 in the API's
error shape with Retry-After. If Redis cannot count, the request goes on (and meets the same
Redis on its way, which answers 503 if it is really down).
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter

from app.api.auth import presented_secret
from app.api.services import services

WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]


def account_key() -> str:
    account = services().accounts.authenticate(presented_secret())
    if account is not None:
        return f"account:{account.id}"
    return f"ip:{request.remote_addr}"


def init_app(app: Flask, blueprints: list) -> Limiter | None:
    spec = app.config.get("RATE_LIMIT_WRITES", "")
    if not spec or spec.lower() in ("off", "none", "0"):
        return None
    limiter = Limiter(
        key_func=account_key,
        app=app,
        storage_uri=app.config["REDIS_URL"],
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
        key_prefix="oe:rate",
    )
    for blueprint in blueprints:
        # One budget for all of an account's writes, whichever endpoint they hit.
        limiter.shared_limit(spec, scope="writes", methods=WRITE_METHODS, key_func=account_key)(blueprint)
    return limiter
