"""The sold-out gate: a flash sale's refusals answered before Flask.

During a flash sale almost every request is a reserve of a deal that is already sold out, and
the process's sold-out memo (SoldOutMemo, app/inventory/stock.py) already knows it: the answer
is one dictionary lookup. Through Flask the same 409 cost four times bare Flask's CPU in-process
(197 against 48 µs), spent on routing, the request context, the hooks, the schema and the error
handler. This WSGI layer, inside the request envelope (request id, metrics, access log: all
unchanged), answers such a request from the environ and hands every other request to Flask
untouched.

It answers only when Flask would give the same answer byte for byte, so it checks what Flask
checks before the memo: a POST to /v1/purchases/reserve with no query string and no
Idempotency-Key; a JSON body of exactly `deal_id` and `num_bought`, both JSON integers in the
schema's ranges; a Bearer secret that the (cached) account lookup knows; the memo sure that
this account's deal is sold out; and last the write counted against the account's limit (last,
so that a request Flask answers is counted once, by Flask). Anything else goes to Flask, which
decides as it always did; a write the gate found over the limit is counted there once more,
when it is refused anyway. tests/api/test_sold_out_gate.py sends the same requests through the
gate and through Flask alone and compares the answers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

from flask import Flask

from app.core.jsonutil import dumps
from app.inventory.errors import SoldOut
from app.web.api.auth import bearer_secret
from app.web.api.fields import BIGINT_MAX, MAX_UNITS_PER_PURCHASE
from app.web.api.ratelimit import WriteLimit, key_of_account
from app.web.envelope import ROUTE_KEY
from app.web.errors import ERROR_CODE_KEY, SOLD_OUT, V1_BODY, domain_message

PATH = "/v1/purchases/reserve"
ENDPOINT = "v1.Reserve"
#: A reserve body is about 40 bytes; a bigger one is not the flash sale's and goes to Flask.
MAX_BODY = 512
FIELDS = frozenset({"deal_id", "num_bought"})


class SoldOutGate:
    def __init__(self, wsgi_app, app: Flask, limit: WriteLimit | None) -> None:
        self.wsgi_app = wsgi_app
        self.services = app.extensions["offer_engine"]
        self.limit = limit
        self.max_body = min(MAX_BODY, app.config.get("MAX_CONTENT_LENGTH") or MAX_BODY)
        self.rule = next(rule for rule in app.url_map.iter_rules() if rule.endpoint == ENDPOINT)

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == PATH:
            answer = self._refusal(environ)
            if answer is not None:
                # The envelope counts and logs it as Flask's answer to the route.
                environ[ROUTE_KEY] = (self.rule, PATH)
                environ[ERROR_CODE_KEY] = SOLD_OUT
                start_response(
                    "409 CONFLICT", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))]
                )
                return [answer]
        return self.wsgi_app(environ, start_response)

    def _refusal(self, environ: dict) -> bytes | None:
        """The 409 body when the memo refuses this request and nothing before it would answer."""
        if environ.get("QUERY_STRING") or "HTTP_IDEMPOTENCY_KEY" in environ:
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
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if type(body) is not dict or body.keys() != FIELDS:
            return None
        deal_id, units = body["deal_id"], body["num_bought"]
        if not (type(deal_id) is int and 1 <= deal_id <= BIGINT_MAX):
            return None
        if not (type(units) is int and 1 <= units <= MAX_UNITS_PER_PURCHASE):
            return None
        secret = bearer_secret(environ.get("HTTP_AUTHORIZATION", ""))
        account = self.services.accounts.authenticate(secret)
        if account is None:
            return None
        if not self.services.stock.sold_out.knows_sold_out(deal_id, account.id):
            return None
        if self.limit is not None and not self.limit.admit(key_of_account(account.id)):
            return None
        return dumps(V1_BODY.render(409, SOLD_OUT, domain_message(SoldOut(0, units)))).encode()


def init_app(app: Flask, limit: WriteLimit | None) -> None:
    """Put the gate between the request envelope (app/web/envelope.py) and Flask, when the sold-out
    memo is on (SOLD_OUT_CACHE_MS > 0; without it the gate could never answer)."""
    if app.config.get("SOLD_OUT_CACHE_MS", 0) > 0:
        envelope = app.wsgi_app
        envelope.wsgi_app = SoldOutGate(envelope.wsgi_app, app, limit)
