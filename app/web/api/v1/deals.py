"""/v1/deals"""

from __future__ import annotations

import math

from flask import g
from flask.views import MethodView

from app.web.api.auth import account_id
from app.web.api.v1 import blp
from app.web.api.v1.schemas import (
    DealCreateArgs,
    DealEnvelope,
    DealPatchArgs,
    DealsEnvelope,
    PageArgs,
)
from app.web.services import services


def page_info(page: int, per_page: int, total: int) -> dict:
    return {"page": page, "per_page": per_page, "total": total, "total_pages": math.ceil(total / per_page)}


def deal_body(deal) -> dict:
    return DEAL_ENVELOPE.dump({"deal": deal})


DEAL_ENVELOPE = DealEnvelope()


@blp.route("/deals")
class Deals(MethodView):
    @blp.write(
        DealCreateArgs,
        DealEnvelope,
        deal_body,
        (422, "validation_failed, idempotency_key_reused"),
        (409, "sku_taken, request_in_progress"),
        status=201,
    )
    def post(self, args):
        """Create a deal"""
        return services().deals.create(account_id(), **args, keyed=g.keyed)

    @blp.arguments(PageArgs, location="query")
    @blp.response(200, DealsEnvelope)
    def get(self, args):
        """List the account's deals with their live numbers"""
        deals, total = services().deals.list(account_id(), page=args["page"], per_page=args["per_page"])
        return {"deals": deals, "pagination": page_info(args["page"], args["per_page"], total)}


@blp.route("/deals/<int:deal_id>")
class DealById(MethodView):
    @blp.found(DealEnvelope)
    def get(self, deal_id):
        """A deal with live quantity, available, reserved and sold"""
        return {"deal": services().deals.get(account_id(), deal_id)}

    @blp.write(
        DealPatchArgs,
        DealEnvelope,
        deal_body,
        (409, "quantity_below_committed, request_in_progress"),
        (404, "not_found"),
    )
    def patch(self, args, deal_id):
        """Change quantity (never below reserved + sold), price, title, the sale window or public"""
        return services().deals.update(account_id(), deal_id, **args, keyed=g.keyed)
