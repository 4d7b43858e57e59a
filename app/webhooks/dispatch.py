"""The event sink: what the services' `emit` does, after their commit, in the web app and the
worker: it counts the events for /metrics (an in-memory increment; expiries, which happen mostly
in the worker whose counters nobody scrapes, and the waitlist's offers made, claimed and lapsed,
which the web and the worker both make, in the shared figures: one round trip per emit that has
any, none for the others).

It delivers nothing. Deliveries come from the outbox: the events are rows written in the
transaction of their change (app/inventory/outbox.py), which the worker's relay turns into
webhook deliveries (outbox.py, delivery.py). So a request pays nothing for webhooks, whatever
the account subscribed to, and a process killed after its commit loses no event, only (at
worst) a count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core import events as ev
from app.observability import metrics

#: No back-off grows past this.
MAX_INTERVAL_SECONDS = 3600


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 6
    base_seconds: int = 10
    timeout_seconds: int = 10

    def intervals(self) -> list[int]:
        """Exponential back-off: base, 2 x base, 4 x base, ... (capped)."""
        return [min(self.base_seconds * 2**i, MAX_INTERVAL_SECONDS) for i in range(self.max_retries)]

    def back_off(self, attempts: int) -> int | None:
        """Seconds to wait after the `attempts`-th failed attempt; None when that was the last."""
        intervals = self.intervals()
        return intervals[attempts - 1] if attempts <= len(intervals) else None

    @property
    def lease_seconds(self) -> int:
        """How long one attempt may hold its delivery: the POST (connect and read timeouts) and
        recording its outcome. A job that held it longer is taken for dead: the relay leases the
        delivery to another job, and the receiver may get it twice (deduplicating on webhook-id)."""
        return 2 * self.timeout_seconds + 5


class EventSink:
    def __init__(self, *, shared: Any) -> None:
        #: Where counts made outside the web processes go (app/store/figures.py).
        self.shared = shared

    def emit(self, *events: ev.Event) -> None:
        self._count(events)

    @staticmethod
    def _counter(event: ev.Event):
        if event.type == ev.PURCHASE_RESERVED:
            return metrics.RESERVATIONS
        if event.type == ev.PURCHASE_FULFILLED:
            return metrics.CLAIMS if event.via == "claim" else metrics.DIRECT_PURCHASES
        if event.type == ev.PURCHASE_RELEASED:
            return metrics.RELEASES
        if event.type == ev.DEAL_SOLD_OUT:
            return metrics.SOLD_OUTS
        return None

    @staticmethod
    def _shared_field(event: ev.Event) -> str | None:
        """The shared counter an event adds to, if any."""
        if event.type == ev.WAITLIST_OFFERED:
            return "waitlist_offers_made"
        if getattr(event.purchase, "waitlist_entry_id", None) is not None:
            # An offer's hold: claimed, or ended unclaimed (its unit goes to the next customer).
            # A customer who leaves ends their offer too, but that release is not emitted
            # (WaitlistService.leave): the entry is `left`, not `lapsed`.
            if event.type == ev.PURCHASE_FULFILLED:
                return "waitlist_offers_claimed"
            if event.type in (ev.PURCHASE_RELEASED, ev.PURCHASE_EXPIRED):
                return "waitlist_offers_lapsed"
        return None

    def _count(self, events: Sequence[ev.Event]) -> None:
        shared: dict[str, int] = {}
        for event in events:
            field = self._shared_field(event)
            if field is not None:
                shared[field] = shared.get(field, 0) + 1
            if event.type == ev.PURCHASE_EXPIRED:
                # Expiries happen mostly in the worker, whose counters nobody scrapes: in Redis.
                shared["expiries"] = shared.get("expiries", 0) + 1
                continue
            counter = self._counter(event)
            if counter is not None:
                counter.inc()
        if len(shared) == 1:
            [(field, amount)] = shared.items()
            metrics.count_shared(self.shared, field, amount)
        elif shared:
            metrics.publish_counts(self.shared, shared)
