"""Rebuild a deal's live state in Redis from SQL, and compare the two.

A rebuild runs when a script finds the deal not loaded (first use, FLUSHALL, a Redis restart
without persistence), after a write whose outcome is uncertain, after a PATCH, or when the
reconciler finds drift. It holds the deal's exclusive fence (see `Database.fence`) from before
it reads SQL until after it has written Redis, so no write that already took stock in Redis can
commit in between unseen: the state it loads is exactly what SQL says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.db import Database
from app.store.models import Deal, Purchase, PurchaseItem, utcnow
from app.timeutil import to_ms

from .errors import DealNotFound, NotLoaded, Unavailable
from .stock import DealState, LiveStock, Snapshot

log = logging.getLogger(__name__)


def sql_state(session: Session, deal: Deal, now: datetime) -> DealState:
    """The deal's live state as SQL defines it: sold = every fulfilled unit of the deal (v1 and
    v3 lines alike), holds = reservations whose end is still in the future."""
    sold = session.scalar(
        select(func.coalesce(func.sum(PurchaseItem.quantity), 0)).where(PurchaseItem.deal_id == deal.id)
    )
    holds = session.execute(
        select(Purchase.token, Purchase.units, Purchase.reserved_until)
        .where(
            Purchase.deal_id == deal.id,
            Purchase.fulfillment_state == "reserved",
            Purchase.reserved_until > now,
        )
        .order_by(Purchase.reserved_until)
    ).all()
    users: list[tuple[str, int]] = []
    if deal.max_per_user:
        users = [
            (user_id, int(units))
            for user_id, units in session.execute(
                select(Purchase.user_id, func.sum(PurchaseItem.quantity))
                .join(Purchase, Purchase.id == PurchaseItem.purchase_id)
                .where(PurchaseItem.deal_id == deal.id, Purchase.user_id.is_not(None))
                .group_by(Purchase.user_id)
            )
        ]
    return DealState(
        deal_id=deal.id,
        account_id=deal.account_id,
        quantity=deal.quantity,
        sold=int(sold),
        price=deal.price_per_unit,
        currency=deal.currency,
        max_per_purchase=deal.max_per_purchase or 0,
        max_per_user=deal.max_per_user or 0,
        holds=tuple((token, units, to_ms(ends)) for token, units, ends in holds),
        users=tuple(users),
        title=deal.title,
        label=deal.sku or str(deal.id),
    )


@dataclass(frozen=True)
class Drift:
    deal_id: int
    field: str
    redis: object
    sql: object


class Rebuilder:
    def __init__(self, db: Database, stock: LiveStock, wait_seconds: float = 5.0) -> None:
        self.db = db
        self.stock = stock
        self.wait_seconds = wait_seconds
        self.rebuilds = 0  # counted for metrics and tests

    def ensure_loaded(self, deal_id: int, now: datetime | None = None) -> None:
        """Load the deal from SQL unless another process already has (or just did)."""
        self.rebuild(deal_id, force=False, now=now)

    def rebuild(self, deal_id: int, *, force: bool = True, now: datetime | None = None) -> bool:
        """Returns True when this call loaded the deal, False when it was already loaded."""
        with self.db.transaction() as session:
            self.lock(session, deal_id)
            if not force and self.stock.is_loaded(deal_id):
                return False
            deal = session.get(Deal, deal_id)
            if deal is None:
                raise DealNotFound()
            state = sql_state(session, deal, now or utcnow())
            self.stock.load(state)
            self.rebuilds += 1
            log.info(
                "rebuilt deal from SQL",
                extra={"deal_id": deal_id, "holds": len(state.holds), "sold": state.sold},
            )
            return True

    def check(self, deal_id: int, now: datetime | None = None) -> list[Drift]:
        """Differences between Redis and SQL for one deal, read under the exclusive fence so
        that writes in flight cannot show up as drift. Ended holds not yet swept are returned
        to stock first (they are not drift: the sweep would do the same)."""
        with self.db.transaction() as session:
            self.lock(session, deal_id)
            deal = session.get(Deal, deal_id)
            if deal is None:
                raise DealNotFound()
            now = now or utcnow()
            try:
                snapshot = self.stock.snapshot(deal_id, to_ms(now))
            except NotLoaded:
                return []  # nothing in Redis to disagree with; the next use rebuilds
            state = sql_state(session, deal, now)
            return compare(snapshot, state, self.stock.holds(deal_id), to_ms(now))

    def repair(self, deal_id: int, now: datetime | None = None) -> list[Drift]:
        """Rebuild the deal if Redis and SQL disagree; returns the drift that was found."""
        drift = self.check(deal_id, now)
        if drift:
            log.warning("drift between Redis and SQL; rebuilding", extra={"deal_id": deal_id})
            self.rebuild(deal_id, force=True, now=now)
        return drift

    def forget_committed_claims(self, deal_id: int) -> int:
        """Drop the claim marks (see lua/lib.lua) of purchases SQL shows fulfilled: their
        retries now stop at SQL and never reach Redis. Marks of claims that never committed
        stay until the reconciler's rebuild, which drops them with the units they took."""
        marks = self.stock.claim_marks(deal_id)
        if not marks:
            return 0
        with self.db.read() as session:
            committed = list(
                session.scalars(
                    select(Purchase.token).where(
                        Purchase.token.in_(list(marks)), Purchase.fulfillment_state == "fulfilled"
                    )
                )
            )
        self.stock.forget_claims(deal_id, committed)
        return len(committed)

    def lock(self, session: Session, deal_id: int) -> None:
        """Take the deal's exclusive fence in `session`, waiting at most `wait_seconds`."""
        started = time.monotonic()
        if not self.db.is_sqlite:
            # Give up rather than queue forever behind a stuck writer.
            session.execute(select(func.set_config("lock_timeout", f"{int(self.wait_seconds * 1000)}ms", True)))
        try:
            self.db.fence(session, deal_id, exclusive=True)
        except Exception as error:
            if time.monotonic() - started >= self.wait_seconds * 0.9:
                raise Unavailable("rebuild lock wait timed out", retry_after=1) from error
            raise


def compare(snapshot: Snapshot, state: DealState, holds: dict[str, tuple[int, int]], now_ms: int) -> list[Drift]:
    drift = []
    for field in ("quantity", "sold", "reserved", "available"):
        live, truth = getattr(snapshot, field), getattr(state, field)
        if live != truth:
            drift.append(Drift(snapshot.deal_id, field, live, truth))
    live_holds = {token: units for token, (units, ends) in holds.items() if ends > now_ms}
    sql_holds = {token: units for token, units, _ in state.holds}
    if live_holds != sql_holds:
        missing = sorted(set(sql_holds) - set(live_holds))
        extra = sorted(set(live_holds) - set(sql_holds))
        drift.append(Drift(snapshot.deal_id, "holds", {"extra": extra}, {"missing": missing}))
    return drift
