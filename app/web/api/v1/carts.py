"""/v1/carts: several deals held, claimed, released or extended together, all or nothing."""

from __future__ import annotations

from flask import Response, g
from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.core.jsonutil import dumps
from app.inventory.carts import MAX_ITEMS
from app.inventory.serializers import cart_json
from app.web.api.auth import account_id
from app.web.api.fields import Id, StrictInt, Units
from app.web.api.v1 import blp
from app.web.api.v1.purchases import claim_as_asked
from app.web.api.v1.schemas import ClaimArgs, Envelope, Instant, NoArgs, PurchaseSchema, Strict, optional_text
from app.web.services import services

CART_STATES = ("reserved", "fulfilled", "released", "expired")


class CartItemArgs(Strict):
    deal_id = Id(required=True)
    num_bought = Units(required=True)


class CartReserveArgs(Strict):
    items = fields.List(
        fields.Nested(CartItemArgs),
        required=True,
        validate=validate.Length(min=1, max=MAX_ITEMS),
        metadata={"description": f"1 to {MAX_ITEMS} items, each deal at most once."},
    )
    user_id = optional_text("The customer: counted against each deal's max_per_user; only they can claim.")

    @validates_schema
    def _each_deal_once(self, data, **kwargs):
        deals = [item["deal_id"] for item in data.get("items", [])]
        if len(deals) != len(set(deals)):
            raise ValidationError("Each deal at most once.", field_name="items")


class CartExtendArgs(Strict):
    seconds = StrictInt(minimum=1, maximum=10**6)


class CartSchema(Schema):
    id = fields.String(attribute="token")
    state = fields.String(metadata={"enum": list(CART_STATES)})
    user_id = fields.String(allow_none=True)
    reserved_until = Instant(allow_none=True)
    created_at = Instant()
    purchases = fields.List(fields.Nested(PurchaseSchema))


class CartEnvelope(Envelope):
    cart = fields.Nested(CartSchema)


def cart_body(cart) -> dict:
    return {"status": "success", "cart": cart_json(cart)}


def answer(cart) -> Response:
    return Response(dumps(cart_body(cart)), mimetype="application/json")


REFUSALS = "sold_out, not_started, sale_ended, limit_exceeded (the message names the deal), request_in_progress"


def cart_write(arguments, *codes: tuple[int, str], not_found: str = "not_found"):
    """A cart write's decorators (ApiBlueprint.write): it answers CartEnvelope, or `not_found`,
    one of `codes`, or unavailable."""
    return blp.write(arguments, CartEnvelope, cart_body, (404, not_found), *codes, (503, "unavailable"))


@blp.route("/carts/reserve")
class CartReserve(MethodView):
    @cart_write(CartReserveArgs, (409, REFUSALS), (422, "validation_failed"), not_found="not_found (a deal)")
    def post(self, args):
        """Hold every item for RESERVATION_TTL_SECONDS, or none"""
        items = [(item["deal_id"], item["num_bought"]) for item in args["items"]]
        return services().carts.reserve(account_id(), items, user_id=args.get("user_id"), keyed=g.keyed)


@blp.route("/carts/<string(maxlength=64):cart_id>")
class CartById(MethodView):
    @blp.found(CartEnvelope)
    def get(self, cart_id):
        """A cart and its items' purchases"""
        return answer(services().carts.get(account_id(), cart_id))


@blp.route("/carts/<string(maxlength=64):cart_id>/claim")
class CartClaim(MethodView):
    @cart_write(
        ClaimArgs,
        (
            409,
            "sold_out (naming the deal; the other holds stay held), already_claimed, user_mismatch, "
            "limit_exceeded, request_in_progress",
        ),
        (422, "validation_failed"),
    )
    def put(self, args, cart_id):
        """Payment succeeded: fulfil every item, or none"""
        return claim_as_asked(services().carts.claim, cart_id, args)


@blp.route("/carts/<string(maxlength=64):cart_id>/release")
class CartRelease(MethodView):
    @cart_write(NoArgs, (409, "already_claimed"))
    def put(self, _args, cart_id):
        """Payment failed: every item's units back"""
        return services().carts.release(account_id(), cart_id, keyed=g.keyed)


@blp.route("/carts/<string(maxlength=64):cart_id>/extend")
class CartExtend(MethodView):
    @cart_write(CartExtendArgs, (409, "hold_not_active, max_hold_reached"))
    def put(self, args, cart_id):
        """Push every item's reserved_until out (at most RESERVATION_TTL_SECONDS a call)"""
        return services().carts.extend(account_id(), cart_id, seconds=args.get("seconds"), keyed=g.keyed)
