"""/v1/public: what anyone may read without an account's secret, for storefronts (a browser
page must never hold the secret). Its answers carry CORS headers (`Access-Control-Allow-Origin:
*`), errors in v1's shape; nothing here counts against an account's write limit (the
storefronts' waitlist joins have a budget of their own per account, the same size: ratelimit.py).

deals.py     GET /v1/public/deals/:id, GET /v1/public/deals/:id/stream
stream.py    the stream's Server-Sent Events (docs/storefront.md)
waitlist.py  POST /v1/public/deals/:id/waitlist (JSON or a form, like v1's writes)
"""

from flask import Flask, Response, request

from app.web.api.blueprint import ApiBlueprint
from app.web.api.v1.schemas import V1ErrorSchema
from app.web.errors import V1_BODY

PREFIX = "/v1/public"

blp = ApiBlueprint(
    "public",
    __name__,
    url_prefix=PREFIX,
    description="Public deals for storefronts: no secret, CORS for any origin.",
    error_body=V1_BODY,
    error_schema=V1ErrorSchema,
    requires_account=False,
    # The storefront's waitlist form may post as a plain HTML form, like v1's writes.
    accepts_forms=True,
)

#: What a cross-origin page may send here (a JSON body, the stream's reconnection id).
CORS_REQUEST_HEADERS = "Content-Type, Last-Event-ID, X-Request-ID, Idempotency-Key"
CORS_EXPOSED_HEADERS = "X-Request-ID, Retry-After"


def cors(response: Response) -> Response:
    """after_request (the app's, not the blueprint's: a path that matches no route, a 404, has
    no blueprint, and a browser must still be able to read that answer)."""
    if request.path.startswith(PREFIX + "/"):
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = "*"
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = CORS_REQUEST_HEADERS
            headers["Access-Control-Max-Age"] = "86400"
    return response


def init_app(app: Flask) -> None:
    app.after_request(cors)
    from app.web.api.public import stream

    stream.init_app(app)


from app.web.api.public import deals, waitlist  # noqa: E402,F401  (registers the routes on blp)
