"""/v1/purchases"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Response, g
from flask.views import MethodView

from app.core.jsonutil import dumps
from app.inventory.errors import OverPurchaseLimit, UserRequired
from app.inventory.serializers import purchase_json
from app.web.api.auth import account_id
from app.web.api.v1 import blp
from app.web.api.v1.deals import page_info
from app.web.api.v1.schemas import (
    ClaimArgs,
    CreateArgs,
    ExtendArgs,
    NoArgs,
    PurchaseEnvelope,
    PurchaseListArgs,
    PurchasesEnvelope,
    ReserveArgs,
)
from app.web.errors import field_error
from app.web.services import services

T = TypeVar("T")


def purchase_body(purchase) -> dict:
    return {"status": "success", "purchase": purchase_json(purchase)}


def answer(purchase) -> Response:
    """The purchase envelope, built by `purchase_json` (PurchaseEnvelope documents it)."""
    return Response(dumps(purchase_body(purchase)), mimetype="application/json")


def claim_as_asked(claim: Callable[..., T], token: str, args: dict) -> T:
    """`claim` (a purchase's or a cart's) of `token` with the request's ClaimArgs. A claim that
    needed the user_id left out answers as that field's validation error."""
    try:
        return claim(
            account_id(), token, user_id=args.get("user_id"), credit_card_id=args.get("credit_card_id"), keyed=g.keyed
        )
    except UserRequired as error:
        raise field_error("user_id", str(error).capitalize() + ".") from None


def take_as_asked(take: Callable[..., T], args: dict, units: str, **asked) -> T:
    """`take` (reserve or create) of the request's deal_id and `units` (the field naming the
    units). More units than the deal's max_per_purchase answer as that field's validation error."""
    try:
        return take(account_id(), args["deal_id"], args[units], keyed=g.keyed, **asked)
    except OverPurchaseLimit as error:
        raise field_error(units, f"Must be at most {error.limit} (the deal's max_per_purchase).") from None


def purchase_write(arguments, *codes: tuple[int, str]):
    """A purchase write's decorators (ApiBlueprint.write): it answers PurchaseEnvelope, or
    not_found, one of `codes`, or unavailable."""
    return blp.write(arguments, PurchaseEnvelope, purchase_body, (404, "not_found"), *codes, (503, "unavailable"))


@blp.route("/purchases/reserve")
class Reserve(MethodView):
    @purchase_write(
        ReserveArgs,
        (409, "sold_out, limit_exceeded, not_started, sale_ended, request_in_progress"),
        (422, "validation_failed, idempotency_key_reused"),
    )
    def post(self, args):
        """Hold units of a deal for RESERVATION_TTL_SECONDS; the purchase id is the token"""
        return take_as_asked(services().purchases.reserve, args, "num_bought", user_id=args.get("user_id"))


@blp.route("/purchases")
class Purchases(MethodView):
    @purchase_write(
        CreateArgs,
        (409, "sold_out, price_changed, limit_exceeded, not_started, sale_ended, request_in_progress"),
        (422, "validation_failed"),
    )
    def post(self, args):
        """Buy directly: stock taken and the purchase fulfilled at once"""
        return take_as_asked(
            services().purchases.create,
            args,
            "quantity",
            user_id=args["user_id"],
            credit_card_id=args["credit_card_id"],
            expected_price_per_unit=args["expected_price_per_unit"],
            session_id=args.get("session_id"),
        )

    @blp.arguments(PurchaseListArgs, location="query")
    @blp.response(200, PurchasesEnvelope)
    def get(self, args):
        """List purchases, newest first, by deal and state"""
        purchases, total = services().purchases.list(
            account_id(),
            deal_id=args.get("deal_id"),
            state=args.get("fulfillment_state"),
            page=args["page"],
            per_page=args["per_page"],
        )
        return {"purchases": purchases, "pagination": page_info(args["page"], args["per_page"], total)}


@blp.route("/purchases/<string(maxlength=64):purchase_id>")
class PurchaseById(MethodView):
    @blp.found(PurchaseEnvelope)
    def get(self, purchase_id):
        """A purchase"""
        return answer(services().purchases.get(account_id(), purchase_id))


@blp.route("/purchases/<string(maxlength=64):purchase_id>/claim")
class Claim(MethodView):
    @purchase_write(
        ClaimArgs,
        (409, "sold_out, already_claimed, limit_exceeded, user_mismatch, sale_ended, request_in_progress"),
        (422, "validation_failed (user_id, when the purchase was not reserved for a user)"),
    )
    def put(self, args, purchase_id):
        """Payment succeeded: fulfil the purchase (one coupon per unit)"""
        return claim_as_asked(services().purchases.claim, purchase_id, args)


@blp.route("/purchases/<string(maxlength=64):purchase_id>/release")
class Release(MethodView):
    @purchase_write(NoArgs, (409, "already_claimed"))
    def put(self, _args, purchase_id):
        """Payment failed: give the held units back (once, however often it is called)"""
        return services().purchases.release(account_id(), purchase_id, keyed=g.keyed)


@blp.route("/purchases/<string(maxlength=64):purchase_id>/extend")
class Extend(MethodView):
    @purchase_write(ExtendArgs, (409, "hold_not_active, max_hold_reached"))
    def put(self, args, purchase_id):
        """Push reserved_until out (at most RESERVATION_TTL_SECONDS a call, MAX_HOLD_SECONDS in all)"""
        return services().purchases.extend(account_id(), purchase_id, seconds=args.get("seconds"), keyed=g.keyed)
