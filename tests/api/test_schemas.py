"""The hand-written purchase serializer says exactly what the documented schema says."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.inventory.serializers import purchase_json
from app.store import purchase_rows as rows
from app.store.models import Purchase, utcnow
from app.web.api.v1.schemas import PurchaseSchema


def test_purchase_json_matches_the_schema_for_every_state(api, services, account):
    deal = api.create_deal(quantity=20, price_per_unit=1250, currency="eur")
    reserved = services.purchases.reserve(account[0], deal["id"], 2)
    expired = services.purchases.reserve(account[0], deal["id"], 1, now=utcnow() - timedelta(seconds=400))
    released = services.purchases.release(account[0], services.purchases.reserve(account[0], deal["id"], 1).token)
    claimed = services.purchases.claim(
        account[0], services.purchases.reserve(account[0], deal["id"], 3).token, user_id="u"
    )
    bought = services.purchases.create(
        account[0], deal["id"], 2, user_id="v", credit_card_id="c", expected_price_per_unit=1250, session_id="s"
    )
    records = [reserved, expired, released, claimed, bought]
    assert all(isinstance(r, rows.PurchaseRecord) for r in records)
    schema = PurchaseSchema()
    with services.db.read() as session:
        stored = {p.token: p for p in session.scalars(select(Purchase))}
    for record in records:
        # The record the hot path answers with, and the ORM row a later GET reads: one shape.
        assert purchase_json(record) == schema.dump(record)
        assert purchase_json(stored[record.token]) == schema.dump(stored[record.token]) == purchase_json(record)
    assert purchase_json(claimed)["coupons"] and len(purchase_json(claimed)["coupons"]) == 3
    assert purchase_json(expired)["fulfillment_state"] == "expired"
