"""The sold-out gate: a flash sale's refusals answered before Flask.

During a flash sale almost every request is a reserve of a deal that is already sold out, and
the domain can say so without taking (`PurchaseService.known_refusal`: the process's sold-out
memo; for a keyed request, the key's kept answer and whether its first attempt holds a unit).
Through Flask that answer costs routing, the request context and its hooks several times over;
this WSGI layer, inside the request envelope (request id, metrics, access log: all unchanged),
asks the domain first and hands every request it cannot answer to Flask untouched.

It adds no rule of its own: the body is read as the blueprint reads it and loaded by the view's
schema (ReserveArgs), the secret looked up as `require_account` does, the key turned into the
same keyed write as `idempotent` makes (with the view's own rendering), the answer made by the
error handler's builder, and the write counted by the same limiter, last (so that a request
Flask answers is counted once, by Flask). What it does not handle (a form body, the secret in
the body or the query, a malformed request or key, a deal the memo does not know, a store that
cannot answer) goes to Flask, which decides as it always did. tests/api/test_sold_out_gate.py
sends the same requests through the gate and through Flask alone and compares the answers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

import marshmallow as ma
from flask import Flask, Response

from app.core.errors import DomainError, Unavailable
from app.core.idempotency import Replay
from app.web.api.auth import bearer_secret
from app.web.api.idempotency import keyed_write, replayed
from app.web.api.parsing import AUTH_FIELDS
from app.web.api.ratelimit import WriteLimit, key_of_account
from app.web.api.v1.schemas import ReserveArgs
from app.web.envelope import ROUTE_KEY
from app.web.errors import V1_BODY, domain_error_answer

PATH = "/v1/purchases/reserve"
ENDPOINT = "v1.Reserve"
#: A reserve body is well under this; a bigger one goes to Flask.
MAX_BODY = 512


class SoldOutGate:
    def __init__(self, wsgi_app, app: Flask, limit: WriteLimit | None) -> None:
        self.wsgi_app = wsgi_app
        self.services = app.extensions["offer_engine"]
        self.limit = limit
        self.max_body = min(MAX_BODY, app.config.get("MAX_CONTENT_LENGTH") or MAX_BODY)
        self.rule = next(rule for rule in app.url_map.iter_rules() if rule.endpoint == ENDPOINT)
        self.schema = ReserveArgs()
        #: The view's rendering of a reserve, which a keyed write carries.
        self.render = app.view_functions[ENDPOINT].view_class.post.render

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == PATH:
            answer = self._known_answer(environ)
            if answer is not None:
                # The envelope counts and logs it as Flask's answer to the route.
                environ[ROUTE_KEY] = (self.rule, PATH)
                return answer(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def _known_answer(self, environ: dict) -> Response | None:
        """The domain's answer to this reserve when it knows it without running one, else None."""
        if environ.get("QUERY_STRING"):
            return None
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self.max_body:
            return None
        data = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(data)  # Flask reads the same bytes if it answers
        try:
            body = json.loads(data)  # the same parser as read_body
            if not isinstance(body, dict) or not AUTH_FIELDS.isdisjoint(body):
                return None
            args = self.schema.load(body)
        except (ValueError, UnicodeDecodeError, RecursionError, ma.ValidationError):
            return None
        account = self.services.accounts.authenticate(bearer_secret(environ.get("HTTP_AUTHORIZATION", "")))
        if account is None:
            return None
        try:
            key = environ.get("HTTP_IDEMPOTENCY_KEY")
            keyed = None if key is None else keyed_write(account.id, key, "POST", PATH, body, self.render)
            self.services.purchases.known_refusal(account.id, args["deal_id"], args["num_bought"], keyed=keyed)
            return None
        except Unavailable:
            return None  # a store that cannot answer now: Flask's to say
        except (Replay, DomainError) as known:
            answer = known
        except Exception:
            return None  # an ill-formed key (ApiError), a store error: Flask's to say
        if self.limit is not None and not self.limit.admit(key_of_account(account.id)):
            return None
        if isinstance(answer, Replay):
            return replayed(answer.kept.status_code, answer.kept.body)
        return domain_error_answer(environ, V1_BODY, answer)


def init_app(app: Flask, limit: WriteLimit | None) -> None:
    """Put the gate between the request envelope (app/web/envelope.py) and Flask, when the sold-out
    memo is on (SOLD_OUT_CACHE_MS > 0; without it the gate could never answer)."""
    if app.config.get("SOLD_OUT_CACHE_MS", 0) > 0:
        envelope = app.wsgi_app
        envelope.wsgi_app = SoldOutGate(envelope.wsgi_app, app, limit)
