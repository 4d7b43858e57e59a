"""POST /v1/public/deals/:id/waitlist: a storefront's customer joins a public deal's waitlist,
without the account's secret (the example storefront's form, app/web/storefront)."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView
from marshmallow import Schema, fields

from app.core.jsonutil import dumps
from app.inventory.waitlist import ENTRY_STATES
from app.web.api.public import blp
from app.web.api.public.deals import NOT_PUBLIC
from app.web.api.ratelimit import admit_storefront_write
from app.web.api.v1.schemas import Envelope, Instant
from app.web.api.v1.waitlist import JoinArgs, joined_status
from app.web.services import services


class PublicEntrySchema(Schema):
    """What the customer's page may see of their entry: no purchase id, nothing of the others."""

    id = fields.Integer()
    deal_id = fields.Integer()
    state = fields.String(metadata={"enum": list(ENTRY_STATES)})
    position = fields.Integer(
        allow_none=True, metadata={"description": "1 for the next customer to get a unit; null unless waiting."}
    )
    offered_until = Instant(
        allow_none=True,
        metadata={"description": "While offered: until when a unit is held for the customer (the shop claims it)."},
    )
    created_at = Instant()


class PublicEntryEnvelope(Envelope):
    entry = fields.Nested(PublicEntrySchema)


PUBLIC_ENTRY_ENVELOPE = PublicEntryEnvelope()


@blp.route("/deals/<int:deal_id>/waitlist")
class PublicWaitlist(MethodView):
    @blp.arguments(JoinArgs)
    @blp.response(201, PublicEntryEnvelope)
    @blp.documented(
        (200, "already waiting: the customer's entry"),
        NOT_PUBLIC,
        (422, "validation_failed: user_id missing, empty, longer than 200 characters, or another field sent"),
        (429, "rate_limited: the deal's account's storefronts made too many writes this window (Retry-After)"),
    )
    def post(self, args, deal_id):
        """Join a public deal's waitlist (no secret): units that come back go to the customers in order

        JSON or a form. Joining again while waiting answers the same entry (200). Counted per
        account against RATE_LIMIT_WRITES, in a budget of its own apart from the account's API
        writes (docs/storefront.md)."""
        entry = services().waitlist.join_public(deal_id, args["user_id"], admit=admit_storefront_write)
        body = PUBLIC_ENTRY_ENVELOPE.dump({"entry": entry})
        return Response(dumps(body), status=joined_status(entry), mimetype="application/json")
