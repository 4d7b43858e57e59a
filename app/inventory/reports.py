"""What operators read: one account's live overview (the dashboard) and purchases in bulk (CSV
exports), from the reports database (a read replica when DATABASE_REPLICA_URL is set) and live
numbers from LiveStock.

One overview costs at most three SQL statements on indexed columns (the account's newest deals,
its newest v1 purchases, its newest carts) and at most four pipelined Redis round trips (the
deals' live numbers; the active holds of the deals that have some, and their units; the
waitlists of the deals that can have one: sold out, or holding units, since an offer is a hold).
Nothing is counted over a whole table, and every list is bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from app.core.timeutil import iso, to_ms
from app.store import reports as store
from app.store.db import Database

from .errors import NotLoaded
from .purchases import effective_cart_state, effective_state
from .rebuild import Rebuilder
from .stock import LiveStock, Snapshot
from .waitlist import WaitlistService

#: Bounds of each list of an overview.
MAX_DEALS = 50
MAX_HOLDS_PER_DEAL = 50
MAX_HOLDS = 200
MAX_PURCHASES = 25
MAX_CARTS = 25


class ReportService:
    def __init__(
        self, db: Database, stock: LiveStock, rebuilder: Rebuilder, waitlist: WaitlistService | None = None
    ) -> None:
        #: The reports database (reads that may lag a little).
        self.db = db
        self.stock = stock
        self.rebuilder = rebuilder
        #: The deals' waitlists (their lengths, from the live state); None: not shown.
        self.waitlist = waitlist

    def overview(self, account_id: int, now: datetime) -> dict:
        """The account's newest deals with their live numbers, its running holds, and its newest
        v1 purchases, as the dashboard shows them (plain data, ready for JSON)."""
        now_ms = to_ms(now)
        with self.db.read() as session:
            deals = store.newest_deals(session, account_id, MAX_DEALS + 1)
            purchases = store.newest_purchases(session, account_id, MAX_PURCHASES)
            carts = store.newest_carts(session, account_id, MAX_CARTS)
        more_deals = len(deals) > MAX_DEALS
        deals = deals[:MAX_DEALS]
        snapshots = self.live([deal.id for deal in deals], now_ms)
        titles = {deal.id: deal.title for deal in deals}
        deal_rows = [_deal_row(deal, live, now) for deal in deals if (live := snapshots.get(deal.id)) is not None]
        with_holds = [row["id"] for row in deal_rows if row["active_holds"]]
        holds = self.stock.active_holds(with_holds, now_ms, MAX_HOLDS_PER_DEAL)
        self._waitlists(deal_rows)
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
            "purchases": [_purchase_row(row, titles, now) for row in purchases],
            "carts": [_cart_row(row, now) for row in carts],
        }

    def _waitlists(self, deal_rows: list[dict]) -> None:
        """Each deal row's waitlist: customers waiting, offers holding a unit for one. Asked only
        for the deals that can have one (units coming back go to the waiting customers first, so
        a deal with units available has nobody waiting; an offer is a hold)."""
        for row in deal_rows:
            row["waitlist_waiting"] = row["waitlist_offered"] = 0
        if self.waitlist is None:
            return
        asked = [row["id"] for row in deal_rows if row["sold_out"] or row["active_holds"]]
        lengths = self.waitlist.lengths(asked)
        for row in deal_rows:
            length = lengths.get(row["id"])
            if length is not None:
                row["waitlist_waiting"], row["waitlist_offered"] = length.waiting, length.offered

    def live(self, deal_ids: list[int], now_ms: int) -> dict[int, Snapshot | None]:
        """Live numbers in one pipelined round trip; a deal not in Redis (first look after a
        flush) is loaded from SQL the way any read of it would."""
        snapshots = self.stock.snapshots(deal_ids, now_ms) if deal_ids else {}
        for deal_id, snapshot in list(snapshots.items()):
            if snapshot is None:
                try:
                    self.rebuilder.ensure_loaded(deal_id)
                    snapshots[deal_id] = self.stock.snapshot(deal_id, now_ms)
                except NotLoaded:
                    snapshots[deal_id] = None
        return snapshots

    def export(
        self,
        *,
        account_id: int | None = None,
        source: str | None = None,
        since: datetime | None = None,
        batch_size: int = 1000,
    ) -> tuple[int, Iterator[Sequence[Any]]]:
        """(how many purchases match, their rows in batches, oldest first). A `since` without a
        time zone is UTC."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        filters = store.export_filters(account_id, source, since)
        with self.db.read() as session:
            total = store.count_purchases(session, filters)

        def batches() -> Iterator[Sequence[Any]]:
            last_id = 0
            while True:
                with self.db.read() as session:
                    rows = store.purchases_after(session, last_id, filters, batch_size)
                if not rows:
                    return
                yield rows
                last_id = rows[-1].id

        return total, batches()


def _window(deal: Any, now: datetime) -> str:
    """Where the deal's sale window is: upcoming, on_sale or ended."""
    if deal.starts_at is not None and now < deal.starts_at:
        return "upcoming"
    if deal.ends_at is not None and now >= deal.ends_at:
        return "ended"
    return "on_sale"


def _cart_row(row: Any, now: datetime) -> dict:
    items = json.loads(row.items)
    return {
        "id": row.token,
        "state": effective_cart_state(row, now),
        "user_id": row.user_id,
        "items": len(items),
        "units": sum(units for _, units in items),
        "reserved_until": iso(row.reserved_until),
        "created_at": iso(row.created_at),
    }


def _deal_row(deal: Any, live: Snapshot, now: datetime) -> dict:
    available = max(live.available, 0)
    return {
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
        "window": _window(deal, now),
        "starts_at": iso(deal.starts_at),
        "ends_at": iso(deal.ends_at),
    }


def _purchase_row(row: Any, titles: dict[int, str], now: datetime) -> dict:
    return {
        "id": row.token,
        "deal_id": row.deal_id,
        "deal_title": titles.get(row.deal_id),
        "quantity": row.units,
        "total_price": None if row.price_per_unit is None else row.price_per_unit * row.units,
        "currency": row.currency,
        "user_id": row.user_id,
        "fulfillment_state": effective_state(row, now),
        "payment_state": row.payment_state,
        "created_at": iso(row.created_at),
        "reserved_until": iso(row.reserved_until),
        "fulfilled_at": iso(row.fulfilled_at),
    }
