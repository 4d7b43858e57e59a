"""A purchase as JSON, below the API: the v1 answers and the webhook payloads show the same."""

from __future__ import annotations

from datetime import UTC, datetime

from app.core.timeutil import iso

from .purchases import effective_cart_state, effective_state


def coupon_codes(purchase) -> list[str]:
    if purchase.fulfillment_state != "fulfilled":
        return []
    # Coupon rows on an ORM Purchase; plain codes on a PurchaseRecord from the hot paths.
    return [coupon if isinstance(coupon, str) else coupon.code for coupon in purchase.coupons]


def purchase_json(purchase, now: datetime | None = None) -> dict:
    """A purchase as the v1 API and the webhooks show it: `PurchaseSchema().dump(purchase)`
    (app/web/api/v1/schemas.py, the documented contract) written out by hand, because every
    write answers with a purchase and a marshmallow dump is a measurable part of that answer.
    tests/api/test_schemas.py checks that both give the same dict."""
    price = purchase.price_per_unit
    return {
        "id": purchase.token,
        "deal_id": purchase.deal_id,
        "quantity": purchase.units,
        "price_per_unit": price,
        "total_price": None if price is None else price * purchase.units,
        "currency": purchase.currency,
        "user_id": purchase.user_id,
        "credit_card_id": purchase.credit_card_id,
        "session_id": purchase.session_id,
        "fulfillment_state": effective_state(purchase, now or datetime.now(UTC)),
        "payment_state": purchase.payment_state,
        "coupons": coupon_codes(purchase),
        "reserved_until": iso(purchase.reserved_until),
        "created_at": iso(purchase.created_at),
        "fulfilled_at": iso(purchase.fulfilled_at),
        "cart_id": purchase.cart_id,
        "waitlist_entry_id": purchase.waitlist_entry_id,
    }


def cart_json(cart, now: datetime | None = None) -> dict:
    """A cart as the v1 API shows it (`CartSchema`, app/web/api/v1/carts.py, documents it): a
    reserved cart whose holds have ended is expired."""
    now = now or datetime.now(UTC)
    return {
        "id": cart.token,
        "state": effective_cart_state(cart, now),
        "user_id": cart.user_id,
        "reserved_until": iso(cart.reserved_until),
        "created_at": iso(cart.created_at),
        "purchases": [purchase_json(purchase, now) for purchase in cart.purchases],
    }
