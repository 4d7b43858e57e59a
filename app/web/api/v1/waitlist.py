"""/v1/deals/:id/waitlist and /v1/waitlist/:id: customers waiting for a sold-out deal."""

from __future__ import annotations

from flask import g
from flask.views import MethodView
from marshmallow import Schema, fields

from app.inventory.waitlist import ENTRY_STATES
from app.web.api.auth import account_id
from app.web.api.fields import Text
from app.web.api.idempotency import idempotent
from app.web.api.v1 import blp
from app.web.api.v1.schemas import Envelope, Instant, NoArgs, Strict
from app.web.services import services


class JoinArgs(Strict):
    user_id = Text(required=True, min_length=1, max_length=200, metadata={"description": "The waiting customer."})


class EntrySchema(Schema):
    id = fields.Integer()
    deal_id = fields.Integer()
    user_id = fields.String()
    state = fields.String(metadata={"enum": list(ENTRY_STATES)})
    position = fields.Integer(
        allow_none=True, metadata={"description": "1 for the next customer to get a unit; null unless waiting."}
    )
    purchase_id = fields.String(allow_none=True, metadata={"description": "The offer's purchase, once offered."})
    offered_until = Instant(allow_none=True)
    created_at = Instant()
    offered_at = Instant(allow_none=True)


class EntryEnvelope(Envelope):
    entry = fields.Nested(EntrySchema)


class EntriesEnvelope(Envelope):
    entries = fields.List(fields.Nested(EntrySchema))


ENTRY_ENVELOPE = EntryEnvelope()


def entry_body(entry) -> dict:
    return ENTRY_ENVELOPE.dump({"entry": entry})


def joined_status(joined) -> int:
    return 201 if joined.created else 200


@blp.route("/deals/<int:deal_id>/waitlist")
class DealWaitlist(MethodView):
    @blp.arguments(JoinArgs)
    @blp.response(201, EntryEnvelope)
    @blp.documented((200, "already waiting: the customer's entry"), (404, "not_found"), (422, "validation_failed"))
    @idempotent(entry_body, status=joined_status)
    def post(self, args, deal_id):
        """Wait for the deal: units that come back are offered to the waiting customers in order"""
        return services().waitlist.join(account_id(), deal_id, args["user_id"], keyed=g.keyed)

    @blp.response(200, EntriesEnvelope)
    @blp.documented((404, "not_found"))
    def get(self, deal_id):
        """The deal's waitlist, first first"""
        return {"entries": services().waitlist.list(account_id(), deal_id)}


@blp.route("/waitlist/<int:entry_id>")
class WaitlistEntry(MethodView):
    @blp.found(EntryEnvelope)
    def get(self, entry_id):
        """A waitlist entry: its position while waiting, its purchase once offered"""
        return {"entry": services().waitlist.get(account_id(), entry_id)}

    @blp.write(NoArgs, EntryEnvelope, entry_body, (404, "not_found"))
    def delete(self, _args, entry_id):
        """Leave the waitlist (an offer held is handed to the next customer)"""
        return services().waitlist.leave(account_id(), entry_id, keyed=g.keyed)
