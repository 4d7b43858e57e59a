"""/v1/events: the account's events, oldest first, for a receiver that was down to catch up."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.core.events import WEBHOOK_EVENTS
from app.web.api.auth import account_id
from app.web.api.v1 import blp
from app.web.api.v1.schemas import Envelope, Instant
from app.web.services import services
from app.webhooks.outbox import EVENT_ID_PREFIX, PAGE_SIZE


class EventListArgs(Schema):
    after = fields.String(
        validate=validate.Regexp(rf"^{EVENT_ID_PREFIX}[0-9]{{1,18}}$", error="Must be an event id (evt_ and digits)."),
        metadata={
            "description": (
                "An event id: list the events after it (the last one a receiver handled). "
                "Left out: from the oldest event kept."
            ),
            "example": f"{EVENT_ID_PREFIX}0",
        },
    )


class EventSchema(Schema):
    id = fields.String(metadata={"description": "evt_ and a number; numbers grow in the order events are relayed."})
    type = fields.String(metadata={"enum": list(WEBHOOK_EVENTS)})
    created_at = Instant()
    data = fields.Dict(
        keys=fields.String(),
        metadata={
            "description": (
                "What the event is about, as webhook deliveries carry it: `purchase` (and `via` for "
                "purchase.fulfilled), `cart`, or `deal`."
            )
        },
    )


class EventsEnvelope(Envelope):
    events = fields.List(fields.Nested(EventSchema), metadata={"description": f"At most {PAGE_SIZE}, oldest first."})
    has_more = fields.Boolean(metadata={"description": "More events follow the last one: ask again after it."})


@blp.route("/events")
class Events(MethodView):
    @blp.arguments(EventListArgs, location="query")
    @blp.response(200, EventsEnvelope)
    @blp.documented((422, "validation_failed"))
    def get(self, args):
        """The account's events after an event id, oldest first, 50 a page (the bodies webhooks get)"""
        after = int(args["after"][len(EVENT_ID_PREFIX) :]) if "after" in args else 0
        bodies, more = services().outbox.page(account_id(), after)
        body = (
            '{"status":"success","events":[' + ",".join(bodies) + '],"has_more":' + ("true" if more else "false") + "}"
        )
        return Response(body, mimetype="application/json")
