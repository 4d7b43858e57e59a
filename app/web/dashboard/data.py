"""What the ops dashboard shows, read cheaply: no Flask here.

One poll costs at most three SQL statements on indexed columns (the account's secret check,
which is cached, its newest deals, its newest v1 purchases) and at most three pipelined Redis
round trips (the deals' live numbers; the active holds of the deals that have some, and their
units). Nothing is counted over a whole table, and every list is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.core.timeutil import iso, to_ms
from app.inventory import keys as K
from app.inventory.errors import NotLoaded
from app.store.models import Deal, Purchase

#: Bounds of each list on the page.
MAX_DEALS = 50
MAX_HOLDS_PER_DEAL = 50
MAX_HOLDS = 200
MAX_PURCHASES = 25


@dataclass(frozen=True)
class DealRow:
    id: int
    title: str
    sku: str | None
    currency: str
    price_per_unit: int


def dashboard_data(services: Any, account_id: int, now: datetime) -> dict:
    now_ms = to_ms(now)
    with services.reports.read() as session:
        deals = [
            DealRow(*row)
            for row in session.execute(
                select(Deal.id, Deal.title, Deal.sku, Deal.currency, Deal.price_per_unit)
                .where(Deal.account_id == account_id)
                .order_by(Deal.id.desc())
                .limit(MAX_DEALS + 1)
            )
        ]
        purchases = session.execute(
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
            .limit(MAX_PURCHASES)
        ).all()
    more_deals = len(deals) > MAX_DEALS
    deals = deals[:MAX_DEALS]
    snapshots = _snapshots(services, [deal.id for deal in deals], now_ms)
    titles = {deal.id: deal.title for deal in deals}

    deal_rows = []
    for deal in deals:
        live = snapshots.get(deal.id)
        if live is None:
            continue
        available = max(live.available, 0)
        deal_rows.append(
            {
                "id": deal.id,
                "title": deal.title,
                "sku": deal.sku,
                "currency": deal.currency,
                "price_per_unit": deal.price_per_unit,
                "quantity": live.quantity,
                "available": available,
                "reserved": live.reserved,
                "sold": live.sold,
                "active_holds": live.holds,
                "sold_out": available <= 0,
            }
        )
    holds = _active_holds(services, [row["id"] for row in deal_rows if row["active_holds"]], now_ms)
    return {
        "now_ms": now_ms,
        "deals": deal_rows,
        "more_deals": more_deals,
        "holds": [
            {
                "purchase_id": token,
                "deal_id": deal_id,
                "deal_title": titles.get(deal_id),
                "units": units,
                "ends_at_ms": ends,
            }
            for token, deal_id, units, ends in holds[:MAX_HOLDS]
        ],
        "more_holds": len(holds) > MAX_HOLDS,
        "purchases": [
            {
                "id": row.token,
                "deal_id": row.deal_id,
                "deal_title": titles.get(row.deal_id),
                "quantity": row.units,
                "total_price": None if row.price_per_unit is None else row.price_per_unit * row.units,
                "currency": row.currency,
                "user_id": row.user_id,
                "fulfillment_state": _state(row.fulfillment_state, row.reserved_until, now),
                "payment_state": row.payment_state,
                "created_at": iso(row.created_at),
                "reserved_until": iso(row.reserved_until),
                "fulfilled_at": iso(row.fulfilled_at),
            }
            for row in purchases
        ],
    }


def _state(state: str, reserved_until: datetime | None, now: datetime) -> str:
    if state == "reserved" and reserved_until is not None and reserved_until <= now:
        return "expired"
    return state


def _snapshots(services: Any, deal_ids: list[int], now_ms: int) -> dict:
    """Live numbers in one pipelined round trip; a deal not in Redis (first look after a
    flush) is loaded from SQL the way any read of it would."""
    snapshots = services.stock.snapshots(deal_ids, now_ms) if deal_ids else {}
    for deal_id, snapshot in list(snapshots.items()):
        if snapshot is None:
            try:
                services.rebuilder.ensure_loaded(deal_id)
                snapshots[deal_id] = services.stock.snapshot(deal_id, now_ms)
            except NotLoaded:
                snapshots[deal_id] = None
    return snapshots


def _active_holds(services: Any, deal_ids: list[int], now_ms: int) -> list[tuple[str, int, int, int]]:
    """(token, deal_id, units, ends_at_ms) of holds still running, soonest end first."""
    if not deal_ids:
        return []
    client = services.stock.client
    pipe = client.pipeline(transaction=False)
    for deal_id in deal_ids:
        pipe.zrangebyscore(
            K.deal_keys(deal_id).holds, f"({now_ms}", "+inf", start=0, num=MAX_HOLDS_PER_DEAL, withscores=True
        )
    ends_by_deal = pipe.execute()
    pipe = client.pipeline(transaction=False)
    asked = []
    for deal_id, ends in zip(deal_ids, ends_by_deal, strict=True):
        if ends:
            pipe.hmget(K.deal_keys(deal_id).units, [token for token, _ in ends])
            asked.append((deal_id, ends))
    holds = []
    for (deal_id, ends), units in zip(asked, pipe.execute() if asked else [], strict=True):
        for (token, score), held in zip(ends, units, strict=True):
            holds.append((token, deal_id, int(held or 0), int(score)))
    holds.sort(key=lambda hold: hold[3])
    return holds
