"""/v3/purchases: list (paginated ledger), one, create, update status."""

from __future__ import annotations

import math

from flask.views import MethodView

from app.inventory.errors import ProductRejected
from app.inventory.ledger import PER_PAGE
from app.web.api.auth import account_id
from app.web.api.v3 import blp
from app.web.api.v3.parsing import MISSING_PARAMETERS
from app.web.api.v3.schemas import (
    V3CreateArgs,
    V3OneArgs,
    V3PageBody,
    V3PageQuery,
    V3PurchasePageSchema,
    V3PurchaseSchema,
    V3UpdateArgs,
)
from app.web.errors import ApiError
from app.web.services import services

UNAUTHORIZED = (401, "Authorization Failed: no secret, or a wrong one")
BAD_REQUEST = (400, "Your request is missing parameters: every problem, joined by ', '")


@blp.route("/purchases")
class Purchases(MethodView):
    @blp.arguments(V3PageQuery, location="query")
    @blp.arguments(V3PageBody, required=False)
    @blp.response(200, V3PurchasePageSchema)
    @blp.documented(BAD_REQUEST, UNAUTHORIZED)
    def get(self, query, body):
        """The account's purchases, 50 a page, oldest first (pages never shift)"""
        page = query.get("page") or body.get("page") or 1
        purchases, total = services().ledger.page(account_id(), page, PER_PAGE)
        return {
            "total_purchases": total,
            "page": page,
            "total_pages": math.ceil(total / PER_PAGE),
            "purchases": purchases,
        }

    @blp.arguments(V3CreateArgs)
    @blp.response(201, V3PurchaseSchema)
    @blp.documented(
        BAD_REQUEST,
        UNAUTHORIZED,
        (
            409,
            "Not enough stock for a product whose sku names a deal (nothing was taken), or the "
            "transaction_id is already recorded with a different body",
        ),
        (503, "Redis or SQL unreachable; retry"),
    )
    def post(self, args):
        """Record a purchase; a product whose sku names a deal takes its stock (all or nothing).

        Sending a transaction_id again with the same body answers with the recorded purchase
        (header Idempotent-Replayed: true) and takes nothing."""
        try:
            recorded = services().ledger.create(account_id(), args["purchase"])
        except ProductRejected as error:
            raise ApiError(400, MISSING_PARAMETERS, str(error)) from None
        if recorded.created:
            return recorded.purchase
        return recorded.purchase, 201, {"Idempotent-Replayed": "true"}


def _same_id(args: dict, purchase_id: int) -> None:
    if args.get("id", purchase_id) != purchase_id:
        raise ApiError(400, MISSING_PARAMETERS, "id does not match the purchase id in the URL")


@blp.route("/purchases/<int:purchase_id>")
class PurchaseById(MethodView):
    @blp.arguments(V3OneArgs, required=False)
    @blp.response(200, V3PurchaseSchema)
    @blp.documented(BAD_REQUEST, UNAUTHORIZED, (404, "No such purchase in this account's ledger"))
    def get(self, args, purchase_id):
        """A purchase (the object itself, no envelope)"""
        _same_id(args, purchase_id)
        return services().ledger.get(account_id(), purchase_id)

    @blp.arguments(V3UpdateArgs)
    @blp.response(200, V3PurchaseSchema)
    @blp.documented(BAD_REQUEST, UNAUTHORIZED, (404, "No such purchase in this account's ledger"))
    def put(self, args, purchase_id):
        """Change a purchase's status (the only changeable field; any other field sent is ignored)"""
        _same_id(args, purchase_id)
        return services().ledger.set_status(account_id(), purchase_id, args["purchase"]["status"])
