"""/v1/public/deals: a public deal, once or as a live stream."""

from __future__ import annotations

from flask import request
from flask.views import MethodView

from app.web.api.public import blp
from app.web.api.public.schemas import PublicDealEnvelope
from app.web.api.public.stream import STREAM_DESCRIPTION, Streams
from app.web.services import services

NOT_PUBLIC = (404, "not_found: no public deal with that id (unknown, or not public)")


@blp.route("/deals/<int:deal_id>")
class PublicDeal(MethodView):
    @blp.response(200, PublicDealEnvelope)
    @blp.documented(NOT_PUBLIC)
    def get(self, deal_id):
        """A public deal as a storefront shows it (no secret)"""
        return {"deal": services().storefront.show(deal_id)}


@blp.route("/deals/<int:deal_id>/stream")
class PublicDealStream(MethodView):
    @blp.alt_response(
        200,
        success=True,
        description=STREAM_DESCRIPTION,
        content_type="text/event-stream",
        schema={"type": "string"},
    )
    @blp.documented(NOT_PUBLIC)
    def get(self, deal_id):
        """Server-Sent Events: the public deal now, then after every change (no secret)"""
        streams = Streams.of()
        streams.admit()
        return streams.response(services().storefront.listen(deal_id), request.environ)
