"""v1 request and response schemas."""

from __future__ import annotations

from datetime import UTC, datetime

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from app.core.timeutil import iso
from app.inventory.purchases import effective_state
from app.inventory.serializers import coupon_codes
from app.web.api.fields import MAX_UNITS_PER_PURCHASE, Id, InstantArg, QueryInt, StrictBool, StrictInt, Text, Units

MONEY_MAX = 10**15
QUANTITY_MAX = 10**9
STATES = ("reserved", "fulfilled", "released", "expired")


class Strict(Schema):
    """Unknown fields are an error (422 naming them), never silently ignored."""


class Instant(fields.DateTime):
    """An instant as the v1 API shows it (`iso`: UTC, milliseconds, Z); documented as an
    OpenAPI date-time, so generated clients parse it."""

    def _serialize(self, value, attr, obj, **kwargs):
        return iso(value)


def constant(value: str) -> fields.Constant:
    """An envelope's fixed `status`, documented as the one string it is."""
    return fields.Constant(value, metadata={"type": "string", "enum": [value]})


def optional_text(description: str | None = None) -> Text:
    """A text of at least one character, which may also be null or left out."""
    return Text(min_length=1, allow_none=True, metadata={} if description is None else {"description": description})


class Envelope(Schema):
    """A successful answer: `status` "success", then the answer's own fields."""

    status = constant("success")


# -- deals -----------------------------------------------------------------------------------


class DealCreateArgs(Strict):
    title = Text(required=True, min_length=1, max_length=500)
    price_per_unit = StrictInt(
        required=True, minimum=0, maximum=MONEY_MAX, metadata={"description": "Minor units (cents)."}
    )
    quantity = StrictInt(required=True, minimum=0, maximum=QUANTITY_MAX)
    currency = Text(
        load_default="USD", validate=validate.Regexp(r"^[A-Za-z]{3}$", error="Must be a 3-letter currency code.")
    )
    sku = Text(min_length=1, max_length=200, allow_none=True)
    max_per_purchase = StrictInt(minimum=1, maximum=MAX_UNITS_PER_PURCHASE, allow_none=True)
    max_per_user = StrictInt(minimum=1, maximum=QUANTITY_MAX, allow_none=True)
    starts_at = InstantArg(
        allow_none=True, metadata={"description": "The sale opens then (ISO 8601; UTC without an offset)."}
    )
    ends_at = InstantArg(allow_none=True, metadata={"description": "The sale closes then."})
    public = StrictBool(
        load_default=False, metadata={"description": "Readable without a secret at /v1/public/deals/:id."}
    )

    @validates_schema
    def _window(self, data, **kwargs):
        _check_window(data.get("starts_at"), data.get("ends_at"))


class DealPatchArgs(Strict):
    title = Text(min_length=1, max_length=500)
    price_per_unit = StrictInt(minimum=0, maximum=MONEY_MAX)
    quantity = StrictInt(minimum=0, maximum=QUANTITY_MAX)
    max_per_purchase = StrictInt(minimum=1, maximum=MAX_UNITS_PER_PURCHASE, allow_none=True)
    max_per_user = StrictInt(minimum=1, maximum=QUANTITY_MAX, allow_none=True)
    starts_at = InstantArg(allow_none=True, metadata={"description": "null opens the window's start."})
    ends_at = InstantArg(allow_none=True, metadata={"description": "null opens the window's end."})
    public = StrictBool()

    @validates_schema
    def _something(self, data, **kwargs):
        if not data:
            raise ValidationError("Give at least one field to change.")
        _check_window(data.get("starts_at"), data.get("ends_at"))


def _check_window(starts_at, ends_at) -> None:
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise ValidationError("Must be after starts_at.", field_name="ends_at")


class DealSchema(Schema):
    id = fields.Integer()
    title = fields.String()
    sku = fields.String(allow_none=True)
    currency = fields.String()
    price_per_unit = fields.Integer()
    quantity = fields.Integer()
    available = fields.Integer()
    reserved = fields.Integer()
    sold = fields.Integer()
    active_holds = fields.Integer()
    sold_out = fields.Method("_sold_out", metadata={"type": "boolean"})
    max_per_purchase = fields.Integer(allow_none=True)
    max_per_user = fields.Integer(allow_none=True)
    starts_at = Instant(allow_none=True)
    ends_at = Instant(allow_none=True)
    on_sale = fields.Method("_on_sale", metadata={"type": "boolean", "description": "Inside the sale window now."})
    public = fields.Boolean()
    created_at = Instant()
    updated_at = Instant()

    def _sold_out(self, deal) -> bool:
        return deal.available <= 0

    def _on_sale(self, deal) -> bool:
        return deal.on_sale_at(datetime.now(UTC))


