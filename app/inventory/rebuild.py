"""Rebuild a deal's live state in Redis from SQL, and compare the two.

A rebuild runs when a script finds the deal not loaded (first use, FLUSHALL, a Redis restart
without persistence), after a write whose outcome is uncertain, after a PATCH, or when the
reconciler finds drift. It holds the deal's exclusive fence (see `Database.fence`) from before
it reads SQL until after it has written Redis, so no write that already took stock in Redis can
commit in between unseen, and it reads the clock only once it holds the fence: the state it
loads is what SQL says at that moment (a hold that ended while it waited is not loaded; one
that a write committed while it waited is). A state with fewer than 0 units available is never
loaded: the deal answers 503 and the error is logged and counted (`InconsistentState`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import Unavailable
from app.core.timeutil import to_ms
from app.store.db import Database
from app.store.models import Deal, Purchase, PurchaseItem, WaitlistEntry, utcnow

from .errors import DealNotFound, InconsistentState, NotLoaded
from .stock import DealState, LiveStock, Snapshot

log = logging.getLogger(__name__)


def sql_state(session: Session, deal: Deal, now: datetime) -> DealState:
    """The deal's live state as SQL defines it: sold = every fulfilled unit of the deal (v1 and
    v3 lines alike), holds = reservations whose end is still in the future."""
    sold = session.scalar(
        select(func.coalesce(func.sum(PurchaseItem.quantity), 0)).where(PurchaseItem.deal_id == deal.id)
    )
    holds = session.execute(
        select(Purchase.token, Purchase.units, Purchase.reserved_until, Purchase.user_id, Purchase.waitlist_entry_id)
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
        holds=tuple((token, units, to_ms(ends), user or "", entry) for token, units, ends, user, entry in holds),
        users=tuple(users),
        title=deal.title,
        label=deal.sku or str(deal.id),
        starts_ms=to_ms(deal.starts_at) if deal.starts_at else 0,
        ends_ms=to_ms(deal.ends_at) if deal.ends_at else 0,
        waiting=tuple(
            (entry_id, user_id)
            for entry_id, user_id in session.execute(
                select(WaitlistEntry.id, WaitlistEntry.user_id)
                .where(WaitlistEntry.deal_id == deal.id, WaitlistEntry.state == "waiting")
                .order_by(WaitlistEntry.id)
            )
        ),
    )


@dataclass(frozen=True)
class Drift:
    deal_id: int
    field: str
    redis: object
    sql: object


class Rebuilder:
    def __init__(
        self, db: Database, stock: LiveStock, wait_seconds: float = 5.0, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.stock = stock
        self.wait_seconds = wait_seconds
        self.clock = clock
        self.rebuilds = 0  # counted for metrics and tests
        self.refused = 0  # states not loaded (InconsistentState)

    def ensure_loaded(self, deal_id: int) -> None:
        """Load the deal from SQL unless another process already has (or just did)."""
        self.rebuild(deal_id, force=False)

    def rebuild(self, deal_id: int, *, force: bool = True) -> bool:
        """Returns True when this call loaded the deal, False when it was already loaded."""
        with self.db.transaction() as session:
            self.lock(session, deal_id)
            if not force and self.stock.is_loaded(deal_id):
                return False
            deal = session.get(Deal, deal_id)
            if deal is None:
                raise DealNotFound()
            now = self.clock()  # under the fence
            state = sql_state(session, deal, now)
            try:
                self.stock.load(state, to_ms(now))
            except InconsistentState as error:
                self.refused += 1
                log.error("SQL describes a deal with negative stock; not loaded", extra={"deal_id": deal_id})
                raise Unavailable(str(error)) from error
            self.rebuilds += 1
            log.info(
                "rebuilt deal from SQL",
                extra={"deal_id": deal_id, "holds": len(state.holds), "sold": state.sold},
            )
            return True

    def check(self, deal_id: int) -> list[Drift]:
        """Differences between Redis and SQL for one deal, read under the exclusive fence so
        that writes in flight cannot show up as drift. Ended holds not yet swept are returned
        to stock first (they are not drift: the sweep would do the same)."""
        with self.db.transaction() as session:
            self.lock(session, deal_id)
            deal = session.get(Deal, deal_id)
            if deal is None:
                raise DealNotFound()
            now = self.clock()
            try:
                snapshot = self.stock.snapshot(deal_id, to_ms(now))
            except NotLoaded:
                return []  # nothing in Redis to disagree with; the next use rebuilds
            state = sql_state(session, deal, now)
            live_users = self.stock.user_units(deal_id) if state.max_per_user else {}
            return compare(snapshot, state, self.stock.holds(deal_id), to_ms(now), live_users)

    def repair(self, deal_id: int) -> list[Drift]:
        """Rebuild the deal if Redis and SQL disagree; returns the drift that was found."""
        drift = self.check(deal_id)
        if drift:
            log.warning("drift between Redis and SQL; rebuilding", extra={"deal_id": deal_id})
            self.rebuild(deal_id, force=True)
        return drift

    def forget_committed_marks(self, deal_id: int) -> int:
        """Drop the marks (see lua/lib.lua) of purchases SQL shows fulfilled: their retries now
        stop at SQL and never reach Redis. Marks of takes that never committed stay until the
        reconciler's rebuild, which drops them with the units they took."""
        marks = self.stock.marks(deal_id)
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
        return self.stock.forget(deal_id, committed)

    def lock(self, session: Session, deal_id: int) -> None:
        """Take the deal's exclusive fence in `session`, waiting at most `wait_seconds`."""
        started = time.monotonic()
        if not self.db.is_sqlite:
            # Give up rather than queue forever behind a stuck writer.
            session.execute(select(func.set_config("lock_timeout", f"{int(self.wait_seconds * 1000)}ms", True)))
        try:
            self.db.fence(session, [deal_id], exclusive=True)
        except Exception as error:
            if time.monotonic() - started >= self.wait_seconds * 0.9:
                raise Unavailable("rebuild lock wait timed out", retry_after=1) from error
            raise


def compare(
    snapshot: Snapshot,
    state: DealState,
    holds: dict[str, tuple[int, int]],
    now_ms: int,
    users: dict[str, int] | None = None,
) -> list[Drift]:
    drift = []
    for field in ("quantity", "sold", "reserved", "available"):
        live, truth = getattr(snapshot, field), getattr(state, field)
        if live != truth:
            drift.append(Drift(snapshot.deal_id, field, live, truth))
    live_holds = {token: units for token, (units, ends) in holds.items() if ends > now_ms}
    sql_holds = {hold[0]: hold[1] for hold in state.holds}
    if live_holds != sql_holds:
        missing = sorted(set(sql_holds) - set(live_holds))
        extra = sorted(set(live_holds) - set(sql_holds))
        drift.append(Drift(snapshot.deal_id, "holds", {"extra": extra}, {"missing": missing}))
    if users is not None:
        live_users = {user: units for user, units in users.items() if units}
        if live_users != dict(state.users):
            drift.append(Drift(snapshot.deal_id, "users", live_users, dict(state.users)))
    return drift
