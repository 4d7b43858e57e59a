"""Every failure becomes an HTTP answer here, in the error body of the API that was called.

v1:  {"status": "error", "error": "<machine_code>", "message": "<human sentence>"}
v3:  {"error": "<title>", "message": "<human sentence>"}   (ConvertKit's shape)

Each API blueprint names its error body (`V1_BODY`, `V3_BODY`; app/web/api/blueprint.py) and
`ErrorBodies` finds the one of the API a request was for. Domain exceptions map to a status and
a stable code in `DOMAIN_ERRORS`; unreachable stores become 503 with Retry-After; anything
unexpected is logged and becomes a 500 in the same shape. The code of each answer is noted in
the WSGI environ (`ERROR_CODE_KEY`) for the request envelope, which counts refusals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, Response, current_app, request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from app.core import errors as C
from app.core.jsonutil import dumps
from app.inventory import errors as E
from app.inventory.stock import REDIS_DOWN
from app.store.db import is_connection_error
from app.webhooks import service as W

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by views for outcomes that have no domain exception."""

    def __init__(self, status: int, code: str, message: str, *, fields: dict | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers or {}


def field_error(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_failed", f"{field}: {message}", fields={field: [message]})


@dataclass(frozen=True)
class Mapping:
    status: int
    code: str


DOMAIN_ERRORS: dict[type[Exception], Mapping] = {
    E.DealNotFound: Mapping(404, "not_found"),
    E.PurchaseNotFound: Mapping(404, "not_found"),
    E.SoldOut: Mapping(409, "sold_out"),
    E.OverUserLimit: Mapping(409, "limit_exceeded"),
    E.NotStarted: Mapping(409, "not_started"),
    E.SaleEnded: Mapping(409, "sale_ended"),
    E.UserMismatch: Mapping(409, "user_mismatch"),
    E.PriceChanged: Mapping(409, "price_changed"),
    E.AlreadyClaimed: Mapping(409, "already_claimed"),
    E.HoldNotActive: Mapping(409, "hold_not_active"),
    E.MaxHoldReached: Mapping(409, "max_hold_reached"),
    E.QuantityBelowCommitted: Mapping(409, "quantity_below_committed"),
    E.SkuTaken: Mapping(409, "sku_taken"),
    E.TransactionConflict: Mapping(409, "transaction_conflict"),
    E.ProductRejected: Mapping(400, "missing_parameters"),
    E.OverPurchaseLimit: Mapping(422, "validation_failed"),
    C.Unavailable: Mapping(503, "unavailable"),
    C.RequestInProgress: Mapping(409, "request_in_progress"),
    C.KeyReused: Mapping(422, "idempotency_key_reused"),
    W.WebhookNotFound: Mapping(404, "not_found"),
    W.TooManyWebhooks: Mapping(409, "too_many_webhooks"),
    W.InvalidWebhook: Mapping(422, "validation_failed"),
}

#: The refusal the request envelope counts on its own (offer_engine_sold_out_refusals).
SOLD_OUT = DOMAIN_ERRORS[E.SoldOut].code

DEFAULT_MESSAGES = {
    E.DealNotFound: "No deal with that id.",
    E.PurchaseNotFound: "No purchase with that id.",
    E.CartNotFound: "No cart with that id.",
    W.WebhookNotFound: "No webhook with that id.",
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

UNEXPECTED = "Something went wrong on our side; it has been logged."

#: Where the error handler leaves the code of the answer it made, for the request envelope.
ERROR_CODE_KEY = "offer_engine.error_code"


class ErrorBody:
    """How one API writes its error bodies (v1's shape; `V3Body` is ConvertKit's)."""

    #: What the API's messages end with.
    stop = "."
    #: Its schema in /openapi.json (app/web/openapi.py).
    documented_as = "V1ErrorBody"

    def render(self, status: int, code: str, message: str, fields: dict | None = None) -> dict:
        body: dict = {"status": "error", "error": code, "message": message}
        if fields:
            body["errors"] = fields
        return body


class V3Body(ErrorBody):
    TITLES = {
        400: "Your request is missing parameters",
        401: "Authorization Failed",
        404: "Not Found",
        405: "Method Not Allowed",
        409: "Conflict",
        413: "Request Entity Too Large",
        422: "Your request is missing parameters",
        429: "Too Many Requests",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    MESSAGES = {
        401: "You do not have sufficient permissions to access this resource",
    }
    stop = ""  # ConvertKit's messages end without one
    documented_as = "V3ErrorBody"

    def render(self, status: int, code: str, message: str, fields: dict | None = None) -> dict:
        return {"error": self.TITLES.get(status, code), "message": self.MESSAGES.get(status, message)}


V1_BODY = ErrorBody()
V3_BODY = V3Body()


class ErrorBodies:
    """The error body of the API a request was for: its blueprint's; for a request that matched
    no route (404, 405), the one of the blueprint mounted where its path points; else v1's."""

    EXTENSION = "offer_engine_error_bodies"

    def __init__(self, default: ErrorBody = V1_BODY) -> None:
        self.default = default
        self._by_blueprint: dict[str, ErrorBody] = {}
        self._by_prefix: list[tuple[str, ErrorBody]] = []

    def add(self, name: str, url_prefix: str, body: ErrorBody) -> None:
        self._by_blueprint[name] = body
        self._by_prefix.append((url_prefix.rstrip("/"), body))

    def for_request(self) -> ErrorBody:
        name = request.blueprint
        if name is not None:
            return self._by_blueprint.get(name, self.default)
        return self.for_path(request.path) or self.default

    def for_path(self, path: str) -> ErrorBody | None:
        """The error body of the API mounted where `path` points; None outside every API."""
        for prefix, body in self._by_prefix:
            if path == prefix or path.startswith(prefix + "/"):
                return body
        return None

    @classmethod
    def of(cls, app: Flask) -> ErrorBodies:
        return app.extensions.setdefault(cls.EXTENSION, cls())


def error_body() -> ErrorBody:
    """The error body of the API the current request is for."""
    return current_app.extensions[ErrorBodies.EXTENSION].for_request()


def error_response(status: int, code: str, message: str, **options) -> Response:
    """The current request's error answer, in the body of the API it was for (`options`: the
    `fields` and `headers` of `error_answer`)."""
    return error_answer(request.environ, error_body(), status, code, message, **options)


def error_answer(
    environ: dict,
    shape: ErrorBody,
    status: int,
    code: str,
    message: str,
    *,
    fields: dict | None = None,
    headers: dict | None = None,
) -> Response:
    """An error answer in `shape`, its code noted in `environ` for the request envelope."""
    environ[ERROR_CODE_KEY] = code
    response = Response(dumps(shape.render(status, code, message, fields)), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 503 and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = "1"
    return response


def _validation_message(messages: dict) -> tuple[str, dict]:
    """webargs nests messages by location; flatten to {field: [..]} and one sentence."""
    flat: dict = {}
    for location_messages in messages.values():
        if isinstance(location_messages, dict):
            flat.update(location_messages)
        else:
            flat["_body"] = location_messages
    parts = []
    for field, problems in flat.items():
        text = _first_text(problems).rstrip(".")
        parts.append(text if field in ("_schema", "_body") else f"{field}: {text}")
    return "Invalid request: " + "; ".join(parts) + ".", flat


def _first_text(problems) -> str:
    if isinstance(problems, list):
        return ", ".join(_first_text(p).rstrip(".") for p in problems)
    if isinstance(problems, dict):
        return "; ".join(f"{k}: {_first_text(v)}" for k, v in problems.items())
    return str(problems)


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    if status == 422 and messages:
        message, fields = _validation_message(messages)
        return error_response(422, "validation_failed", message, fields=fields)
    if status == 400 and messages:
        return error_response(400, "invalid_json", "The request body is not valid JSON.")
    message = data.get("message") or error.description or HTTP_CODES.get(status, "error")
    headers = dict(data.get("headers") or {})
    valid_methods = getattr(error, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(valid_methods)
    return error_response(status, HTTP_CODES.get(status, "error"), message, headers=headers)


def handle_api_error(error: ApiError) -> Response:
    return error_response(error.status, error.code, error.message, fields=error.fields, headers=error.headers)


def domain_mapping(error: Exception) -> Mapping | None:
    if isinstance(error, E.CartItemRefused):  # a cart's item: the item's refusal, naming its deal
        error = error.refusal
    for cls in type(error).__mro__:
        mapping = DOMAIN_ERRORS.get(cls)
        if mapping:
            return mapping
    return None


def domain_message(error: Exception) -> str:
    """The error's sentence: capitalised, ending with a full stop."""
    message = str(error) or DEFAULT_MESSAGES.get(type(error), "")
    message = message[:1].upper() + message[1:]
    if message and not message.endswith("."):
        message += "."
    return message


def handle_domain_error(error: C.DomainError) -> Response:
    return domain_error_answer(request.environ, error_body(), error)


def domain_error_answer(environ: dict, shape: ErrorBody, error: Exception) -> Response:
    """The answer to a domain error, in `shape` (the current request's API's, or the one the
    sold-out gate answers for)."""
    if isinstance(error, W.InvalidWebhook):
        return error_answer(
            environ,
            shape,
            422,
            "validation_failed",
            f"{error.field}: {error.problem}",
            fields={error.field: [error.problem]},
        )
    mapping = domain_mapping(error)
    if mapping is None:
        log.exception("unhandled error", exc_info=error)
        return error_answer(environ, shape, 500, "internal_error", UNEXPECTED)
    headers = {}
    if isinstance(error, (C.Unavailable, C.RequestInProgress)):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, C.Unavailable):
        log.warning("answering 503", extra={"reason": str(error)})
    return error_answer(environ, shape, mapping.status, mapping.code, domain_message(error), headers=headers)


def handle_store_down(error: Exception) -> Response:
    """SQL or Redis unreachable: nothing was half-written (see docs/consistency.md); ask the
    client to retry."""
    if isinstance(error, DBAPIError) and not is_connection_error(error):
        return handle_unexpected(error)
    which = "database" if isinstance(error, (DBAPIError, PoolTimeout)) else "redis"
    log.warning("store unreachable; answering 503", extra={"store": which, "error": str(error)[:200]})
    return error_response(
        503, "unavailable", f"The {which} is unreachable; retry shortly.", headers={"Retry-After": "1"}
    )


def handle_unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", UNEXPECTED)


def init_app(app: Flask) -> None:
    ErrorBodies.of(app)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(C.DomainError, handle_domain_error)
    for store_error in (
        DBAPIError,
        PoolTimeout,
        *REDIS_DOWN,
    ):
        app.register_error_handler(store_error, handle_store_down)
    app.register_error_handler(Exception, handle_unexpected)
