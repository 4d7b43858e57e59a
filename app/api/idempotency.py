"""The HTTP half of Idempotency-Key (the domain half is app/idempotency.py)."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, g, request

from app import idempotency as records
from app.api.parsing import AUTH_FIELDS, json_body
from app.errors import ApiError
from app.inventory import keys
from app.inventory.errors import IdempotencyReplay
from app.jsonutil import dumps

#: The lock only has to outlive one request; a crashed request frees its key after this.
LOCK_MS = 30_000


def _body_for_fingerprint():
    body = json_body()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in AUTH_FIELDS}
    return body


def _replay(stored: records.StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status_code, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    return response


def idempotent(body: Callable[[Any], dict], status: int = 200) -> Callable:
    """Let a write view honour `Idempotency-Key`. The view passes `g.idempotency` to the
    service, which stores the response rendered here (`body(result)`, the same function the
    view answers with) in the same transaction as its effect."""

    def render(result) -> tuple[int, str]:
        return status, dumps(body(result))

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            key = request.headers.get("Idempotency-Key")
            g.idempotency = None
            if key is None:
                return view(*args, **kwargs)
            if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
                raise ApiError(400, "bad_request", "Idempotency-Key must be 1-255 printable ASCII characters.")
            services = current_app.extensions["offer_engine"]
            account_id = g.account.id
            fingerprint = records.fingerprint(request.method, request.path, _body_for_fingerprint())
            ttl = current_app.config["IDEMPOTENCY_TTL_SECONDS"]

            def stored_response() -> Response | None:
                with services.db.read() as session:
                    stored = records.find(session, account_id, key, ttl)
                if stored is None:
                    return None
                if stored.fingerprint != fingerprint:
                    raise ApiError(
                        422,
                        "idempotency_key_reused",
                        "This Idempotency-Key was used with a different request.",
                    )
                return _replay(stored)

            replay = stored_response()
            if replay is not None:
                return replay
            lock_key = keys.idempotency_lock(account_id, key)
            token = secrets.token_hex(8)
            if not services.redis.set(lock_key, token, nx=True, px=LOCK_MS):
                raise ApiError(
                    409,
                    "request_in_progress",
                    "A request with this Idempotency-Key is still running; retry later.",
                    headers={"Retry-After": "1"},
                )
            try:
                g.idempotency = records.Idempotency(account_id, key, fingerprint, render)
                return view(*args, **kwargs)
            except IdempotencyReplay:
                replay = stored_response()
                if replay is None:
                    raise
                return replay
            finally:
                if services.redis.get(lock_key) == token:
                    services.redis.delete(lock_key)

        return wrapper

    return decorator
