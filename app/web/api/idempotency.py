"""The HTTP half of Idempotency-Key (the domain half, which decides, is app/core/idempotency.py).

A write view decorated with `idempotent` gets `g.keyed` (None without the header) and passes it
to its service. The decorator checks the header, gives the write its fingerprint (method, path,
body without the secret; computed only when a kept answer is compared or kept), and answers a `Replay` with the kept response, byte for byte, with
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
#: Turns a write's result into its (status, JSON body).
Render = Callable[[Any], tuple[int, str]]


def keyed_write(account_id: int, key: str, method: str, path: str, body: Any, render: Render) -> Keyed:
    """The keyed write a request with `Idempotency-Key: key` makes; its fingerprint is the
    method, the path and the body without the secret. An ill-formed key is a 400."""
    if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
        raise ApiError(400, "bad_request", "Idempotency-Key must be 1-255 printable ASCII characters.")
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in AUTH_FIELDS}
    return Keyed(account_id, key, functools.partial(fingerprint, method, path, body), render)


def respond(status: int, body: str) -> Response:
    return Response(body, status=status, mimetype="application/json" if body else None)


def replayed(status: int, body: str) -> Response:
    response = respond(status, body)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def idempotent(body: Callable[[Any], dict | None], status: int | Callable[[Any], int] = 200) -> Callable:
    """Let a write view honour `Idempotency-Key`. The view returns its service's result;
    `body(result)` is the JSON it is answered with (None: no body), `status` its status (or
    `status(result)`). A keyed write's service keeps that rendering in the same transaction as
    its effect, and the request is sent the rendering kept, so a retry gets the very bytes the
    first request got. The view keeps its rendering as `.render` (for the sold-out gate)."""

    def render(result: Any) -> tuple[int, str]:
        rendered = body(result)
        code = status(result) if callable(status) else status
        return code, "" if rendered is None else dumps(rendered)

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            key = request.headers.get(HEADER)
            g.keyed = None
            if key is None:
                return respond(*render(view(*args, **kwargs)))
            g.keyed = keyed = keyed_write(g.account.id, key, request.method, request.path, json_body(), render)
            try:
                result = view(*args, **kwargs)
            except Replay as replay:
                return replayed(replay.kept.status_code, replay.kept.body)
            return respond(*keyed.answer(result))

        wrapper.render = render  # type: ignore[attr-defined]
        return wrapper

    return decorator
