"""/v1/webhooks: URLs the account wants told about purchase and deal events."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.core.events import WEBHOOK_EVENTS
from app.web.api.auth import account_id
from app.web.api.fields import Text
from app.web.api.v1 import blp
from app.web.api.v1.schemas import Envelope, Instant, Strict
from app.web.services import services
from app.webhooks.service import MAX_URL_LENGTH


class WebhookCreateArgs(Strict):
    url = fields.URL(
        required=True,
        schemes={"http", "https"},
        require_tld=False,
        validate=validate.Length(max=MAX_URL_LENGTH),
        metadata={"description": "Where deliveries are POSTed (http or https)."},
    )
    events = fields.List(
        Text(validate=validate.OneOf(WEBHOOK_EVENTS)),
        required=True,
        validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)),
        metadata={"description": "Any of: " + ", ".join(WEBHOOK_EVENTS)},
    )


class WebhookSchema(Schema):
    id = fields.Integer()
    url = fields.String()
    events = fields.List(fields.String(), attribute="event_list")
    created_at = Instant()
    last_event = fields.String(allow_none=True)
    last_delivery_id = fields.String(allow_none=True)
    last_attempt_at = Instant(allow_none=True)
    last_status = fields.Integer(
        allow_none=True, metadata={"description": "HTTP status of the last attempt; null if it got no answer."}
    )
    last_error = fields.String(allow_none=True)
    last_success_at = Instant(allow_none=True)
    consecutive_failures = fields.Integer()


class CreatedWebhookSchema(WebhookSchema):
    secret = fields.String(
        metadata={
            "description": (
                "The Standard Webhooks secret (whsec_ and the base64 of the HMAC key) that signs every "
                "delivery's webhook-signature header; verify with the standardwebhooks library: "
                "Webhook(secret).verify(body, headers). Shown only in this response."
            )
        }
    )


class WebhookEnvelope(Envelope):
    webhook = fields.Nested(WebhookSchema)


class CreatedWebhookEnvelope(Envelope):
    webhook = fields.Nested(CreatedWebhookSchema)


class WebhooksEnvelope(Envelope):
    webhooks = fields.List(fields.Nested(WebhookSchema))


@blp.route("/webhooks")
class Webhooks(MethodView):
    @blp.arguments(WebhookCreateArgs)
    @blp.response(201, CreatedWebhookEnvelope)
    @blp.documented((422, "validation_failed"), (409, "too_many_webhooks"))
    def post(self, args):
        """Register a URL for events; the response carries its signing secret, once"""
        webhook, secret = services().webhooks.register(account_id(), args["url"], args["events"])
        return {"webhook": webhook}

    @blp.response(200, WebhooksEnvelope)
    def get(self):
        """The account's webhooks with their last delivery status"""
        return {"webhooks": services().webhooks.list(account_id())}


@blp.route("/webhooks/<int:webhook_id>")
class WebhookById(MethodView):
    @blp.found(WebhookEnvelope)
    def get(self, webhook_id):
        """A webhook with its last delivery status"""
        return {"webhook": services().webhooks.get(account_id(), webhook_id)}

    @blp.response(204)
    @blp.documented((404, "not_found"))
    def delete(self, webhook_id):
        """Stop deliveries to this URL (deliveries already queued are dropped)"""
        services().webhooks.delete(account_id(), webhook_id)