class DealEnvelope(Envelope):
    deal = fields.Nested(DealSchema)


class PageArgs(Schema):
    page = QueryInt(load_default=1, minimum=1, maximum=10**7)
    per_page = QueryInt(load_default=50, minimum=1, maximum=200)


class PageSchema(Schema):
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    total_pages = fields.Integer()


class DealsEnvelope(Envelope):
    deals = fields.List(fields.Nested(DealSchema))
    pagination = fields.Nested(PageSchema)


# -- purchases -------------------------------------------------------------------------------


class ReserveArgs(Strict):
    deal_id = Id(required=True)
    num_bought = Units(required=True)
    user_id = optional_text(
        "The customer: their holds and purchases count against the deal's max_per_user, "
        "and only they can claim the purchase."
    )


class ClaimArgs(Strict):
    user_id = optional_text("Required unless the purchase was reserved for a user (then it must be that one).")
    credit_card_id = optional_text()


class CreateArgs(Strict):
    deal_id = Id(required=True)
    quantity = Units(required=True)
    user_id = Text(required=True, min_length=1)
    credit_card_id = Text(required=True, min_length=1)
    expected_price_per_unit = StrictInt(required=True, minimum=0, maximum=MONEY_MAX)
    session_id = optional_text()
    # The seed's spelling; accepted as a synonym.
    sesison_id = optional_text("Synonym of session_id (the original document's spelling).")

    @post_load
    def _merge_session(self, data, **kwargs):
        misspelt = data.pop("sesison_id", None)
        if data.get("session_id") is None and misspelt is not None:
            data["session_id"] = misspelt
        return data


class NoArgs(Strict):
    """A body, if any, must be an empty object."""


class ExtendArgs(Strict):
    seconds = StrictInt(minimum=1, maximum=10**6)


class PurchaseListArgs(PageArgs):
    deal_id = Id()
    fulfillment_state = fields.String(validate=validate.OneOf(STATES))


class PurchaseSchema(Schema):
    id = fields.String(attribute="token")
    deal_id = fields.Integer()
    quantity = fields.Integer(attribute="units")
    price_per_unit = fields.Integer(allow_none=True)
    total_price = fields.Method("_total", metadata={"type": "integer", "nullable": True})
    currency = fields.String(allow_none=True)
    user_id = fields.String(allow_none=True)
    credit_card_id = fields.String(allow_none=True)
    session_id = fields.String(allow_none=True)
    fulfillment_state = fields.Method("_state", metadata={"type": "string", "enum": list(STATES)})
    payment_state = fields.String()
    coupons = fields.Method("_coupons", metadata={"type": "array", "items": {"type": "string"}})
    reserved_until = Instant(allow_none=True)
    created_at = Instant()
    fulfilled_at = Instant(allow_none=True)
    cart_id = fields.String(allow_none=True, metadata={"description": "The cart this purchase is an item of."})
    waitlist_entry_id = fields.Integer(
        allow_none=True, metadata={"description": "The waitlist entry this hold was offered to."}
    )

    def _state(self, purchase) -> str:
        return effective_state(purchase, datetime.now(UTC))

    def _total(self, purchase):
        if purchase.price_per_unit is None:
            return None
        return purchase.price_per_unit * purchase.units

    def _coupons(self, purchase) -> list[str]:
        return coupon_codes(purchase)


class PurchaseEnvelope(Envelope):
    purchase = fields.Nested(PurchaseSchema)


class PurchasesEnvelope(Envelope):
    purchases = fields.List(fields.Nested(PurchaseSchema))
    pagination = fields.Nested(PageSchema)


class V1ErrorSchema(Schema):
    status = constant("error")
    error = fields.String(metadata={"description": "Machine-readable code, e.g. sold_out."})
    message = fields.String()
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Per-field problems (422 only)."},
    )
