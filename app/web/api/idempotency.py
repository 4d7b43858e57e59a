"""The HTTP half of Idempotency-Key (the domain half, which decides, is app/core/idempotency.py).

A write view decorated with `idempotent` gets `g.keyed` (None without the header) and passes it
to its service. The decorator checks the header, fingerprints the request (method, path, body
without the secret), and answers a `Replay` with the kept response, byte for byte, with
`Idempotent-Replayed: true`. Nothing here touches a store: no lookup, no lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from app.core.idempotency import Keyed, Replay, fingerprint
from app.core.jsonutil import dumps
from app.web.api.parsing import AUTH_FIELDS, json_body
from app.web.errors import ApiError

HEADER = "Idempotency-Key"


def _body_for_fingerprint():
    body = json_body()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in AUTH_FIELDS}
    return body


def replayed(status: int, body: str) -> Response:
    response = Response(body, status=status, mimetype="application/json" if body else None)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def idempotent(body: Callable[[Any], dict | None], status: int | Callable[[Any], int] = 200) -> Callable:
    """Let a write view honour `Idempotency-Key`. `body(result)` is the JSON the view answers
    with (None: no body), `status` its status (or `status(result)`); the service keeps the same
    rendering in the same transaction as its effect, so a retry gets the very bytes the first
    request got."""

    def render(result) -> tuple[int, str]:
        rendered = body(result)
        code = status(result) if callable(status) else status
        return code, "" if rendered is None else dumps(rendered)

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            key = request.headers.get(HEADER)
            g.keyed = None
            if key is None:
                return view(*args, **kwargs)
            if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
                raise ApiError(400, "bad_request", "Idempotency-Key must be 1-255 printable ASCII characters.")
            g.keyed = Keyed(
                g.account.id, key, fingerprint(request.method, request.path, _body_for_fingerprint()), render
            )
            try:
                return view(*args, **kwargs)
            except Replay as replay:
                return replayed(replay.kept.status_code, replay.kept.body)

        return wrapper

    return decorator
