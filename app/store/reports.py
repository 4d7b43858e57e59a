"""The read queries of what operators look at: the dashboard and the CSV exports. Each is one
statement on indexed columns, bounded or read in batches by id (keyset), never a count over a
whole table for the dashboard."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from .models import Cart, Deal, Purchase

#: The columns of a purchase an export writes.
EXPORT_COLUMNS = (
    Purchase.id,
    Purchase.token,
    Purchase.account_id,
    Purchase.source,
    Purchase.deal_id,
    Purchase.units,
    Purchase.price_per_unit,
    Purchase.currency,
    Purchase.total,
    Purchase.fulfillment_state,
    Purchase.payment_state,
    Purchase.user_id,
    Purchase.transaction_id,
    Purchase.email_address,
    Purchase.status,
    Purchase.created_at,
    Purchase.reserved_until,
    Purchase.fulfilled_at,
    Purchase.ended_at,
)


def newest_deals(session: Session, account_id: int, limit: int) -> Sequence[Row]:
    """(id, title, sku, currency, price_per_unit, starts_at, ends_at) of the account's newest
    deals."""
    return session.execute(
        select(Deal.id, Deal.title, Deal.sku, Deal.currency, Deal.price_per_unit, Deal.starts_at, Deal.ends_at)
        .where(Deal.account_id == account_id)
        .order_by(Deal.id.desc())
        .limit(limit)
    ).all()


def newest_purchases(session: Session, account_id: int, limit: int) -> Sequence[Row]:
    """The account's newest v1 purchases (reservations included)."""
    return session.execute(
        select(
            Purchase.token,
            Purchase.deal_id,
            Purchase.units,
            Purchase.price_per_unit,
            Purchase.currency,
            Purchase.user_id,
            Purchase.fulfillment_state,
            Purchase.payment_state,
            Purchase.reserved_until,
            Purchase.created_at,
            Purchase.fulfilled_at,
        )
        .where(Purchase.account_id == account_id, Purchase.source == "v1")
        .order_by(Purchase.id.desc())
        .limit(limit)
    ).all()


def deal_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Deal.id).order_by(Deal.id)))


def export_filters(account_id: int | None, source: str | None, since: datetime | None) -> list[Any]:
    filters = []
    if account_id is not None:
        filters.append(Purchase.account_id == account_id)
    if source is not None:
        filters.append(Purchase.source == source)
    if since is not None:
        filters.append(Purchase.created_at >= since)
    return filters


def count_purchases(session: Session, filters: list[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(Purchase).where(*filters)))


def purchases_after(session: Session, last_id: int, filters: list[Any], limit: int) -> Sequence[Row]:
    """The next `limit` purchases after id `last_id` (keyset pagination: each batch is one
    indexed range read, however deep the export)."""
    return session.execute(
        select(*EXPORT_COLUMNS).where(Purchase.id > last_id, *filters).order_by(Purchase.id).limit(limit)
    ).all()


def newest_carts(session: Session, account_id: int, limit: int) -> Sequence[Row]:
    """The account's newest carts (a pending one is still being reserved)."""
    return session.execute(
        select(Cart.token, Cart.state, Cart.user_id, Cart.reserved_until, Cart.items, Cart.created_at)
        .where(Cart.account_id == account_id, Cart.state != "pending")
        .order_by(Cart.id.desc())
        .limit(limit)
    ).all()
