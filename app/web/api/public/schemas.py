"""What /v1/public answers: a storefront's view of a deal, nothing more."""

from __future__ import annotations

from marshmallow import Schema, fields

from app.web.api.v1.schemas import Envelope, Instant


class PublicDealSchema(Schema):
    id = fields.Integer()
    title = fields.String()
    price = fields.Integer(metadata={"description": "Minor units (cents): the deal's price_per_unit."})
    currency = fields.String()
    quantity = fields.Integer()
    available = fields.Integer(metadata={"description": "Units a buyer can still reserve now."})
    sold_out = fields.Boolean()
    starts_at = Instant(allow_none=True)
    ends_at = Instant(allow_none=True)
    on_sale = fields.Boolean(metadata={"description": "Inside the sale window when read."})


class PublicDealEnvelope(Envelope):
    deal = fields.Nested(PublicDealSchema)
