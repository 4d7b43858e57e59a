"""Return ended holds to stock, and mark their reservations expired in SQL.

The two halves are independent on purpose. Redis: the sweep index names the deals whose
earliest hold has ended, so a sweep costs O(ended holds), whatever the number of live ones.
SQL: a reservation whose `reserved_until` has passed is expired whatever the sweep did (reads
already show it so); the sweep only writes that state down, with a partial index on live
reservations. Both are safe to run in several workers at once: each hold leaves Redis in one
atomic script, and each row changes state only from `reserved`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime

from sqlalchemy import select, update

from app.core import events as ev
from app.core.timeutil import to_ms
from app.store import outbox as outbox_rows
from app.store.db import Database
from app.store.models import Purchase, utcnow
from app.store.purchase_rows import PURCHASES, READ_COLUMNS, PurchaseRecord

from . import outbox
from .stock import LiveStock

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    deals: int = 0
    holds: int = 0
    units: int = 0
    expired_records: list[tuple[str, int]] = field(default_factory=list)  # (token, deal_id)
    seconds: float = 0.0
    #: How late the oldest hold returned in this sweep was, in seconds (0 when none).
    lag_seconds: float = 0.0


@dataclass(eq=False)
class Sweeper:
    db: Database
    stock: LiveStock
    _: KW_ONLY
    deal_batch: int = 200
    hold_batch: int = 1000
    record_batch: int = 5000
    max_rounds: int = 1000
    events: ev.Events = ev.NULL_EVENTS

    def sweep(self, now: datetime | None = None) -> SweepReport:
        started = time.perf_counter()
        now = now or utcnow()
        report = self.return_holds(now)
        expired = self._expire(now)
        report.expired_records = [(record.token, record.deal_id) for record in expired]
        report.seconds = time.perf_counter() - started
        if expired:
            try:  # the counters; the events themselves committed with the rows
                self.events.emit(*(_expired(record) for record in expired))
            except Exception:
                log.exception("event sink failed; expiries not counted")
        return report

    def return_holds(self, now: datetime) -> SweepReport:
        now_ms = to_ms(now)
        report = SweepReport()
        seen_deals: set[int] = set()
        for _ in range(self.max_rounds):
            due = self.stock.due(now_ms, self.deal_batch)
            if not due:
                break
            report.lag_seconds = max(report.lag_seconds, (now_ms - min(s for _, s in due)) / 1000)
            results = self.stock.sweep_many([deal_id for deal_id, _ in due], now_ms, self.hold_batch)
            finished = []
            for (deal_id, seen), result in zip(due, results, strict=True):
                seen_deals.add(deal_id)
                report.holds += result.holds
                report.units += result.units
                # A deal with more ended holds than one batch stays due for the next round.
                if result.holds < self.hold_batch:
                    finished.append((deal_id, seen, result.next_end_ms))
            if finished:
                self.stock.reindex(finished)
            if len(due) < self.deal_batch and len(finished) == len(due):
                break
        report.deals = len(seen_deals)
        return report

    def expire_records(self, now: datetime) -> list[tuple[str, int]]:
        """Write `expired` on reservations whose hold ended, and their events; returns (token,
        deal_id) of each."""
        return [(record.token, record.deal_id) for record in self._expire(now)]

    def _expire(self, now: datetime) -> list[PurchaseRecord]:
        expired: list[PurchaseRecord] = []
        while True:
            with self.db.begin() as connection:
                # One statement per batch: the subquery finds ended reservations through the
                # partial index on live ones; SKIP LOCKED lets a second sweeper take other rows.
                due = (
                    select(Purchase.id)
                    .where(Purchase.fulfillment_state == "reserved", Purchase.reserved_until <= now)
                    .limit(self.record_batch)
                )
                if connection.dialect.name == "postgresql":
                    due = due.with_for_update(skip_locked=True)
                records = [
                    PurchaseRecord(*row)
                    for row in connection.execute(
                        update(PURCHASES)
                        .where(PURCHASES.c.id.in_(due.scalar_subquery()), PURCHASES.c.fulfillment_state == "reserved")
                        .values(fulfillment_state="expired", ended_at=PURCHASES.c.reserved_until)
                        .returning(*(PURCHASES.c[name] for name in READ_COLUMNS))
                    )
                ]
                outbox_rows.insert_events(connection, outbox.rows([_expired(r) for r in records], now, None))
            expired.extend(records)
            if len(records) < self.record_batch:
                break
        return expired


def _expired(record: PurchaseRecord) -> ev.Event:
    return ev.Event(ev.PURCHASE_EXPIRED, record.account_id, record.deal_id, purchase=record)
